"""Every layer kind as a decision: MultiheadAttention, Embedding(Bag), LSTM/GRU/RNN, HF-style Conv1D,
named parameters and tied weights; each computes with its quantized weight, exports and loads identically."""

import copy

import pytest
import torch
from torch import nn

import mixbits
from mixbits.export import export_model, read_mbits
from mixbits.methods.hessian import sensitivity
from mixbits.quant import quantize_hard
from mixbits.space import PrepareConfig, prepare_, unprepare_


class TinyLM(nn.Module):
    """Token embedding tied to the output head, a learned position table, one encoder layer."""

    def __init__(self, vocab=11, d=8, t=6):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(t, d) * 0.1)
        self.block = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, x):  # x: (B, T) int
        h = self.block(self.tok(x) + self.pos[: x.shape[1]])  # (B, T, d)
        return self.head(h).reshape(-1, self.head.out_features)  # (B*T, vocab)


class Recurrent(nn.Module):
    def __init__(self, cls, **kw):
        super().__init__()
        self.emb = nn.EmbeddingBag(7, 4, mode="mean")
        self.rnn = cls(4, 5, num_layers=2, bidirectional=True, batch_first=True, **kw)
        self.out = nn.Linear(2 * (kw.get("proj_size") or 5), 3)

    def forward(self, x):  # x: (B, T, 3) int
        b, t, _ = x.shape
        h = self.emb(x.reshape(b * t, 3)).reshape(b, t, 4)  # (B, T, 4)
        return self.out(self.rnn(h)[0].mean(1))  # (B, 3)


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 Conv1D (weight (in, out), y = x W + b), without importing transformers."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight).reshape(x.size()[:-1] + (self.nf,))


Conv1D.__module__ = "transformers.pytorch_utils"


class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, kdim=6, vdim=5, batch_first=True)
        self.proj = Conv1D(4, 8)

    def forward(self, q, k, v):
        return self.proj(self.attn(q, k, v, need_weights=False)[0]).flatten(1)


def _reference(model, space, bits):
    """A float copy with every quantized weight replaced by quantize_hard, under all its keys."""
    ref = copy.deepcopy(model)
    unprepare_(ref)
    sd = ref.state_dict()
    for layer in space.layers:
        w = space.float_weight(layer.name)
        for key in layer.state_keys:
            sd[key] = quantize_hard(w, bits[layer.name])
    ref.load_state_dict(sd)
    return ref


def _cases():
    torch.manual_seed(0)
    lm_x = torch.randint(0, 11, (3, 6))
    rec_x = torch.randint(0, 7, (2, 4, 3))
    ca = (torch.randn(2, 3, 8), torch.randn(2, 4, 6), torch.randn(2, 4, 5))
    return {
        "lm": (lambda: TinyLM(), (lm_x,), PrepareConfig(params=("pos",)),
               ["pos", "tok", "block.self_attn.in_proj_weight", "block.self_attn.out_proj", "block.linear1",
                "block.linear2"]),
        "lstm": (lambda: Recurrent(nn.LSTM, proj_size=3), (rec_x,), PrepareConfig(), None),
        "gru": (lambda: Recurrent(nn.GRU), (rec_x,), PrepareConfig(), None),
        "rnn": (lambda: Recurrent(nn.RNN), (rec_x,), PrepareConfig(), None),
        "cross": (lambda: CrossAttention(), ca, PrepareConfig(),
                  ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj", "proj"]),
    }


@pytest.mark.parametrize("case", ["lm", "lstm", "gru", "rnn", "cross"])
def test_every_kind_computes_quantized_and_round_trips(case, tmp_path):
    build, inputs, config, names = _cases()[case]
    model = build().eval()
    y_float = model(*inputs)
    keys = list(model.state_dict())
    space = prepare_(model, config)
    assert list(model.state_dict()) == keys  # float checkpoints still load
    if names is not None:
        assert space.names == names
    if case == "lstm":  # both directions of both layers, projections included
        assert sum(n.startswith("rnn.weight_") for n in space.names) == 12
    assert all(kind == "LayerNorm" for _, kind, _, _ in space.float_layers), space.float_layers
    # the mixed forward reaches every decision
    model(*inputs).float().pow(2).mean().backward()
    assert all(d.logits.grad is not None and d.logits.grad.abs().sum() > 0 for d in space.decision_list)
    space.fix_({n: 32 for n in space.names})
    assert torch.equal(model(*inputs), y_float)
    bits = {n: (1, 2, 3, 4, 8, 16)[i % 6] for i, n in enumerate(space.names)}
    space.fix_(bits)
    y = model(*inputs)
    assert not torch.allclose(y, y_float, atol=1e-3)
    torch.testing.assert_close(y, _reference(model, space, bits)(*inputs), rtol=0, atol=1e-5)
    export_model(model, space, tmp_path / "m.mbits")
    loaded = mixbits.load(tmp_path / "m.mbits", model=build())
    torch.testing.assert_close(loaded(*inputs), y, rtol=0, atol=1e-5)


def test_tied_embedding_and_head_are_one_decision(tmp_path):
    model = TinyLM().eval()
    space = prepare_(model, PrepareConfig(pins={"head": 2}))
    info = space.layers[space.names.index("tok")]
    assert info.aliases == ("head",) and info.keys == ("tok.weight", "head.weight") and info.pinned
    n_tok = 11 * 8
    assert space.cost.num_quantized_weights == n_tok + 4 * 8 * 8 + 2 * 8 * 16
    bits = {n: 4 for n in space.names} | {"tok": 2}
    space.fix_(bits)
    assert torch.equal(model.tok.weight, model.head.weight)
    assert torch.equal(model.tok.weight, quantize_hard(space.float_weight("tok"), 2))
    res = export_model(model, space, tmp_path / "m.mbits")
    assert res.within_bound
    f = read_mbits(tmp_path / "m.mbits")
    assert [r.name for r in f.layers].count("tok") == 1 and "head" not in [r.name for r in f.layers]


def test_excluding_an_alias_keeps_the_shared_weight_float_everywhere():
    model = TinyLM().eval()
    space = prepare_(model, PrepareConfig(exclude=("head",)))
    assert "tok" not in space.names
    assert ("tok", "Embedding", 88, "excluded") in space.float_layers
    assert torch.equal(model.head.weight, model.tok.weight) and model.head.weight is model.tok._parameters["weight"]


@pytest.mark.parametrize("kw,match", [
    ({"include": ("blok.*",)}, "include pattern 'blok.\\*' matches no quantizable layer"),
    ({"include": "tok"}, "include must be a list, got the string 'tok'"),
    ({"exclude": "head"}, "exclude must be a list"),
    ({"pins": {"tok": 2, "head": 4}}, "matches pins with different bits \\[2, 4\\]"),
    ({"pins": {"tok": 2}, "exclude": ("head",)}, "pinned and also excluded"),
    ({"params": ("nope",)}, "are not parameters of the model"),
    ({"params": ("block.norm1.bias",)}, "only tensors of two or more dimensions"),
    ({"target": "1000x"}, "unreachable.*can reach targets between"),
])
def test_pattern_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        prepare_(TinyLM(), PrepareConfig(**kw))


def test_hessian_sensitivity_survives_fused_attention():
    torch.manual_seed(0)
    model = TinyLM()
    space = prepare_(model)
    data = [(torch.randint(0, 11, (4, 6)), torch.randint(0, 11, (24,)))]
    omega, traces = sensitivity(model, space, data, batches=1, samples=2)
    assert set(traces) == set(space.names)
    assert all(omega[n][1] >= omega[n][8] >= 0 for n in space.names)


def test_float_share_warning(caplog):
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model.add_module("big", nn.BatchNorm1d(200))
    with caplog.at_level("WARNING", logger="mixbits.space"):
        space = prepare_(model)
    assert "stay float" in caplog.text
    assert space.cost.summary({n: 4 for n in space.names})["quantized_param_share"] == pytest.approx(24 / 438)


class _OnceReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        if torch.is_grad_enabled():  # a backward taken with create_graph=True
            raise RuntimeError("derivative for _OnceReLU_backward is not implemented")
        (x,) = ctx.saved_tensors
        return g * (x > 0)


def test_hessian_falls_back_to_first_order_without_double_backward(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    model.forward = lambda x: model[1](_OnceReLU.apply(model[0](x)))
    space = prepare_(model)
    data = [(torch.randn(5, 4), torch.randint(0, 3, (5,)))]
    with caplog.at_level("WARNING", logger="mixbits.methods.hessian"):
        _, traces = sensitivity(model, space, data, batches=1, samples=2)
    assert "first-order" in caplog.text and all(t > 0 for t in traces.values())


def test_hugging_face_gpt2_from_a_config(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the optional extra mixbits[hf] is not installed")
    config = transformers.GPT2Config(vocab_size=13, n_positions=8, n_embd=8, n_layer=1, n_head=2)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.m = transformers.GPT2LMHeadModel(config)

        def forward(self, x):
            return self.m(input_ids=x).logits

    model = LM().eval()
    x = torch.randint(0, 13, (2, 8))
    space = prepare_(model)
    assert space.names == ["m.transformer.wte", "m.transformer.wpe", "m.transformer.h.0.attn.c_attn",
                           "m.transformer.h.0.attn.c_proj", "m.transformer.h.0.mlp.c_fc", "m.transformer.h.0.mlp.c_proj"]
    assert space.layers[0].aliases == ("m.lm_head",)
    assert space.layers[2].kind == "Conv1D" and space.layers[2].shape == (8, 24)  # (in, out): rows are inputs
    bits = {n: (2, 4, 8)[i % 3] for i, n in enumerate(space.names)}
    space.fix_(bits)
    y = model(x)
    torch.testing.assert_close(y, _reference(model, space, bits)(x), rtol=0, atol=1e-5)
    export_model(model, space, tmp_path / "m.mbits")
    torch.testing.assert_close(mixbits.load(tmp_path / "m.mbits", model=LM())(x), y, rtol=0, atol=1e-5)

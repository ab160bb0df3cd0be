"""Every layer kind as a decision: MultiheadAttention, Embedding(Bag), LSTM/GRU/RNN, HF-style Conv1D,
named parameters and tied weights; each computes with its quantized weight, exports and loads identically."""

import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

import mixbits
from mixbits.commands.inspect import format_summary
from mixbits.export import MbitsFormatError, describe, export_model, read_mbits
from mixbits.export import fileformat
from mixbits.sensitivity import sensitivity
from mixbits.quant import quantize_hard, weight_codes
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
            sd[key] = quantize_hard(w, bits[layer.name], layer.channel_dim)
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
    for estimator in ("fisher", "hutchinson"):
        omega, traces = sensitivity(model, space, data, batches=1, samples=2, estimator=estimator)
        assert set(traces) == set(space.names)
        assert all(omega[n][1] >= omega[n][8] >= 0 for n in space.names)


def test_flattened_targets_fall_back_to_hutchinson(caplog):
    """Per-token targets flattened to (B*T,) cannot be split per sequence: Hutchinson's estimate, with a warning."""
    torch.manual_seed(0)
    model = TinyLM()
    space = prepare_(model)
    data = [(torch.randint(0, 11, (4, 6)), torch.randint(0, 11, (24,)))]
    with caplog.at_level("WARNING", logger="mixbits.sensitivity"):
        _, traces = sensitivity(model, space, data, batches=1, samples=2, seed=3)
    assert "got 4 input and 24 target rows" in caplog.text and "Hutchinson" in caplog.text
    _, hutch = sensitivity(model, space, data, batches=1, samples=2, seed=3, estimator="hutchinson")
    assert traces == hutch


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
    with caplog.at_level("WARNING", logger="mixbits.sensitivity"):
        _, traces = sensitivity(model, space, data, batches=1, samples=2, estimator="hutchinson")
    assert "first-order" in caplog.text and all(t > 0 for t in traces.values())
    # the default (Fisher) estimate needs no double backward: the same traces, no warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="mixbits.sensitivity"):
        _, fisher = sensitivity(model, space, data, batches=1)
    assert caplog.text == "" and fisher == pytest.approx(traces)


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
    conv1d = [layer for layer in space.layers if layer.kind == "Conv1D"]
    assert [layer.shape for layer in conv1d] == [(8, 24), (8, 8), (8, 32), (32, 8)]  # (in, out)
    assert all(layer.channel_dim == 1 for layer in conv1d) and space.layers[0].channel_dim == 0
    # one scale per output feature (column): 24 + 8 + 32 + 8 scales, not 8 + 8 + 8 + 32
    assert [layer.size_bits(4) - 4 * layer.num_weights for layer in conv1d] == [24 * 16, 8 * 16, 32 * 16, 8 * 16]
    bits = {n: (2, 4, 8)[i % 3] for i, n in enumerate(space.names)}
    space.fix_(bits)
    name = "m.transformer.h.0.mlp.c_fc"  # (8, 32) at 4 bits
    w, b = space.float_weight(name), bits[name]
    assert b == 4
    per_column = quantize_hard(w.t().contiguous(), b).t()
    assert torch.equal(quantize_hard(w, b, channel_dim=1), per_column)
    torch.testing.assert_close(model.m.transformer.h[0].mlp.c_fc.weight, per_column, rtol=0, atol=1e-7)
    assert float((per_column - quantize_hard(w, b)).abs().max()) > 1e-3  # per row differs
    y = model(x)
    ref = _reference(model, space, bits)
    torch.testing.assert_close(y, ref(x), rtol=0, atol=1e-5)
    res = export_model(model, space, tmp_path / "m.mbits")
    assert res.promised_bytes == space.cost.model_bits(bits) / 8 and res.within_bound
    assert read_mbits(tmp_path / "m.mbits").manifest["layer_channel_dims"] == {layer.name: 1 for layer in conv1d}
    loaded = mixbits.load(tmp_path / "m.mbits", model=LM())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ref.state_dict().items())
    assert torch.equal(loaded(x), ref(x))
    torch.testing.assert_close(loaded(x), y, rtol=0, atol=1e-5)


def _skewed_cross_attention():
    """CrossAttention whose Conv1D columns (output features) differ in magnitude by up to 1000x."""
    torch.manual_seed(0)
    model = CrossAttention().eval()
    with torch.no_grad():
        model.proj.weight.mul_(torch.tensor([0.01, 1.0, 10.0, 0.1]))  # weight (in 8, out 4)
    return model


def test_hf_conv1d_has_one_scale_per_output_column(tmp_path):
    model = _skewed_cross_attention()
    inputs = _cases()["cross"][1]
    space = prepare_(model)
    info = space.layers[space.names.index("proj")]
    assert (info.kind, info.shape, info.channel_dim, info.num_channels) == ("Conv1D", (8, 4), 1, 4)
    assert space.decision("proj").channel_dim == 1
    assert all(layer.channel_dim == 0 for layer in space.layers if layer.name != "proj")
    # the cost counts out_features = 4 float16 scales, not in_features = 8
    assert [info.size_bits(b) for b in (1, 4, 8, 16, 32)] == [32 + 64, 128 + 64, 256 + 64, 512, 1024]
    bits = {n: 8 for n in space.names} | {"proj": 4}
    space.fix_(bits)
    w = space.float_weight("proj").detach()
    q = model.proj.weight.detach()  # what the layer computes with: w + (Q(w) - w), Q(w) up to rounding
    per_column = quantize_hard(w.t().contiguous(), 4).t()
    per_row = quantize_hard(w, 4)
    assert torch.equal(quantize_hard(w, 4, channel_dim=1), per_column)
    torch.testing.assert_close(q, per_column, rtol=0, atol=1e-6)
    assert float((q - per_row).abs().max()) > 0.01
    # per row, the 10x column sets every row's scale and the 0.01x column rounds to zero
    assert per_row[:, 0].abs().max() == 0
    assert int((per_column[:, 0] != 0).sum()) == 7 and per_column[:, 0].unique().numel() == 6
    err = (per_column - w).norm(dim=0) / w.norm(dim=0)  # relative error per output column, (4,)
    assert float(err.max()) < 0.1, err  # per row: 1.0 (all zero) for the 0.01x and 0.1x columns
    assert ((per_row - w).norm(dim=0) / w.norm(dim=0))[[0, 3]].tolist() == [1.0, 1.0]
    scales = weight_codes(w.t().contiguous(), 4)[1]  # (out,)
    assert scales.shape == (4,) and float(scales.max() / scales.min()) > 100
    # the mixed (search) forward uses the same per-column quantizer
    space.unfix_()
    d = space.decision("proj")
    with torch.no_grad():
        d.logits.copy_(torch.tensor([-1e4, -1e4, 1e4, -1e4, -1e4, -1e4]))  # all weight on 4 of (1, 2, 4, 8, 16, 32)
    torch.testing.assert_close(model.proj.weight, per_column, rtol=0, atol=1e-6)
    space.fix_(bits)

    y = model(*inputs)
    ref = _reference(model, space, bits)
    assert torch.equal(ref.proj.weight, per_column)
    torch.testing.assert_close(y, ref(*inputs), rtol=0, atol=1e-5)
    res = export_model(model, space, tmp_path / "m.mbits")
    assert res.promised_bytes == space.cost.model_bits(bits) / 8 and res.within_bound
    f = read_mbits(tmp_path / "m.mbits")
    assert f.manifest["layer_channel_dims"] == {"proj": 1}
    rec = f.layers[-1]
    assert (rec.name, rec.shape, rec.channel_dim, rec.codes_shape, rec.stored_bytes) == ("proj", (8, 4), 1, (4, 8), 16 + 8)
    assert torch.equal(f.blobs["scales"][-4:], scales.half())  # proj's scales come last
    row = describe(f)["layers"][-1]
    assert (row["channel_dim"], row["stored_bytes"]) == (1, 24)
    line = next(x for x in format_summary(describe(f)).splitlines() if x.startswith("proj "))
    assert line.split() == ["proj", "Conv1D", "8x4", "(scales", "along", "dim", "1)", "4", "24"]
    assert sum(r["stored_bytes"] for r in describe(f)["layers"]) * 8 == (
        space.cost.quantized_bits(bits) + 8 * sum(-(layer.num_weights * bits[layer.name]) % 8 for layer in space.layers))
    loaded = mixbits.load(tmp_path / "m.mbits", model=CrossAttention())
    assert torch.equal(loaded.proj.weight, per_column) and loaded.proj.weight.shape == (8, 4)
    assert list(loaded.state_dict()) == list(CrossAttention().state_dict())
    assert torch.equal(loaded(*inputs), ref(*inputs))
    torch.testing.assert_close(loaded(*inputs), y, rtol=0, atol=1e-5)


def test_conv1d_file_written_with_per_row_scales_still_loads(tmp_path):
    """Files from before channel dims (no layer_channel_dims) are read with scales along dim 0."""
    model = _skewed_cross_attention()
    space = prepare_(model)
    bits = {n: 4 for n in space.names}
    space.fix_(bits)
    export_model(model, space, tmp_path / "new.mbits")
    f = read_mbits(tmp_path / "new.mbits")
    state = fileformat.decode_state_dict(f)
    old_layers = [(dataclasses.replace(rec, channel_dim=0), space.float_weight(rec.name)) for rec in f.layers]
    manifest = dict(f.manifest)
    manifest.pop("layer_channel_dims")
    manifest.update(fileformat.records_to_json([rec for rec, _ in old_layers], f.floats))
    floats = [(frec, state[frec.key]) for frec in f.floats]
    fileformat.write_mbits(tmp_path / "old.mbits", fileformat.encode_tensors(old_layers, floats), manifest)
    old = read_mbits(tmp_path / "old.mbits")
    assert "layer_channel_dims" not in old.manifest and old.layers[-1].channel_dim == 0
    assert old.layers[-1].stored_bytes == 16 + 16  # 8 scales, one per row
    loaded = mixbits.load(tmp_path / "old.mbits", model=CrossAttention())
    assert torch.equal(loaded.proj.weight, quantize_hard(space.float_weight("proj"), 4))


def _rewrite(src, dst, change):
    from safetensors.torch import load as st_load, save

    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    manifest = json.loads(json.loads(data[8:8 + n])["__metadata__"]["mixbits"])
    change(manifest)
    text, tensors = json.dumps(manifest), st_load(data)
    dst.write_bytes(save(tensors, metadata={"mixbits": text, "mixbits_sha256": fileformat.checksum(text, tensors)}))
    return dst


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("layer_channel_dims"), "tensor 'scales' holds"),  # 8 scales expected, 4 stored
    (lambda m: m.update(layer_channel_dims={"proj": 2}), "'proj' has a bad channel dimension 2"),
    (lambda m: m.update(layer_channel_dims={"proj": True}), "bad channel dimension True"),
    (lambda m: m.update(layer_channel_dims={"proj": -1}), "bad channel dimension -1"),
    (lambda m: m.update(layer_channel_dims={"proj": 1, "nope": 1}), "names \\['nope'\\], which are not layers"),
    (lambda m: m.update(layer_channel_dims=[1]), "bad layer_channel_dims"),
])
def test_channel_dims_in_the_manifest_are_checked(tmp_path, change, message):
    model = _skewed_cross_attention()
    space = prepare_(model)
    space.fix_({n: 4 for n in space.names})
    export_model(model, space, tmp_path / "m.mbits")
    with pytest.raises(MbitsFormatError, match=message):
        read_mbits(_rewrite(tmp_path / "m.mbits", tmp_path / "bad.mbits", change))


def test_a_weight_read_as_out_in_and_as_in_out_cannot_share_scales():
    model = nn.Module()
    model.lin = nn.Linear(4, 4, bias=False)
    model.c1d = Conv1D(4, 4)
    model.c1d.weight = model.lin.weight
    model.other = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="'lin' is shared by layers that read its output channels along different "
                                         "dimensions \\(lin: dim 0, c1d: dim 1\\)"):
        prepare_(model)
    space = prepare_(model, PrepareConfig(exclude=("c1d",)))  # kept in float, the model still prepares
    assert space.names == ["other"]


# ---- issue 19: transposed convolutions, Bilinear, user kinds, writes through a prepared weight, peft, compile ----

class Autoencoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.dec = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.dec1 = nn.ConvTranspose1d(4, 2, 3)
        self.bil = nn.Bilinear(4, 4, 3)

    def forward(self, x):  # (N, 1, 8, 8) -> (N, 3 + 2*10)
        h = self.dec(torch.relu(self.enc(x)))  # (N, 4, 8, 8)
        p = h.mean((2, 3))  # (N, 4)
        s = self.dec1(h.mean(2))  # (N, 2, 10)
        return torch.cat([self.bil(p, p), s.flatten(1)], 1)


def test_conv_transpose_scales_per_output_channel_and_bilinear(tmp_path):
    torch.manual_seed(0)
    m = Autoencoder()
    space = prepare_(m)
    dims = {layer.name: (layer.kind, layer.channel_dim, layer.shape) for layer in space.layers}
    assert dims == {"enc": ("Conv2d", 0, (8, 1, 3, 3)), "dec": ("ConvTranspose2d", 1, (8, 4, 4, 4)),
                    "dec1": ("ConvTranspose1d", 1, (4, 2, 3)), "bil": ("Bilinear", 0, (3, 4, 4))}
    assert space.cost.num_quantized_weights == sum(p.numel() for n, p in m.named_parameters() if "weight" in n)
    space.fix_({"enc": 4, "dec": 2, "dec1": 3, "bil": 8})
    w = m.dec._parameters["weight"]
    assert torch.equal(m.dec.weight, quantize_hard(w, 2, channel_dim=1))
    # one scale per output channel: the 2-bit ConvTranspose weight has 3 levels per column of dim 1
    q = m.dec.weight.detach().transpose(0, 1).reshape(4, -1)
    assert all(len(torch.unique(row.abs())) <= 2 for row in q)
    x = torch.randn(3, 1, 8, 8)
    out = m.eval()(x)
    export_model(m, space, tmp_path / "ae.mbits")
    assert read_mbits(tmp_path / "ae.mbits").manifest["layer_channel_dims"] == {"dec": 1, "dec1": 1}
    assert torch.equal(mixbits.load(tmp_path / "ae.mbits", Autoencoder())(x), out)


class Scaled(nn.Module):
    """A layer kind mixbits does not know: y = x @ kernel.T * gain."""

    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(5, 4))
        self.gain = nn.Parameter(torch.ones(5))

    def forward(self, x):
        return x @ self.kernel.t() * self.gain


def test_register_target_adds_a_layer_kind_in_one_line():
    from mixbits import targets

    net = nn.Sequential(nn.Linear(3, 4), Scaled())
    saved = list(targets._REGISTRY)
    try:
        targets.register_target(Scaled, lambda m: ("kernel",))
        space = prepare_(net)
        assert space.names == ["0", "1.kernel"] and space.layers[1].kind == "Scaled"
        space.fix_({"0": 8, "1.kernel": 2})
        x = torch.randn(2, 3)
        h = net[0](x)
        assert torch.equal(net(x), h @ quantize_hard(net[1]._parameters["kernel"], 2).t() * net[1].gain)
    finally:
        targets._REGISTRY[:] = saved
        targets._MIXED_CLASSES.clear()
    with pytest.raises(ValueError, match="channel_dim"):
        targets.register_target(Scaled, lambda m: ("kernel",), channel_dim=-1)


def test_writes_through_a_prepared_weight_reach_the_float_parameter():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    space = prepare_(lin)
    space.fix_({"": 4})
    p = lin._parameters["weight"]
    w0 = p.detach().clone()
    with torch.no_grad():
        lin.weight.data += 1.0  # peft's merge writes this way
    assert torch.equal(p.detach(), w0 + 1.0)
    with torch.no_grad():
        lin.weight.copy_(w0)
    assert torch.equal(p.detach(), w0)
    nn.init.zeros_(lin.weight)
    assert torch.equal(p.detach(), torch.zeros_like(w0))
    lin.weight.requires_grad_(False)
    assert not p.requires_grad
    lin.weight = nn.Parameter(w0.clone())  # (requires grad)  # replaces the float Parameter, as on a float layer
    assert lin._parameters["weight"] is not p and torch.equal(lin._parameters["weight"], w0)
    assert torch.equal(lin.weight, quantize_hard(w0, 4))  # and the layer quantizes the new one
    with pytest.raises(ValueError, match="shape"):
        lin.weight = nn.Parameter(torch.zeros(2, 4))
    # reads compute with the quantized values and return plain tensors; .grad is the float Parameter's
    y = lin(torch.ones(1, 4))
    assert type(y) is torch.Tensor
    y.sum().backward()
    assert lin.weight.grad is lin._parameters["weight"].grad and lin.weight.grad is not None


def test_peft_lora_base_quantized_adapters_float_and_merge_adapter():
    peft = pytest.importorskip("peft")
    from mixbits.sensitivity import sensitivity

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights=False))
    space = prepare_(model, PrepareConfig(exclude=("*lora_*",)))
    assert space.names == ["base_model.model.0.base_layer", "base_model.model.2.base_layer"]
    assert all(not space.float_weight(n).requires_grad for n in space.names)
    x, y = torch.randn(6, 8), torch.randint(0, 3, (6,))
    omega, traces = sensitivity(model, space, [(x, y)], batches=1, samples=1)  # frozen base weights: no crash
    assert set(traces) == set(space.names)
    assert all(not space.float_weight(n).requires_grad for n in space.names)  # still frozen
    space.fix_({n: 4 for n in space.names})
    w0 = space.float_weight(space.names[0]).detach().clone()
    unmerged = model(x)
    model.merge_adapter()
    assert not torch.equal(space.float_weight(space.names[0]).detach(), w0)  # the merge reached the float weight
    model.unmerge_adapter()
    assert torch.allclose(space.float_weight(space.names[0]).detach(), w0, atol=1e-6)
    assert torch.allclose(model(x), unmerged, atol=1e-5)
    # adapters quantized too when not excluded
    model2 = peft.get_peft_model(nn.Sequential(nn.Linear(8, 16)), peft.LoraConfig(r=2, target_modules=["0"]))
    assert len(prepare_(model2).names) == 3


def test_compiled_model_is_prepared_exported_and_loaded_as_its_module(tmp_path):
    import torch._dynamo

    torch.manual_seed(0)
    torch._dynamo.reset()
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    compiled = torch.compile(net)
    space = prepare_(compiled, PrepareConfig(granularity="channel"))
    assert space.names == ["0", "3"] and all("_orig_mod" not in k for layer in space.layers for k in layer.state_keys)
    space.fix_({"0": (2, 4, 8, 2), "3": (4, 2, 8)})
    x = torch.randn(2, 1, 6, 6)
    out = compiled.eval()(x)
    with torch.no_grad():
        net[0]._parameters["weight"].add_(0.05)  # the weights move (as in fine-tuning): no stale cache
    moved = compiled(x)
    assert not torch.allclose(moved, out)
    export_model(compiled, space, tmp_path / "c.mbits")
    assert "_orig_mod" not in json.dumps(read_mbits(tmp_path / "c.mbits").manifest)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    loaded = mixbits.load(tmp_path / "c.mbits", plain)
    assert torch.equal(loaded(x), net(x))  # the eager prepared model and the file agree exactly
    assert torch.allclose(loaded(x), moved, atol=1e-5)  # the compiled model ran with exactly these weights


def test_compiled_prepared_model_does_not_recompile_while_logits_temperature_and_bits_change():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    torch._dynamo.reset()
    counters.clear()
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    compiled = torch.compile(net)
    space = prepare_(compiled)
    opt = torch.optim.Adam(space.parameters(), lr=0.1)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))

    def steps(n, t0):
        for i in range(n):
            space.set_temperature_(t0 / (i + 1))
            loss = torch.nn.functional.cross_entropy(compiled(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    steps(2, 1.0)
    frames = counters["frames"]["total"]  # compiled once per weight shape (the mixed weight is computed eagerly)
    steps(5, 0.5)
    space.fix_({n: 4 for n in space.names})
    steps(2, 1.0)
    space.fix_({"0": 2, "3": 8, "5": 32})
    steps(2, 1.0)
    assert counters["frames"]["total"] == frames


def test_conv_transpose_bits_per_channel_export_and_load(tmp_path):
    torch.manual_seed(0)
    m = Autoencoder()
    space = prepare_(m, PrepareConfig(granularity="channel"))
    dec = next(layer for layer in space.layers if layer.name == "dec")
    assert dec.grouped and dec.num_channels == 4 and dec.channel_dim == 1
    bits = {layer.name: (tuple([2, 4, 8, 32] * 8)[:layer.num_groups] if layer.grouped else 8) for layer in space.layers}
    space.fix_(bits)
    x = torch.randn(3, 1, 8, 8)
    out = m.eval()(x)
    export_model(m, space, tmp_path / "ae.mbits")
    assert torch.equal(mixbits.load(tmp_path / "ae.mbits", Autoencoder())(x), out)

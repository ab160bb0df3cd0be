"""The character-level LM of ``benchmarks/charlm.py``: the (B, V, T) logits contract, file-disjoint splits,
and a post-training allocation on a tiny one (seconds)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mixbits
from mixbits.train import TrainConfig, correct_count

from ._benchmark_scripts import load_benchmark, unload_benchmark


@pytest.fixture(scope="module")
def charlm():
    module = load_benchmark("charlm")
    yield module
    unload_benchmark(module)


def _tiny(charlm, seed=0):
    torch.manual_seed(seed)
    return charlm.CharLM(charlm.CharLMConfig(d=16, layers=1, heads=2, context=8))


def _token_batches(charlm, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, charlm.VOCAB, (n * 8 + 1,), generator=g)
    return charlm.Batches(*charlm.windows(tokens, 8), batch_size=8)


def test_logits_are_batch_vocab_time_for_batch_time_targets(charlm):
    model = _tiny(charlm)
    x, y = next(iter(_token_batches(charlm)))
    out = model(x)
    assert out.shape == (8, charlm.VOCAB, 8)
    assert F.cross_entropy(out, y).dim() == 0
    assert correct_count(out, y)[1] == 64  # every token counted
    # causal: changing the last input token changes no earlier position's logits
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % charlm.VOCAB
    torch.testing.assert_close(model(x2)[:, :, :-1], out[:, :, :-1])
    assert model.head.weight is model.tok.weight


def test_windows_shift_targets_by_one(charlm):
    tokens = torch.arange(50)
    x, y = charlm.windows(tokens, 8)
    assert x.shape == (6, 8) and torch.equal(y, x + 1)
    x, y = charlm.spread_windows(tokens, 8, 4)
    assert x.shape == (4, 8) and torch.equal(y, x + 1) and x[0, 0] == 0 and int(y[-1, -1]) <= 49
    with pytest.raises(ValueError, match="windows"):
        charlm.windows(tokens, 8, count=7)


def test_splits_are_disjoint_by_file_and_pinned_by_hash(charlm):
    corpus = charlm.build_corpus()
    sets = {k: set(v) for k, v in corpus.files.items()}
    assert all(sets.values())
    assert not (sets["train"] & sets["held_out"] or sets["train"] & sets["test"] or sets["held_out"] & sets["test"])
    for split, files in corpus.files.items():
        assert all(charlm.split_of(f) == split for f in files)
    assert min(corpus.held_out.numel(), corpus.test.numel()) > 100_000
    bad = {**corpus.describe(), "sha256": {**corpus.sha256, "test": "0" * 64}}
    with pytest.raises(RuntimeError, match="differs"):
        charlm.build_corpus(bad)


def test_post_training_allocation_returns_valid_bits_under_the_budget(charlm):
    model = _tiny(charlm)
    teacher = _tiny(charlm).eval()
    space = mixbits.prepare_(model, mixbits.PrepareConfig())
    assert len(space.layers) == 5  # tok (tied with the head, one decision), qkv, proj, fc1, fc2
    train, held = _token_batches(charlm, seed=1), _token_batches(charlm, seed=2)
    for method, options in (("hessian", {}), ("evolution", {"evaluations": 4})):
        res = mixbits.allocate(model, space, train, held, target="16x", method=method, post_training=True,
                               options=options, teacher=teacher)
        assert set(res.bits) == {layer.name for layer in space.layers}
        assert all(res.bits[layer.name] in layer.candidates for layer in space.layers)
        assert space.cost.quantized_bits(res.bits) <= mixbits.budget_bits("16x", space.cost)
    history = mixbits.finetune_(model, space, res.bits, train, TrainConfig(epochs=1, lr=0.01, distill_weight=0.5),
                                teacher=teacher)
    assert len(history) == 1 and history[0]["train_accuracy"] is not None  # per-token accuracy counted

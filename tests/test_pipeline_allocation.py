"""``mixbits.pipeline.allocation``: what follows an allocation depends on the bits and the seed only."""

from __future__ import annotations

import itertools

import torch

from mixbits.pipeline import Settings, fix_bits_, start_row
from mixbits.pipeline.allocation import rewind_streams_
from mixbits.pipeline.data import build_data
from mixbits.pipeline.finetune import finetune_and_evaluate
from mixbits.pipeline.float_model import new_model

SETTINGS = Settings(train_subset=256, batch_size=32, finetune_epochs=1, compute_matched=False, device="cpu")


def _setup():
    data = build_data(SETTINGS.data, train_subset=SETTINGS.train_subset, device=torch.device("cpu"))
    torch.manual_seed(0)
    float_state = {k: v.clone() for k, v in new_model(SETTINGS.model, data).state_dict().items()}
    return data, float_state


def _read_like_a_method(row):
    """What an allocation may do to a row's streams: read batches of every loader, draw from torch's RNG."""
    for name in ("full", "weights", "held_out"):
        list(itertools.islice(iter(row.loaders[name]), 3))
    torch.rand(1000)


def _bits(row, b):
    return {name: b for name in row.space.searchable()}


def test_the_bn_statistics_and_accuracy_of_fixed_bits_do_not_depend_on_what_was_read_before():
    data, float_state = _setup()
    fresh = start_row(SETTINGS, data, float_state, seed=3)
    used = start_row(SETTINGS, data, float_state, seed=3)
    _read_like_a_method(used)
    acc_fresh = fix_bits_(fresh, SETTINGS, _bits(fresh, 2))
    acc_used = fix_bits_(used, SETTINGS, _bits(used, 2))
    assert acc_used == acc_fresh
    stats = [k for k in fresh.model.state_dict() if "running_mean" in k]
    assert stats
    for key in stats:
        assert torch.equal(used.model.state_dict()[key], fresh.model.state_dict()[key]), key
    other_seed = start_row(SETTINGS, data, float_state, seed=4)
    fix_bits_(other_seed, SETTINGS, _bits(other_seed, 2))
    assert not all(torch.equal(other_seed.model.state_dict()[k], fresh.model.state_dict()[k]) for k in stats)


def test_fine_tuning_at_equal_bits_and_seed_gives_equal_weights_whatever_the_method_read():
    data, float_state = _setup()
    rows = [start_row(SETTINGS, data, float_state, seed=1) for _ in range(2)]
    _read_like_a_method(rows[1])
    results = [finetune_and_evaluate(row, SETTINGS, _bits(row, 4), 0.0) for row in rows]
    assert results[0].test_accuracy == results[1].test_accuracy
    a, b = (row.model.state_dict() for row in rows)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_rewind_puts_the_loaders_and_the_rng_back_where_the_row_started():
    data, float_state = _setup()
    row = start_row(SETTINGS, data, float_state, seed=0)
    first = next(iter(row.loaders["full"]))[0]
    draw = torch.rand(5)
    _read_like_a_method(row)
    rewind_streams_(row)
    assert torch.equal(next(iter(row.loaders["full"]))[0], first)
    assert torch.equal(torch.rand(5), draw)

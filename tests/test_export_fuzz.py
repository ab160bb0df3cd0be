"""Fuzzing ``mixbits.load`` with mutations of a real file: only the library's errors, never code, never wrong outputs.

The full run (>= 800 mutations) is ``benchmarks/fuzz_load.py``; these tests run a seeded
slice of the same mutations through the same subprocess harness, and every value edit
of the benchmark once, in process.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_load.py"
BIG = ("1.2M float names, 0 elements", "300k float names, 1 element", "400k one-weight layers",
       "30k one-weight layers", "16k one-weight layers")  # seconds to build: in the benchmark only


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mutated_files_only_give_library_errors(fuzz, tmp_path):
    s = fuzz.run(60, seed=1, workdir=str(tmp_path))
    assert s["code_executed"] == 0 and s["canary_fires_with_trust_code"] is True
    assert s["wrong_outputs"] == 0 and s["other_exceptions"] == 0 and s["hangs"] == 0, s["not_library_errors"]
    assert s["non_finite_outputs_undeclared"] == 0 and s["unsafe_text"] == 0
    assert sum(s["counts"].values()) == 60 and s["value_edits"] == 20
    for case in s["cases"]:  # the library's error, identical outputs, or a file the exporter could write
        assert case["outcome"] in ("library_error", "identical") or (
            case["outcome"] == "forged_other_model" and case["writable"]), case
    stale = s["by_family"]["stale"]  # a manifest edit without a new checksum fails it (or changed nothing)
    assert stale.get("library_error", 0) + stale.get("identical", 0) == 10 and stale["library_error"] >= 8
    assert s["longest_error_chars"] < 400 and s["peak_rss_mib"] < 1024


@pytest.fixture(scope="module")
def original(fuzz, tmp_path_factory):
    path = fuzz.make_original(tmp_path_factory.mktemp("fuzz") / "original.mbits")
    return path, fuzz.file_layout(path)


def test_every_value_edit_the_exporter_cannot_write_is_refused(fuzz, original, tmp_path):
    import mixbits
    from mixbits.commands.inspect import format_summary
    from mixbits.export import MbitsFormatError, describe

    path, layout = original
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # (B, C, H, W)
    reference = mixbits.load(path)(x)
    r = random.Random(7)
    for name, edit, writable in fuzz.VALUE_EDITS:
        if name in BIG:
            continue
        bad = tmp_path / "bad.mbits"
        for _ in range(3):  # three random draws of the edit
            bad.write_bytes(fuzz._value_mutation(path.read_bytes(), layout, edit, r))
            try:
                text = format_summary(describe(bad))
                assert all(c == "\n" or c.isprintable() for c in text), name
                y = mixbits.load(bad)(x)
            except MbitsFormatError as exc:
                assert str(exc).isprintable(), name
                continue
            assert writable or torch.equal(y, reference), f"{name} loaded with different outputs"
            assert torch.isfinite(y).all() or name == "bias -inf declared", name


def test_the_attacks_of_the_issues_are_in_the_mix(fuzz, tmp_path):
    edits = dict(fuzz.manifest_edits(tmp_path / "CANARY"))
    for name in ("import os:system", "zoo os:system", "width 3000", "width 8000", "swap running_mean/running_var",
                 "swap weight/bias", "deeply nested", "long layer name", "5000-digit integer", "format_version true",
                 "format_version 1.0"):
        assert name in edits
    # and the edits of format version 3's structures
    for name in ("change a group size", "drop layer_groups", "layer_groups of no layer", "grouped layer with bits",
                 "format_version 2", "group code out of range", "random group byte", "group padding nibble"):
        assert name in edits
    values = {name for name, _, _ in fuzz.VALUE_EDITS}
    for name in ("scale NaN", "scale +inf", "scale negative", "scale zero", "running_var negative",
                 "swap group nibbles", "group code out of range", "layer_keys steals a key", "0-dim tensor",
                 "wrong dtype tensor", "1.2M float names, 0 elements", "400k one-weight layers",
                 "escape codes in a name", "lone surrogate in a name"):
        assert name in values


def test_the_original_has_layers_with_structures(fuzz, tmp_path):
    from mixbits.export import read_mbits

    f = read_mbits(fuzz.make_original(tmp_path / "original.mbits"))
    assert f.manifest["format_version"] == 4
    assert f.manifest["layer_groups"] == {"features.3": 3, "features.7": 3, "classifier": 3}
    assert {r.name: r.bits for r in f.layers} == {
        "features.0": 2, "features.3": (4, 32, 16, 8, 2, 1), "features.7": (32, 16, 8, 2, 1, 4),
        "classifier": (16, 8, 2, 1)}
    assert f.blobs["group_bits"].tolist() == [0x93, 0x78, 0x01, 0x89, 0x17, 0x30, 0x78, 0x01]

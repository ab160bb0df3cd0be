"""Fuzzing ``mixbits.load`` with mutations of a real file: only the library's errors, never code, never wrong outputs.

The full run (>= 300 mutations) is ``benchmarks/fuzz_load.py``; this test runs a
seeded slice of the same mutations through the same subprocess harness.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_load.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mutated_files_only_give_library_errors(fuzz, tmp_path):
    s = fuzz.run(120, seed=1, workdir=str(tmp_path))
    assert s["code_executed"] == 0 and s["canary_fires_with_trust_code"] is True
    assert s["wrong_outputs"] == 0 and s["other_exceptions"] == 0 and s["hangs"] == 0, s["not_library_errors"]
    assert sum(s["counts"].values()) == 120 and s["counts"]["library_error"] >= 100
    stale = s["by_family"]["stale"]  # a manifest edit without a new checksum fails it (or changed nothing)
    assert stale.get("library_error", 0) + stale.get("identical", 0) == 30 and stale["library_error"] >= 25
    assert s["longest_error_chars"] < 400 and s["peak_rss_mib"] < 1024


def test_the_attacks_of_the_issue_are_in_the_mix(fuzz, tmp_path):
    edits = dict(fuzz.manifest_edits(tmp_path / "CANARY"))
    for name in ("import os:system", "zoo os:system", "width 3000", "width 8000", "swap running_mean/running_var",
                 "swap weight/bias", "deeply nested", "long layer name", "5000-digit integer", "format_version true",
                 "format_version 1.0"):
        assert name in edits
    # and the edits of format version 3's structures
    for name in ("change a group size", "drop layer_groups", "layer_groups of no layer", "grouped layer with bits",
                 "format_version 2", "group code out of range", "random group byte", "group padding nibble"):
        assert name in edits


def test_the_original_has_layers_with_structures(fuzz, tmp_path):
    from mixbits.export import read_mbits

    f = read_mbits(fuzz.make_original(tmp_path / "original.mbits"))
    assert f.manifest["format_version"] == 4
    assert f.manifest["layer_groups"] == {"features.3": 3, "features.7": 3, "classifier": 3}
    assert {r.name: r.bits for r in f.layers} == {
        "features.0": 2, "features.3": (4, 32, 16, 8, 2, 1), "features.7": (32, 16, 8, 2, 1, 4),
        "classifier": (16, 8, 2, 1)}
    assert f.blobs["group_bits"].tolist() == [0x93, 0x78, 0x01, 0x89, 0x17, 0x30, 0x78, 0x01]

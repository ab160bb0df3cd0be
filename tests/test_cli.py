"""The command line's shell: fast help without torch, one-line argument errors, defaults in sync."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixbits.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _torch_free(code: str) -> str:
    """Run ``code`` in a fresh interpreter; return its stdout after checking torch was never imported."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    check = code + "\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("argv", [["--help"], ["search", "--help"], ["sweep", "--help"], ["train", "--help"],
                                  ["search", "--target", "-5KB"], ["search", "--bits", ""]])
def test_help_and_argument_errors_do_not_import_torch(argv):
    _torch_free(f"from mixbits.cli import main\ncode = main({argv!r})\nassert code in (0, 2), code")


def test_import_mixbits_is_lazy():
    out = _torch_free("import mixbits\nprint(sorted(mixbits.__all__)[:2])")
    assert "BitSpace" in out


def test_public_names_still_resolve():
    import mixbits
    import mixbits.search  # noqa: F401  (binds the submodule; the public name stays the function)

    assert callable(mixbits.search) and mixbits.search.__name__ == "search"
    assert mixbits.prepare_.__module__ == "mixbits.space"
    with pytest.raises(AttributeError):
        mixbits.no_such_name  # noqa: B018


@pytest.mark.parametrize("argv,message", [
    (["search", "--target", "-5KB"], "mixbits search: error: argument --target: target '-5KB' must be positive"),
    (["search", "--target=-5KB"], "target '-5KB' must be positive"),
    (["search", "--bits", ""], "argument --bits: no candidate bits in '': write at least one bitwidth, e.g. "
                               "--bits 1,2,4,8,16,32"),
    (["search", "--target", "5QB"], "unknown unit 'qb'"),
    (["search", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_argument_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err


def test_option_followed_by_an_option_is_still_an_error(capsys):
    assert main(["search", "--target", "--quiet"]) == 2
    assert "argument --target: expected one argument" in capsys.readouterr().err


def test_help_defaults_match_the_configs():
    from mixbits.commands.defaults import SEARCH, SWEEP
    from mixbits.run import RunConfig
    from mixbits.sweep import SweepConfig

    for copy, cls in ((SEARCH, RunConfig), (SWEEP, SweepConfig)):
        real = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
        if cls is RunConfig:  # the method a post-training run gets by default
            real["post_training_method"] = RunConfig(post_training=True).method
        assert {k: real[k] for k in vars(copy)} == vars(copy)

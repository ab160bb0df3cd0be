"""The README's Python API example runs as written (with fewer epochs)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    code = blocks[0].replace("epochs=10", "epochs=2").replace("epochs=6", "epochs=2").replace("epochs=5", "epochs=1")
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    bits = scope["bits"]
    space = scope["space"]
    assert bits["0"] == 8
    import mixbits

    assert space.cost.quantized_bits(bits) <= mixbits.budget_bits("16x", space.cost)
    # The first example is the product's default path: mixbits.allocate with no method named, and a seed.
    (call,) = re.findall(r"mixbits\.allocate\((.*?)\)\n", code, flags=re.S)
    assert "method=" not in call and "seed=" in call
    info = scope["allocation"].info  # the default's record: every candidate, the chosen one the least held-out loss
    assert info["chosen"] and set(info["chosen"]) <= {"hessian", "evolution", "pairwise"}
    assert min(c["held_out_loss"] for c in info["candidates"]) == next(
        c["held_out_loss"] for c in info["candidates"] if c["methods"] == info["chosen"])


def _option_strings():
    import argparse

    from mixbits.cli import build_parser

    parser = build_parser()
    out = {("mixbits", o) for a in parser._actions for o in a.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out |= {(name, o) for a in sub._actions for o in a.option_strings}
    return out


def test_every_cli_option_is_in_the_readme():
    text = README.read_text()
    options = _option_strings()
    assert ("sweep", "--no-binary-point") in options and len(options) > 60
    missing = sorted(f"{cmd} {opt}" for cmd, opt in options if f"`{opt}" not in text and f" {opt}" not in text)
    assert not missing, f"README.md does not document {missing}"


def test_every_settings_key_is_in_the_readme():
    import dataclasses

    from mixbits.commands.train import FloatTrainConfig
    from mixbits.run import RunConfig
    from mixbits.sweep import SweepConfig

    text = README.read_text()
    keys = {f.name for cls in (RunConfig, SweepConfig, FloatTrainConfig) for f in dataclasses.fields(cls)}
    missing = sorted(k for k in keys if f"`{k}`" not in text and f"\n{k} = " not in text)
    assert not missing, f"README.md does not document the TOML keys {missing}"

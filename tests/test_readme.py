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
    assert space.cost.quantized_bits(bits) <= scope["result"].budget_bits

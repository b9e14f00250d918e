"""The README's scale-aware recipe example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_recipe_snippet_runs(capsys):
    text = README.read_text(encoding="utf-8")
    block = re.search(
        r"<!-- readme-recipe:start -->\n```python\n(.*?)```\n<!-- readme-recipe:end -->",
        text,
        re.S,
    )
    assert block is not None, "the README lost its recipe example"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "readout: zero" in out and "max_grad_norm" in out
    regime, check = namespace["regime"], namespace["check"]
    assert regime.step_count == 100
    assert check.is_flat(0.2)
    # init_ zeroes the readout and the biases, each in its own group: their first update
    # is no sign of a rate that is too high (no step-1 cut, no rollback of the model)
    assert [e for e in regime.events if e.step <= 1] == []

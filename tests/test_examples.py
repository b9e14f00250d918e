"""The example scripts run as a user would copy them (shortened)."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_toolbox_recipe_trains_resumes_and_reports(capsys):
    pytest.importorskip("sklearn")
    module = runpy.run_path(str(EXAMPLES / "toolbox_recipe.py"))
    accuracy = module["main"](["--steps", "30", "--precision", "bf16"])
    assert accuracy > 0.5  # 10 classes: chance is 0.1
    assert "muon / bf16 / accumulate 2: 30 updates" in capsys.readouterr().out

"""Exact resume: stop, continue in a new process, and match a run that never stopped."""

import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
SCRIPT = HERE / "_resume_run.py"


def python(*args):
    subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], check=True, cwd=HERE)


def test_resume_in_a_new_process_is_bit_identical(tmp_path):
    straight, first, second = (tmp_path / n for n in ("straight.pt", "first.pt", "second.pt"))
    python(0, 60, straight)
    python(0, 25, first)
    python(25, 60, second, first)
    a = torch.load(straight, weights_only=True)
    b = torch.load(second, weights_only=True)

    kinds = {e["kind"] for e in a["events"]}
    assert {"skip", "rollback", "change"} <= kinds, kinds  # the run was eventful
    assert any(e["step"] >= 25 for e in a["events"])  # also after the resume point
    assert repr(a["events"]) == repr(b["events"])  # repr: NaN evidence compares equal
    for key, value in a["regime"]["model"].items():
        assert torch.equal(value, b["regime"]["model"][key]), key
    assert a["regime"]["controller"]["multipliers"] == b["regime"]["controller"]["multipliers"]
    assert repr(a["regime"]["controller"]["policy_states"]) == repr(
        b["regime"]["controller"]["policy_states"]
    )
    state_a = a["regime"]["optimizers"][0]["state"]
    state_b = b["regime"]["optimizers"][0]["state"]
    for index in state_a:
        for name, tensor in state_a[index].items():
            assert torch.equal(tensor, state_b[index][name])

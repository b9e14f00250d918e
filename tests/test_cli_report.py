"""``trimtab doctor`` and ``trimtab report`` from the command line."""

from __future__ import annotations

import json

import pytest

from report_helpers import corpus
from trimtab.cli import main


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    dc = corpus()
    return {kind: dc.run_case(dc.Case(kind, 0), tmp) for kind in ("lr_low", "healthy/sgd")}


def test_doctor_prints_the_symptom_first_and_exits_1(logs, capsys, tmp_path):
    note = tmp_path / "note.md"
    assert main(["doctor", str(logs["lr_low"]), "--note", str(note)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("Main finding: training is stable but slow")
    assert "evidence: loss/train went from" in out
    assert note.read_text().startswith("# Recipe note: lr_low-0")


def test_doctor_json_and_a_healthy_run_exit_0(logs, capsys):
    assert main(["doctor", "--json", str(logs["healthy/sgd"])]) == 0
    assert json.loads(capsys.readouterr().out)["main"] is None


def test_doctor_on_a_missing_file_says_so(capsys):
    assert main(["doctor", "nope.jsonl"]) == 2
    assert "no such log: nope.jsonl" in capsys.readouterr().err


def test_report_writes_one_file_for_several_runs(logs, tmp_path, capsys):
    pytest.importorskip("plotly")
    out = tmp_path / "r.html"
    assert main(["report", *map(str, logs.values()), "-o", str(out)]) == 0
    assert out.exists() and "self-contained" in capsys.readouterr().out


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("demo", "report", "doctor"))

import subprocess
import sys

from trimtab import read_log
from trimtab.cli import main


def test_demo_prints_the_table_and_writes_both_logs(tmp_path, capsys):
    assert main(["demo", "--epochs", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "AdamW + trimtab" in out and "rollbacks" in out
    for name in ("adamw", "trimtab"):
        path = tmp_path / f"{name}.jsonl"
        assert str(path) in out
        assert next(iter(read_log(path)))["type"] == "run"


def test_help_is_available_from_the_console_script():
    result = subprocess.run(
        [sys.executable, "-m", "trimtab.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "demo" in result.stdout

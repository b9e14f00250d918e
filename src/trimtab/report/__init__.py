"""Reading a run after the fact: the doctor, the recipe note, the dashboard, reporters.

Nothing here is imported by the training loop, and plotting or logging libraries load
only when the function that needs them is called (each names the extra to install).
"""

from __future__ import annotations

from trimtab.report.doctor import Diagnosis, Finding, diagnose
from trimtab.report.recipe import recipe_note
from trimtab.report.runlog import Observation, RunLog, from_records, load_run

__all__ = [
    "ConsoleReporter",
    "Diagnosis",
    "Finding",
    "MLflowReporter",
    "Observation",
    "RunLog",
    "TensorBoardReporter",
    "diagnose",
    "from_records",
    "load_run",
    "recipe_note",
    "write_html",
]


def __getattr__(name: str) -> object:
    # The dashboard and reporters pull in optional libraries only when asked for.
    if name == "write_html":
        from trimtab.report.html import write_html

        return write_html
    if name == "TensorBoardReporter":
        from trimtab.report.tensorboard import TensorBoardReporter

        return TensorBoardReporter
    if name == "MLflowReporter":
        from trimtab.report.mlflow import MLflowReporter

        return MLflowReporter
    if name == "ConsoleReporter":
        from trimtab.report.console import ConsoleReporter

        return ConsoleReporter
    raise AttributeError(f"module 'trimtab.report' has no attribute {name!r}")

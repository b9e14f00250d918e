"""The ``trimtab report`` and ``trimtab doctor`` commands (the CLI may print)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trimtab.report.doctor import diagnose
from trimtab.report.recipe import write_recipe_note
from trimtab.report.runlog import RunLog, load_run


def _load(path: str) -> RunLog | None:
    try:
        return load_run(path)
    except FileNotFoundError:
        print(f"trimtab: no such log: {path}", file=sys.stderr)
    except (ValueError, KeyError) as exc:  # bad JSON, newer schema, missing keys
        print(f"trimtab: cannot read {path}: {exc}", file=sys.stderr)
    return None


def report(args: argparse.Namespace) -> int:
    runs = [_load(p) for p in args.logs]
    if any(r is None for r in runs):
        return 2
    try:
        from trimtab.report.html import write_html

        out = write_html(runs, args.out)  # type: ignore[arg-type]
    except ImportError as exc:
        print(f"trimtab: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained)")
    return 0


def doctor(args: argparse.Namespace) -> int:
    run = _load(args.log)
    if run is None:
        return 2
    diagnosis = diagnose(run)
    if args.json:
        print(json.dumps(diagnosis.as_dict(), indent=2))
    else:
        print(diagnosis.text())
    if args.note:
        path = write_recipe_note(run, Path(args.note))
        if not args.json:
            print(f"recipe note: {path}")
    return 0 if diagnosis.healthy else 1

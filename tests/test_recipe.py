"""The recipe note: what was tried first and how much each curve moved around it."""

from __future__ import annotations

from trimtab.report import from_records, recipe_note


def _records():
    records = [{"type": "run", "schema": 1}]
    losses = [2.0, 1.9, 1.8, 1.7, 1.0, 0.9, 0.8, 0.7]
    for i, loss in enumerate(losses):
        records.append({"type": "signals", "step": 10 * i, "values": {"loss/train": loss}})
    records.append(
        {
            "type": "event",
            "step": 30,
            "kind": "change",
            "knob": "lr",
            "group": "g0",
            "old": 0.1,
            "new": 0.03,
            "policy": "plateau",
            "reason": "val flat",
        }
    )
    for step, val in [(10, 2.1), (20, 2.0), (30, 1.9), (40, 1.2), (50, 1.1), (60, 1.0)]:
        records.append({"type": "observe", "step": step, "metrics": {"val_loss": val}})
    return records


def test_note_names_the_first_change_and_the_moves_around_it():
    note = recipe_note(from_records(_records(), name="r"))
    assert "step 30: `lr` of group `g0` 0.1 → 0.03 by `plateau` (val flat)" in note
    # loss/train: median of the 3 snapshots up to step 30 (1.8) vs after it (0.8)
    assert "`loss/train`: 1.8 → 0.8 (-56 %), before vs after step 30" in note
    # val_loss: median of 2.1, 2.0, 1.9 (2.0) vs 1.2, 1.1, 1.0 (1.1)
    assert "`val_loss`: 2 → 1.1 (-45 %), before vs after step 30" in note


def test_note_without_events_compares_start_and_end_and_says_what_to_try():
    records = [r for r in _records() if r["type"] != "event"]
    note = recipe_note(from_records(records, name="r"))
    assert "trimtab changed no knob" in note
    assert "from the first to the last 3 records" in note
    assert "**Next move.** target optimization" in note

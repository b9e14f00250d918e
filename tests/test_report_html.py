"""The HTML dashboard: self-contained, and it renders in a real headless browser."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys

import pytest

from report_helpers import logged_run
from trimtab.report import load_run, write_html
from trimtab.report.html import build_figure

pytest.importorskip("plotly", reason="the dashboard needs the 'report' extra")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    runs = [logged_run(tmp / "adaptive.jsonl", lr=2.0), logged_run(tmp / "calm.jsonl")]
    return write_html(runs, tmp / "report.html"), [load_run(r) for r in runs]


def test_page_is_self_contained_with_notes_events_and_both_runs(page):
    path, runs = page
    text = path.read_text()
    assert not re.search(r"<script[^>]+src=", text), "no external scripts (no CDN)"
    assert "Plotly" in text and len(text) > 1_000_000  # the library is inlined
    assert text.count("Recipe note:") == 2
    for event in runs[0].events:
        assert event["reason"].split(" (")[0][:40] in text.replace("&#x27;", "'")
    names = {trace.name for trace in build_figure(runs).data}
    assert {"adaptive: loss/train", "calm: loss/train", "adaptive: lr/g0"} <= names
    markers = next(t for t in build_figure(runs).data if t.name == "adaptive: events")
    assert list(markers.x) == [e["step"] for e in runs[0].events]
    texts = [html.unescape(h) for h in markers.hovertext]
    assert all(e["reason"] in h for e, h in zip(runs[0].events, texts, strict=True))
    changes = next(t for t in build_figure(runs).data if t.name == "adaptive: knob changes")
    assert list(changes.y) == [e["new"] for e in runs[0].events if e["kind"] == "change"]


def test_missing_plotly_names_the_extra(monkeypatch, tmp_path, page):
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(ImportError, match=r"trimtab\[report\]"):
        write_html([page[1][0]], tmp_path / "x.html")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (CI installs it)")
def test_page_renders_in_headless_chromium_without_js_errors(page, tmp_path):
    path = page[0]
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            *profile,
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    assert dom.stdout.count('class="main-svg"') >= 1, "plotly drew no chart"
    assert "Recipe note: adaptive" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            *profile,
            "--window-size=1200,1600",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            path.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pil = pytest.importorskip("PIL.Image")
    image = pil.open(shot).convert("L")
    variance = pytest.importorskip("PIL.ImageStat").Stat(image).var[0]
    assert variance > 100, f"screenshot looks blank (pixel variance {variance:.1f})"
    # The chart area (below the notes) must hold drawn lines, not just background.
    chart = image.crop((0, 800, 1200, 1600))
    assert sum(1 for count in chart.histogram() if count) > 20

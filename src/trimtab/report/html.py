"""The dashboard: one self-contained HTML file (plotly's JavaScript inlined, no CDN).

Panels, top to bottom: training and validation loss with every event as a marker
(hover shows its reason), other validation metrics, every knob per group, gradient norms,
update ratios, and any further signal (activation health, noise, curvature and their
thresholds when logged). Several runs share the axes, one colour per run. The recipe
note of the first run and an events table sit above and below the charts.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from trimtab.report.recipe import recipe_note
from trimtab.report.runlog import RunLog, Series, load_run

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
_DASHES = ("solid", "dot", "dash", "dashdot", "longdash")
_EVENT_SYMBOLS = {
    "change": "diamond",
    "skip": "x",
    "rollback": "triangle-down",
    "stop": "square",
    "restore": "star",
    "rescale": "circle-open",
}
_PANELS = (
    ("loss", "loss (train and validation)", True),
    ("metrics", "validation metrics", False),
    ("knobs", "knobs per group (effective values)", True),
    ("grad_norm", "gradient norm", True),
    ("update_ratio", "update / weight ratio", True),
    ("other", "other signals (activations, noise, curvature, thresholds)", False),
)


def _plotly():
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError as exc:
        raise ImportError("the HTML dashboard needs plotly: pip install 'trimtab[report]'") from exc
    return go, make_subplots


def _xy(series: Series) -> tuple[list[int], list[float | None]]:
    # Non-finite values become gaps so one NaN does not hide the rest of a curve.
    return [s for s, _ in series], [
        v if v == v and abs(v) != float("inf") else None for _, v in series
    ]


def _panel(name: str) -> str:
    prefix = name.split("/", 1)[0]
    if prefix in ("grad_norm", "update_ratio"):
        return prefix
    if prefix == "loss":
        return "loss"
    return "other"


def _loss_at(run: RunLog, step: int) -> float | None:
    before = [v for s, v in run.finite("loss/train") if s <= step]
    return before[-1] if before else None


def build_figure(runs: Sequence[RunLog]):
    """The plotly figure of ``runs`` (exposed for notebooks: ``fig.show()``)."""
    go, make_subplots = _plotly()
    rows = {key: i + 1 for i, (key, _, _) in enumerate(_PANELS)}
    fig = make_subplots(
        rows=len(_PANELS),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.035,
        subplot_titles=[title for _, title, _ in _PANELS],
    )
    multi = len(runs) > 1
    for r, run in enumerate(runs):
        color = _COLORS[r % len(_COLORS)]
        label = f"{run.name}: " if multi else ""

        def line(key, series, name, dash="solid", color=color, label=label, group=run.name):
            x, y = _xy(series)
            trace = go.Scatter(
                x=x,
                y=y,
                mode="lines",
                name=f"{label}{name}",
                legendgroup=group,
                line={"color": color, "dash": dash},
                connectgaps=False,
            )
            fig.add_trace(trace, row=rows[key], col=1)

        others = sorted(k for k in run.signals if _panel(k) != "loss" or k != "loss/train")
        line("loss", run.series("loss/train"), "loss/train")
        for i, metric in enumerate(run.metric_names()):
            key = "loss" if "loss" in metric else "metrics"
            line(key, run.metric(metric), metric, _DASHES[(i + 1) % len(_DASHES)])
        for i, knob in enumerate(sorted(run.knobs)):
            line("knobs", run.knobs[knob], knob, _DASHES[i % len(_DASHES)])
        for i, name in enumerate(k for k in others if k != "loss/train"):
            panel = _panel(name)
            line(
                panel,
                run.series(name),
                name,
                "dash" if "threshold" in name else _DASHES[i % len(_DASHES)],
            )
        if run.events:
            # Every event on the loss curve; knob changes also on the knob they moved.
            changes = [e for e in run.events if e.get("knob") and _number(e.get("new"))]
            for key, events, ys in (
                ("loss", run.events, [_loss_at(run, int(e["step"])) for e in run.events]),
                ("knobs", changes, [float(e["new"]) for e in changes]),
            ):
                if not events:
                    continue
                marker = {
                    "color": color,
                    "size": 11,
                    "line": {"width": 1, "color": "black"},
                    "symbol": [_EVENT_SYMBOLS.get(e.get("kind"), "circle") for e in events],
                }
                trace = go.Scatter(
                    x=[int(e["step"]) for e in events],
                    y=ys,
                    mode="markers",
                    name=f"{label}events" if key == "loss" else f"{label}knob changes",
                    legendgroup=run.name,
                    marker=marker,
                    hovertext=[_event_text(e) for e in events],
                    hoverinfo="text",
                )
                fig.add_trace(trace, row=rows[key], col=1)
    for key, _, log in _PANELS:
        if log:
            fig.update_yaxes(type="log", row=rows[key], col=1)
    fig.update_xaxes(title_text="step", row=len(_PANELS), col=1)
    fig.update_layout(
        height=260 * len(_PANELS),
        template="plotly_white",
        hovermode="closest",
        margin={"t": 40, "l": 60, "r": 20, "b": 40},
    )
    return fig


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _event_text(event: dict) -> str:
    what = str(event.get("kind", "change"))
    old, new = event.get("old"), event.get("new")
    if event.get("knob") and _number(old) and _number(new):
        what = f"{event['knob']}/{event.get('group')} {old:.3g} → {new:.3g}"
    # Plotly hover text understands a little HTML: escape what the policy wrote.
    reason = html.escape(f"{event.get('policy')}: {event.get('reason')}")
    return f"step {event['step']}: {html.escape(what)}<br>{reason}"


def _markdown(text: str) -> str:
    """The recipe note's small Markdown subset (headings, bold, code, lists) as HTML."""
    out, in_list = [], False
    for raw in text.splitlines():
        line = html.escape(raw)
        line = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", line)
        line = re.sub(r"`(.+?)`", r"<code>\1</code>", line)
        if line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{line[2:]}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.startswith("# "):
            out.append(f"<h2>{line[2:]}</h2>")
        elif line:
            out.append(f"<p>{line}</p>")
    if in_list:
        out.append("</ul>")
    return "\n".join(out)


def _events_table(runs: Sequence[RunLog]) -> str:
    head = "<tr><th>run</th><th>step</th><th>kind</th><th>knob/group</th><th>old</th>"
    head += "<th>new</th><th>policy</th><th>reason</th></tr>"
    rows = []
    for run in runs:
        for e in run.events:
            knob = f"{e.get('knob')}/{e.get('group')}" if e.get("knob") else ""
            old = "" if e.get("old") is None else f"{e['old']:.4g}"
            new = "" if e.get("new") is None else f"{e['new']:.4g}"
            cells = [
                run.name,
                e["step"],
                e.get("kind", ""),
                knob,
                old,
                new,
                e.get("policy", ""),
                e.get("reason", ""),
            ]
            rows.append(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
            )
    if not rows:
        return "<p>No events: trimtab changed nothing in these runs.</p>"
    return f"<table class='events'>{head}{''.join(rows)}</table>"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; }}
.note {{ background: #f6f8fa; border-left: 4px solid #1f77b4; padding: .5em 1em; }}
table.events {{ border-collapse: collapse; font-size: 13px; width: 100%; }}
table.events td, table.events th {{ border: 1px solid #ddd; padding: 3px 6px; }}
table.events th {{ background: #eee; }}
</style></head><body>
<h1>{title}</h1>
{notes}
{chart}
<h2>Events</h2>
{table}
</body></html>
"""


def write_html(
    runs: Sequence[RunLog | str | os.PathLike[str]], path: str | os.PathLike[str]
) -> Path:
    """Write the dashboard of one or more runs to ``path``; opens offline in a browser.

    Example:
        >>> write_html(["runs/a.jsonl", "runs/b.jsonl"], "report.html")  # doctest: +SKIP
    """
    loaded = [r if isinstance(r, RunLog) else load_run(r) for r in runs]
    if not loaded:
        raise ValueError("write_html needs at least one run")
    figure = build_figure(loaded)
    chart = figure.to_html(full_html=False, include_plotlyjs=True, div_id="trimtab-charts")
    notes = "\n".join(f"<div class='note'>{_markdown(recipe_note(r))}</div>" for r in loaded)
    title = "trimtab report: " + ", ".join(r.name for r in loaded)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        _PAGE.format(
            title=html.escape(title), notes=notes, chart=chart, table=_events_table(loaded)
        ),
        encoding="utf-8",
    )
    return out

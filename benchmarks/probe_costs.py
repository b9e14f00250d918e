"""Per-probe cost and the shift detector's delay / false-alarm rate:
``python -m benchmarks.probe_costs`` rewrites the Probes section of RESULTS.md.

Cost: median time of a training step with trimtab (no policies, the three required
probes plus the one measured) over a plain step, interleaved in one process so machine
noise hits both alike, at each probe's default cadence.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
from pathlib import Path

import torch

from benchmarks.overhead import interleaved
from benchmarks.sections import markers, replace_section
from trimtab.probes import DEFAULT_PROBES, PRESETS, PROBES, PageHinkley

REQUIRED = ("loss", "grad_norm", "nonfinite")
# Two small models, where fixed per-step cost dominates, and the overhead table's
# transformer, the model the <= 2 % target is measured on.
COLUMNS = {
    "width_128": "digits MLP (26k)",
    "digits_cnn": "digits CNN (12k)",
    "char_lm": "char_lm transformer (117k)",
}
START, END = markers("probes")


def _ratio(task: str, probes: tuple[str, ...], steps: int) -> float:
    ratios, _, regime, _ = interleaved(task, steps, policies=(), probes=list(probes))
    regime.close()
    return statistics.median(ratios)


def costs(steps: int) -> list[str]:
    rows = [
        "| probe | cost class | cadence | " + " | ".join(COLUMNS.values()) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]

    def cells(probes: tuple[str, ...]) -> str:
        return " | ".join(f"{_ratio(t, probes, steps):.3f}" for t in COLUMNS)

    rows.append(f"| loss + grad_norm + nonfinite (required) | free/cheap | 1 | {cells(REQUIRED)} |")
    for name, cls in PROBES.items():
        if name in REQUIRED:
            continue
        probe = cls()
        rows.append(f"| {name} | {probe.cost.value} | {probe.every} | {cells((*REQUIRED, name))} |")
    for preset, names in {"default": DEFAULT_PROBES, **PRESETS}.items():
        rows.append(f"| preset `{preset}` | | | {cells(tuple(names))} |")
    return rows


def shift_detection(seeds: int = 20) -> list[str]:
    rows = [
        "| stream (N(0,1) noise, 2000 steps) | alarms per 1000 steps / detection rate "
        "| median delay (steps) |",
        "|---|---|---|",
    ]
    false = 0
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        detector = PageHinkley()
        false += sum(detector.update(torch.randn((), generator=gen)).item() for _ in range(2000))
    rows.append(f"| stationary | {1000 * false / (2000 * seeds):.3f} false alarms | — |")
    for size in (0.5, 1.0, 2.0, 3.0):
        delays = []
        for seed in range(seeds):
            gen = torch.Generator().manual_seed(1000 + seed)
            detector = PageHinkley()
            for t in range(2000):
                value = torch.randn((), generator=gen) + (size if t >= 1000 else 0.0)
                if detector.update(value).item() and t >= 1000:
                    delays.append(t - 1000)
                    break
        rate = len(delays) / seeds
        delay = f"{statistics.median(delays):.0f}" if delays else "—"
        rows.append(f"| mean shift +{size:g} sigma at step 1000 | {rate:.0%} detected | {delay} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_costs")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    lines = [
        START,
        "",
        "## Probes: cost and validation",
        "",
        f"Date {datetime.date.today()}, CPU (2 cores, torch threads 1). Reproduce: "
        "`python -m benchmarks.probe_costs`.",
        "",
        "### Cost: step time with trimtab (no policies) / plain AdamW step, median over "
        f"{args.steps} interleaved steps",
        "",
        *costs(args.steps),
        "",
        "Curvature runs only when a closure is passed (the benchmark passes one); each "
        "reading costs 5 Hessian-vector products every 50 steps. The digits models take "
        "0.6-1.5 ms per step, so the fixed Python and dispatch cost of each probe's small "
        "tensor operations dominates: about 0.1 ms per step for the required three, most "
        "of it the shared gradient norms (one fused reduction) and the non-finite flag; "
        "the <= 2 % target is not met on models this small. On the transformer (35-40 ms "
        "per step) the default preset stays under 2 % (the overhead table measures it "
        "with an A/A control; single rows here differ by about 0.5 % from run to run). "
        "Single rows move by a few hundredths from run to run on the small models; the "
        "digits CNN column of an earlier run (2026-11-25) was far noisier (ratios below "
        "1, single rows up to 1.7 on a loaded machine).",
        "",
        "Alignment and update_ratio share one flat copy of the weights per group, taken "
        "on the step before each alignment reading (every 3 steps) and turned in place "
        "into minus the update; update_ratio (every 9 steps, plus the first) reads the "
        "same copy, so the default set copies the weights on a third of the steps.",
        "",
        "Host syncs: every probe returns device tensors; the controller reads all due "
        "values in one transfer per optimizer step (on the CPU, where there is no "
        "transfer, each value is read directly). The non-finite veto needs that read "
        "before the update, as GradScaler does; a device-side veto that reads the flag "
        "only on the decision cadence is not built (see the overhead notes). "
        "`tests/test_probes_no_sync.py` runs every probe on meta tensors, where any read "
        "of a value raises, so a probe that syncs fails on the CPU too; "
        "`python -m benchmarks.gpu_sync` counts synchronising calls per step on a GPU.",
        "",
        "### Shift detector (Page-Hinkley on standardised values, threshold 12, delta "
        "0.5), 20 seeds",
        "",
        *shift_detection(),
        "",
        "Each probe is validated in `tests/test_probes_diagnostics.py` against a truth: "
        "the noise scale against the closed form of linear regression (B_simple 7.66 "
        "with micro-batches and 7.57 across steps, truth 7.78), the power iteration "
        "against the exact Hessian (SGD+momentum, and Adam's preconditioned Hessian), "
        "the secant against an isotropic quadratic, the loss trend against a scripted "
        "slope, activation health against hand-made dead and saturated units.",
        "",
        END,
    ]
    replace_section(Path(args.results), START, END, lines)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The doctor's labelled corpus: deliberately broken and healthy tiny runs, and the score.

Every run trains a small seeded network on scikit-learn's bundled digits (no download)
for a few hundred steps under a monitoring-only ``Regime`` (no policies, so the faults
show in the log as they would without trimtab), then ``trimtab.report.diagnose`` reads
the log back. A broken run counts as diagnosed when the doctor's main finding is the
label of its fault; a healthy run is a false alarm when the doctor names any main finding.

    python benchmarks/doctor_corpus.py            # the whole corpus (about a minute)
    python benchmarks/doctor_corpus.py --quick    # one run per kind

Assumption (documented in docs/log-format.md): mixed precision is issue 8's work, so an
fp16 run records its precision the only way the log has today, through the parameter
dtypes in the run header; the doctor then assumes no loss scaling unless the header says
otherwise (``header["amp"]["loss_scaling"]``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

try:  # run as ``python benchmarks/doctor_corpus.py``, only this folder is on the path
    from benchmarks.sections import markers, replace_section
except ModuleNotFoundError:
    from sections import markers, replace_section

import trimtab
from trimtab.report import diagnose, load_run

# Which main finding a broken run must produce; None marks a healthy run.
EXPECTED = {
    "lr_high": "aggressive_step",
    "lr_low": "too_blunt",
    "overfit": "memorization",
    "dead_relu": "dead_units",
    "tanh_saturation": "saturation",
    "eval_train_mode": "eval_in_train_mode",
    "adam_l2": "adam_l2",
    "decay_norms": "decay_on_norms",
    "fp16_no_scaling": "fp16_no_loss_scaling",
    "backbone_drift": "backbone_drift",
    "shift": "distribution_shift",
}
HEALTHY = ("adamw", "sgd", "dropout", "finetune", "tanh")
STEPS = 200
BATCH = 64


@dataclass(frozen=True)
class Case:
    kind: str  # a key of EXPECTED, or "healthy/<variant>"
    seed: int

    @property
    def expected(self) -> str | None:
        return None if self.kind.startswith("healthy/") else EXPECTED[self.kind]

    @property
    def name(self) -> str:
        return f"{self.kind.replace('/', '-')}-{self.seed}"


def cases(per_kind: int = 6, healthy_seeds: int = 5, *, held_out: bool = False) -> list[Case]:
    """The labelled runs. ``held_out`` gives fresh seeds (same fault magnitudes, which
    cycle with ``seed % 3``) that were not looked at while the thresholds were set."""
    first, first_healthy = (per_kind, healthy_seeds) if held_out else (0, 0)
    broken = [Case(kind, first + s) for kind in EXPECTED for s in range(per_kind)]
    healthy = [
        Case(f"healthy/{v}", first_healthy + s) for v in HEALTHY for s in range(healthy_seeds)
    ]
    return broken + healthy


_DATA: dict[str, torch.Tensor] = {}


def _digits() -> dict[str, torch.Tensor]:
    if not _DATA:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x / 16.0, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.long)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
        _DATA.update(x=x[order[:1400]], y=y[order[:1400]], vx=x[order[1400:]], vy=y[order[1400:]])
    return _DATA


def _mlp(width: int = 128, act: type[nn.Module] = nn.ReLU, extra: tuple = ()) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, width), act(), *extra, nn.Linear(width, width), act(), nn.Linear(width, 10)
    )


def _decay_groups(model: nn.Module, wd: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": wd, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def _pretrained_backbone(seed: int) -> nn.Sequential:
    """A backbone trained on digits 0-4, to be fine-tuned on digits 5-9."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
    head = nn.Linear(128, 5)
    data = _digits()
    keep = data["y"] < 5
    x, y = data["x"][keep], data["y"][keep]
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(150):
        idx = torch.randint(len(x), (BATCH,), generator=gen)
        loss = F.cross_entropy(head(backbone(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return backbone


def _build(case: Case) -> tuple[nn.Module, torch.optim.Optimizer, dict]:
    """Model, optimizer and loop options for one case; the fault is set up here."""
    kind, seed = case.kind, case.seed
    torch.manual_seed(seed)
    opts: dict = {
        "eval_mode": True,
        "subset": None,
        "shift_at": None,
        "half": False,
        "classes": None,
        "steps": STEPS,
    }
    if kind in ("healthy/finetune", "backbone_drift"):
        backbone = _pretrained_backbone(seed)
        model = nn.Sequential(backbone, nn.Linear(128, 5))
        opts["classes"] = 5
        backbone_lr = 1e-4 if kind == "healthy/finetune" else [5e-3, 1e-2, 2e-2][seed % 3]
        head_lr = 3e-3 if kind == "healthy/finetune" else backbone_lr
        groups = [
            {"params": model[0].parameters(), "lr": backbone_lr, "name": "backbone"},
            {"params": model[1].parameters(), "lr": head_lr, "name": "head"},
        ]
        return model, torch.optim.Adam(groups), opts
    if kind in ("healthy/dropout", "eval_train_mode"):
        model = nn.Sequential(
            nn.Linear(64, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )
        opts["eval_mode"] = kind == "healthy/dropout"
        return model, torch.optim.Adam(model.parameters(), lr=1e-3), opts
    if kind == "healthy/tanh":
        model = _mlp(act=nn.Tanh)
        return model, torch.optim.Adam(model.parameters(), lr=2e-3), opts
    if kind == "healthy/sgd":
        model = _mlp()
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), opts
    model = _mlp(width=256 if kind == "overfit" else 128)
    if kind == "healthy/adamw":
        return model, torch.optim.AdamW(_decay_groups(model, 0.05), lr=2e-3), opts
    if kind == "lr_high":
        if seed % 2:
            return model, torch.optim.SGD(model.parameters(), lr=[3.0, 6.0, 12.0][seed % 3]), opts
        return model, torch.optim.Adam(model.parameters(), lr=[0.1, 0.3, 1.0][seed % 3]), opts
    if kind == "lr_low":
        if seed % 2:
            return model, torch.optim.SGD(model.parameters(), lr=[1e-4, 3e-4, 1e-3][seed % 3]), opts
        return model, torch.optim.Adam(model.parameters(), lr=[3e-6, 1e-5, 2e-5][seed % 3]), opts
    if kind == "overfit":
        opts.update(subset=48 + 16 * (seed % 3), steps=300)
        return model, torch.optim.Adam(model.parameters(), lr=3e-3), opts
    if kind == "dead_relu":
        with torch.no_grad():
            model[0].bias.fill_(-[4.0, 6.0, 8.0][seed % 3])
        return model, torch.optim.Adam(model.parameters(), lr=1e-3), opts
    if kind == "tanh_saturation":
        model = _mlp(act=nn.Tanh)
        with torch.no_grad():
            for layer in (model[0], model[2]):
                layer.weight.mul_([15.0, 25.0, 40.0][seed % 3])
        return model, torch.optim.Adam(model.parameters(), lr=1e-3), opts
    if kind == "adam_l2":
        wd = [0.05, 0.1, 0.3][seed % 3]
        return model, torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=wd), opts
    if kind == "decay_norms":
        model = _mlp(extra=(nn.LayerNorm(128),))
        wd = [0.1, 0.3, 0.5][seed % 3]
        return model, torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=wd), opts
    if kind == "fp16_no_scaling":
        model = model.half()
        opts["half"] = True
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), opts
    if kind == "shift":
        opts["shift_at"] = [80, 100, 120][seed % 3]
        return model, torch.optim.Adam(model.parameters(), lr=2e-3), opts
    raise ValueError(f"unknown corpus kind {kind!r}")


def run_case(case: Case, out: Path) -> Path:
    """Train one case under a monitoring-only Regime and return its log path."""
    model, optimizer, opts = _build(case)
    data = _digits()
    x, y, vx, vy = data["x"], data["y"], data["vx"], data["vy"]
    if opts["classes"]:
        keep, vkeep = y >= 5, vy >= 5
        x, y, vx, vy = x[keep], y[keep] - 5, vx[vkeep], vy[vkeep] - 5
    if opts["subset"]:
        x, y = x[: opts["subset"]], y[: opts["subset"]]
    dtype = torch.float16 if opts["half"] else torch.float32
    x, vx = x.to(dtype), vx.to(dtype)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(case.seed))
    log = out / f"{case.name}.jsonl"
    regime = trimtab.Regime(
        model,
        optimizer,
        total_steps=opts["steps"],
        policies=(),
        probes=(*trimtab.probes.DEFAULT_PROBES, "activations"),
        log=log,
    )
    gen = torch.Generator().manual_seed(case.seed + 7)
    shifted = False
    while not regime.should_stop:
        step = regime.step_count
        if opts["shift_at"] is not None and step >= opts["shift_at"]:
            shifted = True
        idx = torch.randint(len(x), (min(BATCH, len(x)),), generator=gen)
        xb = x[idx][:, perm] if shifted else x[idx]
        model.train()
        regime.backward(F.cross_entropy(model(xb).float(), y[idx]))
        regime.step()
        if regime.step_count % 20 == 0 and regime.step_count > 0:
            if opts["eval_mode"]:
                model.eval()
            with torch.no_grad():
                vxs = vx[:, perm] if shifted else vx
                logits = model(vxs).float()
                regime.observe(
                    val_loss=F.cross_entropy(logits, vy).item(),
                    accuracy=(logits.argmax(1) == vy).float().mean().item(),
                )
    regime.close()
    return log


def score(results: list[tuple[Case, str | None]]) -> dict:
    broken = [(c, m) for c, m in results if c.expected is not None]
    healthy = [(c, m) for c, m in results if c.expected is None]
    per_kind: dict[str, list[int]] = {}
    for case, main in broken:
        hit = per_kind.setdefault(case.kind, [0, 0])
        hit[0] += int(main == case.expected)
        hit[1] += 1
    return {
        "broken": len(broken),
        "healthy": len(healthy),
        "accuracy": sum(m == c.expected for c, m in broken) / max(len(broken), 1),
        "false_alarms": sum(m is not None for _, m in healthy) / max(len(healthy), 1),
        "per_kind": per_kind,
        "healthy_findings": [(c.name, m) for c, m in healthy if m is not None],
        "misses": [(c.name, c.expected, m) for c, m in broken if m != c.expected],
    }


def _rate(result: dict, key: str) -> str:
    return f"{result[key]:.1%}"


def markdown(tuned: dict, held: dict, seconds: float) -> str:
    lines = [
        "## Doctor",
        "",
        "Generated by `python benchmarks/doctor_corpus.py`: tiny seeded MLPs on "
        "scikit-learn's digits, 200-300 steps each under a monitoring-only `Regime` (no "
        f"policies), {seconds:.0f} s in all on 2 shared CPU cores. The thresholds in "
        "`trimtab/report/symptoms.py` were set while looking at the first set; the held-out "
        "set uses fresh seeds (same fault magnitudes, new initialisations and batch orders).",
        "",
        "Read these figures with their limits: four fault types (evaluation in training "
        "mode, Adam with L2, decay on norms and biases, fp16 without loss scaling) are "
        "set-up lints read from the run header and the observe records, so they are found "
        "by construction once logged; the corpus's fp16 runs hold float16 weights, which the "
        "header's dtypes record (a Regime with precision='fp16' records its loss scaling "
        "too). Dead and saturated units "
        "need the non-default `activations` probe, which every corpus run enables. The "
        "corpus has one fault per run, one task and one model family.",
        "",
        "| set | broken runs | main symptom named correctly (target >= 90 %) | healthy runs "
        "| false alarms (target <= 5 %) |",
        "|---|---|---|---|---|",
        f"| tuning (seeds 0-5, healthy 0-4) | {tuned['broken']} | {_rate(tuned, 'accuracy')} "
        f"| {tuned['healthy']} | {_rate(tuned, 'false_alarms')} |",
        f"| held-out (seeds 6-11, healthy 5-9) | {held['broken']} | "
        f"{_rate(held, 'accuracy')} | {held['healthy']} | {_rate(held, 'false_alarms')} |",
        "",
        "| fault | expected main finding | tuning | held-out |",
        "|---|---|---|---|",
    ]
    for kind, (hit, total) in tuned["per_kind"].items():
        h_hit, h_total = held["per_kind"][kind]
        lines.append(f"| {kind} | `{EXPECTED[kind]}` | {hit}/{total} | {h_hit}/{h_total} |")
    for label, result in (("tuning", tuned), ("held-out", held)):
        if result["misses"]:
            misses = ", ".join(f"{n} (got `{m}`)" for n, _, m in result["misses"])
            lines += ["", f"Misses ({label}): {misses}"]
        if result["healthy_findings"]:
            alarms = ", ".join(f"{n} (`{m}`)" for n, m in result["healthy_findings"])
            lines += ["", f"False alarms ({label}): {alarms}"]
    return "\n".join(lines) + "\n"


START, END = markers("doctor")


def write_results(section: str, path: Path) -> None:
    """Replace (or append) the doctor's marked section of RESULTS.md, leaving others alone."""
    replace_section(path, START, END, [START, "", section.rstrip("\n"), "", END])


def _evaluate(todo: list[Case], out: Path, on_case: Callable | None) -> dict:
    results = []
    for case in todo:
        diagnosis = diagnose(load_run(run_case(case, out)))
        results.append((case, diagnosis.main.code if diagnosis.main else None))
        if on_case is not None:
            on_case(case, diagnosis)
    return score(results)


def main(argv: list[str] | None = None, on_case: Callable | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run per kind, no file written")
    parser.add_argument("--out", help="keep the logs in this folder")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        if args.quick:
            result = _evaluate(cases(1, 1), out, on_case)
            print(
                f"quick: accuracy {result['accuracy']:.1%}, "
                f"false alarms {result['false_alarms']:.1%}, misses {result['misses']}"
            )
            return 0
        tuned = _evaluate(cases(), out, on_case)
        held = _evaluate(cases(held_out=True), out, on_case)
    section = markdown(tuned, held, time.perf_counter() - started)
    print(section)
    if not args.no_write:
        write_results(section, Path(__file__).with_name("RESULTS.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

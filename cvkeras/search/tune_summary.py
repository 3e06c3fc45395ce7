"""The files of a ``cvkeras tune`` search: one record per trial, ``tune.csv``, ``tune.png`` and ``RUN/best``.

Each trial's process writes ``RUN/trials/trial_NNN.json`` (:class:`TrialRecord`); after every trial
:func:`write_summary` rebuilds the table, the plot and the ``best`` link from those records, so workers on
several machines (KerasTuner's chief/worker mode) never write the same file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRIALS = "trials"
CSV = "tune.csv"
PLOT = "tune.png"
BEST = "best"
#: objective name -> (metrics.json key, direction)
OBJECTIVES = {"val_accuracy": ("accuracy", "max"), "val_cross_entropy": ("cross_entropy", "min"),
              "val_macro_f1": ("macro_f1", "max")}


def trial_name(trial_id: str) -> str:
    return f"trial_{int(trial_id):03d}"


@dataclass
class TrialRecord:
    """One line of ``tune.csv`` (kept as ``RUN/trials/trial_NNN.json`` by the process that ran it)."""

    trial: str
    status: str  # ok | failed
    objective: float | None
    seconds: float
    run: str
    values: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    worker: str = ""


def read_records(run: Path) -> list[TrialRecord]:
    out = []
    for p in sorted((run / TRIALS).glob("trial_*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            out.append(TrialRecord(**json.loads(p.read_text())))
    return out


def best_record(records: list[TrialRecord], direction: str) -> TrialRecord | None:
    ok = [r for r in records if r.status == "ok" and r.objective is not None and math.isfinite(r.objective)]
    if not ok:
        return None
    return (max if direction == "max" else min)(ok, key=lambda r: r.objective)


def write_summary(run: Path, objective: str) -> TrialRecord | None:
    """Rewrite tune.csv, tune.png and the ``best`` link from the trial records; the best record."""
    from cvkeras.run.files import atomic_write

    records = read_records(run)
    direction = OBJECTIVES[objective][1]
    names = sorted({k for r in records for k in r.values})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "status", objective, "seconds", "run", *names, "worker", "error"])
    for r in records:
        w.writerow([r.trial, r.status, "" if r.objective is None else f"{r.objective:.6g}", f"{r.seconds:.1f}",
                    r.run, *[r.values.get(n, "") for n in names], r.worker, r.error])
    atomic_write(run / CSV, buf.getvalue())
    best = best_record(records, direction)
    _plot(run / PLOT, records, objective, best)
    link = run / BEST
    if best is not None:
        tmp = run / f".{BEST}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(Path(TRIALS) / best.run, tmp, target_is_directory=True)
        os.replace(tmp, link)  # atomic: `cvkeras export RUN/best` never sees a missing link
    return best


def _plot(path: Path, records: list[TrialRecord], objective: str, best: TrialRecord | None) -> None:
    from cvkeras.analysis.plots import pyplot
    from cvkeras.run.files import atomic_write

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.4 * len(records) + 3), 3.5))
    ok = [(int(r.trial), r.objective) for r in records if r.status == "ok" and r.objective is not None]
    bad = [int(r.trial) for r in records if r.status != "ok"]
    if ok:
        ax.plot([t for t, _ in ok], [v for _, v in ok], "o-", color="tab:blue", label=objective)
    if bad:
        low = min((v for _, v in ok), default=0.0)
        ax.plot(bad, [low] * len(bad), "x", color="tab:red", markersize=9, label="failed")
    if best is not None:
        ax.plot([int(best.trial)], [best.objective], "*", color="gold", markersize=16, markeredgecolor="k",
                label=f"best: trial {best.trial} ({best.objective:.4g})")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(f"cvkeras tune: {objective} per trial")
    ax.grid(alpha=0.3)
    if ok or bad:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def record_trial(run: Path, record: TrialRecord) -> None:
    """Write one trial's record (``RUN/trials/<run>.json``), naming the worker that ran it."""
    from cvkeras.run.files import write_json

    record.worker = record.worker or os.environ.get("KERASTUNER_TUNER_ID", "")
    write_json(run / TRIALS / f"{record.run}.json", asdict(record))

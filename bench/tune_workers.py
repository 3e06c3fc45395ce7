"""Run `cvkeras tune` in KerasTuner's chief/worker mode on this machine; prints one JSON document.

One chief process (``KERASTUNER_TUNER_ID=chief``) holds the oracle and runs no trial; ``--workers`` worker
processes (``tuner0``, ``tuner1``, ...) ask it for trials over gRPC (``KERASTUNER_ORACLE_IP`` /
``KERASTUNER_ORACLE_PORT``) and write them into the same tuning directory, as machines sharing a file system
would. The JSON says which worker ran which trial, whether every trial is in ``tune.csv`` and where
``RUN/best`` points. The data is a small generated shapes folder (no download), models are tiny, so this
shows the mechanics, not a speed-up (on a 2-core machine the workers share the cores).

Usage::

    python bench/tune_workers.py [--workers 2] [--max-trials 4] [--port 8470]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "tune_workers"


def write_shapes(root: Path, per_class: int = 16, size: int = 40) -> Path:
    sys.path.insert(0, str(ROOT))
    from cvkeras.data.demo import draw_shape

    rng = np.random.default_rng(0)
    for kind in ("circle", "square", "triangle"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(kind, rng, size).save(root / kind / f"{kind}_{i:03d}.png")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-trials", type=int, default=4)
    ap.add_argument("--port", type=int, default=8470)
    args = ap.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    data = write_shapes(OUT / "data")
    run = OUT / "tune"
    cmd = [sys.executable, "-m", "cvkeras.cli", "tune", str(data), "-m", "mobilenet", "--alpha", "0.25",
           "--image-size", "32", "--weights", "none", "--batch-size", "8", "--epochs", "1", "--fine-tune-epochs",
           "1", "--steps-per-epoch", "2", "--max-trials", str(args.max_trials), "--algorithm", "random",
           "-o", str(run)]
    base = {**os.environ, "PYTHONPATH": str(ROOT), "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": str(args.port)}
    start = time.perf_counter()
    logs = {}
    procs = {}
    for tid in ["chief"] + [f"tuner{i}" for i in range(args.workers)]:
        logs[tid] = open(OUT / f"{tid}.log", "w")
        procs[tid] = subprocess.Popen(cmd, env={**base, "KERASTUNER_TUNER_ID": tid}, stdout=logs[tid],
                                      stderr=subprocess.STDOUT, cwd=ROOT)
        # (workers started first would wait for the chief's tuning directory; here the chief goes first)
    codes = {tid: p.wait(timeout=3600) for tid, p in procs.items()}
    for f in logs.values():
        f.close()
    rows = list(csv.DictReader((run / "tune.csv").open())) if (run / "tune.csv").is_file() else []
    per_worker: dict[str, list[str]] = {}
    for r in rows:
        per_worker.setdefault(r["worker"], []).append(r["trial"])
    result = {
        "workers": args.workers, "max_trials": args.max_trials, "exit_codes": codes,
        "trials_in_tune_csv": len(rows), "statuses": [r["status"] for r in rows],
        "trials_per_worker": per_worker,
        "every_worker_ran_a_trial": all(f"tuner{i}" in per_worker for i in range(args.workers)),
        "best": os.readlink(run / "best") if (run / "best").is_symlink() else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

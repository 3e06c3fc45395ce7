"""Benchmark `cvkeras export --int8` on real photos for several small backbones; prints one JSON document.

Per row: fine-tune the backbone from its real ImageNet weights on ``../shared/data/flowers`` with the
project's trainer and every default (``cvkeras finetune``: the auto recipe, which on this data resolves to 8 +
8 epochs of 92 steps and light augmentation; seeded 80/20 split), export with ``--int8`` and the default gates
(``export.export_run``: agreement >= 99 %, drop <= 1 point, repair on), then time every artifact on this CPU,
batch 1, same threads, same images, models taking turns (interleaved rounds). Per artifact: top-1 agreement
with Keras over every image not used for calibration (validation + held-back training) with its 95 % interval,
accuracy drop on the validation split with its paired 95 % interval, size ratio to the float32 file of its
format, latency ratio to float32 ONNX, and the layers an int8 repair kept in float (with the full-int8 figures
before it).

Rows (hardest first): MobileNet a0.25 224, MobileNetV2 a0.5 224, MobileNet a0.25 160, MobileNetV2 a0.35 224.
Trained runs are cached in ``bench/out/runs/<row>`` (reused when ``metrics.json`` is there), exports go to
``bench/out/exports/<row>``; the MobileNetV2 a0.5 export is also the one ``bench/bench_serving.py`` reads
(``bench/out/export``).

Goals (issue #9), per row: agreement >= 99 % and drop <= 0.5 point for int8 ONNX and int8 TFLite, size
<= 0.35 of float32, int8 ONNX latency <= 0.7 of float32 ONNX.

Usage::

    python bench/bench_export.py [--rows mobilenet-a0.25-224,...] [--threads 2] [--timing-images 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
DATA = SHARED / "flowers"
WEIGHTS = SHARED / "weights"
OUT = HERE / "out"
SEED = 42
#: (model, alpha, image size, weight file), hardest first.
ROWS = (
    ("mobilenet", 0.25, 224, "mobilenet_2_5_224_tf_no_top.h5"),
    ("mobilenet_v2", 0.5, 224, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"),
    ("mobilenet", 0.25, 160, "mobilenet_2_5_224_tf_no_top.h5"),
    ("mobilenet_v2", 0.35, 224, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"),
)
GOALS = {"int8_min_agreement_pct": 99.0, "int8_max_accuracy_drop_points": 0.5, "int8_max_size_ratio": 0.35,
         "int8_onnx_max_latency_ratio": 0.7}


def row_name(model: str, alpha: float, size: int) -> str:
    return f"{model}-a{alpha:g}-{size}"


def run_dir(model: str, alpha: float, size: int) -> Path:
    """The cached run of a row (the defaults and the seed are part of the name)."""
    return OUT / "runs" / f"{row_name(model, alpha, size)}-auto-s{SEED}"


def finetune(run: Path, model: str, alpha: float, size: int, weights: str) -> float | None:
    """Train with the project's own trainer and its defaults, unless a finished run is cached."""
    if (run / "metrics.json").is_file() and (run / "best.keras").is_file():
        return None
    cmd = [sys.executable, "-m", "cvkeras.cli", "finetune", str(DATA), "--model", model, "--alpha", str(alpha),
           "--weights", str(WEIGHTS / weights), "--image-size", str(size), "--seed", str(SEED),
           "--output", str(run), "--force"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=sys.stderr)  # a subprocess: no TensorFlow state leaks into timing
    return time.perf_counter() - t0


def time_artifacts(paths: list[Path], images: np.ndarray, threads: int, rounds: int = 5,
                   warmup: int = 10) -> dict[str, dict[str, float]]:
    """Per-image latency (batch of 1) of each model on the same images with the same threads.

    The CPU is shared, so models take turns: every round runs each model once over all images, and a
    model's figures are the median over all its rounds plus the spread of its per-round medians.
    """
    from serving.predictor import Predictor

    x = images.astype(np.float32)
    predictors = {p.name: Predictor.load(p, threads=threads, decode_workers=0) for p in paths}
    for p in predictors.values():
        for i in range(warmup):
            p.predict_batch(x[i % len(x) : i % len(x) + 1])
    times: dict[str, list[list[float]]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, p in predictors.items():
            t = []
            for i in range(len(x)):
                t0 = time.perf_counter()
                p.predict_batch(x[i : i + 1])
                t.append(time.perf_counter() - t0)
            times[name].append(t)
    out = {}
    for name, per_round in times.items():
        medians = [1000.0 * float(np.median(t)) for t in per_round]
        out[name] = {"median_ms": 1000.0 * float(np.median(np.concatenate(per_round))),
                     "round_medians_ms": [round(m, 3) for m in medians]}
    return out


def _pct(v: float | None) -> float | None:
    return None if v is None else round(100 * v, 2)


def bench_row(model: str, alpha: float, size: int, weights: str, args) -> dict:
    from export import export_run
    from serving.preprocess import load_resized

    name = row_name(model, alpha, size)
    run = run_dir(model, alpha, size)
    print(f"[{name}] training (cached runs are reused)", file=sys.stderr)
    train_s = finetune(run, model, alpha, size, weights)
    out = OUT / "export" if (model, alpha, size) == ("mobilenet_v2", 0.5, 224) else OUT / "exports" / name
    t0 = time.perf_counter()
    report = export_run(run, out, int8=True, threads=args.threads,
                        progress=lambda m: print(f"[{name}] {m}", file=sys.stderr))
    export_s = time.perf_counter() - t0

    split = json.loads((run / "split.json").read_text())
    val_paths = [p for p, _ in split["val"]][: args.timing_images]
    images = np.stack([load_resized(p, (size, size)) for p in val_paths])
    paths = [Path(a.path) for a in report.artifacts if Path(a.path).is_file()]
    latency = time_artifacts(paths, images, args.threads, args.timing_rounds)

    sizes = {a.name: a.size_bytes for a in report.artifacts}
    base_ms = latency.get("model.onnx", {}).get("median_ms")
    artifacts = []
    for a in report.artifacts:
        fmt_float = "model.onnx" if a.format == "onnx" else "model.tflite"
        lat = latency.get(a.name, {})
        row = {
            "artifact": a.name, "status": a.status,
            "agreement_pct": _pct(a.agreement), "agreement_ci_pct": [_pct(v) for v in a.agreement_ci or []],
            "n_agreement": a.n_reference,
            "accuracy_pct": _pct(a.paired_accuracy),
            "accuracy_drop_points": None if a.accuracy_drop is None else round(a.accuracy_drop, 2),
            "accuracy_drop_ci_points": [round(v, 2) for v in a.accuracy_drop_ci or []], "n_val": a.n_paired,
            "size_mb": None if a.size_bytes is None else round(a.size_bytes / 2**20, 3),
            "size_ratio": None if not sizes.get(fmt_float) or a.size_bytes is None
            else round(a.size_bytes / sizes[fmt_float], 3),
            "latency_ms_median": None if not lat else round(lat["median_ms"], 3),
            "latency_round_medians_ms": lat.get("round_medians_ms"),
            "latency_ratio_vs_onnx_fp32": None if not lat or not base_ms else round(lat["median_ms"] / base_ms, 3),
            "float_layers": a.float_layers,
        }
        if a.repair:
            full = a.repair.get("full_int8", {})
            row["before_repair"] = {"agreement_pct": _pct(full.get("agreement")),
                                    "accuracy_drop_points": None if full.get("accuracy_drop") is None
                                    else round(100 * full["accuracy_drop"], 2),  # the JSON's fraction
                                    "size_bytes": full.get("size_bytes")}
            row["repair_size_cost"] = a.repair.get("size_cost")
            row["repair_latency_cost"] = a.repair.get("latency_cost")
            row["repair_attempts"] = a.repair.get("attempts")
        artifacts.append(row)
    by = {r["artifact"]: r for r in artifacts}

    def goal(art: str, key: str, limit: float, at_least: bool = False) -> bool | None:
        v = by.get(art, {}).get(key)
        return None if v is None else bool(v >= limit if at_least else v <= limit)

    goals = {}
    for art in ("model_int8.onnx", "model_int8.tflite"):
        goals[f"{art} agreement"] = goal(art, "agreement_pct", GOALS["int8_min_agreement_pct"], True)
        goals[f"{art} drop"] = goal(art, "accuracy_drop_points", GOALS["int8_max_accuracy_drop_points"])
        goals[f"{art} size"] = goal(art, "size_ratio", GOALS["int8_max_size_ratio"])
    goals["model_int8.onnx latency"] = goal("model_int8.onnx", "latency_ratio_vs_onnx_fp32",
                                            GOALS["int8_onnx_max_latency_ratio"])
    return {
        "row": name, "model": model, "alpha": alpha, "image_size": size, "run": str(run),
        "keras_accuracy_pct": _pct(report.keras_accuracy), "images": report.images,
        "train_seconds": None if train_s is None else round(train_s, 1), "export_seconds": round(export_s, 1),
        "export_exit_code": report.exit_code, "timing_images": len(images), "artifacts": artifacts,
        "goals_met": goals,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(row_name(m, a, s) for m, a, s, _ in ROWS),
                    help="Comma-separated rows, e.g. mobilenet-a0.25-224.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timing-images", type=int, default=200)
    ap.add_argument("--timing-rounds", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    known = {row_name(m, a, s): (m, a, s, w) for m, a, s, w in ROWS}
    unknown = [r for r in wanted if r not in known]
    if unknown:
        print(f"error: unknown row(s) {', '.join(unknown)}; choose from {', '.join(known)}", file=sys.stderr)
        return 2
    rows = []
    path = OUT / "export_bench.json"
    for r in wanted:
        rows.append(bench_row(*known[r], args))
        doc = {"benchmark": "export", "data": "flowers (3670 photos, seeded 80/20 split)",
               "training": "cvkeras finetune defaults, real ImageNet weights", "threads": args.threads,
               "latency": "batch of 1, median over interleaved rounds", "goals": GOALS, "cpu": _cpu_name(),
               "load_average": os.getloadavg(), "rows": rows}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")  # after every row: a partial run keeps its rows
    print(json.dumps(doc, indent=2))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())

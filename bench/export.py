"""Benchmark `cvkeras export --int8` on real photos; prints one JSON document.

Fine-tunes MobileNetV2 alpha 0.5 from its real ImageNet weights on ``../shared/data/flowers`` with the
project's trainer (``cvkeras finetune``), exports every artifact with int8 (``export.export_run``), then
times every artifact on this CPU with the same threads and the same validation images, one image per
call. Reports, per artifact: accuracy and drop vs Keras, top-1 agreement, size ratio to the float32 file
of its format, and latency ratio to the float32 ONNX model.

Goals (from the export issue): int8 accuracy drop <= 0.5 points on both runtimes, int8 size <= 0.3 of
float32, int8 ONNX latency <= 0.6 of float32 ONNX.

Usage::

    python bench/export.py [--threads 2] [--calibration minmax] [--reuse]

Output: ``bench/out/run`` (the run), ``bench/out/export`` (the artifacts; the serving benchmark reads
``model.onnx`` and ``model_int8.onnx`` there) and ``bench/out/export_bench.json``.
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
# This script is bench/export.py and bench/ also holds serving.py: drop the script's folder from the
# import path so that `import export` / `import serving` get the packages, not the benchmark scripts.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
DATA = SHARED / "flowers"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"
OUT = HERE / "out"
GOALS = {"int8_max_accuracy_drop_points": 0.5, "int8_max_size_ratio": 0.3, "int8_onnx_max_latency_ratio": 0.6}


def finetune(run: Path, image_size: int, epochs: int, fine_tune_epochs: int, seed: int) -> float:
    """Train with the project's own trainer (a subprocess, so TensorFlow state does not leak into timing)."""
    cmd = [
        sys.executable, "-m", "cvkeras.cli", "finetune", str(DATA), "--model", "mobilenet_v2",
        "--alpha", "0.5",
        "--weights", str(WEIGHTS), "--image-size", str(image_size), "--epochs", str(epochs),
        "--fine-tune-epochs", str(fine_tune_epochs), "--seed", str(seed), "--precision", "float32",
        "--output", str(run), "--force",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    return time.perf_counter() - t0


def time_artifacts(paths: list[Path], images: np.ndarray, threads: int, rounds: int = 5,
                   warmup: int = 10) -> dict[str, dict[str, float]]:
    """Per-image latency (batch of 1) of each model on the same images with the same threads.

    The CPU is shared, so models take turns: every round runs each model once over all images, and a
    model's figures are the median and the mean over all its rounds (a noisy neighbour hits all alike).
    """
    from serving.predictor import Predictor

    x = images.astype(np.float32)
    predictors = {p.name: Predictor.load(p, threads=threads) for p in paths}
    for p in predictors.values():
        for i in range(warmup):
            p.predict_batch(x[i % len(x) : i % len(x) + 1])
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, p in predictors.items():
            for i in range(len(x)):
                t0 = time.perf_counter()
                p.predict_batch(x[i : i + 1])
                times[name].append(time.perf_counter() - t0)
    return {name: {"median_ms": 1000.0 * float(np.median(t)), "mean_ms": 1000.0 * float(np.mean(t))}
            for name, t in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--fine-tune-epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--calibration", default="minmax", choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--calibration-samples", type=int, default=300)
    ap.add_argument("--timing-images", type=int, default=200)
    ap.add_argument("--timing-rounds", type=int, default=5)
    ap.add_argument("--reuse", action="store_true", help="Reuse bench/out/run when it holds best.keras.")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    run = OUT / "run"
    train_s = None
    if not (args.reuse and (run / "best.keras").is_file()):
        train_s = finetune(run, args.image_size, args.epochs, args.fine_tune_epochs, args.seed)

    from cvkeras.pipeline import load_split_images
    from export import export_run

    t0 = time.perf_counter()
    report = export_run(run, OUT / "export", int8=True, calibration=args.calibration,
                        calibration_samples=args.calibration_samples, threads=args.threads,
                        progress=lambda m: print(m, file=sys.stderr))
    export_s = time.perf_counter() - t0

    images, _, _ = load_split_images(run, "val", max_samples=args.timing_images, seed=args.seed)
    paths = [Path(a.path) for a in report.artifacts if Path(a.path).is_file()]
    latency = time_artifacts(paths, images, args.threads, args.timing_rounds)

    sizes = {a.name: a.size_bytes for a in report.artifacts}
    rows = []
    for a in report.artifacts:
        fmt_float = "model.onnx" if a.format == "onnx" else "model.tflite"
        rows.append({
            "artifact": a.name, "status": a.status,
            "accuracy": None if a.accuracy is None else round(100 * a.accuracy, 2),
            "accuracy_drop_points": None if a.accuracy_drop is None else round(a.accuracy_drop, 2),
            "agreement": None if a.agreement is None else round(100 * a.agreement, 2),
            "max_abs_diff": a.max_abs_diff,
            "size_mb": None if a.size_bytes is None else round(a.size_bytes / 2**20, 3),
            "size_ratio": None if not sizes.get(fmt_float) or a.size_bytes is None
            else round(a.size_bytes / sizes[fmt_float], 3),
            "latency_ms_median": None if a.name not in latency else round(latency[a.name]["median_ms"], 3),
            "latency_ms_mean": None if a.name not in latency else round(latency[a.name]["mean_ms"], 3),
            "latency_ratio_vs_onnx_fp32": None if a.name not in latency or "model.onnx" not in latency
            else round(latency[a.name]["median_ms"] / latency["model.onnx"]["median_ms"], 3),
        })
    by = {r["artifact"]: r for r in rows}

    def goal(name: str, key: str, limit: float) -> bool | None:
        value = by.get(name, {}).get(key)
        return None if value is None else bool(value <= limit)

    checks = {
        "model_int8.onnx accuracy drop": goal("model_int8.onnx", "accuracy_drop_points",
                                              GOALS["int8_max_accuracy_drop_points"]),
        "model_int8.tflite accuracy drop": goal("model_int8.tflite", "accuracy_drop_points",
                                                GOALS["int8_max_accuracy_drop_points"]),
        "model_int8.onnx size": goal("model_int8.onnx", "size_ratio", GOALS["int8_max_size_ratio"]),
        "model_int8.tflite size": goal("model_int8.tflite", "size_ratio", GOALS["int8_max_size_ratio"]),
        "model_int8.onnx latency": goal("model_int8.onnx", "latency_ratio_vs_onnx_fp32",
                                        GOALS["int8_onnx_max_latency_ratio"]),
    }
    doc = {
        "benchmark": "export",
        "model": "mobilenet_v2 alpha 0.5, ImageNet weights, fine-tuned on flowers",
        "image_size": args.image_size, "threads": args.threads, "calibration": args.calibration,
        "calibration_samples": report.settings["calibration_samples"],
        "keras_accuracy": round(100 * report.keras_accuracy, 2), "val_images": report.n_val,
        "timing_images": len(images), "timing_rounds": args.timing_rounds,
        "latency": "batch of 1, median over interleaved rounds",
        "train_seconds": None if train_s is None else round(train_s, 1),
        "export_seconds": round(export_s, 1), "export_exit_code": report.exit_code,
        "artifacts": rows, "goals": GOALS, "goals_met": checks,
        "cpu": _cpu_name(),
    }
    text = json.dumps(doc, indent=2)
    (OUT / "export_bench.json").write_text(text + "\n")
    print(text)
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

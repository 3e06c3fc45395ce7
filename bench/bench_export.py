"""Benchmark `cvkeras export --int8` on real photos for several small backbones; prints one JSON document.

Per row: fine-tune the backbone from its real ImageNet weights on ``../shared/data/flowers`` with the
project's trainer and every default (``cvkeras finetune``: the auto recipe, which on this data resolves to 8 +
8 epochs of 92 steps and light augmentation; seeded 80/20 split), export with ``--int8`` and the default gates
(``export.export_run``: agreement >= 99 %, drop <= 1 point, repair on), then time every artifact on this CPU,
batch 1, same threads, same images, models taking turns (interleaved rounds). Per artifact: top-1 agreement
with Keras on the validation images (the gate) with its 95 % interval, beside it the held-back training images'
agreement and the two pooled (the gate before issue #22),
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
                                 [--timing-rounds 5] [--retime]

``--retime`` times the files of the last run again without exporting: latency is a property of the CPU's
load as much as of the model, and a long export run rarely has a quiet machine throughout.
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


def export_dir(model: str, alpha: float, size: int) -> Path:
    """Where a row's export goes; MobileNetV2 a0.5's is the one ``bench/bench_serving.py`` reads."""
    if (model, alpha, size) == ("mobilenet_v2", 0.5, 224):
        return OUT / "export"
    return OUT / "exports" / row_name(model, alpha, size)


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
    from cvkeras.serving.predictor import Predictor

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


def _pooled(a) -> float | None:
    """Agreement over validation + held-back training rows together (the pre-#22 gate), from both figures."""
    if a.agreement is None or a.held_back_agreement is None:
        return _pct(a.agreement)
    n, m = a.n_reference, a.n_held_back
    return _pct((a.agreement * n + a.held_back_agreement * m) / (n + m))


def bench_row(model: str, alpha: float, size: int, weights: str, args) -> dict:
    from cvkeras.export import export_run

    name = row_name(model, alpha, size)
    run = run_dir(model, alpha, size)
    print(f"[{name}] training (cached runs are reused)", file=sys.stderr)
    train_s = finetune(run, model, alpha, size, weights)
    out = export_dir(model, alpha, size)
    t0 = time.perf_counter()
    report = export_run(run, out, int8=True, threads=args.threads,
                        progress=lambda m: print(f"[{name}] {m}", file=sys.stderr))
    export_s = time.perf_counter() - t0

    sizes = {a.name: a.size_bytes for a in report.artifacts}
    artifacts = []
    for a in report.artifacts:
        fmt_float = "model.onnx" if a.format == "onnx" else "model.tflite"
        row = {
            "artifact": a.name, "status": a.status,
            "agreement_pct": _pct(a.agreement), "agreement_ci_pct": [_pct(v) for v in a.agreement_ci or []],
            "n_agreement": a.n_reference,  # validation images: the gate (issue #22)
            "held_back_agreement_pct": _pct(a.held_back_agreement), "n_held_back": a.n_held_back,
            # what the gate was before issue #22: validation and held-back training rows pooled
            "pooled_agreement_pct": _pooled(a),
            "accuracy_pct": _pct(a.paired_accuracy),
            "accuracy_drop_points": None if a.accuracy_drop is None else round(a.accuracy_drop, 2),
            "accuracy_drop_ci_points": [round(v, 2) for v in a.accuracy_drop_ci or []], "n_val": a.n_paired,
            "size_mb": None if a.size_bytes is None else round(a.size_bytes / 2**20, 3),
            "size_ratio": None if not sizes.get(fmt_float) or a.size_bytes is None
            else round(a.size_bytes / sizes[fmt_float], 3),
            "float_layers": a.float_layers,
            "path": a.path,
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
    result = {
        "row": name, "model": model, "alpha": alpha, "image_size": size, "run": str(run),
        "keras_accuracy_pct": _pct(report.keras_accuracy), "images": report.images,
        "train_seconds": None if train_s is None else round(train_s, 1), "export_seconds": round(export_s, 1),
        "export_exit_code": report.exit_code, "artifacts": artifacts,
    }
    timed(result, run, size, args)
    return result


def timed(row: dict, run: Path, size: int, args) -> None:
    """Time a row's artifact files (interleaved rounds) and set its latency fields and goals (edits ``row``)."""
    from cvkeras.serving.preprocess import load_resized

    split = json.loads((run / "split.json").read_text())
    images = np.stack([load_resized(p, (size, size)) for p, _ in split["val"][: args.timing_images]])
    paths = [Path(a["path"]) for a in row["artifacts"] if a.get("path") and Path(a["path"]).is_file()]
    latency = time_artifacts(paths, images, args.threads, args.timing_rounds)
    base_ms = latency.get("model.onnx", {}).get("median_ms")
    for a in row["artifacts"]:
        lat = latency.get(Path(a.get("path") or a["artifact"]).name, {})
        a["latency_ms_median"] = None if not lat else round(lat["median_ms"], 3)
        a["latency_round_medians_ms"] = lat.get("round_medians_ms")
        a["latency_ratio_vs_onnx_fp32"] = None if not lat or not base_ms else round(lat["median_ms"] / base_ms, 3)
        a["latency_ratio_round_range"] = _round_ratio_range(lat, latency.get("model.onnx"))
    by = {r["artifact"]: r for r in row["artifacts"]}

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
    row["timing_images"] = len(images)
    row["goals_met"] = goals


def _round_ratio_range(lat: dict | None, base: dict | None) -> list[float] | None:
    """Smallest and largest per-round ratio to model.onnx (rounds are interleaved, so pairs are fair)."""
    if not lat or not base:
        return None
    r = [a / b for a, b in zip(lat["round_medians_ms"], base["round_medians_ms"], strict=True)]
    return [round(min(r), 3), round(max(r), 3)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(row_name(m, a, s) for m, a, s, _ in ROWS),
                    help="Comma-separated rows, e.g. mobilenet-a0.25-224.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timing-images", type=int, default=200)
    ap.add_argument("--timing-rounds", type=int, default=5)
    ap.add_argument("--retime", action="store_true",
                    help="only time again the artifacts of the last run's bench/out/export_bench.json")
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
    if args.retime:  # the exports of the last run, timed again (e.g. on a quieter machine)
        doc = json.loads(path.read_text())
        for row in doc["rows"]:
            if row["row"] in wanted:
                model, alpha, size, _ = known[row["row"]]
                for art in row["artifacts"]:  # a run from before paths were recorded
                    art.setdefault("path", str(export_dir(model, alpha, size) / art["artifact"]))
                timed(row, Path(row["run"]), size, args)
        doc["retimed_load_average"] = os.getloadavg()
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc, indent=2))
        return 0
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

"""Serving overhead benchmark: ``Predictor.predict`` on photo files vs bare ``InferenceSession.run``.

For a float32 and an int8 ONNX model (from ``bench/export.py``), in one run, measures end-to-end
images/second of ``Predictor.predict`` on real JPEG files (read + decode + resize + inference) and of a
bare ONNX Runtime session on the same images already decoded and resized to float32, with the same
batch size and thread count. ``overhead`` is the extra time per image that preprocessing costs over
the bare session (goal: at most 0.15 at batch 8); ``predictor_session_only_ips`` is the predictor's
own session on the pre-decoded tensors (its session options, no decoding), and
``overhead_vs_predictor_session`` the decoding cost alone. Rounds alternate the runs so
load from other processes hits all alike; medians over rounds are reported. Prints JSON.

    python bench/serving.py [--fp32 bench/out/export/model.onnx] [--int8 bench/out/export/model_int8.onnx]
                            [--data ../shared/data/flowers] [--n 256] [--batch-size 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# This file is bench/serving.py: put the repo first so `serving` is the package, not this script.
sys.path.insert(0, str(REPO))

from serving.predictor import Predictor  # noqa: E402
from serving.preprocess import is_image_file, load_resized  # noqa: E402

GOAL = 0.15


def pick_images(root: Path, n: int) -> list[Path]:
    """``n`` photos spread evenly over the sorted class folders (deterministic)."""
    files = sorted(p for p in root.rglob("*") if is_image_file(p) and p.is_file())
    if not files:
        sys.exit(f"error: {root}: no images; pass --data DIR with class folders of photos")
    step = max(1, len(files) // n)
    return files[::step][:n]


def bare_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_bare(session: Any, x: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    name = session.get_inputs()[0].name
    t0 = time.perf_counter()
    out = [session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return time.perf_counter() - t0, np.concatenate(out)


def run_predictor(predictor: Predictor, files: list[Path], batch: int) -> tuple[float, list[Any]]:
    t0 = time.perf_counter()
    results = predictor.predict(files, top_k=1, batch_size=batch)
    return time.perf_counter() - t0, results


def run_predict_batch(predictor: Predictor, x: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        predictor.predict_batch(x[i : i + batch])
    return time.perf_counter() - t0


def measure(path: Path, files: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    predictor = Predictor.load(path, threads=args.threads, decode_workers=args.decode_workers)
    size = predictor.input_size
    t0 = time.perf_counter()
    x = np.stack([load_resized(f, size) for f in files]).astype(np.float32)
    decode_ips = len(files) / (time.perf_counter() - t0)  # one thread, files already in the page cache
    session = bare_session(path, args.threads)
    run_bare(session, x[: 2 * args.batch_size], args.batch_size)  # warm-up all three
    run_predictor(predictor, files[: 2 * args.batch_size], args.batch_size)
    run_predict_batch(predictor, x[: 2 * args.batch_size], args.batch_size)
    bare_s, pred_s, raw_s = [], [], []
    for _ in range(args.rounds):  # alternate, so load from other processes hits all alike
        seconds, bare_probs = run_bare(session, x, args.batch_size)
        bare_s.append(seconds)
        seconds, results = run_predictor(predictor, files, args.batch_size)
        pred_s.append(seconds)
        raw_s.append(run_predict_batch(predictor, x, args.batch_size))
    n = len(files)
    agree = np.mean([r.index == int(p.argmax()) for r, p in zip(results, bare_probs, strict=True)])
    overhead = statistics.median(p / b - 1.0 for p, b in zip(pred_s, bare_s, strict=True))
    return {
        "model": str(path),
        "precision": predictor.metadata.precision,
        "images": n,
        "failed": [r.path for r in results if not r.ok],
        "bare_session_ips": round(n / statistics.median(bare_s), 1),
        "predictor_ips": round(n / statistics.median(pred_s), 1),
        "overhead": round(overhead, 3),
        "overhead_per_round": [round(p / b - 1.0, 3) for p, b in zip(pred_s, bare_s, strict=True)],
        "predictor_session_only_ips": round(n / statistics.median(raw_s), 1),
        "overhead_vs_predictor_session": round(
            statistics.median(p / r - 1.0 for p, r in zip(pred_s, raw_s, strict=True)), 3),
        "decode_resize_ips_1_thread": round(decode_ips, 1),
        "top1_same_as_bare": float(agree),
        "meets_goal": bool(overhead <= GOAL),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, default=REPO / "bench/out/export/model.onnx")
    parser.add_argument("--int8", type=Path, default=REPO / "bench/out/export/model_int8.onnx")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/flowers")
    parser.add_argument("--n", type=int, default=256, help="photos to run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-workers", type=int, default=None, help="Predictor decode threads")
    parser.add_argument("--rounds", type=int, default=5, help="alternating predictor/bare rounds")
    args = parser.parse_args()
    missing = [str(p) for p in (args.fp32, args.int8) if not p.is_file()]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not found; run `python bench/export.py` first "
                 "(or pass --fp32 / --int8)")
    files = pick_images(args.data, args.n)
    for f in files:  # page cache: measure decoding, not the disk
        f.read_bytes()
    load_before = os.getloadavg()
    rows = [measure(args.fp32, files, args), measure(args.int8, files, args)]
    print(json.dumps({
        "benchmark": "serving_overhead",
        "batch_size": args.batch_size,
        "threads": args.threads,
        "decode_workers": Predictor.load(args.fp32).decode_workers if args.decode_workers is None
        else args.decode_workers,
        "rounds": args.rounds,
        "goal_max_overhead": GOAL,
        "cpus": os.cpu_count(),
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "python": platform.python_version(),
        "models": rows,
    }, indent=2))


if __name__ == "__main__":
    main()

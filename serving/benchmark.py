"""Latency and throughput of exported models on this device, side by side (``cvkeras benchmark``).

Measures the model alone (``Predictor.predict_batch`` on a fixed pre-decoded input, runtime defaults),
so the numbers compare artifacts -- float32 vs int8, ONNX vs TFLite, thread counts -- not JPEG decoding.

Example:
    >>> rows = benchmark(["export/model.onnx", "export/model_int8.onnx"], batch_size=8, threads=2)
    >>> rows[1]["throughput_ips"] / rows[0]["throughput_ips"]
    1.8
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.predictor import Predictor


def _percentile(times_s: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times_s) * 1000.0, q))


def _timed(fn: Any, x: np.ndarray, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def benchmark(
    paths: Sequence[str | os.PathLike],
    batch_size: int = 8,
    threads: int | None = None,
    warmup: int = 3,
    iters: int = 20,
    providers: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One result dict per model: load time, file size, single-image and batch latency, throughput.

    Keys: ``model, path, format, precision, file_size_bytes, load_time_ms, batch_size, threads, iters,
    latency_image_p50_ms, latency_image_p95_ms`` (batch of 1), ``latency_batch_p50_ms,
    latency_batch_p95_ms`` (batch of ``batch_size``), ``latency_per_image_in_batch_ms`` (batch mean /
    batch size) and ``throughput_ips`` (images per second at ``batch_size``).
    """
    if batch_size < 1 or iters < 1 or warmup < 0:
        raise ValueError("batch_size and iters must be at least 1 and warmup at least 0")
    results = []
    for path in paths:
        t0 = time.perf_counter()
        predictor = Predictor.load(path, providers=providers, threads=threads, decode_workers=0)
        load_ms = 1000.0 * (time.perf_counter() - t0)
        h, w = predictor.input_size
        rng = np.random.default_rng(0)  # fixed input: the same work for every model and run
        x = rng.integers(0, 256, size=(batch_size, h, w, 3)).astype(np.float32)
        for _ in range(warmup):
            predictor.predict_batch(x[:1])
            predictor.predict_batch(x)
        single = _timed(predictor.predict_batch, x[:1], iters)
        batched = _timed(predictor.predict_batch, x, iters)
        mean_batch = float(np.mean(batched))
        results.append({
            "model": Path(path).name,
            "path": str(path),
            "format": predictor.kind,
            "precision": predictor.metadata.precision,
            "file_size_bytes": Path(path).stat().st_size,
            "load_time_ms": round(load_ms, 2),
            "batch_size": batch_size,
            "threads": threads,
            "iters": iters,
            "latency_image_p50_ms": round(_percentile(single, 50), 3),
            "latency_image_p95_ms": round(_percentile(single, 95), 3),
            "latency_batch_p50_ms": round(_percentile(batched, 50), 3),
            "latency_batch_p95_ms": round(_percentile(batched, 95), 3),
            "latency_per_image_in_batch_ms": round(1000.0 * mean_batch / batch_size, 3),
            "throughput_ips": round(batch_size / mean_batch, 2),
        })
    return results

"""Latency and throughput of exported models on this device, side by side (``cvkeras benchmark``).

Measures the model alone (``Predictor.predict_batch`` on a fixed pre-decoded input), so the numbers
compare artifacts -- float32 vs int8, ONNX vs TFLite, thread counts -- and the predictor's two modes
(``latency``: spinning runtime threads; ``throughput``: sleeping ones, leaving CPU to decoders), not JPEG
decoding. Models and modes take turns in interleaved rounds, so load from other processes hits all
alike; every figure comes with its spread over rounds, and the report says when that spread makes a
comparison meaningless or when an int8 model comes out slower than its float32 twin.

Example:
    >>> doc = benchmark(["export/model.onnx", "export/model_int8.onnx"], batch_size=8, threads=2)
    >>> [(r["model"], r["mode"], r["latency_ms_per_image_p50"]) for r in doc["models"]]
    >>> doc["warnings"]
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.serving.errors import OptionError
from cvkeras.serving.hints import failed_model_line
from cvkeras.serving.metadata import FailedModelWarning
from cvkeras.serving.predictor import Predictor
from cvkeras.serving.schema import schema_id

#: Benchmarked predictor modes (``auto`` is one of these per call).
BENCH_MODES = ("latency", "throughput")
#: Round-to-round spread (max - min) / median above which a figure is called noisy.
NOISY_SPREAD = 0.25


def _ms(seconds: float) -> float:
    return round(1000.0 * seconds, 3)


def _spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of per-round values and the relative spread (max - min) / median."""
    med = statistics.median(values)
    return {"min": min(values), "median": med, "max": max(values),
            "spread": (max(values) - min(values)) / med if med else float("inf")}


def _round(fn: Any, x: np.ndarray, iters: int) -> list[float]:
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
    rounds: int = 5,
    modes: Sequence[str] = BENCH_MODES,
) -> dict[str, Any]:
    """Benchmark every model in every mode in ``rounds`` interleaved rounds of ``iters`` calls each.

    Returns ``{"models": [row per (model, mode)], "comparisons": [...], "warnings": [...], "loadavg":
    [before, after], ...}``. A row has ``model, path, mode, format, precision, size_bytes,
    load_time_ms, batch_size, threads, rounds, iters``, single-image latency ``latency_ms_per_image_p50,
    latency_ms_per_image_p95`` (over all calls) and ``latency_ms_per_image_rounds`` (min/median/max of round
    medians, ``spread``), batch latency ``latency_ms_per_batch_p50, latency_ms_per_batch_p95``,
    ``latency_ms_per_image_in_batch`` and ``throughput_ips`` (median round) with
    ``throughput_ips_rounds`` (min/median/max). ``comparisons`` give each model's single-image latency
    ratio to the first model, per mode, as the median and range of per-round ratios; ``warnings`` name
    noisy figures, ratios whose range straddles 1 (not resolved) and int8-slower-than-float32 inversions.
    """
    if batch_size < 1 or iters < 1 or warmup < 0 or rounds < 1:
        raise OptionError("batch_size, iters and rounds must be at least 1 and warmup at least 0")
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    failed: dict[str, str] = {}  # models marked failed by `cvkeras export`: measured, and named in the warnings
    for path in paths:
        for mode in modes:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FailedModelWarning)
                predictor = Predictor.load(path, providers=providers, threads=threads, mode=mode)
            if predictor.metadata.failed_check:
                failed[str(path)] = failed_model_line(Path(path), predictor.metadata.failed_check)
            runs.append({"path": Path(path), "mode": mode, "predictor": predictor,
                         "load_ms": 1000.0 * (time.perf_counter() - t0), "single": [], "batch": []})
    inputs: dict[tuple[int, int], np.ndarray] = {}
    for run in runs:
        p = run["predictor"]
        if p.input_size not in inputs:  # fixed input: the same work for every model and round
            rng = np.random.default_rng(0)
            inputs[p.input_size] = rng.integers(0, 256, size=(batch_size, *p.input_size, 3)).astype(np.float32)
        x = inputs[p.input_size]
        for _ in range(warmup):
            p.predict_batch(x[:1])
            p.predict_batch(x)
    for _ in range(rounds):  # interleaved: every model and mode once per round
        for run in runs:
            p, x = run["predictor"], inputs[run["predictor"].input_size]
            run["single"].append(_round(p.predict_batch, x[:1], iters))
            run["batch"].append(_round(p.predict_batch, x, iters))
    load_after = os.getloadavg()

    rows = []
    for run in runs:
        p = run["predictor"]
        single = [t for r in run["single"] for t in r]
        batched = [t for r in run["batch"] for t in r]
        single_rounds = _spread([statistics.median(r) for r in run["single"]])
        tput_rounds = _spread([batch_size / statistics.mean(r) for r in run["batch"]])
        rows.append({
            "model": run["path"].name,
            "path": str(run["path"]),
            "mode": run["mode"],
            "format": p.kind,
            "precision": p.metadata.precision,
            "size_bytes": run["path"].stat().st_size,
            "load_time_ms": round(run["load_ms"], 2),
            "batch_size": batch_size,
            "threads": threads,
            "rounds": rounds,
            "iters": iters,
            "latency_ms_per_image_p50": _ms(float(np.percentile(single, 50))),
            "latency_ms_per_image_p95": _ms(float(np.percentile(single, 95))),
            "latency_ms_per_image_rounds": {k: (round(v, 3) if k == "spread" else _ms(v))
                                       for k, v in single_rounds.items()},
            "latency_ms_per_batch_p50": _ms(float(np.percentile(batched, 50))),
            "latency_ms_per_batch_p95": _ms(float(np.percentile(batched, 95))),
            "latency_ms_per_image_in_batch": _ms(statistics.mean(batched) / batch_size),
            "throughput_ips": round(tput_rounds["median"], 2),
            "throughput_ips_rounds": {k: round(v, 3 if k == "spread" else 2) for k, v in tput_rounds.items()},
        })
    comparisons, notes = compare_rounds(runs, rows)
    return {
        "schema": schema_id("benchmark"),
        "what": "model alone on a fixed pre-decoded input; rounds interleave models and modes",
        "cpus": os.cpu_count(),
        "loadavg": [round(load_before[0], 2), round(load_after[0], 2)],
        "models": rows,
        "comparisons": comparisons,
        "warnings": list(failed.values()) + notes,
    }


def _round_ratios(run: dict[str, Any], base: dict[str, Any]) -> list[float]:
    """Per round, ``run``'s median single-image latency over ``base``'s."""
    return [statistics.median(a) / statistics.median(b) for a, b in zip(run["single"], base["single"], strict=True)]


def compare_rounds(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> tuple[list[dict], list[str]]:
    """Per-round latency ratios to the first model (same mode) and the warnings they call for."""
    warnings = []
    for row in rows:
        spread = row["latency_ms_per_image_rounds"]["spread"]
        if spread > NOISY_SPREAD:
            rounds = row["latency_ms_per_image_rounds"]
            warnings.append(f"noisy: {row['model']} ({row['mode']}) single-image round medians range "
                            f"{rounds['min']}-{rounds['max']} ms "
                            f"({100 * spread:.0f} % of the median); other processes share this CPU")
    comparisons = []
    for mode in dict.fromkeys(r["mode"] for r in runs):
        same = [r for r in runs if r["mode"] == mode]
        base = same[0]
        for run in same[1:]:
            s = _spread(_round_ratios(run, base))
            resolved = s["max"] < 1.0 or s["min"] > 1.0
            comparisons.append({"model": run["path"].name, "baseline": base["path"].name, "mode": mode,
                                "latency_ratio": round(s["median"], 3),
                                "latency_ratio_range": [round(s["min"], 3), round(s["max"], 3)],
                                "resolved": resolved})
            if not resolved:
                warnings.append(f"unresolved: {run['path'].name} / {base['path'].name} ({mode}) latency ratio "
                                f"ranges {s['min']:.2f}-{s['max']:.2f} over rounds: the spread makes it "
                                "meaningless; rerun on a quieter machine or with more --rounds")
        for q in same:  # int8 should never be slower than its float32 twin of the same format
            if q["predictor"].metadata.precision != "int8":
                continue
            for f in same:
                if f["predictor"].metadata.precision != "float32" or f["predictor"].kind != q["predictor"].kind:
                    continue
                ratios = _round_ratios(q, f)
                med = statistics.median(ratios)
                if med > 1.0:
                    warnings.append(f"inversion: int8 {q['path'].name} is slower than float32 {f['path'].name} "
                                    f"({mode}, latency ratio {med:.2f}, rounds {min(ratios):.2f}-"
                                    f"{max(ratios):.2f}); expected faster: the CPU was busy or this runtime "
                                    "lacks int8 kernels for it")
    return comparisons, warnings

"""What an edge user chooses a backbone by: parameters, file size, multiply-adds and CPU latency.

Every figure is computed from the real Keras model (built with random weights, no download), never typed
in. ``cvkeras models`` reads the table shipped in ``model_stats.json`` (made by ``python -m
cvkeras.models.stats``, at each row's default input size and width); ``cvkeras models --measure NAME``
computes a row on the user's own machine. A test rebuilds small rows and checks the shipped numbers.

Example:
    >>> row = measure("mobilenet_v2", alpha=0.35, size=160, latency_runs=0)
    >>> row["params"], round(row["gmacs"], 3)
    (410208, 0.03)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from cvkeras.models.registry import REGISTRY, ModelSpec, resolve_model

STATS_FILE = Path(__file__).with_name("model_stats.json")


def count_macs(base) -> int:
    """Multiply-accumulates of one image through the backbone's convolutions and dense layers."""
    import keras

    total = 0
    for layer in base.layers:
        if not layer.built or not hasattr(layer, "output"):
            continue
        try:
            out = layer.output.shape
        except (AttributeError, ValueError):  # a layer called more than once has no single output
            continue
        spatial = 1
        for d in out[1:-1]:
            spatial *= int(d or 1)
        if isinstance(layer, keras.layers.SeparableConv2D):
            kh, kw, cin, mult = layer.depthwise_kernel.shape
            total += spatial * (kh * kw * cin * mult + cin * mult * int(out[-1]))
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, cin, mult = layer.kernel.shape
            total += spatial * kh * kw * cin * mult
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin_per_group, cout = layer.kernel.shape
            total += spatial * kh * kw * cin_per_group * cout
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            total += spatial * cin * cout
    return int(total)


def measure(model: str | ModelSpec, alpha: float | None = None, size: int | None = None,
            latency_runs: int = 10) -> dict[str, Any]:
    """One row: ``params`` (backbone, no head), ``float32_mb``, ``int8_mb`` (weights at 1 byte), ``gmacs``
    and, when ``latency_runs`` > 0, ``cpu_ms``: median batch-1 latency of the compiled Keras backbone here.
    """
    import keras
    import numpy as np

    from cvkeras.models.build import build_backbone

    choice = resolve_model(model, alpha, int(size) if size else None)
    spec, alpha, hw = choice.spec, choice.alpha, tuple(choice.image_size)
    base = build_backbone(spec, hw, alpha, "none")
    params = int(sum(int(np.prod(w.shape)) for w in base.weights))
    row: dict[str, Any] = {"name": spec.name, "alpha": alpha, "input_size": list(hw), "params": params,
                           "float32_mb": round(params * 4 / 1e6, 2), "int8_mb": round(params / 1e6, 2),
                           "gmacs": round(count_macs(base) / 1e9, 3)}
    if latency_runs > 0:
        import tensorflow as tf

        fn = tf.function(lambda x: base(x, training=False), jit_compile=False)
        x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, *hw, 3)).astype("float32"))
        fn(x)  # trace and warm up
        times = []
        for _ in range(latency_runs):
            t = time.perf_counter()
            np.asarray(fn(x))
            times.append(time.perf_counter() - t)
        row["cpu_ms"] = round(1000 * float(np.median(times)), 2)
    keras.backend.clear_session()
    return row


def load_table(path: str | os.PathLike = STATS_FILE) -> dict[str, dict[str, Any]]:
    """The shipped table, by registry name; empty when the file is missing (``cvkeras models`` says so)."""
    p = Path(path)
    if not p.is_file():
        return {}
    doc = json.loads(p.read_text())
    return {row["name"]: row for row in doc.get("rows", [])}


def write_table(path: str | os.PathLike = STATS_FILE, latency_runs: int = 10) -> Path:
    """Measure every registry row at its defaults and write the table (with the machine it ran on)."""
    import platform

    from cvkeras.run.files import atomic_write

    rows = [measure(spec, latency_runs=latency_runs) for spec in REGISTRY.values()]
    doc = {"schema": 1, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
           "latency": "cpu_ms: median of batch-1 runs of the compiled Keras backbone (TensorFlow, float32)",
           "rows": rows}
    return atomic_write(Path(path), json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    import sys

    # ``python -m cvkeras.models.stats [LATENCY_RUNS]``: 0 skips latency (the figures that do not depend on the machine)
    print(write_table(latency_runs=int(sys.argv[1]) if len(sys.argv) > 1 else 10))

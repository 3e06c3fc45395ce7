"""GPTQ weight rounding of a full-integer TFLite model (``model_int8.tflite``), with the numpy core both formats
share (:func:`cvkeras.export.fitting.gptq`).

The second moments ``H`` of each op's input patches are measured in the float model (``model.tflite``,
ops matched by tensor name), in the column order of the TFLite weight layout: (kh, kw, in) for CONV_2D,
the kh x kw taps of each channel for DEPTHWISE_CONV_2D (channel multiplier 1), the inputs for
FULLY_CONNECTED. The converter's per-channel scales stay as they are, and so does the weight that set each
channel's scale (its largest magnitude, at +-127): GPTQ may move it, and is then overruled there.
Only int8 weight bytes change; the file keeps its size and graph. The same applies to the int8 weights of a
dynamic-range model (``model_dynamic.tflite``, ``hybrid=True``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from cvkeras.export.fitting import MAX_COLUMNS, gptq, spread
from cvkeras.export.settings import DEFAULT_FIT_IMAGES
from cvkeras.export.tflite.bias_correction import input_sums
from cvkeras.export.tflite.graph import Flatbuffer, Layer, match, real_weights, taps

__all__ = ["fitted_layers", "from_rows", "input_moments", "round_weights", "rows"]


def rows(w: np.ndarray, kind: str) -> np.ndarray:
    """Weights in the op's layout -> (out channels, columns)."""
    if kind == "depthwise":  # (1, kh, kw, C) -> (C, kh*kw)
        return w[0].reshape(-1, w.shape[-1]).T
    return w.reshape(w.shape[0], -1)


def from_rows(q: np.ndarray, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """(out channels, columns) -> the op's weight layout ``shape`` (the inverse of :func:`rows`)."""
    if kind == "depthwise":
        return q.T.reshape(shape)
    return q.reshape(shape)


def _moments(x: np.ndarray, layer: Layer) -> np.ndarray:
    """``sum p p^T`` over the input patches of one batch ``x`` (real NHWC values); per channel for depthwise."""
    if layer.kind == "fc":
        x = x.reshape(-1, layer.weight.shape[1])
        return x.T @ x
    cols = np.stack([sl.reshape(-1, sl.shape[-1]) for _, _, sl in taps(x, layer)], axis=1)  # L, kh*kw, C
    if layer.kind == "depthwise":
        return np.einsum("lkc,lmc->ckm", cols, cols)
    cols = cols.reshape(cols.shape[0], -1)  # column order (i, j, c): the weight layout's
    return cols.T @ cols


def _eligible(fb: Flatbuffer, layer: Layer, hybrid: bool = False) -> bool:
    w = layer.weight
    axis = 3 if layer.kind == "depthwise" else 0
    if w.dtype is not np.int8 or not w.quantized or w.axis != axis or w.scale.size != w.shape[axis]:
        return False
    # full integer: int8 activations in; dynamic range ("hybrid" ops): float activations, int8 weights
    if np.any(w.zero_point != 0) or fb.array(w) is None or layer.input.quantized == hybrid:
        return False
    if layer.kind == "depthwise":
        return layer.multiplier == 1
    return int(np.prod(w.shape[1:])) <= MAX_COLUMNS


def fitted_layers(fb: Flatbuffer, ref: Flatbuffer, hybrid: bool = False) -> list[tuple[Layer, Layer, np.ndarray]]:
    """``(layer, its float twin, the twin's real weights)`` for every op of ``fb`` whose int8 weights GPTQ can
    fit (``hybrid``: the float-activation ops of a dynamic-range model)."""
    todo = []
    for layer, twin in zip(fb.layers, match(fb.layers, ref.layers), strict=True):
        if twin is None or not _eligible(fb, layer, hybrid):
            continue
        w_f = real_weights(ref, twin)
        if w_f is not None and w_f.shape == layer.weight.shape:
            todo.append((layer, twin, w_f))
    return todo


def input_moments(float_blob: bytes, twins: list[Layer], images: np.ndarray) -> list[np.ndarray]:
    """Per op of the float model, ``sum p p^T`` of its input patches over ``images`` (weight column order)."""
    return input_sums(float_blob, twins, images, _moments)


def round_weights(int8_blob: bytes, float_blob: bytes, images: np.ndarray,
                  max_images: int = DEFAULT_FIT_IMAGES, hybrid: bool = False) -> tuple[bytes, dict[str, Any]]:
    """The int8 model ``int8_blob`` with its int8 weights re-rounded by GPTQ, and a summary of what was done.

    ``float_blob``: the float TFLite model converted from the same SavedModel. ``images``: calibration
    images (NHWC, 0..255); ``max_images`` of them, evenly spread, are used. ``hybrid``: ``int8_blob`` is a
    dynamic-range model (float activations into int8-weight ops), whose per-channel weights GPTQ fits alike.
    """
    t0 = time.perf_counter()
    fb = Flatbuffer(int8_blob)
    todo = fitted_layers(fb, Flatbuffer(float_blob), hybrid)
    if not todo:
        return int8_blob, {"layers": 0}
    x = spread(images, max_images)
    h = input_moments(float_blob, [twin for _, twin, _ in todo], x)
    pinned = 0
    for (layer, _, w_f), hk in zip(todo, h, strict=True):
        w = rows(w_f, layer.kind)
        scale = layer.weight.scale
        q = gptq(w, hk, scale, -127, 127).astype(np.int64)
        # the weight that set each channel's scale keeps its nearest value (+-127)
        top = np.abs(w).argmax(axis=1)
        idx = np.arange(len(w))
        nearest = np.clip(np.round(w[idx, top] / scale), -127, 127).astype(np.int64)
        pinned += int(np.sum(q[idx, top] != nearest))
        q[idx, top] = nearest
        fb.array(layer.weight)[...] = from_rows(q.astype(np.int8), layer.weight.shape, layer.kind)
    return fb.to_bytes(), {"layers": len(todo), "images": len(x), "pinned": pinned,
                           "seconds": round(time.perf_counter() - t0, 2)}

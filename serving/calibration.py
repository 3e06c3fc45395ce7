"""Calibrated probabilities: temperature scaling (Guo et al. 2017) and the figures that judge it. Numpy only.

An exported model outputs softmax probabilities ``p``. One scalar temperature ``T`` turns them into
``softmax(log p / T)``, which equals ``softmax(z / T)`` for the logits ``z`` (``log p = z - logsumexp(z)``; the
constant cancels), so no graph change is needed: training fits ``T`` on its validation split
(:func:`fit_temperature`, minimum negative log-likelihood), export writes it into the model metadata and the
device applies it to whatever its model outputs, float or int8 (:func:`apply_temperature`). ``T > 1`` softens
over-confident scores, ``T < 1`` sharpens them; the order of the classes, and so the top-1 class, never changes.
``T = 1`` (every artifact exported before temperatures) changes nothing.

Judged by the expected calibration error (:func:`ece`: 15 equal-width bins of the top-1 confidence, the gap
between confidence and accuracy weighted by the images in each bin) and the NLL (:func:`nll`).

Example:
    >>> t = fit_temperature(val_probs, val_labels)
    >>> ece(apply_temperature(test_probs, t), test_labels) < ece(test_probs, test_labels)
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Bins of the expected calibration error: equal width over the top-1 confidence 0..1.
ECE_BINS = 15
#: The interval the temperature is searched in; the fit never leaves it.
TEMPERATURE_RANGE = (0.05, 20.0)
#: A probability below this reads as this in ``log p``: an int8 output of exactly 0, or a float32 underflow.
PROB_FLOOR = 1e-30
#: The golden-section search stops when the bracket of ``log T`` is this narrow (T to about 1e-5 relative).
LOG_T_TOLERANCE = 1e-5


def temperature_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a temperature (not a number, not finite, not > 0), or None when it can."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number > 0, not {value!r}"[:80]
    if not math.isfinite(value) or value <= 0:
        return f"must be a finite number > 0, not {value!r}"
    return None


def _scaled_logits(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``log p / T`` in float64, with ``p`` floored at :data:`PROB_FLOOR`."""
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), PROB_FLOOR)) / float(temperature)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row, in the dtype of ``probs``; ``T == 1`` returns ``probs`` itself."""
    probs = np.asarray(probs)
    if temperature == 1.0 or probs.size == 0:
        return probs
    out = np.exp(_log_softmax(_scaled_logits(probs, temperature)))
    return out.astype(probs.dtype if probs.dtype.kind == "f" else np.float32, copy=False)


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of the true classes after temperature ``T`` (NaN for no image)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    logp = _log_softmax(_scaled_logits(probs, temperature))
    return float(-logp[np.arange(len(labels)), labels].mean())


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """Per confidence bin ``(k/bins, (k+1)/bins]`` (the first one from 0): images (``count``), their mean
    top-1 confidence and their accuracy (None for an empty bin): a reliability diagram's data."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    right = (probs.argmax(axis=1) == labels) if len(probs) else np.zeros(0, bool)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    right_sum = np.bincount(idx, weights=right.astype(np.float64), minlength=bins)
    return {"count": [int(c) for c in count],
            "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count, strict=True)],
            "accuracy": [float(s / c) if c else None for s, c in zip(right_sum, count, strict=True)]}


def ece_of(diagram: dict[str, list]) -> float:
    """The expected calibration error of a :func:`reliability` diagram (NaN when it holds no image)."""
    n = sum(diagram["count"])
    if not n:
        return float("nan")
    return float(sum(c * abs(a - f) for c, a, f in zip(diagram["count"], diagram["accuracy"], diagram["confidence"],
                                                       strict=True) if c) / n)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: ``sum_b |B|/n * |accuracy(B) - confidence(B)|`` over equal-width bins of the
    top-1 confidence (a fraction 0..1; NaN for no image)."""
    return ece_of(reliability(probs, labels, bins))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_RANGE) -> float:
    """The temperature in ``bounds`` that minimises :func:`nll` on ``(probs, labels)``; 1.0 for no image.

    NLL is convex in ``1/T``, so it has one minimum along ``log T`` and a golden-section search finds it (or the
    bound it lies beyond) without derivatives, steps or starting points.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0
    logp = np.log(np.maximum(np.asarray(probs, dtype=np.float64), PROB_FLOOR))
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        z = logp / math.exp(log_t)
        return float(-_log_softmax(z)[rows, labels].mean())

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > LOG_T_TOLERANCE:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    best = min((loss(math.log(bounds[0])), bounds[0]), (loss(math.log(bounds[1])), bounds[1]),
               (loss((lo + hi) / 2), math.exp((lo + hi) / 2)))
    return float(best[1])


def before_after(probs: np.ndarray, labels: np.ndarray, temperature: float, bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE, NLL and reliability diagram of ``probs`` before and after temperature ``T``, with the image count."""
    before, after = reliability(probs, labels, bins), reliability(apply_temperature(probs, temperature), labels, bins)
    return {"n": int(len(labels)), "ece_before": ece_of(before), "ece_after": ece_of(after),
            "nll_before": nll(probs, labels), "nll_after": nll(probs, labels, temperature),
            "reliability_before": before, "reliability_after": after}

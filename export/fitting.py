"""Fitting an int8 model's rounding to the data, format-neutral: the numpy maths both formats share (GPTQ,
the bias-correction update, the even spread of calibration images), the results they report, and the one
runner that applies the steps in order with the settings of :class:`cvkeras.export.settings.QuantSettings`.

GPTQ (Frantar et al. 2023; OBQ for convs): rounding each weight to its nearest int8 step is optimal per
weight but not for the layer's output: the errors of the weights that meet the same input pixels add up.
GPTQ rounds a layer's weights one input column at a time and moves the error of each rounded column onto
the columns not yet rounded, weighted by the inverse of the input's second-moment matrix ``H = E[x x^T]``,
which minimises ``E[(dW x)^2]`` greedily. Empirical bias correction (Nagel et al. 2019, section 4.2) then
moves each layer's mean output shift from rounding into its int32 bias. The formats measure ``H`` and the
shifts on their own graphs (``cvkeras.export.onnx`` / ``cvkeras.export.tflite``: ``weight_rounding``,
``bias_correction``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from cvkeras.export.errors import converting
from cvkeras.export.settings import QuantSettings

#: Relative dampening added to H's diagonal (GPTQ's default).
DAMP = 0.01
#: Layers with more inputs per output (in channels x kernel) keep nearest rounding (H is columns^2).
MAX_COLUMNS = 2304
ACT_ORDER = False  # measured on MobileNet a0.25: no better (40 vs 36 flips of 3370 after bias correction)

Model = TypeVar("Model")
#: One fitting step: (model, images to use) -> (the fitted model, a summary for the metadata).
Step = Callable[[Any, int], tuple[Any, dict[str, Any]]]


def spread(images: np.ndarray, count: int) -> np.ndarray:
    """``count`` images evenly spread over ``images`` (all of them when there are fewer), in order."""
    if count >= len(images):
        return images
    return images[np.linspace(0, len(images) - 1, count).round().astype(np.int64)]


def gptq(w: np.ndarray, h: np.ndarray, scale: np.ndarray, qmin: int, qmax: int,
         act_order: bool | None = None) -> np.ndarray:
    """GPTQ of rows ``w`` (out, in) with shared ``h`` (in, in) or one per row (out, in, in); int values.

    ``act_order``: round the columns with the largest input power first (shared ``h`` only).
    """
    if act_order is None:
        act_order = ACT_ORDER
    if act_order and h.ndim == 2:
        perm = np.argsort(-np.diag(h), kind="stable")
        q = gptq(w[:, perm], h[np.ix_(perm, perm)], scale, qmin, qmax, act_order=False)
        out = np.empty_like(q)
        out[:, perm] = q
        return out
    w = w.astype(np.float64).copy()
    cols = w.shape[1]
    eye = np.eye(cols)
    hh = h if h.ndim == 3 else h[None]
    damp = DAMP * np.mean(np.diagonal(hh, axis1=1, axis2=2), axis=1)[:, None, None] + 1e-12
    hh = hh + damp * eye
    hinv = np.linalg.inv(hh)
    u = np.linalg.cholesky(hinv).transpose(0, 2, 1)  # upper: hinv = u^T u
    q = np.zeros_like(w)
    for i in range(cols):
        qi = np.clip(np.round(w[:, i] / scale), qmin, qmax)
        q[:, i] = qi
        d = u[:, i, i] if h.ndim == 3 else u[0, i, i]
        err = (w[:, i] - qi * scale) / d
        row = u[:, i, i + 1 :] if h.ndim == 3 else u[0, i, i + 1 :][None]
        w[:, i + 1 :] -= err[:, None] * row
    return q.astype(np.int8)


@dataclass
class LayerShift:
    """One corrected layer: its output's mean shift before correction, relative to the output's mean size."""

    name: str
    op: str
    shift: float


@dataclass
class BiasCorrectionResult:
    images: int
    seconds: float
    layers: list[LayerShift] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """Small enough for metadata: counts, time, and the mean and worst relative shift corrected."""
        shifts = [layer.shift for layer in self.layers]
        return {"layers": len(self.layers), "images": self.images, "seconds": self.seconds,
                "mean_shift": round(float(np.mean(shifts)), 6) if shifts else 0.0,
                "max_shift": round(float(np.max(shifts)), 6) if shifts else 0.0}


def correct_bias(bias: np.ndarray, scale: np.ndarray, got: np.ndarray, want: np.ndarray,
                 name: str, op: str) -> tuple[np.ndarray, LayerShift]:
    """One layer's bias correction: the int32 ``bias`` (in units of ``scale``) less the per-channel mean
    output shift ``got - want`` (quantized model's minus float model's), and that shift relative to the
    output's mean size."""
    shift = got - want
    new = np.clip(bias.astype(np.int64) - np.round(shift / scale).astype(np.int64), -(2**31), 2**31 - 1)
    size = float(np.abs(want).mean())
    return new.astype(np.int32), LayerShift(name, op, round(float(np.abs(shift).mean()) / size, 6) if size > 0 else 0.0)


def fit_rounding(model: Model, settings: QuantSettings, round_weights: Step, correct_biases: Step | None,
                 artifact: str, report: dict[str, Any] | None,
                 say: Callable[[str], None] | None = None) -> Model:
    """GPTQ weight rounding, then bias correction (GPTQ first: it changes the biases' shifts), of a fresh int8
    ``model``, with ``settings.gptq_images`` and ``settings.bias_correction_images`` (0 turns a step off;
    ``correct_biases`` None: no bias step). ``report`` gets ``"gptq"`` and ``"bias_correction"`` (the steps'
    summaries); ``say``, one line a step.

    Raises:
        ConversionError: a step failed (names ``artifact``).
    """
    steps = (("gptq", settings.gptq_images, "GPTQ weight rounding", round_weights),
             ("bias_correction", settings.bias_correction_images if correct_biases else 0, "int8 bias correction",
              correct_biases))
    for key, n, what, step in steps:
        if n <= 0:
            continue
        with converting(artifact, what, "export without --int8"):
            model, done = step(model, n)
        if say is not None:
            say(f"  {artifact}: {what} of {done.get('layers', 0)} op(s), {done.get('images', 0)} images, "
                f"{done.get('seconds', 0)} s")
        if report is not None:
            report[key] = done
    return model

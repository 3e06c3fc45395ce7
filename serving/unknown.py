""""unknown" on the device: is an image like the training images at all? Numpy only.

A classifier always answers one of its classes, also for a photo of none of them. The exported model (ONNX
and TFLite) gives a second output, ``features`` (the pooled features the classifier head reads), and the
metadata (ONNX ``metadata_props``, TFLite sidecar) carries the detector (:class:`UnknownDetector`): the
class prototypes -- the mean of the L2-normalised features of each class's training images, normalised
again -- and a threshold. An image's
``unknown_score`` is ``1 - max_c cos(f, prototype_c)``, higher = less like the training images, and it is
``unknown`` when the score is above the threshold.

Why this score (``cos_proto``): on real flower photos with frozen MobileNet features it separated generated
foreign images best of the six scores measured (AUROC 0.97-0.99, false-accept 4-15 % at 95 % acceptance),
while the maximum calibrated probability let 67-94 % of them through and energy needs logits the exported
model does not give; its state is C x D floats and it costs a few microseconds (docs/unknown.md).

The threshold is chosen at export on images nothing was fitted to (the validation split; the prototypes come
from training images): the ``accept`` quantile of their scores, so that a fraction ``accept`` of
in-distribution images is accepted (:func:`threshold_for`).

Example:
    >>> det = UnknownDetector.fit(train_features, train_labels, val_features, accept=0.95)
    >>> det.scores(features) > det.threshold   # unknown per image
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The score the detector computes (the only one implemented; see the module docstring for why).
SCORE = "cos_proto"
#: The default fraction of in-distribution images accepted (``cvkeras export --unknown-accept``).
DEFAULT_ACCEPT = 0.95
#: Below this share of the Keras model's accept/reject decisions kept (on the validation images), export warns
#: that a reduced-precision file's "unknown" answers drift from the float model's (issue #24's goal).
MIN_DECISION_AGREEMENT = 0.99
#: The exported model's second output: the pooled features (N, D) float32.
FEATURES_NAME = "features"
_EPS = 1e-12


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def prototype_scores(features: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """``1 - max_c cos(f, p_c)`` per row of ``features`` (N, D) against unit ``prototypes`` (C, D)."""
    feats = _normalise(np.asarray(features, dtype=np.float32).reshape(len(features), -1))
    if not len(feats):
        return np.zeros(0, np.float32)
    return (1.0 - (feats @ prototypes.T).max(axis=1)).astype(np.float32)


def threshold_for(scores: np.ndarray, accept: float) -> float:
    """The score at or below which a fraction ``accept`` of ``scores`` lies (their ``accept`` quantile)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        raise ValueError("no in-distribution image to choose the unknown threshold on")
    return float(np.quantile(scores, accept))


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling ``out_scores`` from ``in_scores`` (higher = out; ties count half):
    the chance that a foreign image scores above an in-distribution one. NaN when either side is empty."""
    a = np.sort(np.asarray(in_scores, dtype=np.float64))
    b = np.asarray(out_scores, dtype=np.float64)
    if not len(a) or not len(b):
        return float("nan")
    below = np.searchsorted(a, b, side="left")
    ties = np.searchsorted(a, b, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(a) * len(b)))


def ood_figures(in_scores: np.ndarray, out_scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUROC and false-accept rate (foreign images at or below ``threshold``) of foreign images."""
    out_scores = np.asarray(out_scores)
    fa = float((out_scores <= threshold).mean()) if len(out_scores) else float("nan")
    return {"n": int(len(out_scores)), "auroc": auroc(in_scores, out_scores), "false_accept": fa}


def _problem(d: Any, num_classes: int) -> str | None:
    if not isinstance(d, dict):
        return "must be an object"
    if d.get("score") != SCORE:
        return f"score must be {SCORE!r}, not {str(d.get('score'))[:40]!r}"
    for key in ("threshold", "accept"):
        v = d.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return f"{key} must be a finite number"
    shape = d.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(v) is int and v > 0 for v in shape)):
        return "shape must be [classes, features]"
    if shape[0] != num_classes:
        return f"has {shape[0]} prototypes for {num_classes} labels"
    if not isinstance(d.get("prototypes"), str):
        return "prototypes must be base64 float32"
    return None


@dataclass
class UnknownDetector:
    """Class prototypes (C, D) unit float32 and the threshold of ``unknown_score`` (see the module doc)."""

    prototypes: np.ndarray
    threshold: float
    accept: float = DEFAULT_ACCEPT

    @property
    def dim(self) -> int:
        return int(self.prototypes.shape[1])

    @classmethod
    def fit(cls, train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
            num_classes: int, accept: float = DEFAULT_ACCEPT) -> UnknownDetector:
        """Prototypes from training features, threshold from validation features (nothing was fitted on them)."""
        feats = _normalise(train_features)
        labels = np.asarray(train_labels, dtype=np.int64)
        protos = np.zeros((num_classes, feats.shape[1]), np.float32)
        for c in range(num_classes):
            if (labels == c).any():
                protos[c] = feats[labels == c].mean(axis=0)
        det = cls(_normalise(protos), 0.0, float(accept))
        det.threshold = threshold_for(det.scores(val_features), accept)
        return det

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``unknown_score`` per image (higher = less like the training images)."""
        return prototype_scores(features, self.prototypes)

    def to_dict(self) -> dict[str, Any]:
        """The metadata block (``ModelMetadata.unknown``): prototypes as base64 little-endian float32."""
        blob = np.ascontiguousarray(self.prototypes, dtype="<f4").tobytes()
        return {"score": SCORE, "threshold": self.threshold, "accept": self.accept,
                "shape": list(self.prototypes.shape), "prototypes": base64.b64encode(blob).decode("ascii")}

    @classmethod
    def from_dict(cls, d: Any, num_classes: int) -> UnknownDetector:
        """Parse a metadata block; ValueError saying what is wrong (see :func:`unknown_problem`)."""
        problem = _problem(d, num_classes)
        if problem is None:
            try:
                raw = base64.b64decode(d["prototypes"], validate=True)
            except ValueError:
                raw = b""
            c, dim = d["shape"]
            if len(raw) != 4 * c * dim:
                problem = f"prototypes hold {len(raw) // 4} values, not {c} x {dim}"
            else:
                protos = np.frombuffer(raw, dtype="<f4").reshape(c, dim).astype(np.float32)
                if not np.isfinite(protos).all():
                    problem = "prototypes are not finite"
        if problem is not None:
            raise ValueError(problem)
        return cls(protos, float(d["threshold"]), float(d["accept"]))


def unknown_problem(d: Any, num_classes: int) -> str | None:
    """Why metadata block ``d`` is not a usable detector for ``num_classes`` labels, or None when it is."""
    try:
        UnknownDetector.from_dict(d, num_classes)
    except ValueError as exc:
        return str(exc)
    return None

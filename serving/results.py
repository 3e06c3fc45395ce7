"""What the predictor accepts per image (:data:`ImageInput`) and hands back per image (:class:`Prediction`).
Device side: numpy and Pillow only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

#: What ``predict`` accepts per image: a file path, encoded bytes, a PIL image or an HWC uint8 array.
ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray


@dataclass
class Prediction:
    """The result for one image. ``error`` is set (and ``label`` is None) when it could not be read."""

    label: str | None
    index: int
    score: float
    top_k: list[tuple[str, float]] = field(default_factory=list)
    path: str | None = None
    error: str | None = None
    #: with an unknown detector (:mod:`cvkeras.serving.unknown`): whether the image is like none of the
    #: training images, and its score (higher = less like them); None without one
    unknown: bool | None = None
    unknown_score: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"path", "label", "index", "score", "top_k": [{"label", "score"}]}``, plus
        ``unknown`` and ``unknown_score`` with an unknown detector."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        doc = {
            "path": self.path,
            "label": self.label,
            "index": self.index,
            "score": self.score,
            "top_k": [{"label": name, "score": score} for name, score in self.top_k],
        }
        if self.unknown is not None:
            doc["unknown"], doc["unknown_score"] = self.unknown, self.unknown_score
        return doc


def ranked(probs: np.ndarray, labels: list[str], top_k: int, path: str | None) -> Prediction:
    """The :class:`Prediction` of one image's scores ``probs``: the ``top_k`` best classes, best first."""
    k = max(1, min(top_k, probs.shape[0]))
    values = probs.tolist()
    # all three pick the first of equal scores; plain Python is quickest for a few classes
    if k == 1:
        order = [int(probs.argmax())]
    elif len(values) <= 64:
        order = sorted(range(len(values)), key=values.__getitem__, reverse=True)[:k]
    else:
        order = np.argsort(-probs, kind="stable")[:k].tolist()
    top = [(labels[i], values[i]) for i in order]
    return Prediction(label=top[0][0], index=order[0], score=top[0][1], top_k=top, path=path)


def is_single(images: Any) -> bool:
    """Whether ``images`` is one image (a path, bytes, a PIL image, an HW or HWC array), not a sequence."""
    if isinstance(images, str | os.PathLike | bytes | Image.Image):
        return True
    return isinstance(images, np.ndarray) and images.ndim in (2, 3)


def source_name(src: Any) -> str | None:
    """The name a :class:`Prediction` carries for ``src``: its path, or None for in-memory images."""
    return os.fspath(src) if isinstance(src, str | os.PathLike) else None

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

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"path", "label", "index", "score", "top_k": [{"label", "score"}]}``."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {
            "path": self.path,
            "label": self.label,
            "index": self.index,
            "score": self.score,
            "top_k": [{"label": name, "score": score} for name, score in self.top_k],
        }


def is_single(images: Any) -> bool:
    """Whether ``images`` is one image (a path, bytes, a PIL image, an HW or HWC array), not a sequence."""
    if isinstance(images, str | os.PathLike | bytes | Image.Image):
        return True
    return isinstance(images, np.ndarray) and images.ndim in (2, 3)


def source_name(src: Any) -> str | None:
    """The name a :class:`Prediction` carries for ``src``: its path, or None for in-memory images."""
    return os.fspath(src) if isinstance(src, str | os.PathLike) else None

"""What the predictor hands back (:class:`Prediction`, :class:`Batch`), what it accepts per image, and the
one-line hints for a model path that is not a model file or a model marked failed by ``cvkeras export``.
Device side: numpy and Pillow only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cvkeras.serving.metadata import failed_name

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


@dataclass
class Batch:
    """Decoded inputs for a run of sources: ``x[j]`` is source ``indices[j]``; ``errors`` maps the rest."""

    indices: list[int]
    x: np.ndarray  # float32 NHWC 0..255 at the model's input size
    errors: dict[int, str]


def _default_workers() -> int:
    return min(2, os.cpu_count() or 1)


def _is_single(images: Any) -> bool:
    if isinstance(images, str | os.PathLike | bytes | Image.Image):
        return True
    return isinstance(images, np.ndarray) and images.ndim in (2, 3)


def _batch(start: int, out: np.ndarray, errors: list[str | None]) -> Batch:
    """Drop the rows that failed to decode; keep their messages by source index."""
    ok = [j for j, e in enumerate(errors) if e is None]
    x = out if len(ok) == len(out) else out[ok]
    return Batch([start + j for j in ok], x, {start + j: e for j, e in enumerate(errors) if e is not None})


def _source_name(src: Any) -> str | None:
    return os.fspath(src) if isinstance(src, str | os.PathLike) else None


#: Export flag that writes each reduced-precision file (see ``cvkeras export --help``).
_EXPORT_FLAG = {"int8": "--int8", "dynamic": "--int8", "fp16": "--fp16"}


def _models_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.glob("*") if f.suffix in (".onnx", ".tflite") and f.is_file())


def failed_model_line(p: Path, reason: str) -> str:
    """What to say about a model whose metadata marks it failed (kept by export for inspection only)."""
    return (f"{p}: this model FAILED its export check ({reason}); it is kept for inspection, not for "
            "deployment -- see export_report.json and use a model that passed")


def not_a_model_hint(p: Path) -> str:
    """The error line for a model path that is not a file: what it is instead, and what to pass or run."""
    if not p.exists() and failed_name(p).is_file():
        return (f"{p}: failed its export check and was kept as {failed_name(p).name} for inspection only "
                f"(see {p.parent / 'export_report.json'}); deploy a model that passed, or re-export")
    if p.is_dir():
        models = _models_in(p) or _models_in(p / "export")
        if models:
            return (f"{p}: a folder, not a model file; pass one of its exported models: "
                    f"{', '.join(str(m) for m in models)}")
        if (p / "best.keras").is_file():
            return f"{p}: a run folder with no exported model yet; run `cvkeras export {p}` first"
        return f"{p}: a folder, not a model file; pass an .onnx or .tflite from `cvkeras export`"
    variant = next((v for v in _EXPORT_FLAG if p.stem.endswith("_" + v)), None)
    if variant and p.parent.is_dir() and _models_in(p.parent):
        run = p.parent.parent if p.parent.name == "export" else Path("RUN")
        return (f"{p}: not exported; `cvkeras export {run} {_EXPORT_FLAG[variant]}` writes it "
                f"(this folder has {', '.join(m.name for m in _models_in(p.parent))})")
    return f"{p}: model file not found; pass an .onnx or .tflite from `cvkeras export`"

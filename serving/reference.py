"""``reference.npz``: the Keras model's outputs on the fidelity images, written by the exporter and read
by ``cvkeras validate`` -- its one owner, writer and reader together (device side: numpy only).

Arrays: ``probs`` (N, classes) float32; optional ``labels`` (N,) int64, ``paths`` ("class/file", matched
against folder images whatever their root), ``split`` ("val" or "train" per row) and ``accuracy`` (the
Keras accuracy, a fraction, on the "val" rows).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.errors import CvkerasError
from serving.formats import existing_file

REFERENCE_FILE = "reference.npz"


class ValidationError(CvkerasError, ValueError):
    """Unusable validation data or reference; the message names the file and the fix."""


def _key(path: str | os.PathLike) -> str:
    """Match key of an image: its last two path parts, ``"class/file"``, whatever the root."""
    parts = Path(os.fspath(path).replace("\\", "/")).parts
    return "/".join(parts[-2:])


@dataclass
class Reference:
    """Outputs of the Keras model an artifact was exported from.

    ``paths`` ("class/file") match folder images; without paths, ``probs`` match array items by position.
    """

    probs: np.ndarray
    labels: np.ndarray | None = None
    paths: list[str] | None = None
    accuracy: float | None = None  # fraction 0..1 of the Keras model on these images
    source: str = "<memory>"
    #: per row "val" (labelled held-out split: accuracy drop) or "train" (held back from calibration:
    #: agreement only); None: every row counts for both.
    splits: np.ndarray | None = None

    @classmethod
    def load(cls, export_dir: str | os.PathLike) -> Reference:
        """Read ``export_dir/reference.npz`` (or the given ``.npz`` file)."""
        p = existing_file(export_dir, REFERENCE_FILE, ValidationError,
                          "reference outputs not found; pass the folder `cvkeras export` wrote")
        try:
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:  # zip, pickle and format errors
            raise ValidationError(f"{p}: not a readable reference ({exc}); re-run `cvkeras export`") from None
        if "probs" not in data:
            raise ValidationError(f"{p}: has no 'probs' array; re-run `cvkeras export`")
        probs = np.asarray(data["probs"], dtype=np.float32)
        n = probs.shape[0] if probs.ndim == 2 else -1
        labels = np.asarray(data["labels"]).astype(np.int64) if "labels" in data else None
        paths = [str(s) for s in data["paths"]] if "paths" in data else None
        if n < 0 or (labels is not None and len(labels) != n) or (paths is not None and len(paths) != n):
            raise ValidationError(f"{p}: probs, labels and paths differ in length; re-run `cvkeras export`")
        splits = np.asarray(data["split"]).astype(str) if "split" in data else None
        if splits is not None and len(splits) != n:
            raise ValidationError(f"{p}: split and probs differ in length; re-run `cvkeras export`")
        acc = float(data["accuracy"]) if "accuracy" in data else None
        return cls(probs=probs, labels=labels, paths=paths, accuracy=acc, source=str(p), splits=splits)

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's content (what :meth:`load` reads back)."""
        arrays = {"labels": np.asarray(self.labels, dtype=np.int64), "probs": np.asarray(self.probs, dtype=np.float32),
                  "accuracy": np.float64(self.accuracy)}
        if self.paths is not None:
            arrays["paths"] = np.asarray(list(self.paths), dtype=str)
        if self.splits is not None:
            arrays["split"] = np.asarray(list(self.splits), dtype=str)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()


def relative_paths(paths: Sequence[str], root: str | os.PathLike | None) -> list[str]:
    """Paths relative to the data root ("class/file.jpg") where they are under it, else as given."""
    out = []
    for p in paths:
        try:
            out.append(Path(p).relative_to(root).as_posix() if root else str(p))
        except ValueError:
            out.append(str(p))
    return out



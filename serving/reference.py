"""``reference.npz``: the Keras model's outputs on the fidelity images, written by the exporter and read
by ``cvkeras validate`` -- its one owner, writer and reader together (device side: numpy only).

Arrays: ``probs`` (N, classes) float32; optional ``labels`` (N,) int64, ``paths`` (each row's path relative to
the data root, as the run recorded it: ``val/daisy/000.jpg`` and ``train/daisy/000.jpg`` are two rows),
``split`` per row (``"val"``: the validation split, what gates are decided on; ``"train"``: a training image
held back from calibration, reported apart), ``accuracy`` (the Keras accuracy, a fraction, on the "val" rows),
``calibration`` (paths of the training images int8 calibration was fitted on) and ``seen`` (paths of the other
training images): what ``validate`` needs to keep every image training or export saw out of its figures;
``unknown_scores`` (N,) float32: the Keras model's unknown score per row (:mod:`cvkeras.serving.unknown`), what
an artifact's accept/reject decisions are compared with.

Images are matched to rows by their recorded relative path: an image path matches a row when it ends with
that row's path, whatever the root (so a copy of the data folder elsewhere still matches). Row paths must be
unique; a reference whose paths repeat is refused.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvkeras.serving.errors import CvkerasError, quote
from cvkeras.serving.formats import existing_file

REFERENCE_FILE = "reference.npz"
#: ``split`` of a reference row: the validation split (gates), or a held-back training image (reported apart).
VAL, HELD_BACK = "val", "train"


class ValidationError(CvkerasError, ValueError):
    """Unusable validation data or reference; the message names the file and the fix."""


def path_parts(path: str | os.PathLike) -> tuple[str, ...]:
    """The components of a path, ``\\`` read as ``/`` (a reference written on Windows matches on Linux)."""
    return Path(os.fspath(path).replace("\\", "/")).parts


class PathIndex:
    """Row index of recorded relative paths; an image path finds the row whose path it ends with (longest)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._rows: dict[tuple[str, ...], int] = {}
        for i, k in enumerate(keys):
            self._rows.setdefault(path_parts(k), i)
        self._depths = sorted({len(t) for t in self._rows}, reverse=True)

    def find(self, path: str | os.PathLike) -> int | None:
        parts = path_parts(path)
        for d in self._depths:
            if d <= len(parts) and (row := self._rows.get(parts[-d:])) is not None:
                return row
        return None

    def __contains__(self, path: str | os.PathLike) -> bool:
        return self.find(path) is not None


def first_repeat(keys: Sequence[str]) -> str | None:
    """The first path that occurs twice in ``keys`` (compared by components), or None."""
    seen: set[tuple[str, ...]] = set()
    for k in keys:
        t = path_parts(k)
        if t in seen:
            return k
        seen.add(t)
    return None


@dataclass
class Reference:
    """Outputs of the Keras model an artifact was exported from.

    ``paths`` (relative to the data root) match folder images; without paths, ``probs`` match array items by
    position.
    """

    probs: np.ndarray
    labels: np.ndarray | None = None
    paths: list[str] | None = None
    accuracy: float | None = None  # fraction 0..1 of the Keras model on the "val" rows
    source: str = "<memory>"
    #: per row VAL (labelled held-out split: gates) or HELD_BACK (a training image held back from
    #: calibration: agreement reported apart); None: every row is a validation row.
    splits: np.ndarray | None = None
    calibration: list[str] = field(default_factory=list)  # training images int8 was calibrated on (no row)
    seen: list[str] = field(default_factory=list)  # the other training images without a row
    unknown_scores: np.ndarray | None = None  # the Keras model's unknown score per row (None: no detector)

    def __post_init__(self) -> None:
        if self.paths is not None and (dup := first_repeat(self.paths)) is not None:
            raise ValidationError(f"{self.source}: reference path {quote(dup)} occurs twice, so its images cannot be "
                                  "told apart (written by an older cvkeras?); re-run `cvkeras export`")

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
        extra = {k: [str(s) for s in data[k]] for k in ("calibration", "seen") if k in data}
        scores = np.asarray(data["unknown_scores"], np.float32) if "unknown_scores" in data else None
        if scores is not None and scores.shape != (n,):
            raise ValidationError(f"{p}: unknown_scores and probs differ in length; re-run `cvkeras export`")
        return cls(probs=probs, labels=labels, paths=paths, accuracy=acc, source=str(p), splits=splits,
                   unknown_scores=scores, **extra)

    def row_splits(self) -> np.ndarray:
        """The split of every row (VAL where none was recorded)."""
        return np.full(len(self.probs), VAL) if self.splits is None else np.asarray(self.splits, dtype=str)

    def subset(self, rows: np.ndarray) -> Reference:
        """The reference of ``rows`` (a mask or indices), matched by position (no paths)."""
        labels = None if self.labels is None else self.labels[rows]
        scores = None if self.unknown_scores is None else self.unknown_scores[rows]
        return Reference(self.probs[rows], labels, None, None, self.source, unknown_scores=scores)

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's content (what :meth:`load` reads back)."""
        arrays = {"labels": np.asarray(self.labels, dtype=np.int64), "probs": np.asarray(self.probs, dtype=np.float32),
                  "accuracy": np.float64(self.accuracy)}
        if self.paths is not None:
            arrays["paths"] = np.asarray(list(self.paths), dtype=str)
        if self.splits is not None:
            arrays["split"] = np.asarray(list(self.splits), dtype=str)
        if self.unknown_scores is not None:
            arrays["unknown_scores"] = np.asarray(self.unknown_scores, dtype=np.float32)
        for name in ("calibration", "seen"):
            if getattr(self, name):
                arrays[name] = np.asarray(list(getattr(self, name)), dtype=str)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()


def relative_paths(paths: Sequence[str], root: str | os.PathLike | None) -> list[str]:
    """Paths relative to the data root (``val/daisy/000.jpg``) where they are under it, else as given."""
    out = []
    for p in paths:
        try:
            out.append(Path(p).relative_to(root).as_posix() if root else str(p))
        except ValueError:
            out.append(str(p))
    return out

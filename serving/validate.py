"""Accuracy parity of an exported model: the one validation runner (``cvkeras validate`` and ``export``).

A deployed artifact (ONNX/TFLite, maybe int8) is checked against the Keras model it came from, without
TensorFlow: ``cvkeras export`` saves the Keras model's outputs as ``reference.npz`` next to the model
(``paths`` "class/file" relative to the data root, ``labels``, ``probs`` N x C, optional ``accuracy``),
and the model metadata carries the Keras accuracy. The report gives accuracy, drop in points, top-1
agreement and the largest probability difference with the reference, per-class accuracy and latency.

Example:
    >>> p = Predictor.load("export/model_int8.onnx")
    >>> report = validate(p, scan_class_folder("data/val", p.labels), Reference.load("export"))
    >>> report.passed, report.accuracy_drop
    (True, 0.4)
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.predictor import Predictor
from serving.preprocess import IMAGE_EXTENSIONS, is_image_file, resize

REFERENCE_FILE = "reference.npz"
#: Sub-folders that hold a held-out split inside a data folder, tried when DIR itself has no classes.
SPLIT_FOLDERS = ("val", "validation")

Items = list[tuple[str | os.PathLike, int]] | tuple[np.ndarray, np.ndarray]


class ValidationError(ValueError):
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

    @classmethod
    def load(cls, export_dir: str | os.PathLike) -> Reference:
        """Read ``export_dir/reference.npz`` (or the given ``.npz`` file)."""
        p = Path(export_dir)
        if p.is_dir():
            p = p / REFERENCE_FILE
        if not p.is_file():
            raise ValidationError(f"{p}: reference outputs not found; pass the folder `cvkeras export` wrote")
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
        acc = float(data["accuracy"]) if "accuracy" in data else None
        return cls(probs=probs, labels=labels, paths=paths, accuracy=acc, source=str(p))


@dataclass
class ValidationReport:
    """Accuracy of an artifact and its parity with the reference. Accuracies are fractions 0..1;
    ``accuracy_drop`` is in percentage points (reference minus artifact)."""

    model: str
    n: int
    accuracy: float
    reference_accuracy: float | None
    accuracy_drop: float | None
    max_accuracy_drop: float
    passed: bool
    agreement: float | None = None  # top-1 agreement with the reference outputs
    max_abs_diff: float | None = None  # largest |p - p_ref| over all classes and images
    mean_abs_diff: float | None = None
    n_reference: int = 0  # images matched with a reference output
    reference_source: str | None = None  # where reference_accuracy came from
    per_class: dict[str, float] = field(default_factory=dict)  # accuracy per class present in the data
    support: dict[str, int] = field(default_factory=dict)
    latency_ms_per_image: float = 0.0  # mean model time per image (decoding excluded)
    failures: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"} per unreadable file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scan_class_folder(root: str | os.PathLike, labels: list[str]) -> list[tuple[Path, int]]:
    """``(path, label index)`` for every image in ``root/<class>/``; folder names must be model labels.

    When ``root`` has no class folders but a ``val/`` or ``validation/`` folder that does, that is used.
    """
    base = Path(root)
    if not base.is_dir():
        raise ValidationError(f"{base}: data folder not found; pass a folder of class sub-folders")

    def subdirs(p: Path) -> list[Path]:
        return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))

    dirs = subdirs(base)
    if not any(d.name in labels for d in dirs):
        for name in SPLIT_FOLDERS:
            if (base / name).is_dir() and any(d.name in labels for d in subdirs(base / name)):
                base, dirs = base / name, subdirs(base / name)
                break
    if not dirs:
        raise ValidationError(f"{base}: no class folders; expected {base}/<label>/<image> with labels "
                              f"{', '.join(labels)}")
    index = {name: i for i, name in enumerate(labels)}
    unknown = [d.name for d in dirs if d.name not in index]
    if unknown:
        raise ValidationError(f"{base}: folder(s) {', '.join(unknown)} are not labels of this model "
                              f"({', '.join(labels)}); remove them or pass the right --data")
    items = [(f, index[d.name]) for d in dirs for f in sorted(d.iterdir()) if is_image_file(f)]
    if not items:
        raise ValidationError(f"{base}: no {'/'.join(IMAGE_EXTENSIONS)} images in the class folders")
    return items


def _as_batch(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pre-decoded NHWC images (uint8 any size, or float at the input size) -> float32 model input."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValidationError(f"images of shape {images.shape} are not NHWC RGB; pass (N, H, W, 3)")
    if images.shape[1:3] == tuple(size):
        return images.astype(np.float32, copy=False)
    if images.dtype != np.uint8:
        raise ValidationError(f"float images of size {images.shape[1:3]} need resizing to {size}; "
                              "pass uint8 images or resize them first")
    return np.stack([resize(img, size) for img in images]).astype(np.float32)


def validate(
    predictor: Predictor,
    items: Items,
    reference: Reference | str | os.PathLike | None = None,
    max_accuracy_drop: float = 1.0,
    batch_size: int = 32,
) -> ValidationReport:
    """Evaluate ``predictor`` on labelled ``items`` and compare with the Keras ``reference``.

    Args:
        items: ``[(path, label_index), ...]`` (see :func:`scan_class_folder`) or pre-decoded
            ``(images NHWC, labels)`` arrays.
        reference: a :class:`Reference`, an export folder holding ``reference.npz``, or None.
        max_accuracy_drop: largest allowed drop, in percentage points, for ``passed``.

    The reference accuracy is the Keras model's accuracy on exactly the images evaluated when the
    reference covers them all; otherwise ``reference.accuracy``, otherwise the model metadata's.
    """
    if reference is not None and not isinstance(reference, Reference):
        reference = Reference.load(reference)
    num_classes = len(predictor.labels)
    failures: list[dict[str, str]] = []
    model_seconds = 0.0
    if isinstance(items, tuple):
        images, labels_arr = items
        labels = np.asarray(labels_arr, dtype=np.int64)
        if len(labels) != len(images):
            raise ValidationError(f"{len(images)} images but {len(labels)} labels; pass one label per image")
        keys: list[str] | None = None
        chunks = []
        for start in range(0, len(images), batch_size):
            x = _as_batch(images[start : start + batch_size], predictor.input_size)
            t0 = time.perf_counter()
            chunks.append(predictor.predict_batch(x))
            model_seconds += time.perf_counter() - t0
        probs = np.concatenate(chunks) if chunks else np.zeros((0, num_classes), np.float32)
    else:
        paths = [p for p, _ in items]
        all_labels = np.asarray([int(y) for _, y in items], dtype=np.int64)
        kept: list[int] = []
        chunks = []
        for batch in predictor.batches(paths, batch_size):
            failures += [{"path": os.fspath(paths[i]), "error": e} for i, e in sorted(batch.errors.items())]
            if batch.indices:
                t0 = time.perf_counter()
                chunks.append(predictor.predict_batch(batch.x))
                model_seconds += time.perf_counter() - t0
                kept += batch.indices
        probs = np.concatenate(chunks) if chunks else np.zeros((0, num_classes), np.float32)
        labels = all_labels[kept]
        keys = [_key(paths[i]) for i in kept]
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValidationError(f"label indices must be in 0..{num_classes - 1} for this model's labels")
    n = len(labels)
    if n == 0:
        raise ValidationError("no readable images to validate; check --data")
    pred = probs.argmax(axis=1)
    correct = pred == labels
    accuracy = float(correct.mean())
    per_class, support = {}, {}
    for c in np.unique(labels):
        name = predictor.labels[int(c)]
        mask = labels == c
        per_class[name] = float(correct[mask].mean())
        support[name] = int(mask.sum())

    report = ValidationReport(
        model=str(predictor.path), n=n, accuracy=accuracy, reference_accuracy=None, accuracy_drop=None,
        max_accuracy_drop=float(max_accuracy_drop), passed=True, per_class=per_class, support=support,
        latency_ms_per_image=1000.0 * model_seconds / n, failures=failures,
    )
    if reference is not None:
        _compare(report, reference, probs, labels, keys, num_classes)
    if report.reference_accuracy is None and predictor.metadata.reference_accuracy is not None:
        report.reference_accuracy = float(predictor.metadata.reference_accuracy)
        report.reference_source = "model metadata"
    if report.reference_accuracy is not None:
        report.accuracy_drop = 100.0 * (report.reference_accuracy - accuracy)
        report.passed = report.accuracy_drop <= max_accuracy_drop + 1e-9
    return report


def _compare(report: ValidationReport, ref: Reference, probs: np.ndarray, labels: np.ndarray,
             keys: list[str] | None, num_classes: int) -> None:
    """Fill agreement, differences and reference accuracy from the reference outputs on the overlap."""
    if ref.probs.ndim != 2 or ref.probs.shape[1] != num_classes:
        raise ValidationError(f"{ref.source}: reference has {ref.probs.shape[-1]} classes, the model "
                              f"{num_classes}; pass the reference exported with this model")
    if keys is None or ref.paths is None:  # match by position
        if len(ref.probs) != len(probs):
            raise ValidationError(f"{ref.source}: {len(ref.probs)} reference outputs for {len(probs)} "
                                  "images; pass the images the reference was computed on")
        mine, theirs = np.arange(len(probs)), np.arange(len(probs))
    else:
        where = {_key(p): i for i, p in enumerate(ref.paths)}
        pairs = [(i, where[k]) for i, k in enumerate(keys) if k in where]
        mine = np.asarray([i for i, _ in pairs], dtype=np.int64)
        theirs = np.asarray([j for _, j in pairs], dtype=np.int64)
    report.n_reference = len(mine)
    if len(mine):
        diff = np.abs(probs[mine] - ref.probs[theirs])
        report.agreement = float((probs[mine].argmax(1) == ref.probs[theirs].argmax(1)).mean())
        report.max_abs_diff = float(diff.max())
        report.mean_abs_diff = float(diff.mean())
    if len(mine) == len(probs) and ref.labels is not None:
        report.reference_accuracy = float((ref.probs[theirs].argmax(1) == labels[mine]).mean())
        report.reference_source = f"reference outputs on the same {len(mine)} images"
    elif ref.accuracy is not None:
        report.reference_accuracy = float(ref.accuracy)
        report.reference_source = ref.source

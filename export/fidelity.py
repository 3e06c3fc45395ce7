"""The images an export is checked on, decoded exactly as the device decodes them (``cvkeras.serving.preprocess``).

Every image has one role, recorded in ``reference.npz`` (``cvkeras.serving.reference``):

* validation (the run's validation split, held out from training): the gates -- top-1 agreement and
  accuracy drop -- and every figure export reports as its verdict; nothing export does is chosen on it;
* held-back training (training images not used for calibration, at most ``MAX_HELD_BACK``): what export's
  own choices are made on (the int8 repair's search), and an agreement reported beside the gate, never
  pooled into it (training images are predicted with wider margins and rarely flip);
* calibration (a stratified sample of the training split): what int8 is fitted on;
* seen (the remaining training images): listed so that ``validate`` keeps them out of its figures.

Calibration takes a stratified sample of the training split, at most half of it so that the other half
always remains for fidelity; calibration and fidelity sets are disjoint by construction. Files are
decoded with Pillow through ``cvkeras.serving.preprocess.load_resized``, the function ``serving.Predictor`` uses,
so the Keras reference, calibration and every artifact see the same pixels as the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.export.errors import ExportError
from cvkeras.serving.formats import SPLIT

#: Held-back training images beyond this many are not used (bounded memory: 224 px is 150 kB each).
MAX_HELD_BACK = 10000


@dataclass
class FidelitySet:
    """Decoded fidelity images (uint8 NHWC) with labels, split ("val" | "train") and source files.

    ``paths`` are None for TFDS runs (no files: artifacts are then checked on the arrays by position).
    """

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    paths: list[str] | None
    calibration: np.ndarray  # uint8 NHWC, disjoint from ``images``
    calibration_paths: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    seen_paths: list[str] = field(default_factory=list)  # training images in no other role

    @property
    def val(self) -> np.ndarray:
        return self.splits == "val"

    @property
    def held_back(self) -> np.ndarray:
        return self.splits == "train"

    def items(self) -> list[tuple[str, int]] | tuple[np.ndarray, np.ndarray]:
        """What ``cvkeras.serving.validate.validate`` takes: the files (decoded again there), or the arrays."""
        if self.paths is None:
            return (self.images, self.labels)
        return list(zip(self.paths, self.labels.tolist(), strict=True))

    def counts(self) -> dict[str, Any]:
        return {"fidelity": len(self.labels), "val": int(self.val.sum()), "held_back_train": int(self.held_back.sum()),
                "calibration": len(self.calibration), "seen_train": len(self.seen_paths),
                "unreadable": len(self.failures)}


def calibration_count(n_train: int, samples: int) -> int:
    """Calibration images drawn from ``n_train`` training images: ``samples``, at most half the split."""
    return max(1, min(samples, n_train // 2)) if n_train else 0


def decode(paths: list[str], size: tuple[int, int], records: bool = False
           ) -> tuple[np.ndarray, list[int], list[dict[str, str]]]:
    """Device decodes of ``paths`` (``records``: TFRecord items, whose encoded bytes are read first)."""
    from cvkeras.serving.preprocess import ImageError, load_resized

    if records:
        from cvkeras.data.tfrecord import encoded_bytes

        blobs = encoded_bytes(paths)
    out = np.empty((len(paths), size[0], size[1], 3), np.uint8)
    kept: list[int] = []
    failures: list[dict[str, str]] = []
    for i, p in enumerate(paths):
        try:
            out[len(kept)] = load_resized(blobs[p] if records else p, size)
            kept.append(i)
        except ImageError as exc:  # Pillow cannot read what TensorFlow could: the device cannot either
            failures.append({"path": p, "error": str(exc)})
    return out[: len(kept)], kept, failures


def fidelity_set(run: str | os.PathLike, size: tuple[int, int], calibration_samples: int | None,
                 seed: int, max_val: int | None = None) -> FidelitySet:
    """Decode the run's validation split, its calibration sample and its held-back training images.

    ``calibration_samples`` None: no calibration (every training image is held back).
    """
    from cvkeras.data.pipeline import stratified_sample
    from cvkeras.run import rundir

    split = rundir.RunDir(run).split()
    if split.get("source") == "tfds":
        return _tfds_set(run, split, size, calibration_samples, seed, max_val)
    val = split.get("val") or []
    train = split.get("train") or []
    records = split.get("source") == "tfrecord"
    if not val:
        raise ExportError(f"{Path(run) / SPLIT}: the validation split is empty; verification needs "
                          "validation images")
    val_idx = stratified_sample([y for _, y in val], max_val, seed)
    val = [val[i] for i in val_idx]
    t_labels = np.asarray([y for _, y in train], np.int64)
    n_cal = 0 if calibration_samples is None else calibration_count(len(train), calibration_samples)
    cal_idx = stratified_sample(t_labels, n_cal, seed) if n_cal else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(train)), cal_idx)
    rest = rest[stratified_sample(t_labels[rest], MAX_HELD_BACK, seed)]
    cal_paths = [str(train[i][0]) for i in cal_idx]
    seen = np.setdiff1d(np.arange(len(train)), np.concatenate([cal_idx, rest]))
    if n_cal:
        calibration, _, cal_fail = decode(cal_paths, size, records)
        if not len(calibration):
            raise ExportError(f"{Path(run) / SPLIT}: none of the {n_cal} calibration images can be "
                              "decoded; int8 calibration needs readable training images")
    else:
        calibration, cal_fail = np.zeros((0, *size, 3), np.uint8), []
    items = [(str(p), int(y), "val") for p, y in val] + [(str(train[i][0]), int(train[i][1]), "train")
                                                          for i in rest]
    images, kept, failures = decode([p for p, _, _ in items], size, records)
    items = [items[i] for i in kept]
    if not any(s == "val" for _, _, s in items):
        raise ExportError(f"{Path(run) / SPLIT}: no validation image can be decoded; verification "
                          "needs readable validation images")
    return FidelitySet(images, np.asarray([y for _, y, _ in items], np.int64),
                       np.asarray([s for _, _, s in items]), None if records else [p for p, _, _ in items], calibration,
                       cal_paths, failures + cal_fail, [str(train[i][0]) for i in seen])


def _tfds_set(run, split: dict, size, calibration_samples, seed, max_val) -> FidelitySet:
    """TFDS runs have no files: the arrays TensorFlow decodes are all there is."""
    from cvkeras.data.pipeline import stratified_sample
    from cvkeras.data.tfds_source import tfds_split_arrays

    vx, vy = tfds_split_arrays(split, "val", size)
    keep = stratified_sample(vy, max_val, seed)
    vx, vy = vx[keep], np.asarray(vy)[keep]
    tx, ty = tfds_split_arrays(split, "train", size)
    ty = np.asarray(ty, np.int64)
    n_cal = 0 if calibration_samples is None else calibration_count(len(ty), calibration_samples)
    cal_idx = stratified_sample(ty, n_cal, seed) if n_cal else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(ty)), cal_idx)
    rest = rest[stratified_sample(ty[rest], MAX_HELD_BACK, seed)]
    images = np.concatenate([vx, tx[rest]]).astype(np.uint8)
    labels = np.concatenate([vy, ty[rest]]).astype(np.int64)
    splits = np.asarray(["val"] * len(vy) + ["train"] * len(rest))
    return FidelitySet(images, labels, splits, None, tx[cal_idx].astype(np.uint8))


def with_flips(images: np.ndarray) -> np.ndarray:
    """Calibration images plus their mirror images: twice the activation statistics, no held-out image."""
    return np.concatenate([images, images[:, :, ::-1]]) if len(images) else images

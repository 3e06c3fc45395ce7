"""The labelled split every data source resolves to (:class:`DataSplit`), the seeded stratified split
(after the readability check of :mod:`cvkeras.data.readable`), and the data error type.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvkeras.data.readable import check_readable
from cvkeras.serving.errors import CvkerasError, quote
from cvkeras.serving.formats import label_problem


class DataError(CvkerasError, ValueError):
    """Data that cannot be trained on; the message is one line naming the path and the fix."""


@dataclass
class DataSplit:
    """Labelled items per split, plus what was skipped while scanning."""

    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = "folder"
    root: str | None = None
    tfds: dict[str, Any] | None = None  # for tfds sources: name, config, data_dir, split names
    tfrecord: dict[str, Any] | None = None  # for tfrecord sources: shards and records per shard
    warnings: list[str] = field(default_factory=list)  # oddities worth a line (the run goes on)

    def to_json(self, seed: int) -> dict[str, Any]:
        """The ``split.json`` document (format: :func:`cvkeras.serving.formats.split_doc`)."""
        from cvkeras.serving.formats import split_doc

        extra = {} if self.tfds is None else {"tfds": self.tfds}
        if self.tfrecord is not None:
            extra["tfrecord"] = self.tfrecord
        return split_doc(self.source, self.root, seed, self.classes,
                         {name: getattr(self, name) for name in ("train", "val", "test")}, **extra)

    def counts(self, split: str = "train") -> list[int]:
        c = Counter(y for _, y in getattr(self, split))
        return [c.get(i, 0) for i in range(len(self.classes))]


def stratified_split(
    items: list[tuple[str, int]], val_split: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Seeded per-class split: each class keeps at least one training and (if >1 image) one val image."""
    if not 0.0 < val_split < 1.0:
        raise DataError(f"--val-split must be between 0 and 1, not {val_split}")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for it in sorted(items):
        by_class.setdefault(it[1], []).append(it)
    train, val = [], []
    for y in sorted(by_class):
        group = by_class[y]
        order = rng.permutation(len(group))
        n_val = int(round(val_split * len(group)))
        n_val = min(max(n_val, 1 if len(group) > 1 else 0), len(group) - 1)
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return sorted(train), sorted(val)


def case_clashes(classes: list[str], where: str) -> list[str]:
    """A warning when class names differ only by case (``Daisy``, ``daisy``): almost always one class
    split in two by a typo, and one folder on a case-insensitive file system."""
    by_fold: dict[str, list[str]] = {}
    for name in classes:
        by_fold.setdefault(name.casefold(), []).append(name)
    clashes = [names for names in by_fold.values() if len(names) > 1]
    if not clashes:
        return []
    return [f"{where}: {len(clashes)} group(s) of class names differ only by case (e.g. "
            f"{' and '.join(map(quote, clashes[0]))}); they train as different classes -- merge them if they are one"]


def finish_split(classes: list[str], splits: dict[str, list[tuple[str, int]]], where: str, val_split: float,
            seed: int, source: str, root: str | None,
            pre_skipped: list[tuple[str, str]] | None = None, test_split: float = 0.0,
            check_files: bool = True) -> DataSplit:
    """Drop unreadable files, check every class has images, and split when no val split was given.

    ``test_split`` > 0 and no test split given: that fraction of all images is set aside first (seeded,
    stratified, independent of the validation draw), then validation is drawn from the rest so that it is
    still ``val_split`` of all images. ``check_files`` False: the items are not files (TFRecord records)."""
    all_items = [it for items in splits.values() for it in items]
    skipped = list(pre_skipped or []) + (check_readable([p for p, _ in all_items]) if check_files else [])
    bad = {p for p, _ in skipped}
    splits = {k: [it for it in v if it[0] not in bad] for k, v in splits.items()}
    if len(classes) < 2:
        raise DataError(f"{where}: found {len(classes)} class(es); need at least two class folders or labels")
    problem = label_problem(classes)
    if problem:  # labels.txt is one name per line, and names reach the terminal: refused before any training
        raise DataError(f"{where}: {problem}; rename that class folder or label")
    if test_split and not splits.get("test"):
        total = sum(len(v) for v in splits.values())
        frac = test_split * total / max(1, len(splits.get("train", [])))
        if not 0.0 < frac < 1.0:
            raise DataError(f"{where}: --test-split {test_split} leaves no training images; lower it")
        splits["train"], splits["test"] = stratified_split(splits.get("train", []), frac, seed + 1)
        if not splits.get("val"):
            val_split = min(0.9, val_split / (1.0 - test_split))
    if not splits.get("val"):
        splits["train"], splits["val"] = stratified_split(splits.get("train", []), val_split, seed)
    counts = Counter(y for _, y in splits.get("train", []))
    empty = [classes[i] for i in range(len(classes)) if counts.get(i, 0) == 0]
    if empty:
        raise DataError(f"{where}: class {quote(empty[0])} has no readable training images; add images or remove it")
    if not splits["val"]:
        raise DataError(f"{where}: the validation split is empty; add images or raise --val-split")
    val_counts = Counter(y for _, y in splits["val"])
    no_val = [classes[i] for i in range(len(classes)) if not val_counts.get(i)]
    warnings = case_clashes(classes, where)
    if no_val:
        warnings.append(f"{where}: class(es) {', '.join(map(repr, no_val[:5]))} have no validation image "
                        "(a class needs 2+ images, or add it to val/); its validation recall is undefined and "
                        "reported as 0")
    return DataSplit(classes, splits["train"], splits["val"], splits.get("test", []), skipped, source, root,
                     warnings=warnings)

"""Data sources: class folders, CSV manifests, TFDS and the built-in demo, scanned and split.

``load_source`` turns a ``--data`` argument into a :class:`DataSplit` of ``(path, label)`` lists:

* a folder of class sub-folders (``train/`` + ``val/``/``validation/`` [+ ``test/``] are used as given,
  otherwise a seeded stratified split is made);
* a CSV manifest ``path,label[,split]`` (paths relative to the CSV);
* ``tfds:NAME[:config]`` through tensorflow-datasets;
* ``demo:shapes``, a generated dataset (see :mod:`cvkeras.demo`).

Every image is decoded once before training (in threads, with the device decoder of
``serving.preprocess``, and checked to be a format TensorFlow decodes the same way); unreadable files are
skipped and reported, structural problems raise
:class:`DataError` with one line naming the path and the fix.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import CvkerasError, first_line
from serving.images import IGNORED_DIRS, OTHER_IMAGE_EXTENSIONS, class_folders, list_images  # noqa: F401
from serving.preprocess import ImageError, load_image

TF_FORMATS = ("JPEG", "PNG", "BMP", "GIF")  # what tf.io.decode_image reads
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


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
    warnings: list[str] = field(default_factory=list)  # oddities worth a line (the run goes on)

    def to_json(self, seed: int) -> dict[str, Any]:
        """The ``split.json`` document (format: :func:`serving.formats.split_doc`)."""
        from serving.formats import split_doc

        extra = {} if self.tfds is None else {"tfds": self.tfds}
        return split_doc(self.source, self.root, seed, self.classes,
                         {name: getattr(self, name) for name in ("train", "val", "test")}, **extra)

    def counts(self, split: str = "train") -> list[int]:
        c = Counter(y for _, y in getattr(self, split))
        return [c.get(i, 0) for i in range(len(self.classes))]


def _check_readable(paths: list[str], workers: int = 8) -> tuple[list[bool], list[tuple[str, str]]]:
    """Decode every file once; returns ok flags and (path, reason) for the unreadable ones."""

    from PIL import Image

    def probe(p: str) -> str | None:
        try:
            load_image(p)
        except ImageError as exc:
            return str(exc).split(": ", 1)[-1]
        with Image.open(p) as img:  # what Pillow reads, TensorFlow's decoders may not
            if img.format not in TF_FORMATS:
                return f"{img.format} image (training decodes JPEG, PNG, BMP, GIF only); convert it to PNG"
            if img.format == "BMP" and (img.mode not in ("RGB", "RGBA", "L") or img.info.get("compression")):
                return f"{img.mode} or compressed BMP (TensorFlow decodes it wrongly); save it as PNG"
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(probe, paths))
    return [r is None for r in reasons], [(p, r) for p, r in zip(paths, reasons, strict=True) if r is not None]


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


def _finish(classes: list[str], splits: dict[str, list[tuple[str, int]]], where: str, val_split: float,
            seed: int, source: str, root: str | None,
            pre_skipped: list[tuple[str, str]] | None = None) -> DataSplit:
    """Drop unreadable files, check every class has images, and split when no val split was given."""
    all_items = [it for items in splits.values() for it in items]
    ok, skipped = _check_readable([p for p, _ in all_items])
    skipped = list(pre_skipped or []) + skipped
    bad = {p for p, _ in skipped}
    splits = {k: [it for it in v if it[0] not in bad] for k, v in splits.items()}
    if len(classes) < 2:
        raise DataError(f"{where}: found {len(classes)} class(es); need at least two class folders or labels")
    if not splits.get("val"):
        splits["train"], splits["val"] = stratified_split(splits.get("train", []), val_split, seed)
    counts = Counter(y for _, y in splits.get("train", []))
    empty = [classes[i] for i in range(len(classes)) if counts.get(i, 0) == 0]
    if empty:
        raise DataError(f"{where}: class {empty[0]!r} has no readable training images; add images or remove it")
    if not splits["val"]:
        raise DataError(f"{where}: the validation split is empty; add images or raise --val-split")
    val_counts = Counter(y for _, y in splits["val"])
    no_val = [classes[i] for i in range(len(classes)) if not val_counts.get(i)]
    warnings = []
    if no_val:
        warnings.append(f"{where}: class(es) {', '.join(map(repr, no_val[:5]))} have no validation image "
                        "(a class needs 2+ images, or add it to val/); its validation recall is undefined and "
                        "reported as 0")
    return DataSplit(classes, splits["train"], splits["val"], splits.get("test", []), skipped, source, root,
                     warnings=warnings)


def scan_folder(root: str | os.PathLike, val_split: float = 0.2, seed: int = 42, source: str = "folder") -> DataSplit:
    """Scan a class-folder dataset (optionally with train/val/test sub-folders)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: data folder not found; pass a folder of class sub-folders, a .csv, or tfds:NAME")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass a folder of class sub-folders, a .csv manifest or tfds:NAME")
    found = {name: next((root / d for d in dirs if (root / d).is_dir()), None) for name, dirs in SPLIT_DIRS.items()}
    skipped: list[tuple[str, str]] = []
    if found["train"] is not None:  # train/ [+ val/ or validation/] [+ test/]; val is split off train if absent
        classes = [d.name for d in class_folders(found["train"], skipped)]
        index = {c: i for i, c in enumerate(classes)}
        splits: dict[str, list[tuple[str, int]]] = {}
        for name, folder in found.items():
            if folder is None:
                continue
            items = []
            for d in class_folders(folder, skipped if name != "train" else None):
                if d.name not in index:
                    raise DataError(f"{d}: class {d.name!r} is not in {found['train']}; use the same class folders")
                items += [(str(p.resolve()), index[d.name]) for p in list_images(d, skipped)]
            splits[name] = items
    else:
        classes = [d.name for d in class_folders(root, skipped)]
        index = {c: i for i, c in enumerate(classes)}
        splits = {"train": [(str(p.resolve()), index[d.name]) for d in class_folders(root)
                            for p in list_images(d, skipped)]}
    return _finish(classes, splits, str(root), val_split, seed, source, str(root.resolve()), skipped)


#: Column names a manifest header may use (case-insensitive); the first match of each kind is used.
PATH_COLUMNS = ("path", "filename", "file", "image", "filepath", "image_path")
LABEL_COLUMNS = ("label", "class", "category")
SPLIT_COLUMNS = ("split", "subset")


def _header_columns(row: list[str], path: Path, base: Path) -> tuple[int, int, int | None] | None:
    """``(path, label, split)`` column indices when the first row is a header naming them, else None.

    A row is a header when a cell is one of the known column names and its first cell is not a file."""
    names = [c.strip().lower() for c in row]
    known = {*PATH_COLUMNS, *LABEL_COLUMNS, *SPLIT_COLUMNS}
    if not any(n in known for n in names) or (row and row[0].strip() and (base / row[0].strip()).is_file()):
        return None

    def find(options: tuple[str, ...]) -> int | None:
        return next((i for i, n in enumerate(names) if n in options), None)

    col_path, col_label = find(PATH_COLUMNS), find(LABEL_COLUMNS)
    for col, what, options in ((col_path, "image path", PATH_COLUMNS), (col_label, "label", LABEL_COLUMNS)):
        if col is None:
            raise DataError(f"{path}:1: the header {','.join(row)!r} names no {what} column; "
                            f"call it one of {', '.join(options)}")
    return col_path, col_label, find(SPLIT_COLUMNS)


def read_csv(path: str | os.PathLike, val_split: float = 0.2, seed: int = 42) -> DataSplit:
    """Read a manifest of image paths and labels; paths are relative to the CSV.

    With a header, columns are found by name (path/filename/file/image, label/class/category and an
    optional split/subset, in any order); without one, by position: ``path,label[,split]``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: CSV manifest not found")
    base = path.parent
    rows = []
    columns: tuple[int, int, int | None] = (0, 1, 2)
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's byte-order mark
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if lineno == 1 and (header := _header_columns(row, path, base)):
                columns = header
                continue
            if len(row) < 2:
                raise DataError(f"{path}:{lineno}: expected 'path,label[,split]', got {','.join(row)!r}")
            col_path, col_label, col_split = columns
            if len(row) <= max(col_path, col_label):
                raise DataError(f"{path}:{lineno}: expected {max(col_path, col_label) + 1} columns as in the "
                                f"header, got {','.join(row)!r}")
            split_cell = row[col_split] if col_split is not None and len(row) > col_split else ""
            row = [row[col_path], row[col_label], split_cell]
            if not row[0].strip():
                raise DataError(f"{path}:{lineno}: empty path; give each row an image path")
            if not row[1].strip():
                raise DataError(f"{path}:{lineno}: empty label for {row[0].strip()!r}; give every row a class name")
            rows.append((lineno, row[0].strip(), row[1].strip(), row[2].strip().lower()))
    classes = sorted({label for _, _, label, _ in rows})
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[tuple[str, int]]] = {"train": []}
    aliases = {"train": "train", "val": "val", "validation": "val", "test": "test", "": "train"}
    for lineno, rel, label, split in rows:
        file = (base / rel).resolve()
        if not file.is_file():
            raise DataError(f"{path}:{lineno}: {rel} does not exist (paths are relative to the CSV); fix the row")
        if split not in aliases:
            raise DataError(f"{path}:{lineno}: unknown split {split!r}; use train, val or test")
        splits.setdefault(aliases[split], []).append((str(file), index[label]))
    result = _finish(classes, splits, str(path), val_split, seed, "csv", str(base.resolve()))
    labels_of: dict[str, set[str]] = {}
    for _, rel, label, _ in rows:
        labels_of.setdefault(str((base / rel).resolve()), set()).add(label)
    twice = [(f, sorted(ls)) for f, ls in labels_of.items() if len(ls) > 1]
    if twice:
        result.warnings.append(f"{path}: {len(twice)} file(s) listed under several labels (e.g. {twice[0][0]} as "
                               f"{' and '.join(twice[0][1])}); each copy is trained on with its own label")
    return result


def recorded_split(run: str | os.PathLike) -> DataSplit:
    """The split a run recorded in ``split.json`` (for ``--resume``): exactly those files, no rescan.

    Recorded files that are gone are dropped and reported; files added to the data folder since are
    reported and not used (they would leak into a split chosen before they existed).
    """
    from cvkeras import rundir

    rd = rundir.RunDir(run)
    doc = rd.split()
    classes = rd.labels()
    if doc.get("classes") not in (None, classes):
        raise DataError(f"{Path(run) / rundir.LABELS}: differs from the classes in split.json; restore it")
    if doc.get("source") == "tfds":
        return DataSplit(classes, [], [], [], [], "tfds", None, doc["tfds"])
    splits = {name: [(p, int(y)) for p, y in doc.get(name, [])] for name in ("train", "val", "test")}
    warnings, skipped = [], []
    for name, items in splits.items():
        gone = [p for p, _ in items if not os.path.isfile(p)]
        if gone:
            warnings.append(f"{len(gone)} recorded {name} file(s) are missing (e.g. {gone[0]}); continuing without "
                            "them")
            skipped += [(p, "missing: recorded in split.json but no longer on disk") for p in gone]
            splits[name] = [it for it in items if it[0] not in set(gone)]
    root = doc.get("root")
    if doc.get("source") in ("folder", "demo") and root and Path(root).is_dir():
        recorded = {p for items in splits.values() for p, _ in items} | {p for p, _ in skipped}
        new = [str(p.resolve()) for p in list_images(Path(root)) if str(p.resolve()) not in recorded]
        if new:
            warnings.append(f"{root}: {len(new)} file(s) added since the run started (e.g. {new[0]}) are not used; "
                            "--resume keeps the recorded split -- start a new run to train on them")
    if not splits["train"] or not splits["val"]:
        raise DataError(f"{Path(run) / rundir.SPLIT}: the recorded training or validation files are all missing; "
                        "restore the data or start a new run")
    return DataSplit(classes, splits["train"], splits["val"], splits["test"], skipped, doc.get("source", "folder"),
                     root, warnings=warnings)


def _parse_tfds(spec: str) -> tuple[str, str | None]:
    parts = spec.split(":")
    if len(parts) < 2 or not parts[1]:
        raise DataError(f"{spec}: expected tfds:NAME or tfds:NAME:CONFIG")
    return parts[1], (parts[2] if len(parts) > 2 and parts[2] else None)


def load_tfds(spec: str, data_dir: str | None = None, val_split: float = 0.2, seed: int = 42) -> DataSplit:
    """Describe a TFDS dataset: class names from the builder info, train/val(/test) split names."""
    import tensorflow_datasets as tfds

    name, config = _parse_tfds(spec)
    try:
        builder = tfds.builder(name, config=config, data_dir=data_dir)
        info = builder.info
    except Exception as exc:  # tfds raises DatasetNotFoundError and friends
        raise DataError(f"{spec}: cannot open TFDS dataset ({first_line(exc, 200)})") from None
    label = info.features["label"] if "label" in info.features else None
    if label is None or not hasattr(label, "names"):
        raise DataError(f"{spec}: the dataset has no 'label' ClassLabel feature")
    splits = list(info.splits.keys()) or ["train"]  # metadata-less (mocked/partial) copies list none
    if "train" not in splits:
        raise DataError(f"{spec}: the dataset has no 'train' split")
    val_name = next((s for s in ("validation", "val") if s in splits), None)
    test_name = "test" if "test" in splits else None
    if val_name is None:
        pct = int(round(val_split * 100))
        val_name, train_name = f"train[:{pct}%]", f"train[{pct}%:]"
    else:
        train_name = "train"
    meta = {"name": name, "config": config, "data_dir": data_dir,
            "splits": {"train": train_name, "val": val_name, "test": test_name}}
    return DataSplit(list(label.names), [], [], [], [], "tfds", None, meta)


def tfds_dataset(tfds_meta: dict[str, Any], split: str):
    """The (uint8 image, label) tf.data dataset of one split of a TFDS source."""
    import tensorflow_datasets as tfds

    name = tfds_meta["splits"].get(split)
    if not name:
        raise DataError(f"tfds:{tfds_meta['name']}: has no {split} split")
    full = tfds_meta["name"] + (f"/{tfds_meta['config']}" if tfds_meta.get("config") else "")
    try:
        return tfds.load(full, split=name, data_dir=tfds_meta.get("data_dir"), as_supervised=True,
                         shuffle_files=False, download=True)
    except Exception as exc:  # offline, not prepared, bad split name...
        raise DataError(f"tfds:{full}: cannot load split {name!r} ({first_line(exc, 200)}); "
                        "prepare it or pass --tfds-data-dir") from None


def tfds_split_arrays(split_doc: dict[str, Any], split: str, size) -> tuple[np.ndarray, np.ndarray]:
    """All images of a TFDS split, resized per the contract, as uint8 arrays (for calibration/eval)."""
    from cvkeras.pipeline import resize_image

    ds = tfds_dataset(split_doc["tfds"], split).map(lambda x, y: (resize_image(x, size), y)).batch(256)
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy().astype(np.uint8))
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def load_source(data: str, val_split: float = 0.2, seed: int = 42, tfds_data_dir: str | None = None) -> DataSplit:
    """Resolve a ``--data`` argument to a :class:`DataSplit`."""
    if data.startswith("demo:"):
        from cvkeras.demo import ensure_demo

        return scan_folder(ensure_demo(data), val_split, seed, source="demo")
    if data.startswith("tfds:"):
        return load_tfds(data, tfds_data_dir, val_split, seed)
    if data.lower().endswith(".csv"):
        return read_csv(data, val_split, seed)
    return scan_folder(data, val_split, seed)

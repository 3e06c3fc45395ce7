"""Data sources: class folders, CSV manifests, TFDS and the built-in demo, scanned and split.

``load_source`` turns a ``--data`` argument into a :class:`DataSplit` of ``(path, label)`` lists:

* a folder of class sub-folders (``train/`` + ``val/``/``validation/`` [+ ``test/``] are used as given,
  otherwise a seeded stratified split is made);
* a CSV manifest ``path,label[,split]`` (paths relative to the CSV);
* ``tfds:NAME[:config]`` through tensorflow-datasets;
* ``tfrecord:PATTERN``, sharded TFRecord files (see :mod:`cvkeras.data.tfrecord`);
* ``demo:shapes``, a generated dataset (see :mod:`cvkeras.data.demo`).

Before training each file's header is read, not the image (:mod:`cvkeras.data.readable`: a format TensorFlow
decodes the same way as the device); a file that fails to decode later is caught by the input pipeline. Both
kinds are skipped and reported in skipped.txt; structural problems raise :class:`DataError` with one line naming
the path and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from cvkeras.data.manifest import read_csv
from cvkeras.data.split import DataError, DataSplit, finish_split
from cvkeras.serving.errors import first_line
from cvkeras.serving.formats import label_problem, quote
from cvkeras.serving.images import class_folders, list_images

TF_FORMATS = ("JPEG", "PNG", "BMP", "GIF")  # what tf.io.decode_image reads
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


def resolved(paths: list[Path]) -> list[str]:
    """Absolute names without symlinks, each folder resolved once: ``Path.resolve`` per file walks every
    component of its name (an ``lstat`` each), the listing's largest cost at 50 000 files. A symlinked file
    still resolves to its target."""
    folders: dict[Path, str] = {}
    out = []
    for p in paths:
        if p.is_symlink():
            out.append(str(p.resolve()))
            continue
        if p.parent not in folders:
            folders[p.parent] = os.path.realpath(p.parent)
        out.append(os.path.join(folders[p.parent], p.name))
    return out


def scan_folder(root: str | os.PathLike, val_split: float = 0.2, seed: int = 42, source: str = "folder",
                test_split: float = 0.0) -> DataSplit:
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
                    raise DataError(f"{d}: class {quote(d.name)} is not in {found['train']}; "
                                    "use the same class folders")
                items += [(p, index[d.name]) for p in resolved(list_images(d, skipped))]
            splits[name] = items
    else:
        classes = [d.name for d in class_folders(root, skipped)]
        index = {c: i for i, c in enumerate(classes)}
        splits = {"train": [(p, index[d.name]) for d in class_folders(root)
                            for p in resolved(list_images(d, skipped))]}
    return finish_split(classes, splits, str(root), val_split, seed, source, str(root.resolve()), skipped, test_split)


def recorded_split(run: str | os.PathLike) -> DataSplit:
    """The split a run recorded in ``split.json`` (for ``--resume``): exactly those files, no rescan.

    Recorded files that are gone are dropped and reported; files added to the data folder since are
    reported and not used (they would leak into a split chosen before they existed).
    """
    from cvkeras.run.rundir import RunDir
    from cvkeras.serving.formats import LABELS, SPLIT

    rd = RunDir(run)
    doc = rd.split()
    classes = rd.labels()
    if doc.get("classes") not in (None, classes):
        raise DataError(f"{Path(run) / LABELS}: differs from the classes in split.json; restore it")
    if doc.get("source") == "tfds":
        return DataSplit(classes, [], [], [], [], "tfds", None, doc["tfds"])
    if doc.get("source") == "tfrecord":  # records, not files: the shards are read again as recorded
        return DataSplit(classes, *([(p, int(y)) for p, y in doc.get(name, [])] for name in ("train", "val", "test")),
                         [], "tfrecord", doc.get("root"), tfrecord=doc["tfrecord"])
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
        raise DataError(f"{Path(run) / SPLIT}: the recorded training or validation files are all missing; "
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
    problem = label_problem(list(label.names))
    if problem:
        raise DataError(f"{spec}: {problem}; cvkeras cannot train on these class names")
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


def load_source(data: str, val_split: float = 0.2, seed: int = 42, tfds_data_dir: str | None = None,
                test_split: float = 0.0) -> DataSplit:
    """Resolve a ``--data`` argument to a :class:`DataSplit` (``test_split``: see
    :func:`cvkeras.data.split.finish_split`)."""
    if data.startswith("demo:"):
        from cvkeras.data.demo import DATASETS, ensure_demo

        if data.split(":", 1)[1] not in DATASETS:
            raise DataError(f"{data}: unknown demo dataset; the built-in one is demo:shapes")
        return scan_folder(ensure_demo(data), val_split, seed, source="demo", test_split=test_split)
    if data.startswith("tfds:"):
        if test_split:
            raise DataError(f"{data}: --test-split is for folders and CSV files; a TFDS dataset's own test split "
                            "is evaluated when it has one")
        return load_tfds(data, tfds_data_dir, val_split, seed)
    if data.startswith("tfrecord:"):
        from cvkeras.data.tfrecord import load_tfrecord

        return load_tfrecord(data, val_split, seed, test_split)
    if data.lower().endswith(".csv"):
        return read_csv(data, val_split, seed, test_split)
    return scan_folder(data, val_split, seed, test_split=test_split)

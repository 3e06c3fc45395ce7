"""CSV manifests (``cvkeras finetune labels.csv``): paths relative to the CSV, columns by header name or
``path,label[,split]``; an empty label is an error naming the row.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from cvkeras.data.split import DataError, DataSplit, finish_split
from cvkeras.serving.errors import has_control, quote

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
            raise DataError(f"{path}:1: the header {quote(','.join(row))} names no {what} column; "
                            f"call it one of {', '.join(options)}")
    return col_path, col_label, find(SPLIT_COLUMNS)


def read_csv(path: str | os.PathLike, val_split: float = 0.2, seed: int = 42, test_split: float = 0.0) -> DataSplit:
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
                raise DataError(f"{path}:{lineno}: expected 'path,label[,split]', got {quote(','.join(row))}")
            col_path, col_label, col_split = columns
            if len(row) <= max(col_path, col_label):
                raise DataError(f"{path}:{lineno}: expected {max(col_path, col_label) + 1} columns as in the "
                                f"header, got {quote(','.join(row))}")
            split_cell = row[col_split] if col_split is not None and len(row) > col_split else ""
            row = [row[col_path], row[col_label], split_cell]
            if not row[0].strip():
                raise DataError(f"{path}:{lineno}: empty path; give each row an image path")
            if has_control(row[1].strip()):
                raise DataError(f"{path}:{lineno}: label {quote(row[1].strip())} holds a control character (newline, "
                                "tab, ESC, ...); fix the row")
            if not row[1].strip():
                raise DataError(f"{path}:{lineno}: empty label for {quote(row[0].strip())}; "
                                "give every row a class name")
            rows.append((lineno, row[0].strip(), row[1].strip(), row[2].strip().lower()))
    classes = sorted({label for _, _, label, _ in rows})
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[tuple[str, int]]] = {"train": []}
    aliases = {"train": "train", "val": "val", "validation": "val", "test": "test", "": "train"}
    for lineno, rel, label, split in rows:
        file = (base / rel).resolve()
        if file.is_dir():
            raise DataError(f"{path}:{lineno}: {rel} is a folder, not an image file; list image files, one per row")
        if not file.is_file():
            raise DataError(f"{path}:{lineno}: {rel} does not exist (paths are relative to the CSV); fix the row")
        if split not in aliases:
            raise DataError(f"{path}:{lineno}: unknown split {quote(split)}; use train, val or test")
        splits.setdefault(aliases[split], []).append((str(file), index[label]))
    result = finish_split(classes, splits, str(path), val_split, seed, "csv", str(base.resolve()),
                          test_split=test_split)
    labels_of: dict[str, set[str]] = {}
    for _, rel, label, _ in rows:
        labels_of.setdefault(str((base / rel).resolve()), set()).add(label)
    twice = [(f, sorted(ls)) for f, ls in labels_of.items() if len(ls) > 1]
    if twice:
        result.warnings.append(f"{path}: {len(twice)} file(s) listed under several labels (e.g. {twice[0][0]} as "
                               f"{' and '.join(twice[0][1])}); each copy is trained on with its own label")
    return result

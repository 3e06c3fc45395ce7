"""The files both sides read: each format is defined here once, writer and reader together.

* ``labels.txt`` -- one class name per line, index = line number (run directory and export folder);
* ``split.json`` -- the recorded split of a run, read by ``cvkeras validate --run`` on the device too;
* the tensor names of every exported model (``image`` in, ``probs`` out).

``reference.npz`` is owned by :mod:`cvkeras.serving.reference`. Device side: standard library only; a damaged
file is a :class:`~cvkeras.serving.errors.RunDirError` naming the file and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvkeras.serving.errors import RunDirError, first_line, has_control, quote

LABELS = "labels.txt"
SPLIT = "split.json"
#: The input and output tensor names of every exported model.
INPUT_NAME = "image"
OUTPUT_NAME = "probs"


def existing_file(path: str | os.PathLike, name: str, error: type[Exception], missing: str) -> Path:
    """``path``, or ``path/name`` when ``path`` is a folder; ``error("<file>: <missing>")`` if no such file."""
    p = Path(path)
    if p.is_dir():
        p = p / name
    if not p.is_file():
        raise error(f"{p}: {missing}")
    return p


def label_problem(labels: Sequence[str]) -> str | None:
    """Why ``labels`` cannot be a model's class names, or None: a name with a control character (a newline
    splits ``labels.txt``'s one-name-per-line format; ESC sequences act on the terminal that prints it), an
    empty name, or a name given twice. Every reader of class names (folders, CSV, metadata) asks this."""
    seen: set[str] = set()
    for name in labels:
        if has_control(name):
            return f"class name {quote(name)} holds a control character (newline, tab, ESC, ...)"
        if not name.strip():
            return f"class name {quote(name)} is empty"
        if name in seen:
            return f"class {quote(name)} is listed twice"
        seen.add(name)
    return None


def labels_text(labels: Sequence[str]) -> str:
    """The content of ``labels.txt`` for ``labels`` (ValueError for names :func:`label_problem` refuses)."""
    problem = label_problem(labels)
    if problem:
        raise ValueError(f"{LABELS}: {problem}")
    return "".join(f"{name}\n" for name in labels)


def read_labels(path: str | os.PathLike) -> list[str]:
    """Read ``labels.txt`` (a file, or a directory that holds one)."""
    p = existing_file(path, LABELS, RunDirError, "labels file not found; is this a cvkeras run directory?")
    try:
        labels = [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise RunDirError(f"{p}: not UTF-8 text; restore labels.txt from the run") from None
    if not labels:
        raise RunDirError(f"{p}: no class names; restore labels.txt from the run")
    problem = label_problem(labels)
    if problem:
        raise RunDirError(f"{p}: {problem}; restore labels.txt from the run")
    return labels


def split_doc(source: str, root: str | None, seed: int, classes: Sequence[str],
              splits: dict[str, Sequence[tuple[str, int]]], **extra: Any) -> dict[str, Any]:
    """The content of ``split.json``: ``{"source", "root", "seed", "classes", "train", "val", "test", ...}``
    with ``[path, label index]`` items (absolute paths); a TFDS run passes ``tfds=...`` instead of items."""
    doc: dict[str, Any] = {"source": source, "root": root, "seed": seed, "classes": list(classes), **extra}
    for name in ("train", "val", "test"):
        doc[name] = [[p, int(y)] for p, y in splits.get(name, ())]
    return doc


def read_split(run: str | os.PathLike) -> dict[str, Any]:
    """Read ``split.json`` and check its schema; a damaged file is a RunDirError naming the field."""
    p = Path(run) / SPLIT
    if not p.is_file():
        raise RunDirError(f"{p}: split not found; is this a cvkeras run directory?")
    fix = "the run is damaged -- restore split.json or re-run `cvkeras finetune`"
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{p}: not valid JSON ({first_line(exc)}); {fix}") from None
    if not isinstance(doc, dict):
        raise RunDirError(f"{p}: expected a JSON object, found {type(doc).__name__}; {fix}")
    classes = doc.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise RunDirError(f"{p}: field 'classes' must be a list of names; {fix}")
    if doc.get("source") == "tfds":
        if not isinstance(doc.get("tfds"), dict) or not isinstance(doc["tfds"].get("splits"), dict):
            raise RunDirError(f"{p}: field 'tfds' must describe the TFDS splits; {fix}")
        return doc
    if doc.get("source") == "tfrecord" and not isinstance(doc.get("tfrecord"), dict):
        raise RunDirError(f"{p}: field 'tfrecord' must list the shards; {fix}")
    n = len(classes) if classes is not None else None
    for name in ("train", "val", "test"):
        items = doc.get(name, [])
        if not isinstance(items, list):
            raise RunDirError(f"{p}: field {quote(name)} must be a list of [path, label]; {fix}")
        for i, item in enumerate(items):
            ok = (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                  and isinstance(item[1], int) and not isinstance(item[1], bool) and item[1] >= 0
                  and (n is None or item[1] < n))
            if not ok:
                raise RunDirError(f"{p}: {name}[{i}] must be [path, label index], not {quote(item, 80)}; {fix}")
    return doc

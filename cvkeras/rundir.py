"""The run directory: the contract between ``cvkeras finetune``, ``evaluate`` and ``export``.

A run directory holds (all written atomically)::

    config.yaml          the whole resolved configuration (``--config`` reads it back)
    labels.txt           one class name per line, index = line number
    split.json           {"source": ..., "root": ..., "seed": ..., "train": [[path, label], ...],
                          "val": [...], "test": [...]}  (paths absolute; tfds runs keep "tfds" instead)
    history.csv          one row per epoch, both stages
    best.keras           the best float32 model (input: RGB float32 0..255 NHWC, output: probabilities)
    checkpoints/         last.keras + state.json, for ``--resume``
    metrics.json         accuracy, top-k, loss, per-class P/R/F1/support, confusion matrix
    curves.png, confusion_matrix.png, skipped.txt (when files were skipped)

From ``config.yaml``, ``split.json`` and ``labels.txt`` alone a reader finds the model, its input size
and the images to calibrate on. This module only reads and writes files: no TensorFlow.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
LABELS = "labels.txt"
SPLIT = "split.json"
HISTORY = "history.csv"
BEST = "best.keras"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
CURVES = "curves.png"
CONFUSION = "confusion_matrix.png"
SKIPPED = "skipped.txt"


class RunDirError(ValueError):
    """A run directory that is missing or incomplete; the message names the file and the fix."""


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[str], None]) -> Path:
    """Write ``data`` (bytes, text, or a function that writes to a given temp path) then rename.

    The temp file lives in the destination folder so the rename is atomic; on failure it is removed
    and the destination is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get the usual permissions
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as fh:
                fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_labels(run: str | os.PathLike, labels: list[str]) -> Path:
    return atomic_write(Path(run) / LABELS, "".join(f"{name}\n" for name in labels))


def read_labels(path: str | os.PathLike) -> list[str]:
    """Read ``labels.txt`` (a file, or a directory that holds one)."""
    p = Path(path)
    if p.is_dir():
        p = p / LABELS
    if not p.is_file():
        raise RunDirError(f"{p}: labels file not found; is this a cvkeras run directory?")
    return [line.rstrip("\n") for line in p.read_text().splitlines() if line.strip()]


def write_config(run: str | os.PathLike, config: dict[str, Any]) -> Path:
    import yaml

    return atomic_write(Path(run) / CONFIG, yaml.safe_dump(config, sort_keys=False))


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``config.yaml`` (a file, or a run directory that holds one)."""
    import yaml

    p = Path(path)
    if p.is_dir():
        p = p / CONFIG
    if not p.is_file():
        raise RunDirError(f"{p}: config not found; pass a run directory made by `cvkeras finetune`")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise RunDirError(f"{p}: not valid YAML ({str(exc).splitlines()[0]}); fix or regenerate it") from None
    if not isinstance(cfg, dict):
        raise RunDirError(f"{p}: expected a mapping of settings; fix or regenerate it")
    return cfg


def read_split(run: str | os.PathLike) -> dict[str, Any]:
    p = Path(run) / SPLIT
    if not p.is_file():
        raise RunDirError(f"{p}: split not found; is this a cvkeras run directory?")
    return json.loads(p.read_text())


def check_run(run: str | os.PathLike, need_model: bool = True) -> Path:
    """Return the run directory as a Path, or raise RunDirError naming what is missing."""
    p = Path(run)
    if not p.is_dir():
        raise RunDirError(f"{p}: run directory not found; pass the --output of `cvkeras finetune`")
    for name in (CONFIG, LABELS, SPLIT) + ((BEST,) if need_model else ()):
        if not (p / name).is_file():
            raise RunDirError(f"{p / name}: missing; the run did not finish -- "
                              "resume it with `cvkeras finetune --resume`")
    return p

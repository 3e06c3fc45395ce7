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
    .cvkeras-run         marker + manifest: every file cvkeras wrote here (``--force`` removes only those)
    .cvkeras-lock        the OS lock one writer holds (pid and host of the holder inside)

From ``config.yaml``, ``split.json`` and ``labels.txt`` alone a reader finds the model, its input size
and the images to calibrate on. This module only reads and writes files: no TensorFlow.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import socket
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
MARKER = ".cvkeras-run"
LOCK = ".cvkeras-lock"
MAX_IMAGE_SIDE = 4096  # a larger square input is a typo, not a model (and would exhaust memory)


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
    _record(path)
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
    try:
        labels = [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise RunDirError(f"{p}: not UTF-8 text; restore labels.txt from the run") from None
    if not labels:
        raise RunDirError(f"{p}: no class names; restore labels.txt from the run")
    if len(set(labels)) != len(labels):
        dup = next(x for x in labels if labels.count(x) > 1)
        raise RunDirError(f"{p}: class {dup!r} is listed twice; restore labels.txt from the run")
    return labels


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
    """Read ``split.json`` and check its schema; a damaged file is a RunDirError naming the field."""
    p = Path(run) / SPLIT
    if not p.is_file():
        raise RunDirError(f"{p}: split not found; is this a cvkeras run directory?")
    fix = "the run is damaged -- restore split.json or re-run `cvkeras finetune`"
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{p}: not valid JSON ({str(exc).splitlines()[0]}); {fix}") from None
    if not isinstance(doc, dict):
        raise RunDirError(f"{p}: expected a JSON object, found {type(doc).__name__}; {fix}")
    classes = doc.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise RunDirError(f"{p}: field 'classes' must be a list of names; {fix}")
    if doc.get("source") == "tfds":
        if not isinstance(doc.get("tfds"), dict) or not isinstance(doc["tfds"].get("splits"), dict):
            raise RunDirError(f"{p}: field 'tfds' must describe the TFDS splits; {fix}")
        return doc
    n = len(classes) if classes is not None else None
    for name in ("train", "val", "test"):
        items = doc.get(name, [])
        if not isinstance(items, list):
            raise RunDirError(f"{p}: field {name!r} must be a list of [path, label]; {fix}")
        for i, item in enumerate(items):
            ok = (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                  and isinstance(item[1], int) and not isinstance(item[1], bool) and item[1] >= 0
                  and (n is None or item[1] < n))
            if not ok:
                raise RunDirError(f"{p}: {name}[{i}] must be [path, label index], not {item!r:.80}; {fix}")
    return doc


def read_run_config(run: str | os.PathLike) -> dict[str, Any]:
    """A run's ``config.yaml`` with the fields readers rely on checked (model.name, model.image_size, data)."""
    p = Path(run) / CONFIG
    cfg = read_config(p)
    fix = "fix it or restore config.yaml from the run"
    model = cfg.get("model")
    if not isinstance(model, dict):
        raise RunDirError(f"{p}: field 'model' must be a mapping (name, image_size, ...), not {model!r:.60}; {fix}")
    if not isinstance(model.get("name"), str):
        raise RunDirError(f"{p}: field model.name must be a model name; {fix}")
    size = model.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and 1 <= v <= MAX_IMAGE_SIDE
                                                            for v in size)):
        raise RunDirError(f"{p}: field model.image_size must be [height, width] in 1..{MAX_IMAGE_SIDE}, "
                          f"not {size!r:.60}; {fix}")
    for section in ("data", "train"):
        if not isinstance(cfg.get(section, {}), dict):
            raise RunDirError(f"{p}: field {section!r} must be a mapping; {fix}")
    seed = cfg.get("data", {}).get("seed", 0)
    if type(seed) is not int:
        raise RunDirError(f"{p}: field data.seed must be an integer, not {seed!r:.40}; {fix}")
    return cfg


def check_labels(run: str | os.PathLike, labels: list[str], outputs: int) -> None:
    """Raise RunDirError unless ``labels.txt`` matches the model's outputs and the recorded split's classes."""
    p = Path(run) / LABELS
    if outputs != len(labels):
        raise RunDirError(f"{p}: lists {len(labels)} classes but the model outputs {outputs}; "
                          "restore the run's labels.txt (nothing was written)")
    classes = read_split(run).get("classes")
    if classes is not None and classes != labels:
        raise RunDirError(f"{p}: class names differ from split.json's {classes}; "
                          "restore the run's labels.txt (nothing was written)")


def check_run(run: str | os.PathLike, need_model: bool = True) -> Path:
    """Return the run directory as a Path, or raise RunDirError naming what is missing."""
    p = Path(run)
    if not p.is_dir():
        raise RunDirError(f"{p}: run directory not found; pass the --output of `cvkeras finetune`")
    for name in (CONFIG, LABELS, SPLIT) + ((BEST,) if need_model else ()):
        if not (p / name).is_file():
            raise RunDirError(f"{p / name}: missing; the run did not finish -- "
                              "resume it with `cvkeras finetune --resume`")
    read_run_config(p)  # every file a reader relies on is checked before any work starts
    labels = read_labels(p)
    classes = read_split(p).get("classes")
    if classes is not None and classes != labels:
        raise RunDirError(f"{p / LABELS}: class names differ from split.json's {classes}; "
                          "restore the run's labels.txt")
    return p


# --- ownership: the marker/manifest that lets --force remove only what cvkeras wrote ----------------------

class RunLockedError(RunDirError):
    """Another cvkeras process holds the run directory's lock."""


_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp.*$")  # atomic_write's mkstemp names
_OWN_DIRS = (CHECKPOINTS, "export")  # folders cvkeras makes (they may be left empty by a failed write)


def _write_marker(run: Path, files: list[str]) -> None:
    doc = {"cvkeras_run": 1, "cvkeras": __import__("cvkeras").__version__, "files": sorted(set(files))}
    tmp = run / f"{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, run / MARKER)


def read_manifest(run: str | os.PathLike) -> list[str]:
    """The run-relative paths cvkeras recorded writing into ``run``; RunDirError without a valid marker."""
    p = Path(run) / MARKER
    if not p.is_file():
        raise RunDirError(f"{run}: not a cvkeras run directory (no {MARKER} marker)")
    try:
        doc = json.loads(p.read_text())
        files = doc["files"]
        if doc.get("cvkeras_run") != 1 or not all(isinstance(f, str) for f in files):
            raise ValueError("bad manifest")
    except (ValueError, KeyError, TypeError):
        raise RunDirError(f"{p}: damaged marker; cvkeras cannot tell which files it wrote here") from None
    return [f for f in files if f and not os.path.isabs(f) and ".." not in Path(f).parts]


def mark_run(run: str | os.PathLike) -> None:
    """Mark ``run`` as a cvkeras run directory (an empty manifest) unless it already is one."""
    run = Path(run)
    if not (run / MARKER).is_file():
        _write_marker(run, [])


def _record(path: Path) -> None:
    """Add ``path`` to the manifest of the run directory that holds it (up to two folders up), if any."""
    for run in (path.parent, path.parent.parent, path.parent.parent.parent):
        if (run / MARKER).is_file():
            rel = path.relative_to(run).as_posix()
            try:
                files = read_manifest(run)
            except RunDirError:
                return  # a damaged marker is never trusted (nor rewritten): --force will refuse this folder
            if rel not in files:
                _write_marker(run, files + [rel])
            return


def foreign_entries(run: str | os.PathLike) -> list[str]:
    """Run-relative paths inside ``run`` that cvkeras did not write (per the manifest); [] when all are ours."""
    run = Path(run)
    ours = set(read_manifest(run)) | {MARKER, LOCK}
    own_dirs = {str(Path(f).parent.as_posix()) for f in ours} | set(_OWN_DIRS)
    foreign = []
    for root, dirs, files in os.walk(run):
        base = Path(root).relative_to(run)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = (base / name).as_posix()
            full = os.path.join(root, name)
            temp = _TEMP.match(name)
            ours_temp = temp and (base / temp.group("name")).as_posix() in ours | {MARKER}
            if os.path.islink(full) or not (rel in ours or ours_temp or name.startswith(f"{MARKER}.")):
                foreign.append(rel)
        for d in dirs:
            rel = (base / d).as_posix()
            if not os.path.islink(os.path.join(root, d)) and rel not in own_dirs:
                if not any(f.startswith(rel + "/") for f in ours):
                    foreign.append(rel + "/")
    return sorted(foreign)


def clear_run(run: str | os.PathLike) -> int:
    """Remove every file cvkeras recorded writing into ``run`` (never anything else); returns how many.

    Raises RunDirError, removing nothing, when ``run`` holds anything cvkeras did not write.
    """
    run = Path(run)
    foreign = foreign_entries(run)
    if foreign:
        raise RunDirError(f"{run}: holds files cvkeras did not write (e.g. {foreign[0]}); refusing to "
                          "overwrite it -- move them or pick another --output")
    removed = 0
    for root, dirs, files in os.walk(run, topdown=False):
        for name in files:
            if name not in (MARKER, LOCK):
                os.unlink(os.path.join(root, name))
                removed += 1
        for d in dirs:
            full = os.path.join(root, d)
            if not os.listdir(full):
                os.rmdir(full)
    _write_marker(run, [])
    return removed


# --- one writer per run directory -------------------------------------------------------------------------

_HELD: dict[str, list[int]] = {}  # realpath -> [fd, depth]: the lock is re-entrant within a process


class run_lock:  # noqa: N801 - used as a context manager, like open()
    """Hold the run directory's OS file lock (``.cvkeras-lock``, ``flock``) for a whole command.

    A second cvkeras process on the same run gets RunLockedError naming the holder's pid and host. A
    read-only run directory cannot be written by anyone, so it is not locked. The lock dies with the
    process (no stale locks after a crash or SIGKILL).
    """

    def __init__(self, run: str | os.PathLike, command: str = "") -> None:
        self.run = Path(run)
        self.command = command
        self.key = os.path.realpath(run)

    def __enter__(self) -> run_lock:
        held = _HELD.get(self.key)
        if held:
            held[1] += 1
            return self
        try:
            import fcntl
        except ImportError:  # not POSIX: no OS lock available
            return self
        try:
            fd = os.open(self.run / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and self.run.is_dir():
                return self
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"{self.run}: in use by {holder}; wait for it to finish or pick another "
                                 "--output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} (cvkeras {self.command})\n".encode(), 0)
        _HELD[self.key] = [fd, 1]
        return self

    def __exit__(self, *exc: object) -> None:
        held = _HELD.get(self.key)
        if not held:
            return
        held[1] -= 1
        if held[1] == 0:
            import fcntl

            del _HELD[self.key]
            os.ftruncate(held[0], 0)
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])


def os_error_line(exc: OSError, what: str = "") -> str:
    """One line for a file-system failure: the file, the reason, and the fix for a read-only folder."""
    where = exc.filename or what
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"{where}: cannot write here ({exc.strerror}); the folder is read-only -- "
                "pass --output to a writable folder (or copy the run)")
    if exc.errno == errno.ENOSPC:
        return f"{where}: no space left on the device; free some space and retry"
    return f"{where}: {exc.strerror or exc}"


def is_finite_number(value: Any) -> bool:
    """True for an int or float that is neither NaN nor infinite (bools are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def printable_path(path: str) -> str:
    """A path safe to print and to write as UTF-8 (undecodable bytes of a file name shown as \\xNN)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")



"""Files cvkeras writes, and the two rules that keep them safe: every write is atomic and recorded in its
run directory's manifest (so ``--force`` removes only what cvkeras wrote), and one process writes a run
at a time (an OS lock). Standard library only; :mod:`cvkeras.run.rundir` names the files and reads them.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvkeras.serving.errors import RunDirError

MARKER = ".cvkeras-run"
LOCK = ".cvkeras-lock"
CHECKPOINTS = "checkpoints"
EXPORT = "export"
CACHE = "cache"  # the decoded-image file cache of --cache auto: scratch, always cvkeras's own


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[str], None]) -> Path:
    """Write ``data`` (bytes, text, or a function that writes to a given temp path) then rename.

    The temp file lives in the destination folder so the rename is atomic; on failure it is removed
    and the destination is untouched. An OSError while writing (a full disk: ``write()`` names no file)
    is raised naming ``path``, so every command's one-line error says which file could not be written.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get the usual permissions
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as fh:
                fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        named = None if not isinstance(exc, OSError) or exc.filename is None else os.fspath(exc.filename)
        if isinstance(exc, OSError) and (named is None or os.path.basename(named).startswith(f".{path.name}.")):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc  # the file, not its temp name
        raise
    _record(path)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# --- ownership: the marker/manifest that lets --force remove only what cvkeras wrote ----------------------

class RunLockedError(RunDirError):
    """Another cvkeras process holds the run directory's lock."""


_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp.*$")  # atomic_write's mkstemp names
_OWN_DIRS = (CHECKPOINTS, EXPORT, CACHE)  # folders cvkeras makes (they may be left empty by a failed write)


def _write_marker(run: Path, files: list[str], stats: dict[str, list[int]] | None = None) -> None:
    files = sorted(set(files))
    doc: dict[str, Any] = {"cvkeras_run": 1, "cvkeras": __import__("cvkeras").__version__, "files": files}
    if stats:  # size and mtime of each file as cvkeras left it: a file replaced since is no longer ours
        doc["stat"] = {f: stats[f] for f in files if f in stats}
    tmp = run / f"{MARKER}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, run / MARKER)
    except OSError as exc:  # a full disk: the old marker stays whole; the error names it
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(run / MARKER)) from exc


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


def read_stats(run: str | os.PathLike) -> dict[str, list[int]]:
    """Size and mtime (ns) of each manifest file as cvkeras wrote it ({} for a marker written before them)."""
    try:
        stats = json.loads((Path(run) / MARKER).read_text()).get("stat") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in stats.items() if isinstance(k, str) and isinstance(v, list) and len(v) == 2}


def _signature(path: str | os.PathLike) -> list[int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def changed_since_written(run: str | os.PathLike, rel: str, stats: dict[str, list[int]] | None = None) -> bool:
    """Whether the manifest file ``rel`` was replaced or edited since cvkeras wrote it (size or mtime differ).

    A name in the manifest proves only that cvkeras once wrote there; the recorded signature proves that
    the file now there is still that one. Files recorded before signatures existed count as unchanged.
    """
    stats = read_stats(run) if stats is None else stats
    recorded = stats.get(rel)
    return recorded is not None and _signature(Path(run) / rel) != recorded


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
            stats = read_stats(run)
            signature = _signature(path)
            if signature is not None:
                stats[rel] = signature
            _write_marker(run, files + [rel], stats)
            return


def foreign_entries(run: str | os.PathLike) -> list[str]:
    """Run-relative paths inside ``run`` that cvkeras did not write (per the manifest); [] when all are ours."""
    run = Path(run)
    stats = read_stats(run)
    ours = {f for f in read_manifest(run) if not changed_since_written(run, f, stats)} | {MARKER, LOCK}
    own_dirs = {str(Path(f).parent.as_posix()) for f in ours} | set(_OWN_DIRS)
    foreign = []
    for root, dirs, files in os.walk(run):
        base = Path(root).relative_to(run)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = (base / name).as_posix()
            full = os.path.join(root, name)
            temp = _TEMP.match(name)
            ours_temp = temp and (base / temp.group("name")).as_posix() in ours | {MARKER}
            scratch = base.parts[:1] == (CACHE,)
            if os.path.islink(full) or not (rel in ours or ours_temp or scratch or name.startswith(f"{MARKER}.")):
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
    where = printable_path(os.fspath(exc.filename)) if exc.filename else (what or "(file not named by the OS)")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"{where}: cannot write here ({exc.strerror}); the folder is read-only -- "
                "pass --output to a writable folder (or copy the run)")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}: no space left on the device; free some space and retry (files written before are kept)"
    return f"{where}: {exc.strerror or exc}"


def printable_path(path: str) -> str:
    """A path safe to print and to write as UTF-8 (undecodable bytes of a file name shown as \\xNN)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")




def skipped_lines(items: list[tuple[str, str]]) -> str:
    """``skipped.txt``'s lines for (path, reason) pairs: printable path, a tab, the reason."""
    return "".join(f"{printable_path(p)}\t{why}\n" for p, why in items)

"""The export folder holds one export: the previous export's model files go, failed artifacts are marked.

A re-export first removes the model files (and ``export_report.json``) of the previous export -- only the
files the run's manifest (``.cvkeras-run``) proves cvkeras wrote -- then writes its own. A model file
cvkeras cannot prove it wrote is left in place and listed as ``unverified_files`` in the report. An
artifact that fails its check is kept as ``<stem>.FAILED<suffix>`` with ``extra.verification`` in its
metadata, a name no device loads by default (``serving`` warns or refuses).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cvkeras.export.verify import ArtifactResult
from cvkeras.run.files import MARKER, atomic_write, changed_since_written, mark_run, read_manifest
from cvkeras.serving.errors import RunDirError
from cvkeras.serving.metadata import failed_name, sidecar_path

REPORT_FILE = "export_report.json"


def is_model_file(path: Path) -> bool:
    """A file a device could load as a model: ``*.onnx``, ``*.tflite`` or a TFLite metadata sidecar."""
    return path.is_file() and (path.suffix in (".onnx", ".tflite") or path.name.endswith(".tflite.json"))


def _manifest_of(path: Path) -> tuple[Path, list[str]] | None:
    """The marked run folder that records files written at ``path`` and its manifest (as ``runfiles`` looks)."""
    for folder in (path.parent, path.parent.parent, path.parent.parent.parent):
        if (folder / MARKER).is_file():
            try:
                return folder, read_manifest(folder)
            except RunDirError:
                return None  # a damaged marker proves nothing
    return None


def written_by_cvkeras(path: str | os.PathLike) -> bool:
    """True when the manifest of the run folder holding ``path`` records that cvkeras wrote it."""
    p = Path(path)
    found = _manifest_of(p)
    if found is None:
        return False
    rel = p.relative_to(found[0]).as_posix()
    return rel in found[1] and not changed_since_written(found[0], rel)


def prepare_output(out_dir: Path) -> None:
    """Create the export folder; one outside any marked run, new or empty, gets its own marker so that
    the next export can prove which files it may replace."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    if _manifest_of(out_dir / REPORT_FILE) is None:
        mark_run(out_dir)


def remove_previous_export(out_dir: Path) -> list[str]:
    """Remove the model files (and ``export_report.json``) of an earlier export from ``out_dir``: only
    those the run's manifest proves cvkeras wrote. Returns their names. Files this export makes are
    written again; a file it does not make (another precision, a failed mark) is gone, so no model in
    the folder is missing from the new report."""
    removed = []
    for f in sorted(out_dir.iterdir()):
        if (is_model_file(f) or f.name == REPORT_FILE) and written_by_cvkeras(f):
            f.unlink()
            removed.append(f.name)
    return removed


def refuse_overwrites(out_dir: Path, names: Sequence[str]) -> None:
    """Raise ExportError, before anything is written, when a file this export writes (``names``, TFLite
    sidecars included) already exists in ``out_dir`` and cvkeras cannot prove it wrote it: replacing it
    would lose the user's file (e.g. ``-o`` pointed at a folder of their own)."""
    from cvkeras.export.errors import ExportError

    for name in names:
        for path in (out_dir / name, *([sidecar_path(out_dir / name)] if name.endswith(".tflite") else [])):
            if (path.exists() or path.is_symlink()) and not written_by_cvkeras(path):
                raise ExportError(f"{path}: exists and cvkeras cannot prove it wrote it; move it away or pick "
                                  "another --output (export never overwrites a file it did not write)")


def unverified_files(out_dir: Path, made: Sequence[str]) -> list[str]:
    """Model files in ``out_dir`` that are not this export's (``made``, sidecars included) and that cvkeras
    cannot prove it wrote: export leaves them in place and lists them, unverified."""
    ours = set(made) | {sidecar_path(m).name for m in made if m.endswith(".tflite")}
    return [f.name for f in sorted(out_dir.iterdir()) if is_model_file(f) and f.name not in ours]


def mark_failed(res: ArtifactResult) -> None:
    """Keep a failed artifact for inspection under a name no device loads by default
    (``model_int8.FAILED.onnx``), its metadata saying it failed and why (``serving`` warns or refuses)."""
    from cvkeras.export import metadata as meta_io
    from cvkeras.serving.metadata import read_metadata

    old = Path(res.path)
    new = failed_name(old)
    if new.exists():  # left by remove_previous_export: not provably cvkeras's, so never overwritten
        old.unlink()
        sidecar_path(old).unlink(missing_ok=True)
        res.error = f"{res.error or res.name + ': ' + res.status} (not kept: {new.name} exists and is not cvkeras's)"
        return
    mark = {"status": "failed", "reason": res.error or res.status}
    if old.suffix == ".onnx":
        from cvkeras.export.onnx import convert as to_onnx

        proto = to_onnx.load(old)
        meta = meta_io.onnx_metadata(proto, old)
        meta.extra["verification"] = mark
        meta_io.embed_onnx(proto, meta)
        atomic_write(new, lambda tmp: to_onnx.save(proto, tmp))
    else:
        meta = read_metadata(old)
        meta.extra["verification"] = mark
        atomic_write(new, old.read_bytes())
        meta_io.write_sidecar(new, meta)
        sidecar_path(old).unlink(missing_ok=True)
    old.unlink()
    res.path = str(new)
    res.error = f"{res.error or res.name + ': ' + res.status} (kept as {new.name}, marked failed)"

"""The one image lister: which files under a folder are images, for training, validation and prediction.

Rules (the same everywhere): recursive, sorted; hidden files and folders (``.name``) and archive litter
(``__MACOSX``) are skipped; a file counts when its extension is one of ``IMAGE_EXTENSIONS``. Files
training cannot use -- a name that is not UTF-8, an image format no decoder here reads -- are reported
to ``skipped`` as ``(path, reason)`` rather than silently left out; the device side keeps non-UTF-8 names.

Device side: standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cvkeras.serving.preprocess import IMAGE_EXTENSIONS, is_image_file

#: Image files no decoder here reads: listed as skipped (with the reason) rather than silently ignored.
OTHER_IMAGE_EXTENSIONS = (".webp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jp2", ".jxl")
IGNORED_DIRS = ("__MACOSX",)  # archive tool litter, never a class nor an image folder

__all__ = ["IGNORED_DIRS", "OTHER_IMAGE_EXTENSIONS", "class_folders", "expand_paths", "is_hidden", "is_utf8",
           "list_images"]


def is_utf8(name: str) -> bool:
    """False for a file name with undecodable bytes (surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_hidden(name: str) -> bool:
    """A hidden entry (``.name``) or archive litter (``__MACOSX``): never data."""
    return name.startswith(".") or name in IGNORED_DIRS


def class_folders(folder: str | os.PathLike, skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Class sub-folders of ``folder``, sorted: no hidden or ``__MACOSX`` folders, no symlink back into the
    data (a loop), no name that is not UTF-8 (those two go to ``skipped``)."""
    folder = Path(folder)
    out = []
    top = folder.resolve()
    for d in folder.iterdir():
        if not d.is_dir() or is_hidden(d.name):
            continue
        target = d.resolve()
        if d.is_symlink() and (target == top or top.is_relative_to(target)):
            if skipped is not None:
                skipped.append((str(d), "symlink to the data folder itself (a loop); not a class"))
            continue
        if not is_utf8(d.name):
            if skipped is not None:
                skipped.append((str(d), "folder name is not valid UTF-8; rename it to use it as a class"))
            continue
        out.append(d)
    return sorted(out)


def list_images(folder: str | os.PathLike, skipped: list[tuple[str, str]] | None = None, *,
                utf8_only: bool = True, other_formats: bool = False) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), hidden entries skipped; see the module rules.

    ``utf8_only=False`` keeps file names that are not UTF-8: the device side (Pillow) reads them, only
    training's string tensors cannot, so predict and validate must not drop them. ``other_formats=True``
    also lists ``OTHER_IMAGE_EXTENSIONS`` (WebP, TIFF, ...): predict and explain decode with Pillow, so a
    folder must not silently leave out a file they classify when it is named (one Pillow cannot read becomes
    that file's error entry).
    """
    folder = Path(folder)
    found = []
    for p in sorted(folder.rglob("*")):
        if any(is_hidden(part) for part in p.relative_to(folder).parts):
            continue
        if not p.is_file():
            if p.is_symlink() and not p.exists() and skipped is not None:
                skipped.append((str(p), f"broken symlink (its target {os.readlink(p)} does not exist)"))
            continue
        if is_image_file(p) or (other_formats and p.suffix.lower() in OTHER_IMAGE_EXTENSIONS):
            if not utf8_only or is_utf8(str(p)):
                found.append(p)
            elif skipped is not None:
                skipped.append((str(p), "file name is not valid UTF-8; rename it"))
        elif p.suffix.lower() in OTHER_IMAGE_EXTENSIONS and skipped is not None:
            why = f"{p.suffix.lower()} images are not decoded by training; convert it to PNG or JPEG"
            skipped.append((str(p), why))
    return found


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """``(path, error)`` per input in order: files as given, folders expanded by :func:`list_images`; a
    missing path or an image-less folder becomes one entry with an error."""
    entries: list[tuple[str, str | None]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [str(f) for f in list_images(p, utf8_only=False, other_formats=True)]
            if not found:
                entries.append((str(p), f"{p}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})"))
            entries += [(f, None) for f in found]
        elif p.exists():
            entries.append((str(p), None))
        else:
            entries.append((str(p), f"{p}: file not found"))
    return entries

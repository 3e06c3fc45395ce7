"""Byte-identical files, found without reading most of them: finetune's start-up copy check at scale.

Files are grouped by size (one ``stat`` each); only files that share a size with another are read, first
their first and last :data:`EDGE` bytes, then -- for those that still match -- in full (sha256), so a
coincidence of size or of edges is never reported. Camera photos differ in size almost always, so a data
set without copies reads a few files' edges at most. Written here (not a library) because the cost that
matters is what is *not* read; hashing itself is :mod:`hashlib`.

Example:
    >>> byte_copies(["a.jpg", "b.jpg", "c.jpg"])   # [(0, 2)]: c.jpg holds a.jpg's bytes
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

#: Bytes read from each end of a same-size file before any file is read in full: one page. Different photos
#: differ in their last bytes (entropy-coded data) almost always, and generated or camera sets of 50 000 files
#: share sizes by the thousand, so this read is paid by most files (64 KiB here read several GB at 50 000).
EDGE = 4 << 10


def edges_digest(path: str) -> str:
    """sha256 of a file's first and last :data:`EDGE` bytes (all of it when it is smaller)."""
    with open(path, "rb") as fh:
        head = fh.read(EDGE)
        size = os.fstat(fh.fileno()).st_size
        if size > 2 * EDGE:
            fh.seek(size - EDGE)
        tail = fh.read(EDGE)
    return hashlib.sha256(head + b"\0" + tail).hexdigest()


def full_digest(path: str) -> str:
    """sha256 of a whole file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def byte_copies(paths: Sequence[str], sides: Sequence[bool] | None = None, workers: int = 4) -> list[tuple[int, int]]:
    """Index pairs ``(first, other)`` of files with the same bytes: each copy is paired with the first file
    (in ``paths`` order) that it copies. With ``sides`` (one flag per path, e.g. "is a training file"), only
    copies that span both sides are looked for, so only size groups holding both sides are read."""
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        by_size[os.stat(p).st_size].append(i)

    def refine(groups: list[list[int]], digest: Callable[[str], str]) -> list[list[int]]:
        todo = [i for g in groups for i in g]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            keys = dict(zip(todo, pool.map(lambda i: digest(paths[i]), todo), strict=True))
        out = []
        for g in groups:
            split: dict[str, list[int]] = defaultdict(list)
            for i in g:
                split[keys[i]].append(i)
            out += [s for s in split.values() if wanted(s)]
        return out

    def wanted(group: list[int]) -> bool:
        return len(group) > 1 and (sides is None or len({bool(sides[i]) for i in group}) == 2)

    groups = [g for g in by_size.values() if wanted(g)]
    groups = refine(refine(groups, edges_digest), full_digest) if groups else []
    return sorted((g[0], i) for g in groups for i in g[1:])

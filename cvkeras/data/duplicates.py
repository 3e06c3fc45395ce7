"""Duplicate photos: exact copies (same bytes or same pixels) and near copies (re-sized, re-encoded, lightly
cropped or brightened), grouped, with the splits and labels each group spans.

Near copies are found by a perceptual hash (DCT pHash, 64 bits, of a 32x32 grey thumbnail): global
brightness scales every DCT coefficient alike and the bits compare each one to their median, so it
survives brightness changes, re-encoding and re-scaling; a few bits flip under a light crop. The pHash sees
grey structure only, so a pair must also have correlated colour layouts (8x8 RGB block means). Decoding
uses the device decoder of ``cvkeras.serving.preprocess`` at 32x32 (JPEGs DCT-scaled: a fraction of a full
decode). ``cvkeras check`` with pretrained weights also vetoes pairs whose backbone features disagree;
``finetune`` uses the hashes alone (:func:`cross_split_leaks`), about a second per 1 000 photos. What was
compared and measured: docs/check.md.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A near copy: pHash within PHASH_MAX_DISTANCE bits (of 64) AND colour layouts correlated at LAYOUT_MIN or
# more; ``check`` with pretrained features also needs a centred feature cosine of COSINE_MIN (a veto: photos
# of different things). Measured on flowers with 50 planted copies (docs/check.md).
PHASH_MAX_DISTANCE = 12
LAYOUT_MIN = 0.90
COSINE_MIN = 0.5
#: finetune decodes thumbnails to look for near copies up to this many images (or with --dedupe); above it,
#: its start-up check compares bytes only (:mod:`cvkeras.data.same_bytes`).
NEAR_CHECK_MAX = 1_000
HASH_SIZE = 32  # grey thumbnail side the DCT is taken over
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def phash_array(images: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hashes (uint64) of ``HASH_SIZE`` x ``HASH_SIZE`` RGB (or grey) thumbnails."""
    from scipy.fft import dctn

    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    grey = x @ _LUMA if x.shape[-1] == 3 else x[..., 0]
    low = dctn(grey, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(grey), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).ravel()


def colour_layout(images: np.ndarray) -> np.ndarray:
    """8x8 RGB block means of ``HASH_SIZE`` thumbnails, centred and L2-normed (float32, 192 per image): their
    dot product is a correlation, blind to brightness and contrast, that tells a yellow photo from a red
    one with the same grey structure (which the pHash alone confuses)."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    k = HASH_SIZE // 8
    blocks = x.reshape(len(x), 8, k, 8, k, x.shape[-1]).mean(axis=(2, 4)).reshape(len(x), -1)
    blocks -= blocks.mean(axis=1, keepdims=True)
    return blocks / np.maximum(np.linalg.norm(blocks, axis=1, keepdims=True), 1e-6)


@dataclass
class Signature:
    """What the duplicate search knows of one file: byte digest, pHash, size in px (width, height) and colour
    layout (:func:`colour_layout`)."""

    sha256: str
    phash: int
    width: int
    height: int
    layout: np.ndarray


def file_signature(path: str) -> Signature:
    """Digest the bytes, read the size from the header and hash a 32x32 decode of one image file."""
    from PIL import Image

    from cvkeras.serving.preprocess import ImageError, load_resized

    with open(path, "rb") as f:
        data = f.read()
    with Image.open(path) as img:
        width, height = img.size
    try:
        thumb = load_resized(data, (HASH_SIZE, HASH_SIZE))
    except ImageError:  # data damaged past its header (the readability check reads headers): it copies nothing
        blank = colour_layout(np.zeros((HASH_SIZE, HASH_SIZE, 3), np.uint8))[0] * 0  # a zero layout matches none
        return Signature(hashlib.sha256(data).hexdigest(), 0, width, height, blank)
    return Signature(hashlib.sha256(data).hexdigest(), int(phash_array(thumb)[0]), width, height,
                     colour_layout(thumb)[0])


def file_signatures(paths: Sequence[str], workers: int = 4) -> list[Signature]:
    """:func:`file_signature` of every path, in threads (Pillow decodes without the GIL); order kept."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(file_signature, paths))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between every hash of ``a`` and every hash of ``b`` (len(a) x len(b), uint8)."""
    return np.bitwise_count(np.asarray(a, np.uint64)[:, None] ^ np.asarray(b, np.uint64)[None, :])


def near_pairs(hashes: np.ndarray, layouts: np.ndarray, features: np.ndarray | None = None,
               rows: np.ndarray | None = None, cols: np.ndarray | None = None,
               chunk: int = 1024) -> list[tuple[int, int]]:
    """Index pairs ``i < j`` that are near copies: pHash within :data:`PHASH_MAX_DISTANCE` and colour layout
    correlation of :data:`LAYOUT_MIN`, and (with centred, L2-normed ``features``) a cosine of
    :data:`COSINE_MIN`. ``rows``/``cols`` restrict the search to pairs between two index sets (train x val)."""
    n = len(hashes)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    cols = np.arange(n) if cols is None else np.asarray(cols)
    out: set[tuple[int, int]] = set()
    for start in range(0, len(rows), chunk):
        r = rows[start:start + chunk]
        hit = (hamming(hashes[r], hashes[cols]) <= PHASH_MAX_DISTANCE) & (layouts[r] @ layouts[cols].T >= LAYOUT_MIN)
        if features is not None:
            hit &= features[r] @ features[cols].T >= COSINE_MIN
        for i, j in zip(*np.nonzero(hit), strict=True):
            a, b = int(r[i]), int(cols[j])
            if a != b:
                out.add((min(a, b), max(a, b)))
    return sorted(out)


def exact_pairs(sha: Sequence[str], hashes: np.ndarray, pixels: Callable[[int], str | None]) -> list[tuple[int, int]]:
    """Pairs with the same bytes, or the same pixels: ``pixels(i)`` (a digest of the full decode) is asked
    only of images whose pHash equals another's, so the full decode is paid for those candidates alone."""
    pairs: set[tuple[int, int]] = set()

    def link(keys: dict[int, Any]) -> None:
        first: dict[Any, int] = {}
        for i, key in keys.items():
            if key is not None:
                if key in first:
                    pairs.add((first[key], i))
                else:
                    first[key] = i

    link(dict(enumerate(sha)))
    counts = Counter(hashes.tolist())
    link({i: pixels(i) for i, h in enumerate(hashes.tolist()) if counts[h] > 1})
    return sorted(pairs)


def pixel_digest(path: str) -> str | None:
    """sha256 of a file's full decode (None when it cannot be decoded)."""
    from cvkeras.serving.preprocess import ImageError, load_image

    try:
        arr = load_image(path)
    except ImageError:
        return None
    return hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()


@dataclass
class Group:
    """One set of copies: member indices, whether all are exact copies, and the splits/labels they span."""

    members: list[int]
    kind: str  # "exact" or "near"
    splits: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    @property
    def cross_split(self) -> bool:
        return len(set(self.splits)) > 1

    @property
    def conflicting(self) -> bool:
        return len(set(self.labels)) > 1


def group_pairs(n: int, exact: list[tuple[int, int]], near: list[tuple[int, int]], splits: Sequence[str],
                labels: Sequence[int]) -> list[Group]:
    """Connected groups of the pairs; a group is ``exact`` when its exact pairs alone connect it."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    def components(pairs: list[tuple[int, int]]) -> np.ndarray:
        a = np.asarray([p[0] for p in pairs], dtype=np.int64)
        b = np.asarray([p[1] for p in pairs], dtype=np.int64)
        graph = coo_matrix((np.ones(len(pairs)), (a, b)), shape=(n, n))
        return connected_components(graph, directed=False)[1]

    if not exact and not near:
        return []
    exact_comp = components(exact)
    both = components(exact + near)
    groups = []
    for c in np.unique(both):
        members = np.flatnonzero(both == c).tolist()
        if len(members) < 2:
            continue
        kind = "exact" if len({int(exact_comp[m]) for m in members}) == 1 else "near"
        groups.append(Group(members, kind, [splits[m] for m in members], [int(labels[m]) for m in members]))
    groups.sort(key=lambda g: (not g.cross_split, not g.conflicting, g.kind != "exact", g.members[0]))
    return groups


def cross_split_leaks(split: Any, workers: int = 4, near: bool = True) -> tuple[list[Group], list[str]]:
    """Exact and near copies between the training split and val/test of a file-based ``DataSplit``:
    the groups (each holding a training image) and the item keys ``split:index`` (``split`` ``val`` or
    ``test``) of the held-out copies. Hashes and byte digests only: no model, no full decode. Without
    ``near``, byte copies only (:func:`cvkeras.data.same_bytes.byte_copies`: reads only same-size files)."""
    from cvkeras.data.same_bytes import byte_copies

    items = [(name, i, p, y) for name in ("train", "val", "test") for i, (p, y) in enumerate(getattr(split, name))]
    if not split.val and not split.test:
        return [], []
    names = [name for name, *_ in items]
    if near:
        sigs = file_signatures([p for _, _, p, _ in items], workers)
        hashes = np.asarray([s.phash for s in sigs], dtype=np.uint64)
        train = np.flatnonzero(np.asarray(names) == "train")
        held = np.flatnonzero(np.asarray(names) != "train")
        near_found = near_pairs(hashes, np.stack([s.layout for s in sigs]), rows=train, cols=held)
        exact = exact_pairs([s.sha256 for s in sigs], hashes, lambda i: pixel_digest(items[i][2]))
    else:
        near_found, exact = [], byte_copies([p for *_, p, _ in items], [n == "train" for n in names], workers)
    exact = [p for p in exact if (names[p[0]] == "train") != (names[p[1]] == "train")]
    groups = [g for g in group_pairs(len(items), exact, near_found, names, [y for *_, y in items]) if g.cross_split]
    drop = [f"{items[m][0]}:{items[m][1]}" for g in groups for m in g.members if names[m] != "train"]
    return groups, drop


#: The run directory's list of validation/test images that copy a training image (finetune writes it).
LEAKS = "duplicates.txt"


@dataclass
class Leaks:
    """finetune's cross-split copies: (held-out path, training path, kind, dropped by ``--dedupe``) rows."""

    rows: list[tuple[str, str, str, bool]]

    def write(self, run: Any) -> None:
        """``RUN/duplicates.txt``: one tab-separated line per held-out copy (read by report.html)."""
        from cvkeras.run.files import atomic_write, printable_path

        lines = [f"{printable_path(held)}\t{printable_path(train)}\t{kind}\t{'dropped' if dropped else 'kept'}\n"
                 for held, train, kind, dropped in self.rows]
        atomic_write(run / LEAKS, "".join(lines))


def finetune_leaks(split: Any, dedupe: bool) -> Leaks | None:
    """finetune's cheap check: validation/test images that copy a training image (exact or near, by hash;
    byte copies only above :data:`NEAR_CHECK_MAX` images without ``dedupe``).

    Adds one warning to ``split.warnings``; with ``dedupe`` the held-out copies leave the split and join
    ``split.skipped`` (so skipped.txt lists them). TFDS and TFRecord sources have no files to hash: None.
    """
    from cvkeras.data.split import DataError

    if split.source in ("tfds", "tfrecord"):
        return None
    n = len(split.train) + len(split.val) + len(split.test)
    near = dedupe or n <= NEAR_CHECK_MAX
    if not near:
        split.warnings.append(f"{n} images: finetune looked for byte copies across splits only (near copies are "
                              f"searched up to {NEAR_CHECK_MAX} images, or with --dedupe); `cvkeras check` finds both")
    groups, drop = cross_split_leaks(split, near=near)
    if not groups:
        return None
    items = [(f"{name}:{i}", p, name) for name in ("train", "val", "test") for i, (p, _) in
             enumerate(getattr(split, name))]
    rows = []
    for g in groups:
        train = next(items[m][1] for m in g.members if items[m][2] == "train")
        rows += [(items[m][1], train, g.kind, dedupe) for m in g.members if items[m][0] in set(drop)]
    example = f"{rows[0][0]} copies {rows[0][1]}"
    if dedupe:
        gone = {held for held, *_ in rows}
        for name in ("val", "test"):
            setattr(split, name, [it for it in getattr(split, name) if it[0] not in gone])
        split.skipped += [(held, f"{kind} copy of training image {train} (--dedupe)") for held, train, kind, _ in rows]
        if not split.val:
            raise DataError(f"{split.root}: every validation image copies a training image; --dedupe left none, "
                            "so add distinct validation images")
        split.warnings.append(f"dropped {len(rows)} validation/test copies of training images (--dedupe), e.g. "
                              f"{example}; listed in skipped.txt and duplicates.txt")
    else:
        split.warnings.append(f"{len(rows)} validation/test image(s) copy a training image (e.g. {example}): they "
                              "inflate validation accuracy; listed in duplicates.txt -- pass --dedupe to drop them")
    return Leaks(rows)

"""Decoding images into model-ready batches, in order: inline, or a few threads working one batch ahead.

Decoding and resizing (Pillow; it releases the GIL) overlap with inference in throughput use: while the
caller runs the model on one batch, ``workers`` threads decode the next straight into its float32 buffer.
An unreadable source never stops the rest: its message goes into :attr:`Batch.errors`.
Device side: numpy and Pillow only.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cvkeras.serving.errors import OptionError
from cvkeras.serving.preprocess import ImageError, load_resized
from cvkeras.serving.results import ImageInput


@dataclass
class Batch:
    """Decoded inputs for a run of sources: ``x[j]`` is source ``indices[j]``; ``errors`` maps the rest."""

    indices: list[int]
    x: np.ndarray  # float32 NHWC 0..255 at the model's input size
    errors: dict[int, str]


def default_workers() -> int:
    """Decoding threads when none are asked for: up to 2 (the runtime keeps the other cores)."""
    return min(2, os.cpu_count() or 1)


def make_batch(start: int, out: np.ndarray, errors: list[str | None]) -> Batch:
    """Drop the rows that failed to decode; keep their messages by source index."""
    ok = [j for j, e in enumerate(errors) if e is None]
    x = out if len(ok) == len(out) else out[ok]
    return Batch([start + j for j in ok], x, {start + j: e for j, e in enumerate(errors) if e is not None})


def decode_batches(sources: Sequence[ImageInput], size: tuple[int, int], batch_size: int, jpeg_scaling: bool,
                   workers: int, overlap: bool) -> Iterator[Batch]:
    """``sources`` decoded and resized to ``size`` (height, width), ``batch_size`` at a time, in order.

    With ``overlap`` and ``workers`` > 0, ``workers`` threads decode one batch ahead, so the thread running
    the model only waits; otherwise decoding is inline. ``jpeg_scaling``: decode large JPEGs DCT-scaled.
    """
    if batch_size < 1:
        raise OptionError(f"batch_size must be at least 1, not {batch_size}")
    n = len(sources)
    h, w = size

    def decode_into(out: np.ndarray, row: int, src: ImageInput) -> str | None:
        try:
            out[row] = load_resized(src, (h, w), jpeg_scaling)
        except ImageError as exc:
            return str(exc)
        return None

    def buffer(start: int) -> np.ndarray:
        return np.empty((min(batch_size, n - start), h, w, 3), dtype=np.float32)

    starts = range(0, n, batch_size)
    if not overlap or workers <= 0 or n <= 1:
        for start in starts:
            out = buffer(start)
            yield make_batch(start, out, [decode_into(out, j, sources[start + j]) for j in range(len(out))])
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:

        def submit(start: int) -> tuple[int, np.ndarray, list[Future]]:
            out = buffer(start)
            jobs = [pool.submit(decode_into, out, j, sources[start + j]) for j in range(len(out))]
            return start, out, jobs

        pending = deque([submit(starts[0])])
        for k in range(len(starts)):
            if k + 1 < len(starts):  # the next batch decodes while the caller runs this one
                pending.append(submit(starts[k + 1]))
            start, out, futures = pending.popleft()
            yield make_batch(start, out, [f.result() for f in futures])

"""Files the tf.data pipeline could not decode: dropped from the pass and named, never a crash mid-training.

The readability check (:mod:`cvkeras.data.readable`) reads headers only, so a file whose data is damaged
past its header first fails here; the trainer lists it in ``skipped.txt`` and drops it from ``split.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class DecodeLog:
    """Which files of one dataset TensorFlow could not decode: known once a first pass over it has ended.

    The readability check reads headers only; a file whose data is damaged past its header fails in the
    pipeline instead. :func:`decoded_dataset` drops it there and marks every file it decoded, then a
    sentinel (an encoded 1-pixel PNG after the last file) that says the pass is over.
    """

    REASON = "TensorFlow could not decode it (damaged image data); re-save it as JPEG or PNG, or remove it"

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(map(str, paths))
        self.decoded: set[int] = set()
        self.complete = False

    def mark(self, index: np.int64) -> np.int64:
        """Called from the graph (``tf.numpy_function``) for each decoded file and for the sentinel."""
        if int(index) == len(self.paths):
            self.complete = True
        else:
            self.decoded.add(int(index))
        return index

    def failures(self) -> list[tuple[str, str]] | None:
        """(path, reason) of the files that failed, or None while no pass has ended."""
        if not self.complete:
            return None
        return [(p, self.REASON) for i, p in enumerate(self.paths) if i not in self.decoded]


def sentinel_png() -> bytes:
    """A 1x1 PNG: the decodable element that ends a logged pass."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    return buf.getvalue()

"""The readability check every image gets before training: a header read, not a decode.

Each file is opened with Pillow (format, mode, size from the header; PNG chunks checked by ``verify()``,
which reads but does not inflate them). A JPEG or PNG whose last bytes hold no end marker (truncated, or a
camera trailer after the image) and a BMP or GIF are decoded in full, so a truncated file is still caught
here; every other decode error is caught by the tf.data pipeline itself
(:class:`cvkeras.data.pipeline.DecodeLog`) and reported by the trainer in ``skipped.txt``.

Example:
    >>> skipped = check_readable(["a.jpg", "b.png"])   # [(path, reason)] of the unusable ones
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from cvkeras.serving.preprocess import MAX_PIXELS, ImageError, load_image

TF_FORMATS = ("JPEG", "PNG", "BMP", "GIF")  # what tf.io.decode_image reads
#: A JPEG's end-of-image marker (a PNG's IEND chunk) is looked for in this many last bytes (padding after
#: it is common).
TAIL = 64
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}


def ends_whole(path: str, marker: bytes) -> bool:
    """Whether the file's last :data:`TAIL` bytes hold its format's end marker (one seek and one read)."""
    with open(path, "rb") as fh:
        fh.seek(max(0, os.fstat(fh.fileno()).st_size - TAIL))
        return marker in fh.read(TAIL)


def header_problem(path: str) -> str | None:
    """Why ``path`` cannot be trained on, from its header (a full decode only where the header cannot tell);
    None when it looks readable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            fmt, mode, info, (w, h) = img.format, img.mode, dict(img.info), img.size
            if fmt == "PNG":
                img.verify()  # chunk lengths and CRCs: catches a truncated or damaged PNG without inflating it
    except Exception:  # noqa: BLE001 - whatever the header parser raises, the decoder's own reason is reported
        fmt = None
    if fmt is None or w * h > MAX_PIXELS or w < 1 or h < 1 or fmt in ("BMP", "GIF") or (
            fmt in END_MARKERS and not ends_whole(path, END_MARKERS[fmt])):
        try:
            load_image(path)
        except ImageError as exc:
            return str(exc).split(": ", 1)[-1]
        if fmt is None:  # Pillow decodes what its header parser refused: nothing to refuse
            return None
    if fmt not in TF_FORMATS:
        return f"{fmt} image (training decodes JPEG, PNG, BMP, GIF only); convert it to PNG"
    if fmt == "BMP" and (mode not in ("RGB", "RGBA", "L") or info.get("compression")):
        return f"{mode} or compressed BMP (TensorFlow decodes it wrongly); save it as PNG"
    return None


def check_readable(paths: list[str], workers: int = 8) -> list[tuple[str, str]]:
    """(path, reason) for every file in ``paths`` that cannot be trained on, in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(header_problem, paths))
    return [(p, r) for p, r in zip(paths, reasons, strict=True) if r is not None]

"""The image contract: the one definition of how a file becomes model input.

Every cvkeras model takes ``float32`` NHWC **RGB** images with values ``0..255`` at its input size and
carries its own normalisation inside the graph. Getting from a file to that tensor is defined here,
once, and honoured by training (TensorFlow, ``cvkeras.data``), export calibration and serving (Pillow):

1. decode to 8-bit RGB: greyscale is replicated, alpha is dropped (not composited), palettes are
   expanded, 16-bit samples are scaled to 8 bit, GIFs use their first frame, EXIF orientation is
   ignored (TensorFlow's decoders ignore it too);
2. JPEG with accurate integer DCT (``tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")``, Pillow's default)
   and fancy upsampling on both sides;
3. resize the whole image (no crop, aspect ratio not kept) to ``(height, width)`` with an antialiased
   bilinear (triangle) filter: ``tf.image.resize(..., "bilinear", antialias=True)`` / Pillow ``BILINEAR``;
4. round to the nearest integer and clip to ``0..255`` so both sides feed the same 8-bit values.

This module is part of the device side: numpy and Pillow only.

Example:
    >>> from serving.preprocess import load_image, to_model_input
    >>> batch = to_model_input([load_image("cat.jpg")], (224, 224))  # (1, 224, 224, 3) float32
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

# --- the contract, as data (also written into export metadata) ------------------------------------
COLOR_ORDER = "RGB"
VALUE_RANGE = (0.0, 255.0)
LAYOUT = "NHWC"
RESIZE_METHOD = "bilinear"
RESIZE_ANTIALIAS = True
JPEG_DCT_METHOD = "INTEGER_ACCURATE"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
#: Images with more pixels than this are refused (decompression bombs). 8000 x 8000 = 64 MP.
MAX_PIXELS = 64_000_000

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a grey half-image


class ImageError(ValueError):
    """A file or object that cannot be turned into an RGB image; the message names the cause."""


def contract(height: int, width: int) -> dict[str, Any]:
    """The preprocessing contract for a model input size, as stored in export metadata."""
    return {
        "input_size": [int(height), int(width)],
        "color_order": COLOR_ORDER,
        "value_range": list(VALUE_RANGE),
        "layout": LAYOUT,
        "resize": RESIZE_METHOD,
        "antialias": RESIZE_ANTIALIAS,
        "jpeg_dct": JPEG_DCT_METHOD,
        "normalization": "in-model",
    }


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to an HWC uint8 RGB array following the contract."""
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32 if mode == "I" else np.uint16)
        arr = np.clip(np.round(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if mode == "F":
        raise ImageError("32-bit float images are not supported; save it as 8- or 16-bit PNG")
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode == "RGBA":
        return np.asarray(img, dtype=np.uint8)[..., :3].copy()
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
        return np.asarray(img, dtype=np.uint8)[..., :3].copy()
    if mode in ("L", "LA", "1"):
        grey = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(source: str | os.PathLike | bytes | Image.Image | np.ndarray) -> np.ndarray:
    """Decode a path, encoded bytes, a PIL image or an array to an HWC uint8 RGB array.

    Raises:
        ImageError: unreadable, truncated, too large or of an unsupported kind, with the reason.
    """
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise ImageError(f"array of shape {arr.shape} is not an HWC image; pass HxWx3 uint8 RGB")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        if arr.dtype != np.uint8:
            raise ImageError(f"array dtype {arr.dtype} is not uint8; pass 0..255 uint8 RGB")
        return np.ascontiguousarray(arr[..., :3])
    if isinstance(source, Image.Image):
        _check_size(source.size, "image")
        return _to_rgb(source)
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise ImageError(f"{name}: cannot open ({exc.strerror or exc})") from None
    with fp:
        try:
            with Image.open(fp) as img:
                _check_size(img.size, name)
                img.load()
                return _to_rgb(img)
        except ImageError:
            raise
        except Image.DecompressionBombError:
            raise ImageError(f"{name}: image is larger than {MAX_PIXELS} pixels; downscale it first") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{name}: not a readable image ({exc})") from None


def _check_size(size: tuple[int, int], name: str) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise ImageError(f"{name}: {w}x{h} is larger than {MAX_PIXELS} pixels; downscale it first")
    if w < 1 or h < 1:
        raise ImageError(f"{name}: empty image ({w}x{h})")


def resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize an HWC uint8 RGB array to ``(height, width)`` with the contract's filter."""
    height, width = int(size[0]), int(size[1])
    if image.shape[0] == height and image.shape[1] == width:
        return image
    pil = Image.fromarray(image, mode="RGB")
    return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None))


def to_model_input(images: Sequence[np.ndarray], size: Sequence[int]) -> np.ndarray:
    """Stack decoded images into a float32 NHWC batch in ``0..255`` at ``size``."""
    out = np.empty((len(images), int(size[0]), int(size[1]), 3), dtype=np.float32)
    for i, img in enumerate(images):
        out[i] = resize(img, size)
    return out


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether the file name has one of the supported image extensions."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


Image.MAX_IMAGE_PIXELS = MAX_PIXELS

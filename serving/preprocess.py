"""The image contract: the one definition of how a file becomes model input.

Every cvkeras model takes ``float32`` NHWC **RGB** images with values ``0..255`` at its input size and
carries its own normalisation inside the graph. Getting from a file to that tensor is defined here,
once, and honoured by training (TensorFlow, ``cvkeras.data.pipeline``), export calibration and serving (Pillow):

1. decode to 8-bit RGB: greyscale is replicated, alpha is dropped (not composited), palettes are
   expanded, 16-bit samples keep their high byte (``v >> 8``, as TensorFlow's PNG decoder does), GIFs
   use their first frame, EXIF orientation is ignored (TensorFlow's decoders ignore it too);
2. JPEG with accurate integer DCT (``tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")``, Pillow's default)
   and fancy upsampling on both sides; a JPEG at least twice the input size (both sides) is decoded
   DCT-scaled by 1/2, 1/4 or 1/8 -- the smallest scale that keeps it at least the input size, see
   :func:`jpeg_scale` -- (``decode_jpeg(ratio=m)`` / Pillow ``draft``; both are libjpeg's scaled IDCT and
   give the same bytes), so a 12-megapixel photo is never decoded in full for a 224 px model;
3. resize the whole image (no crop, aspect ratio not kept) to ``(height, width)`` with an antialiased
   bilinear (triangle) filter: ``tf.image.resize(..., "bilinear", antialias=True)`` / Pillow ``BILINEAR``,
   in two passes as Pillow does -- width first, then height -- each rounded half-up to 8 bit;
4. so both sides feed the same 8-bit values (measured: ~1 % of values differ by one grey level, from
   fixed- vs floating-point filter weights).

This module is part of the device side: numpy and Pillow only.

Example:
    >>> from cvkeras.serving.preprocess import load_image, to_model_input
    >>> batch = to_model_input([load_image("cat.jpg")], (224, 224))  # (1, 224, 224, 3) float32
    >>> x = load_resized("big.jpg", (224, 224))  # same, with the DCT-scaled decode of large JPEGs
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin, UnidentifiedImageError

from cvkeras.serving.errors import CvkerasError

# --- the contract, as data (also written into export metadata) ------------------------------------
COLOR_ORDER = "RGB"
VALUE_RANGE = (0.0, 255.0)
LAYOUT = "NHWC"
RESIZE_METHOD = "bilinear"
RESIZE_ANTIALIAS = True
JPEG_DCT_METHOD = "INTEGER_ACCURATE"
#: Large JPEGs are decoded at 1/m of their size (libjpeg DCT scaling), m in this order of preference.
JPEG_SCALES = (8, 4, 2)
#: Contract value naming the rule of :func:`jpeg_scale`; models exported without it were trained on
#: full-size decodes, so the predictor decodes JPEGs in full for them.
JPEG_SCALING = "dct-1/2-1/4-1/8"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
#: Images with more pixels than this are refused (decompression bombs). 8000 x 8000 = 64 MP.
MAX_PIXELS = 64_000_000

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a grey half-image


class ImageError(CvkerasError, ValueError):
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
        "jpeg_scaling": JPEG_SCALING,
        "normalization": "in-model",
    }


def jpeg_scale_fits(width: Any, height: Any, target: Sequence[int], m: int) -> Any:
    """Whether a ``width`` x ``height`` JPEG may be decoded at 1/``m``: still >= ``target`` (h, w).

    Plain operators only, so the same rule runs on Python ints (device) and on TensorFlow scalars
    (training, ``cvkeras.data.pipeline``): the one definition both sides call.
    """
    return (width >= m * int(target[1])) & (height >= m * int(target[0]))


def jpeg_scale(width: int, height: int, target: Sequence[int]) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) for decoding a ``width`` x ``height`` JPEG for a model
    taking ``target`` = (height, width): the largest that keeps the decoded image at least that size.

    libjpeg rounds scaled sizes up (``ceil(width / m)``); this is also the rule of Pillow's ``draft``.

    >>> jpeg_scale(4000, 3000, (224, 224))
    8
    >>> jpeg_scale(320, 240, (224, 224))
    1
    """
    for m in JPEG_SCALES:
        if jpeg_scale_fits(width, height, target, m):
            return m
    return 1


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to an HWC uint8 RGB array following the contract."""
    if getattr(img, "n_frames", 1) > 1 and img.tell() != 0:
        img.seek(0)  # (not when already there: seeking an MPO photo would drop its draft scale)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Keep the high byte, as TensorFlow's PNG decoder (and Pillow, for 16-bit RGB) does.
        arr = np.asarray(img)
        arr = (np.clip(arr, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
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
    return _load(source, None)


def load_resized(
    source: str | os.PathLike | bytes | Image.Image | np.ndarray, size: Sequence[int],
    jpeg_scaling: bool = True,
) -> np.ndarray:
    """Decode ``source`` and resize it to ``size`` = (height, width): the serving hot path.

    A JPEG at least twice ``size`` is decoded DCT-scaled (:func:`jpeg_scale`), as training decodes it;
    ``jpeg_scaling=False`` decodes it in full, the contract of models exported before that rule
    (their metadata lacks ``jpeg_scaling``). Otherwise the same pixels as ``resize(load_image(...))``.

    Raises:
        ImageError: as :func:`load_image`.
    """
    return _load(source, (int(size[0]), int(size[1])), jpeg_scaling)


def _check_regular_file(source: Any, name: str) -> None:
    """Refuse a path that is not a regular file before opening it: opening a named pipe blocks until a
    writer appears (predict hung), and a device or folder is never an image."""
    try:
        mode = os.stat(source).st_mode
    except (OSError, TypeError, ValueError):
        return  # open() reports a missing or unreadable path with its reason
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise ImageError(f"{name}: cannot open ({kind}, not an image file); pass an image file, PIL image or array")


def _load(source: Any, size: tuple[int, int] | None, jpeg_scaling: bool = False) -> np.ndarray:
    if isinstance(source, np.ndarray):
        arr = _from_array(source)
        return arr if size is None else resize(arr, size)
    if isinstance(source, Image.Image):
        return _decode(source, "image", size, jpeg_scaling)
    name = "<bytes>" if isinstance(source, bytes | bytearray | memoryview) else str(source)
    if name != "<bytes>":
        _check_regular_file(source, name)
    try:
        fp = io.BytesIO(source) if name == "<bytes>" else open(source, "rb")  # noqa: SIM115
    except (OSError, TypeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ImageError(f"{name}: cannot open ({reason}); pass an image file, PIL image or array") from None
    with fp:
        try:
            img = Image.open(fp)
        except Image.DecompressionBombError:
            raise ImageError(f"{name}: image has more than {MAX_PIXELS} pixels; downscale it first") from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image in a known format; pass JPEG, PNG, BMP or GIF") from None
        except Exception as exc:  # any decoder failure means "not an image" for this one file
            raise ImageError(f"{name}: not a readable image ({_reason(exc)})") from None
        with img:
            return _decode(img, name, size, jpeg_scaling)


def _draft(img: Image.Image, size: tuple[int, int]) -> None:
    """Ask libjpeg for the DCT-scaled decode of :func:`jpeg_scale` (a not yet loaded JPEG only)."""
    if not isinstance(img, JpegImagePlugin.JpegImageFile) or len(getattr(img, "tile", ())) != 1:
        return
    w, h = img.size
    m = jpeg_scale(w, h, size)
    if m == 1:
        return
    try:
        img.draft("RGB", (size[1], size[0]))
    except Exception as exc:  # broken headers: the same one-line error as a failed decode
        raise ImageError(f"{getattr(img, 'filename', '') or 'image'}: not a readable image ({_reason(exc)})") \
            from None
    if img.size != (-(-w // m), -(-h // m)):  # Pillow chose another scale: the contract would break
        raise RuntimeError(f"Pillow draft gave {img.size} for {w}x{h} at 1/{m}; update jpeg_scale")


def _decode(img: Image.Image, name: str, size: tuple[int, int] | None, jpeg_scaling: bool = False) -> np.ndarray:
    """Load pixels (checking size first) and convert; every decoder failure becomes an ImageError."""
    _check_size(img.size, name)
    if jpeg_scaling and size is not None:
        _draft(img, size)
    try:
        img.load()
        if size is not None and img.mode == "RGB" and getattr(img, "n_frames", 1) == 1:
            return _resize_pil(img, size)  # fast path: no intermediate array
        arr = _to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:  # truncated data, broken headers, odd modes
        raise ImageError(f"{name}: not a readable image ({_reason(exc)})") from None
    return arr if size is None else resize(arr, size)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _from_array(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ImageError(f"array of shape {arr.shape} is not an HWC image; pass HxWx3 uint8 RGB")
    if arr.dtype != np.uint8:
        raise ImageError(f"array dtype {arr.dtype} is not uint8; pass 0..255 uint8 RGB")
    _check_size((arr.shape[1], arr.shape[0]), "array")
    if arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def _check_size(size: tuple[int, int], name: str) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise ImageError(f"{name}: {w}x{h} is larger than {MAX_PIXELS} pixels; downscale it first")
    if w < 1 or h < 1:
        raise ImageError(f"{name}: empty image ({w}x{h})")


def _resize_pil(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(img, dtype=np.uint8)


def resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize an HWC uint8 RGB array to ``(height, width)`` with the contract's filter."""
    height, width = int(size[0]), int(size[1])
    if image.shape[0] == height and image.shape[1] == width:
        return image
    return _resize_pil(Image.fromarray(np.ascontiguousarray(image)), (height, width))


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

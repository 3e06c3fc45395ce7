"""The device-side decoder: mode conversions, hostile files, and properties over odd sizes and modes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cvkeras.serving import preprocess
from cvkeras.serving.preprocess import ImageError, jpeg_scale, load_image, load_resized, resize, to_model_input


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size but holds almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


RNG = np.random.default_rng(7)
RGBA = RNG.integers(0, 256, (9, 13, 4), dtype=np.uint8)


def test_greyscale_png_is_replicated_to_three_channels():
    grey = RGBA[..., 0].copy()
    out = load_image(_encode(Image.fromarray(grey, "L")))
    assert out.shape == (9, 13, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=-1))


def test_grey_alpha_png_drops_alpha():
    la = RGBA[..., :2].copy()
    out = load_image(_encode(Image.fromarray(la, "LA")))
    np.testing.assert_array_equal(out, np.repeat(la[..., :1], 3, axis=-1))


def test_rgba_png_drops_alpha_without_compositing():
    rgba = RGBA.copy()
    rgba[0, 0, 3] = 0  # fully transparent pixel keeps its colour
    out = load_image(_encode(Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_palette_png_is_expanded_through_its_palette():
    idx = (RGBA[..., 0] % 4).astype(np.uint8)
    colours = np.array([[255, 0, 0], [0, 128, 0], [10, 20, 250], [7, 7, 7]], dtype=np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette(colours.ravel().tolist())
    out = load_image(_encode(img, transparency=2))  # tRNS must not change the colour either
    np.testing.assert_array_equal(out, colours[idx])


def test_16bit_greyscale_png_keeps_the_high_byte():
    values = RNG.integers(0, 65536, (6, 5)).astype(np.uint16)
    values[0, :4] = [0, 255, 256, 65535]
    data = _encode(Image.fromarray(values))  # Pillow writes mode I;16 as a 16-bit PNG
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = load_image(data)
    np.testing.assert_array_equal(out, np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=-1))
    assert out[0, :4, 0].tolist() == [0, 0, 1, 255]


def test_bilevel_and_first_gif_frame():
    bits = RGBA[..., 0] > 128
    out = load_image(_encode(Image.fromarray(bits)))
    np.testing.assert_array_equal(out[..., 0], np.where(bits, 255, 0))
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8), "L") for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert (load_image(buf.getvalue()) == 10).all()


def test_arrays_and_pil_images_are_accepted():
    rgb = RGBA[..., :3].copy()
    np.testing.assert_array_equal(load_image(rgb), rgb)
    np.testing.assert_array_equal(load_image(RGBA), rgb)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgb)), rgb)
    np.testing.assert_array_equal(load_image(rgb[..., 0]), np.repeat(rgb[..., :1], 3, axis=-1))
    with pytest.raises(ImageError, match="dtype float32"):
        load_image(rgb.astype(np.float32))
    with pytest.raises(ImageError, match="not an HWC image"):
        load_image(np.zeros((2, 4, 4, 3), np.uint8))


def test_truncated_jpeg_and_png_fail_cleanly(tmp_path):
    rgb = np.clip(np.mgrid[0:64, 0:64][0] * 4, 0, 255).astype(np.uint8)
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
        data = _encode(Image.fromarray(np.stack([rgb, rgb.T, 255 - rgb], -1)), fmt)
        path = tmp_path / f"cut.{ext}"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageError, match=f"{path.name}: not a readable image"):
            load_image(path)


def test_garbage_empty_and_missing_files(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"definitely not a jpeg" * 10)
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("a.jpg", "empty.png"):
        with pytest.raises(ImageError, match="not an image in a known format"):
            load_image(tmp_path / name)
    with pytest.raises(ImageError, match="cannot open"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="cannot open"):
        load_image(tmp_path)


def test_pixel_limit_refuses_large_images(monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_PIXELS", 100)
    small = _encode(Image.fromarray(RGBA[:9, :11, :3].copy()))  # 99 px: fine
    assert load_image(small).shape == (9, 11, 3)
    with pytest.raises(ImageError, match="larger than 100 pixels"):
        load_image(_encode(Image.fromarray(RGBA[:9, :12, :3].copy())))  # 108 px
    with pytest.raises(ImageError, match="larger than 100 pixels"):
        load_image(np.zeros((20, 20, 3), np.uint8))


def test_decompression_bomb_header_is_refused_before_decoding():
    bomb = _png_header_only(40_000, 40_000)  # 1.6 GP claimed in a few hundred bytes
    assert len(bomb) < 1000
    with pytest.raises(ImageError, match="pixels; downscale it first"):
        load_image(bomb)


def test_resize_is_pillow_antialiased_bilinear_and_batches_are_float():
    img = RGBA[..., :3].copy()
    expected = np.asarray(Image.fromarray(img).resize((5, 4), Image.Resampling.BILINEAR, reducing_gap=None))
    np.testing.assert_array_equal(resize(img, (4, 5)), expected)
    batch = to_model_input([img, img[:3, :3]], (4, 5))
    assert batch.shape == (2, 4, 5, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], expected)


# --- properties ---------------------------------------------------------------------------------------
MODES = ["L", "LA", "P", "RGB", "RGBA", "I;16"]


@st.composite
def images(draw):
    """A PIL image of an odd size in one of the modes a file can decode to, with random pixels."""
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    mode = draw(st.sampled_from(MODES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)), mode
    channels = {"L": 1, "LA": 2, "P": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    if mode == "P":
        img = Image.fromarray(arr[..., 0], "P")
        img.putpalette(rng.integers(0, 256, 768).astype(np.uint8).tobytes())
        return img, mode
    return Image.fromarray(arr if channels > 1 else arr[..., 0], mode), mode


def _expected_rgb(img: Image.Image, mode: str) -> np.ndarray:
    """Independent statement of the contract's conversion for each mode."""
    arr = np.asarray(img)
    if mode == "I;16":
        return np.repeat((arr >> 8).astype(np.uint8)[..., None], 3, axis=-1)
    if mode == "P":
        palette = np.asarray(img.getpalette("RGB"), np.uint8).reshape(-1, 3)
        return palette[arr]
    if mode in ("L", "LA"):
        grey = arr if arr.ndim == 2 else arr[..., 0]
        return np.repeat(grey[..., None], 3, axis=-1)
    return arr[..., :3]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images(), st.sampled_from(["PNG", "BMP", "GIF", "JPEG"]), st.integers(1, 40), st.integers(1, 40))
def test_decoder_always_gives_hwc_uint8_rgb(case, fmt, out_h, out_w):
    img, mode = case
    if fmt == "JPEG" and mode not in ("L", "RGB"):
        img = img.convert("RGB")
    if fmt in ("BMP", "GIF") and mode in ("I;16", "LA"):
        img = img.convert("L")
    data = _encode(img, fmt)
    out = load_image(data)
    assert out.shape == (img.height, img.width, 3) and out.dtype == np.uint8
    if fmt == "PNG":  # lossless and mode-preserving: exact values
        np.testing.assert_array_equal(out, _expected_rgb(img, mode))
    resized = load_resized(data, (out_h, out_w))
    assert resized.shape == (out_h, out_w, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(load_resized(data, (out_h, out_w), jpeg_scaling=False),
                                  resize(out, (out_h, out_w)))
    m = jpeg_scale(img.width, img.height, (out_h, out_w)) if fmt == "JPEG" else 1
    if m == 1:
        np.testing.assert_array_equal(resized, resize(out, (out_h, out_w)))
    else:  # the contract's DCT-scaled decode of a JPEG at least twice the output size
        scaled = Image.open(io.BytesIO(data))
        scaled.draft("RGB", (img.width // m, img.height // m))
        assert scaled.size == (-(-img.width // m), -(-img.height // m))
        np.testing.assert_array_equal(resized, resize(np.asarray(scaled.convert("RGB")), (out_h, out_w)))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 255), st.booleans())
def test_damaged_files_raise_only_image_error(cut, byte, truncate):
    rng = np.random.default_rng(cut)
    data = bytearray(_encode(Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)), "PNG"))
    if truncate:
        data = data[: cut % len(data)]
    else:
        data[cut % len(data)] = byte
    try:
        out = load_image(bytes(data))
    except ImageError as exc:
        assert str(exc).startswith("<bytes>: ")
    else:
        assert out.shape == (16, 16, 3)

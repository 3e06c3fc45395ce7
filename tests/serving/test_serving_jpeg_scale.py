"""DCT-scaled JPEG decoding: one rule (``preprocess.jpeg_scale``), the same bytes on device and in training."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cvkeras.serving import Predictor
from cvkeras.serving.preprocess import JPEG_SCALING, contract, jpeg_scale, load_image, load_resized, resize
from tests.support.serving_models import make_onnx, metadata


def _jpeg(width: int, height: int, seed: int = 0, **save) -> bytes:
    """A photo-like JPEG: smooth colour fields plus noise, so every DCT coefficient band is used."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8))
    arr = np.asarray(base.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    arr = np.clip(arr + rng.integers(-20, 21, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=save.pop("quality", 90), **save)
    return buf.getvalue()


@pytest.mark.parametrize(("w", "h", "target", "m"), [
    (4000, 3000, (224, 224), 8), (1791, 1791, (224, 224), 4), (1792, 1792, (224, 224), 8),
    (447, 1000, (224, 224), 1), (448, 448, (224, 224), 2), (320, 240, (96, 96), 2),
    (320, 240, (224, 224), 1), (4000, 300, (96, 96), 2), (400, 300, (48, 40), 4), (96, 96, (96, 96), 1),
])
def test_jpeg_scale_is_the_largest_that_keeps_the_input_size(w, h, target, m):
    assert jpeg_scale(w, h, target) == m
    th, tw = target
    assert -(-w // m) >= tw and -(-h // m) >= th  # libjpeg's (ceil) scaled size still covers the input
    if m < 8:  # and the next scale would not
        assert w < 2 * m * tw or h < 2 * m * th


@pytest.mark.parametrize(("w", "h", "size"), [(400, 300, (48, 40)), (257, 129, (30, 60)), (97, 61, (12, 10))])
def test_device_decodes_large_jpegs_at_the_scaled_size(w, h, size):
    raw = _jpeg(w, h)
    m = jpeg_scale(w, h, size)
    img = Image.open(io.BytesIO(raw))
    img.draft("RGB", (w // m, h // m))  # Pillow picks the largest m with w // request >= m
    expected = resize(np.asarray(img.convert("RGB")), size)
    assert img.size == (-(-w // m), -(-h // m))
    np.testing.assert_array_equal(load_resized(raw, size), expected)
    full = resize(load_image(raw), size)
    np.testing.assert_array_equal(load_resized(raw, size, jpeg_scaling=False), full)
    if m > 1:  # scaled decoding is a different (slightly blurrier) image: the flag really switches it
        assert not np.array_equal(load_resized(raw, size), full)


def test_predictor_follows_the_models_contract(tmp_path):
    size = (12, 10)
    new = Predictor.load(make_onnx(tmp_path / "new.onnx", metadata(size=size)))
    assert new.metadata.preprocess["jpeg_scaling"] == JPEG_SCALING and new.jpeg_scaling
    old_contract = {k: v for k, v in contract(*size).items() if k != "jpeg_scaling"}  # before this rule
    old = Predictor.load(make_onnx(tmp_path / "old.onnx", metadata(size=size, preprocess=old_contract)))
    assert not old.jpeg_scaling
    raw = _jpeg(200, 160, seed=4)
    x_new, x_old = (next(p.batches([raw])).x[0] for p in (new, old))
    np.testing.assert_array_equal(x_new, load_resized(raw, size))
    np.testing.assert_array_equal(x_old, load_resized(raw, size, jpeg_scaling=False))
    assert new.predict(raw).score == pytest.approx(float(new.predict_batch(x_new[None])[0].max()), abs=1e-6)


@pytest.mark.parametrize("sampling", [0, 2])
@pytest.mark.parametrize("progressive", [False, True])
def test_tensorflow_and_pillow_scaled_decodes_are_bit_identical(sampling, progressive):
    tf = pytest.importorskip("tensorflow")
    for w, h in [(321, 243), (160, 120), (97, 201)]:
        raw = _jpeg(w, h, seed=w, subsampling=sampling, progressive=progressive)
        for m in (2, 4, 8):
            img = Image.open(io.BytesIO(raw))
            img.draft("RGB", (w // m, h // m))
            pil = np.asarray(img.convert("RGB"))
            ours = tf.io.decode_jpeg(raw, channels=3, ratio=m, dct_method="INTEGER_ACCURATE").numpy()
            assert pil.shape == ours.shape == (-(-h // m), -(-w // m), 3)
            np.testing.assert_array_equal(pil, ours)


def test_training_pipeline_decodes_large_jpegs_like_the_device(tmp_path):
    """The contract with scaling: TF pipeline (training) == Pillow (serving), to resize rounding."""
    pytest.importorskip("tensorflow")
    from cvkeras.data.decode import decoded_dataset

    cases = [(400, 300), (257, 129), (97, 61), (60, 40), (1200, 90)]  # downscales, as the contract test
    paths = []
    for w, h in cases:
        path = tmp_path / f"{w}x{h}.jpg"
        path.write_bytes(_jpeg(w, h, seed=h))
        paths.append(str(path))
    size = (24, 40)
    assert sorted({jpeg_scale(w, h, size) for w, h in cases}) == [1, 2, 4, 8]  # every branch is taken
    tf_images = [x.numpy() for x, _ in decoded_dataset(paths, [0] * len(paths), size)]
    for path, tf_img in zip(paths, tf_images, strict=True):
        pil = load_resized(path, size).astype(np.float32)
        assert tf_img.shape == pil.shape == (24, 40, 3)
        assert np.abs(tf_img - pil).max() <= 1.0, path
        assert (tf_img != pil).mean() < 0.03, path

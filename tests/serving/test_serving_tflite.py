"""TFLite through LiteRT: float and full-int8 (uint8 / int8 I/O) models made from a tiny Keras model.

Needs TensorFlow to *make* the models (the predictor itself never imports it), hence ``slow``.
"""

from __future__ import annotations

import numpy as np
import pytest

from cvkeras.serving import Predictor
from cvkeras.serving.metadata import sidecar_path
from cvkeras.serving.preprocess import to_model_input
from tests.support.serving_models import BIAS, LABELS, SIZE, WEIGHTS, metadata, photo, reference_probs

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Statistics for quantized inputs")]
tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")


def _photos(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [photo(i % 4, rng, int(rng.integers(14, 40)), int(rng.integers(14, 40))) for i in range(n)]


def _convert(tmp_path, name: str, io_type=None):
    import keras

    inputs = keras.Input((*SIZE, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([WEIGHTS, BIAS])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if io_type is not None:  # full integer: calibrate on real-looking photos, not random tensors
        calibration = to_model_input(_photos(24, seed=1), SIZE)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(converter.convert())
    precision = "int8" if io_type is not None else "float32"
    sidecar_path(path).write_text(metadata(precision=precision).to_json())
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tflite")
    return {"float": _convert(tmp, "float"), "uint8": _convert(tmp, "uint8", tf.uint8),
            "int8": _convert(tmp, "int8", tf.int8)}


def test_float_tflite_matches_numpy_and_loops_batches(models):
    p = Predictor.load(models["float"], threads=1)
    assert p.kind == "tflite" and p.labels == LABELS and p.input_size == SIZE
    x = to_model_input(_photos(5, seed=2), SIZE)
    np.testing.assert_allclose(p.predict_batch(x), reference_probs(x), atol=1e-5)
    assert [r.index for r in p.predict(_photos(4, seed=9))] == [0, 1, 2, 3]


@pytest.mark.parametrize("kind", ["uint8", "int8"])
def test_integer_io_is_quantized_with_the_models_own_parameters(models, kind):
    from ai_edge_litert.interpreter import Interpreter

    p = Predictor.load(models[kind], threads=1)
    x = to_model_input(_photos(6, seed=3), SIZE)
    probs = p.predict_batch(x)
    # Independent path: quantize by hand with the file's parameters, dequantize the raw output.
    interp = Interpreter(model_path=str(models[kind]))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    dtype = {"uint8": np.uint8, "int8": np.int8}[kind]
    assert inp["dtype"] == dtype and out["dtype"] == dtype
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    assert z_in == (0 if kind == "uint8" else -128)  # calibrated on 0..255 photos
    manual = []
    for row in x:
        q = np.clip(np.floor(row / s_in + 0.5) + z_in, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
        interp.set_tensor(inp["index"], q[None])
        interp.invoke()
        manual.append((interp.get_tensor(out["index"])[0].astype(np.float64) - z_out) * s_out)
    np.testing.assert_allclose(probs, np.array(manual), atol=1e-6)
    # And the quantized model still tells the colours apart like the float reference.
    ref = reference_probs(x)
    np.testing.assert_allclose(probs, ref, atol=0.05)
    assert (probs.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("kind", ["float", "uint8", "int8"])
def test_single_image_path_matches_the_batch_path(models, kind):
    p = Predictor.load(models[kind], threads=1, mode="latency")
    photos = _photos(4, seed=5)
    x = to_model_input(photos, SIZE)
    for img, probs in zip(photos, p.predict_batch(x), strict=True):
        r = p.predict(img, top_k=len(LABELS))
        assert r.index == int(probs.argmax())
        assert [s for _, s in r.top_k] == pytest.approx(np.sort(probs)[::-1], abs=1e-6)
    # uint8 input with scale 1 / zero 0 (what `cvkeras export --int8` writes) skips the float round trip
    runner = p._runner
    assert runner.takes_uint8_image == (kind == "uint8" and runner.in_scale == 1.0 and runner.in_zero == 0)

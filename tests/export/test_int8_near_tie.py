"""Issue #22.5: int8 artifacts keep top-1 on near-ties. A uint8 softmax output (1/256 steps) or int8 logits
tie two classes within one step and argmax then takes the first: both int8 formats keep the classifier
(last dense layer and softmax) in float, with float32 probabilities out."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

DELTA = 0.004  # logit margin of class 2 over class 1: probabilities 0.4990 / 0.5010, inside one uint8 step


def _near_tie_model():
    """Conv features -> dense head where class 2 has class 1's weights and a bias DELTA higher: on every
    image the float model answers 2 by a margin of 0.1 %, whatever the int8 noise of the features."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 127.5, -1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(3, name="head")
    model = keras.Model(inputs, keras.layers.Softmax()(dense(x)))
    w, b = dense.get_weights()
    w[:, 2] = w[:, 1]
    b[:] = [-5.0, 5.0, 5.0 + DELTA]
    dense.set_weights([w, b])
    return model


@pytest.fixture(scope="module")
def near_tie(tmp_path_factory):
    images = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3)).astype(np.uint8)
    model = _near_tie_model()
    probs = model.predict(images.astype(np.float32), verbose=0)
    assert (probs.argmax(1) == 2).all() and np.abs(probs[:, 2] - probs[:, 1]).max() < 1 / 256
    return model, images, tmp_path_factory.mktemp("near_tie")


def _meta():
    from cvkeras.serving.metadata import ModelMetadata

    return ModelMetadata(labels=["a", "b", "c"], input_size=[16, 16], model_name="t", precision="int8")


def _agreement(path, images) -> float:
    from cvkeras.serving import Predictor
    from cvkeras.serving.metadata import sidecar_path

    if str(path).endswith(".tflite"):
        sidecar_path(path).write_text(_meta().to_json())
    p = Predictor.load(path, threads=1)
    probs = np.concatenate([p.predict_batch(images[i : i + 1].astype(np.float32)) for i in range(len(images))])
    return float((probs.argmax(1) == 2).mean())


@pytest.mark.parametrize("io_type", ["uint8", "int8"])
def test_full_integer_tflite_keeps_top1_on_a_near_tie(near_tie, io_type):
    from ai_edge_litert.interpreter import Interpreter

    from cvkeras.export.tflite import convert as to_tflite

    model, images, tmp = near_tie
    with to_tflite.saved_model(model) as saved:
        blob = to_tflite.convert(saved, "int8", images.astype(np.float32), io_type)
    path = tmp / f"m_{io_type}.tflite"
    path.write_bytes(blob)
    interp = Interpreter(model_path=str(path))
    assert np.dtype(interp.get_input_details()[0]["dtype"]) == np.dtype(io_type)
    assert np.dtype(interp.get_output_details()[0]["dtype"]) == np.float32
    ops = {op["op_name"] for op in interp._get_ops_details()}
    assert "CONV_2D" in ops and len(to_tflite.float_ops(blob)) == 2  # the conv is int8; only the head is float
    assert _agreement(path, images) == 1.0  # was 0.0: the uint8 output tied, argmax took class 1


def test_int8_onnx_keeps_the_classifier_float_and_top1_on_a_near_tie(near_tie):
    import onnx

    from cvkeras.export import metadata as meta_io
    from cvkeras.export.onnx import convert as to_onnx
    from cvkeras.export.onnx import quantize
    from cvkeras.export.settings import QuantSettings
    from tests.support.export_models import float_weight_nodes

    model, images, tmp = near_tie
    to_onnx.save(to_onnx.keras_to_onnx(model, 17, "model.onnx"), tmp / "model.onnx")
    report: dict = {}
    proto = quantize.quantize_int8(tmp / "model.onnx", images.astype(np.float32),
                                   QuantSettings(float_stem=0), report=report)
    meta_io.embed_onnx(proto, _meta())
    to_onnx.save(proto, tmp / "model_int8.onnx")
    assert report["float_head"] and len(float_weight_nodes(onnx.load(tmp / "model_int8.onnx"), head=True)) == 1
    assert _agreement(tmp / "model_int8.onnx", images) == 1.0  # was 30 of 32 flipped: int8 logits tied

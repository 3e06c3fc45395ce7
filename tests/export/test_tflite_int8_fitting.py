"""GPTQ and empirical bias correction of full-integer TFLite models (cvkeras.export.tflite.weight_rounding,
cvkeras.export.tflite.bias_correction): tiny hand-made Keras nets, converted by the export's own converter."""

from __future__ import annotations

import numpy as np
import pytest


def _convert(model, calib: np.ndarray, io_type: str) -> tuple[bytes, bytes]:
    """(float model.tflite, full-integer model_int8.tflite) of a Keras ``model``, as the export makes them."""
    from cvkeras.export.tflite import convert as to_tflite

    with to_tflite.saved_model(model) as saved:
        return to_tflite.convert(saved, "float32"), to_tflite.convert(saved, "int8", calib, io_type)


def _run(blob: bytes, x: np.ndarray) -> np.ndarray:
    """Real-valued outputs of ``blob`` for every image of ``x`` (dequantized when integer)."""
    from cvkeras.export.tflite.bias_correction import feed, interpreter

    it = interpreter(blob)
    d = it.get_output_details()[0]
    out = []
    for image in x:
        feed(it, image)
        it.invoke()
        y = it.get_tensor(d["index"]).astype(np.float64)
        if np.dtype(d["dtype"]).kind != "f":
            scale, zero = d["quantization"]
            y = (y - zero) * scale
        out.append(y[0])
    return np.stack(out)


def _biased_model(rng: np.random.Generator):
    """0..255 image -> 1x1 conv -> ReLU -> depthwise 3x3 -> ReLU -> 1x1 conv, every conv with a bias.

    The depthwise weights sit 0.45 of an int8 step above the grid of their per-channel scale (one weight
    per channel at the maximum sets that scale), so rounding pulls all nine of a channel's weights down
    together: a systematic shift of every output channel's mean on the non-negative input (the ONNX test's
    net, tests/export/test_bias_correction.py, in Keras).
    """
    import keras

    c = 8
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(c, 1, activation="relu", name="pw1")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    model = keras.Model(inp, keras.layers.Conv2D(4, 1, name="pw2")(x))
    step = rng.uniform(0.002, 0.02, c)
    grid = rng.integers(10, 60, (c, 9)).astype(np.float64)
    grid[:, 0] = 127
    wd = ((grid + np.where(grid == 127, 0.0, 0.45)) * step[:, None]).T.reshape(3, 3, c, 1)
    model.get_layer("pw1").set_weights([rng.normal(0, 0.5, (1, 1, 3, c)) / 255, np.full(c, 0.1)])
    model.get_layer("dw").set_weights([wd, np.full(c, -0.2)])
    model.get_layer("pw2").set_weights([rng.normal(0, 0.5, (1, 1, c, 4)), np.zeros(4)])
    return model


@pytest.fixture(scope="module")
def biased():
    from cvkeras.export.tflite.bias_correction import correct_biases

    rng = np.random.default_rng(3)
    calib = rng.integers(0, 256, (32, 8, 8, 3)).astype(np.uint8)
    test = rng.integers(0, 256, (32, 8, 8, 3)).astype(np.uint8)
    reference, plain = _convert(_biased_model(rng), calib, "uint8")
    corrected, result = correct_biases(plain, reference, calib)
    return reference, plain, corrected, result, test


def test_tflite_bias_correction_removes_the_mean_shift_of_int8_rounding(biased):
    """On images it was not measured on, the corrected model's output error has (almost) no mean and a
    smaller power than the uncorrected one's; without the correction the test fails."""
    from tests.support.export_models import correction_effect

    reference, plain, corrected, _, x = biased
    e = correction_effect(_run(reference, x), _run(plain, x), _run(corrected, x), channel_axis=-1)  # NHWC
    assert e["shift_corrected"] < 0.3 * e["shift_plain"], e
    assert e["mse_corrected"] < 0.8 * e["mse_plain"], e


def test_tflite_bias_correction_edits_only_int32_biases_and_reports_each_op(biased):
    from cvkeras.export.tflite.graph import Flatbuffer

    _, plain, corrected, result, _ = biased
    assert [layer.op for layer in result.layers] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D"]
    assert result.images == 32 and result.summary()["layers"] == 3
    assert len(corrected) == len(plain)
    a, b = np.frombuffer(corrected, np.uint8), np.frombuffer(plain, np.uint8)
    changed = set(np.flatnonzero(a != b).tolist())
    assert changed
    fb = Flatbuffer(corrected)
    in_biases = set()
    for layer in fb.layers:
        view = fb.array(layer.bias)
        start = view.__array_interface__["data"][0] - np.frombuffer(fb.buf, np.uint8).__array_interface__["data"][0]
        in_biases.update(range(start, start + view.nbytes))
    assert changed <= in_biases  # weights, scales, graph untouched


def _conv_model(rng: np.random.Generator, c_in: int = 32, c_out: int = 8):
    """One 3x3 conv (stride 2, padded) with a bias; each output channel has one large weight, so its
    per-channel int8 step is coarse for all the others (tests/export/test_weight_rounding.py's net, in Keras)."""
    import keras

    inp = keras.Input((8, 8, c_in))
    model = keras.Model(inp, keras.layers.Conv2D(c_out, 3, strides=2, padding="same", name="conv")(inp))
    w = rng.normal(0, 0.05, (3, 3, c_in, c_out))
    w[1, 1, 0, :] = 1.0
    model.get_layer("conv").set_weights([w, rng.normal(0, 0.1, c_out)])
    return model


def _inputs(rng: np.random.Generator, n: int, c_in: int = 32) -> np.ndarray:
    """Correlated non-negative channels (a few shared smooth factors plus noise), NHWC."""
    factors = rng.normal(0, 1, (n, 8, 8, 4))
    x = factors @ rng.normal(0, 1, (4, c_in)) + 0.3 * rng.normal(0, 1, (n, 8, 8, c_in))
    return np.maximum(x + 4, 0).astype(np.float32)


def test_tflite_gptq_reduces_the_output_error_of_int8_weights():
    """GPTQ-rounded weights give a smaller output error than nearest rounding on images GPTQ did not see;
    scales stay, and so does each channel's largest weight at +-127."""
    from cvkeras.export.tflite.graph import Flatbuffer
    from cvkeras.export.tflite.weight_rounding import round_weights

    rng = np.random.default_rng(5)
    calib, test = _inputs(rng, 64), _inputs(rng, 64)
    reference, nearest = _convert(_conv_model(rng), calib, "float32")
    gptq, done = round_weights(nearest, reference, calib)
    assert done["layers"] == 1 and done["images"] == 64
    ref = _run(reference, test)
    e_gptq, e_nearest = ((_run(gptq, test) - ref) ** 2).mean(), ((_run(nearest, test) - ref) ** 2).mean()
    assert e_gptq < 0.8 * e_nearest, (e_gptq, e_nearest)
    assert len(gptq) == len(nearest)
    before, after = Flatbuffer(nearest), Flatbuffer(gptq)
    (lb,), (la,) = before.layers, after.layers
    np.testing.assert_array_equal(la.weight.scale, lb.weight.scale)
    q = after.array(la.weight).reshape(la.weight.shape[0], -1)
    assert not np.array_equal(q, before.array(lb.weight).reshape(q.shape))
    np.testing.assert_array_equal(np.abs(q).max(axis=1), 127)


def test_tflite_gptq_fits_the_int8_weights_of_a_dynamic_range_model():
    """model_dynamic.tflite (float activations, int8 per-channel weights) gets the same GPTQ: a smaller
    output error on unseen images; the full-integer path leaves its float-input ops alone."""
    from cvkeras.export.settings import QuantSettings
    from cvkeras.export.tflite import convert as to_tflite
    from cvkeras.export.tflite.steps import fit_rounding
    from cvkeras.export.tflite.weight_rounding import round_weights

    rng = np.random.default_rng(5)
    calib, test = _inputs(rng, 64), _inputs(rng, 64)
    with to_tflite.saved_model(_conv_model(rng)) as saved:
        reference, dynamic = to_tflite.convert(saved, "float32"), to_tflite.convert(saved, "dynamic")
    assert round_weights(dynamic, reference, calib)[1] == {"layers": 0}  # not a full-integer op
    fitted, done = round_weights(dynamic, reference, calib, hybrid=True)
    assert done["layers"] == 1 and len(fitted) == len(dynamic)
    ref = _run(reference, test)
    e_gptq, e_nearest = ((_run(fitted, test) - ref) ** 2).mean(), ((_run(dynamic, test) - ref) ** 2).mean()
    assert e_gptq < 0.8 * e_nearest, (e_gptq, e_nearest)
    report: dict = {}
    out = fit_rounding(dynamic, reference, calib, QuantSettings(), "model_dynamic.tflite", report, lambda m: None,
                       hybrid=True)
    assert out == fitted and list(report) == ["gptq"]  # no bias correction: activations quantized per batch


def test_written_tflite_files_carry_no_tensor_names_and_run_the_same():
    """Compacted files: no names, each repeated quantization vector stored once (smaller than stripping
    alone), every tensor's quantization parameters read back unchanged, and identical outputs."""
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    from cvkeras.export.errors import ConversionError
    from cvkeras.export.tflite import convert as to_tflite

    def quantization(model) -> list:
        q = [t.quantization for t in model.subgraphs[0].tensors]
        return [None if p is None else [None if v is None else np.asarray(v).tolist() for v in (p.scale, p.zeroPoint)]
                + [p.quantizedDimension] for p in q]

    rng = np.random.default_rng(5)
    calib, test = _inputs(rng, 16), _inputs(rng, 8)
    per_channel = 0
    for blob in _convert(_conv_model(rng), calib, "uint8"):
        small = to_tflite.compact(blob)
        assert len(small) < len(blob)
        np.testing.assert_array_equal(_run(small, test), _run(blob, test))
        it = Interpreter(model_content=small)
        assert [d["name"] for d in it.get_tensor_details() if d["name"]] == []
        stripped = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
        flatbuffer_utils.strip_strings(stripped)
        assert quantization(flatbuffer_utils.convert_bytearray_to_object(bytearray(small))) == quantization(stripped)
        if any(q and q[1] and len(q[1]) > 1 for q in quantization(stripped)):  # per-channel zero points
            per_channel += 1
            assert len(small) < len(flatbuffer_utils.convert_object_to_bytearray(stripped))
    assert per_channel  # the int8 file has them
    with pytest.raises(ConversionError, match="model_x.tflite"):
        to_tflite.compact(b"not a flatbuffer", "model_x.tflite")


def test_fit_rounding_records_both_steps_and_honours_zero(biased):
    from cvkeras.export.settings import QuantSettings
    from cvkeras.export.tflite.steps import fit_rounding

    reference, plain, _, _, _ = biased
    calib = np.random.default_rng(9).integers(0, 256, (8, 8, 8, 3)).astype(np.uint8)
    lines: list[str] = []
    report: dict = {}
    out = fit_rounding(plain, reference, calib, QuantSettings(), "model_int8.tflite", report, lines.append)
    assert report["gptq"]["layers"] == 3 and report["bias_correction"]["layers"] == 3 and out != plain
    assert any("bias correction" in line for line in lines) and any("GPTQ" in line for line in lines)
    off: dict = {}
    same = fit_rounding(plain, reference, calib, QuantSettings(gptq_images=0, bias_correction_images=0),
                        "model_int8.tflite", off, lines.append)
    assert same == plain and off == {}


def test_ops_kept_float_by_a_repair_are_not_corrected():
    """A repair candidate (QuantizationDebugger, one op denylisted): the float op keeps its float bias, the
    int8 ops around it are matched to the float model and corrected."""
    from cvkeras.export.tflite import convert as to_tflite
    from cvkeras.export.tflite.bias_correction import correct_biases
    from cvkeras.export.tflite.debugger import TFLiteDebugger
    from cvkeras.export.tflite.graph import Flatbuffer

    rng = np.random.default_rng(4)
    calib = rng.integers(0, 256, (16, 8, 8, 3)).astype(np.uint8)
    with to_tflite.saved_model(_biased_model(rng)) as saved:
        reference = to_tflite.convert(saved, "float32")
        debugger = TFLiteDebugger(saved, calib, calib[:4])
        dw = next(r.name for r in debugger.ranking() if "dw" in r.name)
        candidate = debugger.quantize([dw], "uint8")
    corrected, result = correct_biases(candidate, reference, calib)
    assert [layer.op for layer in result.layers] == ["CONV_2D", "CONV_2D"]
    before, after = Flatbuffer(candidate), Flatbuffer(corrected)
    (fb,) = [layer for layer in before.layers if layer.kind == "depthwise"]
    (fa,) = [layer for layer in after.layers if layer.kind == "depthwise"]
    assert fa.bias.dtype is np.float32
    np.testing.assert_array_equal(after.array(fa.bias), before.array(fb.bias))


def test_bias_correction_and_gptq_never_write_through_a_buffer_other_tensors_share():
    """Issue #22.6: the converter stores the identical zero biases of bias-free convs once; each layer's
    correction must land in that layer's bias alone (on main, every sharing layer ended with one vector)."""
    import keras

    from cvkeras.export.tflite.bias_correction import correct_biases
    from cvkeras.export.tflite.graph import Flatbuffer
    from cvkeras.export.tflite.weight_rounding import round_weights

    rng = np.random.default_rng(5)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 1, use_bias=False, activation="relu", name="a")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, activation="relu", name="b")(x)
    x = keras.layers.Conv2D(8, 1, use_bias=False, name="c")(x)
    model = keras.Model(inp, x)
    for name in "abc":
        w = model.get_layer(name).get_weights()[0]
        model.get_layer(name).set_weights([rng.normal(0, 1.0 / np.sqrt(w[..., 0].size), w.shape) / 40])
    calib = rng.integers(0, 256, (32, 8, 8, 3)).astype(np.uint8)
    reference, plain = _convert(model, calib, "uint8")
    fb = Flatbuffer(plain)
    assert len({layer.bias.buffer for layer in fb.layers}) == 3  # each bias has a buffer of its own now
    biases = [fb.array(layer.bias).copy() for layer in fb.layers]
    assert all((b == 0).all() for b in biases)
    corrected, _ = correct_biases(plain, reference, calib)
    after = [Flatbuffer(corrected).array(layer.bias) for layer in Flatbuffer(corrected).layers]
    assert len({tuple(b.tolist()) for b in after}) == 3, after  # three layers, three different corrections
    rounded, _ = round_weights(plain, reference, calib, 32)
    assert len(Flatbuffer(rounded).layers) == 3

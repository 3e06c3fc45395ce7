"""Empirical bias correction of QDQ int8 ONNX models (export/onnx/bias_correction.py): fast, tiny hand-made nets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _biased_model(path: Path, rng: np.random.Generator) -> None:
    """1x1 conv -> Relu -> depthwise 3x3 -> Relu -> 1x1 conv, NCHW, every conv with a bias.

    The depthwise weights sit 0.45 of an int8 step above the grid of their per-channel scale (one weight
    per channel at the maximum sets that scale), so rounding pulls all nine of a channel's weights down
    together: on the non-negative input after the Relu, a systematic shift of every output channel's mean,
    what small depthwise kernels suffer by chance in real nets.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = 8
    w1 = rng.normal(0, 0.5, (c, 3, 1, 1)).astype(np.float32)
    step = rng.uniform(0.002, 0.02, c)  # per-channel int8 step
    grid = rng.integers(10, 60, (c, 9)).astype(np.float64)
    grid[:, 0] = 127  # the maximum: scale = step exactly
    wd = ((grid + np.where(grid == 127, 0.0, 0.45)) * step[:, None]).reshape(c, 1, 3, 3).astype(np.float32)
    w3 = rng.normal(0, 0.5, (4, c, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (w1, "w1"), (np.full(c, 0.1, np.float32), "b1"), (wd, "wd"), (np.full(c, -0.2, np.float32), "bd"),
        (w3, "w3"), (np.zeros(4, np.float32), "b3"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="pw1"),
             helper.make_node("Relu", ["a"], ["ar"], name="relu1"),
             helper.make_node("Conv", ["ar", "wd", "bd"], ["d"], name="dw", group=c, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["dr"], name="relu2"),
             helper.make_node("Conv", ["dr", "w3", "b3"], ["y"], name="pw2")]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _run(proto_or_path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    src = proto_or_path if isinstance(proto_or_path, Path) else proto_or_path.SerializeToString()
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.x64quantprecision", "1")
    sess = ort.InferenceSession(str(src) if isinstance(src, Path) else src, opts,
                                providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    from cvkeras.export.onnx.quantize import quantize_int8
    from cvkeras.export.settings import QuantSettings

    rng = np.random.default_rng(3)
    src = tmp_path_factory.mktemp("bc") / "dw.onnx"
    _biased_model(src, rng)
    calib = rng.uniform(0, 1, (32, 3, 8, 8)).astype(np.float32)
    test = rng.uniform(0, 1, (32, 3, 8, 8)).astype(np.float32)
    report: dict = {}
    corrected = quantize_int8(src, calib, QuantSettings(exclude_softmax=False, float_stem=0, gptq_images=0),
                              report=report)
    plain = quantize_int8(src, calib, QuantSettings(exclude_softmax=False, float_stem=0, gptq_images=0,
                                                    bias_correction_images=0))
    return src, test, corrected, plain, report


def test_bias_correction_removes_the_mean_shift_of_int8_rounding(biased):
    """On images it was not measured on, the corrected int8 model's output error has (almost) no mean and
    a much smaller power than the uncorrected one's; without the correction the test fails."""
    from tests.support.export_models import correction_effect

    src, x, corrected, plain, _ = biased
    e = correction_effect(_run(src, x), _run(plain, x), _run(corrected, x), channel_axis=1)  # NCHW
    assert e["shift_corrected"] < 0.2 * e["shift_plain"], e
    assert e["mse_corrected"] < 0.7 * e["mse_plain"], e  # measured 0.59


def test_bias_correction_edits_only_int32_biases_and_reports_each_layer(biased):
    from onnx import numpy_helper

    _, _, corrected, plain, report = biased
    assert report["bias_correction"]["layers"] == 3  # pw1, dw, pw2: every conv with a bias
    assert report["bias_correction"]["images"] == 32
    a = {t.name: numpy_helper.to_array(t) for t in corrected.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in plain.graph.initializer}
    changed = [n for n in a if not np.array_equal(a[n], b[n])]
    assert changed and all(a[n].dtype == np.int32 for n in changed)  # weights and ranges untouched


def test_layers_kept_float_are_not_corrected(tmp_path):
    """A layer excluded from quantization (repair) keeps its float bias exactly."""
    from onnx import numpy_helper

    from cvkeras.export.onnx.quantize import quantize_int8
    from cvkeras.export.settings import QuantSettings

    rng = np.random.default_rng(4)
    src = tmp_path / "dw.onnx"
    _biased_model(src, rng)
    calib = rng.uniform(0, 1, (16, 3, 8, 8)).astype(np.float32)
    report: dict = {}
    q = quantize_int8(src, calib, QuantSettings(exclude_softmax=False, float_stem=0), exclude=["dw", "relu2"],
                      compact=False, report=report)
    assert report["bias_correction"]["layers"] == 2
    bd = next(numpy_helper.to_array(t) for t in q.graph.initializer if t.name == "bd")
    np.testing.assert_array_equal(bd, np.full(8, -0.2, np.float32))

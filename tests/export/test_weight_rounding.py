"""GPTQ rounding of QDQ int8 weights (cvkeras.export.onnx.weight_rounding): fast, tiny hand-made nets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _conv_model(path: Path, rng: np.random.Generator, c_in: int = 32, c_out: int = 8) -> None:
    """One 3x3 conv (group 1, stride 2, padded) with a bias; each output channel has one large weight, so
    its per-channel int8 step is coarse for all the others."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = rng.normal(0, 0.05, (c_out, c_in, 3, 3))
    w[:, 0, 1, 1] = 1.0
    inits = [numpy_helper.from_array(w.astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, c_out).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", strides=[2, 2], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c_in, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, c_out, 4, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _inputs(rng: np.random.Generator, n: int, c_in: int = 32) -> np.ndarray:
    """Correlated channels (a few shared smooth factors plus noise), as real feature maps are."""
    factors = rng.normal(0, 1, (n, 4, 8, 8))
    mix = rng.normal(0, 1, (c_in, 4))
    x = np.einsum("nfhw,cf->nchw", factors, mix) + 0.3 * rng.normal(0, 1, (n, c_in, 8, 8))
    return np.maximum(x + 4, 0).astype(np.float32)  # non-negative, as after a ReLU


def _run(src, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.x64quantprecision", "1")
    data = str(src) if isinstance(src, Path) else src.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    rng = np.random.default_rng(5)
    src = tmp_path_factory.mktemp("gptq") / "conv.onnx"
    _conv_model(src, rng)
    return src, _inputs(rng, 64), _inputs(rng, 64)


def test_gptq_reduces_the_output_error_of_int8_weights(conv):
    """On inputs it did not see, GPTQ-rounded weights give a smaller conv output error than nearest
    rounding (bias correction off in both, to isolate the rounding); the same scales, so same file size."""
    from onnx import numpy_helper

    from cvkeras.export.onnx.quantize import quantize_int8
    from cvkeras.export.settings import QuantSettings

    src, calib, test = conv
    report: dict = {}
    gptq = quantize_int8(src, calib, QuantSettings(exclude_softmax=False, float_stem=0, bias_correction_images=0),
                         report=report, compact=False)
    nearest = quantize_int8(src, calib, QuantSettings(exclude_softmax=False, float_stem=0, bias_correction_images=0,
                                                      gptq_images=0), compact=False)
    assert report["gptq"]["layers"] == 1
    ref = _run(src, test)
    e_gptq = ((_run(gptq, test) - ref) ** 2).mean()
    e_nearest = ((_run(nearest, test) - ref) ** 2).mean()
    assert e_gptq < 0.7 * e_nearest, (e_gptq, e_nearest)  # measured 0.0166 vs 0.0278
    w = {t.name: numpy_helper.to_array(t) for t in gptq.graph.initializer if t.data_type == 3}  # int8
    v = {t.name: numpy_helper.to_array(t) for t in nearest.graph.initializer if t.data_type == 3}
    assert w.keys() == v.keys() and any(not np.array_equal(w[k], v[k]) for k in w)
    assert all(np.abs(w[k].astype(int) - v[k]).max() <= 3 for k in w)  # re-rounded, not re-scaled


def test_gptq_keeps_weights_in_the_quantizers_reduced_range(tmp_path):
    """Issue #22.8: with ``reduce_range`` ONNX Runtime's int8 weights span +-64; GPTQ's error feedback moves
    weights next to the limit beyond it unless it clips there (it clipped at +-127)."""
    import onnx
    from onnx import numpy_helper

    from cvkeras.export.onnx.quantize import quantize_int8, weight_range
    from cvkeras.export.settings import QuantSettings

    rng = np.random.default_rng(11)
    src = tmp_path / "conv.onnx"
    _conv_model(src, rng)
    model = onnx.load(src)
    # every weight 0.3-0.5 of a step below its channel's limit: nearest rounding puts it at the limit, and
    # the error feedback of its neighbours pushes some one step past it
    w = np.sign(rng.normal(size=(8, 32, 3, 3))) * (1 - rng.uniform(0.3, 0.5, (8, 32, 3, 3)) / 64)
    w[:, 0, 0, 0] = 1.0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w.astype(np.float32), "w"))
    onnx.save(model, src)
    settings = QuantSettings(exclude_softmax=False, float_stem=0, bias_correction_images=0, reduce_range=True)
    assert weight_range(settings) == (-64, 64) and weight_range(QuantSettings()) == (-127, 127)
    report: dict = {}
    q = quantize_int8(src, _inputs(rng, 64), settings, report=report, compact=False)
    assert report["gptq"]["layers"] == 1
    weights = [numpy_helper.to_array(t) for t in q.graph.initializer if t.data_type == 3]
    assert weights and max(int(np.abs(x.astype(int)).max()) for x in weights) <= 64

"""The int8 ONNX stem: the input normalisation and the first convs stay float32 (``quantize.stem_nodes``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.export_models import float_weight_nodes, save_onnx_net, stem_onnx_net

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_stem_ends_at_the_narrowest_of_its_first_convs(tmp_path):
    """Three convs: the cut falls after the 8-channel projection; two: after the later of two equal outputs."""
    from cvkeras.export.onnx.quantize import preprocess, stem_nodes

    stem_onnx_net(tmp_path / "net.onnx")
    preprocess(tmp_path / "net.onnx", tmp_path / "pre.onnx")
    graph = onnx.load(tmp_path / "pre.onnx").graph
    ops = {n.name: n.op_type for n in graph.node}
    three = stem_nodes(graph, 3)
    assert [ops[n] for n in three if ops[n] == "Conv"] == ["Conv"] * 3 and ops[three[-1]] == "Conv"
    assert ops[three[0]] == "Mul"  # the input normalisation is part of the stem
    two = stem_nodes(graph, 2)
    assert [ops[n] for n in two if ops[n] == "Conv"] == ["Conv"] * 2 and ops[two[-1]] == "Conv"
    assert stem_nodes(graph, 0) == []


def test_int8_model_keeps_the_stem_float_and_quantizes_the_rest(tmp_path):
    """Default settings: the stem's convs keep float weights and run on a float input, every later weighted
    node reads int8 weights; ``float_stem=0`` quantizes them all. Both models stay close to float32."""
    import onnxruntime as ort

    from cvkeras.export.onnx.quantize import quantize_int8
    from cvkeras.export.settings import QuantSettings

    stem_onnx_net(tmp_path / "net.onnx")
    rng = np.random.default_rng(1)
    calib = rng.uniform(0, 255, (16, 3, 16, 16)).astype(np.float32)
    report: dict = {}
    stem = quantize_int8(tmp_path / "net.onnx", calib, QuantSettings(gptq_images=0, bias_correction_images=0),
                         report=report)
    none = quantize_int8(tmp_path / "net.onnx", calib,
                         QuantSettings(float_stem=0, gptq_images=0, bias_correction_images=0), report=(r0 := {}))
    assert len(report["float_stem"]) == 3 and r0["float_stem"] == []

    assert len(float_weight_nodes(stem)) == 3 and float_weight_nodes(none) == []
    assert not [n for n in stem.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]
    x = rng.uniform(0, 255, (8, 3, 16, 16)).astype(np.float32)
    ref = ort.InferenceSession(str(tmp_path / "net.onnx")).run(None, {"x": x})[0]
    for proto in (stem, none):
        out = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
        assert np.abs(out - ref).max() < 0.1


def _branching_net(path) -> None:
    """conv1, maxpool, then {convA1 (4 ch, the narrowest: the cut) -> convA2; convB shortcut} -> Add -> head.
    convA1's input is also read by convB, which is not in the stem, so it arrives quantized."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    wa1 = rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32)
    wa1[0] *= 100  # channel ranges 100x apart: per-tensor int8 weights would wreck channels 1-3
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["mp"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["mp", "wa1", "ba1"], ["ca1"], name="convA1"),
        helper.make_node("Relu", ["ca1"], ["ra1"], name="reluA1"),
        helper.make_node("Conv", ["mp", "wb", "bb"], ["cb"], name="convB"),
        helper.make_node("Conv", ["ra1", "wa2", "ba2"], ["ca2"], name="convA2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["ca2", "cb"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w5", "b5"], ["y"], name="head", transB=1),
    ]
    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), numpy_helper.from_array(wa1, "wa1"), init("ba1", 4),
             init("wb", 8, 8, 1, 1), init("bb", 8), init("wa2", 8, 4, 3, 3), init("ba2", 8), init("w5", 4, 8),
             init("b5", 4)]
    save_onnx_net(path, "branch", nodes, inits)


def test_a_stem_conv_reading_a_shared_quantized_tensor_stays_float_when_onnxruntime_loads_it(tmp_path):
    """The cut conv's input is quantized for the shortcut too; ONNX Runtime's WeightBiasQuantization would
    quantize its float weights per tensor at load unless its input is rewired (keep_float_inputs)."""
    import onnxruntime as ort

    from cvkeras.export.onnx.quantize import quantize_int8
    from cvkeras.export.settings import QuantSettings

    _branching_net(tmp_path / "net.onnx")
    rng = np.random.default_rng(1)
    report: dict = {}
    q = quantize_int8(tmp_path / "net.onnx", rng.uniform(-1, 1, (8, 3, 16, 16)).astype(np.float32),
                      QuantSettings(gptq_images=0, bias_correction_images=0), report=report)
    assert len(report["float_stem"]) == 2  # conv1 and the narrow convA1; convB is not before the cut
    onnx.save(q, tmp_path / "q.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    ort.InferenceSession(str(tmp_path / "q.onnx"), so, providers=["CPUExecutionProvider"])
    assert len(float_weight_nodes(onnx.load(tmp_path / "loaded.onnx"))) == 2


def test_stem_leaves_out_unnamed_nodes_and_squeeze_excite_convs(tmp_path):
    """quantize_static excludes by name, so an unnamed node must never be listed (it would exclude every
    unnamed node); a conv with a 1x1 output map is never the cut."""
    from cvkeras.export.onnx.quantize import preprocess, stem_nodes

    stem_onnx_net(tmp_path / "net.onnx")
    model = onnx.load(tmp_path / "net.onnx")
    for node in model.graph.node:
        node.name = ""
    onnx.save(model, tmp_path / "unnamed.onnx")
    preprocess(tmp_path / "unnamed.onnx", tmp_path / "pre.onnx")
    assert "" not in stem_nodes(onnx.load(tmp_path / "pre.onnx").graph, 3)
    preprocess(tmp_path / "net.onnx", tmp_path / "pre2.onnx")
    graph = onnx.load(tmp_path / "pre2.onnx").graph
    ops = {n.name: n.op_type for n in graph.node}
    for v in graph.value_info:  # make the projection's output a 1x1 map: it must stop being the cut
        if v.name == next(n.output[0] for n in graph.node if n.name == stem_nodes(graph, 3)[-1]):
            for d in v.type.tensor_type.shape.dim[2:]:
                d.dim_value = 1
    assert [ops[n] for n in stem_nodes(graph, 3) if ops[n] == "Conv"] == ["Conv"] * 2

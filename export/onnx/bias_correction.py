"""Empirical bias correction of a static QDQ int8 ONNX model (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", section 4.2, the empirical variant).

Rounding a conv's weights to int8 shifts the mean of its output: for a channel with weights ``W`` and
rounded weights ``W + dW`` the output moves by ``dW . E[x]``, which does not average out when the input is
non-negative (everything after a ReLU) and a kernel has few weights (a 3x3 depthwise channel has 9). Small
nets carry such shifts through every layer; in MobileNet alpha 0.25 they flipped the top-1 class of 6.6 %
of the photos (per-channel weights, exact kernels), not a few culprit layers but all of them together.

The fix moves each shift into the layer's bias, where int8 inference adds it for free: for every
Conv/Gemm with a quantized (int32) bias, in graph order, the per-channel mean of its output over
calibration images is measured in the float model and in the QDQ model (ONNX Runtime runs the QDQ graph
unfused, in float, with the corrections of all earlier layers already in), and the difference, in units
of the bias's own scale, is subtracted from the int32 bias. Layer by layer, so that each layer absorbs only
its own shift; correcting every layer from one measurement overshoots (downstream layers also absorb the
upstream shift that the upstream corrections remove) and diverged on MobileNet.

Only the int8 model changes: weights, activation ranges and the float model stay as they were. Layers kept
in float (repair) have float biases and are left alone.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from cvkeras.export.fitting import BiasCorrectionResult, correct_bias, spread
from cvkeras.export.settings import DEFAULT_FIT_IMAGES

#: Node types whose biases are corrected (their output channel axis is 1 in ONNX).
OPS = ("Conv", "Gemm")


def session(proto, optimize: bool):
    """A one-thread CPU session on ``proto``; ``optimize`` False runs the QDQ graph as written."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.inter_op_num_threads = 1
    # Exact int8 arithmetic where fused kernels run at all (see cvkeras.serving.predictor).
    opts.add_session_config_entry("session.x64quantprecision", "1")
    if not optimize:  # QDQ graph as written: DequantizeLinear -> float op -> QuantizeLinear
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def with_outputs(proto, tensors: list[str]):
    """A copy of ONNX model ``proto`` that also outputs the float ``tensors`` (to read activations)."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    have = {o.name for o in m.graph.output} | {i.name for i in m.graph.input}
    for t in tensors:
        if t not in have:
            m.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    return m


def channel_means(proto, tensors: list[str], images: np.ndarray, optimize: bool,
                  batch: int = 32) -> list[np.ndarray]:
    """Per-channel (axis 1) means of the float ``tensors`` of ``proto`` over ``images`` (float32 NHWC)."""
    sess = session(with_outputs(proto, tensors), optimize)
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed > 0:  # a static batch size: feed exactly that many
        batch = fixed
    sums = [np.zeros(0)] * len(tensors)
    for start in range(0, len(images), batch):
        outs = sess.run(tensors, {name: images[start : start + batch].astype(np.float32)})
        for k, o in enumerate(outs):
            axes = tuple(a for a in range(o.ndim) if a != 1)
            s = o.astype(np.float64).mean(axis=axes) * len(o)
            sums[k] = s if start == 0 else sums[k] + s
    return [s / len(images) for s in sums]


def prefix(proto, tensor: str):
    """The part of ``proto`` that computes ``tensor`` (its only output): later layers are not run."""
    import onnx
    from onnx import helper

    producer = {o: n for n in proto.graph.node for o in n.output}
    needed, stack = set(), [tensor]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(node.input)
    nodes = [n for n in proto.graph.node if id(n) in needed]  # graph order is topological
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, proto.graph.name, [i for i in proto.graph.input if i.name in used],
                              [helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)],
                              [t for t in proto.graph.initializer if t.name in used])
    sub = helper.make_model(graph, opset_imports=proto.opset_import)
    sub.ir_version = proto.ir_version
    return sub


def correct_biases(float_model: str | os.PathLike | Any, qdq, images: np.ndarray,
                   max_images: int = DEFAULT_FIT_IMAGES) -> BiasCorrectionResult:
    """Correct the int32 biases of QDQ model ``qdq`` (a ModelProto, edited in place) layer by layer.

    ``float_model``: the float graph ``qdq`` was quantized from (path or ModelProto), whose Conv/Gemm nodes
    have the same names. ``images``: calibration images (uint8 or float32 NHWC, the model's input);
    ``max_images`` of them, evenly spread, are used.
    """
    import onnx
    from onnx import numpy_helper

    t0 = time.perf_counter()
    f = float_model if isinstance(float_model, onnx.ModelProto) else onnx.load(str(float_model))
    f_out = {n.name: n.output[0] for n in f.graph.node if n.op_type in OPS}
    init = {t.name: t for t in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    targets = []
    for node in qdq.graph.node:
        if node.op_type not in OPS or node.name not in f_out or len(node.input) < 3:
            continue
        dq = producer.get(node.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in init or dq.input[1] not in init:
            continue  # a float bias (layer kept float) or none
        bias = init[dq.input[0]]
        if bias.data_type != onnx.TensorProto.INT32:
            continue
        scale = numpy_helper.to_array(init[dq.input[1]]).astype(np.float64)
        targets.append((node, f_out[node.name], bias, scale))
    x = spread(images, max_images).astype(np.float32)
    result = BiasCorrectionResult(images=len(x), seconds=0.0)
    if not targets:
        return result
    float_means = channel_means(f, [t[1] for t in targets], x, optimize=True)
    for (node, _, bias, scale), want in zip(targets, float_means, strict=True):
        got = channel_means(prefix(qdq, node.output[0]), [node.output[0]], x, optimize=False)[0]
        fixed, shift = correct_bias(numpy_helper.to_array(bias), scale, got, want, node.name, node.op_type)
        bias.CopyFrom(numpy_helper.from_array(fixed, bias.name))
        result.layers.append(shift)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result

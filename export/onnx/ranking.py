"""The ONNX repair's ranking: which weighted nodes of ``model_int8.onnx`` lose most to quantization, worst
first (``cvkeras.export.repair.search`` then keeps the fewest of them in float).

Measured with ``onnxruntime.quantization.qdq_loss_debug`` on calibration images (never on the fidelity
images the gate is decided on). Both the float and the QDQ model are made to output every intermediate
tensor; a weighted node (Conv, Gemm, MatMul) is charged the noise its output activation gets from its
QuantizeLinear/DequantizeLinear pair (through a following Relu/Clip, which the quantizer fuses) plus the
noise of its own int8 weights, as noise-to-signal power ratios (SQNR in dB is ``-10 log10`` of it).
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path

import numpy as np

from cvkeras.export.errors import quiet
from cvkeras.export.repair import LayerError
from cvkeras.serving.formats import INPUT_NAME

#: ONNX node types whose weights are quantized: the candidates for staying float.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Activations the quantizer fuses into the preceding node (its QDQ pair sits after them).
FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid", "HardSwish")


def _nsr(signal: float, noise: float) -> float:
    return noise / max(signal, 1e-30)


def _clip_bounds(graph) -> dict[str, tuple[float, float]]:
    """Output tensor -> (low, high) of every Relu/Clip of a float graph with constant bounds.

    The quantizer drops a Relu/Clip that follows a quantized node and lets the QuantizeLinear of its output
    saturate instead, so ``qdq_loss_debug``'s "pre_qdq" value of that tensor is the node's output *before*
    the activation. Its difference from "post_qdq" would count the activation itself (every negative
    pre-activation, everything above 6) as quantization noise and rank layers by how much their Relu6
    cuts off; the activation is applied to "pre_qdq" first.
    """
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    out: dict[str, tuple[float, float]] = {}
    for node in graph.node:
        if node.op_type == "Relu":
            out[node.output[0]] = (0.0, np.inf)
        elif node.op_type == "Clip":
            attrs = {a.name: a.f for a in node.attribute}  # opset < 11
            lo, hi = attrs.get("min", -np.inf), attrs.get("max", np.inf)
            ins = list(node.input) + ["", ""]
            if (ins[1] and ins[1] not in consts) or (ins[2] and ins[2] not in consts):
                continue  # bounds computed at run time: leave the tensor as measured
            lo = float(consts[ins[1]]) if ins[1] else lo
            hi = float(consts[ins[2]]) if ins[2] else hi
            out[node.output[0]] = (lo, hi)
    return out


def rank_onnx_layers(pre_path: str | os.PathLike, qdq_path: str | os.PathLike, images: np.ndarray,
                     input_name: str = INPUT_NAME, already_float: Collection[str] = ()) -> list[LayerError]:
    """Weighted nodes of the pre-processed float graph ``pre_path``, worst quantization error first.

    ``qdq_path``: the fully quantized model made from ``pre_path`` with the quantizer's own tensor names
    (``quantize_int8(..., compact=False)``). ``images``: float32 NHWC inputs (a few calibration images).
    ``already_float``: nodes ``qdq_path`` keeps float anyway (its stem), left out of the ranking.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import (
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    postfix = "_ReshapedSavedOutput"  # qdq_loss_debug's suffix of the saved tensors
    bounds = _clip_bounds(onnx.load(str(pre_path)).graph)
    signal: dict[str, float] = defaultdict(float)
    noise: dict[str, float] = defaultdict(float)
    with tempfile.TemporaryDirectory(prefix="cvkeras-qdqdebug-") as tmp:
        aug_f, aug_q = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        with quiet():
            modify_model_output_intermediate_tensors(str(pre_path), str(aug_f))
            modify_model_output_intermediate_tensors(str(qdq_path), str(aug_q))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        sessions = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                    for p in (aug_f, aug_q)]
        names = [[o.name for o in s.get_outputs()] for s in sessions]
        for x in images:
            feed = {input_name: np.asarray(x, np.float32)[None]}
            outs = [{n[: -len(postfix)]: [v] for n, v in zip(nm, s.run(None, feed), strict=True)
                     if n.endswith(postfix)} for s, nm in zip(sessions, names, strict=True)]
            for name, m in create_activation_matching(outs[1], outs[0]).items():
                pre_q, post_q = np.asarray(m["pre_qdq"][0], np.float64), np.asarray(m["post_qdq"][0], np.float64)
                if name in bounds:  # the quantizer removed this Relu/Clip: its Q saturates in its place
                    pre_q = np.clip(pre_q, *bounds[name])
                signal[name] += float(np.sum(pre_q ** 2))
                noise[name] += float(np.sum((pre_q - post_q) ** 2))
        with quiet():
            weights = create_weight_matching(str(pre_path), str(qdq_path))
    act = {n: _nsr(signal[n], noise[n]) for n in signal}
    weight = {}
    for n, m in weights.items():  # compute_weight_error rejects 0-d tensors: the same ratio, by hand
        w, dq = np.asarray(m["float"], np.float64).ravel(), np.asarray(m["dequantized"], np.float64).ravel()
        weight[n] = _nsr(float(np.sum(w ** 2)), float(np.sum((w - dq) ** 2)))
    graph = onnx.load(str(pre_path)).graph
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for i in node.input:
            consumers[i].append(node)
    ranked = []
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS or not node.name or node.name in already_float:
            continue
        tensors, t, group = [node.output[0]], node.output[0], [node.name]
        while len(consumers[t]) == 1 and consumers[t][0].op_type in FUSED_ACTIVATIONS:
            group.append(consumers[t][0].name)
            t = consumers[t][0].output[0]
            tensors.append(t)
        # The weight's error only: a bias is int32 at scale s_in * s_w, finer than the accumulator's LSB, so
        # its rounding is negligible against the output -- but relative to its own power it is not: a bias
        # of ~1e-7 (folded BatchNorm) rounds to 0, noise/signal 1.0, and ranked every such layer first.
        nsr = max(act.get(t, 0.0) for t in tensors) + weight.get(node.input[1], 0.0)
        ranked.append(LayerError(node.name, node.op_type, float(nsr), "noise/signal", group))
    ranked.sort(key=lambda r: -r.error)
    return ranked

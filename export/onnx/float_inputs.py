"""Layers an int8 ONNX model keeps in float must stay float when ONNX Runtime loads it: the rewiring of their
inputs that keeps its ``WeightBiasQuantization`` optimizer from quantizing their weights per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cvkeras.export.errors import ConversionError

#: Node types whose float weights ONNX Runtime's ``WeightBiasQuantization`` optimizer quantizes.
WBQ_OPS = ("Conv", "ConvTranspose", "Gemm")


def _input_channels(node, weight: np.ndarray) -> int | None:
    """Size of axis 1 of ``node``'s activation input, from its weight's shape (None when it cannot tell)."""
    attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
    if node.op_type == "Conv" and weight.ndim >= 2:
        return int(weight.shape[1]) * int(attrs.get("group", 1))
    if node.op_type == "ConvTranspose" and weight.ndim >= 1:
        return int(weight.shape[0])
    if node.op_type == "Gemm" and weight.ndim == 2 and not attrs.get("transA", 0):
        return int(weight.shape[1] if attrs.get("transB", 0) else weight.shape[0])
    return None


def keep_float_inputs(proto, exclude: Sequence[str]) -> list[str]:
    """Keep the excluded Conv/ConvTranspose/Gemm nodes of a QDQ model float at run time too; edits ``proto``.

    ``nodes_to_exclude`` leaves such a node with float weights but, when its neighbour is quantized, its
    activation input still comes from a per-tensor DequantizeLinear. ONNX Runtime's ``WeightBiasQuantization``
    optimizer (basic level, on by default) takes exactly that pattern as an unquantized QDQ node and
    quantizes its float weights to **per-tensor** int8 when the session loads: a depthwise conv whose
    channels differ in range by 100x loses most of its weights, and the "float" layer ends up the worst
    int8 layer of the model (MobileNet: agreement 92 % -> 48 % with one such layer). Each such node gets its
    own DequantizeLinear with the same scale repeated per channel (axis 1), numerically identical but not
    per-tensor, which the optimizer leaves alone. Returns the names of the nodes it rewired.

    Raises:
        ConversionError: an excluded node's channel count cannot be told, so it would not stay float.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    init = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    wanted = set(exclude)
    done = []
    for node in list(graph.node):
        if node.name not in wanted or node.op_type not in WBQ_OPS or len(node.input) < 2:
            continue
        dq = producer.get(node.input[0])
        weight = init.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or weight is None or dq.input[1] not in init:
            continue  # float input, or a weight the optimizer does not quantize: nothing to undo
        scale = numpy_helper.to_array(init[dq.input[1]])
        if scale.size != 1:
            continue  # already per-axis: the optimizer skips it
        channels = _input_channels(node, numpy_helper.to_array(weight))
        if channels is None:
            raise ConversionError("model_int8.onnx", f"cannot keep {node.op_type} {node.name} in float "
                                                     "(unknown input channels); exclude fewer layers")
        zp = (numpy_helper.to_array(init[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in init
              else np.zeros((), np.uint8))
        names = [f"{node.name}_float_in_{k}" for k in ("scale", "zero_point", "x")]
        graph.initializer.extend([
            numpy_helper.from_array(np.full(channels, scale.item(), scale.dtype), names[0]),
            numpy_helper.from_array(np.full(channels, zp.item(), zp.dtype), names[1])])
        dq_node = helper.make_node("DequantizeLinear", [dq.input[0], names[0], names[1]], [names[2]],
                                   name=f"{node.name}_float_in", axis=1)
        graph.node.insert(list(graph.node).index(node), dq_node)
        node.input[0] = names[2]
        done.append(node.name)
    return done

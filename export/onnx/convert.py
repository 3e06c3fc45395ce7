"""Keras -> ONNX through tf2onnx: one float32 input ``image`` (NHWC, dynamic batch), one output ``probs``.

Named ``to_onnx`` so that nothing in this package can ever be mistaken for the ``onnx`` package.
"""

from __future__ import annotations

import os

from cvkeras.export.errors import ConversionError, quiet
from cvkeras.serving.errors import first_line
from cvkeras.serving.formats import INPUT_NAME, OUTPUT_NAME

#: ONNX Runtime's graph optimiser knows every fusion MobileNet/EfficientNet graphs need at this opset.
DEFAULT_OPSET = 17


def _rename_output(model, new: str) -> None:
    old = model.graph.output[0].name
    if old == new:
        return
    for node in model.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    model.graph.output[0].name = new


def keras_to_onnx(model, opset: int = DEFAULT_OPSET, artifact: str = "model.onnx"):
    """Convert a float32 Keras classifier to a checked ``onnx.ModelProto``.

    Raises:
        ConversionError: tf2onnx cannot convert an op, or the result fails ``onnx.checker``.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    h, w = (int(d) for d in model.input_shape[1:3])
    spec = (tf.TensorSpec((None, h, w, 3), tf.float32, name=INPUT_NAME),)
    try:
        with quiet():
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=int(opset))
    except Exception as exc:  # tf2onnx raises ValueError/RuntimeError/KeyError for unsupported graphs
        raise ConversionError(artifact, f"tf2onnx cannot convert this model ({first_line(exc)}); "
                                        "try another --opset or --format tflite") from None
    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise ConversionError(artifact, f"expected one input and one output, got {len(proto.graph.input)} "
                                        f"and {len(proto.graph.output)}; export a single-output classifier")
    unknown = sorted({n.op_type for n in proto.graph.node if n.domain in ("", "ai.onnx")
                      and not onnx.defs.has(n.op_type, int(opset), "")})
    if unknown:
        raise ConversionError(artifact, f"tf2onnx cannot convert op {', '.join(unknown)} (not in ONNX opset "
                                        f"{opset}); try --format tflite")
    _rename_output(proto, OUTPUT_NAME)
    compact_names(proto)
    check(proto, artifact)
    return proto


def compact_names(proto) -> None:
    """Give nodes and inner tensors short names (``n12``, ``t34``); the graph's input/output keep theirs.

    TensorFlow scopes plus the quantizer's suffixes make names ~100 bytes each: 13% of an int8 file.
    Graphs with subgraphs (If/Loop) are left alone.
    """
    import onnx

    graph = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node
           for a in n.attribute):
        return
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        return mapping.setdefault(name, f"t{len(mapping)}")

    for init in graph.initializer:
        init.name = short(init.name)
    for i, node in enumerate(graph.node):
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
        node.name = f"n{i}"
    for info in graph.value_info:
        info.name = short(info.name)


def check(proto, artifact: str) -> None:
    """Run ``onnx.checker`` (with shape inference) on a model; ConversionError when it is invalid."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        raise ConversionError(artifact, f"the converted graph is not valid ONNX ({first_line(exc)}); "
                                        "try another --opset") from None


def load(path: str | os.PathLike):
    """The ``onnx.ModelProto`` in ``path``."""
    import onnx

    return onnx.load(str(path))


def save(proto, path: str | os.PathLike) -> None:
    """Serialise a model to ``path`` (call through ``atomic_write``)."""
    with open(path, "wb") as fh:
        fh.write(proto.SerializeToString())


#: Ops between the classifier's MatMul/Gemm and the model output: bias, softmax, casts and (de)quantization.
_HEAD_PASS = {"Add", "Softmax", "Identity", "Cast", "QuantizeLinear", "DequantizeLinear", "Reshape", "Flatten"}


def add_features_output(proto, dim: int, artifact: str = "model.onnx") -> None:
    """Make the classifier head's input (the pooled features) a second graph output ``features`` (N, dim)
    float32, for the unknown detector (:mod:`cvkeras.serving.unknown`); idempotent.

    Found by walking back from the ``probs`` output through the head's bias, softmax, casts and
    (de)quantization to its MatMul/Gemm, whose data input it is; a Cast to float32 covers fp16 graphs.
    """
    from onnx import TensorProto, helper

    from cvkeras.serving.unknown import FEATURES_NAME

    graph = proto.graph
    if any(o.name == FEATURES_NAME for o in graph.output):
        return
    producer = {out: node for node in graph.node for out in node.output}
    node = producer.get(graph.output[0].name)
    while node is not None and node.op_type in _HEAD_PASS:
        node = producer.get(node.input[0])
    if node is None or node.op_type not in ("MatMul", "Gemm"):
        raise ConversionError(artifact, "cannot find the classifier's MatMul/Gemm to export the features of "
                                        "the unknown detector; export with --unknown off")
    graph.node.append(helper.make_node("Cast", [node.input[0]], [FEATURES_NAME], to=TensorProto.FLOAT,
                                       name="features_cast"))
    graph.output.append(helper.make_tensor_value_info(FEATURES_NAME, TensorProto.FLOAT, ["N", int(dim)]))

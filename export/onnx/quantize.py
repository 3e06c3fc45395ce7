"""ONNX reduced precision: static int8 (ONNX Runtime, QDQ, per-channel weights) and float16 weights.

int8: ``quant_pre_process`` (shape inference + graph optimisation) first, then ``quantize_static`` with
activations calibrated on the run's own training images. The classifier stays float by default (its
Gemm/MatMul, bias and Softmax, :func:`head_nodes`): quantized logits tie whenever the top two differ by less
than one int8 step (measured: a near-tie model kept 2 of 32 top-1 answers), and probabilities are what
callers compare and threshold. Its input is the pooled int8 features, so it costs one small float layer.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.export.calibration import METHODS, ort_data_reader
from cvkeras.export.errors import ConversionError, ExportError, converting, first_line
from cvkeras.export.onnx.convert import check, compact_names, quiet
from cvkeras.serving.errors import quote


@dataclass(frozen=True)
class QuantSettings:
    """Knobs of ONNX static int8 quantization (recorded in the artifact's metadata); ``gptq_images`` and
    ``bias_correction_images`` apply to ``model_int8.tflite`` too (``cvkeras.export.tflite.steps.fit_rounding``)."""

    calibration: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = True
    # 7-bit weights. On x86 without VNNI (AVX2, AVX-512F) ONNX Runtime's U8S8 kernels add pairs of u8*s8
    # products in saturating int16: measured here, full int8 agreement 91.8 % (MobileNet a0.25) and 47 %
    # (the tiny test net) against 95.0 % and 100 % with the session option session.x64quantprecision=1
    # (exact U8U8 kernels, same file). That option, on the session that runs the model, is the fix;
    # reduce_range avoids the overflow in the file instead, at the cost of one bit of every weight.
    reduce_range: bool = False
    # uint8 activations (U8S8): ONNX Runtime fuses every QDQ group into QLinear* kernels on x86; int8
    # activations (S8S8) left 15 convs in float plus 31 transposes and ran slower than float32.
    activation_type: str = "uint8"  # uint8 (U8S8) | int8 (S8S8)
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    exclude_softmax: bool = True
    # The classifier layer (last Gemm/MatMul and its bias before the output Softmax) stays float32 too, so
    # the logits are not rounded to int8 steps: top-1 survives near-ties (see the module docstring).
    float_head: bool = True
    # The stem stays float32 (see :func:`stem_nodes`): the input normalisation and the first convs, up to the
    # narrowest of the first ``float_stem`` convs' outputs. ONNX Runtime's int8 kernels are slow on a 3-channel
    # input and on 8-16-channel tensors at full resolution: measured here (x86 VNNI, batch 1) with 2 of
    # MobileNet a0.25's convs float, int8/float32 latency went 1.05 -> 0.73, and with 3 of MobileNetV2
    # a0.5's, 0.78 -> 0.62, for a few hundred float weights (0: quantize the stem too).
    float_stem: int = 3
    # GPTQ weight rounding (cvkeras.export.onnx.weight_rounding): int8 weights rounded to minimise each layer's output
    # error on this many calibration images instead of to nearest (0: off). Scales and ranges unchanged.
    gptq_images: int = 128
    # Empirical bias correction (cvkeras.export.onnx.bias_correction): each int32 bias absorbs its layer's mean output
    # shift from int8 rounding, measured layer by layer on this many calibration images (0: off).
    bias_correction_images: int = 128

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if name not in table:
        raise ExportError(f"unknown calibration method {quote(name)}; choose from {', '.join(METHODS)}")
    return table[name]


def preprocess(float_model: str | os.PathLike, dst: str | os.PathLike,
               artifact: str = "model_int8.onnx") -> None:
    """``quant_pre_process`` (shape inference, graph optimisation) of ``float_model`` into ``dst``.

    Node names of ``dst`` are the ones ``exclude`` of :func:`quantize_int8` refers to.
    """
    from onnxruntime.quantization import quant_pre_process

    try:
        with quiet():
            quant_pre_process(str(float_model), str(dst))
    except Exception as exc:  # onnxruntime.quantization raises many types
        raise ConversionError(artifact, f"onnxruntime pre-processing failed ({first_line(exc)}); "
                                        "export without --int8") from None


def quantize_int8(float_model: str | os.PathLike, images: np.ndarray,
                  settings: QuantSettings = QuantSettings(), artifact: str = "model_int8.onnx",
                  exclude: Sequence[str] = (), preprocessed: bool = False, compact: bool = True,
                  report: dict[str, Any] | None = None):
    """Static QDQ int8 quantization of the float32 ONNX file ``float_model``; returns the ModelProto.

    ``exclude``: names of nodes (of the pre-processed graph) kept in float32, besides the Softmax.
    ``preprocessed``: ``float_model`` is already the output of :func:`preprocess`. ``compact`` False keeps
    the quantizer's tensor names (``qdq_loss_debug`` matches activations by them). ``report``: gets
    ``"float_stem"`` (the weighted nodes of the stem kept float, see :func:`stem_nodes`), ``"gptq"`` and
    ``"bias_correction"``, summaries of :func:`cvkeras.export.onnx.weight_rounding.round_weights` and
    :func:`cvkeras.export.onnx.bias_correction.correct_biases` (when they ran; GPTQ first, as each changes the biases'
    shifts).

    Raises:
        ConversionError: pre-processing, calibration or quantization failed.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    method = _method(settings.calibration)
    act_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}.get(settings.activation_type)
    if act_type is None:
        raise ExportError(f"unknown activation type {quote(settings.activation_type)}; choose int8 or uint8")
    with tempfile.TemporaryDirectory(prefix="cvkeras-quant-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        if preprocessed:
            pre = Path(float_model)
        else:
            preprocess(float_model, pre, artifact)
        with converting(artifact, "onnxruntime int8 quantization",
                        "try --calibration minmax or export without --int8"):
            with quiet():
                graph = onnx.load(str(pre)).graph
                stem = stem_nodes(graph, settings.float_stem)
                head = head_nodes(graph) if settings.float_head else []
                keep_float = ([n.name for n in graph.node if n.op_type == "Softmax"]
                              if settings.exclude_softmax else []) + stem + head + list(exclude)
                quantize_static(
                    str(pre), str(out), ort_data_reader(images, graph.input[0].name),
                    quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
                    reduce_range=settings.reduce_range, activation_type=act_type, weight_type=QuantType.QInt8,
                    calibrate_method=method, nodes_to_exclude=keep_float,
                    extra_options={"ActivationSymmetric": settings.activation_symmetric,
                                   "WeightSymmetric": settings.weight_symmetric},
                )
            proto = onnx.load(str(out))
            if report is not None:  # the stem's weighted nodes: float32 in the file besides any repair's
                in_stem = set(stem)
                report["float_stem"] = [n.name for n in graph.node if n.name in in_stem and n.op_type in _WBQ_OPS]
                report["float_head"] = [n for n in head if n]
            _fit_rounding(pre, proto, images, settings, artifact, report)
            keep_float_inputs(proto, [*stem, *head, *exclude])  # a float conv may read a tensor quantized for others
            if compact:
                compact_names(proto)
    check(proto, artifact)
    return proto


def head_nodes(graph) -> list[str]:
    """Names of the classifier nodes: each graph output's Softmax and the Gemm/MatMul (with its bias Add)
    that feeds it. Empty when the graph does not end that way."""
    producer = {o: n for n in graph.node for o in n.output}
    names: list[str] = []
    for out in graph.output:
        node = producer.get(out.name)
        if node is None or node.op_type != "Softmax":
            continue
        names.append(node.name)
        node = producer.get(node.input[0])
        if node is not None and node.op_type == "Add":
            adds = [producer.get(i) for i in node.input]
            mm = next((a for a in adds if a is not None and a.op_type in ("MatMul", "Gemm")), None)
            if mm is not None:
                names += [node.name, mm.name]
        elif node is not None and node.op_type in ("Gemm", "MatMul"):
            names.append(node.name)
    return [n for n in names if n]


def stem_nodes(graph, convs: int) -> list[str]:
    """Names of the nodes of ``graph`` (pre-processed, in topological order) that form its float stem.

    The stem ends after whichever of the first ``convs`` Conv nodes has the fewest output elements (the
    later one on a tie): everything before it, the input normalisation included, stays float, and the
    one int8 boundary falls on the narrowest tensor, where re-quantizing costs least. MobileNetV2's
    first three convs end in its 8-channel projection; MobileNet v1's first two in the depthwise output.
    A conv with a 1x1 output map (squeeze-excite) is never the cut. Nodes without a name cannot be
    excluded by ``quantize_static`` and are left out. Empty when ``convs`` is 0 or the graph has no Conv.
    """
    if convs <= 0:
        return []
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.output)}
    nodes = list(graph.node)
    conv_at = [i for i, n in enumerate(nodes) if n.op_type == "Conv"][:convs]
    if not conv_at:
        return []

    def size(i: int) -> float:
        dims = shapes.get(nodes[i].output[0], [])[1:]  # per image: the batch axis is symbolic
        if not dims or any(d <= 0 for d in dims) or int(np.prod(dims[1:])) <= 1:
            return float("inf")  # unknown, or a 1x1 map (a squeeze-excite conv): never the cut
        return float(np.prod(dims))

    cut = min(reversed(conv_at), key=size)  # reversed: min keeps the first of equals, the later conv
    return [n.name for n in nodes[: cut + 1] if n.name]  # quantize_static excludes by name


def weight_range(settings: QuantSettings) -> tuple[int, int]:
    """The int8 weight range ONNX Runtime's quantizer uses with these settings (+-64 with ``reduce_range``)."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, settings.reduce_range, settings.weight_symmetric)
    return int(qmin), int(qmax)


def _fit_rounding(pre: Path, proto, images: np.ndarray, settings: QuantSettings, artifact: str,
                  report: dict[str, Any] | None) -> None:
    """GPTQ weight rounding, then bias correction, of the fresh QDQ model ``proto`` (edited in place)."""
    from cvkeras.export.onnx.bias_correction import correct_biases
    from cvkeras.export.onnx.weight_rounding import round_weights

    steps = (("gptq", settings.gptq_images, "GPTQ weight rounding",
              lambda n: round_weights(pre, proto, images, n, qrange=weight_range(settings))),
             ("bias_correction", settings.bias_correction_images, "int8 bias correction",
              lambda n: correct_biases(pre, proto, images, n).summary()))
    for key, n, what, step in steps:
        if n <= 0:
            continue
        with converting(artifact, what, "export without --int8"):
            done = step(n)
        if report is not None:
            report[key] = done


#: Node types whose float weights ONNX Runtime's ``WeightBiasQuantization`` optimizer quantizes.
_WBQ_OPS = ("Conv", "ConvTranspose", "Gemm")


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
        if node.name not in wanted or node.op_type not in _WBQ_OPS or len(node.input) < 2:
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


def convert_fp16(proto, artifact: str = "model_fp16.onnx"):
    """float16 weights and compute, float32 input and output (``keep_io_types``)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)  # the converter edits its argument in place
    try:
        with quiet():
            half = convert_float_to_float16(copy, keep_io_types=True)
    except Exception as exc:  # converter internals
        raise ConversionError(artifact, f"float16 conversion failed ({first_line(exc)}); "
                                        "export without --fp16") from None
    _toposort(half.graph)  # keep_io_types appends its input casts at the end of the node list
    compact_names(half)
    check(half, artifact)
    return half


def _toposort(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (stable)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:  # a cycle or a dangling input: leave the rest for the checker to name
            ordered += pending
            break
        for n in ready:
            available.update(n.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for dst, src in zip(copies, ordered, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)

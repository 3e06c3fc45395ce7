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
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.export.calibration import ort_data_reader
from cvkeras.export.errors import ConversionError, ExportError, converting, quiet
from cvkeras.export.fitting import fit_rounding
from cvkeras.export.onnx.convert import check, compact_names
from cvkeras.export.onnx.float_inputs import WBQ_OPS, keep_float_inputs
from cvkeras.export.settings import METHODS, QuantSettings
from cvkeras.serving.errors import first_line, quote


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
    :func:`cvkeras.export.onnx.bias_correction.correct_biases` (when they ran: :func:`fit`).

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
                report["float_stem"] = [n.name for n in graph.node if n.name in in_stem and n.op_type in WBQ_OPS]
                report["float_head"] = [n for n in head if n]
            fit(pre, proto, images, settings, artifact, report)
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


def fit(pre: Path, proto, images: np.ndarray, settings: QuantSettings, artifact: str,
        report: dict[str, Any] | None) -> None:
    """GPTQ weight rounding, then bias correction, of the fresh QDQ model ``proto`` (edited in place) against
    the float graph ``pre``: :func:`cvkeras.export.fitting.fit_rounding` with the ONNX steps."""
    from cvkeras.export.onnx.bias_correction import correct_biases
    from cvkeras.export.onnx.weight_rounding import round_weights

    qrange = weight_range(settings)
    fit_rounding(proto, settings, lambda p, n: (p, round_weights(pre, p, images, n, qrange=qrange)),
                 lambda p, n: (p, correct_biases(pre, p, images, n).summary()), artifact, report)

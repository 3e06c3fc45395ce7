"""Repair an int8 model that misses its gate: keep the fewest layers in float32 until the gate holds.

1. Measure each layer's quantization error on calibration images (never on the fidelity images the gate
   is decided on):

   * ONNX: ``onnxruntime.quantization.qdq_loss_debug``. Both the float and the QDQ model are made to
     output every intermediate tensor; a weighted node (Conv, Gemm, MatMul) is charged the noise its
     output activation gets from its QuantizeLinear/DequantizeLinear pair (through a following
     Relu/Clip, which the quantizer fuses) plus the noise of its own int8 weights, as noise-to-signal
     power ratios (SQNR in dB is ``-10 log10`` of it).
   * TFLite: ``tf.lite.experimental.QuantizationDebugger`` (NumericVerify ops compare each quantized op
     with its float twin on the same input): RMSE of the difference over the output's quantization
     scale, the "rmse/scale" of TensorFlow's quantization debugger guide (0.29 is pure rounding).

2. Rank layers by that error, worst first, and keep the top ``k`` in float: ``k`` doubles (1, 2, 4 ...)
   until the candidate holds, then a bisection finds the smallest holding ``k``. Candidates are checked on
   the held-back training images only (top-1 agreement >= ``ExportOptions.search_agreement()``), never on
   the validation images: the search's choice is then judged once, from its files, on validation, like any
   artifact. The outcome is not monotone in ``k`` (a flip more or less is noise), so a search that looked
   at the validation images would ship its luckiest draw; ``attempts`` lists every candidate tried.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.export.errors import ConversionError, first_line
from cvkeras.export.onnx.convert import quiet
from cvkeras.serving.formats import INPUT_NAME

#: ONNX node types whose weights are quantized: the candidates for staying float.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Activations the quantizer fuses into the preceding node (its QDQ pair sits after them).
FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid", "HardSwish")
#: Calibration images the layer errors are measured on.
DEBUG_IMAGES = 16
#: What the search's candidates are checked on (``RepairResult.to_dict``'s ``searched_on``).
SEARCH_IMAGES = "held_back_train"


@dataclass
class LayerError:
    """One layer's measured quantization error (``noise``: noise-to-signal power, or rmse/scale)."""

    name: str
    op: str
    error: float
    metric: str
    #: every node to keep in float with this layer: an ONNX Conv takes its fused Relu/Clip along (left
    #: quantized alone, the activation would be quantized over the conv's unbounded output range)
    nodes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Attempt:
    """One candidate of the search, as measured on the held-back training images."""

    float_layers: int
    agreement: float | None
    accuracy_drop: float | None
    passed: bool
    size_bytes: int
    latency_ms_per_image: float
    n_images: int = 0


@dataclass
class RepairResult:
    """What the search did: the float layers of the artifact it kept, and every candidate it tried."""

    passed: bool
    float_layers: list[str] = field(default_factory=list)
    ranking: list[LayerError] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "float_layers": self.float_layers, "searched_on": SEARCH_IMAGES,
                "ranking": [r.to_dict() for r in self.ranking[:20]],
                "attempts": [asdict(a) for a in self.attempts]}


def search(ranking: Sequence[LayerError], build: Callable[[list[str]], None],
           check: Callable[[], tuple[bool, dict[str, Any]]], say: Callable[[str], None]) -> RepairResult:
    """Smallest ``k`` such that the model with the ``k`` worst layers in float passes ``check``.

    ``build(names)`` writes the candidate with those layers (``LayerError.name``) in float; ``check()`` returns (passed,
    figures with ``agreement``, ``accuracy_drop`` (a fraction), ``size_bytes``, ``latency_ms_per_image``).
    The candidate left built at the end is the smallest passing one, or the full-float-layers one when none passes.
    """
    names = [r.name for r in ranking]
    result = RepairResult(passed=False, ranking=list(ranking))
    outcome: dict[int, bool] = {}
    built: list[int] = []

    def attempt(k: int) -> bool:
        build(names[:k])
        built.append(k)
        ok, fig = check()
        say(f"  {k} layer(s) in float: agreement {100 * (fig.get('agreement') or 0):.2f} % on "
            f"{fig.get('n_reference', 0)} held-back training images -> {'holds' if ok else 'not yet'}")
        result.attempts.append(Attempt(k, fig.get("agreement"), fig.get("accuracy_drop"), ok,
                                       int(fig.get("size_bytes") or 0), float(fig.get("latency_ms_per_image") or 0.0),
                                       int(fig.get("n_reference") or 0)))
        outcome[k] = ok
        return ok

    lo, hi, k = 0, None, 1
    while k < len(names):
        if attempt(k):
            hi = k
            break
        lo, k = k, 2 * k
    if hi is None:
        if not names or not attempt(len(names)):
            return result
        hi = len(names)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    if built[-1] != hi:
        build(names[:hi])
    result.passed = True
    result.float_layers = names[:hi]
    return result


# --- ONNX ---------------------------------------------------------------------------------------------
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


# --- TFLite -------------------------------------------------------------------------------------------
class TFLiteDebugger:
    """``tf.lite.experimental.QuantizationDebugger`` on the run's SavedModel: per-layer errors, and
    full-integer models with chosen layers (``denylisted_nodes``) left in float."""

    def __init__(self, saved_model_dir: str, calibration: np.ndarray, debug_images: np.ndarray,
                 artifact: str = "model_int8.tflite") -> None:
        import tensorflow as tf

        from cvkeras.export.calibration import tflite_representative_dataset

        self.artifact = artifact
        conv = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = tflite_representative_dataset(calibration)
        try:
            with quiet():
                self._debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=conv, debug_dataset=tflite_representative_dataset(debug_images))
                self._debugger.run()
        except Exception as exc:  # converter and interpreter errors
            raise ConversionError(artifact, f"the TFLite quantization debugger failed ({first_line(exc)})") \
                from None

    def ranking(self) -> list[LayerError]:
        """Quantized ops by rmse/scale of their NumericVerify difference, worst first."""
        buf = io.StringIO()
        self._debugger.layer_statistics_dump(buf)
        ranked = []
        for row in csv.DictReader(io.StringIO(buf.getvalue())):
            try:
                rmse = float(np.sqrt(float(row["mean_squared_error"])))
                scale = float(row["scale"])
            except (KeyError, ValueError):
                continue
            if scale > 0 and np.isfinite(rmse):
                ranked.append(LayerError(row["tensor_name"], row.get("op_name", ""), rmse / scale, "rmse/scale"))
        ranked.sort(key=lambda r: -r.error)
        return ranked

    def quantize(self, denylisted_nodes: Sequence[str], io_type: str) -> bytes:
        """The full-integer model (``io_type`` input) with the ops producing ``denylisted_nodes`` in float
        (and its classifier, like every ``model_int8.tflite``: :func:`cvkeras.export.tflite.convert.int8_model`)."""
        from cvkeras.export.tflite.convert import int8_model

        return int8_model(self._debugger.calibrated_model, io_type, denylisted_nodes, self.artifact)

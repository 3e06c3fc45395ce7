"""Keras -> TFLite (``tf.lite.TFLiteConverter``): float32, fp16, dynamic-range and full-integer int8.

The Keras model is exported once to a temporary SavedModel (weights frozen into the graph) and every
variant is converted from it. Full int8 uses integer builtin ops, calibrated on the run's own training
images (:func:`int8_model`); its input type is ``--io-type`` (uint8 takes camera pixels as they are). Its
classifier -- the FULLY_CONNECTED and SOFTMAX producing the output -- stays float and the output is float32
probabilities: a uint8 softmax output has 1/256 steps, so two classes within 0.4 % tie and argmax takes the
first (measured: 0 % agreement on a near-tie model whatever else was kept float), and int8 logits tie at
even wider margins.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cvkeras.export.calibration import tflite_representative_dataset
from cvkeras.export.errors import ConversionError, ExportError, quiet
from cvkeras.serving.errors import quote

VARIANTS = ("float32", "fp16", "dynamic", "int8")
IO_TYPES = ("uint8", "int8", "float32")


@contextlib.contextmanager
def saved_model(model) -> Iterator[str]:
    """The Keras model as a temporary SavedModel directory (removed on exit)."""
    with tempfile.TemporaryDirectory(prefix="cvkeras-savedmodel-") as tmp:
        path = os.path.join(tmp, "saved_model")
        try:
            with quiet():
                model.export(path, format="tf_saved_model", verbose=False)
        except Exception as exc:  # Keras/TensorFlow tracing errors
            raise ConversionError("model.tflite",
                                  f"cannot trace the Keras model for TFLite ({_reason(exc)})") from None
        yield path


def _reason(exc: BaseException) -> str:
    """The informative part of a converter error (the op that failed), not the first line of its log."""
    text = str(exc)
    ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text)))
    if ops:
        return f"op {', '.join(ops)} has no TFLite builtin kernel"
    ops = sorted(set(re.findall(r"'tfl?\.(\w+)' op .*?(?:not supported|failed to legalize)", text)))
    if ops:
        return f"op {', '.join(ops)} is not supported for this variant"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln:
            return ln[ln.find("error:") + 6:].strip()[:300]
    return lines[0][:300] if lines else type(exc).__name__


def convert(saved_model_dir: str, variant: str, images: np.ndarray | None = None, io_type: str = "uint8",
            artifact: str | None = None) -> bytes:
    """Convert a SavedModel to one TFLite variant and return the flatbuffer.

    Raises:
        ExportError: unknown variant or io type, or int8 without calibration images.
        ConversionError: the converter cannot handle an op (message names it).
    """
    import tensorflow as tf

    artifact = artifact or f"model_{variant}.tflite"
    if variant not in VARIANTS:
        raise ExportError(f"unknown TFLite variant {quote(variant)}; choose from {', '.join(VARIANTS)}")
    conv = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops: plain LiteRT must run it
    if variant != "float32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        if io_type not in IO_TYPES:
            raise ExportError(f"unknown --io-type {quote(io_type)}; choose from {', '.join(IO_TYPES)}")
        if images is None or len(images) == 0:
            raise ExportError(f"{artifact}: full-integer int8 needs calibration images from the run")
        conv.representative_dataset = tflite_representative_dataset(images)
        conv._experimental_calibrate_only = True  # noqa: SLF001 - quantized by int8_model, head float
    try:
        with quiet():
            blob = bytes(conv.convert())
    except Exception as exc:  # ConverterError, RuntimeError from the calibrator
        raise ConversionError(artifact, f"the TFLite converter cannot handle this model ({_reason(exc)}); "
                                        "export --format onnx or drop this variant") from None
    return int8_model(blob, io_type, artifact=artifact) if variant == "int8" else blob


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The quantizer's C++ code prints its settings on file descriptor 2 ("fully_quantize: 0, ..."): a line
    per candidate on the user's console. Errors still raise (with their own message)."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _Graph(NamedTuple):
    """What LiteRT's interpreter tells of a model's ops: tensor details by index, op details in graph order,
    the index of the first output and the input's dtype."""

    tensors: dict[int, dict]
    ops: list[dict]
    output: int
    input_dtype: np.dtype


def _graph(blob: bytes) -> _Graph:
    """The one reader of a model's ops for this module (an interpreter, tensors not allocated)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=blob)
    return _Graph({t["index"]: t for t in interp.get_tensor_details()}, interp._get_ops_details(),  # noqa: SLF001
                  interp.get_output_details()[0]["index"], np.dtype(interp.get_input_details()[0]["dtype"]))


def head_tensors(calibrated: bytes) -> list[str]:
    """Output tensor names of the classifier of a TFLite model: the SOFTMAX producing the model output and the
    FULLY_CONNECTED feeding it (empty when the graph does not end that way)."""
    g = _graph(calibrated)
    producer = {o: op for op in g.ops for o in op["outputs"]}
    out: list[str] = []
    op = producer.get(g.output)
    if op is not None and op["op_name"] == "SOFTMAX":
        out.append(g.tensors[op["outputs"][0]]["name"])
        op = producer.get(op["inputs"][0])
        if op is not None and op["op_name"] == "FULLY_CONNECTED":
            out.append(g.tensors[op["outputs"][0]]["name"])
    return out


def add_features_output(blob: bytes, artifact: str = "model.tflite") -> bytes:
    """``blob`` with the classifier's input -- the pooled features the FULLY_CONNECTED feeding the output
    SOFTMAX reads -- as a second output named ``features``, for the unknown detector
    (:mod:`cvkeras.serving.unknown`); the probabilities stay output 0. The head is float in every variant
    (:func:`int8_model`), so the tensor is float32: in the full-int8 file the DEQUANTIZE's output, the same
    values an int8 output would give once dequantized, without a second (de)quantization on the device.

    Raises:
        ConversionError: the graph does not end FULLY_CONNECTED -> SOFTMAX, or the FC reads no float input.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    from cvkeras.serving.unknown import FEATURES_NAME

    g = _graph(blob)
    producer = {o: op for op in g.ops for o in op["outputs"]}
    op = producer.get(g.output)
    fc = producer.get(op["inputs"][0]) if op is not None and op["op_name"] == "SOFTMAX" else None
    index = fc["inputs"][0] if fc is not None and fc["op_name"] == "FULLY_CONNECTED" else None
    if index is None or np.dtype(g.tensors[index]["dtype"]) != np.float32:
        raise ConversionError(artifact, "cannot find the classifier's float FULLY_CONNECTED to export the "
                                        "features of the unknown detector; export with --unknown off")
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
    sub = model.subgraphs[0]
    if index not in list(sub.outputs):
        sub.outputs = [*sub.outputs, index]
        sub.tensors[index].name = FEATURES_NAME
        for sig in model.signatureDefs or []:  # a signature runner finds it by name too
            entry = _schema().TensorMapT()
            entry.name, entry.tensorIndex = FEATURES_NAME, index
            sig.outputs = [*(sig.outputs or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def input_type(path: str | os.PathLike) -> str:
    """The input dtype of the TFLite model in ``path`` (``uint8``, ``int8``, ``float32``)."""
    return _graph(Path(path).read_bytes()).input_dtype.name


def int8_model(calibrated: bytes, io_type: str, denylisted_nodes: Sequence[str] = (),
               artifact: str = "model_int8.tflite") -> bytes:
    """The full-integer model of a calibrated float model: int8 ops, ``io_type`` input, the classifier
    (:func:`head_tensors`) and the ops producing ``denylisted_nodes`` in float, float32 probabilities out.

    Raises:
        ConversionError: an op other than those has no int8 kernel (it would silently stay float).
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert

    if io_type not in IO_TYPES:
        raise ExportError(f"unknown --io-type {quote(io_type)}; choose from {', '.join(IO_TYPES)}")
    head = head_tensors(calibrated)
    dtype = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[io_type]
    try:
        with quiet(), _native_stderr_silenced():
            blob = bytes(convert.mlir_quantize(calibrated, input_data_type=dtype, output_data_type=tf.float32,
                                               denylisted_nodes=[*head, *denylisted_nodes]))
    except Exception as exc:  # converter errors
        raise ConversionError(artifact, f"int8 quantization failed ({_reason(exc)}); "
                                        "export --format onnx or drop this variant") from None
    allowed = {*head, *denylisted_nodes}
    left = [n for n in float_ops(blob) if n not in allowed]
    if left:
        raise ConversionError(artifact, f"op(s) {', '.join(left[:3])} have no int8 kernel and would stay float; "
                                        "export --format onnx or drop this variant")
    return blob


def float_ops(blob: bytes) -> list[str]:
    """Output tensor names of the compute ops of ``blob`` that produce float32 (QUANTIZE/DEQUANTIZE aside)."""
    g = _graph(blob)
    return [g.tensors[op["outputs"][0]]["name"] for op in g.ops
            if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE", "DELEGATE") and op["outputs"]
            and np.dtype(g.tensors[op["outputs"][0]]["dtype"]) == np.float32]


def compact(blob: bytes, artifact: str = "model.tflite") -> bytes:
    """``blob`` without the strings LiteRT does not need, and with its repeated quantization vectors stored once.

    Names (tensor, subgraph, signature) are ~4 % of a small int8 model (38 KB of 0.96 MB for MobileNetV2
    a0.5); the device reads inputs and outputs by index and the labels from the sidecar; only the
    ``features`` output (:func:`add_features_output`) keeps its name. The schema gives
    every per-channel tensor its own int64 zero-point vector, all zeros for int8 weights, and often a
    scale vector equal to another tensor's: identical vectors are written once and shared by offset, which
    FlatBuffers allows (a table refers to a vector by offset; nothing says one owner). MobileNetV2 a0.35's
    int8 file went from 608 to 512 KB, same outputs. The int8 fitting matches ops by name, so it runs on
    the uncompacted blobs before this.

        >>> small = compact(convert(saved, "float32"))  # doctest: +SKIP

    Raises:
        ConversionError: the flatbuffer could not be rewritten (names ``artifact``).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    from cvkeras.serving.unknown import FEATURES_NAME

    try:
        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
        keep = [t for sub in model.subgraphs for i in sub.outputs if (t := sub.tensors[i]).name
                in (FEATURES_NAME, FEATURES_NAME.encode())]  # the runner finds the features output by name
        flatbuffer_utils.strip_strings(model)
        for tensor in keep:
            tensor.name = FEATURES_NAME
        builder = _sharing_builder()(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())
    except Exception as exc:  # flatbuffers raises plain Python errors on a malformed buffer
        raise ConversionError(artifact, f"it could not be compacted ({_reason(exc)})") from None


def _sharing_builder() -> type:
    """The flatbuffers Builder :func:`compact` packs with (defined on first use: flatbuffers comes with TF)."""
    import flatbuffers

    class SharingBuilder(flatbuffers.Builder):
        """Writes each distinct int64/float32 vector once; in the TFLite schema those are only the
        quantization parameters (zero points, scales, min, max). Weight bytes (uint8) are never shared."""

        def __init__(self, size: int) -> None:
            super().__init__(size)
            self._written: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x):  # noqa: N802 (flatbuffers' name)
            if x.dtype not in (np.int64, np.float32):
                return super().CreateNumpyVector(x)
            key = (x.dtype.str, x.tobytes())
            if key not in self._written:
                self._written[key] = super().CreateNumpyVector(x)
            return self._written[key]

    return SharingBuilder

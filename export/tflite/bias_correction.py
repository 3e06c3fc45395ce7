"""Empirical bias correction of a full-integer TFLite model (``model_int8.tflite``), the method of
:mod:`cvkeras.export.onnx.bias_correction` with the shared update :func:`cvkeras.export.fitting.correct_bias`.

For every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED op with an int32 bias, in graph order, the
per-channel mean of its output before the activation is measured in the float model (``model.tflite``,
matched by tensor name) and in the int8 model (with the corrections of all earlier ops already in), and the
difference, in units of the bias's own scale (input scale x channel weight scale), is subtracted from the
int32 bias. The int8 output of such an op carries its fused ReLU/ReLU6, so the means are not read off it
but computed from the op's input, which the interpreter keeps (``experimental_preserve_all_tensors``): the
mean output of a linear op is its weights applied to the mean of what each weight meets (per kernel tap,
zero padding included), exact in both models, the int8 one in its real (dequantized) values.

Only int32 bias bytes change: the file keeps its size, graph, scales and weights. Ops kept float by a
repair have float biases and are left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from cvkeras.export.fitting import BiasCorrectionResult, correct_bias, spread
from cvkeras.export.settings import DEFAULT_FIT_IMAGES
from cvkeras.export.tflite.graph import Flatbuffer, Layer, input_means, match, output_means, real_weights

#: TFLite op names of :data:`cvkeras.export.tflite.graph.KINDS`, for the report.
OP_NAMES = {"conv": "CONV_2D", "depthwise": "DEPTHWISE_CONV_2D", "fc": "FULLY_CONNECTED"}

__all__ = ["correct_biases", "feed", "interpreter", "layer_input_means"]


def interpreter(blob: bytes):
    """A LiteRT interpreter on ``blob`` that keeps every intermediate tensor (builtin kernels, one thread)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=blob, num_threads=1, experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def feed(it, image: np.ndarray) -> None:
    """Set one HWC image (0..255, the model's input contract) as ``it``'s input, quantized if it is integer
    (as the device's runner quantizes it: :func:`cvkeras.serving.runners.quantize_input`)."""
    from cvkeras.serving.runners import quantize_input

    d = it.get_input_details()[0]
    scale, zero = d["quantization"]
    it.set_tensor(d["index"], quantize_input(np.asarray(image, np.float32)[None], np.dtype(d["dtype"]), scale, zero))


def input_sums(blob: bytes, layers: list[Layer], images: np.ndarray,
               stat: Callable[[np.ndarray, Layer], np.ndarray]) -> list[np.ndarray]:
    """Per op of ``layers`` (ops of ``blob``), the sum over ``images`` of ``stat(its real input, op)``: one
    interpreter pass per image, every op's input read from it."""
    it = interpreter(blob)
    sums: list[np.ndarray | float] = [0.0] * len(layers)
    for image in images:
        feed(it, image)
        it.invoke()
        for k, layer in enumerate(layers):
            sums[k] = sums[k] + stat(layer.input.dequantize(it.get_tensor(layer.input.index)), layer)
    return [np.asarray(s) for s in sums]


def layer_input_means(blob: bytes, layers: list[Layer], images: np.ndarray) -> list[np.ndarray]:
    """:func:`cvkeras.export.tflite.graph.input_means` of each of ``layers`` (ops of ``blob``) over ``images``."""
    return [s / len(images) for s in input_sums(blob, layers, images, input_means)]


def correct_biases(int8_blob: bytes, float_blob: bytes, images: np.ndarray,
                   max_images: int = DEFAULT_FIT_IMAGES) -> tuple[bytes, BiasCorrectionResult]:
    """The int8 model ``int8_blob`` with its int32 biases corrected layer by layer, and what was done.

    ``float_blob``: the float TFLite model converted from the same SavedModel. ``images``: calibration
    images (uint8 or float NHWC, 0..255); ``max_images`` of them, evenly spread, are used.
    """
    t0 = time.perf_counter()
    fb, ref = Flatbuffer(int8_blob), Flatbuffer(float_blob)
    targets = []
    for layer, twin in zip(fb.layers, match(fb.layers, ref.layers), strict=True):
        bias = layer.bias
        if twin is None or bias is None or bias.dtype is not np.int32 or not bias.quantized:
            continue  # a float op (kept float by a repair), no bias, or no float twin
        q_bias, w_q, w_f = fb.array(bias), real_weights(fb, layer), real_weights(ref, twin)
        b_f = ref.array(twin.bias) if twin.bias is not None else None
        if (q_bias is None or w_q is None or w_f is None or not layer.input.quantized
                or (twin.bias is not None and b_f is None)):
            continue
        b_f = None if b_f is None else b_f.astype(np.float64)
        scale = np.broadcast_to(bias.scale, q_bias.shape).astype(np.float64)
        targets.append((layer, twin, q_bias, scale, w_q, w_f, b_f))
    x = spread(images, max_images)
    result = BiasCorrectionResult(images=len(x), seconds=0.0)
    if not targets:
        return int8_blob, result
    f_means = layer_input_means(float_blob, [t[1] for t in targets], x)
    for (layer, twin, q_bias, scale, w_q, w_f, b_f), f_in in zip(targets, f_means, strict=True):
        want = output_means(w_f, b_f, f_in, twin)
        got_in = layer_input_means(fb.to_bytes(), [layer], x)[0]
        got = output_means(w_q, q_bias.astype(np.float64) * scale, got_in, layer)
        q_bias[...], shift = correct_bias(q_bias, scale, got, want, layer.name, OP_NAMES[layer.kind])  # in fb's buffer
        result.layers.append(shift)
    result.seconds = round(time.perf_counter() - t0, 2)
    return fb.to_bytes(), result

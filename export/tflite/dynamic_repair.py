"""Repair of a dynamic-range TFLite model (``model_dynamic.tflite``): its worst int8-weight ops get their float
weights back.

A dynamic-range model keeps activations in float and stores conv / fully-connected weights as int8 with a
scale per output channel; LiteRT picks a float kernel for an op whose weights are float, so "keeping a layer
in float" is a rewrite of one weight tensor (type, data, no quantization). The QuantizationDebugger does not
cover this mode, so layers are ranked by the relative output error their int8 weights cause on calibration
images, ``tr(dW H dW^T) / tr(W H W^T)`` with ``H`` the second moments of the op's input patches in the float
model (the quantity GPTQ minimises), worst first; :func:`cvkeras.export.repair.search` then finds the fewest.

    >>> ranking = rank_layers(dynamic_blob, float_blob, calibration_images)  # doctest: +SKIP
    >>> candidate = float_weights(dynamic_blob, float_blob, [r.name for r in ranking[:2]])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cvkeras.export.fitting import spread
from cvkeras.export.repair import LayerError
from cvkeras.export.settings import DEFAULT_FIT_IMAGES
from cvkeras.export.tflite.graph import Flatbuffer, real_weights
from cvkeras.export.tflite.weight_rounding import fitted_layers, input_moments, rows

__all__ = ["float_weights", "rank_layers"]


def rank_layers(dynamic_blob: bytes, float_blob: bytes, images: np.ndarray,
                max_images: int = DEFAULT_FIT_IMAGES) -> list[LayerError]:
    """The int8-weight ops of ``dynamic_blob`` by relative output error of their weights, worst first;
    ``LayerError.name`` is the op's output tensor name (in both models)."""
    fb = Flatbuffer(dynamic_blob)
    todo = fitted_layers(fb, Flatbuffer(float_blob), hybrid=True)
    if not todo:
        return []
    h = input_moments(float_blob, [twin for _, twin, _ in todo], spread(images, max_images))
    ranked = []
    for (layer, _, w_f), hk in zip(todo, h, strict=True):
        w, dw = rows(w_f, layer.kind), rows(real_weights(fb, layer) - w_f, layer.kind)
        if layer.kind == "depthwise":  # one H per channel: (C, k, k)
            signal, noise = np.einsum("ck,ckm,cm->", w, hk, w), np.einsum("ck,ckm,cm->", dw, hk, dw)
        else:
            signal, noise = np.einsum("ok,km,om->", w, hk, w), np.einsum("ok,km,om->", dw, hk, dw)
        error = float(noise / signal) if signal > 0 else float("inf")
        ranked.append(LayerError(layer.name, layer.kind, error, "weight noise/signal"))
    ranked.sort(key=lambda r: -r.error)
    return ranked


def float_weights(dynamic_blob: bytes, float_blob: bytes, names: Sequence[str]) -> bytes:
    """``dynamic_blob`` with the ops whose output tensor is in ``names`` given the float model's weights."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    wanted = set(names)
    if not wanted:
        return dynamic_blob
    fb, ref = Flatbuffer(dynamic_blob), Flatbuffer(float_blob)
    swaps = {layer.weight.index: w_f.astype(np.float32)
             for layer, _, w_f in fitted_layers(fb, ref, hybrid=True) if layer.name in wanted}
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(fb.to_bytes()))  # weights unshared
    sub = model.subgraphs[0]
    for index, w in swaps.items():  # each swapped tensor has its own buffer: replaced, 3 bytes more a weight
        t = sub.tensors[index]
        model.buffers[t.buffer].data = np.frombuffer(np.ascontiguousarray(w).tobytes(), np.uint8)
        t.type, t.quantization = schema.TensorType.FLOAT32, None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))

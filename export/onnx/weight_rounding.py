"""GPTQ rounding of a QDQ int8 ONNX model's weights (the core: :func:`cvkeras.export.fitting.gptq`).

``H = E[x x^T]`` of each layer is measured over its im2col patches in the float model. Scales (per output
channel) and every activation range stay as the quantizer set them; only the int8 weight values change.

Supported: Conv with group 1 (any kernel, stride, padding, dilation) and depthwise Conv (group = input
channels = output channels), and Gemm (transB either way). Other nodes keep nearest rounding.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvkeras.export.fitting import MAX_COLUMNS, gptq, spread
from cvkeras.export.settings import DEFAULT_FIT_IMAGES


@dataclass
class _Layer:
    node: Any
    weight: Any  # int8 TensorProto
    scale: np.ndarray  # per output channel
    w_float: np.ndarray
    x_name: str
    kind: str  # conv | depthwise | gemm
    h: np.ndarray | None = None


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _patches(x: np.ndarray, node, kshape: tuple[int, int]) -> np.ndarray:
    """im2col of NCHW ``x`` for Conv ``node``: (N, C, kh*kw, L) patches."""
    a = _attrs(node)
    kh, kw = kshape
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    pads = a.get("pads", [0, 0, 0, 0])
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise ValueError("auto_pad SAME is not supported")
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n, c, h, w = x.shape
    ho = (h - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w - (dw * (kw - 1) + 1)) // sw + 1
    cols = np.empty((n, c, kh * kw, ho * wo), x.dtype)
    for i in range(kh):
        for j in range(kw):
            sl = x[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
            cols[:, :, i * kw + j] = sl.reshape(n, c, -1)
    return cols


def _accumulate(layer: _Layer, x: np.ndarray) -> None:
    """Add the input second moments of one batch to ``layer.h`` (one image at a time: bounded memory)."""
    if layer.kind == "gemm":
        x = x.astype(np.float64)
        h = x.T @ x
    else:
        h = 0.0
        for one in x[:, None]:
            p = _patches(one.astype(np.float64), layer.node, layer.w_float.shape[2:])[0]  # C, K, L
            if layer.kind == "depthwise":
                h = h + p @ p.transpose(0, 2, 1)
            else:
                p = p.reshape(-1, p.shape[-1])
                h = h + p @ p.T
    layer.h = h if layer.h is None else layer.h + h


def round_weights(float_model: str | os.PathLike | Any, qdq, images: np.ndarray,
                  max_images: int = DEFAULT_FIT_IMAGES, batch: int = 16,
                  qrange: tuple[int, int] = (-127, 127)) -> dict[str, Any]:
    """Re-round the int8 weights of ``qdq`` (edited in place) with GPTQ; returns a summary.

    ``qrange``: the quantizer's weight range (``quantize.weight_range``: +-64 with ``reduce_range``),
    which no rounded weight may leave.

    Inputs to each layer are the float model's (``float_model``, same node names): H then describes the
    signal the layer must reproduce, not the quantized model's noise.
    """
    import onnx
    from onnx import numpy_helper

    from cvkeras.export.onnx.bias_correction import session, with_outputs

    t0 = time.perf_counter()
    f = float_model if isinstance(float_model, onnx.ModelProto) else onnx.load(str(float_model))
    f_nodes = {n.name: n for n in f.graph.node}
    f_init = {t.name: t for t in f.graph.initializer}
    init = {t.name: t for t in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    layers: list[_Layer] = []
    for node in qdq.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.name not in f_nodes:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in init:
            continue
        wq = init[dq.input[0]]
        if wq.data_type != onnx.TensorProto.INT8:
            continue
        fn = f_nodes[node.name]
        if fn.input[1] not in f_init:
            continue
        w = numpy_helper.to_array(f_init[fn.input[1]]).astype(np.float64)
        scale = numpy_helper.to_array(init[dq.input[1]]).astype(np.float64).reshape(-1)
        a = _attrs(node)
        if node.op_type == "Conv":
            if w.ndim != 4 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
                continue  # 2-D convs with explicit padding only
            group = int(a.get("group", 1))
            if group == 1:
                kind = "conv"
            elif w.shape[1] == 1 and group == w.shape[0]:
                kind = "depthwise"
            else:
                continue
            if scale.size != w.shape[0] or (kind == "conv" and w[0].size > MAX_COLUMNS):
                continue
        else:
            if a.get("transA", 0):
                continue
            kind = "gemm"
            # ONNX Gemm: y = x @ B (transB 0: B is (in, out)); rows of our w are output channels
            w = w if a.get("transB", 0) else w.T
            if scale.size != w.shape[0] or w.shape[1] > MAX_COLUMNS:
                continue
        layers.append(_Layer(node, wq, scale, w, fn.input[0], kind))
    if not layers:
        return {"layers": 0}
    x = spread(images, max_images).astype(np.float32)
    names = list(dict.fromkeys(layer.x_name for layer in layers))
    sess = session(with_outputs(f, names), optimize=True)
    inp = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed > 0:
        batch = fixed
    for start in range(0, len(x), batch):
        xb = x[start : start + batch]
        wanted = [n for n in names if n != inp]
        outs = dict(zip(wanted, sess.run(wanted, {inp: xb}), strict=True)) if wanted else {}
        outs[inp] = xb
        for layer in layers:
            _accumulate(layer, outs[layer.x_name])
    for layer in layers:
        w = layer.w_float if layer.kind == "gemm" else layer.w_float.reshape(layer.w_float.shape[0], -1)
        q = gptq(w, layer.h, layer.scale, *qrange)
        old = numpy_helper.to_array(layer.weight)
        if layer.kind == "gemm":
            q = q if _attrs(layer.node).get("transB", 0) else q.T
        q = q.reshape(old.shape)
        layer.weight.CopyFrom(numpy_helper.from_array(q.astype(np.int8), layer.weight.name))
    return {"layers": len(layers), "images": len(x), "seconds": round(time.perf_counter() - t0, 2)}

"""The weighted ops of a TFLite flatbuffer (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED), their tensors and
constant data, read with the flatbuffer schema and patched in place: a changed constant keeps its length,
so the file keeps its size and graph and every other byte. Also what those ops compute, in numpy, as far as
the int8 fitting steps need it: the means (bias correction) and the patches (GPTQ) of their inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cvkeras.export.errors import ExportError

#: BuiltinOperator codes of the ops handled, by kind.
KINDS = {3: "conv", 4: "depthwise", 9: "fc"}
#: TensorType -> numpy dtype (the types these ops use).
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


@dataclass
class TensorInfo:
    """One tensor of subgraph 0: shape, type, constant buffer (0: none) and quantization (empty: float)."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: type
    buffer: int
    scale: np.ndarray = field(default_factory=lambda: np.zeros(0))
    zero_point: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    axis: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale.size > 0

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Real values of this (per-tensor quantized, or float) tensor's data ``q``, as float64."""
        if not self.quantized:
            return np.asarray(q, np.float64)
        return (np.asarray(q, np.float64) - float(self.zero_point.ravel()[0])) * float(self.scale.ravel()[0])


@dataclass
class Layer:
    """One weighted op: kind (conv | depthwise | fc), input, weight, bias (None: no bias) and output tensors."""

    op: int
    kind: str
    input: TensorInfo
    weight: TensorInfo
    bias: TensorInfo | None
    output: TensorInfo
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    same: bool = False  # padding SAME (else VALID)
    multiplier: int = 1  # depthwise channel multiplier

    @property
    def name(self) -> str:
        return self.output.name


class Flatbuffer:
    """A TFLite model in a writable buffer: its weighted ops and writable views of their constants."""

    def __init__(self, blob: bytes) -> None:
        from tensorflow.lite.python import schema_py_generated as schema

        self._parse(schema, blob)
        # The converter stores identical constants once (e.g. the zero biases of bias-free convs): a write
        # through one layer's view would change every tensor sharing the buffer. Each weighted op's weight
        # and bias get a buffer of their own before anything can be edited.
        users: dict[int, int] = {}
        for t in self._tensors:
            users[t.buffer] = users.get(t.buffer, 0) + 1
        shared = sorted({t.index for layer in self.layers for t in (layer.weight, layer.bias)
                         if t is not None and t.buffer > 0 and users[t.buffer] > 1})
        if shared:
            self._parse(schema, unshare(blob, shared))

    def _parse(self, schema, blob: bytes) -> None:
        self.buf = bytearray(blob)
        self._model = schema.Model.GetRootAsModel(self.buf, 0)
        if self._model.SubgraphsLength() < 1:
            raise ExportError("the TFLite model has no subgraph")
        sub = self._model.Subgraphs(0)
        self._tensors = [self._tensor(sub.Tensors(i), i) for i in range(sub.TensorsLength())]
        self.layers: list[Layer] = []
        for k in range(sub.OperatorsLength()):
            layer = self._layer(schema, sub.Operators(k), k)
            if layer is not None:
                self.layers.append(layer)

    def _tensor(self, t, index: int) -> TensorInfo:
        q = t.Quantization()
        info = TensorInfo(index, t.Name().decode("utf-8", "replace"), tuple(int(d) for d in t.ShapeAsNumpy())
                          if t.ShapeLength() else (), _DTYPES.get(t.Type(), np.void), t.Buffer())
        if q is not None and q.ScaleLength() > 0:
            info.scale = q.ScaleAsNumpy().astype(np.float64)
            info.zero_point = (q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength()
                               else np.zeros(info.scale.size, np.int64))
            info.axis = q.QuantizedDimension()
        return info

    def _layer(self, schema, op, k: int) -> Layer | None:
        code = self._model.OperatorCodes(op.OpcodeIndex())
        kind = KINDS.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        if kind is None or op.InputsLength() < 2:
            return None
        ins = [int(i) for i in op.InputsAsNumpy()]
        bias = self._tensors[ins[2]] if len(ins) > 2 and ins[2] >= 0 else None
        layer = Layer(k, kind, self._tensors[ins[0]], self._tensors[ins[1]], bias,
                      self._tensors[int(op.OutputsAsNumpy()[0])])
        table = op.BuiltinOptions()
        if kind != "fc" and table is not None:
            opts = (schema.Conv2DOptions if kind == "conv" else schema.DepthwiseConv2DOptions)()
            opts.Init(table.Bytes, table.Pos)
            layer.stride = (opts.StrideH(), opts.StrideW())
            layer.dilation = (opts.DilationHFactor(), opts.DilationWFactor())
            layer.same = opts.Padding() == schema.Padding.SAME
            if kind == "depthwise":
                layer.multiplier = max(1, opts.DepthMultiplier())
        return layer

    def array(self, t: TensorInfo) -> np.ndarray | None:
        """A writable view of constant tensor ``t``'s data in this buffer, shaped; None when not constant."""
        if t.buffer <= 0 or t.dtype is np.void:
            return None
        b = self._model.Buffers(t.buffer)
        if b.Offset() > 1:  # data after the flatbuffer (models over 2 GB)
            raw = np.frombuffer(self.buf, np.uint8, b.Size(), b.Offset())
        elif b.DataLength() > 0:
            raw = b.DataAsNumpy()
        else:
            return None
        if raw.size != int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize:
            return None
        return raw.view(t.dtype).reshape(t.shape)

    def to_bytes(self) -> bytes:
        return bytes(self.buf)


def unshare(blob: bytes, tensors: list[int]) -> bytes:
    """``blob`` with each of ``tensors`` (indices in subgraph 0) given its own copy of a buffer that other
    tensors use too."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
    sub = model.subgraphs[0]
    users: dict[int, int] = {}
    for t in sub.tensors:
        users[t.buffer] = users.get(t.buffer, 0) + 1
    for index in tensors:
        t = sub.tensors[index]
        if users.get(t.buffer, 0) > 1:
            users[t.buffer] -= 1
            buf = schema.BufferT()
            data = model.buffers[t.buffer].data
            buf.data = None if data is None else np.array(data, np.uint8, copy=True)
            model.buffers.append(buf)
            t.buffer = len(model.buffers) - 1
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def match(int8: list[Layer], ref: list[Layer]) -> list[Layer | None]:
    """The op of ``ref`` (the float model) that each op of ``int8`` was quantized from.

    The TFLite quantizer keeps tensor names, so ops match by output tensor name, else by input tensor name
    (the model's last op gets a new output name), of the same kind and weight shape; when names do not match
    but both models have the same weighted ops in the same order (kinds and weight shapes), by position.
    """
    by_out = {layer.name: layer for layer in ref}
    by_in: dict[str, list[Layer]] = {}
    for layer in ref:
        by_in.setdefault(layer.input.name, []).append(layer)

    def same(a: Layer, b: Layer | None) -> bool:
        return b is not None and a.kind == b.kind and a.weight.shape == b.weight.shape

    out: list[Layer | None] = []
    for layer in int8:
        twin = by_out.get(layer.name)
        if not same(layer, twin):
            twins = [r for r in by_in.get(layer.input.name, []) if same(layer, r)]
            twin = twins[0] if len(twins) == 1 else None
        out.append(twin)
    if None in out and len(int8) == len(ref) and all(same(a, b) for a, b in zip(int8, ref, strict=True)):
        return list(ref)
    return out


def padded(x: np.ndarray, layer: Layer) -> tuple[np.ndarray, int, int]:
    """NHWC input ``x`` (real values) zero-padded as ``layer`` pads it, and its output height and width."""
    _, ho, wo, _ = layer.output.shape
    kh, kw = layer.weight.shape[1:3]
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    if layer.same:
        th = max((ho - 1) * sh + (kh - 1) * dh + 1 - x.shape[1], 0)
        tw = max((wo - 1) * sw + (kw - 1) * dw + 1 - x.shape[2], 0)
        x = np.pad(x, ((0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2), (0, 0)))
    return x, ho, wo


def taps(x: np.ndarray, layer: Layer):
    """For each kernel tap (i, j): the input pixels it meets at every output position, (N, Ho, Wo, C)."""
    x, ho, wo = padded(x, layer)
    kh, kw = layer.weight.shape[1:3]
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    for i in range(kh):
        for j in range(kw):
            yield i, j, x[:, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]


def input_means(x: np.ndarray, layer: Layer) -> np.ndarray:
    """Mean over images and output positions of what each weight multiplies: (kh, kw, C), or (C,) for fc."""
    if layer.kind == "fc":
        return x.reshape(-1, layer.weight.shape[1]).mean(axis=0)
    kh, kw = layer.weight.shape[1:3]
    out = np.zeros((kh, kw, x.shape[-1]))
    for i, j, sl in taps(x, layer):
        out[i, j] = sl.mean(axis=(0, 1, 2))
    return out


def output_means(w: np.ndarray, b: np.ndarray | None, m: np.ndarray, layer: Layer) -> np.ndarray:
    """Per-channel mean of ``layer``'s output before its activation, from real weights ``w`` (the op's
    layout), bias ``b`` and the input means ``m`` of :func:`input_means` (linearity: exact)."""
    if layer.kind == "fc":
        y = w.reshape(w.shape[0], -1) @ m
    elif layer.kind == "conv":
        y = np.tensordot(w, m, axes=([1, 2, 3], [0, 1, 2]))
    else:  # depthwise: output channel c reads input channel c // multiplier
        c = np.arange(w.shape[-1]) // layer.multiplier
        y = np.einsum("ijc,ijc->c", w[0], m[:, :, c])
    return y if b is None else y + b


def real_weights(fb: Flatbuffer, layer: Layer) -> np.ndarray | None:
    """``layer``'s weights as real float64 values (dequantized per channel when int8); None if not constant."""
    q = fb.array(layer.weight)
    if q is None:
        return None
    t = layer.weight
    if not t.quantized:
        return q.astype(np.float64)
    shape = [1] * q.ndim
    shape[t.axis] = -1
    return (q.astype(np.float64) - t.zero_point.reshape(shape)) * t.scale.reshape(shape)

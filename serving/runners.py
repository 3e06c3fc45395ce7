"""The two model runtimes behind :class:`serving.Predictor`: an ONNX Runtime session and a LiteRT
interpreter, each loading one exported cvkeras model and running float32 NHWC batches to probabilities.
Device side: numpy, onnxruntime (and LiteRT for ``.tflite``) only.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvkeras.serving.errors import CvkerasError, first_line, quote
from cvkeras.serving.metadata import ModelMetadata, metadata_from_props, read_metadata
from cvkeras.serving.unknown import FEATURES_NAME

#: ONNX Runtime session config key: "1" selects exact (U8U8) int8 kernels on x86 CPUs without VNNI.
X64_QUANT_PRECISION = "session.x64quantprecision"
_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}
_VNNI = {"avx512_vnni", "avx_vnni"}


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags from ``/proc/cpuinfo`` (None where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return None


def needs_exact_int8_kernels() -> bool:
    """Whether ONNX Runtime must be asked for exact int8 kernels on this CPU (x86 without VNNI).

    There the default U8S8 kernels add pairs of u8*s8 products in saturating int16, which cost a full-int8
    model accuracy and made its predictions depend on the CPU. With VNNI (``vpdpbusd`` sums in int32) the
    default kernels are already exact -- bit-identical outputs -- and the exact ones ran an int8
    MobileNetV2 at about half the speed (1.12 against 0.58 ms), so they are asked for only where needed.
    """
    return exact_int8_kernels_for(platform.machine(), _cpu_flags())


def exact_int8_kernels_for(machine: str, flags: frozenset[str] | None) -> bool:
    """The rule of :func:`needs_exact_int8_kernels` for a CPU architecture and its feature flags: x86
    without VNNI, or x86 whose flags are unknown (correct before fast); never ARM (exact either way).

        >>> exact_int8_kernels_for("x86_64", frozenset({"avx2"}))
        True
    """
    if machine.lower() not in _X86:
        return False
    return flags is None or not (flags & _VNNI)

class ModelError(CvkerasError, ValueError):
    """A model file that cannot be loaded or run; the message names the file and the fix."""


class OnnxRunner:
    """One ONNX Runtime session; the single float32 NHWC input and the first output (probabilities)."""

    kind = "onnx"

    def __init__(self, path: Path, providers: Sequence[str] | None, threads: int | None,
                 spinning: bool = True) -> None:
        """``spinning``: idle runtime threads busy-wait (lowest latency) or sleep (leave CPU to decoders)."""
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = list(providers) if providers else ["CPUExecutionProvider"]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ModelError(f"{path}: execution provider {', '.join(missing)} is not available here; "
                             f"choose from {', '.join(available)}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: no optimiser chatter on stderr
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # a CNN is a chain: no inter-op pool
        opts.inter_op_num_threads = 1
        # Exact int8 kernels where the default ones are not (x86 without VNNI); see needs_exact_int8_kernels.
        opts.add_session_config_entry(X64_QUANT_PRECISION, "1" if needs_exact_int8_kernels() else "0")
        if threads:
            opts.intra_op_num_threads = int(threads)
        # Spinning: idle runtime threads busy-wait between operators, the fastest single image; off, they
        # sleep so decoder threads get the cores. Set explicitly either way (ORT's default may change).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.spinning = spinning
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: not a loadable ONNX model ({first_line(exc)}); "
                             "check the file is complete or re-export it") from None
        self.path = path
        self.providers = self.session.get_providers()
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{path}: expected one image input, found {len(inputs)}; "
                             "export with `cvkeras export`")
        inp = inputs[0]
        shape = list(inp.shape)
        channels_ok = len(shape) == 4 and (shape[3] == 3 or not isinstance(shape[3], int))
        if inp.type != "tensor(float)" or not channels_ok:
            raise ModelError(f"{path}: input {quote(inp.name)} is {inp.type} {shape}, expected float32 "
                             "[N, H, W, 3]; export with `cvkeras export`")
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name  # whatever the exporter called it
        self._outputs = [self.output_name]
        self.batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.hw = tuple(d if isinstance(d, int) and d > 0 else None for d in shape[1:3])
        out_shape = self.session.get_outputs()[0].shape
        self.num_classes = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
        feats = [o for o in self.session.get_outputs()[1:] if o.name == FEATURES_NAME]
        #: length of the ``features`` output (the pooled features, :mod:`cvkeras.serving.unknown`); None: none
        self.features_dim = (feats[0].shape[-1] if feats and isinstance(feats[0].shape[-1], int) else 0) \
            if feats else None

    def metadata(self) -> ModelMetadata:
        return metadata_from_props(self.session.get_modelmeta().custom_metadata_map, str(self.path))

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(self._outputs, {self.input_name: x})[0]

    def run_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and pooled features of one batch, in one run (a model with a ``features`` output)."""
        probs, feats = self.session.run([self.output_name, FEATURES_NAME], {self.input_name: x})
        return probs, np.asarray(feats, dtype=np.float32).reshape(len(feats), -1)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """TFLite's rounding (``std::round``): halves go away from zero, unlike ``np.round``."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def quantize_input(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Float32 input ``x`` as a LiteRT input tensor of ``dtype``: cast when it is float, else quantized with
    the tensor's (``scale``, ``zero_point``), TFLite's rounding, clipped to the integer type's range. The
    one input quantization of cvkeras: the runner below and the export's int8 fitting both use it."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return x.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    q = _round_half_away(x / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


class TFLiteRunner:
    """A LiteRT interpreter (fixed batch of 1); (de)quantizes integer I/O with the tensors' own params.

    The probabilities are the first output not named ``features``; the unknown detector's pooled features,
    when the model has them, the output named ``features`` (found by name: outputs carry no order contract).
    """

    kind = "tflite"

    def __init__(self, path: Path, threads: int | None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ModelError(f"{path}: running .tflite models needs LiteRT; `pip install ai-edge-litert` "
                             "or use the .onnx export") from None
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            inp = self.interpreter.get_input_details()[0]
            if list(inp["shape"][:1]) != [1]:
                self.interpreter.resize_tensor_input(inp["index"], [1, *inp["shape"][1:]])
            self.interpreter.allocate_tensors()
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError with multi-line texts
            raise ModelError(f"{path}: not a loadable TFLite model ({first_line(exc)}); "
                             "check the file is complete or re-export it") from None
        self.path = path
        self.providers = ["LiteRT"]
        self.inp = self.interpreter.get_input_details()[0]
        outputs = self.interpreter.get_output_details()
        self.out = next((o for o in outputs if o["name"] != FEATURES_NAME), outputs[0])
        feats = next((o for o in outputs if o["name"] == FEATURES_NAME and o is not self.out), None)
        shape = list(self.inp["shape"])
        if len(shape) != 4 or shape[3] != 3:
            raise ModelError(f"{path}: input shape {shape} is not [1, H, W, 3]; export with `cvkeras export`")
        self.batch = 1
        self.spinning = None  # LiteRT has no such setting
        self.hw = (int(shape[1]), int(shape[2]))
        self.num_classes = int(self.out["shape"][-1])
        self.feat = feats
        #: length of the ``features`` output (the pooled features, :mod:`cvkeras.serving.unknown`); None: none
        self.features_dim = None if feats is None else int(np.prod(feats["shape"][1:]))
        self.in_scale, self.in_zero = self.inp["quantization"]
        #: uint8 input with scale 1 and zero point 0 (``cvkeras export --int8``): a decoded uint8 image
        #: is already the quantized input, no float round trip needed.
        self.takes_uint8_image = (np.dtype(self.inp["dtype"]) == np.uint8 and self.in_scale == 1.0
                                  and self.in_zero == 0)

    def metadata(self) -> ModelMetadata:
        return read_metadata(self.path)

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.inp["dtype"])
        if dtype.kind != "f" and not self.in_scale:
            raise ModelError(f"{self.path}: integer input without quantization parameters; re-export it")
        return quantize_input(x, dtype, self.in_scale, self.in_zero)

    def _output(self, detail: dict) -> np.ndarray:
        """Output ``detail``'s tensor as one float32 row, dequantized with its own scale and zero point."""
        y = self.interpreter.get_tensor(detail["index"]).reshape(1, -1)
        if np.dtype(detail["dtype"]).kind == "f":
            return y.astype(np.float32, copy=False)
        scale, zero = detail["quantization"]
        if not scale:
            raise ModelError(f"{self.path}: integer output without quantization parameters; re-export it")
        return (y.astype(np.float32) - np.float32(zero)) * np.float32(scale)

    def _invoke(self, q: np.ndarray, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        self.interpreter.set_tensor(self.inp["index"], q)
        self.interpreter.invoke()
        return self._output(self.out), (self._output(self.feat) if features and self.feat else None)

    def run_uint8(self, image: np.ndarray, features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities for one HWC uint8 image fed as is (only when :attr:`takes_uint8_image`) and, with
        ``features``, its pooled features (None for a model without them)."""
        return self._invoke(image[None], features)

    def _run_all(self, x: np.ndarray, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        rows = [self._invoke(self._quantize(x[i : i + 1]), features) for i in range(x.shape[0])]
        probs = np.concatenate([p for p, _ in rows]) if rows else np.zeros((0, self.num_classes), np.float32)
        if not features or self.feat is None:
            return probs, None
        return probs, (np.concatenate([f for _, f in rows]) if rows
                       else np.zeros((0, self.features_dim or 0), np.float32))

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._run_all(x, False)[0]

    def run_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and pooled features of a batch (a model with a ``features`` output)."""
        return self._run_all(x, True)  # type: ignore[return-value]  # load checked the features output


Runner = OnnxRunner | TFLiteRunner

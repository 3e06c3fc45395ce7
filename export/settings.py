"""Every quantization default of the export in one place, and :class:`QuantSettings`, the knobs both formats'
int8 models are made with (``model_int8.onnx`` all of them; ``model_int8.tflite`` and ``model_dynamic.tflite``
the fitting ones, ``gptq_images`` and ``bias_correction_images``).

Format-neutral: nothing here imports a converter, so the options, the fitting runner and both formats
read the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Calibration methods of ``--calibration`` (ONNX Runtime's calibrators).
METHODS = ("minmax", "entropy", "percentile")
#: ``--calibration``'s default.
DEFAULT_CALIBRATION = "minmax"
#: What ``model_int8.tflite``'s metadata records as its calibration: the TFLite converter calibrates by
#: min/max only (``--calibration`` picks ONNX Runtime's method and does not reach it).
TFLITE_CALIBRATION = "minmax"
#: Default number of calibration images (all of the training split's images when it has fewer).
DEFAULT_SAMPLES = 300
#: Calibration images the int8 fitting steps (GPTQ, bias correction) and the dynamic-range repair's ranking
#: measure on, by default: an even spread over the calibration set.
DEFAULT_FIT_IMAGES = 128


@dataclass(frozen=True)
class QuantSettings:
    """Knobs of static int8 quantization (recorded in the artifact's metadata); ``gptq_images`` and
    ``bias_correction_images`` apply to ``model_int8.tflite`` too (``cvkeras.export.fitting.fit_rounding``)."""

    calibration: str = DEFAULT_CALIBRATION  # one of METHODS
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
    # the logits are not rounded to int8 steps: top-1 survives near-ties (see cvkeras.export.onnx.quantize).
    float_head: bool = True
    # The stem stays float32 (see cvkeras.export.onnx.quantize.stem_nodes): the input normalisation and the first
    # convs, up to the narrowest of the first ``float_stem`` convs' outputs. ONNX Runtime's int8 kernels are slow
    # on a 3-channel input and on 8-16-channel tensors at full resolution: measured here (x86 VNNI, batch 1)
    # with 2 of MobileNet a0.25's convs float, int8/float32 latency went 1.05 -> 0.73, and with 3 of
    # MobileNetV2 a0.5's, 0.78 -> 0.62, for a few hundred float weights (0: quantize the stem too).
    float_stem: int = 3
    # GPTQ weight rounding (cvkeras.export.fitting.gptq): int8 weights rounded to minimise each layer's output
    # error on this many calibration images instead of to nearest (0: off). Scales and ranges unchanged.
    gptq_images: int = DEFAULT_FIT_IMAGES
    # Empirical bias correction (cvkeras.export.onnx.bias_correction, cvkeras.export.tflite.bias_correction):
    # each int32 bias absorbs its layer's mean output shift from int8 rounding, measured layer by layer on
    # this many calibration images (0: off).
    bias_correction_images: int = DEFAULT_FIT_IMAGES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

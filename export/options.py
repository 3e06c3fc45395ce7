"""What an export makes and with which settings: the artifact table and the one options object.

``ARTIFACTS`` drives the work: :func:`plan_artifacts` picks its rows for the requested formats and
precisions, and the exporter runs each picked row's converter (``cvkeras.export.onnx.steps`` /
``cvkeras.export.tflite.steps``) in table order. :class:`ExportOptions` holds every setting and checks them all,
once, before anything is read or written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

from cvkeras.export.errors import ExportError
from cvkeras.export.onnx.convert import DEFAULT_OPSET
from cvkeras.export.settings import DEFAULT_CALIBRATION, DEFAULT_SAMPLES, METHODS, QuantSettings
from cvkeras.export.tflite.convert import IO_TYPES
from cvkeras.export.verify import DEFAULT_FLOAT_TOLERANCE
from cvkeras.serving.errors import quote
from cvkeras.serving.unknown import DEFAULT_ACCEPT
from cvkeras.serving.validate import DEFAULT_MIN_AGREEMENT

FORMATS = ("onnx", "tflite")
MIN_OPSET, MAX_OPSET = 13, 18


class Artifact(NamedTuple):
    """One row of the artifact table: file name, format, precision and the flag that adds it (None: always)."""

    name: str
    format: str
    precision: str
    needs: str | None


#: Every artifact an export can make, in conversion order.
ARTIFACTS: tuple[Artifact, ...] = (
    Artifact("model.onnx", "onnx", "float32", None),
    Artifact("model_int8.onnx", "onnx", "int8", "int8"),
    Artifact("model_fp16.onnx", "onnx", "fp16", "fp16"),
    Artifact("model.tflite", "tflite", "float32", None),
    Artifact("model_int8.tflite", "tflite", "int8", "int8"),
    Artifact("model_fp16.tflite", "tflite", "fp16", "fp16"),
    Artifact("model_dynamic.tflite", "tflite", "dynamic", "int8"),
)


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``"onnx,tflite"`` or ``["onnx"]`` -> validated tuple; unknown names raise ExportError."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    names = tuple(dict.fromkeys(f.strip().lower() for f in items if f.strip()))
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise ExportError(f"unknown format {', '.join(unknown) or repr(formats)}; "
                          f"choose from {', '.join(FORMATS)}")
    return names


def plan_artifacts(formats: Sequence[str] = FORMATS, int8: bool = False, fp16: bool = False) -> list[str]:
    """Names of the artifacts an export with these options produces, in conversion order."""
    flags = {"int8": int8, "fp16": fp16}
    return [a.name for a in ARTIFACTS if a.format in formats and (a.needs is None or flags[a.needs])]


@dataclass(frozen=True)
class ExportOptions:
    """Every setting of ``cvkeras export`` (the CLI flags), with their defaults.

    ``calibration`` is the one place the ONNX calibration method is set; ``quant`` holds the other
    quantization knobs (its own ``calibration`` is replaced by this one).
    """

    formats: str | Sequence[str] = FORMATS
    int8: bool = False
    fp16: bool = False
    calibration: str = DEFAULT_CALIBRATION
    calibration_samples: int = DEFAULT_SAMPLES
    io_type: str = "uint8"
    opset: int = DEFAULT_OPSET
    max_accuracy_drop: float = 1.0
    float_tolerance: float = DEFAULT_FLOAT_TOLERANCE
    threads: int | None = None
    quant: QuantSettings | None = None
    verify_samples: int | None = None
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    #: what the int8 repair's search requires on the held-back training images (None: a quarter of the
    #: disagreement ``min_agreement`` allows, 0.9975 for 0.99). Training images flip about 4x less often than
    #: validation ones: low-margin images 2.1 % vs 8.6 % (issue #22's MobileNetV2 run), and 1 of 225 held-back
    #: vs 6 of 300 validation images flipped in the demo's int8 models with one float layer.
    repair_min_agreement: float | None = None
    repair: bool = True
    calibration_flip: bool = True
    float_stem: bool = True  # False (--int8-stem): model_int8.onnx quantizes its stem too (QuantSettings.float_stem 0)
    unknown: bool = True  # the unknown detector in every artifact (cvkeras.serving.unknown); --unknown off
    unknown_accept: float = DEFAULT_ACCEPT  # fraction of validation images its threshold accepts
    ood: str | None = None  # photos of none of the classes: the detector's AUROC and false-accept rate (--ood)

    def checked(self) -> ExportOptions:
        """This object with ``formats`` parsed, after checking every value (ExportError naming the flag)."""
        fmts = parse_formats(self.formats)
        if self.threads is not None and self.threads < 1:
            raise ExportError(f"--threads must be a whole number >= 1, not {self.threads}")
        if not (isinstance(self.max_accuracy_drop, int | float) and math.isfinite(self.max_accuracy_drop)
                and self.max_accuracy_drop >= 0):
            raise ExportError(f"--max-accuracy-drop must be a finite number >= 0, not {self.max_accuracy_drop}")
        if self.calibration not in METHODS:
            raise ExportError(f"unknown --calibration {quote(self.calibration)}; "
                              f"choose from {', '.join(METHODS)}")
        if self.io_type not in IO_TYPES:
            raise ExportError(f"unknown --io-type {quote(self.io_type)}; choose from {', '.join(IO_TYPES)}")
        if self.calibration_samples < 1:
            raise ExportError(f"--calibration-samples must be at least 1, not {self.calibration_samples}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ExportError(f"--opset {self.opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} "
                              f"(default {DEFAULT_OPSET})")
        if self.float_tolerance < 0:
            raise ExportError("--max-accuracy-drop and the float tolerance must not be negative")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ExportError(f"--min-agreement must be a fraction in 0..1, not {self.min_agreement}")
        if not (isinstance(self.unknown_accept, int | float) and 0.0 < self.unknown_accept <= 1.0):
            raise ExportError(f"--unknown-accept must be a fraction in 0..1 (e.g. 0.95), not {self.unknown_accept}")
        if self.ood is not None and not (self.unknown and os.path.isdir(self.ood)):
            raise ExportError(f"{self.ood}: --ood needs a folder of photos of none of the classes"
                              + ("" if self.unknown else " and --unknown on"))
        if self.repair_min_agreement is not None and not 0.0 <= self.repair_min_agreement <= 1.0:
            raise ExportError(f"--repair-min-agreement must be a fraction in 0..1, not {self.repair_min_agreement}")
        return replace(self, formats=fmts, quant=self.quant_settings())

    def quant_settings(self) -> QuantSettings:
        quant = replace(self.quant or QuantSettings(), calibration=self.calibration)
        return quant if self.float_stem else replace(quant, float_stem=0)

    def search_agreement(self) -> float:
        """The agreement the repair's search needs on held-back training images."""
        if self.repair_min_agreement is not None:
            return self.repair_min_agreement
        return 1.0 - (1.0 - self.min_agreement) / 4

    def planned(self) -> list[Artifact]:
        """The table rows this export makes, in conversion order."""
        names = plan_artifacts(parse_formats(self.formats), self.int8, self.fp16)
        return [a for a in ARTIFACTS if a.name in names]

    def settings(self, calibration_used: int, calibration_images: int) -> dict[str, Any]:
        """The ``settings`` block of ``export_report.json``."""
        quant = self.quant_settings()
        return {
            "formats": list(parse_formats(self.formats)), "int8": self.int8, "fp16": self.fp16, "opset": self.opset,
            "io_type": self.io_type, "calibration": self.calibration, "calibration_samples": calibration_used,
            "calibration_images": calibration_images, "calibration_flip": bool(self.int8 and self.calibration_flip),
            "quantization": quant.to_dict(), "max_accuracy_drop": self.max_accuracy_drop,
            "min_agreement": self.min_agreement, "repair": self.repair,
            "repair_min_agreement": self.search_agreement(),
            "float_tolerance": self.float_tolerance, "threads": self.threads,
            "unknown": self.unknown, "unknown_accept": self.unknown_accept if self.unknown else None,
            "ood": self.ood,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

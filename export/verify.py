"""Check every artifact against the Keras model through the serving runner (``serving.validate``).

Each artifact is loaded the way a device loads it (``serving.Predictor``: metadata and all) and run on the
validation images; the figures come from ``serving.validate.validate`` against the Keras outputs on the
same images. Gates: float32 artifacts must match Keras within ``float_tolerance`` (max absolute
probability difference); reduced-precision ones (fp16, dynamic, int8) must lose at most
``max_accuracy_drop`` accuracy points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import first_line

#: Largest max-abs probability difference a float32 artifact may have from Keras.
DEFAULT_FLOAT_TOLERANCE = 1e-4


@dataclass
class ArtifactResult:
    """One artifact's conversion and verification outcome (a row of ``export_report.json``).

    ``status``: ``passed`` | ``failed`` (missed its gate, or could not be run) | ``error`` (conversion
    failed) | ``skipped`` (its float32 parent failed). Accuracies are fractions, ``accuracy_drop`` is in
    points.
    """

    name: str
    format: str
    precision: str
    path: str
    status: str = "skipped"
    size_bytes: int | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    latency_ms: float | None = None
    n: int = 0
    gate: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate_for(precision: str, max_accuracy_drop: float, float_tolerance: float) -> str:
    if precision == "float32":
        return f"max_abs_diff <= {float_tolerance:g}"
    return f"accuracy_drop <= {max_accuracy_drop:g} points"


def verify_artifact(
    result: ArtifactResult, images: np.ndarray, labels: np.ndarray, keras_probs: np.ndarray,
    keras_accuracy: float, max_accuracy_drop: float = 1.0, float_tolerance: float = DEFAULT_FLOAT_TOLERANCE,
    threads: int | None = None, batch_size: int = 1,
) -> ArtifactResult:
    """Run ``result.path`` on ``images`` and fill the figures and the status of ``result`` (returned).

    ``batch_size`` 1 makes ``latency_ms`` the per-image latency a device sees, for ONNX and TFLite alike.
    """
    from serving.predictor import Predictor
    from serving.validate import Reference, validate

    path = Path(result.path)
    result.size_bytes = path.stat().st_size
    result.gate = gate_for(result.precision, max_accuracy_drop, float_tolerance)
    try:
        predictor = Predictor.load(path, threads=threads)
        reference = Reference(probs=keras_probs, labels=labels, accuracy=keras_accuracy, source="keras")
        report = validate(predictor, (images, labels), reference, max_accuracy_drop, batch_size)
    except Exception as exc:  # ModelError, MetadataError, runtime failures: report, keep the file
        result.status = "failed"
        result.error = f"{path.name}: cannot be run ({first_line(exc)})"
        return result
    result.n = report.n
    result.accuracy = report.accuracy
    result.accuracy_drop = report.accuracy_drop
    result.agreement = report.agreement
    result.max_abs_diff = report.max_abs_diff
    result.latency_ms = report.latency_ms_per_image
    if result.precision == "float32":
        ok = report.max_abs_diff is not None and report.max_abs_diff <= float_tolerance
        why = f"max abs probability difference {report.max_abs_diff:.2g} > {float_tolerance:g}"
    else:
        ok = report.passed
        why = f"accuracy drop {report.accuracy_drop:.2f} points > {max_accuracy_drop:g}"
    result.status = "passed" if ok else "failed"
    result.error = None if ok else f"{path.name}: {why}"
    return result

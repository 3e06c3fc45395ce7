"""Check every artifact against the Keras model through the serving runner (``cvkeras.serving.validate``).

Each artifact is loaded the way a device loads it (``serving.Predictor``: metadata and all) and run on the
fidelity images decoded from their files; the figures come from ``cvkeras.serving.validate.validate`` against
``reference.npz`` -- the same function, images and reference as ``cvkeras validate``, so both report the
same figures. Gates: float32 artifacts must match Keras within ``float_tolerance`` (max absolute
probability difference); reduced-precision ones (fp16, dynamic, int8) must keep top-1 agreement with
Keras of at least ``min_agreement`` and lose at most ``max_accuracy_drop`` accuracy points, both on the
validation images (nothing export fits or chooses uses them); the held-back training images' agreement is
reported beside it (``held_back_agreement``), never pooled into the gate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.serving.errors import first_line
from cvkeras.serving.validate import DEFAULT_MIN_AGREEMENT

#: Largest max-abs probability difference a float32 artifact may have from Keras.
DEFAULT_FLOAT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Gates:
    """The verification thresholds (drop in points, agreement as a fraction)."""

    max_accuracy_drop: float = 1.0
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    float_tolerance: float = DEFAULT_FLOAT_TOLERANCE


@dataclass
class ArtifactResult:
    """One artifact's conversion and verification outcome (a row of ``export_report.json``).

    ``status``: ``passed`` | ``failed`` (missed its gate, or could not be run) | ``error`` (conversion
    failed) | ``skipped`` (its float32 parent failed). Accuracies and agreement are fractions,
    ``accuracy_drop`` and its interval are in points (fractions in :meth:`to_dict`, the JSON).
    ``paired_accuracy``/``accuracy_drop``/``agreement``/``max_abs_diff`` are over the ``n_reference``
    (= ``n_paired``) validation images, ``held_back_agreement`` over the ``n_held_back`` held-back training
    images (the names of ``validate --json``; ``measured_on`` says it per figure).
    """

    name: str
    format: str
    precision: str
    path: str
    status: str = "skipped"
    size_bytes: int | None = None
    paired_accuracy: float | None = None  # names as in ``validate --json``: one name per figure
    accuracy_drop: float | None = None
    accuracy_drop_ci: list[float] | None = None
    agreement: float | None = None
    agreement_ci: list[float] | None = None
    max_abs_diff: float | None = None
    latency_ms_per_image: float | None = None
    n_paired: int = 0
    n_reference: int = 0
    held_back_agreement: float | None = None
    held_back_agreement_ci: list[float] | None = None
    n_held_back: int = 0
    ece: float | None = None  # calibration of the scores the device gives (the metadata's temperature applied)
    nll: float | None = None
    measured_on: dict[str, Any] | None = None
    gate: str = ""
    error: str | None = None
    float_layers: list[str] | None = None  # layers an int8 repair kept in float32
    repair: dict[str, Any] | None = None
    unknown: dict[str, Any] | None = None  # the unknown detector's figures (``validate --json``'s ``unknown``)
    #: the artifact's raw probabilities on the images it was verified on (``ValidationReport.probs``); not in
    #: the JSON
    probs: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        """The JSON row (``cvkeras.export_report/2``): the drop and its interval as fractions, like every
        other proportion there (the attributes keep points, the unit of the gate flag and the console)."""
        from cvkeras.serving.schema import points_to_fraction

        d = asdict(replace(self, probs=None))
        del d["probs"]
        d["accuracy_drop"] = points_to_fraction(self.accuracy_drop)
        d["accuracy_drop_ci"] = points_to_fraction(self.accuracy_drop_ci)
        return d


def gate_for(precision: str, gates: Gates) -> str:
    if precision == "float32":
        return f"max_abs_diff <= {gates.float_tolerance:g}"
    return f"agreement >= {100 * gates.min_agreement:g} % and accuracy_drop <= {gates.max_accuracy_drop:g} points"


def verify_artifact(result: ArtifactResult, items: Any, reference: Any, gates: Gates = Gates(),
                    threads: int | None = None, batch_size: int = 1, ood: list[str] | None = None
                    ) -> ArtifactResult:
    """Run ``result.path`` on ``items`` against ``reference``; fill the figures and status (returned).

    ``items`` and ``reference`` are what ``cvkeras.serving.validate.validate`` takes (files or arrays, a
    ``Reference``); ``ood``: foreign photos for the unknown detector's figures. ``batch_size`` 1 makes
    ``latency_ms_per_image`` the per-image latency a device sees.
    """
    from cvkeras.serving.predictor import Predictor
    from cvkeras.serving.validate import validate

    path = Path(result.path)
    result.size_bytes = path.stat().st_size
    result.gate = gate_for(result.precision, gates)
    float32 = result.precision == "float32"
    try:
        predictor = Predictor.load(path, threads=threads)
        report = validate(predictor, items, reference, gates.max_accuracy_drop, batch_size,
                          0.0 if float32 else gates.min_agreement, ood if predictor.unknown else None)
    except Exception as exc:  # ModelError, MetadataError, runtime failures: report, keep the file
        result.status = "failed"
        result.error = f"{path.name}: cannot be run ({first_line(exc)})"
        return result
    result.n_paired = report.n_paired
    result.n_reference = report.n_reference
    result.paired_accuracy = report.paired_accuracy
    result.accuracy_drop = report.accuracy_drop
    result.accuracy_drop_ci = report.accuracy_drop_ci
    result.agreement = report.agreement
    result.agreement_ci = report.agreement_ci
    result.max_abs_diff = report.max_abs_diff
    result.latency_ms_per_image = report.latency_ms_per_image
    result.held_back_agreement = report.held_back_agreement
    result.held_back_agreement_ci = report.held_back_agreement_ci
    result.n_held_back = report.n_held_back
    result.ece, result.nll = report.ece, report.nll
    result.unknown = report.unknown
    result.probs = report.probs
    result.measured_on = {k: v for k, v in report.measured_on.items() if k != "accuracy"}
    if float32:
        ok = report.max_abs_diff is not None and report.max_abs_diff <= gates.float_tolerance
        why = f"max abs probability difference {report.max_abs_diff:.2g} > {gates.float_tolerance:g}"
    else:
        ok = report.passed
        why = "; ".join(report.gate_failures)
    result.status = "passed" if ok else "failed"
    result.error = None if ok else f"{path.name}: {why}"
    return result

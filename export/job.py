"""What the per-format converters share during one export: the model, the options, the results table, the
calibration images, the metadata maker and the two verification callbacks; plus the bookkeeping of a
failed conversion and of an int8 repair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvkeras.export.errors import ExportError
from cvkeras.export.options import ExportOptions
from cvkeras.export.verify import ArtifactResult


@dataclass
class Job:
    """One export in progress (see ``cvkeras.export.exporter.export_run``)."""

    model: Any
    options: ExportOptions
    results: dict[str, ArtifactResult]  # the planned artifacts, by file name, in table order
    calib_images: np.ndarray | None  # what int8 calibrates on (with mirror images when calibration_flip)
    debug_images: np.ndarray  # the calibration sample itself (repair measures per-layer error on it)
    metadata: Callable[[str, dict[str, Any]], Any]  # (precision, extra) -> ModelMetadata
    say: Callable[[str], None]
    check: Callable[[ArtifactResult], ArtifactResult]  # verify an artifact file on the fidelity images
    fast_check: Callable[[str], tuple[bool, dict[str, Any]]]  # a repair candidate on the decoded arrays

    def wanted(self, fmt: str) -> list[ArtifactResult]:
        return [r for r in self.results.values() if r.format == fmt]


def fail_result(res: ArtifactResult, exc: ExportError) -> None:
    res.status = "error"
    res.error = str(exc)


def record_repair(res: ArtifactResult, full: dict[str, Any], outcome) -> None:
    """The repair's outcome in the artifact row: layers kept float, what it cost, every candidate tried."""
    doc = outcome.to_dict()
    doc["full_int8"] = {k: full.get(k) for k in ("agreement", "agreement_ci", "accuracy_drop", "accuracy_drop_ci",
                                                   "size_bytes", "latency_ms_per_image", "error")}
    if outcome.passed and res.size_bytes and full.get("size_bytes"):
        doc["size_cost"] = round(res.size_bytes / full["size_bytes"], 4)
        if full.get("latency_ms_per_image") and res.latency_ms_per_image:
            doc["latency_cost"] = round(res.latency_ms_per_image / full["latency_ms_per_image"], 4)
    res.float_layers = outcome.float_layers if outcome.passed else None
    if outcome.passed:  # the search's choice, judged once on the validation images like any artifact
        doc["judged_on"] = {"images": "validation", "n": res.n_reference, "agreement": res.agreement,
                            "accuracy_drop": res.to_dict().get("accuracy_drop"), "passed": res.ok}
    res.repair = doc
    if not outcome.passed:
        res.error = (f"{full.get('error')}; no mix of int8 and float layers passes (tried "
                     f"{', '.join(str(a.float_layers) for a in outcome.attempts)} layer(s) in float, on the "
                     "held-back training images)")

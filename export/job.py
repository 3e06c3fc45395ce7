"""What the per-format converters share during one export: the model, the options, the results table, the
calibration images, the metadata maker and the two verification callbacks; plus the bookkeeping of a
failed conversion (an int8 repair's is :func:`cvkeras.export.repair.record_repair`).
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

"""Export a fine-tuned run to checked, self-describing ONNX and TFLite artifacts (``cvkeras export``).

Example:
    >>> from cvkeras.export import export_run
    >>> report = export_run("runs/flowers", int8=True)
    >>> report.passed, [a.name for a in report.artifacts]
    (True, ['model.onnx', 'model_int8.onnx', 'model.tflite', 'model_int8.tflite', 'model_dynamic.tflite'])

``import cvkeras.export`` is cheap: the names below are imported on first use; TensorFlow, tf2onnx and onnx only
when a conversion runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cvkeras.serving.lazy import lazy_exports

if TYPE_CHECKING:
    from cvkeras.export.errors import ConversionError, ExportError
    from cvkeras.export.exporter import ExportReport, export_run
    from cvkeras.export.options import ARTIFACTS, ExportOptions, plan_artifacts
    from cvkeras.export.verify import ArtifactResult

_EXPORTS = {
    "ARTIFACTS": "cvkeras.export.options",
    "ArtifactResult": "cvkeras.export.verify",
    "ConversionError": "cvkeras.export.errors",
    "ExportError": "cvkeras.export.errors",
    "ExportOptions": "cvkeras.export.options",
    "ExportReport": "cvkeras.export.exporter",
    "export_run": "cvkeras.export.exporter",
    "plan_artifacts": "cvkeras.export.options",
}

__all__ = [
    "ARTIFACTS", "ArtifactResult", "ConversionError", "ExportError", "ExportOptions", "ExportReport", "export_run",
    "plan_artifacts",
]


__getattr__, __dir__ = lazy_exports('cvkeras.export', _EXPORTS, globals())

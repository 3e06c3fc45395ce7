"""Export a fine-tuned run to checked, self-describing ONNX and TFLite artifacts (``cvkeras export``).

Example:
    >>> from export import export_run
    >>> report = export_run("runs/flowers", int8=True)
    >>> report.passed, [a.name for a in report.artifacts]
    (True, ['model.onnx', 'model_int8.onnx', 'model.tflite', 'model_int8.tflite', 'model_dynamic.tflite'])

``import export`` is cheap: the names below are imported on first use; TensorFlow, tf2onnx and onnx only
when a conversion runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serving.lazy import lazy_exports

if TYPE_CHECKING:
    from export.errors import ConversionError, ExportError
    from export.exporter import ExportReport, export_run
    from export.options import ARTIFACTS, ExportOptions, plan_artifacts
    from export.verify import ArtifactResult

_EXPORTS = {
    "ARTIFACTS": "export.options",
    "ArtifactResult": "export.verify",
    "ConversionError": "export.errors",
    "ExportError": "export.errors",
    "ExportOptions": "export.options",
    "ExportReport": "export.exporter",
    "export_run": "export.exporter",
    "plan_artifacts": "export.options",
}

__all__ = [
    "ARTIFACTS", "ArtifactResult", "ConversionError", "ExportError", "ExportOptions", "ExportReport", "export_run",
    "plan_artifacts",
]


__getattr__, __dir__ = lazy_exports('export', _EXPORTS, globals())

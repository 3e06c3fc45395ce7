"""Export a fine-tuned run to checked, self-describing ONNX and TFLite artifacts (``cvkeras export``).

Example:
    >>> from export import export_run
    >>> report = export_run("runs/flowers", int8=True)
    >>> report.passed, [a.name for a in report.artifacts]
    (True, ['model.onnx', 'model_int8.onnx', 'model.tflite', 'model_int8.tflite', 'model_dynamic.tflite'])

TensorFlow, tf2onnx and onnx are imported only when a conversion runs.
"""

from __future__ import annotations

from export.errors import ConversionError, ExportError
from export.exporter import ARTIFACTS, ArtifactResult, ExportReport, export_run, plan_artifacts
from export.options import ExportOptions

__all__ = [
    "ARTIFACTS", "ArtifactResult", "ConversionError", "ExportError", "ExportOptions", "ExportReport", "export_run",
    "plan_artifacts",
]

"""Device side of cvkeras: numpy, Pillow and onnxruntime only -- never TensorFlow.

``import serving`` is cheap: :class:`Predictor` and friends (and onnxruntime with them) are imported on
first use.

Example:
    >>> import serving
    >>> serving.Predictor.load("export/model.onnx").predict("daisy.jpg").label
    'daisy'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serving.lazy import lazy_exports

if TYPE_CHECKING:
    from serving.metadata import MetadataError, ModelMetadata
    from serving.predictor import ModelError, Prediction, Predictor
    from serving.preprocess import ImageError, load_image
    from serving.validate import Reference, ValidationReport, validate

_EXPORTS = {
    "Predictor": "serving.predictor",
    "Prediction": "serving.predictor",
    "ModelError": "serving.predictor",
    "load_image": "serving.preprocess",
    "ImageError": "serving.preprocess",
    "ModelMetadata": "serving.metadata",
    "MetadataError": "serving.metadata",
    "validate": "serving.validate",
    "Reference": "serving.validate",
    "ValidationReport": "serving.validate",
}

__all__ = [
    "ImageError", "MetadataError", "ModelError", "ModelMetadata", "Prediction", "Predictor", "Reference",
    "ValidationReport", "load_image", "validate",
]


__getattr__, __dir__ = lazy_exports('serving', _EXPORTS, globals())

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

from cvkeras.serving.lazy import lazy_exports

if TYPE_CHECKING:
    from cvkeras.serving.metadata import MetadataError, ModelMetadata
    from cvkeras.serving.predictor import ModelError, Prediction, Predictor
    from cvkeras.serving.preprocess import ImageError, load_image
    from cvkeras.serving.validate import Reference, ValidationReport, validate

_EXPORTS = {
    "Predictor": "cvkeras.serving.predictor",
    "Prediction": "cvkeras.serving.predictor",
    "ModelError": "cvkeras.serving.predictor",
    "load_image": "cvkeras.serving.preprocess",
    "ImageError": "cvkeras.serving.preprocess",
    "ModelMetadata": "cvkeras.serving.metadata",
    "MetadataError": "cvkeras.serving.metadata",
    "validate": "cvkeras.serving.validate",
    "Reference": "cvkeras.serving.validate",
    "ValidationReport": "cvkeras.serving.validate",
}

__all__ = [
    "ImageError", "MetadataError", "ModelError", "ModelMetadata", "Prediction", "Predictor", "Reference",
    "ValidationReport", "load_image", "validate",
]


__getattr__, __dir__ = lazy_exports('cvkeras.serving', _EXPORTS, globals())

"""Device side of cvkeras: numpy, Pillow and onnxruntime only -- never TensorFlow.

``from cvkeras import serving`` is cheap: :class:`Predictor` and friends (and onnxruntime with them) are imported on
first use.

Example:
    >>> from cvkeras import serving
    >>> serving.Predictor.load("export/model.onnx").predict("daisy.jpg").label
    'daisy'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cvkeras.serving.lazy import lazy_exports

if TYPE_CHECKING:
    from cvkeras.serving.metadata import MetadataError, ModelMetadata
    from cvkeras.serving.predictor import Predictor
    from cvkeras.serving.preprocess import ImageError, load_image
    from cvkeras.serving.reference import Reference
    from cvkeras.serving.results import Prediction
    from cvkeras.serving.runners import ModelError
    from cvkeras.serving.validate import validate
    from cvkeras.serving.validation_report import ValidationReport

#: Public name -> the module that defines it.
_EXPORTS = {
    "Predictor": "cvkeras.serving.predictor",
    "Prediction": "cvkeras.serving.results",
    "ModelError": "cvkeras.serving.runners",
    "load_image": "cvkeras.serving.preprocess",
    "ImageError": "cvkeras.serving.preprocess",
    "ModelMetadata": "cvkeras.serving.metadata",
    "MetadataError": "cvkeras.serving.metadata",
    "validate": "cvkeras.serving.validate",
    "Reference": "cvkeras.serving.reference",
    "ValidationReport": "cvkeras.serving.validation_report",
}

__all__ = [
    "ImageError", "MetadataError", "ModelError", "ModelMetadata", "Prediction", "Predictor", "Reference",
    "ValidationReport", "load_image", "validate",
]


__getattr__, __dir__ = lazy_exports('cvkeras.serving', _EXPORTS, globals())

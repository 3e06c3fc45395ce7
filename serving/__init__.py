"""Device side of cvkeras: numpy, Pillow and onnxruntime only -- never TensorFlow.

``import serving`` is cheap: :class:`Predictor` and friends (and onnxruntime with them) are imported on
first use.

Example:
    >>> import serving
    >>> serving.Predictor.load("export/model.onnx").predict("daisy.jpg").label
    'daisy'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'serving' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

"""Self-describing model metadata: what a deployed model carries so it needs no run directory.

One JSON document, stored under the key ``"cvkeras"`` in an ONNX model's ``metadata_props`` and as
the JSON sidecar ``<model>.tflite.json`` next to a TFLite file. ``cvkeras export`` writes it; the
predictor reads it (device side: no TensorFlow, no ``onnx`` package needed).

Example:
    >>> meta = read_metadata("export/model_int8.onnx")
    >>> meta.labels, meta.input_size
    (['cat', 'dog'], (224, 224))
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cvkeras.serving.calibration import temperature_problem
from cvkeras.serving.errors import CvkerasError, first_line, quote
from cvkeras.serving.formats import label_problem
from cvkeras.serving.preprocess import contract
from cvkeras.serving.unknown import unknown_problem

METADATA_KEY = "cvkeras"
SCHEMA_VERSION = 1


MAX_INPUT_SIDE = 4096  # a larger input is damaged metadata (and would exhaust memory), not a model
#: Inserted before the suffix of an artifact that failed its export check: ``model_int8.FAILED.onnx``.
#: No default name a device loads ends that way; the metadata carries the verdict too (``failed_check``).
FAILED_MARK = ".FAILED"


def failed_name(path: str | os.PathLike) -> Path:
    """``export/model_int8.onnx`` -> ``export/model_int8.FAILED.onnx`` (the name a failed artifact is kept under)."""
    p = Path(path)
    return p.with_name(p.stem + FAILED_MARK + p.suffix)


class FailedModelWarning(UserWarning):
    """Loading a model whose metadata says it failed its ``cvkeras export`` check."""


class MetadataError(CvkerasError, ValueError):
    """A model without usable cvkeras metadata; the message names the file and the fix."""


@dataclass
class ModelMetadata:
    """Everything a device needs to run a model: labels, input contract, provenance, reference accuracy."""

    labels: list[str]
    input_size: tuple[int, int]
    model_name: str = ""
    precision: str = "float32"  # float32 | fp16 | int8 | dynamic
    producer: str = "cvkeras"
    producer_version: str = ""
    reference_accuracy: float | None = None  # Keras model's accuracy on the validation split
    #: scores = softmax(log p / temperature) (:mod:`cvkeras.serving.calibration`); 1.0: as the model outputs them
    temperature: float = 1.0
    #: the "unknown" detector (:mod:`cvkeras.serving.unknown`); None: the model always answers a class
    unknown: dict[str, Any] | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.temperature = float(self.temperature)
        if not self.preprocess:
            self.preprocess = contract(*self.input_size)

    @property
    def failed_check(self) -> str | None:
        """Why the model failed its export check (``extra["verification"]``), or None for a passing model."""
        mark = self.extra.get("verification") if isinstance(self.extra, dict) else None
        if isinstance(mark, dict) and mark.get("status") == "failed":
            return str(mark.get("reason") or "failed its export check")
        return None

    def to_json(self) -> str:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<metadata>") -> ModelMetadata:
        try:
            d = json.loads(text)
            known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
            size = known.get("input_size")
            if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size)):
                raise MetadataError(f"{source}: metadata field input_size must be [height, width], not "
                                    f"{quote(size, 40)}; re-export the model")
            problem = temperature_problem(known.get("temperature", 1.0))
            if problem:
                raise MetadataError(f"{source}: metadata field temperature {problem}; re-export the model")
            meta = cls(**known)
        except MetadataError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise MetadataError(f"{source}: cvkeras metadata is malformed ({exc}); re-export the model") \
                from None
        if not all(1 <= v <= MAX_INPUT_SIDE for v in meta.input_size):
            raise MetadataError(f"{source}: metadata field input_size {list(meta.input_size)} is outside "
                                f"1..{MAX_INPUT_SIDE}; re-export the model")
        if not isinstance(meta.labels, list) or not all(isinstance(x, str) for x in meta.labels):
            raise MetadataError(f"{source}: metadata labels are not a list of names; re-export the model")
        if not meta.labels:
            raise MetadataError(f"{source}: metadata has no labels; re-export it with `cvkeras export`")
        problem = label_problem(meta.labels)
        if problem:
            raise MetadataError(f"{source}: metadata labels: {problem}; re-export the model")
        if meta.unknown is not None and (problem := unknown_problem(meta.unknown, len(meta.labels))):
            raise MetadataError(f"{source}: metadata field unknown {problem}; re-export the model")
        return meta


def sidecar_path(tflite_path: str | os.PathLike) -> Path:
    """The JSON sidecar that describes a TFLite file: ``model.tflite`` -> ``model.tflite.json``."""
    p = Path(tflite_path)
    return p.with_name(p.name + ".json")


def metadata_from_props(props: Mapping[str, str], source: str) -> ModelMetadata:
    """Parse the metadata of an ONNX model from its ``metadata_props`` (e.g. an open session's map)."""
    if METADATA_KEY not in props:
        raise MetadataError(f"{source}: no cvkeras metadata; export the model with `cvkeras export`")
    return ModelMetadata.from_json(props[METADATA_KEY], source)


def read_metadata(model_path: str | os.PathLike) -> ModelMetadata:
    """Read the metadata of an ``.onnx`` (metadata_props) or ``.tflite`` (JSON sidecar) model."""
    path = Path(model_path)
    if path.suffix == ".tflite":
        side = sidecar_path(path)
        if not side.is_file():
            raise MetadataError(f"{path}: no metadata sidecar {side.name}; keep it next to the model")
        return ModelMetadata.from_json(side.read_text(), str(side))
    if path.suffix == ".onnx":
        import onnxruntime as ort

        try:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise MetadataError(f"{path}: not a loadable ONNX model ({first_line(exc)})") from None
        return metadata_from_props(sess.get_modelmeta().custom_metadata_map, str(path))
    raise MetadataError(f"{path}: unknown model type {quote(path.suffix)}; expected .onnx or .tflite")

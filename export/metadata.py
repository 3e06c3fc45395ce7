"""Make artifacts self-describing: cvkeras metadata in ONNX ``metadata_props`` and TFLite JSON sidecars.

The metadata format itself is :mod:`cvkeras.serving.metadata`'s; ``labels.txt`` is :mod:`cvkeras.serving.formats`' and
``reference.npz`` :mod:`cvkeras.serving.reference`'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvkeras import __version__
from cvkeras.run.files import atomic_write
from cvkeras.serving.metadata import METADATA_KEY, ModelMetadata, metadata_from_props, sidecar_path


def make_metadata(labels: Sequence[str], input_size: Sequence[int], model_name: str, precision: str,
                  reference_accuracy: float | None, extra: dict[str, Any] | None = None,
                  temperature: float = 1.0, unknown: dict[str, Any] | None = None) -> ModelMetadata:
    """The metadata of one artifact (precision: float32 | fp16 | int8 | dynamic; ``temperature``: the run's,
    which the device applies to the model's probabilities; ``unknown``: the detector's block,
    :meth:`cvkeras.serving.unknown.UnknownDetector.to_dict`)."""
    return ModelMetadata(
        labels=list(labels), input_size=(int(input_size[0]), int(input_size[1])), model_name=model_name,
        precision=precision, producer_version=__version__,
        reference_accuracy=None if reference_accuracy is None else float(reference_accuracy),
        temperature=float(temperature), unknown=unknown, extra=dict(extra or {}),
    )


def embed_onnx(proto, meta: ModelMetadata) -> None:
    """Store ``meta`` under the ``cvkeras`` key of the model's ``metadata_props`` (replacing any old one)."""
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = meta.to_json()


def onnx_metadata(proto, source: str | os.PathLike) -> ModelMetadata:
    """The metadata embedded in ONNX model ``proto`` (read from ``source``), parsed by serving's reader."""
    return metadata_from_props({p.key: p.value for p in proto.metadata_props}, str(source))


def write_sidecar(tflite_path: str | os.PathLike, meta: ModelMetadata) -> Path:
    """Write ``<model>.tflite.json`` next to a TFLite file."""
    return atomic_write(sidecar_path(tflite_path), meta.to_json() + "\n")

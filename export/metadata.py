"""Make artifacts self-describing: cvkeras metadata in ONNX ``metadata_props`` and TFLite JSON sidecars,
``labels.txt``, and the Keras model's reference outputs (``reference.npz``) for later on-device parity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras import __version__
from cvkeras.rundir import atomic_write
from serving.metadata import METADATA_KEY, ModelMetadata, sidecar_path

REFERENCE_FILE = "reference.npz"
LABELS_FILE = "labels.txt"


def make_metadata(labels: Sequence[str], input_size: Sequence[int], model_name: str, precision: str,
                  reference_accuracy: float | None, extra: dict[str, Any] | None = None) -> ModelMetadata:
    """The metadata of one artifact (precision: float32 | fp16 | int8 | dynamic)."""
    return ModelMetadata(
        labels=list(labels), input_size=(int(input_size[0]), int(input_size[1])), model_name=model_name,
        precision=precision, producer_version=__version__,
        reference_accuracy=None if reference_accuracy is None else float(reference_accuracy),
        extra=dict(extra or {}),
    )


def embed_onnx(proto, meta: ModelMetadata) -> None:
    """Store ``meta`` under the ``cvkeras`` key of the model's ``metadata_props`` (replacing any old one)."""
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = meta.to_json()


def write_sidecar(tflite_path: str | os.PathLike, meta: ModelMetadata) -> Path:
    """Write ``<model>.tflite.json`` next to a TFLite file."""
    return atomic_write(sidecar_path(tflite_path), meta.to_json() + "\n")


def write_labels(out_dir: str | os.PathLike, labels: Sequence[str]) -> Path:
    return atomic_write(Path(out_dir) / LABELS_FILE, "".join(f"{name}\n" for name in labels))


def relative_paths(paths: Sequence[str], root: str | os.PathLike | None) -> list[str]:
    """Paths relative to the data root ("class/file.jpg") where they are under it, else as given."""
    out = []
    for p in paths:
        try:
            out.append(Path(p).relative_to(root).as_posix() if root else str(p))
        except ValueError:
            out.append(str(p))
    return out


def write_reference(out_dir: str | os.PathLike, paths: Sequence[str] | None, labels: np.ndarray,
                    probs: np.ndarray, accuracy: float, splits: Sequence[str] | None = None) -> Path:
    """Save the Keras outputs on the fidelity images: ``paths``, ``labels``, ``probs``, ``split``, ``accuracy``.

    ``split`` is "val" (labelled held-out: drop and agreement) or "train" (held back from calibration:
    agreement only) per row; ``accuracy`` is the Keras accuracy (fraction) on the "val" rows. ``paths``
    None (TFDS): rows match images by position.
    """
    def write(tmp: str) -> None:
        arrays = {"labels": np.asarray(labels, dtype=np.int64), "probs": np.asarray(probs, dtype=np.float32),
                  "accuracy": np.float64(accuracy)}
        if paths is not None:
            arrays["paths"] = np.asarray(list(paths), dtype=str)
        if splits is not None:
            arrays["split"] = np.asarray(list(splits), dtype=str)
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(Path(out_dir) / REFERENCE_FILE, write)

"""Representative data for int8 calibration: the run's own training images, never random tensors.

Images come from the run's training split through the same decode/resize as training (no augmentation),
stratified across classes and deterministic in the run's seed (``cvkeras.pipeline.load_split_images``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np

from export.errors import ExportError
from serving.formats import INPUT_NAME

#: Default number of calibration images (all of the training split when it is smaller).
DEFAULT_SAMPLES = 300
#: Calibration methods of ``--calibration`` (ONNX Runtime's; TFLite's converter always uses min/max).
METHODS = ("minmax", "entropy", "percentile")


def calibration_images(run: str | os.PathLike, samples: int = DEFAULT_SAMPLES,
                       seed: int | None = None) -> np.ndarray:
    """Up to ``samples`` decoded training images of ``run`` as uint8 NHWC, stratified by class."""
    from cvkeras.pipeline import load_split_images

    if samples < 1:
        raise ExportError(f"--calibration-samples must be at least 1, not {samples}")
    images, _, _ = load_split_images(run, "train", max_samples=samples, seed=seed)
    if len(images) == 0:
        raise ExportError(f"{run}/split.json: the training split is empty; int8 calibration needs its images")
    return images


def float_batches(images: np.ndarray, batch_size: int = 1) -> Iterator[np.ndarray]:
    """float32 NHWC batches in 0..255 (the model's input contract), in order."""
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size].astype(np.float32)


def tflite_representative_dataset(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """A ``TFLiteConverter.representative_dataset``: one float32 image per step."""

    def generate() -> Iterator[list[np.ndarray]]:
        for x in float_batches(images, 1):
            yield [x]

    return generate


def ort_data_reader(images: np.ndarray, input_name: str = INPUT_NAME):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``images``, one image per step.

    One image per step because the histogram calibrators (entropy, percentile) need equal-sized batches.
    """
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = float_batches(images, 1)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

        def rewind(self) -> None:
            self._it = float_batches(images, 1)

    return _Reader()

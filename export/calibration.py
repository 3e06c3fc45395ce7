"""Representative data for int8 calibration, fed to either quantizer: the run's own images, never random tensors.

The images are the fidelity set's calibration rows (:mod:`cvkeras.export.fidelity`); this module only feeds
them to ONNX Runtime's calibrator and to the TFLite converter. How many, and by which method:
:mod:`cvkeras.export.settings`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from cvkeras.serving.formats import INPUT_NAME


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

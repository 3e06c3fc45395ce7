"""The TFLite int8 repair's measure and candidates: ``tf.lite.experimental.QuantizationDebugger``.

NumericVerify ops compare each quantized op with its float twin on the same input (calibration images,
never the fidelity images the gate is decided on); an op's error is the RMSE of that difference over the
output's quantization scale, the "rmse/scale" of TensorFlow's quantization debugger guide (0.29 is pure
rounding). Candidates keep the chosen ops in float through the quantizer's ``denylisted_nodes``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

from cvkeras.export.errors import ConversionError, quiet
from cvkeras.export.repair import LayerError
from cvkeras.serving.errors import first_line


class TFLiteDebugger:
    """``tf.lite.experimental.QuantizationDebugger`` on the run's SavedModel: per-layer errors, and
    full-integer models with chosen layers (``denylisted_nodes``) left in float."""

    def __init__(self, saved_model_dir: str, calibration: np.ndarray, debug_images: np.ndarray,
                 artifact: str = "model_int8.tflite") -> None:
        import tensorflow as tf

        from cvkeras.export.calibration import tflite_representative_dataset

        self.artifact = artifact
        conv = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = tflite_representative_dataset(calibration)
        try:
            with quiet():
                self._debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=conv, debug_dataset=tflite_representative_dataset(debug_images))
                self._debugger.run()
        except Exception as exc:  # converter and interpreter errors
            raise ConversionError(artifact, f"the TFLite quantization debugger failed ({first_line(exc)})") \
                from None

    def ranking(self) -> list[LayerError]:
        """Quantized ops by rmse/scale of their NumericVerify difference, worst first."""
        buf = io.StringIO()
        self._debugger.layer_statistics_dump(buf)
        ranked = []
        for row in csv.DictReader(io.StringIO(buf.getvalue())):
            try:
                rmse = float(np.sqrt(float(row["mean_squared_error"])))
                scale = float(row["scale"])
            except (KeyError, ValueError):
                continue
            if scale > 0 and np.isfinite(rmse):
                ranked.append(LayerError(row["tensor_name"], row.get("op_name", ""), rmse / scale, "rmse/scale"))
        ranked.sort(key=lambda r: -r.error)
        return ranked

    def quantize(self, denylisted_nodes: Sequence[str], io_type: str) -> bytes:
        """The full-integer model (``io_type`` input) with the ops producing ``denylisted_nodes`` in float
        (and its classifier, like every ``model_int8.tflite``: :func:`cvkeras.export.tflite.convert.int8_model`)."""
        from cvkeras.export.tflite.convert import int8_model

        return int8_model(self._debugger.calibrated_model, io_type, denylisted_nodes, self.artifact)

"""``cvkeras.export.errors.converting``: every failure inside a conversion step becomes one line naming the artifact."""

from __future__ import annotations

import numpy as np
import pytest


def test_converting_turns_any_error_into_one_line_and_lets_export_errors_through():
    from cvkeras.export.errors import ConversionError, ExportError, converting

    with pytest.raises(ConversionError) as info:
        with converting("model_int8.onnx", "int8 bias correction", "export without --int8"):
            raise ValueError("shapes differ\ntraceback-ish detail")
    assert str(info.value) == "model_int8.onnx: int8 bias correction failed (shapes differ); export without --int8"
    assert info.value.artifact == "model_int8.onnx"
    with pytest.raises(ConversionError, match=r"^x.tflite: ranking its layers failed \(boom\)$"):
        with converting("x.tflite", "ranking its layers"):
            raise RuntimeError("boom")
    original = ExportError("model.onnx: already one line")
    with pytest.raises(ExportError) as info:
        with converting("model_int8.onnx", "anything"):
            raise original
    assert info.value is original


def test_a_failing_gptq_step_names_the_artifact_and_the_step(tmp_path, monkeypatch):
    """quantize_int8 through a GPTQ step that raises: one ConversionError line, no traceback type leaks."""
    pytest.importorskip("onnxruntime")
    from cvkeras.export.errors import ConversionError
    from cvkeras.export.onnx import weight_rounding
    from cvkeras.export.onnx.quantize import quantize_int8
    from cvkeras.export.settings import QuantSettings
    from tests.support.export_models import stem_onnx_net

    stem_onnx_net(tmp_path / "net.onnx")

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("Matrix is singular")

    monkeypatch.setattr(weight_rounding, "round_weights", broken)
    calib = np.random.default_rng(0).uniform(0, 255, (8, 3, 16, 16)).astype(np.float32)
    with pytest.raises(ConversionError, match=r"^model_int8.onnx: GPTQ weight rounding failed \(Matrix is singular\); "
                                              r"export without --int8$"):
        quantize_int8(tmp_path / "net.onnx", calib, QuantSettings(bias_correction_images=0))

"""The TFLite rows of the artifact table, all from one traced SavedModel: ``model.tflite``, ``model_int8.tflite``
(full integer, its rounding fitted to the data by GPTQ and bias correction like ``model_int8.onnx``, and
repaired with the QuantizationDebugger's denylist when it misses a gate), ``model_fp16.tflite`` and
``model_dynamic.tflite`` (its int8 weights rounded by GPTQ too, and its worst ops given float weights when it
misses a gate); each with its JSON metadata sidecar and, with the unknown detector, its ``features`` output
(:func:`finish`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.export import fitting
from cvkeras.export import metadata as meta_io
from cvkeras.export.errors import ConversionError, ExportError, converting
from cvkeras.export.job import Job, fail_result
from cvkeras.export.repair import CandidateFiles, LayerError
from cvkeras.export.settings import TFLITE_CALIBRATION, QuantSettings
from cvkeras.export.verify import ArtifactResult


def convert(job: Job) -> None:
    """Make, check (and repair) every planned TFLite artifact."""
    from cvkeras.export.tflite import convert as to_tflite
    from cvkeras.run.files import atomic_write

    model, say, check, metadata = job.model, job.say, job.check, job.metadata
    io_type, repair, quant = job.options.io_type, job.options.repair, job.options.quant_settings()
    calib_images = job.calib_images
    blobs: dict[str, bytes] = {}  # by precision: the float model is the reference of the int8 fitting

    wanted = job.wanted("tflite")
    if not wanted:
        return
    say("tracing the Keras model for TFLite")
    try:
        with to_tflite.saved_model(model) as saved:
            for res in wanted:
                say(f"converting {res.name}")
                extra: dict[str, Any] = {"format": "tflite"}
                try:
                    blob = blobs[res.precision] = to_tflite.convert(saved, res.precision, calib_images, io_type,
                                                                    res.name)
                    if res.precision == "int8":
                        extra.update(io_type=io_type,
                                     calibration={"method": TFLITE_CALIBRATION, "samples": len(calib_images)})
                    if res.precision in ("int8", "dynamic"):
                        reference = float_blob(blobs, saved, res.name)
                        blob = fit_rounding(blob, reference, calib_images, quant, res.name, extra, say,
                                            hybrid=res.precision == "dynamic")
                    meta = metadata(res.precision, extra)
                    named, blob = blob, finish(blob, meta.unknown is not None, res.name)  # names serve fitting
                except ExportError as exc:
                    fail_result(res, exc)
                    continue
                atomic_write(res.path, blob)
                meta_io.write_sidecar(res.path, meta)
                res.status = "converted"
                check(res)
                if repair and res.status == "failed" and not res.error.endswith("cannot be run"):
                    if res.precision == "int8":
                        repair_tflite(res, saved, job, extra, float_blob(blobs, saved, res.name))
                    elif res.precision == "dynamic":
                        repair_dynamic(res, named, float_blob(blobs, saved, res.name), job, extra)
    except ConversionError as exc:  # the SavedModel trace failed: no TFLite variant can be made
        for res in wanted:
            fail_result(res, ConversionError(res.name, str(exc).split(": ", 1)[-1]))


def finish(blob: bytes, features: bool, artifact: str) -> bytes:
    """The file an artifact's fitted ``blob`` is written as: with the unknown detector's ``features`` output
    when ``features`` (added last, so the fitting and repair work on one-output graphs, as for ONNX), and
    compacted."""
    from cvkeras.export.tflite import convert as to_tflite

    return to_tflite.compact(to_tflite.add_features_output(blob, artifact) if features else blob, artifact)


def float_blob(blobs: dict[str, bytes], saved: str, artifact: str = "model_int8.tflite") -> bytes:
    """The float32 TFLite model of this export, the int8 fitting's reference (converted now, for
    ``artifact``'s sake, when model.tflite was not made)."""
    from cvkeras.export.tflite import convert as to_tflite

    if "float32" not in blobs:
        blobs["float32"] = to_tflite.convert(saved, "float32", artifact=artifact)
    return blobs["float32"]


def fit_rounding(blob: bytes, reference: bytes, images: np.ndarray, quant: QuantSettings, artifact: str,
                 report: dict[str, Any] | None, say: Callable[[str], None], hybrid: bool = False) -> bytes:
    """GPTQ weight rounding, then bias correction, of full-integer model ``blob`` against its float twin:
    :func:`cvkeras.export.fitting.fit_rounding` with the TFLite steps, with the same settings as ONNX
    (``gptq_images``, ``bias_correction_images``; 0 turns a step off); ``report`` gets ``"gptq"`` and
    ``"bias_correction"``. ``hybrid``: ``blob`` is the dynamic-range model: GPTQ only (its activations are
    quantized at run time, per batch, so there is no fixed rounding shift for a bias to absorb).

    Raises:
        ConversionError: a step failed.
    """
    from cvkeras.export.tflite.bias_correction import correct_biases
    from cvkeras.export.tflite.weight_rounding import round_weights

    def bias_step(b: bytes, n: int) -> tuple[bytes, dict[str, Any]]:
        out, done = correct_biases(b, reference, images, n)
        return out, done.summary()

    return fitting.fit_rounding(blob, quant, lambda b, n: round_weights(b, reference, images, n, hybrid=hybrid),
                                None if hybrid else bias_step, artifact, report, say)


def repair_tflite(res: ArtifactResult, saved: str, job: Job, extra: dict[str, Any], reference: bytes) -> None:
    """:func:`cvkeras.export.repair.repair_artifact` for ``model_int8.tflite``, ranked and made by the
    QuantizationDebugger (:mod:`cvkeras.export.tflite.debugger`, ``denylisted_nodes``); each candidate gets
    :func:`fit_rounding` too (with the export's settings and the float model ``reference``)."""
    from cvkeras.export import repair
    from cvkeras.export.tflite.debugger import TFLiteDebugger

    quant, io_type, calib_images = job.options.quant_settings(), job.options.io_type, job.calib_images
    debugger: list[TFLiteDebugger] = []

    def rank() -> list[LayerError]:
        debugger.append(TFLiteDebugger(saved, calib_images, job.debug_images[: repair.DEBUG_IMAGES], res.name))
        return debugger[0].ranking()

    def make(layers: list[LayerError]) -> tuple[bytes, dict[str, Any]]:
        blob, rounding = debugger[0].quantize([r.name for r in layers], io_type), {}
        blob = fit_rounding(blob, reference, calib_images, quant, res.name, rounding, lambda m: None)
        return blob, rounding

    repair.repair_artifact(res, "per-layer int8 error (TFLite QuantizationDebugger)", rank,
                           candidate_files(res, make, job.metadata), extra, job.fast_check, job.check, job.say)


def repair_dynamic(res: ArtifactResult, blob: bytes, reference: bytes, job: Job, extra: dict[str, Any]) -> None:
    """When ``model_dynamic.tflite`` misses a gate: give its worst int8-weight ops (ranked by
    :func:`cvkeras.export.tflite.dynamic_repair.rank_layers` on the calibration images) their float weights back, the
    fewest that pass. ``blob``: the model as fitted, before its names were stripped."""
    from cvkeras.export import repair
    from cvkeras.export.tflite.dynamic_repair import float_weights, rank_layers

    def rank() -> list[LayerError]:
        with converting(res.name, "ranking its layers"):
            return rank_layers(blob, reference, job.calib_images)

    def make(layers: list[LayerError]) -> tuple[bytes, dict[str, Any]]:
        return float_weights(blob, reference, [r.name for r in layers]), {}

    repair.repair_artifact(res, "per-layer int8 weight error on calibration images", rank,
                           candidate_files(res, make, job.metadata), extra, job.fast_check, job.check, job.say)


def candidate_files(res: ArtifactResult, make: Callable[[list[LayerError]], tuple[bytes, dict[str, Any]]],
                    metadata: Callable[[str, dict[str, Any]], Any]) -> CandidateFiles:
    """The TFLite repair candidates of ``res``: ``make(layers) -> (blob, fitting record)`` written
    (:func:`finish`) next to the artifact with a copy of its sidecar; the passing one replaces it with its own
    metadata."""
    import shutil

    from cvkeras.export.tflite import convert as to_tflite
    from cvkeras.run.files import atomic_write
    from cvkeras.serving.metadata import sidecar_path

    features = metadata(res.precision, {}).unknown is not None

    def write(layers: list[LayerError], path: str) -> dict[str, Any]:
        blob, rounding = make(layers)
        atomic_write(path, finish(blob, features, res.name))
        shutil.copyfile(sidecar_path(res.path), sidecar_path(path))
        return rounding

    def adopt(path: str, extra: dict[str, Any]) -> None:
        atomic_write(res.path, Path(path).read_bytes())  # recorded as cvkeras's, like every artifact
        if res.precision == "int8":
            extra["io_type"] = to_tflite.input_type(path)
        meta_io.write_sidecar(res.path, metadata(res.precision, extra))

    def remove(path: str) -> None:
        Path(path).unlink(missing_ok=True)
        sidecar_path(path).unlink(missing_ok=True)

    return CandidateFiles(".tflite", write, adopt, remove)

"""The TFLite rows of the artifact table, all from one traced SavedModel: ``model.tflite``, ``model_int8.tflite``
(full integer, its rounding fitted to the data by GPTQ and bias correction like ``model_int8.onnx``, and
repaired with the QuantizationDebugger's denylist when it misses a gate), ``model_fp16.tflite`` and
``model_dynamic.tflite`` (its int8 weights rounded by GPTQ too, and its worst ops given float weights when it
misses a gate); each with its JSON metadata sidecar.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.export import metadata as meta_io
from cvkeras.export.errors import ConversionError, ExportError, converting
from cvkeras.export.job import Job, fail_result, record_repair
from cvkeras.export.onnx.quantize import QuantSettings
from cvkeras.export.verify import ArtifactResult


def convert(job: Job) -> None:
    """Make, check (and repair) every planned TFLite artifact."""
    from cvkeras.export.tflite import convert as to_tflite
    from cvkeras.run.files import atomic_write

    model, say, check, metadata, fast_check = job.model, job.say, job.check, job.metadata, job.fast_check
    io_type, repair, quant = job.options.io_type, job.options.repair, job.options.quant_settings()
    calib_images, debug_images = job.calib_images, job.debug_images
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
                                     calibration={"method": "minmax", "samples": len(calib_images)})
                    if res.precision in ("int8", "dynamic"):
                        reference = float_blob(blobs, saved, res.name)
                        blob = fit_rounding(blob, reference, calib_images, quant, res.name, extra, say,
                                            hybrid=res.precision == "dynamic")
                    named, blob = blob, to_tflite.compact(blob, res.name)  # names serve fitting and repair
                except ExportError as exc:
                    fail_result(res, exc)
                    continue
                atomic_write(res.path, blob)
                meta_io.write_sidecar(res.path, metadata(res.precision, extra))
                res.status = "converted"
                check(res)
                if repair and res.status == "failed" and not res.error.endswith("cannot be run"):
                    if res.precision == "int8":
                        repair_tflite(res, saved, calib_images, debug_images, io_type, extra, metadata,
                                      fast_check, check, say, quant, float_blob(blobs, saved, res.name))
                    elif res.precision == "dynamic":
                        repair_dynamic(res, named, float_blob(blobs, saved, res.name), calib_images, extra,
                                       metadata, fast_check, check, say)
    except ConversionError as exc:  # the SavedModel trace failed: no TFLite variant can be made
        for res in wanted:
            fail_result(res, ConversionError(res.name, str(exc).split(": ", 1)[-1]))


def float_blob(blobs: dict[str, bytes], saved: str, artifact: str = "model_int8.tflite") -> bytes:
    """The float32 TFLite model of this export, the int8 fitting's reference (converted now, for
    ``artifact``'s sake, when model.tflite was not made)."""
    from cvkeras.export.tflite import convert as to_tflite

    if "float32" not in blobs:
        blobs["float32"] = to_tflite.convert(saved, "float32", artifact=artifact)
    return blobs["float32"]


def fit_rounding(blob: bytes, reference: bytes, images: np.ndarray, quant: QuantSettings, artifact: str,
                 report: dict[str, Any] | None, say: Callable[[str], None], hybrid: bool = False) -> bytes:
    """GPTQ weight rounding, then bias correction, of full-integer model ``blob`` against its float twin.

    The TFLite twin of :func:`cvkeras.export.onnx.quantize._fit_rounding`, with the same settings (``gptq_images``,
    ``bias_correction_images``; 0 turns a step off); ``report`` gets ``"gptq"`` and ``"bias_correction"``.
    ``hybrid``: ``blob`` is the dynamic-range model: GPTQ only (its activations are quantized at run time,
    per batch, so there is no fixed rounding shift for a bias to absorb).

    Raises:
        ConversionError: a step failed.
    """
    from cvkeras.export.tflite.bias_correction import correct_biases
    from cvkeras.export.tflite.weight_rounding import round_weights

    def bias_step(b: bytes, n: int) -> tuple[bytes, dict[str, Any]]:
        out, done = correct_biases(b, reference, images, n)
        return out, done.summary()

    steps = (("gptq", quant.gptq_images, "GPTQ weight rounding",
              lambda b, n: round_weights(b, reference, images, n, hybrid=hybrid)),
             ("bias_correction", 0 if hybrid else quant.bias_correction_images, "int8 bias correction",
              bias_step))
    for key, n, what, step in steps:
        if n <= 0:
            continue
        with converting(artifact, what, "export without --int8"):
            blob, done = step(blob, n)
        say(f"  {artifact}: {what} of {done.get('layers', 0)} op(s), {done.get('images', 0)} images, "
            f"{done.get('seconds', 0)} s")
        if report is not None:
            report[key] = done
    return blob


def repair_tflite(res: ArtifactResult, saved: str, calib_images, debug_images, io_type: str, extra, metadata,
                   fast_check, check, say, quant: QuantSettings | None = None, reference: bytes | None = None) -> None:
    """TFLite twin of :func:`..onnx.steps.repair_onnx`, with the QuantizationDebugger's ``denylisted_nodes``;
    each candidate gets :func:`fit_rounding` too (with ``quant`` and the float model ``reference``)."""
    from cvkeras.export import repair

    full = res.to_dict()
    say(f"{res.error}; measuring per-layer int8 error (TFLite QuantizationDebugger)")
    try:
        debugger = repair.TFLiteDebugger(saved, calib_images, debug_images[: repair.DEBUG_IMAGES], res.name)

        def make(names: list[str]) -> tuple[bytes, dict[str, Any]]:
            blob, rounding = debugger.quantize(names, io_type), {}
            if quant is not None and reference is not None:
                blob = fit_rounding(blob, reference, calib_images, quant, res.name, rounding, lambda m: None)
            return blob, rounding

        _search(res, full, debugger.ranking(), make, extra, metadata, fast_check, check, say)
    except ExportError as exc:
        res.repair = {"error": str(exc)}


def repair_dynamic(res: ArtifactResult, blob: bytes, reference: bytes, calib_images, extra, metadata, fast_check,
                   check, say) -> None:
    """When ``model_dynamic.tflite`` misses a gate: give its worst int8-weight ops (ranked by
    :func:`cvkeras.export.tflite.dynamic_repair.rank_layers` on the calibration images) their float weights back, the
    fewest that pass. ``blob``: the model as fitted, before its names were stripped."""
    from cvkeras.export.tflite.dynamic_repair import float_weights, rank_layers

    full = res.to_dict()
    say(f"{res.error}; measuring per-layer int8 weight error on calibration images")
    try:
        with converting(res.name, "ranking its layers"):
            ranking = rank_layers(blob, reference, calib_images)
        _search(res, full, ranking, lambda names: (float_weights(blob, reference, names), {}), extra, metadata,
                fast_check, check, say)
    except ExportError as exc:
        res.repair = {"error": str(exc)}


def _search(res: ArtifactResult, full: dict[str, Any], ranking, make, extra, metadata, fast_check, check,
            say) -> None:
    """The repair search of :func:`cvkeras.export.repair.search` over ``make(names) -> (blob, fitting record)``
    candidates, written next to the artifact; the passing one replaces it and is checked like any artifact."""
    import shutil

    from cvkeras.export import repair
    from cvkeras.export.tflite import convert as to_tflite
    from cvkeras.run.files import atomic_write
    from cvkeras.serving.metadata import sidecar_path

    candidate = res.path[: -len(".tflite")] + ".candidate.tflite"
    built: dict[str, Any] = {}  # what GPTQ and bias correction did to the candidate in the file now
    try:
        def build(names: list[str]) -> None:
            blob, rounding = make(names)
            atomic_write(candidate, to_tflite.compact(blob, res.name))
            shutil.copyfile(sidecar_path(res.path), sidecar_path(candidate))
            built.clear()
            built.update(rounding)

        outcome = repair.search(ranking, build, lambda: fast_check(candidate), say)
        if outcome.passed:
            atomic_write(res.path, Path(candidate).read_bytes())  # recorded as cvkeras's, like every artifact
            kept = {k: v for k, v in extra.items() if k not in ("gptq", "bias_correction")}  # the full model's
            if res.precision == "int8":
                kept["io_type"] = _tflite_io_type(candidate)
            meta_io.write_sidecar(res.path, metadata(res.precision, {**kept, **built,
                                                                     "float_layers": outcome.float_layers}))
            check(res)
    finally:
        cand = Path(candidate)
        cand.unlink(missing_ok=True)
        sidecar_path(cand).unlink(missing_ok=True)
    record_repair(res, full, outcome)


def _tflite_io_type(path: str) -> str:
    from ai_edge_litert.interpreter import Interpreter

    return np.dtype(Interpreter(model_path=path).get_input_details()[0]["dtype"]).name

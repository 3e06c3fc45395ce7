"""The TFLite rows of the artifact table, all from one traced SavedModel: ``model.tflite``, ``model_int8.tflite``
(full integer, repaired with the QuantizationDebugger's denylist when it misses a gate),
``model_fp16.tflite`` and ``model_dynamic.tflite``; each with its JSON metadata sidecar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export import metadata as meta_io
from export.errors import ConversionError, ExportError
from export.job import Job, fail_result, record_repair
from export.verify import ArtifactResult


def convert(job: Job) -> None:
    """Make, check (and repair) every planned TFLite artifact."""
    from cvkeras.rundir import atomic_write
    from export import to_tflite

    model, say, check, metadata, fast_check = job.model, job.say, job.check, job.metadata, job.fast_check
    io_type, repair = job.options.io_type, job.options.repair
    calib_images, debug_images = job.calib_images, job.debug_images

    wanted = job.wanted("tflite")
    if not wanted:
        return
    say("tracing the Keras model for TFLite")
    try:
        with to_tflite.saved_model(model) as saved:
            for res in wanted:
                say(f"converting {res.name}")
                try:
                    blob = to_tflite.convert(saved, res.precision, calib_images, io_type, res.name)
                except ExportError as exc:
                    fail_result(res, exc)
                    continue
                extra: dict[str, Any] = {"format": "tflite"}
                if res.precision == "int8":
                    extra.update(io_type=io_type,
                                 calibration={"method": "minmax", "samples": len(calib_images)})
                atomic_write(res.path, blob)
                meta_io.write_sidecar(res.path, metadata(res.precision, extra))
                res.status = "converted"
                check(res)
                if (repair and res.precision == "int8" and res.status == "failed"
                        and not res.error.endswith("cannot be run")):
                    repair_tflite(res, saved, calib_images, debug_images, io_type, extra, metadata,
                                   fast_check, check, say)
    except ConversionError as exc:  # the SavedModel trace failed: no TFLite variant can be made
        for res in wanted:
            fail_result(res, ConversionError(res.name, str(exc).split(": ", 1)[-1]))


def repair_tflite(res: ArtifactResult, saved: str, calib_images, debug_images, io_type: str, extra, metadata,
                   fast_check, check, say) -> None:
    """TFLite twin of :func:`export.onnx_steps.repair_onnx`, with the QuantizationDebugger's ``denylisted_nodes``."""
    import shutil

    from cvkeras.rundir import atomic_write
    from export import repair
    from serving.metadata import sidecar_path

    full = res.to_dict()
    say(f"{res.error}; measuring per-layer int8 error (TFLite QuantizationDebugger)")
    try:
        debugger = repair.TFLiteDebugger(saved, calib_images, debug_images[: repair.DEBUG_IMAGES], res.name)
        ranking = debugger.ranking()
        candidate = res.path[: -len(".tflite")] + ".candidate.tflite"

        def build(names: list[str]) -> None:
            atomic_write(candidate, debugger.quantize(names, io_type))
            shutil.copyfile(sidecar_path(res.path), sidecar_path(candidate))

        outcome = repair.search(ranking, build, lambda: fast_check(candidate), say)
        if outcome.passed:
            io = _tflite_io_type(candidate)
            atomic_write(res.path, Path(candidate).read_bytes())  # recorded as cvkeras's, like every artifact
            meta_io.write_sidecar(res.path, metadata(res.precision, {**extra, "io_type": io,
                                                                     "float_layers": outcome.float_layers}))
            check(res)
    except ExportError as exc:
        res.repair = {"error": str(exc)}
        return
    finally:
        cand = Path(res.path[: -len(".tflite")] + ".candidate.tflite")
        cand.unlink(missing_ok=True)
        sidecar_path(cand).unlink(missing_ok=True)
    record_repair(res, full, outcome)


def _tflite_io_type(path: str) -> str:
    from ai_edge_litert.interpreter import Interpreter

    return np.dtype(Interpreter(model_path=path).get_input_details()[0]["dtype"]).name

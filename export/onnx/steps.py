"""The ONNX rows of the artifact table: ``model.onnx`` (tf2onnx), then from it ``model_int8.onnx`` (static QDQ,
repaired by keeping its worst layers in float when it misses a gate) and ``model_fp16.onnx``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.export import metadata as meta_io
from cvkeras.export.errors import ConversionError, ExportError
from cvkeras.export.job import Job, fail_result, record_repair
from cvkeras.export.onnx.quantize import QuantSettings
from cvkeras.export.verify import ArtifactResult


def convert(job: Job) -> None:
    """Make, check (and repair) every planned ONNX artifact."""
    import tempfile

    from cvkeras.export.onnx import convert as to_onnx
    from cvkeras.export.onnx import quantize
    from cvkeras.run.files import atomic_write

    model, say, check, metadata = job.model, job.say, job.check, job.metadata
    opset, quant, repair = job.options.opset, job.options.quant_settings(), job.options.repair
    calib_images, debug_images, fast_check = job.calib_images, job.debug_images, job.fast_check
    rows = {r.precision: r for r in job.wanted("onnx")}  # the table's ONNX rows: float32, int8, fp16
    base = rows.get("float32")
    if base is None:
        return
    say(f"converting {base.name} (tf2onnx)")
    try:
        proto = to_onnx.keras_to_onnx(model, opset, base.name)
    except ConversionError as exc:
        fail_result(base, exc)
        for res in rows.values():
            if res is not base:
                res.error = f"{res.name}: not made because {base.name} failed"
        return
    float_extra = {"format": "onnx", "opset": opset}

    def save(res: ArtifactResult, p, extra: dict[str, Any]) -> None:
        meta_io.embed_onnx(p, metadata(res.precision, extra))
        atomic_write(res.path, lambda tmp: to_onnx.save(p, tmp))
        res.status = "converted"

    save(base, proto, float_extra)
    check(base)
    if "int8" in rows:
        res = rows["int8"]
        say(f"quantizing {res.name} (static QDQ int8, {quant.calibration} calibration, "
            f"{len(calib_images)} images)")
        int8_extra = {**float_extra, "quantization": quant.to_dict(), "calibration_samples": len(calib_images)}
        with tempfile.TemporaryDirectory(prefix="cvkeras-int8-") as tmp:
            pre = Path(tmp) / "pre.onnx"
            try:
                quantize.preprocess(base.path, pre, res.name)
                # report=: what GPTQ and bias correction did goes into the artifact's metadata
                save(res, quantize.quantize_int8(pre, calib_images, quant, res.name, preprocessed=True,
                                                 report=int8_extra), int8_extra)
            except ExportError as exc:
                fail_result(res, exc)
            if res.status == "converted":
                check(res)
                if repair and res.status == "failed" and not res.error.endswith("cannot be run"):
                    repair_onnx(res, pre, calib_images, debug_images, quant, int8_extra, save, check,
                                 fast_check, say)
    if "fp16" in rows:
        res = rows["fp16"]
        say(f"converting {res.name}")
        try:
            save(res, quantize.convert_fp16(proto, res.name), float_extra)
            check(res)
        except ExportError as exc:
            fail_result(res, exc)


def repair_onnx(res: ArtifactResult, pre: Path, calib_images, debug_images, quant: QuantSettings, extra, save, check,
                 fast_check, say) -> None:
    """Keep the fewest worst-measured layers of ``res`` in float until its gate holds (``cvkeras.export.repair``)."""
    from cvkeras.export import repair
    from cvkeras.export.onnx import convert as to_onnx
    from cvkeras.export.onnx import quantize
    from cvkeras.run.files import atomic_write

    full = res.to_dict()
    say(f"{res.error}; measuring per-layer int8 error (onnxruntime qdq_loss_debug)")
    try:
        raw = quantize.quantize_int8(pre, calib_images, quant, res.name, preprocessed=True, compact=False)
        raw_path = pre.with_name("raw_int8.onnx")
        to_onnx.save(raw, raw_path)
        ranking = repair.rank_onnx_layers(pre, raw_path, debug_images[: repair.DEBUG_IMAGES].astype(np.float32),
                                          already_float={*extra.get("float_stem", ()), *extra.get("float_head", ())})
        candidate = res.path[: -len(".onnx")] + ".candidate.onnx"

        groups = {r.name: r.nodes or [r.name] for r in ranking}
        built: dict[str, Any] = {}  # what GPTQ and bias correction did to the candidate in the file now

        def build(names: list[str]) -> None:
            nodes = [n for name in names for n in groups[name]]
            rounding: dict[str, Any] = {}
            p = quantize.quantize_int8(pre, calib_images, quant, res.name, exclude=nodes, preprocessed=True,
                                       report=rounding)
            meta_io.embed_onnx(p, meta_io.ModelMetadata.from_json(_onnx_meta(res.path)))
            atomic_write(candidate, lambda tmp: to_onnx.save(p, tmp))
            built.clear()
            built.update(rounding)

        def cand_check() -> tuple[bool, dict[str, Any]]:
            return fast_check(candidate)

        outcome = repair.search(ranking, build, cand_check, say)
        if outcome.passed:
            p = to_onnx_load(candidate)
            kept = {k: v for k, v in extra.items() if k not in ("gptq", "bias_correction")}  # the full model's
            save(res, p, {**kept, **built, "float_layers": outcome.float_layers})
            check(res)
    except ExportError as exc:
        res.repair = {"error": str(exc)}
        return
    finally:
        Path(res.path[: -len(".onnx")] + ".candidate.onnx").unlink(missing_ok=True)
    record_repair(res, full, outcome)


def to_onnx_load(path: str):
    import onnx

    return onnx.load(path)


def _onnx_meta(path: str) -> str:
    from cvkeras.serving.metadata import METADATA_KEY

    return next(p.value for p in to_onnx_load(path).metadata_props if p.key == METADATA_KEY)

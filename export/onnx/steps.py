"""The ONNX rows of the artifact table: ``model.onnx`` (tf2onnx), then from it ``model_int8.onnx`` (static QDQ,
repaired by keeping its worst layers in float when it misses a gate) and ``model_fp16.onnx``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.export import metadata as meta_io
from cvkeras.export.errors import ConversionError, ExportError
from cvkeras.export.job import Job, fail_result
from cvkeras.export.repair import CandidateFiles, LayerError
from cvkeras.export.settings import QuantSettings
from cvkeras.export.verify import ArtifactResult


def convert(job: Job) -> None:
    """Make, check (and repair) every planned ONNX artifact."""
    import tempfile

    from cvkeras.export.onnx import convert as to_onnx
    from cvkeras.export.onnx import fp16, quantize
    from cvkeras.run.files import atomic_write

    model, say, check, metadata = job.model, job.say, job.check, job.metadata
    opset, quant, repair = job.options.opset, job.options.quant_settings(), job.options.repair
    calib_images = job.calib_images
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
        meta = metadata(res.precision, extra)
        if meta.unknown is not None:  # the detector reads the pooled features: a second output, on a copy
            p = with_features(p, meta, res.name)
        meta_io.embed_onnx(p, meta)
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
            pre, single = Path(tmp) / "pre.onnx", Path(tmp) / "float.onnx"
            to_onnx.save(proto, single)  # quantized from the one-output graph; the features output is added after
            try:
                quantize.preprocess(single, pre, res.name)
                # report=: what GPTQ and bias correction did goes into the artifact's metadata
                save(res, quantize.quantize_int8(pre, calib_images, quant, res.name, preprocessed=True,
                                                 report=int8_extra), int8_extra)
            except ExportError as exc:
                fail_result(res, exc)
            if res.status == "converted":
                check(res)
                if repair and res.status == "failed" and not res.error.endswith("cannot be run"):
                    repair_onnx(res, pre, job, quant, int8_extra, lambda p, extra: save(res, p, extra))
    if "fp16" in rows:
        res = rows["fp16"]
        say(f"converting {res.name}")
        try:
            save(res, fp16.convert_fp16(proto, res.name), float_extra)
            check(res)
        except ExportError as exc:
            fail_result(res, exc)


def repair_onnx(res: ArtifactResult, pre: Path, job: Job, quant: QuantSettings, extra: dict[str, Any],
                save: Callable[[Any, dict[str, Any]], None]) -> None:
    """Keep the fewest worst-measured layers of ``res`` in float until its gate holds
    (:func:`cvkeras.export.repair.repair_artifact`, layers ranked by :mod:`cvkeras.export.onnx.ranking`);
    ``pre``: the pre-processed float graph, ``save(proto, extra)`` writes the artifact with its metadata."""
    from cvkeras.export import repair
    from cvkeras.export.onnx import convert as to_onnx
    from cvkeras.export.onnx import quantize, ranking
    from cvkeras.run.files import atomic_write

    calib_images = job.calib_images

    def rank() -> list[LayerError]:
        raw = quantize.quantize_int8(pre, calib_images, quant, res.name, preprocessed=True, compact=False)
        raw_path = pre.with_name("raw_int8.onnx")
        to_onnx.save(raw, raw_path)
        return ranking.rank_onnx_layers(pre, raw_path, job.debug_images[: repair.DEBUG_IMAGES].astype(np.float32),
                                        already_float={*extra.get("float_stem", ()), *extra.get("float_head", ())})

    def write(layers: list[LayerError], path: str) -> dict[str, Any]:
        rounding: dict[str, Any] = {}
        nodes = [n for r in layers for n in (r.nodes or [r.name])]
        p = quantize.quantize_int8(pre, calib_images, quant, res.name, exclude=nodes, preprocessed=True,
                                   report=rounding)
        meta = meta_io.onnx_metadata(to_onnx.load(res.path), res.path)
        if meta.unknown is not None:
            p = with_features(p, meta, res.name)
        meta_io.embed_onnx(p, meta)
        atomic_write(path, lambda tmp: to_onnx.save(p, tmp))
        return rounding

    files = CandidateFiles(".onnx", write, lambda path, meta: save(to_onnx.load(path), meta),
                           lambda path: Path(path).unlink(missing_ok=True))
    repair.repair_artifact(res, "per-layer int8 error (onnxruntime qdq_loss_debug)", rank, files, extra,
                           job.fast_check, job.check, job.say)


def with_features(proto, meta, artifact: str):
    """A copy of ``proto`` with the ``features`` output the metadata's unknown detector reads."""
    from cvkeras.export.onnx import convert as to_onnx

    out = type(proto)()
    out.CopyFrom(proto)
    to_onnx.add_features_output(out, meta.unknown["shape"][1], artifact)
    return out

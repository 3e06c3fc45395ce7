"""``export_run``: a fine-tuned run directory -> checked, self-describing ONNX and TFLite artifacts.

What is produced (fixed names in ``RUN/export/`` or ``output``), in this order:

==================== ============== =====================================================
artifact             when           what
==================== ============== =====================================================
model.onnx           onnx           float32, tf2onnx, dynamic batch
model_int8.onnx      onnx + int8    ONNX Runtime static QDQ int8, per-channel weights
model_fp16.onnx      onnx + fp16    float16 weights/compute, float32 input and output
model.tflite         tflite         float32
model_int8.tflite    tflite + int8  full integer (int8 builtin ops), ``io_type`` I/O
model_fp16.tflite    tflite + fp16  float16 weights
model_dynamic.tflite tflite + int8  dynamic-range (int8 weights, float activations)
==================== ============== =====================================================

plus ``labels.txt``, ``reference.npz`` (Keras outputs on fixed validation images), a JSON sidecar
``<name>.tflite.json`` per TFLite file and ``export_report.json``. Every file is written atomically.
Each artifact is then run on the validation split through ``serving`` and compared with Keras.

The export folder holds one export: the previous export's model files (those the run's manifest proves
cvkeras wrote) are removed before the new ones are written; a model file cvkeras cannot prove it wrote is
left and listed as ``unverified_files``. An artifact that fails its check is kept as
``<stem>.FAILED<suffix>`` with ``extra.verification`` in its metadata (``serving`` warns or refuses).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from export import calibration as calib
from export import fidelity
from export import metadata as meta_io
from export.errors import ConversionError, ExportError, first_line
from export.quantize import QuantSettings
from export.to_onnx import DEFAULT_OPSET
from export.to_tflite import IO_TYPES
from export.verify import DEFAULT_FLOAT_TOLERANCE, ArtifactResult, Gates, verify_artifact
from serving.validate import DEFAULT_MIN_AGREEMENT

FORMATS = ("onnx", "tflite")
REPORT_FILE = "export_report.json"
EXPORT_DIR = "export"
#: (file name, format, precision, needs) in conversion order; ``needs`` is the flag that adds it.
ARTIFACTS: tuple[tuple[str, str, str, str | None], ...] = (
    ("model.onnx", "onnx", "float32", None),
    ("model_int8.onnx", "onnx", "int8", "int8"),
    ("model_fp16.onnx", "onnx", "fp16", "fp16"),
    ("model.tflite", "tflite", "float32", None),
    ("model_int8.tflite", "tflite", "int8", "int8"),
    ("model_fp16.tflite", "tflite", "fp16", "fp16"),
    ("model_dynamic.tflite", "tflite", "dynamic", "int8"),
)
MIN_OPSET, MAX_OPSET = 13, 18


@dataclass
class ExportReport:
    """What ``export_run`` did: the Keras reference, the settings and one result per artifact."""

    run: str
    output: str
    model_name: str
    input_size: list[int]
    labels: list[str]
    keras_accuracy: float
    n_val: int
    settings: dict[str, Any]
    artifacts: list[ArtifactResult] = field(default_factory=list)
    seconds: float = 0.0
    images: dict[str, Any] = field(default_factory=dict)  # fidelity / val / held-back / calibration counts
    #: model files in the export folder that this export did not write and cvkeras cannot prove it wrote:
    #: left in place, never checked (see :func:`unverified_files`)
    unverified_files: list[str] = field(default_factory=list)

    @property
    def conversion_errors(self) -> list[ArtifactResult]:
        return [a for a in self.artifacts if a.status in ("error", "skipped")]

    @property
    def verification_failures(self) -> list[ArtifactResult]:
        return [a for a in self.artifacts if a.status == "failed"]

    @property
    def passed(self) -> bool:
        return all(a.ok for a in self.artifacts)

    @property
    def exit_code(self) -> int:
        """0 all passed, 2 a conversion failed, 1 an artifact failed its verification gate."""
        return 0 if self.passed else (2 if self.conversion_errors else 1)

    def artifact(self, name: str) -> ArtifactResult:
        return next(a for a in self.artifacts if a.name == name)

    def to_dict(self) -> dict[str, Any]:
        """``export_report.json`` (``cvkeras.export_report/1``, docs/json.md): proportions as fractions,
        files relative to the run directory (absolute when the export folder is outside it)."""
        from serving.schema import points_to_fraction, schema_id

        def rel(path: str) -> str:
            try:
                return Path(path).resolve().relative_to(Path(self.run).resolve()).as_posix()
            except ValueError:
                return str(Path(path).resolve())

        settings = {**self.settings, "max_accuracy_drop": points_to_fraction(self.settings["max_accuracy_drop"])}
        return {
            "schema": schema_id("export_report"),
            "run": self.run, "output": rel(self.output), "model_name": self.model_name,
            "input_size": self.input_size, "labels": self.labels,
            "keras": {"accuracy": self.keras_accuracy, "n": self.n_val},
            "images": self.images, "settings": settings, "passed": self.passed, "seconds": round(self.seconds, 1),
            "artifacts": [{**a.to_dict(), "path": rel(a.path)} for a in self.artifacts],
            "unverified_files": self.unverified_files,
        }


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``"onnx,tflite"`` or ``["onnx"]`` -> validated tuple; unknown names raise ExportError."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    names = tuple(dict.fromkeys(f.strip().lower() for f in items if f.strip()))
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise ExportError(f"unknown format {', '.join(unknown) or repr(formats)}; "
                          f"choose from {', '.join(FORMATS)}")
    return names


def plan_artifacts(formats: Sequence[str] = FORMATS, int8: bool = False, fp16: bool = False) -> list[str]:
    """Names of the artifacts an export with these options produces, in conversion order."""
    flags = {"int8": int8, "fp16": fp16}
    return [name for name, fmt, _, need in ARTIFACTS if fmt in formats and (need is None or flags[need])]


def _check_options(calibration: str, io_type: str, calibration_samples: int, opset: int,
                   max_accuracy_drop: float, float_tolerance: float) -> None:
    if calibration not in calib.METHODS:
        raise ExportError(f"unknown --calibration {calibration!r}; choose from {', '.join(calib.METHODS)}")
    if io_type not in IO_TYPES:
        raise ExportError(f"unknown --io-type {io_type!r}; choose from {', '.join(IO_TYPES)}")
    if calibration_samples < 1:
        raise ExportError(f"--calibration-samples must be at least 1, not {calibration_samples}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} "
                          f"(default {DEFAULT_OPSET})")
    if max_accuracy_drop < 0 or float_tolerance < 0:
        raise ExportError("--max-accuracy-drop and the float tolerance must not be negative")


def _iter_layers(layer) -> list:
    out = [layer]
    for sub in getattr(layer, "layers", []) or []:
        out += _iter_layers(sub)
    return out


def load_float32_model(run: Path, cfg: dict[str, Any], num_classes: int):
    """Load ``best.keras`` (safe mode); rebuild under float32 if any layer computes in mixed precision."""
    import cvkeras.model as cvmodel
    from cvkeras.rundir import BEST

    path = run / BEST
    try:
        model = cvmodel.load_model(path)  # safe mode, float32 policy while loading
    except Exception as exc:  # corrupt zip, unknown layer, safe-mode refusal
        raise ExportError(f"{path}: cannot load the model ({first_line(exc, 200)}); "
                          "re-run `cvkeras finetune` to write it again") from None
    mixed = any(getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32") != "float32"
                for layer in _iter_layers(model))
    if mixed:
        m = cfg.get("model", {})
        model = cvmodel.to_float32(model, m["name"], num_classes, m["image_size"], m.get("alpha"),
                                   float(m.get("dropout") or 0.0))
    out_classes = int(model.output_shape[-1])
    if out_classes != num_classes:
        raise ExportError(f"{path}: the model outputs {out_classes} classes but labels.txt has "
                          f"{num_classes}; the run directory is inconsistent -- re-run `cvkeras finetune`")
    return model


def export_run(
    run: str | os.PathLike,
    output: str | os.PathLike | None = None,
    formats: str | Sequence[str] = FORMATS,
    int8: bool = False,
    fp16: bool = False,
    calibration: str = "minmax",
    calibration_samples: int = calib.DEFAULT_SAMPLES,
    io_type: str = "uint8",
    opset: int = DEFAULT_OPSET,
    max_accuracy_drop: float = 1.0,
    float_tolerance: float = DEFAULT_FLOAT_TOLERANCE,
    threads: int | None = None,
    quant: QuantSettings | None = None,
    verify_samples: int | None = None,
    progress: Any = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    repair: bool = True,
    calibration_flip: bool = True,
) -> ExportReport:
    """Export ``run``'s ``best.keras`` to every requested artifact, verify each one, write the report.

    Verification is the device's: the fidelity images (validation split plus the training images not
    used for calibration) are decoded from their files by ``serving.preprocess``, the Keras reference
    (``reference.npz``) is computed on those tensors, and every artifact is run from its file through
    ``serving.Predictor`` and ``serving.validate`` -- the code and figures of ``cvkeras validate``.
    Reduced precision must keep top-1 agreement >= ``min_agreement`` and lose at most
    ``max_accuracy_drop`` points; an int8 model that misses is repaired (``repair``) by keeping its worst
    layers in float (``export.repair``).

    Returns the report; check ``report.exit_code`` (conversion errors and failed gates do not raise, so
    that every artifact is tried and the files are kept for inspection).

    Raises:
        ExportError: unknown run directory, missing ``best.keras``, bad options (``RunDirError`` included).
    """
    from cvkeras import rundir

    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    fmts = parse_formats(formats)
    _check_options(calibration, io_type, calibration_samples, opset, max_accuracy_drop, float_tolerance)
    if not 0.0 <= min_agreement <= 1.0:
        raise ExportError(f"--min-agreement must be a fraction in 0..1, not {min_agreement}")
    quant = replace(quant or QuantSettings(), calibration=calibration)
    try:
        run_dir = rundir.check_run(run)
        cfg = rundir.read_config(run_dir)
        labels = rundir.read_labels(run_dir)
        split = rundir.read_split(run_dir)
    except rundir.RunDirError as exc:
        raise ExportError(str(exc)) from None
    out_dir = Path(output) if output is not None else run_dir / EXPORT_DIR
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a directory; pass another --output")
    model_name = str(cfg.get("model", {}).get("name", "model"))
    seed = int(cfg.get("data", {}).get("seed", 0))

    say("loading best.keras")
    model = load_float32_model(run_dir, cfg, len(labels))
    size = [int(d) for d in model.input_shape[1:3]]

    say("decoding the validation, calibration and held-back training images (Pillow, as on the device)")
    try:
        data = fidelity.fidelity_set(run_dir, (size[0], size[1]), calibration_samples if int8 else None, seed,
                                     verify_samples)
    except rundir.RunDirError as exc:
        raise ExportError(f"{exc}; verification needs validation images") from None
    say(f"running the Keras model on {len(data.labels)} fidelity images")
    keras_probs = _predict(model, data.images)
    val = data.val
    keras_acc = float((keras_probs[val].argmax(1) == data.labels[val]).mean())
    _prepare_output(out_dir)
    removed = remove_previous_export(out_dir)
    if removed:
        say(f"removed {len(removed)} file(s) of the previous export in {out_dir} (an export replaces it): "
            f"{', '.join(removed)}")
    meta_io.write_labels(out_dir, labels)
    ref_paths = None if data.paths is None else meta_io.relative_paths(data.paths, split.get("root"))
    meta_io.write_reference(out_dir, ref_paths, data.labels, keras_probs, keras_acc, data.splits)

    calib_images = None
    if int8:
        calib_images = fidelity.with_flips(data.calibration) if calibration_flip else data.calibration

    settings = {
        "formats": list(fmts), "int8": int8, "fp16": fp16, "opset": opset, "io_type": io_type,
        "calibration": calibration, "calibration_samples": 0 if calib_images is None else len(calib_images),
        "calibration_images": len(data.calibration), "calibration_flip": bool(int8 and calibration_flip),
        "quantization": quant.to_dict(), "max_accuracy_drop": max_accuracy_drop,
        "min_agreement": min_agreement, "repair": repair,
        "float_tolerance": float_tolerance, "threads": threads,
    }
    report = ExportReport(str(run_dir), str(out_dir), model_name, size, labels, keras_acc, int(val.sum()),
                          settings, images=data.counts())

    def metadata(precision: str, extra: dict[str, Any]):
        return meta_io.make_metadata(labels, size, model_name, precision, keras_acc,
                                     {"val_samples": int(val.sum()), **extra})

    results = {name: ArtifactResult(name, fmt, prec, str(out_dir / name))
               for name, fmt, prec, _ in ARTIFACTS if name in plan_artifacts(fmts, int8, fp16)}
    gates = Gates(max_accuracy_drop, min_agreement, float_tolerance)
    from serving.validate import Reference

    reference = Reference.load(out_dir)  # what `cvkeras validate` reads
    items = data.items()

    def check(res: ArtifactResult) -> ArtifactResult:
        say(f"verifying {res.name} on {len(data.labels)} images")
        return verify_artifact(res, items, reference, gates, threads)

    def fast_check(path: str) -> tuple[bool, dict[str, Any]]:
        """A repair candidate on the decoded arrays (the same pixels as the files, no decoding)."""
        res = verify_artifact(ArtifactResult(Path(path).name, "", "int8", path), (data.images, data.labels),
                              reference, gates, threads)
        return res.status == "passed", res.to_dict()

    _convert_onnx(model, results, opset, quant, calib_images, metadata, say, check, fast_check, repair,
                  data.calibration)
    _convert_tflite(model, results, io_type, calib_images, metadata, say, check, fast_check, repair,
                    data.calibration)
    for res in results.values():
        if res.status == "failed" and Path(res.path).is_file():
            _mark_failed(res)
    report.artifacts = list(results.values())
    report.unverified_files = unverified_files(out_dir, [Path(r.path).name for r in report.artifacts])
    report.seconds = time.perf_counter() - t0
    rundir.write_json(out_dir / REPORT_FILE, report.to_dict())
    return report


# --- the export folder holds one export: the previous one's models go, failed ones are marked ----------

def _is_model_file(path: Path) -> bool:
    """A file a device could load as a model: ``*.onnx``, ``*.tflite`` or a TFLite metadata sidecar."""
    return path.is_file() and (path.suffix in (".onnx", ".tflite") or path.name.endswith(".tflite.json"))


def _manifest_of(path: Path) -> tuple[Path, list[str]] | None:
    """The marked run folder that records files written at ``path`` and its manifest (as ``rundir`` looks)."""
    from cvkeras import rundir

    for folder in (path.parent, path.parent.parent, path.parent.parent.parent):
        if (folder / rundir.MARKER).is_file():
            try:
                return folder, rundir.read_manifest(folder)
            except rundir.RunDirError:
                return None  # a damaged marker proves nothing
    return None


def written_by_cvkeras(path: str | os.PathLike) -> bool:
    """True when the manifest of the run folder holding ``path`` records that cvkeras wrote it."""
    p = Path(path)
    found = _manifest_of(p)
    return found is not None and p.relative_to(found[0]).as_posix() in found[1]


def _prepare_output(out_dir: Path) -> None:
    """Create the export folder; one outside any marked run, new or empty, gets its own marker so that
    the next export can prove which files it may replace."""
    from cvkeras import rundir

    if out_dir.is_dir() and any(out_dir.iterdir()):
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    if _manifest_of(out_dir / REPORT_FILE) is None:
        rundir.mark_run(out_dir)


def remove_previous_export(out_dir: Path) -> list[str]:
    """Remove the model files (and ``export_report.json``) of an earlier export from ``out_dir``: only
    those the run's manifest proves cvkeras wrote. Returns their names. Files this export makes are
    written again; a file it does not make (another precision, a failed mark) is gone, so no model in
    the folder is missing from the new report."""
    removed = []
    for f in sorted(out_dir.iterdir()):
        if (_is_model_file(f) or f.name == REPORT_FILE) and written_by_cvkeras(f):
            f.unlink()
            removed.append(f.name)
    return removed


def unverified_files(out_dir: Path, made: Sequence[str]) -> list[str]:
    """Model files in ``out_dir`` that are not this export's (``made``, sidecars included) and that cvkeras
    cannot prove it wrote: export leaves them in place and lists them, unverified."""
    from serving.metadata import sidecar_path

    ours = set(made) | {sidecar_path(m).name for m in made if m.endswith(".tflite")}
    return [f.name for f in sorted(out_dir.iterdir()) if _is_model_file(f) and f.name not in ours]


def _mark_failed(res: ArtifactResult) -> None:
    """Keep a failed artifact for inspection under a name no device loads by default
    (``model_int8.FAILED.onnx``), its metadata saying it failed and why (``serving`` warns or refuses)."""
    from cvkeras.rundir import atomic_write
    from export import to_onnx
    from serving.metadata import ModelMetadata, failed_name, read_metadata, sidecar_path

    old = Path(res.path)
    new = failed_name(old)
    if new.exists():  # left by remove_previous_export: not provably cvkeras's, so never overwritten
        old.unlink()
        sidecar_path(old).unlink(missing_ok=True)
        res.error = f"{res.error or res.name + ': ' + res.status} (not kept: {new.name} exists and is not cvkeras's)"
        return
    mark = {"status": "failed", "reason": res.error or res.status}
    if old.suffix == ".onnx":
        proto = to_onnx_load(str(old))
        meta = ModelMetadata.from_json(_onnx_meta(str(old)), str(old))
        meta.extra["verification"] = mark
        meta_io.embed_onnx(proto, meta)
        atomic_write(new, lambda tmp: to_onnx.save(proto, tmp))
    else:
        meta = read_metadata(old)
        meta.extra["verification"] = mark
        atomic_write(new, old.read_bytes())
        meta_io.write_sidecar(new, meta)
        sidecar_path(old).unlink(missing_ok=True)
    old.unlink()
    res.path = str(new)
    res.error = f"{res.error or res.name + ': ' + res.status} (kept as {new.name}, marked failed)"


def _predict(model, images: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Keras probabilities for uint8 images, converted to float32 a chunk at a time (bounded memory)."""
    parts = [model.predict(images[i : i + chunk].astype(np.float32), batch_size=32, verbose=0)
             for i in range(0, len(images), chunk)]
    return np.concatenate(parts).astype(np.float32)


def _fail(res: ArtifactResult, exc: ExportError) -> None:
    res.status = "error"
    res.error = str(exc)


def _convert_onnx(model, results, opset: int, quant: QuantSettings, calib_images, metadata, say, check,
                  fast_check, repair: bool, debug_images) -> None:
    import tempfile

    from cvkeras.rundir import atomic_write
    from export import quantize, to_onnx

    base = results.get("model.onnx")
    if base is None:
        return
    say("converting model.onnx (tf2onnx)")
    try:
        proto = to_onnx.keras_to_onnx(model, opset, base.name)
    except ConversionError as exc:
        _fail(base, exc)
        for name in ("model_int8.onnx", "model_fp16.onnx"):
            if name in results:
                results[name].error = f"{name}: not made because model.onnx failed"
        return
    float_extra = {"format": "onnx", "opset": opset}

    def save(res: ArtifactResult, p, extra: dict[str, Any]) -> None:
        meta_io.embed_onnx(p, metadata(res.precision, extra))
        atomic_write(res.path, lambda tmp: to_onnx.save(p, tmp))
        res.status = "converted"

    save(base, proto, float_extra)
    check(base)
    if "model_int8.onnx" in results:
        res = results["model_int8.onnx"]
        say(f"quantizing {res.name} (static QDQ int8, {quant.calibration} calibration, "
            f"{len(calib_images)} images)")
        int8_extra = {**float_extra, "quantization": quant.to_dict(), "calibration_samples": len(calib_images)}
        with tempfile.TemporaryDirectory(prefix="cvkeras-int8-") as tmp:
            pre = Path(tmp) / "pre.onnx"
            try:
                quantize.preprocess(base.path, pre, res.name)
                save(res, quantize.quantize_int8(pre, calib_images, quant, res.name, preprocessed=True),
                     int8_extra)
            except ExportError as exc:
                _fail(res, exc)
            if res.status == "converted":
                check(res)
                if repair and res.status == "failed" and not res.error.endswith("cannot be run"):
                    _repair_onnx(res, pre, calib_images, debug_images, quant, int8_extra, save, check,
                                 fast_check, say)
    if "model_fp16.onnx" in results:
        res = results["model_fp16.onnx"]
        say(f"converting {res.name}")
        try:
            save(res, quantize.convert_fp16(proto, res.name), float_extra)
            check(res)
        except ExportError as exc:
            _fail(res, exc)


def _repair_onnx(res: ArtifactResult, pre: Path, calib_images, debug_images, quant, extra, save, check,
                 fast_check, say) -> None:
    """Keep the fewest worst-measured layers of ``res`` in float until its gate holds (``export.repair``)."""
    from cvkeras.rundir import atomic_write
    from export import quantize, repair, to_onnx

    full = res.to_dict()
    say(f"{res.error}; measuring per-layer int8 error (onnxruntime qdq_loss_debug)")
    try:
        raw = quantize.quantize_int8(pre, calib_images, quant, res.name, preprocessed=True, compact=False)
        raw_path = pre.with_name("raw_int8.onnx")
        to_onnx.save(raw, raw_path)
        ranking = repair.rank_onnx_layers(pre, raw_path, debug_images[: repair.DEBUG_IMAGES].astype(np.float32))
        candidate = res.path[: -len(".onnx")] + ".candidate.onnx"

        groups = {r.name: r.nodes or [r.name] for r in ranking}

        def build(names: list[str]) -> None:
            nodes = [n for name in names for n in groups[name]]
            p = quantize.quantize_int8(pre, calib_images, quant, res.name, exclude=nodes, preprocessed=True)
            meta_io.embed_onnx(p, meta_io.ModelMetadata.from_json(_onnx_meta(res.path)))
            atomic_write(candidate, lambda tmp: to_onnx.save(p, tmp))

        def cand_check() -> tuple[bool, dict[str, Any]]:
            return fast_check(candidate)

        outcome = repair.search(ranking, build, cand_check, say)
        if outcome.passed:
            p = to_onnx_load(candidate)
            save(res, p, {**extra, "float_layers": outcome.float_layers})
            check(res)
    except ExportError as exc:
        res.repair = {"error": str(exc)}
        return
    finally:
        Path(res.path[: -len(".onnx")] + ".candidate.onnx").unlink(missing_ok=True)
    _record_repair(res, full, outcome)


def _tflite_io_type(path: str) -> str:
    from ai_edge_litert.interpreter import Interpreter

    return np.dtype(Interpreter(model_path=path).get_input_details()[0]["dtype"]).name


def to_onnx_load(path: str):
    import onnx

    return onnx.load(path)


def _onnx_meta(path: str) -> str:
    from serving.metadata import METADATA_KEY

    return next(p.value for p in to_onnx_load(path).metadata_props if p.key == METADATA_KEY)


def _record_repair(res: ArtifactResult, full: dict[str, Any], outcome) -> None:
    """The repair's outcome in the artifact row: layers kept float, what it cost, every candidate tried."""
    doc = outcome.to_dict()
    doc["full_int8"] = {k: full.get(k) for k in ("agreement", "agreement_ci", "accuracy_drop", "accuracy_drop_ci",
                                                   "size_bytes", "latency_ms_per_image", "error")}
    if outcome.passed and res.size_bytes and full.get("size_bytes"):
        doc["size_cost"] = round(res.size_bytes / full["size_bytes"], 4)
        if full.get("latency_ms_per_image") and res.latency_ms_per_image:
            doc["latency_cost"] = round(res.latency_ms_per_image / full["latency_ms_per_image"], 4)
    res.float_layers = outcome.float_layers if outcome.passed else None
    res.repair = doc
    if not outcome.passed:
        res.error = (f"{full.get('error')}; no mix of int8 and float layers passes (tried "
                     f"{', '.join(str(a.float_layers) for a in outcome.attempts)} layer(s) in float)")


def _convert_tflite(model, results, io_type: str, calib_images, metadata, say, check, fast_check,
                    repair: bool, debug_images) -> None:
    from cvkeras.rundir import atomic_write
    from export import to_tflite

    wanted = [r for r in results.values() if r.format == "tflite"]
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
                    _fail(res, exc)
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
                    _repair_tflite(res, saved, calib_images, debug_images, io_type, extra, metadata,
                                   fast_check, check, say)
    except ConversionError as exc:  # the SavedModel trace failed: no TFLite variant can be made
        for res in wanted:
            _fail(res, ConversionError(res.name, str(exc).split(": ", 1)[-1]))


def _repair_tflite(res: ArtifactResult, saved: str, calib_images, debug_images, io_type: str, extra, metadata,
                   fast_check, check, say) -> None:
    """TFLite twin of :func:`_repair_onnx`, with the QuantizationDebugger's ``denylisted_nodes``."""
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
            os.replace(candidate, res.path)
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
    _record_repair(res, full, outcome)

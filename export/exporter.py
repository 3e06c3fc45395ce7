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
The folder rule lives in :mod:`cvkeras.export.folder`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cvkeras.export import fidelity, folder, unknown
from cvkeras.export import metadata as meta_io
from cvkeras.export.errors import ExportError
from cvkeras.export.flip_risk import PASS_CHANCE, flip_chances, pass_chance, predicted_agreement
from cvkeras.export.folder import REPORT_FILE
from cvkeras.export.job import Job
from cvkeras.export.onnx import steps as onnx_steps
from cvkeras.export.options import (
    ExportOptions,
)
from cvkeras.export.tflite import steps as tflite_steps
from cvkeras.export.verify import ArtifactResult, Gates, verify_artifact
from cvkeras.serving.errors import first_line
from cvkeras.serving.images import expand_paths
from cvkeras.serving.reference import REFERENCE_FILE, Reference, relative_paths

EXPORT_DIR = "export"
#: The converter of each format: makes, checks and repairs that format's planned rows of ARTIFACTS.
CONVERTERS: dict[str, Callable[[Job], None]] = {"onnx": onnx_steps.convert, "tflite": tflite_steps.convert}


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
    #: left in place, never checked (see :func:`cvkeras.export.folder.unverified_files`)
    unverified_files: list[str] = field(default_factory=list)
    temperature: float = 1.0  # the run's, written into every artifact's metadata (1: none recorded)
    unknown: dict[str, Any] | None = None  # the unknown detector (cvkeras.export.unknown.report_block); None: off

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
        """``export_report.json`` (``cvkeras.export_report/2``, docs/json.md): proportions as fractions,
        files relative to the run directory (absolute when the export folder is outside it)."""
        from cvkeras.serving.schema import points_to_fraction, schema_id

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
            "temperature": self.temperature, "unknown": self.unknown,
            "images": self.images, "settings": settings, "passed": self.passed, "seconds": round(self.seconds, 1),
            "artifacts": [{**a.to_dict(), "path": rel(a.path)} for a in self.artifacts],
            "unverified_files": self.unverified_files,
        }


def _iter_layers(layer) -> list:
    out = [layer]
    for sub in getattr(layer, "layers", []) or []:
        out += _iter_layers(sub)
    return out


def load_float32_model(run, num_classes: int):
    """Load a run's ``best.keras`` (safe mode); rebuild under float32 if any layer computes in mixed precision."""
    import cvkeras.models.build as cvmodel
    from cvkeras.run.rundir import RunDir

    run = RunDir(run)
    path = run.best
    try:
        model = cvmodel.load_model(path)  # safe mode, float32 policy while loading
    except Exception as exc:  # corrupt zip, unknown layer, safe-mode refusal
        raise ExportError(f"{path}: cannot load the model ({first_line(exc, 200)}); "
                          "re-run `cvkeras finetune` to write it again") from None
    mixed = any(getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32") != "float32"
                for layer in _iter_layers(model))
    if mixed:
        cfg = run.config()
        model = cvmodel.to_float32(model, cfg.model, num_classes, list(run.image_size()), cfg.alpha,
                                   float(cfg.dropout or 0.0))
    size = [int(d) for d in model.input_shape[1:3]]
    if size != list(run.image_size()):
        raise ExportError(f"{path}: the model takes {size[0]}x{size[1]} px but config.yaml says "
                          f"{run.image_size()}; the run directory is inconsistent -- re-run `cvkeras finetune`")
    out_classes = int(model.output_shape[-1])
    if out_classes != num_classes:
        raise ExportError(f"{path}: the model outputs {out_classes} classes but labels.txt has "
                          f"{num_classes}; the run directory is inconsistent -- re-run `cvkeras finetune`")
    return model


def export_run(run: str | os.PathLike, output: str | os.PathLike | None = None,
               options: ExportOptions | None = None, progress: Any = None, **settings: Any) -> ExportReport:
    """Export ``run``'s ``best.keras`` to every planned artifact, verify each one, write the report.

    ``options`` (or the same settings as keywords: ``int8=True``, ``formats="onnx"``, ...) says what to
    make; ``progress`` receives one line per step.

    Verification is the device's: the fidelity images (validation split plus the training images not
    used for calibration) are decoded from their files by ``cvkeras.serving.preprocess``, the Keras reference
    (``reference.npz``, which records every image's role) is computed on those tensors, and every artifact
    is run from its file through ``serving.Predictor`` and ``cvkeras.serving.validate`` -- the code and figures of
    ``cvkeras validate``. Reduced precision must keep top-1 agreement >= ``min_agreement`` and lose at most
    ``max_accuracy_drop`` points, both on the validation images; an int8 model that misses is repaired
    (``repair``) by keeping its worst layers in float (``cvkeras.export.repair``), the fewest that hold on the
    held-back training images, judged once on validation.

    Returns the report; check ``report.exit_code`` (conversion errors and failed gates do not raise, so
    that every artifact is tried and the files are kept for inspection).

    Raises:
        ExportError: unknown run directory, missing ``best.keras``, bad options (``RunDirError`` included).
    """
    from cvkeras.run.files import atomic_write, write_json
    from cvkeras.run.rundir import RunDir
    from cvkeras.serving.errors import RunDirError
    from cvkeras.serving.formats import LABELS, labels_text

    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    opts = replace(options or ExportOptions(), **settings).checked()
    try:
        rd = RunDir.open(run)
        labels, split, model_name = rd.labels(), rd.split(), rd.model_name()
        seed, size = rd.seed(), list(rd.image_size())
        temperature = rd.temperature()
    except RunDirError as exc:
        raise ExportError(str(exc)) from None
    out_dir = Path(output) if output is not None else rd.export_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a directory; pass another --output")

    if temperature is None:
        say("no temperature in metrics.json (a run from before calibration; `cvkeras evaluate RUN` fits one): "
            "the artifacts' scores stay uncalibrated (temperature 1)")
    temperature = 1.0 if temperature is None else temperature
    say("loading best.keras")
    model = load_float32_model(rd, len(labels))

    say("decoding the validation, calibration and held-back training images (Pillow, as on the device)")
    try:
        data = fidelity.fidelity_set(rd.path, (size[0], size[1]), opts.calibration_samples if opts.int8 else None,
                                     seed, opts.verify_samples)
    except RunDirError as exc:
        raise ExportError(f"{exc}; verification needs validation images") from None
    say(f"running the Keras model on {len(data.labels)} fidelity images")
    keras_probs, keras_feats = unknown.keras_outputs(model, data.images, opts.unknown)
    val = data.val
    detector = ref_scores = None
    ood_files = None if opts.ood is None or keras_feats is None else \
        [p for p, error in expand_paths([opts.ood]) if error is None]
    if keras_feats is not None:
        detector = unknown.fit(keras_feats, data.labels, val, data.held_back, len(labels), opts.unknown_accept)
        ref_scores = detector.scores(keras_feats)
        ood = None if ood_files is None else unknown.ood_scores(model, opts.ood, ood_files, (size[0], size[1]),
                                                                 detector)
        say(f"unknown detector: threshold {detector.threshold:.4f} accepts {100 * opts.unknown_accept:g} % of the "
            f"{int(val.sum())} validation images (prototypes from {int(data.held_back.sum())} training images)")
    keras_acc = float((keras_probs[val].argmax(1) == data.labels[val]).mean())
    folder.prepare_output(out_dir)
    removed = folder.remove_previous_export(out_dir)
    folder.refuse_overwrites(out_dir, [LABELS, REFERENCE_FILE, REPORT_FILE, *(a.name for a in opts.planned())])
    if removed:
        say(f"removed {len(removed)} file(s) of the previous export in {out_dir} (an export replaces it): "
            f"{', '.join(removed)}")
    atomic_write(out_dir / LABELS, labels_text(labels))
    root = split.get("root")
    ref_paths = None if data.paths is None else relative_paths(data.paths, root)
    atomic_write(out_dir / REFERENCE_FILE, Reference(
        keras_probs, data.labels, ref_paths, keras_acc, splits=data.splits,
        calibration=relative_paths(data.calibration_paths, root), seen=relative_paths(data.seen_paths, root),
        unknown_scores=ref_scores).to_bytes())

    calib_images = None
    if opts.int8:
        calib_images = fidelity.with_flips(data.calibration) if opts.calibration_flip else data.calibration
    settings_doc = opts.settings(0 if calib_images is None else len(calib_images), len(data.calibration))
    report = ExportReport(str(rd.path), str(out_dir), model_name, size, labels, keras_acc, int(val.sum()),
                          settings_doc, images=data.counts(), temperature=temperature)
    if detector is not None:
        report.unknown = unknown.report_block(detector, ref_scores[val], int(data.held_back.sum()), ood,
                                              opts.formats)

    def metadata(precision: str, extra: dict[str, Any]):
        return meta_io.make_metadata(labels, size, model_name, precision, keras_acc,
                                     {"val_samples": int(val.sum()), **extra}, temperature,
                                     None if detector is None else detector.to_dict())

    results = {a.name: ArtifactResult(a.name, a.format, a.precision, str(out_dir / a.name))
               for a in opts.planned()}
    gates = Gates(opts.max_accuracy_drop, opts.min_agreement, opts.float_tolerance)
    reference = Reference.load(out_dir)  # what `cvkeras validate` reads
    items = data.items()

    def check(res: ArtifactResult) -> ArtifactResult:
        say(f"verifying {res.name} on {len(data.labels)} images")
        return verify_artifact(res, items, reference, gates, opts.threads, ood=ood_files)

    held = data.held_back
    search_ref = reference.subset(held)
    search_gates = Gates(100.0, opts.search_agreement(), opts.float_tolerance)
    val_probs = reference.probs[data.val]  # the float model's margins the candidates' noise is applied to

    def fast_check(path: str) -> tuple[bool, dict[str, Any]]:
        """A repair candidate on the held-back training images' arrays (the same pixels as the files): the
        repair chooses on these, never on the validation images its verdict is then measured on once. It
        holds when its agreement there reaches the search's level and its chance to pass the validation gate,
        predicted from its margin erosions there (:mod:`cvkeras.export.flip_risk`), is at least PASS_CHANCE."""
        if not held.any():
            raise ExportError(f"{path}: no held-back training image to choose the repair on (calibration used "
                              "every readable training image); lower --calibration-samples")
        res = verify_artifact(ArtifactResult(Path(path).name, "", "int8", path),
                              (data.images[held], data.labels[held]), search_ref, search_gates, opts.threads)
        if res.probs is None:  # a candidate that cannot be run stops the export, as loading it did
            raise ExportError(res.error or f"{path}: cannot be run")
        chances = flip_chances(search_ref.probs, res.probs, val_probs)
        chance = pass_chance(chances, opts.min_agreement)
        return res.status == "passed" and chance >= PASS_CHANCE, {
            **res.to_dict(), "accuracy_drop": None, "predicted_agreement": predicted_agreement(chances),
            "pass_chance": chance}

    job = Job(model, opts, results, calib_images, data.calibration, metadata, say, check, fast_check)
    for fmt in dict.fromkeys(a.format for a in opts.planned()):  # the table's order: ONNX, then TFLite
        CONVERTERS[fmt](job)
    for res in results.values():
        if res.status == "failed" and Path(res.path).is_file():
            folder.mark_failed(res)
    report.artifacts = list(results.values())
    report.unverified_files = folder.unverified_files(out_dir, [Path(r.path).name for r in report.artifacts])
    report.seconds = time.perf_counter() - t0
    write_json(out_dir / REPORT_FILE, report.to_dict())
    return report

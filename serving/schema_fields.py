"""The table behind :mod:`cvkeras.serving.schema`: every field of every JSON document cvkeras writes or prints.

One :class:`Schema` per document kind, one :class:`Field` per path (type, unit, meaning, whether
required). ``docs/json.md`` is generated from this table; standard library only (the device side uses it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """One documented field: ``path`` (see the module doc), JSON type, unit (``""``: none) and meaning."""

    path: str
    type: str
    unit: str
    doc: str
    required: bool = True  # required fields are checked where their parent object is present


@dataclass(frozen=True)
class Schema:
    kind: str
    version: int
    title: str
    where: str
    fields: tuple[Field, ...]

    @property
    def id(self) -> str:
        return f"cvkeras.{self.kind}/{self.version}"


INTRO = """\
Generated from `serving/schema.py` (`python -m cvkeras.serving.schema > docs/json.md`); `tests/test_json_schema.py`
checks that this file is up to date and that every command's real JSON matches it.

- Every document carries `"schema": "cvkeras.<kind>/<version>"`; the version goes up when a field changes
  meaning or is removed (added fields do not change it).
- **One unit per kind.** Accuracies, agreements, accuracy drops and their intervals, and the gates are
  **fractions 0..1**. Only the `--max-accuracy-drop` flag and the console tables speak in percentage points;
  the JSON carries `points / 100` (`0.01` = one point). Sizes are `size_bytes` (bytes); latencies are
  `latency_ms_per_image` (mean model time per image, ms) and its `_p50`/`_p95`/`_rounds` variants in
  `benchmark`; durations in `seconds` or `_ms`; probabilities 0..1. A figure has one name in every
  document: an `export_report.json` artifact row and `validate --json` share `paired_accuracy`,
  `n_paired`, `n_reference`, `accuracy_drop`, `agreement`, `max_abs_diff`, `latency_ms_per_image`.
- **Paths**: files inside a run directory are relative to it (`export/model_int8.onnx`); a path the user
  passed (an image, a model, `--data`) is printed as given.
- Field paths: `a.b` is key `b` of object `a`, `a[]` an item of list `a`, `*` any key (a class name).
  Types: `int`, `number`, `string`, `bool`, `object`, `list`, `list[...]`; "or null" may be null. Fields
  marked optional appear only in the case their meaning names.\
"""


def _f(path: str, type_: str, unit: str, doc: str, required: bool = True) -> Field:
    return Field(path, type_, unit, doc, required)


FRACTION = "fraction 0..1"
_CI = "fraction, [low, high] 95 % interval"

_METRICS_FIELDS = (
    _f("schema", "string", "", "`cvkeras.metrics/1`"),
    _f("n", "int", "images", "images evaluated"),
    _f("accuracy", "number|null", FRACTION, "top-1 accuracy (null when no image)"),
    _f("top_5_accuracy", "number|null", FRACTION, "top-5 accuracy; only with more than 5 classes", False),
    _f("cross_entropy", "number|null", "nats", "mean -log p(true class), no label smoothing"),
    _f("macro_f1", "number", FRACTION, "unweighted mean of the per-class F1"),
    _f("per_class", "object", "", "per class name"),
    _f("per_class.*", "object", "", "one class"),
    _f("per_class.*.precision", "number", FRACTION, "precision"),
    _f("per_class.*.recall", "number", FRACTION, "recall"),
    _f("per_class.*.f1", "number", FRACTION, "F1"),
    _f("per_class.*.support", "int", "images", "images of this class"),
    _f("confusion_matrix", "list[list[int]]", "images",
       "row: true class, column: predicted class (order of `classes`)"),
    _f("classes", "list[string]", "", "class names, index = label"),
    _f("split", "string|null", "", "`val` or `test`: the run's recorded split; null with `--data` (see `data`)"),
    _f("data", "string", "", "`run` (the run's own split) or the `--data` argument as given: every image of it counts"),
    _f("measured_on", "object", "", "the images these figures are on"),
    _f("measured_on.images", "string", "", "validation (selection), test (evaluated once) or another dataset"),
    _f("measured_on.n", "int", "images", "how many"),
    _f("measured_on.selection", "bool", "", "true for the validation split: the best epoch (and any tuning) "
                                            "was chosen on it, so its accuracy is optimistic"),
    _f("test", "object", "", "finetune with a test split: the test figures", False),
    _f("test.n", "int", "images", "test images"),
    _f("test.accuracy", "number|null", FRACTION, "test accuracy"),
    _f("test.cross_entropy", "number|null", "nats", "test cross-entropy"),
    _f("test.macro_f1", "number", FRACTION, "test macro F1"),
    _f("test.measured_on", "object", "", "the test images (`selection` false)"),
    _f("test.measured_on.images", "string", "", "test (evaluated once, at the end)"),
    _f("test.measured_on.n", "int", "images", "how many"),
    _f("test.measured_on.selection", "bool", "", "false: nothing was chosen on them"),
)

_ARTIFACT = "artifacts[]"
_REPAIR = f"{_ARTIFACT}.repair"
_EXPORT_FIELDS = (
    _f("schema", "string", "", "`cvkeras.export_report/2`"),
    _f("run", "string", "", "the run directory exported, as given on the command line"),
    _f("output", "string", "", "the export folder, relative to the run directory (`export`), or absolute "
                               "when outside it"),
    _f("model_name", "string", "", "registry name of the backbone"),
    _f("input_size", "list[int]", "px", "[height, width]"),
    _f("labels", "list[string]", "", "class names, index = output"),
    _f("keras", "object", "", "the float32 Keras model on the labelled validation images"),
    _f("keras.accuracy", "number", FRACTION, "its accuracy"),
    _f("keras.n", "int", "images", "labelled validation images"),
    _f("images", "object", "", "image counts"),
    _f("images.fidelity", "int", "images", "images every artifact is run on (val + held-back training)"),
    _f("images.val", "int", "images", "labelled validation images: every gate and verdict figure"),
    _f("images.held_back_train", "int", "images", "training images not used for calibration: the repair's search "
                                                  "and `held_back_agreement` (never gated)"),
    _f("images.calibration", "int", "images", "training images used for int8 calibration"),
    _f("images.seen_train", "int", "images", "other training images (listed in reference.npz, in no figure)"),
    _f("images.unreadable", "int", "images", "files that could not be decoded"),
    _f("settings", "object", "", "the export options"),
    _f("settings.formats", "list[string]", "", "`onnx`, `tflite`"),
    _f("settings.int8", "bool", "", "`--int8`"),
    _f("settings.fp16", "bool", "", "`--fp16`"),
    _f("settings.opset", "int", "", "ONNX opset"),
    _f("settings.io_type", "string", "", "input/output type of model_int8.tflite"),
    _f("settings.calibration", "string", "", "ONNX calibration method"),
    _f("settings.calibration_samples", "int", "images", "calibration tensors (mirror images included)"),
    _f("settings.calibration_images", "int", "images", "calibration images"),
    _f("settings.calibration_flip", "bool", "", "mirror images calibrated too"),
    _f("settings.quantization", "object", "", "int8 quantization settings (ONNX Runtime's; `gptq_images` and "
                                               "`bias_correction_images` also for model_int8.tflite)"),
    _f("settings.quantization.*", "string|bool|int|number|null", "", "one setting (`QuantSettings`)"),
    _f("settings.max_accuracy_drop", "number", FRACTION, "the drop gate (`--max-accuracy-drop` points / 100)"),
    _f("settings.min_agreement", "number", FRACTION, "the agreement gate"),
    _f("settings.repair", "bool", "", "`--repair`"),
    _f("settings.repair_min_agreement", "number", FRACTION, "agreement the repair's search needs on the held-back "
                                                             "training images"),
    _f("settings.float_tolerance", "number", "probability", "largest max_abs_diff a float32 artifact may have"),
    _f("settings.threads", "int|null", "threads", "runtime threads (null: the runtime's choice)"),
    _f("passed", "bool", "", "every artifact passed"),
    _f("seconds", "number", "s", "export wall time"),
    _f("unverified_files", "list[string]", "", "model files in the export folder that this export did not make "
                                               "and cvkeras cannot prove it wrote: left in place, never checked"),
    _f("artifacts", "list", "", "one row per artifact, in conversion order"),
    _f(f"{_ARTIFACT}.name", "string", "", "artifact name (`model_int8.onnx`, ...)"),
    _f(f"{_ARTIFACT}.format", "string", "", "`onnx` or `tflite`"),
    _f(f"{_ARTIFACT}.precision", "string", "", "`float32`, `fp16`, `int8` or `dynamic`"),
    _f(f"{_ARTIFACT}.path", "string", "", "its file, relative to the run directory (absolute when the export "
                                          "folder is outside it); a failed artifact's name has `.FAILED` before the "
                                          "suffix"),
    _f(f"{_ARTIFACT}.status", "string", "", "`passed`, `failed` (missed a gate or cannot run), `error` (conversion "
                                            "failed, no file) or `skipped` (its parent failed)"),
    _f(f"{_ARTIFACT}.size_bytes", "int|null", "bytes", "file size"),
    _f(f"{_ARTIFACT}.paired_accuracy", "number|null", FRACTION, "accuracy on the labelled validation images"),
    _f(f"{_ARTIFACT}.accuracy_drop", "number|null", FRACTION, "Keras accuracy minus this one, paired"),
    _f(f"{_ARTIFACT}.accuracy_drop_ci", "list[number]|null", _CI, "of the drop (Agresti-Min, paired)"),
    _f(f"{_ARTIFACT}.agreement", "number|null", FRACTION, "top-1 agreement with Keras on the validation images"),
    _f(f"{_ARTIFACT}.agreement_ci", "list[number]|null", _CI, "of the agreement (Wilson)"),
    _f(f"{_ARTIFACT}.max_abs_diff", "number|null", "probability", "largest |p - p_keras|"),
    _f(f"{_ARTIFACT}.latency_ms_per_image", "number|null", "ms", "mean model time per image, batch 1"),
    _f(f"{_ARTIFACT}.n_paired", "int", "images", "labelled validation images the drop is over"),
    _f(f"{_ARTIFACT}.n_reference", "int", "images", "validation images the agreement is over"),
    _f(f"{_ARTIFACT}.held_back_agreement", "number|null", FRACTION, "top-1 agreement on the held-back training "
                                                                    "images (seen in training; never gated)"),
    _f(f"{_ARTIFACT}.held_back_agreement_ci", "list[number]|null", _CI, "its interval (Wilson)"),
    _f(f"{_ARTIFACT}.n_held_back", "int", "images", "held-back training images"),
    _f(f"{_ARTIFACT}.measured_on", "object|null", "", "figure -> the images it was measured on"),
    _f(f"{_ARTIFACT}.measured_on.*", "object", "", "`images` (`validation`, ...) and `n`"),
    _f(f"{_ARTIFACT}.measured_on.*.images", "string", "", "which images"),
    _f(f"{_ARTIFACT}.measured_on.*.n", "int", "images", "how many"),
    _f(f"{_ARTIFACT}.gate", "string", "", "the gate, in words"),
    _f(f"{_ARTIFACT}.error", "string|null", "", "why it did not pass"),
    _f(f"{_ARTIFACT}.float_layers", "list[string]|null", "", "layers a repair kept in float32"),
    _f(f"{_REPAIR}", "object|null", "", "the int8 repair, when one ran"),
    _f(f"{_REPAIR}.error", "string", "", "the repair itself failed", False),
    _f(f"{_REPAIR}.passed", "bool", "", "a mix held on the held-back training images", False),
    _f(f"{_REPAIR}.searched_on", "string", "", "`held_back_train`: the images the candidates were checked on", False),
    _f(f"{_REPAIR}.judged_on", "object", "", "the chosen mix, judged once on the validation images", False),
    _f(f"{_REPAIR}.judged_on.images", "string", "", "`validation`"),
    _f(f"{_REPAIR}.judged_on.n", "int", "images", "validation images"),
    _f(f"{_REPAIR}.judged_on.agreement", "number|null", FRACTION, "its agreement"),
    _f(f"{_REPAIR}.judged_on.accuracy_drop", "number|null", FRACTION, "its drop"),
    _f(f"{_REPAIR}.judged_on.passed", "bool", "", "it passed the gates"),
    _f(f"{_REPAIR}.float_layers", "list[string]", "", "layers kept float by the passing mix", False),
    _f(f"{_REPAIR}.ranking", "list", "", "the 20 worst-measured layers", False),
    _f(f"{_REPAIR}.ranking[].name", "string", "", "layer"),
    _f(f"{_REPAIR}.ranking[].op", "string", "", "operator"),
    _f(f"{_REPAIR}.ranking[].error", "number", "see metric", "measured quantization error"),
    _f(f"{_REPAIR}.ranking[].metric", "string", "", "what `error` is (noise-to-signal power, rmse/scale)"),
    _f(f"{_REPAIR}.ranking[].nodes", "list[string]", "", "graph nodes kept float with it"),
    _f(f"{_REPAIR}.attempts", "list", "", "every candidate tried, on the held-back training images", False),
    _f(f"{_REPAIR}.attempts[].float_layers", "int", "layers", "layers in float"),
    _f(f"{_REPAIR}.attempts[].agreement", "number|null", FRACTION, "its agreement on the held-back images"),
    _f(f"{_REPAIR}.attempts[].accuracy_drop", "null", "", "not measured (training images)"),
    _f(f"{_REPAIR}.attempts[].passed", "bool", "", "held `settings.repair_min_agreement`"),
    _f(f"{_REPAIR}.attempts[].n_images", "int", "images", "held-back training images it was checked on"),
    _f(f"{_REPAIR}.attempts[].size_bytes", "int", "bytes", "its size"),
    _f(f"{_REPAIR}.attempts[].latency_ms_per_image", "number", "ms", "its latency"),
    _f(f"{_REPAIR}.full_int8", "object", "", "the fully quantized model before repair", False),
    _f(f"{_REPAIR}.full_int8.agreement", "number|null", FRACTION, "agreement"),
    _f(f"{_REPAIR}.full_int8.agreement_ci", "list[number]|null", _CI, "its interval"),
    _f(f"{_REPAIR}.full_int8.accuracy_drop", "number|null", FRACTION, "drop"),
    _f(f"{_REPAIR}.full_int8.accuracy_drop_ci", "list[number]|null", _CI, "its interval"),
    _f(f"{_REPAIR}.full_int8.size_bytes", "int|null", "bytes", "size"),
    _f(f"{_REPAIR}.full_int8.latency_ms_per_image", "number|null", "ms", "latency"),
    _f(f"{_REPAIR}.full_int8.error", "string|null", "", "why it failed"),
    _f(f"{_REPAIR}.size_cost", "number", "ratio", "repaired size / full int8 size", False),
    _f(f"{_REPAIR}.latency_cost", "number", "ratio", "repaired latency / full int8 latency", False),
)

_PREDICTION_FIELDS = (
    _f("schema", "string", "", "`cvkeras.prediction/1` (one JSON object per line, per image)"),
    _f("path", "string|null", "", "the image file as found (folders expanded)"),
    _f("label", "string", "", "predicted class", False),
    _f("index", "int", "", "its label index", False),
    _f("score", "number|null", "probability", "its probability", False),
    _f("top_k", "list", "", "the `--top-k` best classes, best first", False),
    _f("top_k[].label", "string", "", "class"),
    _f("top_k[].score", "number|null", "probability", "probability"),
    _f("error", "string", "", "only for a file that could not be classified (then no label/score)", False),
)

_VALIDATION_FIELDS = (
    _f("schema", "string", "", "`cvkeras.validation/2`"),
    _f("model", "string", "", "the model file, as given"),
    _f("n", "int", "images", "images no training saw: the reference's validation rows and images it does not know"),
    _f("accuracy", "number", FRACTION, "accuracy over those `n` images"),
    _f("reference_accuracy", "number|null", FRACTION, "the reference's accuracy on the paired images"),
    _f("reference_source", "string|null", "", "where `reference_accuracy` came from"),
    _f("paired_accuracy", "number|null", FRACTION, "this model's accuracy on the paired images"),
    _f("n_paired", "int", "images", "validation images paired with reference outputs (the drop is over these)"),
    _f("accuracy_drop", "number|null", FRACTION, "reference accuracy minus this one"),
    _f("accuracy_drop_ci", "list[number]|null", _CI, "of the drop (paired)"),
    _f("max_accuracy_drop", "number", FRACTION, "the drop gate (`--max-accuracy-drop` points / 100)"),
    _f("discordant", "list[int]|null", "images", "[reference right & model wrong, reference wrong & model right]"),
    _f("agreement", "number|null", FRACTION, "top-1 agreement with the reference outputs"),
    _f("agreement_ci", "list[number]|null", _CI, "of the agreement (Wilson)"),
    _f("min_agreement", "number", FRACTION, "the agreement gate"),
    _f("n_reference", "int", "images", "validation images matched with a reference output (agreement, max_abs_diff)"),
    _f("held_back_agreement", "number|null", FRACTION, "top-1 agreement on images matched with held-back training "
                                                       "rows (seen in training; never gated)"),
    _f("held_back_agreement_ci", "list[number]|null", _CI, "its interval (Wilson)"),
    _f("n_held_back", "int", "images", "images matched with held-back training rows"),
    _f("n_seen", "int", "images", "images training saw (held-back, calibration, other training images): apart"),
    _f("seen_accuracy", "number|null", FRACTION, "accuracy on those"),
    _f("measured_on", "object", "", "figure -> the images it was measured on"),
    _f("measured_on.*", "object", "", "`images` (`validation`, ...) and `n`"),
    _f("measured_on.*.images", "string", "", "which images"),
    _f("measured_on.*.n", "int", "images", "how many"),
    _f("max_abs_diff", "number|null", "probability", "largest |p - p_ref|"),
    _f("mean_abs_diff", "number|null", "probability", "mean |p - p_ref|"),
    _f("passed", "bool", "", "both gates hold"),
    _f("gate_failures", "list[string]", "", "one sentence per failed gate (console wording, in points)"),
    _f("per_class", "object", "", "accuracy per class present in the data"),
    _f("per_class.*", "number", FRACTION, "accuracy of one class"),
    _f("support", "object", "", "images per class"),
    _f("support.*", "int", "images", "images of one class"),
    _f("latency_ms_per_image", "number", "ms", "mean model time per image (decoding excluded)"),
    _f("failures", "list", "", "unreadable files"),
    _f("failures[].path", "string", "", "the file"),
    _f("failures[].error", "string", "", "why"),
)

_ROW = "models[]"
_BENCHMARK_FIELDS = (
    _f("schema", "string", "", "`cvkeras.benchmark/1`"),
    _f("what", "string", "", "what is timed"),
    _f("cpus", "int|null", "", "CPUs of this machine"),
    _f("loadavg", "list[number]", "", "1-minute load average before and after"),
    _f("warnings", "list[string]", "", "noisy figures, unresolved ratios, int8 slower than float32, models "
                                       "marked failed by export"),
    _f("models", "list", "", "one row per model and predictor mode"),
    _f(f"{_ROW}.model", "string", "", "file name"),
    _f(f"{_ROW}.path", "string", "", "the file, as given"),
    _f(f"{_ROW}.mode", "string", "", "`latency` or `throughput`"),
    _f(f"{_ROW}.format", "string", "", "`onnx` or `tflite`"),
    _f(f"{_ROW}.precision", "string", "", "from the model metadata"),
    _f(f"{_ROW}.size_bytes", "int", "bytes", "file size"),
    _f(f"{_ROW}.load_time_ms", "number", "ms", "Predictor.load"),
    _f(f"{_ROW}.batch_size", "int", "images", "`--batch-size`"),
    _f(f"{_ROW}.threads", "int|null", "threads", "`--threads` (null: the runtime's choice)"),
    _f(f"{_ROW}.rounds", "int", "", "interleaved rounds"),
    _f(f"{_ROW}.iters", "int", "", "timed calls per round and measurement"),
    _f(f"{_ROW}.latency_ms_per_image_p50", "number", "ms", "single image, median over all calls"),
    _f(f"{_ROW}.latency_ms_per_image_p95", "number", "ms", "single image, 95th percentile"),
    _f(f"{_ROW}.latency_ms_per_image_rounds", "object", "", "single image, over round medians"),
    _f(f"{_ROW}.latency_ms_per_image_rounds.min", "number", "ms", "fastest round"),
    _f(f"{_ROW}.latency_ms_per_image_rounds.median", "number", "ms", "median round"),
    _f(f"{_ROW}.latency_ms_per_image_rounds.max", "number", "ms", "slowest round"),
    _f(f"{_ROW}.latency_ms_per_image_rounds.spread", "number|null", "ratio", "(max - min) / median"),
    _f(f"{_ROW}.latency_ms_per_batch_p50", "number", "ms", "one batch call, median"),
    _f(f"{_ROW}.latency_ms_per_batch_p95", "number", "ms", "one batch call, 95th percentile"),
    _f(f"{_ROW}.latency_ms_per_image_in_batch", "number", "ms", "mean batch call time / batch size"),
    _f(f"{_ROW}.throughput_ips", "number", "images/s", "batched, median round"),
    _f(f"{_ROW}.throughput_ips_rounds", "object", "", "over rounds"),
    _f(f"{_ROW}.throughput_ips_rounds.min", "number", "images/s", "slowest round"),
    _f(f"{_ROW}.throughput_ips_rounds.median", "number", "images/s", "median round"),
    _f(f"{_ROW}.throughput_ips_rounds.max", "number", "images/s", "fastest round"),
    _f(f"{_ROW}.throughput_ips_rounds.spread", "number|null", "ratio", "(max - min) / median"),
    _f("comparisons", "list", "", "single-image latency of each model against the first, per mode"),
    _f("comparisons[].model", "string", "", "file name"),
    _f("comparisons[].baseline", "string", "", "the first model's file name"),
    _f("comparisons[].mode", "string", "", "predictor mode"),
    _f("comparisons[].latency_ratio", "number", "ratio", "median of per-round ratios"),
    _f("comparisons[].latency_ratio_range", "list[number]", "ratio", "[min, max] over rounds"),
    _f("comparisons[].resolved", "bool", "", "the range does not straddle 1"),
)

_MODELS_FIELDS = (
    _f("schema", "string", "", "`cvkeras.models/1`"),
    _f("models", "list", "", "one row per backbone (or the `--measure`d one)"),
    _f(f"{_ROW}.name", "string", "", "registry name (`--model`)"),
    _f(f"{_ROW}.alphas", "list[number]", "", "allowed `--alpha` widths (empty: none)"),
    _f(f"{_ROW}.alpha", "number|null", "", "width the figures are for"),
    _f(f"{_ROW}.input_size", "list[int]", "px", "[height, width] the figures are for"),
    _f(f"{_ROW}.params", "int|null", "parameters", "backbone without head"),
    _f(f"{_ROW}.gmacs", "number|null", "10^9 multiply-adds", "per image"),
    _f(f"{_ROW}.float32_size_bytes", "int|null", "bytes", "weights at 4 bytes per parameter"),
    _f(f"{_ROW}.int8_size_bytes", "int|null", "bytes", "weights at 1 byte per parameter"),
    _f(f"{_ROW}.cpu_ms", "number", "ms", "batch-1 Keras latency here (`--measure` only)", False),
)

_FINETUNE_FIELDS = (
    _f("schema", "string", "", "`cvkeras.finetune/1`"),
    _f("run", "string", "", "the run directory written"),
    _f("epochs_run", "int", "epochs", "epochs trained, both stages"),
    _f("best_epoch", "int", "epoch", "epoch of best.keras (1-based, over both stages)"),
    _f("best_val_accuracy", "number", FRACTION, "its validation accuracy"),
    _f("precision", "string", "", "numeric precision trained in"),
    _f("replicas", "int", "", "devices trained on"),
    _f("skipped", "int", "files", "unreadable files skipped (listed in skipped.txt)"),
    _f("metrics", "object", "", "the run's metrics.json (`cvkeras.metrics/1`)"),
    _f("metrics.*", "string|number|int|bool|null|object|list", "", "see `cvkeras.metrics/1`"),
)

_CHECK_FIELDS = (
    _f("schema", "string", "", "`cvkeras.check/1`"),
    _f("data", "string", "", "the data argument, as given"),
    _f("model", "string", "", "registry name of the backbone whose pooled features were used"),
    _f("alpha", "number|null", "", "its width"),
    _f("weights", "string", "", "`--weights`"),
    _f("input_size", "list[int]", "px", "[height, width] the backbone saw"),
    _f("seed", "int", "", "split (as finetune's) and cross-validation seed"),
    _f("val_split", "number", FRACTION, "validation fraction when the data has no val split (as finetune's)"),
    _f("ranked_by", "string", "", "cleanlab's ranking of label issues (`find_label_issues`)"),
    _f("filter_by", "string", "", "cleanlab's filter of label issues (`find_label_issues`)"),
    _f("phash_max_distance", "int", "bits", "largest pHash distance (of 64) of a near copy"),
    _f("layout_min", "number", "correlation", "colour-layout correlation a near copy also needs"),
    _f("cosine_min", "number|null", "cosine", "centred feature cosine a near copy also needs (null: `--weights "
                                               "none`: random features are not used)"),
    _f("images", "object", "", "images per split, as finetune splits them"),
    _f("images.*", "int", "images", "`train`, `val`, `test`"),
    _f("classes", "object", "", "per class name"),
    _f("classes.*", "object", "", "one class"),
    _f("classes.*.*", "int", "images", "its images per split (`train`, `val`, `test`) and `total`"),
    _f("imbalance", "number", "ratio", "largest class / smallest class (all splits)"),
    _f("duplicates", "list", "", "groups of copies, leaks across splits first"),
    _f("duplicates[].paths", "list[string]", "", "the copies (files, or `tfds:SPLIT:INDEX`)"),
    _f("duplicates[].kind", "string", "", "`exact` (same bytes or same pixels) or `near`"),
    _f("duplicates[].cross_split", "bool", "", "the copies are in more than one split (leakage)"),
    _f("duplicates[].splits", "list[string]", "", "each copy's split"),
    _f("duplicates[].labels", "list[string]", "", "each copy's class"),
    _f("duplicates[].conflicting_labels", "bool", "", "the copies are filed under different classes"),
    _f("label_issues", "list", "", "likely label errors, most likely first (cleanlab on out-of-fold "
                                   "probabilities)"),
    _f("label_issues[].path", "string", "", "the image"),
    _f("label_issues[].split", "string", "", "its split"),
    _f("label_issues[].given", "string", "", "the class it is filed under"),
    _f("label_issues[].suggested", "string", "", "the most probable other class"),
    _f("label_issues[].score", "number", "probability", "label quality (low: likely wrong)"),
    _f("outliers", "list", "", "photos unlike the rest of their class, most unlike first"),
    _f("outliers[].path", "string", "", "the image"),
    _f("outliers[].class", "string", "", "its class"),
    _f("outliers[].score", "number", "", "cleanlab's kNN outlier score within the class (0..1, low: unlike)"),
    _f("small_images", "list", "", "images a square model input serves badly"),
    _f("small_images[].path", "string", "", "the image"),
    _f("small_images[].width", "int", "px", "width"),
    _f("small_images[].height", "int", "px", "height"),
    _f("small_images[].why", "string", "", "`tiny` (upscaled more than 4x) or `extreme_aspect` (sides over 4:1)"),
    _f("skipped", "list", "", "files finetune would skip"),
    _f("skipped[].path", "string", "", "the file"),
    _f("skipped[].reason", "string", "", "why"),
    _f("seconds", "number", "s", "wall time of the check"),
)

SCHEMAS: dict[str, Schema] = {s.kind: s for s in (
    Schema("metrics", 1, "metrics.json, `evaluate --json`", "`RUN/metrics.json` (val), `metrics-test.json` "
           "(`--split test`), `metrics-data.json` (`--data`); `cvkeras evaluate --json` prints it", _METRICS_FIELDS),
    Schema("export_report", 2, "export_report.json, `export --json`", "`RUN/export/export_report.json`; "
           "`cvkeras export --json` prints it", _EXPORT_FIELDS),
    Schema("prediction", 1, "`predict --json`", "one line per image on stdout", _PREDICTION_FIELDS),
    Schema("validation", 2, "`validate --json`", "stdout", _VALIDATION_FIELDS),
    Schema("benchmark", 1, "`benchmark --json`", "stdout", _BENCHMARK_FIELDS),
    Schema("models", 1, "`models --json`", "stdout", _MODELS_FIELDS),
    Schema("finetune", 1, "`finetune --json`", "stdout (training progress is not printed)", _FINETUNE_FIELDS),
    Schema("check", 1, "`check --json`", "stdout; `check --output DIR` also writes `DIR/check.json`", _CHECK_FIELDS),
)}

"""The fields of the training side's JSON: ``metrics.json`` (``evaluate``), ``finetune --json``, ``models --json``
and ``check --json``. Part of the table behind :mod:`cvkeras.serving.schema` (standard library only).
"""

from __future__ import annotations

from cvkeras.serving.schema_fields import FRACTION
from cvkeras.serving.schema_fields import Field as F


def _calibration(at: str, where: str) -> tuple[F, ...]:
    """The fields of a ``calibration`` block at ``at`` (temperature scaling, :mod:`cvkeras.serving.calibration`)."""
    diagrams = tuple(f for key in ("before", "after") for f in (
        F(f"{at}.reliability_{key}", "object", "", f"reliability diagram {key} the temperature, per confidence bin"),
        F(f"{at}.reliability_{key}.count", "list[int]", "images", "images per bin (k/bins, (k+1)/bins]"),
        F(f"{at}.reliability_{key}.confidence", "list", "probability", "their mean top-1 confidence (null: empty)"),
        F(f"{at}.reliability_{key}.accuracy", "list", FRACTION, "their accuracy (null: empty bin)")))
    return (
        F(at, "object", "", f"temperature scaling {where}", False),
        F(f"{at}.temperature", "number", "", "T: scores = softmax(log p / T); export writes it into the metadata"),
        F(f"{at}.fitted", "bool", "", "true: T was fitted on these images (validation), so the after figures are "
                                      "fitted, optimistic; false: nothing was fitted on them"),
        F(f"{at}.bins", "int", "", "equal-width bins of the top-1 confidence (ECE, diagrams)"),
        F(f"{at}.n", "int", "images", "images"),
        F(f"{at}.ece_before", "number", FRACTION, "expected calibration error of the model's probabilities"),
        F(f"{at}.ece_after", "number", FRACTION, "expected calibration error at temperature T"),
        F(f"{at}.nll_before", "number", "nats", "mean -log p(true class), unclipped"),
        F(f"{at}.nll_after", "number", "nats", "the same at temperature T"),
        *diagrams,
        F(f"{at}.measured_on", "object", "", "the images"),
        F(f"{at}.measured_on.images", "string", "", "validation (T fitted on it), test or another dataset"),
        F(f"{at}.measured_on.n", "int", "images", "how many"),
    )


METRICS_FIELDS = (
    F("schema", "string", "", "`cvkeras.metrics/1`"),
    F("n", "int", "images", "images evaluated"),
    F("accuracy", "number|null", FRACTION, "top-1 accuracy (null when no image)"),
    F("top_5_accuracy", "number|null", FRACTION, "top-5 accuracy; only with more than 5 classes", False),
    F("cross_entropy", "number|null", "nats", "mean -log p(true class), no label smoothing"),
    F("macro_f1", "number", FRACTION, "unweighted mean of the per-class F1"),
    F("per_class", "object", "", "per class name"),
    F("per_class.*", "object", "", "one class"),
    F("per_class.*.precision", "number", FRACTION, "precision"),
    F("per_class.*.recall", "number", FRACTION, "recall"),
    F("per_class.*.f1", "number", FRACTION, "F1"),
    F("per_class.*.support", "int", "images", "images of this class"),
    F("confusion_matrix", "list[list[int]]", "images",
       "row: true class, column: predicted class (order of `classes`)"),
    F("classes", "list[string]", "", "class names, index = label"),
    F("split", "string|null", "", "`val` or `test`: the run's recorded split; null with `--data` (see `data`)"),
    F("data", "string", "", "`run` (the run's own split) or the `--data` argument as given: every image of it counts"),
    F("measured_on", "object", "", "the images these figures are on"),
    F("measured_on.images", "string", "", "validation (selection), test (evaluated once) or another dataset"),
    F("measured_on.n", "int", "images", "how many"),
    F("measured_on.selection", "bool", "", "true for the validation split: the best epoch (and any tuning) "
                                            "was chosen on it, so its accuracy is optimistic"),
    F("test", "object", "", "finetune with a test split: the test figures", False),
    F("test.n", "int", "images", "test images"),
    F("test.accuracy", "number|null", FRACTION, "test accuracy"),
    F("test.cross_entropy", "number|null", "nats", "test cross-entropy"),
    F("test.macro_f1", "number", FRACTION, "test macro F1"),
    F("test.measured_on", "object", "", "the test images (`selection` false)"),
    F("test.measured_on.images", "string", "", "test (evaluated once, at the end)"),
    F("test.measured_on.n", "int", "images", "how many"),
    F("test.measured_on.selection", "bool", "", "false: nothing was chosen on them"),
    *_calibration("calibration", "(validation split: T fitted; test or `--data`: the run's T applied)"),
    *_calibration("test.calibration", "on the test images: the run's T applied, the honest figures"),
)

_ROW = "models[]"
MODELS_FIELDS = (
    F("schema", "string", "", "`cvkeras.models/1`"),
    F("models", "list", "", "one row per backbone (or the `--measure`d one)"),
    F(f"{_ROW}.name", "string", "", "registry name (`--model`)"),
    F(f"{_ROW}.alphas", "list[number]", "", "allowed `--alpha` widths (empty: none)"),
    F(f"{_ROW}.alpha", "number|null", "", "width the figures are for"),
    F(f"{_ROW}.input_size", "list[int]", "px", "[height, width] the figures are for"),
    F(f"{_ROW}.params", "int|null", "parameters", "backbone without head"),
    F(f"{_ROW}.gmacs", "number|null", "10^9 multiply-adds", "per image"),
    F(f"{_ROW}.float32_size_bytes", "int|null", "bytes", "weights at 4 bytes per parameter"),
    F(f"{_ROW}.int8_size_bytes", "int|null", "bytes", "weights at 1 byte per parameter"),
    F(f"{_ROW}.cpu_ms", "number", "ms", "batch-1 Keras latency here (`--measure` only)", False),
)

FINETUNE_FIELDS = (
    F("schema", "string", "", "`cvkeras.finetune/1`"),
    F("run", "string", "", "the run directory written"),
    F("epochs_run", "int", "epochs", "epochs trained, both stages"),
    F("best_epoch", "int", "epoch", "epoch of best.keras (1-based, over both stages)"),
    F("best_val_accuracy", "number", FRACTION, "its validation accuracy"),
    F("precision", "string", "", "numeric precision trained in"),
    F("replicas", "int", "", "devices trained on"),
    F("skipped", "int", "files", "unreadable files skipped (listed in skipped.txt)"),
    F("metrics", "object", "", "the run's metrics.json (`cvkeras.metrics/1`)"),
    F("metrics.*", "string|number|int|bool|null|object|list", "", "see `cvkeras.metrics/1`"),
)

CHECK_FIELDS = (
    F("schema", "string", "", "`cvkeras.check/1`"),
    F("data", "string", "", "the data argument, as given"),
    F("model", "string", "", "registry name of the backbone whose pooled features were used"),
    F("alpha", "number|null", "", "its width"),
    F("weights", "string", "", "`--weights`"),
    F("input_size", "list[int]", "px", "[height, width] the backbone saw"),
    F("seed", "int", "", "split (as finetune's) and cross-validation seed"),
    F("val_split", "number", FRACTION, "validation fraction when the data has no val split (as finetune's)"),
    F("ranked_by", "string", "", "cleanlab's ranking of label issues (`find_label_issues`)"),
    F("filter_by", "string", "", "cleanlab's filter of label issues (`find_label_issues`)"),
    F("phash_max_distance", "int", "bits", "largest pHash distance (of 64) of a near copy"),
    F("layout_min", "number", "correlation", "colour-layout correlation a near copy also needs"),
    F("cosine_min", "number|null", "cosine", "centred feature cosine a near copy also needs (null: `--weights "
                                               "none`: random features are not used)"),
    F("images", "object", "", "images per split, as finetune splits them"),
    F("images.*", "int", "images", "`train`, `val`, `test`"),
    F("classes", "object", "", "per class name"),
    F("classes.*", "object", "", "one class"),
    F("classes.*.*", "int", "images", "its images per split (`train`, `val`, `test`) and `total`"),
    F("imbalance", "number", "ratio", "largest class / smallest class (all splits)"),
    F("duplicates", "list", "", "groups of copies, leaks across splits first"),
    F("duplicates[].paths", "list[string]", "", "the copies (files, or `tfds:SPLIT:INDEX`)"),
    F("duplicates[].kind", "string", "", "`exact` (same bytes or same pixels) or `near`"),
    F("duplicates[].cross_split", "bool", "", "the copies are in more than one split (leakage)"),
    F("duplicates[].splits", "list[string]", "", "each copy's split"),
    F("duplicates[].labels", "list[string]", "", "each copy's class"),
    F("duplicates[].conflicting_labels", "bool", "", "the copies are filed under different classes"),
    F("label_issues", "list", "", "likely label errors, most likely first (cleanlab on out-of-fold "
                                   "probabilities)"),
    F("label_issues[].path", "string", "", "the image"),
    F("label_issues[].split", "string", "", "its split"),
    F("label_issues[].given", "string", "", "the class it is filed under"),
    F("label_issues[].suggested", "string", "", "the most probable other class"),
    F("label_issues[].score", "number", "probability", "label quality (low: likely wrong)"),
    F("outliers", "list", "", "photos unlike the rest of their class, most unlike first"),
    F("outliers[].path", "string", "", "the image"),
    F("outliers[].class", "string", "", "its class"),
    F("outliers[].score", "number", "", "cleanlab's kNN outlier score within the class (0..1, low: unlike)"),
    F("small_images", "list", "", "images a square model input serves badly"),
    F("small_images[].path", "string", "", "the image"),
    F("small_images[].width", "int", "px", "width"),
    F("small_images[].height", "int", "px", "height"),
    F("small_images[].why", "string", "", "`tiny` (upscaled more than 4x) or `extreme_aspect` (sides over 4:1)"),
    F("skipped", "list", "", "files finetune would skip"),
    F("skipped[].path", "string", "", "the file"),
    F("skipped[].reason", "string", "", "why"),
    F("seconds", "number", "s", "wall time of the check"),
)

"""The fields of the device commands' JSON: ``predict --json``, ``validate --json`` and ``benchmark --json``.
Part of the table behind :mod:`cvkeras.serving.schema` (standard library only).
"""

from __future__ import annotations

from cvkeras.serving.schema_fields import FRACTION, INTERVAL
from cvkeras.serving.schema_fields import Field as F

PREDICTION_FIELDS = (
    F("schema", "string", "", "`cvkeras.prediction/1` (one JSON object per line, per image)"),
    F("path", "string|null", "", "the image file as found (folders expanded)"),
    F("label", "string", "", "predicted class", False),
    F("index", "int", "", "its label index", False),
    F("score", "number|null", "probability", "its probability", False),
    F("top_k", "list", "", "the `--top-k` best classes, best first", False),
    F("top_k[].label", "string", "", "class"),
    F("top_k[].score", "number|null", "probability", "probability"),
    F("error", "string", "", "only for a file that could not be classified (then no label/score)", False),
    F("unknown", "bool", "", "like none of the training images (`unknown_score` > the model's threshold); only "
                             "for a model with an unknown detector (docs/unknown.md)", False),
    F("unknown_score", "number", "", "1 - max cosine of its features to the class prototypes; higher = less like "
                                     "the training images", False),
)


def unknown_fields(at: str) -> tuple[F, ...]:
    """The fields of an ``unknown`` block at ``at`` (the detector's figures on one model, ``validate``)."""
    return (
        F(at, "object|null", "", "the unknown detector's figures; null: the model has none (docs/unknown.md)"),
        F(f"{at}.score", "string", "", "`cos_proto`"),
        F(f"{at}.threshold", "number", "", "unknown when `unknown_score` is above it"),
        F(f"{at}.accept_target", "number", FRACTION, "the validation images' acceptance it was chosen for"),
        F(f"{at}.accept_rate", "number", FRACTION, "images accepted (not unknown), of the `n` of `accuracy`"),
        F(f"{at}.n", "int", "images", "images of `accept_rate`"),
        F(f"{at}.agreement", "number|null", FRACTION, "same accept/reject decision as the Keras model, validation"),
        F(f"{at}.n_agreement", "int", "images", "validation images of `agreement`"),
        F(f"{at}.ood", "object|null", "", "`--ood` photos of none of the classes"),
        F(f"{at}.ood.n", "int", "images", "readable --ood images"),
        F(f"{at}.ood.auroc", "number|null", FRACTION, "chance a foreign photo scores above an accepted-set image"),
        F(f"{at}.ood.false_accept", "number|null", FRACTION, "foreign photos accepted at the threshold"),
    )


VALIDATION_FIELDS = (
    F("schema", "string", "", "`cvkeras.validation/2`"),
    F("model", "string", "", "the model file, as given"),
    F("n", "int", "images", "images no training saw: the reference's validation rows and images it does not know"),
    F("accuracy", "number", FRACTION, "accuracy over those `n` images"),
    F("reference_accuracy", "number|null", FRACTION, "the reference's accuracy on the paired images"),
    F("reference_source", "string|null", "", "where `reference_accuracy` came from"),
    F("paired_accuracy", "number|null", FRACTION, "this model's accuracy on the paired images"),
    F("n_paired", "int", "images", "validation images paired with reference outputs (the drop is over these)"),
    F("accuracy_drop", "number|null", FRACTION, "reference accuracy minus this one"),
    F("accuracy_drop_ci", "list[number]|null", INTERVAL, "of the drop (paired)"),
    F("max_accuracy_drop", "number", FRACTION, "the drop gate (`--max-accuracy-drop` points / 100)"),
    F("discordant", "list[int]|null", "images", "[reference right & model wrong, reference wrong & model right]"),
    F("agreement", "number|null", FRACTION, "top-1 agreement with the reference outputs"),
    F("agreement_ci", "list[number]|null", INTERVAL, "of the agreement (Wilson)"),
    F("min_agreement", "number", FRACTION, "the agreement gate"),
    F("n_reference", "int", "images", "validation images matched with a reference output (agreement, max_abs_diff)"),
    F("held_back_agreement", "number|null", FRACTION, "top-1 agreement on images matched with held-back training "
                                                       "rows (seen in training; never gated)"),
    F("held_back_agreement_ci", "list[number]|null", INTERVAL, "its interval (Wilson)"),
    F("n_held_back", "int", "images", "images matched with held-back training rows"),
    F("n_seen", "int", "images", "images training saw (held-back, calibration, other training images): apart"),
    F("seen_accuracy", "number|null", FRACTION, "accuracy on those"),
    F("measured_on", "object", "", "figure -> the images it was measured on"),
    F("measured_on.*", "object", "", "`images` (`validation`, ...) and `n`"),
    F("measured_on.*.images", "string", "", "which images"),
    F("measured_on.*.n", "int", "images", "how many"),
    F("max_abs_diff", "number|null", "probability", "largest |p - p_ref|, both before the temperature"),
    F("mean_abs_diff", "number|null", "probability", "mean |p - p_ref|, both before the temperature"),
    F("temperature", "number", "", "the model metadata's T: the device's scores are softmax(log p / T)"),
    F("ece", "number|null", FRACTION, "expected calibration error of those scores over the `n` images (15 bins)"),
    F("nll", "number|null", "nats", "their mean -log p(true class)"),
    F("passed", "bool", "", "both gates hold"),
    F("gate_failures", "list[string]", "", "one sentence per failed gate (console wording, in points)"),
    F("per_class", "object", "", "accuracy per class present in the data"),
    F("per_class.*", "number", FRACTION, "accuracy of one class"),
    F("support", "object", "", "images per class"),
    F("support.*", "int", "images", "images of one class"),
    F("latency_ms_per_image", "number", "ms", "mean model time per image (decoding excluded)"),
    *unknown_fields("unknown"),
    F("failures", "list", "", "unreadable files"),
    F("failures[].path", "string", "", "the file"),
    F("failures[].error", "string", "", "why"),
)

_ROW = "models[]"
BENCHMARK_FIELDS = (
    F("schema", "string", "", "`cvkeras.benchmark/1`"),
    F("what", "string", "", "what is timed"),
    F("cpus", "int|null", "", "CPUs of this machine"),
    F("loadavg", "list[number]", "", "1-minute load average before and after"),
    F("warnings", "list[string]", "", "noisy figures, unresolved ratios, int8 slower than float32, models "
                                       "marked failed by export"),
    F("models", "list", "", "one row per model and predictor mode"),
    F(f"{_ROW}.model", "string", "", "file name"),
    F(f"{_ROW}.path", "string", "", "the file, as given"),
    F(f"{_ROW}.mode", "string", "", "`latency` or `throughput`"),
    F(f"{_ROW}.format", "string", "", "`onnx` or `tflite`"),
    F(f"{_ROW}.precision", "string", "", "from the model metadata"),
    F(f"{_ROW}.size_bytes", "int", "bytes", "file size"),
    F(f"{_ROW}.load_time_ms", "number", "ms", "Predictor.load"),
    F(f"{_ROW}.batch_size", "int", "images", "`--batch-size`"),
    F(f"{_ROW}.threads", "int|null", "threads", "`--threads` (null: the runtime's choice)"),
    F(f"{_ROW}.rounds", "int", "", "interleaved rounds"),
    F(f"{_ROW}.iters", "int", "", "timed calls per round and measurement"),
    F(f"{_ROW}.latency_ms_per_image_p50", "number", "ms", "single image, median over all calls"),
    F(f"{_ROW}.latency_ms_per_image_p95", "number", "ms", "single image, 95th percentile"),
    F(f"{_ROW}.latency_ms_per_image_rounds", "object", "", "single image, over round medians"),
    F(f"{_ROW}.latency_ms_per_image_rounds.min", "number", "ms", "fastest round"),
    F(f"{_ROW}.latency_ms_per_image_rounds.median", "number", "ms", "median round"),
    F(f"{_ROW}.latency_ms_per_image_rounds.max", "number", "ms", "slowest round"),
    F(f"{_ROW}.latency_ms_per_image_rounds.spread", "number|null", "ratio", "(max - min) / median"),
    F(f"{_ROW}.latency_ms_per_batch_p50", "number", "ms", "one batch call, median"),
    F(f"{_ROW}.latency_ms_per_batch_p95", "number", "ms", "one batch call, 95th percentile"),
    F(f"{_ROW}.latency_ms_per_image_in_batch", "number", "ms", "mean batch call time / batch size"),
    F(f"{_ROW}.throughput_ips", "number", "images/s", "batched, median round"),
    F(f"{_ROW}.throughput_ips_rounds", "object", "", "over rounds"),
    F(f"{_ROW}.throughput_ips_rounds.min", "number", "images/s", "slowest round"),
    F(f"{_ROW}.throughput_ips_rounds.median", "number", "images/s", "median round"),
    F(f"{_ROW}.throughput_ips_rounds.max", "number", "images/s", "fastest round"),
    F(f"{_ROW}.throughput_ips_rounds.spread", "number|null", "ratio", "(max - min) / median"),
    F("comparisons", "list", "", "single-image latency of each model against the first, per mode"),
    F("comparisons[].model", "string", "", "file name"),
    F("comparisons[].baseline", "string", "", "the first model's file name"),
    F("comparisons[].mode", "string", "", "predictor mode"),
    F("comparisons[].latency_ratio", "number", "ratio", "median of per-round ratios"),
    F("comparisons[].latency_ratio_range", "list[number]", "ratio", "[min, max] over rounds"),
    F("comparisons[].resolved", "bool", "", "the range does not straddle 1"),
)

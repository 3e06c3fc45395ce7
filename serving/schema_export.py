"""The fields of ``export_report.json`` (``cvkeras export --json``): one row per artifact, with its int8 repair.
Part of the table behind :mod:`cvkeras.serving.schema` (standard library only).
"""

from __future__ import annotations

from cvkeras.serving.schema_fields import FRACTION, INTERVAL
from cvkeras.serving.schema_fields import Field as F

_ARTIFACT = "artifacts[]"
_REPAIR = f"{_ARTIFACT}.repair"
EXPORT_FIELDS = (
    F("schema", "string", "", "`cvkeras.export_report/2`"),
    F("run", "string", "", "the run directory exported, as given on the command line"),
    F("output", "string", "", "the export folder, relative to the run directory (`export`), or absolute "
                               "when outside it"),
    F("model_name", "string", "", "registry name of the backbone"),
    F("input_size", "list[int]", "px", "[height, width]"),
    F("labels", "list[string]", "", "class names, index = output"),
    F("keras", "object", "", "the float32 Keras model on the labelled validation images"),
    F("keras.accuracy", "number", FRACTION, "its accuracy"),
    F("keras.n", "int", "images", "labelled validation images"),
    F("temperature", "number", "", "the run's T (metrics.json), in every artifact's metadata; 1: none recorded"),
    F("images", "object", "", "image counts"),
    F("images.fidelity", "int", "images", "images every artifact is run on (val + held-back training)"),
    F("images.val", "int", "images", "labelled validation images: every gate and verdict figure"),
    F("images.held_back_train", "int", "images", "training images not used for calibration: the repair's search "
                                                  "and `held_back_agreement` (never gated)"),
    F("images.calibration", "int", "images", "training images used for int8 calibration"),
    F("images.seen_train", "int", "images", "other training images (listed in reference.npz, in no figure)"),
    F("images.unreadable", "int", "images", "files that could not be decoded"),
    F("settings", "object", "", "the export options"),
    F("settings.formats", "list[string]", "", "`onnx`, `tflite`"),
    F("settings.int8", "bool", "", "`--int8`"),
    F("settings.fp16", "bool", "", "`--fp16`"),
    F("settings.opset", "int", "", "ONNX opset"),
    F("settings.io_type", "string", "", "input/output type of model_int8.tflite"),
    F("settings.calibration", "string", "", "ONNX calibration method"),
    F("settings.calibration_samples", "int", "images", "calibration tensors (mirror images included)"),
    F("settings.calibration_images", "int", "images", "calibration images"),
    F("settings.calibration_flip", "bool", "", "mirror images calibrated too"),
    F("settings.quantization", "object", "", "int8 quantization settings (ONNX Runtime's; `gptq_images` and "
                                               "`bias_correction_images` also for model_int8.tflite)"),
    F("settings.quantization.*", "string|bool|int|number|null", "", "one setting (`QuantSettings`)"),
    F("settings.max_accuracy_drop", "number", FRACTION, "the drop gate (`--max-accuracy-drop` points / 100)"),
    F("settings.min_agreement", "number", FRACTION, "the agreement gate"),
    F("settings.repair", "bool", "", "`--repair`"),
    F("settings.repair_min_agreement", "number", FRACTION, "agreement the repair's search needs on the held-back "
                                                             "training images"),
    F("settings.float_tolerance", "number", "probability", "largest max_abs_diff a float32 artifact may have"),
    F("settings.threads", "int|null", "threads", "runtime threads (null: the runtime's choice)"),
    F("passed", "bool", "", "every artifact passed"),
    F("seconds", "number", "s", "export wall time"),
    F("unverified_files", "list[string]", "", "model files in the export folder that this export did not make "
                                               "and cvkeras cannot prove it wrote: left in place, never checked"),
    F("artifacts", "list", "", "one row per artifact, in conversion order"),
    F(f"{_ARTIFACT}.name", "string", "", "artifact name (`model_int8.onnx`, ...)"),
    F(f"{_ARTIFACT}.format", "string", "", "`onnx` or `tflite`"),
    F(f"{_ARTIFACT}.precision", "string", "", "`float32`, `fp16`, `int8` or `dynamic`"),
    F(f"{_ARTIFACT}.path", "string", "", "its file, relative to the run directory (absolute when the export "
                                          "folder is outside it); a failed artifact's name has `.FAILED` before the "
                                          "suffix"),
    F(f"{_ARTIFACT}.status", "string", "", "`passed`, `failed` (missed a gate or cannot run), `error` (conversion "
                                            "failed, no file) or `skipped` (its parent failed)"),
    F(f"{_ARTIFACT}.size_bytes", "int|null", "bytes", "file size"),
    F(f"{_ARTIFACT}.paired_accuracy", "number|null", FRACTION, "accuracy on the labelled validation images"),
    F(f"{_ARTIFACT}.accuracy_drop", "number|null", FRACTION, "Keras accuracy minus this one, paired"),
    F(f"{_ARTIFACT}.accuracy_drop_ci", "list[number]|null", INTERVAL, "of the drop (Agresti-Min, paired)"),
    F(f"{_ARTIFACT}.agreement", "number|null", FRACTION, "top-1 agreement with Keras on the validation images"),
    F(f"{_ARTIFACT}.agreement_ci", "list[number]|null", INTERVAL, "of the agreement (Wilson)"),
    F(f"{_ARTIFACT}.max_abs_diff", "number|null", "probability", "largest |p - p_keras|"),
    F(f"{_ARTIFACT}.latency_ms_per_image", "number|null", "ms", "mean model time per image, batch 1"),
    F(f"{_ARTIFACT}.n_paired", "int", "images", "labelled validation images the drop is over"),
    F(f"{_ARTIFACT}.n_reference", "int", "images", "validation images the agreement is over"),
    F(f"{_ARTIFACT}.held_back_agreement", "number|null", FRACTION, "top-1 agreement on the held-back training "
                                                                    "images (seen in training; never gated)"),
    F(f"{_ARTIFACT}.held_back_agreement_ci", "list[number]|null", INTERVAL, "its interval (Wilson)"),
    F(f"{_ARTIFACT}.n_held_back", "int", "images", "held-back training images"),
    F(f"{_ARTIFACT}.ece", "number|null", FRACTION, "expected calibration error of its scores (T applied) on the "
                                                    "validation images"),
    F(f"{_ARTIFACT}.nll", "number|null", "nats", "their mean -log p(true class)"),
    F(f"{_ARTIFACT}.measured_on", "object|null", "", "figure -> the images it was measured on"),
    F(f"{_ARTIFACT}.measured_on.*", "object", "", "`images` (`validation`, ...) and `n`"),
    F(f"{_ARTIFACT}.measured_on.*.images", "string", "", "which images"),
    F(f"{_ARTIFACT}.measured_on.*.n", "int", "images", "how many"),
    F(f"{_ARTIFACT}.gate", "string", "", "the gate, in words"),
    F(f"{_ARTIFACT}.error", "string|null", "", "why it did not pass"),
    F(f"{_ARTIFACT}.float_layers", "list[string]|null", "", "layers a repair kept in float32"),
    F(f"{_REPAIR}", "object|null", "", "the int8 repair, when one ran"),
    F(f"{_REPAIR}.error", "string", "", "the repair itself failed", False),
    F(f"{_REPAIR}.passed", "bool", "", "a mix held on the held-back training images", False),
    F(f"{_REPAIR}.searched_on", "string", "", "`held_back_train`: the images the candidates were checked on", False),
    F(f"{_REPAIR}.judged_on", "object", "", "the chosen mix, judged once on the validation images", False),
    F(f"{_REPAIR}.judged_on.images", "string", "", "`validation`"),
    F(f"{_REPAIR}.judged_on.n", "int", "images", "validation images"),
    F(f"{_REPAIR}.judged_on.agreement", "number|null", FRACTION, "its agreement"),
    F(f"{_REPAIR}.judged_on.accuracy_drop", "number|null", FRACTION, "its drop"),
    F(f"{_REPAIR}.judged_on.passed", "bool", "", "it passed the gates"),
    F(f"{_REPAIR}.float_layers", "list[string]", "", "layers kept float by the passing mix", False),
    F(f"{_REPAIR}.ranking", "list", "", "the 20 worst-measured layers", False),
    F(f"{_REPAIR}.ranking[].name", "string", "", "layer"),
    F(f"{_REPAIR}.ranking[].op", "string", "", "operator"),
    F(f"{_REPAIR}.ranking[].error", "number", "see metric", "measured quantization error"),
    F(f"{_REPAIR}.ranking[].metric", "string", "", "what `error` is (noise-to-signal power, rmse/scale)"),
    F(f"{_REPAIR}.ranking[].nodes", "list[string]", "", "graph nodes kept float with it"),
    F(f"{_REPAIR}.attempts", "list", "", "every candidate tried, on the held-back training images", False),
    F(f"{_REPAIR}.attempts[].float_layers", "int", "layers", "layers in float"),
    F(f"{_REPAIR}.attempts[].agreement", "number|null", FRACTION, "its agreement on the held-back images"),
    F(f"{_REPAIR}.attempts[].accuracy_drop", "null", "", "not measured (training images)"),
    F(f"{_REPAIR}.attempts[].predicted_agreement", "number|null", FRACTION, "its agreement predicted on validation "
      "from its margin erosions on the held-back images (`cvkeras.export.flip_risk`)"),
    F(f"{_REPAIR}.attempts[].pass_chance", "number|null", FRACTION, "its predicted chance to pass the validation "
      "agreement gate"),
    F(f"{_REPAIR}.attempts[].passed", "bool", "", "held-back agreement >= `settings.repair_min_agreement` and "
      "pass_chance >= 0.95"),
    F(f"{_REPAIR}.attempts[].n_images", "int", "images", "held-back training images it was checked on"),
    F(f"{_REPAIR}.attempts[].size_bytes", "int", "bytes", "its size"),
    F(f"{_REPAIR}.attempts[].latency_ms_per_image", "number", "ms", "its latency"),
    F(f"{_REPAIR}.full_int8", "object", "", "the fully quantized model before repair", False),
    F(f"{_REPAIR}.full_int8.agreement", "number|null", FRACTION, "agreement"),
    F(f"{_REPAIR}.full_int8.agreement_ci", "list[number]|null", INTERVAL, "its interval"),
    F(f"{_REPAIR}.full_int8.accuracy_drop", "number|null", FRACTION, "drop"),
    F(f"{_REPAIR}.full_int8.accuracy_drop_ci", "list[number]|null", INTERVAL, "its interval"),
    F(f"{_REPAIR}.full_int8.size_bytes", "int|null", "bytes", "size"),
    F(f"{_REPAIR}.full_int8.latency_ms_per_image", "number|null", "ms", "latency"),
    F(f"{_REPAIR}.full_int8.error", "string|null", "", "why it failed"),
    F(f"{_REPAIR}.size_cost", "number", "ratio", "repaired size / full int8 size", False),
    F(f"{_REPAIR}.latency_cost", "number", "ratio", "repaired latency / full int8 latency", False),
)

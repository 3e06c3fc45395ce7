"""Calibrated probabilities (issue #24, point 1): the temperature fit and its figures, the temperature in the
model metadata (checked on load), the device applying it (Predictor, predict, validate) and, end to end
through the CLI, finetune -> metrics.json -> export -> predict / validate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cvkeras.serving.calibration import (
    ECE_BINS,
    TEMPERATURE_RANGE,
    apply_temperature,
    before_after,
    ece,
    fit_temperature,
    nll,
    reliability,
)
from cvkeras.serving.metadata import MetadataError, ModelMetadata, read_metadata, sidecar_path
from cvkeras.serving.schema import problems
from tests.support.cli import TINY, invoke
from tests.support.serving_models import LABELS, SIZE, make_onnx, metadata, reference_probs, write_class_folder


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sampled(n: int, sharpen: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) (the truth); the "model" reports softmax(sharpen * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, 4))
    truth = _softmax(z)
    labels = (truth.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return _softmax(sharpen * z).astype(np.float32), labels


# --- the numerical core ----------------------------------------------------------------------------------

def test_an_over_confident_model_gets_a_temperature_above_one_and_both_figures_drop():
    probs, labels = _sampled(6000, sharpen=2.5)
    t = fit_temperature(probs, labels)
    assert t == pytest.approx(2.5, rel=0.1)
    assert nll(probs, labels, t) < nll(probs, labels) - 0.1
    assert ece(apply_temperature(probs, t), labels) < 0.03 < ece(probs, labels)
    # the minimum: NLL is higher a little either side of the fitted T
    assert nll(probs, labels, t) <= min(nll(probs, labels, t * 0.97), nll(probs, labels, t * 1.03))
    under, _ = _sampled(6000, sharpen=0.5)
    assert fit_temperature(under, labels) == pytest.approx(0.5, rel=0.1)  # under-confident: sharpened


def test_a_calibrated_model_keeps_a_temperature_of_one():
    probs, labels = _sampled(20000, sharpen=1.0, seed=1)
    assert fit_temperature(probs, labels) == pytest.approx(1.0, abs=0.05)
    assert ece(probs, labels) < 0.02


def test_ece_of_a_hand_made_example():
    # top-1 confidences 0.95 (right), 0.95 (wrong), 0.62 (right), 0.58 (wrong): three bins of 15
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.62, 0.38], [0.42, 0.58]])
    labels = np.array([0, 0, 0, 0])
    diagram = reliability(probs, labels)
    assert sum(diagram["count"]) == 4 and len(diagram["count"]) == ECE_BINS
    assert diagram["count"][14] == 2 and diagram["accuracy"][14] == 0.5  # (14/15, 1]: 0.95 twice
    assert diagram["count"][9] == 1 and diagram["count"][8] == 1  # 0.62 in (9/15, 10/15], 0.58 in (8/15, 9/15]
    assert diagram["confidence"][0] is None  # an empty bin
    expected = (2 * abs(0.5 - 0.95) + 1 * abs(1 - 0.62) + 1 * abs(0 - 0.58)) / 4
    assert ece(probs, labels) == pytest.approx(expected)


def test_apply_temperature_is_softmax_of_the_logits_over_t_and_keeps_the_order():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, (50, 5))
    probs = _softmax(z).astype(np.float32)
    for t in (0.3, 1.7, 6.0):
        out = apply_temperature(probs, t)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, _softmax(z / t), atol=1e-5)
        assert (out.argmax(1) == probs.argmax(1)).all()
    assert apply_temperature(probs, 1.0) is probs  # T = 1 (every older artifact) changes nothing
    zeros = np.array([[0.0, 0.25, 0.75]], np.float32)  # an int8 output of exactly 0 stays (almost) 0
    assert apply_temperature(zeros, 2.0)[0, 0] < 1e-12


def test_the_fit_stays_in_its_range_and_needs_images():
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert fit_temperature(probs, np.array([0, 0])) == pytest.approx(TEMPERATURE_RANGE[0], rel=1e-3)  # all right
    assert fit_temperature(probs, np.array([1, 1])) == pytest.approx(TEMPERATURE_RANGE[1], rel=1e-3)  # all wrong
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0)) == 1.0
    doc = before_after(probs, np.array([0, 1]), 2.0)
    assert doc["n"] == 2 and doc["nll_after"] == pytest.approx(nll(probs, np.array([0, 1]), 2.0))


# --- metadata and the device ---------------------------------------------------------------------------

def test_metadata_carries_the_temperature_and_old_metadata_reads_as_one(tmp_path):
    meta = metadata(temperature=1.8)
    assert ModelMetadata.from_json(meta.to_json()).temperature == 1.8
    old = json.loads(meta.to_json())
    del old["temperature"]
    assert ModelMetadata.from_json(json.dumps(old)).temperature == 1.0


@pytest.mark.parametrize("bad", [0, -1.5, float("nan"), float("inf"), "2", True, None])
def test_a_bad_temperature_is_refused_on_load_naming_the_file(tmp_path, bad):
    doc = json.loads(metadata().to_json())
    doc["temperature"] = bad
    model = tmp_path / "model.tflite"
    model.write_bytes(b"")
    sidecar_path(model).write_text(json.dumps(doc))
    with pytest.raises(MetadataError, match=r"model\.tflite\.json: metadata field temperature must be a") as err:
        read_metadata(model)
    assert "\n" not in str(err.value)
    onnx_model = tmp_path / "bad.onnx"
    result = invoke("predict", _onnx_with_metadata(onnx_model, json.dumps(doc)), tmp_path / "x.png")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "bad.onnx: metadata field temperature must be a" in result.stderr


def _onnx_with_metadata(path: Path, text: str) -> Path:
    """The tiny ONNX classifier with ``text`` as its cvkeras metadata, as written (unchecked)."""
    import onnx

    make_onnx(path)
    proto = onnx.load(str(path))
    next(p for p in proto.metadata_props if p.key == "cvkeras").value = text
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def hot(tmp_path_factory) -> tuple[Path, Path, list]:
    """The tiny ONNX classifier with temperature 2.5, a labelled folder and its items."""
    base = tmp_path_factory.mktemp("calibrated")
    model = make_onnx(base / "model.onnx", metadata(temperature=2.5, reference_accuracy=0.75))
    items = write_class_folder(base / "data", per_class=4, wrong=1)
    return model, base / "data", items


def test_predictor_returns_calibrated_scores_and_the_raw_ones_on_request(hot):
    from cvkeras.serving import Predictor
    from cvkeras.serving.preprocess import load_resized

    model, _, items = hot
    p = Predictor.load(model, threads=1)
    assert p.temperature == 2.5
    x = np.stack([load_resized(path, SIZE, p.jpeg_scaling) for path, _ in items]).astype(np.float32)
    raw = reference_probs(x)
    np.testing.assert_allclose(p.predict_batch(x, raw=True), raw, atol=1e-5)
    np.testing.assert_allclose(p.predict_batch(x), _softmax(np.log(raw) / 2.5), atol=1e-5)
    one = p.predict(items[0][0], top_k=4)  # the single-image path
    many = p.predict([path for path, _ in items], top_k=4)
    want = _softmax(np.log(raw) / 2.5)
    assert dict(one.top_k) == pytest.approx(dict(zip(LABELS, want[0].tolist(), strict=True)), abs=1e-5)
    assert [r.index for r in many] == raw.argmax(1).tolist()  # argmax unchanged
    assert [r.score for r in many] == pytest.approx(want.max(1).tolist(), abs=1e-5)


def test_validate_compares_raw_with_raw_and_reports_the_calibrated_ece(hot, tmp_path):
    from cvkeras.serving import Predictor
    from cvkeras.serving.preprocess import load_resized

    model, data, items = hot
    scaling = Predictor.load(model).jpeg_scaling
    raw = reference_probs(np.stack([load_resized(p, SIZE, scaling) for p, _ in items]).astype(np.float32))
    labels = np.array([y for _, y in items])
    ref = tmp_path / "ref"
    ref.mkdir()
    keys = np.array([f"{Path(p).parent.name}/{Path(p).name}" for p, _ in items])
    np.savez(ref / "reference.npz", paths=keys, labels=labels, probs=raw, accuracy=np.float64(0.75))
    result = invoke("validate", model, "--data", data, "--reference", ref, "--json")
    doc = json.loads(result.stdout)
    assert problems(doc, "validation") == []
    assert doc["agreement"] == 1.0 and doc["max_abs_diff"] < 1e-5  # like with like: both raw
    assert doc["temperature"] == 2.5
    assert doc["ece"] == pytest.approx(ece(_softmax(np.log(raw) / 2.5), labels), abs=1e-5)
    assert doc["nll"] == pytest.approx(nll(raw, labels, 2.5), abs=1e-5)
    assert doc["measured_on"]["ece"] == {"images": "validation (the temperature was fitted on the validation split)",
                                         "n": len(items)}
    table = invoke("validate", model, "--data", data, "--reference", ref)
    assert "ECE" in table.stdout and "temperature 2.5" in table.stdout


# --- the run: RunDir and report.html ---------------------------------------------------------------------

def test_rundir_reads_the_temperature_and_refuses_a_bad_one(tmp_path):
    from cvkeras.run.rundir import RunDir
    from cvkeras.serving.errors import RunDirError

    rd = RunDir(tmp_path)
    assert rd.temperature() is None  # a run from before calibration
    rd.write_metrics({"n": 3, "calibration": {"temperature": 1.4}})
    assert rd.temperature() == 1.4
    rd.write_metrics({"n": 3, "calibration": {"temperature": -2}})
    with pytest.raises(RunDirError, match=r"metrics\.json: calibration\.temperature must be a finite number > 0"):
        rd.temperature()


def test_the_block_the_console_line_and_the_report_section():
    from cvkeras.analysis.calibration import calibration_block, report_parts, summary_line

    probs, labels = _sampled(400, sharpen=2.0, seed=5)
    val = calibration_block(probs[:200], labels[:200], "val")
    test = calibration_block(probs[200:], labels[200:], "test", val["temperature"])
    assert val["fitted"] and not test["fitted"] and test["temperature"] == val["temperature"] > 1
    assert calibration_block(probs, labels, "test", None) is None  # nothing recorded: nothing applied
    metrics = {"schema": "cvkeras.metrics/1", "calibration": val, "test": {"calibration": test}}
    assert not [p for p in problems(metrics, "metrics") if p.startswith(("calibration", "test.calibration"))]
    line = summary_line(metrics)
    assert "\n" not in line and line.count("->") == 4 and "fitted on val" in line and "not fitted" in line
    text, header, rows, png = report_parts(metrics)
    assert len(rows) == 2 and header[2] == "ECE before" and png.startswith(b"\x89PNG")
    assert "no temperature" in report_parts({})[0].lower()


# --- end to end through the CLI --------------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_export_predict_validate_carry_the_temperature(tmp_path):
    import onnx
    import onnxruntime as ort

    from cvkeras.serving.preprocess import load_image, to_model_input
    from tests.support.shapes import write_shapes

    data = write_shapes(tmp_path / "shapes", per_class=16)
    run = tmp_path / "run"
    tiny = [*TINY, "--epochs", "1", "--fine-tune-epochs", "0", "--steps-per-epoch", "2", "--test-split", "0.25"]
    trained = invoke("finetune", data, *tiny, "--output", run)
    assert trained.exit_code == 0, trained.output[-2000:]
    assert "calibration  temperature" in trained.stdout and "(fitted on val)" in trained.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    cal, test = metrics["calibration"], metrics["test"]["calibration"]
    assert problems(metrics, "metrics") == []
    assert cal["fitted"] and not test["fitted"] and cal["n"] == metrics["n"] and test["n"] == metrics["test"]["n"]
    t = cal["temperature"]
    assert TEMPERATURE_RANGE[0] <= t <= TEMPERATURE_RANGE[1] and test["temperature"] == t
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9  # fitted on these images: never worse there
    assert 'id="calibration"' in (run / "report.html").read_text()

    exported = invoke("export", run, "--threads", "1", "--json")
    assert exported.exit_code == 0, exported.output[-3000:]
    report = json.loads(exported.stdout)
    assert problems(report, "export_report") == [] and report["temperature"] == t
    assert all(a["ece"] is not None for a in report["artifacts"])
    onnx_meta = json.loads(next(p.value for p in onnx.load(str(run / "export" / "model.onnx")).metadata_props
                                if p.key == "cvkeras"))
    assert onnx_meta["temperature"] == t
    assert json.loads((run / "export" / "model.tflite.json").read_text())["temperature"] == t

    image = sorted((data / "circle").glob("*.png"))[0]
    predicted = invoke("predict", run / "export" / "model.onnx", image, "--json", "--top-k", "3")
    assert predicted.exit_code == 0, predicted.output
    scores = {d["label"]: d["score"] for d in json.loads(predicted.stdout)["top_k"]}
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    raw = session.run(None, {session.get_inputs()[0].name: to_model_input([load_image(image)], (32, 32))})[0][0]
    by_hand = _softmax(np.log(np.maximum(raw.astype(np.float64), 1e-30)) / t)
    classes = (run / "labels.txt").read_text().split()
    assert scores == pytest.approx({c: float(by_hand[i]) for i, c in enumerate(classes)}, abs=1e-5)

    for model in ("model.onnx", "model.tflite"):
        validated = invoke("validate", run / "export" / model, "--json")
        assert validated.exit_code == 0, validated.output[-2000:]
        doc = json.loads(validated.stdout)
        assert problems(doc, "validation") == [] and doc["temperature"] == t
        assert 0.0 <= doc["ece"] <= 1.0 and doc["max_abs_diff"] < 1e-4  # raw against the raw Keras reference
        assert doc["ece"] == pytest.approx(cal["ece_after"], abs=0.02)  # the device's ECE is the run's

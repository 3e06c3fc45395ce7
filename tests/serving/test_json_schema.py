"""Every command's JSON against its documented schema (``serving/schema.py`` -> ``docs/json.md``, issue #16.7).

The doc is generated from the schema and compared here, and the real output of each command is checked
field by field (documented, typed, required present), so doc, code and output cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cvkeras.serving.schema import SCHEMAS, markdown, problems
from tests.support.cli import invoke
from tests.support.serving_models import make_onnx, metadata, write_class_folder

ROOT = Path(__file__).resolve().parents[2]


def _ok(doc: dict, kind: str) -> dict:
    assert problems(doc, kind) == [], json.dumps(doc)[:2000]
    return doc


def test_docs_json_md_is_generated_from_the_schema():
    doc = (ROOT / "docs" / "json.md").read_text()
    assert doc == markdown(), "docs/json.md is stale: run `python -m cvkeras.serving.schema > docs/json.md`"
    for schema in SCHEMAS.values():
        assert f"## `{schema.id}`" in doc
    assert "docs/json.md" in (ROOT / "README.md").read_text()


def test_problems_names_undocumented_mistyped_and_missing_fields():
    good = {"schema": "cvkeras.prediction/1", "path": "a.jpg", "label": "red", "index": 0, "score": 0.9,
            "top_k": [{"label": "red", "score": 0.9}]}
    assert problems(good, "prediction") == []
    assert problems({"schema": "cvkeras.prediction/1", "path": "a.jpg", "error": "unreadable"}, "prediction") == []
    bad = {**good, "schema": "cvkeras.prediction/0", "index": "0", "extra": 1,
           "top_k": [{"label": "red", "score": 0.9}, {"label": "blue"}]}
    assert problems(bad, "prediction") == [
        "schema is 'cvkeras.prediction/0', not 'cvkeras.prediction/1'", "index: str '0' is not int",
        "extra: not documented", "top_k[].score: missing"]
    # a per-class map: any class name (dots included), the most specific documented path applies
    metrics = {"per_class": {"a.b": {"precision": 1.0, "recall": 0.5, "f1": "x", "support": 2}}}
    assert "per_class.a.b.f1: str 'x' is not number" in problems(metrics, "metrics")


@pytest.fixture()
def onnx_model(tmp_path) -> Path:
    return make_onnx(tmp_path / "model.onnx", metadata(reference_accuracy=0.75))


def test_predict_validate_benchmark_json_match_the_schema(onnx_model, tmp_path):
    data = tmp_path / "data"
    items = write_class_folder(data, per_class=3, wrong=1)  # accuracy 8/12
    predicted = invoke("predict", onnx_model, items[0][0], tmp_path / "missing.png", "--json", "--top-k", "2")
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(lines) == 2 and "error" in lines[1]
    for line in lines:
        _ok(line, "prediction")

    validated = invoke("validate", onnx_model, "--data", data, "--json", "--max-accuracy-drop", "9")
    report = _ok(json.loads(validated.stdout), "validation")
    # one unit: the drop, its gate and the accuracies are all fractions
    assert report["accuracy_drop"] == pytest.approx(0.75 - 8 / 12) and report["max_accuracy_drop"] == 0.09
    assert validated.exit_code == 0

    bench = invoke("benchmark", onnx_model, "--json", "--iters", "1", "--rounds", "2", "--warmup", "0",
                 "--batch-size", "2", "--threads", "1")
    doc = _ok(json.loads(bench.stdout), "benchmark")
    assert doc["models"][0]["size_bytes"] == onnx_model.stat().st_size


def test_models_json_matches_the_schema():
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    doc = _ok(json.loads(result.stdout), "models")
    row = next(r for r in doc["models"] if r["name"] == "mobilenet_v2")
    assert row["float32_size_bytes"] == 4 * row["params"] and 0.35 in row["alphas"]


@pytest.mark.slow
def test_finetune_evaluate_export_json_match_the_schema(tmp_path):
    """finetune, evaluate (own split and --data) and export --json, and the files they write."""
    from tests.support.shapes import write_shapes

    data = write_shapes(tmp_path / "shapes")
    run = tmp_path / "run"
    # MobileNet alpha 0.25: the fastest backbone to train
    tiny = ["--model", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "32",
            "--batch-size", "8", "--epochs", "1", "--fine-tune-epochs", "0", "--steps-per-epoch", "2"]
    trained = invoke("finetune", data, *tiny, "--output", run, "--json")
    assert trained.exit_code == 0, trained.output
    doc = _ok(json.loads(trained.stdout), "finetune")  # stdout holds the JSON document only
    assert Path(doc["run"]) == run and _ok(doc["metrics"], "metrics")["split"] == "val"
    _ok(json.loads((run / "metrics.json").read_text()), "metrics")

    evaluated = invoke("evaluate", run, "--json")
    assert _ok(json.loads(evaluated.stdout), "metrics")["data"] == "run"
    other = invoke("evaluate", run, "--data", data, "--json")
    assert other.exit_code == 0, other.output
    on_data = _ok(json.loads(other.stdout), "metrics")
    assert on_data["split"] is None and on_data["data"] == str(data)  # says which data, not "val"
    assert json.loads((run / "metrics-data.json").read_text()) == on_data

    exported = invoke("export", run, "--format", "onnx", "--json", "--threads", "1")
    assert exported.exit_code == 0, exported.output
    report = _ok(json.loads(exported.stdout), "export_report")
    assert report == json.loads((run / "export" / "export_report.json").read_text())
    assert report["output"] == "export" and report["artifacts"][0]["path"] == "export/model.onnx"
    assert report["settings"]["max_accuracy_drop"] == 0.01  # the default 1 point, as a fraction
    assert np.isclose(report["artifacts"][0]["accuracy_drop"], 0.0)


def test_an_export_report_from_before_the_schema_reads_in_current_names_and_units():
    """report.html of a run exported by cvkeras 0.1 (drop in points, old names) shows the same figures."""
    from cvkeras.analysis.report import fmt_value
    from cvkeras.serving.schema import schema_id, upgrade_export_report

    old = {"passed": True, "artifacts": [{"name": "model_int8.onnx", "status": "passed", "accuracy": 0.9,
                                          "accuracy_drop": 1.25, "accuracy_drop_ci": [-0.5, 3.0], "n": 80,
                                          "file_size_bytes": 1000, "latency_ms": 2.5, "agreement": 0.99}]}
    new = upgrade_export_report(old)
    art = new["artifacts"][0]
    assert new["schema"] == schema_id("export_report")
    assert art["accuracy_drop"] == 0.0125 and art["accuracy_drop_ci"] == [-0.005, 0.03]
    assert (art["paired_accuracy"], art["n_paired"], art["size_bytes"], art["latency_ms_per_image"]) == (
        0.9, 80, 1000, 2.5)
    assert fmt_value(art["accuracy_drop"], "accuracy_drop") == "+1.25 points"
    assert upgrade_export_report(new) is new  # a current document is left as it is

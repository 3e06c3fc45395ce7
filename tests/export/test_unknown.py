"""Issue #24 points 2-3: "unknown" on the device, driven through the CLI (export, predict, validate).

The tiny run (three classes of coloured shapes, random-init backbone) and a generated foreign set
(checkerboards, text-like dashes, colour noise). A random-init backbone separates foreign images weakly
(its pooled features all point nearly the same way), so the detector is exported at ``--unknown-accept 0.5``:
half the validation images accepted, and the foreign images must then be mostly rejected.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cvkeras.cli.export import unknown_drift
from cvkeras.serving.schema import problems
from cvkeras.serving.unknown import MIN_DECISION_AGREEMENT
from tests.support.cli import invoke, json_lines

pytestmark = pytest.mark.slow




@pytest.fixture(scope="module")
def exported(export_tiny_run, foreign, tmp_path_factory):
    """`cvkeras export RUN --format onnx --int8 --unknown-accept 0.5 --ood FOREIGN --json`, once."""
    out = tmp_path_factory.mktemp("unknown_out") / "export"
    result = invoke("export", export_tiny_run, "--format", "onnx", "--int8", "--unknown-accept", "0.5",
                    "--ood", foreign, "--output", out, "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out, result.stderr


def _val_files(run: Path) -> list[str]:
    return [p for p, _ in json.loads((run / "split.json").read_text())["val"]]


def test_export_chooses_the_threshold_on_validation_and_reports_foreign_figures(exported):
    report, out, stderr = exported
    assert problems(report, "export_report") == []
    u = report["unknown"]
    assert u["score"] == "cos_proto" and u["accept_target"] == 0.5
    assert u["chosen_on"] == {"images": "validation", "n": report["images"]["val"]}
    assert u["prototypes_from"]["n"] == report["images"]["held_back_train"] > 0
    assert abs(u["keras_accept_rate"] - 0.5) <= 0.1
    assert u["ood"]["n"] == 24 and u["ood"]["auroc"] > 0.8 and u["ood"]["false_accept"] < 0.3
    for a in report["artifacts"]:  # each artifact measured through serving, int8 against Keras's decisions
        assert a["unknown"]["threshold"] == u["threshold"]
        assert a["unknown"]["n_agreement"] == report["images"]["val"]
        assert a["unknown"]["ood"]["n"] == 24
    assert report["artifacts"][0]["unknown"]["agreement"] == 1.0  # float32 ONNX: Keras's own decisions
    for a in report["artifacts"]:  # a file whose decisions drift from the float model's is named, only it
        drift = a["unknown"]["agreement"] < MIN_DECISION_AGREEMENT and a["status"] == "passed"
        assert (f"warning: {a['name']}: its unknown/known answers agree" in stderr) == drift, stderr


def test_unknown_drift_warns_below_the_goal_only() -> None:
    row = SimpleNamespace(name="model_int8.onnx", ok=True, unknown={"agreement": 0.9835, "n_agreement": 300})
    (line,) = unknown_drift([row, SimpleNamespace(name="model.onnx", ok=True, unknown={"agreement": 1.0}),
                             SimpleNamespace(name="x.onnx", ok=True, unknown=None),
                             SimpleNamespace(name="refused.onnx", ok=False, unknown={"agreement": 0.5})])
    assert line.startswith("warning: model_int8.onnx: its unknown/known answers agree with the Keras model's on "
                           "98.35 % of 300 validation images (under 99 %)")
    assert unknown_drift([SimpleNamespace(name="a", ok=True, unknown={"agreement": MIN_DECISION_AGREEMENT})]) == []


def test_predict_says_unknown_for_foreign_images_and_validate_reports_the_same_figures(exported, foreign,
                                                                                       export_tiny_run):
    report, out, _ = exported
    res = invoke("predict", out / "model_int8.onnx", foreign, "--json")
    assert res.exit_code == 0, res.output
    rows = json_lines(res.stdout)
    assert len(rows) == 24 and all(isinstance(r["unknown"], bool) for r in rows)
    assert all(problems(r, "prediction") == [] for r in rows)
    assert sum(r["unknown"] for r in rows) >= 18  # mostly unknown
    assert all((r["unknown_score"] > report["unknown"]["threshold"]) == r["unknown"] for r in rows)
    val = invoke("predict", out / "model.onnx", *_val_files(export_tiny_run), "--json")
    accepted = [not r["unknown"] for r in json_lines(val.stdout)]
    assert abs(np.mean(accepted) - report["unknown"]["keras_accept_rate"]) < 1e-9  # float32 = Keras decisions
    table = invoke("predict", out / "model.onnx", foreign, "--top-k", "1")
    assert "unknown" in table.stdout
    v = invoke("validate", out / "model.onnx", "--run", export_tiny_run, "--ood", foreign, "--json")
    assert v.exit_code == 0, v.output
    assert problems(json.loads(v.stdout), "validation") == []
    got, want = json.loads(v.stdout)["unknown"], report["artifacts"][0]["unknown"]
    assert got["accept_rate"] == want["accept_rate"] and got["ood"] == pytest.approx(want["ood"])


def _with_metadata(src: Path, dst: Path, change) -> Path:
    import onnx

    proto = onnx.load(str(src))
    for p in proto.metadata_props:
        if p.key == "cvkeras":
            doc = json.loads(p.value)
            change(doc, proto)
            p.value = json.dumps(doc)
    onnx.save(proto, str(dst))
    return dst


def test_broken_detector_metadata_or_missing_features_output_is_one_line_error(exported, foreign, tmp_path):
    _, out, _ = exported

    def wrong_shape(doc, proto):
        doc["unknown"]["shape"] = [2, doc["unknown"]["shape"][1]]

    def drop_output(doc, proto):
        del proto.graph.output[1]

    for change, needle in ((wrong_shape, "prototypes for 3 labels"), (drop_output, "'features' output")):
        bad = _with_metadata(out / "model.onnx", tmp_path / f"{change.__name__}.onnx", change)
        res = invoke("predict", bad, foreign)
        assert res.exit_code == 2, res.output
        assert res.stderr.count("\n") == 1 and needle in res.stderr and "re-export" in res.stderr
        assert "Traceback" not in res.output


def test_unknown_off_gives_no_unknown_fields(export_tiny_run, foreign, tmp_path):
    out = tmp_path / "export"
    res = invoke("export", export_tiny_run, "--format", "onnx", "--unknown", "off", "--output", out, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["unknown"] is None
    rows = json_lines(invoke("predict", out / "model.onnx", foreign, "--json").stdout)
    assert rows and all("unknown" not in r and "unknown_score" not in r for r in rows)
    v = invoke("validate", out / "model.onnx", "--run", export_tiny_run, "--ood", foreign)
    assert v.exit_code == 2 and "no unknown detector" in v.stderr


@pytest.mark.parametrize("args, needle", [
    (["--unknown-accept", "1.5"], "--unknown-accept"),
    (["--unknown", "maybe"], "--unknown must be on or off"),
    (["--ood", "/nonexistent/photos"], "--ood needs a folder"),
])
def test_bad_unknown_options_exit_2_before_reading_the_run(tmp_path, args, needle):
    res = invoke("export", tmp_path / "no_run", *args)
    assert res.exit_code == 2 and needle in res.stderr, res.output


def test_export_report_without_ood_has_no_ood_figures(export_tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(export_tiny_run, run, ignore=shutil.ignore_patterns("export"))
    res = invoke("export", run, "--format", "onnx", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["unknown"]["ood"] is None and doc["unknown"]["accept_target"] == 0.95
    assert doc["artifacts"][0]["unknown"]["ood"] is None

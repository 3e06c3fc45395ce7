"""Issue #24's "unknown" for TFLite artifacts, driven through the CLI (export, predict, validate).

The same tiny run and generated foreign set as tests/export/test_unknown.py (detector at
``--unknown-accept 0.5``, see there why). One full-int8 TFLite export serves the module: the int8 path
(GPTQ, bias correction, uint8 input, compaction) is the slow one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cvkeras.serving.metadata import sidecar_path
from cvkeras.serving.schema import problems
from tests.support.cli import invoke, json_lines

pytestmark = pytest.mark.slow
pytest.importorskip("ai_edge_litert")

TFLITE = ("model.tflite", "model_int8.tflite", "model_fp16.tflite", "model_dynamic.tflite")



def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path))


def _outputs(path: Path) -> list[dict]:
    return _interpreter(path).get_output_details()



@pytest.fixture(scope="module")
def exported(export_tiny_run, foreign, tmp_path_factory):
    """`cvkeras export RUN --format tflite --int8 --fp16 --unknown-accept 0.5 --ood FOREIGN --json`, once."""
    out = tmp_path_factory.mktemp("unknown_tflite") / "export"
    result = invoke("export", export_tiny_run, "--format", "tflite", "--int8", "--fp16", "--unknown-accept", "0.5",
                    "--ood", foreign, "--output", out, "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out, result.stderr


def test_every_tflite_file_has_a_named_float_features_output_after_its_probabilities(exported):
    report, out, _ = exported
    dim = report["unknown"]["features"]
    for name in TFLITE:
        probs, feats = _outputs(out / name)  # exactly two outputs
        assert probs["shape"].tolist() == [1, 3] and np.dtype(probs["dtype"]) == np.float32
        assert feats["name"] == "features" and feats["shape"].tolist() == [1, dim], name
        assert np.dtype(feats["dtype"]) == np.float32  # the float head's input, also in the full-int8 file
        if name == "model_int8.tflite":  # full integer with camera pixels in
            assert np.dtype(_interpreter(out / name).get_input_details()[0]["dtype"]) == np.uint8
        meta = json.loads(sidecar_path(out / name).read_text())
        assert meta["unknown"]["threshold"] == report["unknown"]["threshold"] and meta["unknown"]["shape"][1] == dim


def test_export_reports_acceptance_and_agreement_of_each_tflite_artifact(exported):
    report, out, _ = exported
    assert problems(report, "export_report") == []
    u = report["unknown"]
    assert u["formats"] == ["tflite"] and u["accept_target"] == 0.5
    rows = {a["name"]: a for a in report["artifacts"]}
    assert sorted(rows) == sorted(TFLITE) and all(a["status"] == "passed" for a in rows.values())
    for a in rows.values():
        assert a["unknown"]["threshold"] == u["threshold"]
        assert a["unknown"]["n_agreement"] == report["images"]["val"] and a["unknown"]["agreement"] >= 0.8
        assert a["unknown"]["ood"]["n"] == 24 and a["unknown"]["ood"]["auroc"] > 0.7
    assert rows["model.tflite"]["unknown"]["agreement"] == 1.0  # float32: Keras's own decisions
    assert rows["model.tflite"]["unknown"]["accept_rate"] == pytest.approx(u["keras_accept_rate"])


def test_predict_says_unknown_from_tflite_and_validate_reports_the_export_figures(exported, foreign,
                                                                                  export_tiny_run):
    report, out, _ = exported
    res = invoke("predict", out / "model_int8.tflite", foreign, "--json")
    assert res.exit_code == 0, res.output
    rows = json_lines(res.stdout)
    assert len(rows) == 24 and all(problems(r, "prediction") == [] for r in rows)
    assert sum(r["unknown"] for r in rows) >= 18  # mostly unknown
    assert all((r["unknown_score"] > report["unknown"]["threshold"]) == r["unknown"] for r in rows)
    one = json_lines(invoke("predict", out / "model_int8.tflite", rows[0]["path"], "--json").stdout)[0]
    assert one["unknown_score"] == pytest.approx(rows[0]["unknown_score"], abs=1e-6)  # uint8 single-image path
    v = invoke("validate", out / "model_int8.tflite", "--run", export_tiny_run, "--ood", foreign, "--json")
    assert v.exit_code == 0, v.output
    doc = json.loads(v.stdout)
    assert problems(doc, "validation") == []
    want = next(a for a in report["artifacts"] if a["name"] == "model_int8.tflite")["unknown"]
    assert doc["unknown"]["accept_rate"] == want["accept_rate"] and doc["unknown"]["agreement"] == want["agreement"]
    assert doc["unknown"]["ood"] == pytest.approx(want["ood"])


def _without_features(src: Path, dst: Path) -> Path:
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(src.read_bytes()))
    model.subgraphs[0].outputs = model.subgraphs[0].outputs[:1]
    dst.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    shutil.copyfile(sidecar_path(src), sidecar_path(dst))
    return dst


def _with_sidecar(src: Path, dst: Path, change) -> Path:
    shutil.copyfile(src, dst)
    doc = json.loads(sidecar_path(src).read_text())
    change(doc)
    sidecar_path(dst).write_text(json.dumps(doc))
    return dst


def test_broken_detector_sidecar_or_missing_features_output_is_one_line_error(exported, foreign, tmp_path):
    _, out, _ = exported

    def wrong_shape(doc):
        doc["unknown"]["shape"] = [2, doc["unknown"]["shape"][1]]

    def no_prototypes(doc):
        doc["unknown"]["prototypes"] = "AAAA"

    cases = [(_with_sidecar(out / "model_int8.tflite", tmp_path / "shape.tflite", wrong_shape), "prototypes for 3"),
             (_with_sidecar(out / "model.tflite", tmp_path / "protos.tflite", no_prototypes), "values, not 3 x"),
             (_without_features(out / "model_int8.tflite", tmp_path / "nofeat.tflite"), "'features' output")]
    for bad, needle in cases:
        res = invoke("predict", bad, foreign)
        assert res.exit_code == 2, res.output
        assert res.stderr.count("\n") == 1 and needle in res.stderr and "re-export" in res.stderr, res.stderr
        assert str(bad.name) in res.stderr and "Traceback" not in res.output


def _int8_features_output(src: Path, dst: Path) -> Path:
    """A copy of full-int8 ``src`` whose features output is the int8 input of the DEQUANTIZE feeding the head."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(src.read_bytes()))
    sub = model.subgraphs[0]
    feats = int(sub.outputs[1])
    op = next(o for o in sub.operators if feats in list(o.outputs))
    assert model.operatorCodes[op.opcodeIndex].builtinCode == 6  # DEQUANTIZE
    sub.outputs = [int(sub.outputs[0]), int(op.inputs[0])]
    sub.tensors[int(op.inputs[0])].name, sub.tensors[feats].name = b"features", None
    dst.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    shutil.copyfile(sidecar_path(src), sidecar_path(dst))
    return dst


def test_runner_dequantizes_an_int8_features_output_to_the_same_scores(exported, foreign, tmp_path):
    """The design choice of docs/unknown.md: an int8 features output, dequantized by the runner with its
    scale and zero point, scores exactly as the float one the export writes."""
    from cvkeras.serving import Predictor

    _, out, _ = exported
    q = _int8_features_output(out / "model_int8.tflite", tmp_path / "q.tflite")
    assert np.dtype(_outputs(q)[1]["dtype"]) == np.int8
    files = sorted(str(p) for p in foreign.iterdir())
    want = [r.unknown_score for r in Predictor.load(out / "model_int8.tflite").predict(files)]
    got = [r.unknown_score for r in Predictor.load(q).predict(files)]
    assert got == want


def test_unknown_off_gives_single_output_tflite_without_unknown_fields(export_tiny_run, foreign, tmp_path):
    out = tmp_path / "export"
    res = invoke("export", export_tiny_run, "--format", "tflite", "--unknown", "off", "--output", out, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["unknown"] is None
    assert len(_outputs(out / "model.tflite")) == 1
    assert json.loads(sidecar_path(out / "model.tflite").read_text())["unknown"] is None
    rows = json_lines(invoke("predict", out / "model.tflite", foreign, "--json").stdout)
    assert rows and all("unknown" not in r and "unknown_score" not in r for r in rows)

"""``predict | validate | benchmark`` commands, registered on a local Typer app as cvkeras.cli does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from cvkeras.serving import cli
from cvkeras.serving.preprocess import load_resized
from tests.support.serving_models import LABELS, SIZE, make_onnx, metadata, photo, reference_probs, write_class_folder

app = typer.Typer()
app.command()(cli.predict)
app.command()(cli.validate)
app.command()(cli.benchmark)
runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_onnx(tmp_path_factory.mktemp("cli") / "export" / "model.onnx",
                     meta=metadata(reference_accuracy=0.75))


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(11)
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    paths = [folder / "a.png", folder / "sub" / "b.jpg", folder / "c.bmp"]
    for i, p in enumerate(paths):
        Image.fromarray(photo(i, rng)).save(p)
    (folder / "notes.txt").write_text("not an image, not picked up from folders")
    return folder, paths


def _lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_predict_json_lines_match_numpy(model, images):
    folder, paths = images
    result = runner.invoke(app, ["predict", str(model), str(folder), "--json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    rows = _lines(result)
    assert [r["path"] for r in rows] == sorted(str(p) for p in paths)
    for row in rows:
        p = reference_probs(load_resized(row["path"], SIZE)[None].astype(np.float32))[0]
        assert row["label"] == LABELS[int(p.argmax())] and row["score"] == pytest.approx(p.max(), abs=1e-5)
        assert len(row["top_k"]) == 2 and row["top_k"][0]["label"] == row["label"]


def test_predict_and_validate_keep_file_names_that_are_not_utf8(model, images, tmp_path):
    """Pillow reads them on the device (only training cannot): a folder must not silently drop them."""
    import os
    import shutil

    folder, paths = images
    odd = folder / os.fsdecode(b"odd\xff.png")
    shutil.copy(paths[0], odd)
    result = runner.invoke(app, ["predict", str(model), str(folder), "--json"])
    assert result.exit_code == 0, result.output
    rows = _lines(result)
    assert len(rows) == 4 and str(odd) in [r["path"] for r in rows]
    assert next(r for r in rows if r["path"] == str(odd))["label"] == next(
        r for r in rows if r["path"] == str(paths[0]))["label"]
    data = tmp_path / "val"
    write_class_folder(data, 2)
    shutil.copy(paths[0], data / LABELS[0] / os.fsdecode(b"odd\xff.png"))
    result = runner.invoke(app, ["validate", str(model), "--data", str(data), "--json", "--max-accuracy-drop", "100"])
    assert json.loads(result.stdout)["n"] == 2 * len(LABELS) + 1, result.output


def test_predict_table_and_failures_exit_1(model, images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths keep table cells on one line
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    args = ["predict", str(model), "imgs/a.png", "corrupt.jpg", "missing.png", "imgs/c.bmp"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 1
    rows = _lines(result)
    assert [("error" in r) for r in rows] == [False, True, True, False]
    assert "corrupt.jpg" in rows[1]["error"] and "file not found" in rows[2]["error"]
    table = runner.invoke(app, args)
    assert table.exit_code == 1
    lines = table.stdout.splitlines()
    assert any("imgs/a.png" in line and " red " in line for line in lines)
    assert any("corrupt.jpg" in line and " error " in line for line in lines)
    assert "2 of 4 file(s) could not be classified" in table.stderr


@pytest.mark.parametrize("content", [b"garbage" * 30, None])
def test_bad_model_is_one_error_line_exit_2(model, images, tmp_path, content):
    path = tmp_path / "bad.onnx"
    if content is None:  # truncated copy of a good model
        data = model.read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    result = runner.invoke(app, ["predict", str(path), str(images[1][0])])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: not a loadable ONNX model")
    assert "Traceback" not in result.output


def test_validate_uses_the_reference_next_to_the_model_and_gates_on_drop(model, tmp_path):
    data = tmp_path / "data"
    items = write_class_folder(data, per_class=3, wrong=1)  # accuracy 8/12
    x = np.stack([load_resized(p, SIZE) for p, _ in items]).astype(np.float32)
    probs = reference_probs(x).astype(np.float32)
    labels = np.array([y for _, y in items])
    keys = np.array([f"{p.parent.name}/{p.name}" for p, _ in items])
    ref = probs.copy()
    ref[[2, 5, 8, 11]] = np.eye(4, dtype=np.float32)[labels[[2, 5, 8, 11]]]  # "Keras" got those right
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    np.savez(ref_dir / "reference.npz", paths=keys, labels=labels, probs=ref)

    base = ["validate", str(model), "--data", str(data)]
    ok = runner.invoke(app, [*base, "--json", "--max-accuracy-drop", "9"])
    assert ok.exit_code == 0, ok.output  # no reference.npz next to the model: metadata's 0.75
    report = json.loads(ok.stdout)
    assert report["accuracy"] == pytest.approx(8 / 12) and report["reference_accuracy"] == 0.75
    assert report["accuracy_drop"] == pytest.approx(0.75 - 8 / 12)  # a fraction in the JSON (docs/json.md)
    assert report["max_accuracy_drop"] == pytest.approx(0.09) and report["schema"] == "cvkeras.validation/2"
    assert report["passed"] is True and report["n_reference"] == 0
    assert runner.invoke(app, [*base, "--max-accuracy-drop", "8"]).exit_code == 1  # 8.3 points > 8
    assert runner.invoke(app, base).exit_code == 1  # default threshold: 1 point

    strict = runner.invoke(app, ["validate", str(model), "--data", str(data), "--reference", str(ref_dir),
                                 "--json", "--max-accuracy-drop", "30"])
    report = json.loads(strict.stdout)
    assert report["reference_accuracy"] == 1.0 and report["agreement"] == pytest.approx(8 / 12)
    assert report["accuracy_drop"] == pytest.approx(1 / 3) and strict.exit_code == 1
    assert report["max_abs_diff"] == pytest.approx(np.abs(ref - probs).max(), abs=1e-5)
    (line,) = [ln for ln in strict.stderr.splitlines() if ln.startswith("error:")]
    assert "accuracy drop 33.33 points" in line and "top-1 agreement 66.67 %" in line  # both gates failed

    table = runner.invoke(app, ["validate", str(model), "--data", str(data), "--reference", str(ref_dir),
                                "--max-accuracy-drop", "40", "--min-agreement", "0.6"])
    assert table.exit_code == 0 and "agreement" in table.stdout and "passed" in table.stdout


def test_validate_bad_data_folder_is_one_error_line(model, tmp_path):
    (tmp_path / "data" / "purple").mkdir(parents=True)
    result = runner.invoke(app, ["validate", str(model), "--data", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "purple are not labels" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_benchmark_json_fields(model, tmp_path):
    other = make_onnx(tmp_path / "second.onnx")
    result = runner.invoke(app, ["benchmark", str(model), str(other), "--batch-size", "4", "--threads", "1",
                                 "--iters", "3", "--warmup", "1", "--rounds", "2", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows = doc["models"]
    assert [(r["model"], r["mode"]) for r in rows] == [
        ("model.onnx", "latency"), ("model.onnx", "throughput"),
        ("second.onnx", "latency"), ("second.onnx", "throughput")]
    for r in rows:
        assert r["size_bytes"] == (model if r["model"] == "model.onnx" else other).stat().st_size
        assert r["batch_size"] == 4 and r["threads"] == 1 and r["format"] == "onnx" and r["rounds"] == 2
        assert 0 < r["latency_ms_per_image_p50"] <= r["latency_ms_per_image_p95"]
        spread = r["latency_ms_per_image_rounds"]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"] and spread["spread"] >= 0
        assert 0 < r["latency_ms_per_batch_p50"] <= r["latency_ms_per_batch_p95"]
        assert r["throughput_ips"] > 0 and r["load_time_ms"] > 0
        assert r["throughput_ips_rounds"]["min"] <= r["throughput_ips"] <= r["throughput_ips_rounds"]["max"]
    assert [(c["model"], c["baseline"], c["mode"]) for c in doc["comparisons"]] == [
        ("second.onnx", "model.onnx", "latency"), ("second.onnx", "model.onnx", "throughput")]
    for c in doc["comparisons"]:
        lo, hi = c["latency_ratio_range"]
        assert lo <= c["latency_ratio"] <= hi and c["resolved"] == (hi < 1 or lo > 1)
    assert len(doc["loadavg"]) == 2 and isinstance(doc["warnings"], list)
    table = runner.invoke(app, ["benchmark", str(model), "--iters", "2", "--rounds", "1"])
    assert table.exit_code == 0 and "images/s" in table.stdout and "throughput" in table.stdout
    missing = runner.invoke(app, ["benchmark", str(tmp_path / "nope.onnx")])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: ") and "not found" in missing.stderr


def test_benchmark_flags_an_int8_inversion_and_an_unresolved_ratio():
    from types import SimpleNamespace

    from cvkeras.serving.benchmark import compare_rounds

    def run(name, precision, single):
        meta = SimpleNamespace(precision=precision)
        return {"path": Path(name), "mode": "latency", "single": single,
                "predictor": SimpleNamespace(kind="onnx", metadata=meta)}

    fp32 = run("model.onnx", "float32", [[1.0, 1.0], [1.0, 1.2], [1.0, 1.0]])
    int8 = run("model_int8.onnx", "int8", [[2.0, 2.0], [1.9, 2.1], [2.2, 2.0]])  # slower: inverted
    noisy = run("other.onnx", "float32", [[0.5, 0.5], [1.5, 1.5], [1.0, 1.0]])  # ratio 0.5 .. 1.5
    rows = [{"model": r["path"].name, "mode": "latency",
             "latency_ms_per_image_rounds": {"min": 1, "max": 1, "spread": 0.0}} for r in (fp32, int8, noisy)]
    comparisons, warnings = compare_rounds([fp32, int8, noisy], rows)
    assert [c["resolved"] for c in comparisons] == [True, False]
    assert comparisons[0]["latency_ratio"] == 2.0
    assert any(w.startswith("inversion: int8 model_int8.onnx is slower than float32 model.onnx") for w in warnings)
    assert any(w.startswith("unresolved: other.onnx / model.onnx") for w in warnings)
    assert not any("inversion" in w for w in compare_rounds([fp32, run("q.onnx", "int8", [[0.5]] * 3)], rows[:2])[1])


def test_predict_mode_flag(model, images):
    folder, paths = images
    outputs = []
    for mode in ("latency", "throughput", "auto"):
        result = runner.invoke(app, ["predict", str(model), str(folder), "--mode", mode, "--json"])
        assert result.exit_code == 0, result.output
        outputs.append(_lines(result))
        assert len(outputs[-1]) == len(paths)
    assert outputs[0] == outputs[1] == outputs[2]  # the mode changes speed, never answers
    one = runner.invoke(app, ["predict", str(model), str(paths[0]), "--json"])  # auto: latency session
    assert one.exit_code == 0 and _lines(one)[0] == next(r for r in outputs[0] if r["path"] == str(paths[0]))
    bad = runner.invoke(app, ["predict", str(model), str(folder), "--mode", "fast"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --mode 'fast'")

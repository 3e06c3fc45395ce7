"""`cvkeras export`: every format from a tiny fine-tuned run, metadata, report figures, failure paths.

The report's figures are checked against an independent computation (Keras, onnxruntime and LiteRT
called directly here, not through ``serving``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer

from cvkeras.export import ExportError, export_run, plan_artifacts
from tests.support.cli import invoke
from tests.support.export_models import LABELS, SIZE, float_weight_nodes

ALL = ["model.onnx", "model_int8.onnx", "model_fp16.onnx", "model.tflite", "model_int8.tflite",
       "model_fp16.tflite", "model_dynamic.tflite"]


def _errors(result) -> list[str]:
    """The ``error: ...`` lines on stderr (progress messages go there too)."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="session")
def tiny_run(export_tiny_run) -> Path:
    return export_tiny_run


def _pil(path: str) -> np.ndarray:
    """The image contract with Pillow called directly (not through serving): RGB, bilinear to SIZE."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (SIZE[1], SIZE[0]):
            img = img.resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR, reducing_gap=None)
        return np.asarray(img, dtype=np.uint8)


@pytest.fixture(scope="session")
def keras_val(tiny_run):
    """Independent Keras reference on the whole validation split decoded from the files by Pillow:
    (uint8 images, labels, paths, probs)."""
    import keras

    split = json.loads((tiny_run / "split.json").read_text())
    paths = [p for p, _ in split["val"]]
    labels = np.asarray([y for _, y in split["val"]])
    images = np.stack([_pil(p) for p in paths])
    model = keras.saving.load_model(tiny_run / "best.keras", safe_mode=True)
    probs = model.predict(images.astype(np.float32), verbose=0)
    return images, labels, paths, probs


@pytest.fixture(scope="session")
def fidelity_rows(exported, tiny_run):
    """Every row of reference.npz as (absolute path, label, split, Keras probs), decoded here by Pillow."""
    import keras

    _, out = exported
    root = Path(json.loads((tiny_run / "split.json").read_text())["root"])
    with np.load(out / "reference.npz", allow_pickle=False) as z:
        ref = {k: z[k] for k in z.files}
    paths = [str(root / p) for p in ref["paths"]]
    images = np.stack([_pil(p) for p in paths])
    model = keras.saving.load_model(tiny_run / "best.keras", safe_mode=True)
    return ref, paths, images, model.predict(images.astype(np.float32), verbose=0)


@pytest.fixture(scope="session")
def hostile_run(int8_hostile_run) -> Path:
    """The tiny run's model rescaled so that full int8 fails on every CPU (``make_int8_hostile_run``)."""
    return int8_hostile_run


@pytest.fixture(scope="session")
def hostile_exported(hostile_run, tmp_path_factory):
    """`cvkeras export HOSTILE --format onnx --int8 --output OUT` (repair on), run once through the CLI."""
    out = tmp_path_factory.mktemp("hostile_out") / "export"
    result = invoke("export", hostile_run, "--format", "onnx", "--int8", "--output", out, "--threads", "1")
    return result, out


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory):
    """`cvkeras export RUN --int8 --fp16 --output OUT`, run once through the CLI."""
    out = tmp_path_factory.mktemp("export_out") / "export"
    result = invoke("export", tiny_run, "--int8", "--fp16", "--output", out, "--threads", "1")
    return result, out


# --- options, no model needed ------------------------------------------------------------------------
def test_plan_default_is_float32_of_both_formats():
    assert plan_artifacts() == ["model.onnx", "model.tflite"]
    assert plan_artifacts(int8=True) == ["model.onnx", "model_int8.onnx", "model.tflite", "model_int8.tflite",
                                         "model_dynamic.tflite"]
    assert plan_artifacts(int8=True, fp16=True) == ALL
    assert plan_artifacts(["tflite"], fp16=True) == ["model.tflite", "model_fp16.tflite"]


@pytest.mark.parametrize("args, needle", [
    (["--format", "onnx,coreml"], "unknown format coreml"),
    (["--calibration", "kl"], "unknown --calibration 'kl'"),
    (["--io-type", "int16"], "unknown --io-type 'int16'"),
    (["--opset", "7"], "--opset 7 is not supported"),
    (["--min-agreement", "1.5"], "--min-agreement must be a fraction in 0..1, not 1.5"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, args, needle):
    result = invoke("export", tmp_path / "nope", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and needle in result.stderr
    assert result.stderr.count("\n") == 1  # nothing else: the options are checked before any work


def test_unknown_run_directory_exits_2(tmp_path):
    result = invoke("export", tmp_path / "missing")
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path / 'missing'}: run directory not found; pass the --output of " \
                            "`cvkeras finetune`\n"


def test_missing_best_keras_exits_2(tmp_path):
    from cvkeras.run.rundir import RunDir

    run = tmp_path / "run"
    run.mkdir()
    rd = RunDir(run)
    rd.write_labels(LABELS)
    rd.write_config({"model": {"name": "mobilenet_v2", "image_size": list(SIZE)}, "data": {"seed": 1}})
    rd.write_split({"source": "folder", "root": None, "seed": 1, "train": [], "val": []})
    result = invoke("export", run)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {run / 'best.keras'}: missing")
    assert result.stderr.count("\n") == 1
    assert not (run / "export").exists()


def test_export_never_overwrites_a_users_file_in_its_output_folder(tiny_run, tmp_path):
    """`-o` at a folder of the user's: a file the export would write there (labels.txt) and that cvkeras
    cannot prove it wrote is refused before anything is written; the folder is left as it was."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "labels.txt").write_text("my own labels\n")
    (out / "notes.md").write_text("keep\n")
    result = invoke("export", tiny_run, "--format", "onnx", "--output", out, "--threads", "1")
    assert result.exit_code == 2, result.output
    errors = _errors(result)
    assert len(errors) == 1 and errors[0].startswith(f"error: {out / 'labels.txt'}: exists and cvkeras cannot")
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "notes.md"]
    assert (out / "labels.txt").read_text() == "my own labels\n"


def test_export_run_raises_export_error_for_bad_format(tmp_path):
    with pytest.raises(ExportError, match="unknown format"):
        export_run(tmp_path, formats="onnx,savedmodel")


# --- calibration and reference data --------------------------------------------------------------------
# --- the full export through the CLI ------------------------------------------------------------------
@pytest.mark.slow
def test_cli_exports_every_format_and_exits_0(exported):
    result, out = exported
    assert result.exit_code == 0, result.output + result.stderr
    for name in ALL:
        assert (out / name).is_file() and (out / name).stat().st_size > 10_000, name
        assert name in result.stdout
    for name in ("labels.txt", "export_report.json", "reference.npz"):
        assert (out / name).is_file()
    assert (out / "labels.txt").read_text().split() == LABELS
    assert "all 7 artifacts verified" in result.stdout
    assert not list(out.glob(".*tmp*")), "temp files left behind"


@pytest.mark.slow
def test_onnx_graphs_contract(exported):
    import onnx

    _, out = exported
    for name in ("model.onnx", "model_int8.onnx", "model_fp16.onnx"):
        model = onnx.load(out / name)
        onnx.checker.check_model(model, full_check=True)
        (inp,), (outp, feats) = model.graph.input, model.graph.output  # features: the unknown detector's
        assert inp.name == "image" and outp.name == "probs" and feats.name == "features"
        assert feats.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = inp.type.tensor_type.shape.dim
        assert not dims[0].HasField("dim_value"), "batch dimension must be dynamic"
        assert [d.dim_value for d in dims[1:]] == [*SIZE, 3]
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    q = onnx.load(out / "model_int8.onnx")
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert next(n.op_type for n in q.graph.node if "probs" in n.output) == "Softmax"
    inits = {t.name: t for t in q.graph.initializer}
    per_channel = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                   and inits[n.input[0]].data_type == onnx.TensorProto.INT8
                   and len(onnx.numpy_helper.to_array(inits[n.input[1]]).shape) == 1]
    assert per_channel, "conv weights must be quantized per channel"
    half = onnx.load(out / "model_fp16.onnx")
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)


@pytest.mark.slow
def test_tflite_int8_is_integer_but_its_classifier_with_uint8_input(exported):
    from ai_edge_litert.interpreter import Interpreter

    _, out = exported
    it = Interpreter(model_path=str(out / "model_int8.tflite"))
    from cvkeras.export.tflite.convert import float_ops

    assert it.get_input_details()[0]["dtype"] == np.uint8
    # float32 probabilities out: the classifier (FULLY_CONNECTED, SOFTMAX) computes in float (issue #22.5)
    assert it.get_output_details()[0]["dtype"] == np.float32
    assert list(it.get_input_details()[0]["shape_signature"]) == [-1, *SIZE, 3]
    ops = {op["op_name"] for op in it._get_ops_details()}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= ops
    assert len(float_ops((out / "model_int8.tflite").read_bytes())) == 2, "only the classifier may be float"


@pytest.mark.slow
def test_metadata_in_every_artifact(exported, keras_val):
    from cvkeras import __version__
    from cvkeras.serving.metadata import read_metadata

    _, out = exported
    _, labels, _, probs = keras_val
    keras_acc = float((probs.argmax(1) == labels).mean())
    precision = {"model.onnx": "float32", "model_int8.onnx": "int8", "model_fp16.onnx": "fp16",
                 "model.tflite": "float32", "model_int8.tflite": "int8", "model_fp16.tflite": "fp16",
                 "model_dynamic.tflite": "dynamic"}
    for name in ALL:
        meta = read_metadata(out / name)
        assert meta.labels == LABELS
        assert meta.input_size == SIZE
        assert meta.model_name == "mobilenet_v2"
        assert meta.precision == precision[name]
        assert meta.producer_version == __version__
        assert meta.reference_accuracy == pytest.approx(keras_acc)
        assert meta.preprocess["color_order"] == "RGB" and meta.preprocess["value_range"] == [0.0, 255.0]
    side = json.loads((out / "model_int8.tflite.json").read_text())
    assert side["extra"]["io_type"] == "uint8" and side["extra"]["calibration"]["samples"] > 0
    # GPTQ and bias correction ran on model_int8.tflite too, on every conv/FC op
    assert side["extra"]["gptq"]["layers"] > 0 and side["extra"]["bias_correction"]["layers"] > 0
    dyn = json.loads((out / "model_dynamic.tflite.json").read_text())["extra"]  # GPTQ only: float activations
    assert "gptq" in dyn and "bias_correction" not in dyn
    import onnx

    props = {p.key: p.value for p in onnx.load(out / "model_int8.onnx").metadata_props}
    assert json.loads(props["cvkeras"])["extra"]["quantization"]["per_channel"] is True


@pytest.mark.slow
def test_reference_npz_covers_val_and_held_back_training_images(exported, keras_val, fidelity_rows, tiny_run):
    from cvkeras.data.pipeline import stratified_sample
    from cvkeras.export.fidelity import calibration_count

    _, out = exported
    _, labels, paths, probs = keras_val
    ref, abs_paths, _, probs_all = fidelity_rows
    split = json.loads((tiny_run / "split.json").read_text())
    root = split["root"]
    assert all(p.count("/") == 1 for p in ref["paths"])  # "class/file"
    val = ref["split"] == "val"
    assert list(ref["paths"][val]) == [str(Path(p).relative_to(root)) for p in paths]
    np.testing.assert_array_equal(ref["labels"][val], labels)
    np.testing.assert_allclose(ref["probs"][val], probs, atol=1e-5)  # Keras on Pillow-decoded files
    np.testing.assert_allclose(ref["probs"], probs_all, atol=1e-5)
    assert float(ref["accuracy"]) == pytest.approx(float((probs.argmax(1) == labels).mean()))
    # held-back training images = the training split minus the calibration sample: disjoint, complete
    train = [p for p, _ in split["train"]]
    n_cal = calibration_count(len(train), 300)
    cal = {train[i] for i in stratified_sample([y for _, y in split["train"]], n_cal, 42)}
    held = {p for p, s in zip(abs_paths, ref["split"], strict=True) if s == "train"}
    assert n_cal == len(train) // 2 and len(cal) == n_cal
    assert held == set(train) - cal and not held & cal
    report = json.loads((out / "export_report.json").read_text())
    assert report["images"] == {"fidelity": len(abs_paths), "val": len(paths), "held_back_train": len(held),
                                "calibration": n_cal, "seen_train": 0, "unreadable": 0}
    # every training image has its recorded role: the calibration sample is listed by relative path
    assert {str(Path(root) / p) for p in ref["calibration"]} == cal
    assert report["settings"]["calibration_samples"] == 2 * n_cal  # with their mirror images


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # exact int8 kernels, as a device runs the model (serving.Predictor): on x86 without VNNI the default
    # kernels saturate int16 pair sums and would give other int8 predictions than export verified
    opts.add_session_config_entry("session.x64quantprecision", "1")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"image": x[i : i + 1]})[0] for i in range(len(x))])


def _run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], [len(x), *SIZE, 3])
    it.allocate_tensors()
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
    it.set_tensor(inp["index"], x)
    it.invoke()
    y = it.get_tensor(outp["index"])
    if outp["dtype"] != np.float32:
        scale, zero = outp["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


@pytest.mark.slow
def test_report_figures_match_an_independent_computation(exported, fidelity_rows):
    _, out = exported
    ref, _, images, kprobs = fidelity_rows
    labels, val = ref["labels"], ref["split"] == "val"
    report = json.loads((out / "export_report.json").read_text())
    keras_acc = float((kprobs[val].argmax(1) == labels[val]).mean())
    assert report["keras"] == {"accuracy": pytest.approx(keras_acc), "n": int(val.sum())}
    assert report["passed"] is True
    rows = {a["name"]: a for a in report["artifacts"]}
    assert list(rows) == ALL
    x = images.astype(np.float32)
    for name, row in rows.items():
        probs = _run_onnx(out / name, x) if name.endswith(".onnx") else _run_tflite(out / name, x)
        acc = float((probs[val].argmax(1) == labels[val]).mean())
        agree = probs.argmax(1) == kprobs.argmax(1)
        assert row["status"] == "passed", row
        # every gated figure on the validation rows; the held-back training rows apart (issue #22.1)
        assert row["n_paired"] == row["n_reference"] == int(val.sum()) and row["n_held_back"] == int((~val).sum())
        assert row["paired_accuracy"] == pytest.approx(acc), name
        assert row["accuracy_drop"] == pytest.approx(keras_acc - acc, abs=1e-11), name  # a fraction (docs/json.md)
        assert row["agreement"] == pytest.approx(float(agree[val].mean())), name
        assert row["held_back_agreement"] == pytest.approx(float(agree[~val].mean())), name
        lo, hi = row["agreement_ci"]
        assert lo <= row["agreement"] <= hi and hi - lo > 0.01, name  # 18 images: a wide interval
        lo, hi = row["accuracy_drop_ci"]
        assert lo <= row["accuracy_drop"] <= hi and hi - lo > 0.01, name
        assert row["max_abs_diff"] == pytest.approx(float(np.abs(probs - kprobs)[val].max()), abs=2e-5), name
        assert row["measured_on"]["agreement"] == {"images": "validation", "n": int(val.sum())}
        assert row["size_bytes"] == (out / name).stat().st_size
        assert row["latency_ms_per_image"] > 0
        if row["precision"] == "float32":
            assert row["max_abs_diff"] < 1e-4, name
        else:
            assert row["agreement"] >= 0.99, name
    sizes = {name: row["size_bytes"] for name, row in rows.items()}
    assert sizes["model_int8.tflite"] < 0.6 * sizes["model.tflite"]


@pytest.mark.slow
def test_export_and_validate_report_identical_figures(exported, tiny_run):
    """One verdict (issue #22.1, #22.4): `cvkeras validate FILE` (the run's validation split) and `validate --data
    DATA_ROOT` give the export's figures, to the bit, for every artifact: agreement and drop on the validation
    rows; with --data, the headline accuracy is over the validation images too, and the training images the folder
    also holds (held-back, calibration) are counted apart, with a warning."""
    from cvkeras.serving.cli import validate as validate_command

    _, out = exported
    report = {a["name"]: a for a in json.loads((out / "export_report.json").read_text())["artifacts"]}
    split = json.loads((tiny_run / "split.json").read_text())
    data, n_val = split["root"], len(split["val"])
    app = typer.Typer()
    app.command()(validate_command)
    app.command()(lambda: None)
    for name in ("model_int8.onnx", "model_int8.tflite", "model_dynamic.tflite", "model.onnx"):
        row = report[name]
        for how in (["--data", data], ["--run", str(tiny_run)]):
            result = invoke("validate", str(out / name), *how, "--json", "--threads", "1")
            assert result.exit_code == 0, result.output + result.stderr
            got = json.loads(result.stdout)
            assert got["n"] == n_val and got["n_reference"] == row["n_reference"] == n_val
            assert got["accuracy"] == row["paired_accuracy"]  # the headline is the validation accuracy
            assert sum(got["support"].values()) == n_val
            for key in ("n_paired", "paired_accuracy", "accuracy_drop", "accuracy_drop_ci", "agreement",
                        "agreement_ci", "max_abs_diff"):  # one name per figure in both documents
                assert got[key] == row[key], (name, key, how)
            assert got["measured_on"]["agreement"] == {"images": "validation", "n": n_val}
            if how[0] == "--data":  # the folder holds the 42 training images too: counted apart, with a warning
                assert got["n_seen"] == 60 - n_val and got["held_back_agreement"] == row["held_back_agreement"]
                assert "were seen in training" in result.stderr
            else:
                assert got["n_seen"] == 0 and "seen in training" not in result.stderr


@pytest.mark.slow
def test_tiny_model_int8_onnx_passes_without_repair(exported):
    """With exact int8 kernels (serving's session.x64quantprecision) the tiny net keeps its predictions in
    full int8 on any x86 CPU; with the default U8S8 kernels of a non-VNNI CPU it agreed on about 47 %."""
    _, out = exported
    row = next(a for a in json.loads((out / "export_report.json").read_text())["artifacts"]
               if a["name"] == "model_int8.onnx")
    assert row["status"] == "passed" and row["agreement"] >= 0.99, row
    assert row["float_layers"] is None and row["repair"] is None


@pytest.mark.slow
def test_int8_onnx_keeps_its_stem_float_unless_int8_stem(exported, tiny_run, tmp_path):
    """Default: the stem's convs keep float weights (listed in the metadata); ``--int8-stem``: every Conv/Gemm
    reads int8 weights, and the report's settings say so."""
    import onnx

    def extra(path) -> dict:
        return json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["cvkeras"])["extra"]

    _, default = exported
    stem = extra(default / "model_int8.onnx")["float_stem"]
    assert stem and len(float_weight_nodes(onnx.load(default / "model_int8.onnx"))) == len(stem)
    out = tmp_path / "export"
    result = invoke("export", tiny_run, "--format", "onnx", "--int8", "--int8-stem", "--no-repair", "--output", out,
                     "--threads", "1")
    assert result.exit_code == 0, result.output + result.stderr
    assert float_weight_nodes(onnx.load(out / "model_int8.onnx")) == []
    assert extra(out / "model_int8.onnx")["float_stem"] == []
    report = json.loads((out / "export_report.json").read_text())
    assert report["settings"]["quantization"]["float_stem"] == 0


@pytest.mark.slow
def test_dynamic_tflite_missing_the_gate_gets_float_weights_for_its_worst_ops(hostile_run, tmp_path, monkeypatch):
    """The int8-hostile net's Conv_1 rounds a rescaled input channel's weights to zero in the dynamic-range
    model too; repair gives the worst-ranked ops (Conv_1 first) their float weights back and passes.

    ``--int8`` makes model_int8.tflite first, which misses its gate too; its repair (a QuantizationDebugger
    search, two thirds of this export's time) is recorded instead of run: this test is about the dynamic model.
    """
    import cvkeras.export.tflite.steps as tflite_steps
    from cvkeras.serving import Predictor
    from cvkeras.serving.metadata import read_metadata

    full_int8 = []
    monkeypatch.setattr(tflite_steps, "repair_tflite", lambda res, *a: full_int8.append((res.name, res.status)))
    out = tmp_path / "export"
    result = invoke("export", hostile_run, "--format", "tflite", "--int8", "--output", out, "--threads", "1")
    assert full_int8 == [("model_int8.tflite", "failed")]
    row = next(a for a in json.loads((out / "export_report.json").read_text())["artifacts"]
               if a["name"] == "model_dynamic.tflite")
    rep = row["repair"]
    assert rep["full_int8"]["agreement"] < 0.99, row
    assert row["status"] == "passed" and row["agreement"] >= 0.99, (row, result.output)
    assert rep["passed"] and 1 <= len(row["float_layers"]) <= 2, rep  # the culprit ranks first
    assert "Conv_1" in rep["ranking"][0]["name"] and rep["ranking"][0]["metric"] == "weight noise/signal"
    assert rep["size_cost"] > 1.0  # float weights are 4 bytes each
    assert read_metadata(out / "model_dynamic.tflite").extra["float_layers"] == row["float_layers"]
    assert Predictor.load(out / "model_dynamic.tflite").unknown is not None  # the candidate kept its features
    assert not list(out.glob("*.candidate.*"))
    line = next(x for x in result.output.splitlines() if x.startswith("model_dynamic.tflite: repaired, "))
    assert "Conv_1" in line and "size x" in line


def test_repair_line_names_few_layers_briefly():
    from cvkeras.cli.export import layer_list

    names = [f"m/relu_{i}/Relu6;m/bn_{i}/add;m/conv_{i}/convolution" for i in range(6)]
    assert layer_list(names[:2]) == "m/conv_0/convolution, m/conv_1/convolution"
    assert layer_list(names).endswith("m/conv_3/convolution, ... 2 more in export_report.json")
    assert layer_list(["/Conv_1/Conv", "a;b"]) == "/Conv_1/Conv, a"  # ONNX names; no weighted part: the first


@pytest.mark.slow
def test_int8_onnx_missing_the_gate_is_repaired_with_float_layers(hostile_exported):
    """The int8-hostile net loses most of its int8 ONNX agreement; repair keeps layers in float."""
    import onnx

    result, out = hostile_exported
    assert result.exit_code == 0, result.output + result.stderr
    row = next(a for a in json.loads((out / "export_report.json").read_text())["artifacts"]
               if a["name"] == "model_int8.onnx")
    rep = row["repair"]
    assert rep["full_int8"]["agreement"] < 0.99 and "top-1 agreement" in rep["full_int8"]["error"]
    assert row["status"] == "passed" and row["agreement"] >= 0.99
    assert row["float_layers"] and rep["passed"] is True and rep["float_layers"] == row["float_layers"]
    assert [a["float_layers"] for a in rep["attempts"]][:2] == [1, 2]  # doubling, then bisection
    # issue #22.2: every candidate was checked on the held-back training images, never on validation; the
    # chosen one was then judged once on the validation images (the row's own figures)
    assert rep["searched_on"] == "held_back_train"
    assert {a["n_images"] for a in rep["attempts"]} == {row["n_held_back"]} and row["n_held_back"] > 0
    assert all(a["accuracy_drop"] is None for a in rep["attempts"])
    # a candidate holds only when its agreement predicted on validation from its held-back erosions holds too
    level = json.loads((out / "export_report.json").read_text())["settings"]["repair_min_agreement"]
    assert all(0 <= a["predicted_agreement"] <= 1 and 0 <= a["pass_chance"] <= 1 for a in rep["attempts"])
    assert all(a["passed"] == (a["agreement"] >= level and a["pass_chance"] >= 0.95) for a in rep["attempts"])
    assert rep["judged_on"] == {"images": "validation", "n": row["n_reference"], "agreement": row["agreement"],
                                "accuracy_drop": row["accuracy_drop"], "passed": True}
    assert any(a["float_layers"] == len(row["float_layers"]) and a["passed"] for a in rep["attempts"])
    assert not any(a["passed"] for a in rep["attempts"] if a["float_layers"] < len(row["float_layers"]))
    assert rep["size_cost"] > 1.0 and rep["latency_cost"] > 0
    # the float layers really are float: weighted nodes whose weight is a float initializer, not a DQ output
    q = onnx.load(out / "model_int8.onnx")
    floats = float_weight_nodes(q)
    meta = json.loads({p.key: p.value for p in q.metadata_props}["cvkeras"])
    assert meta["extra"]["float_layers"] == row["float_layers"]
    # besides them only the stem, which every int8 ONNX file keeps float (cvkeras.export.onnx.quantize.stem_nodes)
    assert meta["extra"]["float_stem"] and meta["extra"]["quantization"]["float_stem"] > 0
    assert len(floats) == len(row["float_layers"]) + len(meta["extra"]["float_stem"])
    # GPTQ's figures are the repaired model's own: it re-rounded only layers this file keeps in int8
    weighted = [n for n in q.graph.node if n.op_type in ("Conv", "Gemm")]
    assert meta["extra"]["gptq"]["layers"] <= len(weighted) - len(floats)
    assert not list(out.glob("*candidate*"))


# --- failure paths --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_failed_int8_check_exits_1_names_both_gates_and_keeps_files(hostile_run, tmp_path):
    out = tmp_path / "out"
    result = invoke("export", hostile_run, "--format", "onnx", "--int8", "--output", out, "--no-repair",
                     "--max-accuracy-drop", "0", "--threads", "1")
    assert result.exit_code == 1, result.output + result.stderr
    (line,) = _errors(result)
    assert line.startswith("error: model_int8.onnx: accuracy drop ")
    assert "> 0 allowed, by " in line and "; top-1 agreement " in line and "< 99 % required, by " in line
    report = json.loads((out / "export_report.json").read_text())
    status = {a["name"]: a["status"] for a in report["artifacts"]}
    assert status == {"model.onnx": "passed", "model_int8.onnx": "failed"}
    assert report["passed"] is False and report["settings"]["repair"] is False
    # the failed file is kept under a name no device loads by default, marked failed in its metadata
    assert (out / "model_int8.FAILED.onnx").is_file() and (out / "model.onnx").is_file()
    assert not (out / "model_int8.onnx").exists() and "kept as model_int8.FAILED.onnx" in line


@pytest.mark.slow
def test_when_no_mix_passes_export_exits_1_and_keeps_the_full_int8_file(hostile_run, tmp_path, monkeypatch):
    """Only the single best-measured layer may stay float (patched ranking): not enough, so exit 1."""
    import cvkeras.export.onnx.ranking

    real = cvkeras.export.onnx.ranking.rank_onnx_layers
    monkeypatch.setattr(cvkeras.export.onnx.ranking, "rank_onnx_layers", lambda *a, **k: real(*a, **k)[-1:])
    out = tmp_path / "out"
    result = invoke("export", hostile_run, "--format", "onnx", "--int8", "--output", out, "--threads", "1")
    assert result.exit_code == 1, result.output + result.stderr
    (line,) = _errors(result)
    assert line.startswith("error: model_int8.onnx: ") and "no mix of int8 and float layers passes (tried 1" in line
    assert "best predicted chance to pass on validation" in line and "files are the checked alternatives" in line
    row = json.loads((out / "export_report.json").read_text())["artifacts"][1]
    assert row["status"] == "failed" and row["float_layers"] is None and row["repair"]["passed"] is False
    assert row["agreement"] == row["repair"]["full_int8"]["agreement"] < 0.99  # the full int8 file is kept
    assert (out / "model_int8.FAILED.onnx").is_file() and not list(out.glob("*candidate*"))


@pytest.fixture(scope="session")
def unconvertible_run(tiny_run, tmp_path_factory) -> Path:
    """A run whose model holds an op neither converter supports (SVD), in a registered custom layer."""
    import shutil

    import keras

    from tests.support.export_models import Svd  # noqa: F401 -- registers the layer for loading

    run = tmp_path_factory.mktemp("svd") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("best.keras", "export"))
    inp = keras.Input((*SIZE, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(inp)
    x = Svd()(x)
    out = keras.layers.Dense(len(LABELS), activation="softmax", name="probs")(x)
    keras.Model(inp, out).save(run / "best.keras")
    return run


@pytest.mark.slow
def test_unconvertible_op_exits_2_and_writes_no_model_file(unconvertible_run, tmp_path):
    out = tmp_path / "out"
    result = invoke("export", unconvertible_run, "--output", out)
    assert result.exit_code == 2, result.output + result.stderr
    assert _errors(result) == [
        "error: model.onnx: tf2onnx cannot convert op Svd (not in ONNX opset 17); try --format tflite",
        "error: model.tflite: the TFLite converter cannot handle this model (op Svd has no TFLite builtin "
        "kernel); export --format onnx or drop this variant",
    ]
    assert not (out / "model.onnx").exists() and not (out / "model.tflite").exists()
    # the new --output folder is marked so that the next export can prove which files it may replace
    assert sorted(p.name for p in out.iterdir()) == [".cvkeras-run", "export_report.json", "labels.txt",
                                                     "reference.npz"]


@pytest.mark.slow
def test_mixed_precision_model_exports_float32(tiny_run, tmp_path):
    import shutil

    import keras
    import onnx

    from cvkeras.models.build import build_classifier

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("best.keras", "export"))
    trained = keras.saving.load_model(tiny_run / "best.keras", safe_mode=True)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = build_classifier("mobilenet_v2", len(LABELS), SIZE, alpha=0.35, weights="none", dropout=0.0)
        mixed.set_weights(trained.get_weights())
        mixed.save(run / "best.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    report = export_run(run, tmp_path / "out", formats="onnx")
    assert report.exit_code == 0, [a.error for a in report.artifacts]
    model = onnx.load(tmp_path / "out" / "model.onnx")
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert report.artifact("model.onnx").max_abs_diff < 1e-4


def _dw_model(path: Path, rng: np.random.Generator, dw_bias: float = 0.0) -> None:
    """1x1 conv -> Relu -> depthwise 3x3 (channel weight ranges 1 .. 1e-3, bias ``dw_bias``) -> Relu -> 1x1
    conv, NCHW float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = 8
    w1 = rng.normal(0, 0.5, (c, 3, 1, 1)).astype(np.float32)
    wd = (rng.normal(0, 1, (c, 1, 3, 3)) * np.logspace(0, -3, c)[:, None, None, None]).astype(np.float32)
    w3 = rng.normal(0, 0.5, (4, c, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (wd, "wd"), (np.full(c, dw_bias, np.float32), "bd"), (w3, "w3"))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="pw1"),
             helper.make_node("Relu", ["a"], ["ar"], name="relu1"),
             helper.make_node("Conv", ["ar", "wd", "bd"], ["d"], name="dw", group=c, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["dr"], name="relu2"),
             helper.make_node("Conv", ["dr", "w3"], ["y"], name="pw2")]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_int8_onnx_excluded_layer_stays_float_when_onnxruntime_loads_it(tmp_path):
    """A layer kept float (repair) must not be re-quantized per-tensor by ORT's WeightBiasQuantization.

    With a quantized neighbour its input came from a per-tensor DequantizeLinear, which ORT's default
    optimizer took as a QDQ node with unquantized weights: it quantized the depthwise weights per-tensor
    when the session loaded, zeroing small channels (MobileNet: keeping 2 layers "float" made agreement
    fall from 92 % to 48 %).
    """
    import onnx
    import onnxruntime as ort

    from cvkeras.export.onnx.convert import save
    from cvkeras.export.onnx.quantize import quantize_int8
    from cvkeras.export.settings import QuantSettings

    rng = np.random.default_rng(0)
    src = tmp_path / "dw.onnx"
    _dw_model(src, rng)
    x = rng.uniform(0, 1, (16, 1, 3, 8, 8)).astype(np.float32)
    q = tmp_path / "q.onnx"
    save(quantize_int8(src, x[:, 0], QuantSettings(exclude_softmax=False, float_stem=0), exclude=["dw", "relu2"],
                       compact=False), q)
    loaded = tmp_path / "loaded.onnx"  # the graph as ONNX Runtime runs it, after its optimizers
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(loaded)
    ort.InferenceSession(str(q), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(loaded).graph
    dw = next(n for n in graph.node if n.name == "dw")
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert dw.op_type == "Conv" and dw.input[1] == "wd" and dw.input[1] in floats and dw.input[2] in floats
    pw2 = next(n for n in graph.node if n.name == "pw2")  # its neighbours stay int8
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert producers[pw2.input[1]] == "DequantizeLinear"


@pytest.mark.parametrize("dw_bias", [0.0, -1e-7])
def test_onnx_layer_ranking_does_not_count_relu_as_quantization_noise(tmp_path, dw_bias):
    """The quantizer folds Relu/Clip into the QuantizeLinear after a conv; the ranking must not charge the
    conv with everything the Relu cuts off (half its pre-activation power here) as int8 noise. Nor a
    near-zero bias (folded BatchNorm) that rounds to 0 in int32: 100 % of itself, nothing of the output."""
    from cvkeras.export.onnx.convert import save
    from cvkeras.export.onnx.quantize import preprocess, quantize_int8
    from cvkeras.export.onnx.ranking import rank_onnx_layers
    from cvkeras.export.settings import QuantSettings

    rng = np.random.default_rng(1)
    src, pre, raw = tmp_path / "dw.onnx", tmp_path / "pre.onnx", tmp_path / "raw.onnx"
    _dw_model(src, rng, dw_bias)
    preprocess(src, pre)
    x = rng.uniform(0, 1, (16, 3, 8, 8)).astype(np.float32)
    save(quantize_int8(pre, x, QuantSettings(exclude_softmax=False, float_stem=0), preprocessed=True,
                       compact=False), raw)
    ranking = rank_onnx_layers(pre, raw, x[:4], input_name="x")
    assert len(ranking) == 3 and all(r.op == "Conv" for r in ranking)
    # 8-bit rounding of weights and activations: noise/signal around 1e-4, nowhere near the Relu's 0.5
    assert max(r.error for r in ranking) < 0.01, [(r.name, r.error) for r in ranking]

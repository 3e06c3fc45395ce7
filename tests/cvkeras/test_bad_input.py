"""Hostile input through the CLI (issue 14): exit code, one ``error:`` line, and no user file touched.

Most cases fail before any training; the ones that need a trained run share one tiny run (32 px,
MobileNet alpha 0.25, random init, 1 epoch of 2 steps) made once per module and copied per test.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cvkeras.run import files as runfiles
from cvkeras.serving.errors import RunDirError
from tests.support.cli import TINY as TINY_FLAGS
from tests.support.cli import invoke
from tests.support.shapes import write_shapes

TINY = [*TINY_FLAGS, "--augment", "none"]

# MobileNet alpha 0.25: traces in half the time of MobileNetV2 alpha 0.35; no test here is about the backbone
QUICK = [*TINY, "--epochs", "1", "--fine-tune-epochs", "0", "--steps-per-epoch", "2"]
ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = ".cvkeras-lock"  # runfiles.LOCK, spelled out so these tests also run against older code


def snapshot(root: Path) -> dict[str, str]:
    """Every file (and symlink) under ``root`` with a hash of its bytes: any change shows.

    The (empty) lock file cvkeras creates to lock a run is its own and is left out.
    """
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.name == LOCK_FILE:
            continue
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def assert_one_line_error(result, code: int = 2, *needles: str) -> None:
    text = result.output.strip()
    assert result.exit_code == code, text
    assert "Traceback" not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("data") / "shapes", per_class=8, size=32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data) -> Path:
    run = tmp_path_factory.mktemp("tiny") / "run"
    result = invoke("finetune", str(data), *QUICK, "--output", str(run))
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run_copy(tmp_path, tiny_run) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst, symlinks=True, ignore=shutil.ignore_patterns(LOCK_FILE))
    return dst


# --- 1: --force only ever replaces what cvkeras wrote ------------------------------------------------------

def _project(tmp: Path, data: Path) -> Path:
    proj = tmp / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "config.yaml").write_text("db: x\n")
    (proj / "src" / "app.py").write_text("code\n")
    (proj / "checkpoints").mkdir()
    return proj


def _marked_with_user_file(tmp: Path, data: Path) -> Path:
    run = tmp / "marked"
    run.mkdir()
    runfiles.mark_run(run)
    (run / "config.yaml").write_text("model: {name: mobilenet_v2}\n")  # not in the manifest: not ours
    return run


@pytest.mark.parametrize("make, needle", [
    (_project, "not a cvkeras run directory"),
    (_marked_with_user_file, "did not write"),
    (lambda tmp, data: data, "holds the data"),
    (lambda tmp, data: data.parent, "holds the data"),
], ids=["project-with-config-yaml", "marked-run-with-user-file", "the-data-itself", "parent-of-the-data"])
def test_force_never_replaces_a_folder_cvkeras_did_not_write(tmp_path, make, needle):
    data = write_shapes(tmp_path / "d" / "shapes", per_class=3, size=32)
    target = make(tmp_path, data)
    before, data_before = snapshot(target), snapshot(data)
    result = invoke("finetune", data, *QUICK, "--output", target, "--force")
    assert_one_line_error(result, 2, needle)
    assert snapshot(target) == before and snapshot(data) == data_before


@pytest.mark.parametrize("name, content", [("weights.bin", b"not weights"), ("weights.h5", b"not an h5 file")],
                         ids=["unknown-format", "damaged-h5"])
def test_a_weights_file_keras_cannot_load_is_one_line(tmp_path, data, name, content):
    weights = tmp_path / name
    weights.write_bytes(content)
    result = invoke("finetune", data, *QUICK, "--weights", weights, "--output", tmp_path / "run")
    assert_one_line_error(result, 2, str(weights))


def test_output_inside_the_data_folder_is_refused_before_it_is_made(tmp_path):
    data = write_shapes(tmp_path / "shapes", per_class=3, size=32)
    before = snapshot(data)
    result = invoke("finetune", data, *QUICK, "--output", data / "runs" / "r")
    assert_one_line_error(result, 2, "inside the data folder")
    assert snapshot(data) == before


def test_force_refuses_a_real_run_holding_a_foreign_file(run_copy, data):
    (run_copy / "checkpoints" / "notes.txt").write_text("mine\n")
    before = snapshot(run_copy)
    result = invoke("finetune", data, *QUICK, "--output", run_copy, "--force")
    assert_one_line_error(result, 2, "checkpoints/notes.txt")
    assert snapshot(run_copy) == before


def test_clear_run_removes_only_the_manifest_files(run_copy):
    written = set(runfiles.read_manifest(run_copy))
    assert {"config.yaml", "best.keras", "checkpoints/last.keras", "split.json"} <= written
    (run_copy / "link").symlink_to(run_copy / "best.keras")  # a symlink is never ours
    assert runfiles.foreign_entries(run_copy) == ["link"]
    with pytest.raises(RunDirError, match="did not write"):
        runfiles.clear_run(run_copy)
    assert (run_copy / "best.keras").is_file()
    (run_copy / "link").unlink()
    assert runfiles.clear_run(run_copy) == len(written)
    assert sorted(p.name for p in run_copy.iterdir()) == [runfiles.MARKER]
    assert runfiles.read_manifest(run_copy) == []


# --- 2: one writer per run directory ----------------------------------------------------------------------

def test_a_locked_run_is_refused_naming_the_holder(run_copy, data):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cvkeras.run import files as runfiles\n"
         f"with runfiles.run_lock({str(run_copy)!r}, 'finetune'):\n"
         "    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run_copy)
        for args in (["finetune", data, *QUICK, "--output", run_copy, "--force"],
                     ["finetune", "--resume", "--output", run_copy],
                     ["evaluate", run_copy],
                     ["export", run_copy, "--format", "onnx"]):
            result = invoke(*args)
            assert_one_line_error(result, 2, "in use by", f"pid {holder.pid}")
        assert snapshot(run_copy) == before
        assert not (run_copy / "export").exists()
    finally:
        holder.communicate("", timeout=30)
    with runfiles.run_lock(run_copy, "test"):  # released when the holder exits
        with runfiles.run_lock(run_copy, "nested"):  # re-entrant within one process
            pass


# --- 4, 13: files read back are checked; nothing is rewritten ---------------------------------------------

def _labels_renamed(run: Path) -> None:
    (run / "labels.txt").write_text("circle\nsquare\nstar\n")


def _labels_extra(run: Path) -> None:
    (run / "labels.txt").write_text("circle\nsquare\ntriangle\nstar\n")


def _split_bad_json(run: Path) -> None:
    (run / "split.json").write_text("{not json")


def _split_list(run: Path) -> None:
    (run / "split.json").write_text("[]")


def _split_bad_item(run: Path) -> None:
    doc = json.loads((run / "split.json").read_text())
    doc["val"][0] = [doc["val"][0][0], 7]
    (run / "split.json").write_text(json.dumps(doc))


def _config_model_string(run: Path) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"] = "mobilenet_v2"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


def _config_size_zero(run: Path) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["image_size"] = [0, 0]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


def _best_truncated(run: Path) -> None:
    blob = (run / "best.keras").read_bytes()
    (run / "best.keras").write_bytes(blob[: len(blob) // 3])


def _best_lambda(run: Path) -> None:
    import keras

    inp = keras.Input((32, 32, 3))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Lambda(_double)(inp)[:, 0, 0, :])
    keras.Model(inp, out).save(run / "best.keras")


def _double(x):
    return x * 2


DAMAGE = [
    (_labels_renamed, "labels.txt"), (_labels_extra, "labels.txt"), (_split_bad_json, "split.json"),
    (_split_list, "split.json"), (_split_bad_item, "val[0]"), (_config_model_string, "'model'"),
    (_config_size_zero, "model.image_size"), (_best_truncated, "truncated"), (_best_lambda, "best.keras"),
]


@pytest.mark.parametrize("damage, needle", DAMAGE, ids=[d.__name__.strip("_") for d, _ in DAMAGE])
@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_damaged_run_files_are_one_line_errors_and_nothing_is_rewritten(run_copy, damage, needle, command):
    damage(run_copy)
    before = snapshot(run_copy)
    extra = ["--format", "onnx"] if command == "export" else []
    result = invoke(command, run_copy, *extra)
    assert_one_line_error(result, 2, needle)
    assert snapshot(run_copy) == before


# --- 11, 12: copied and read-only runs ---------------------------------------------------------------------

def test_a_copied_run_with_a_missing_image_skips_and_reports_it(tmp_path, run_copy, data):
    moved = tmp_path / "moved-data"
    shutil.copytree(data, moved)
    text = (run_copy / "split.json").read_text().replace(str(data.resolve()), str(moved.resolve()))
    (run_copy / "split.json").write_text(text)
    gone = Path(json.loads(text)["val"][0][0])
    gone.unlink()
    result = invoke("evaluate", run_copy)
    assert result.exit_code == 0, result.output
    assert "missing" in result.output and "Traceback" not in result.output
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert metrics["n"] == len(json.loads(text)["val"]) - 1


def test_a_read_only_run_is_one_line_pointing_to_output(run_copy, monkeypatch):
    """Simulated (tests may run as root, whom chmod does not stop): making files or folders fails EROFS."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(kwargs.get("dir", args[0] if args else run_copy)))

    before = snapshot(run_copy)
    monkeypatch.setattr(runfiles.tempfile, "mkstemp", read_only)  # atomic writes live in cvkeras.run.files
    monkeypatch.setattr(os, "mkdir", read_only)
    for args in (["evaluate", run_copy], ["export", run_copy, "--format", "onnx"]):
        result = invoke(*args)
        assert_one_line_error(result, 2, "read-only", "--output")
    assert snapshot(run_copy) == before


# --- 7-10: every number is range-checked before anything is written ---------------------------------------

BAD_NUMBERS = [
    ("--steps-per-epoch", "-1"), ("--steps-per-epoch", "0"), ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-0.1"),
    ("--fine-tune-lr", "nan"), ("--image-size", "0"), ("--image-size", "10000"), ("--label-smoothing", "-0.1"),
    ("--label-smoothing", "1"), ("--weight-decay", "-1"), ("--weight-decay", "nan"), ("--warmup-epochs", "-1"),
    ("--warmup-epochs", "inf"), ("--dropout", "1.0"), ("--mixup", "inf"), ("--val-split", "nan"),
    ("--seed", "-1"), ("--patience", "-2"), ("--epochs", "-1"), ("--batch-size", "-8"),
]


@pytest.mark.parametrize("flag, value", BAD_NUMBERS, ids=[f"{f}={v}" for f, v in BAD_NUMBERS])
def test_bad_numbers_are_refused_before_anything_is_written(tmp_path, data, flag, value):
    before = snapshot(data)
    run = tmp_path / "run"
    result = invoke("finetune", data, *QUICK, flag, value, "--output", run)
    assert_one_line_error(result, 2, flag)
    assert not run.exists() and snapshot(data) == before


@pytest.mark.parametrize("flag, value", [("--threads", "0"), ("--threads", "-3"), ("--max-accuracy-drop", "nan"),
                                         ("--max-accuracy-drop", "inf"), ("--max-accuracy-drop", "-1")])
def test_bad_export_numbers_are_refused_before_anything_is_written(run_copy, flag, value):
    before = snapshot(run_copy)
    result = invoke("export", run_copy, flag, value)
    assert_one_line_error(result, 2, flag)
    assert snapshot(run_copy) == before


# --- 5, 14 and the smaller data items: caught at scan time -------------------------------------------------

def test_a_csv_row_with_an_empty_label_is_refused_with_its_row_number(tmp_path, data):
    rows = ["path,label"] + [f"{p},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    rows[3] = rows[3].split(",")[0] + ", "
    csv_file = tmp_path / "data.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    result = invoke("finetune", csv_file, *QUICK, "--output", tmp_path / "run")
    assert_one_line_error(result, 2, "data.csv:4", "empty label")
    assert not (tmp_path / "run").exists()


def test_scan_skips_and_reports_what_it_cannot_use(tmp_path):
    from cvkeras.data.sources import scan_folder

    data = write_shapes(tmp_path / "shapes", per_class=4, size=32)
    bad_name = os.fsdecode(b"circle/bad\xff.png")
    shutil.copy(data / "circle" / "circle_000.png", data / bad_name)
    (data / "square" / "photo.webp").write_bytes(b"RIFF0000WEBP")
    (data / "triangle" / "scan.tif").write_bytes(b"II*\0")
    (data / "__MACOSX" / "circle").mkdir(parents=True)
    shutil.copy(data / "circle" / "circle_000.png", data / "__MACOSX" / "circle" / "._x.png")
    (data / "loop").symlink_to(data, target_is_directory=True)
    split = scan_folder(data)
    assert split.classes == ["circle", "square", "triangle"]
    reasons = {Path(p).name: why for p, why in split.skipped}
    assert "UTF-8" in reasons[os.fsdecode(b"bad\xff.png")]
    assert "convert it" in reasons["photo.webp"] and "convert it" in reasons["scan.tif"]
    assert "loop" in reasons["loop"]
    assert len(split.train) + len(split.val) == 12
    # skipped.txt can always be written (undecodable bytes escaped)
    text = "".join(f"{runfiles.printable_path(p)}\t{why}\n" for p, why in split.skipped)
    runfiles.atomic_write(tmp_path / "skipped.txt", text)
    assert "bad\\xff.png" in (tmp_path / "skipped.txt").read_text(encoding="utf-8")


def test_a_class_with_one_image_is_warned_about(tmp_path):
    from cvkeras.data.sources import scan_folder

    data = write_shapes(tmp_path / "shapes", per_class=4, size=32)
    for p in sorted((data / "triangle").iterdir())[1:]:
        p.unlink()
    split = scan_folder(data)
    assert any("'triangle'" in w and "no validation image" in w for w in split.warnings)


# --- 3: --resume keeps its recorded split -----------------------------------------------------------------

@pytest.mark.slow
def test_resume_uses_the_recorded_split_and_reports_new_files(tmp_path, run_copy, data):
    own = tmp_path / "data"
    shutil.copytree(data, own)
    for name in ("split.json", "config.yaml"):
        text = (run_copy / name).read_text().replace(str(data.resolve()), str(own.resolve()))
        (run_copy / name).write_text(text.replace(str(data), str(own)))
    cfg = yaml.safe_load((run_copy / "config.yaml").read_text())
    cfg["train"]["epochs"] = 2  # the run was interrupted after epoch 1 of 2
    (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    state = json.loads((run_copy / "checkpoints" / "state.json").read_text())
    state["finished"] = False
    (run_copy / "checkpoints" / "state.json").write_text(json.dumps(state))
    write_shapes(own / "extra", per_class=2, size=32, classes=("circle",))  # nested: scanned as circle
    shutil.move(own / "extra" / "circle", own / "star")  # a whole new class
    shutil.rmtree(own / "extra")
    split_before = (run_copy / "split.json").read_text()
    result = invoke("finetune", "--resume", "--output", run_copy)
    assert result.exit_code == 0, result.output
    assert "not used" in result.output and "Traceback" not in result.output
    assert (run_copy / "split.json").read_text() == split_before
    assert (run_copy / "labels.txt").read_text().split() == ["circle", "square", "triangle"]
    assert json.loads((run_copy / "checkpoints" / "state.json").read_text())["global_epoch"] == 2


# --- 8: a NaN loss stops the run and keeps the last good checkpoint ---------------------------------------

@pytest.mark.slow
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data):
    import keras

    from cvkeras.run.config import FinetuneConfig
    from cvkeras.train.stages import TrainingDivergedError
    from cvkeras.train.trainer import finetune

    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.layers[-1].kernel
                kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))

    cfg = FinetuneConfig(data=str(data), model="mobilenet", alpha=0.25, weights="none", image_size=[32, 32],
                         batch_size=8, augment="none", epochs=3, fine_tune_epochs=0, steps_per_epoch=2)
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match="NaN"):
        finetune(cfg, output=str(run), verbose=0, callbacks=[Poison()])
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["global_epoch"] == 1 and not state["finished"]
    for name in ("best.keras", "checkpoints/last.keras"):
        model = keras.saving.load_model(run / name, safe_mode=True)
        assert all(np.isfinite(w).all() for w in model.get_weights()), name
    result = invoke("finetune", "--resume", "--output", run, "--lr", "nan")
    assert_one_line_error(result, 2, "--lr")


# --- 6: the multi-worker loop trains at full step size under mixed_float16 --------------------------------

MULTI_WORKER = textwrap.dedent("""
    import json, numpy as np, keras, tensorflow as tf
    from cvkeras.run.config import FinetuneConfig
    from cvkeras.train.distribute import fit_multi_worker
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # single worker: no TF_CONFIG
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    y = np.eye(2, dtype="float32")[np.arange(8) % 2]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    cfg = FinetuneConfig(batch_size=8, label_smoothing=0.0)
    deltas = {}
    for policy in ("float32", "mixed_float16"):
        keras.mixed_precision.set_global_policy(policy)
        with strategy.scope():
            inp = keras.Input((4,))
            out = keras.layers.Dense(2, kernel_initializer="ones", dtype=policy)(inp)
            model = keras.Model(inp, keras.layers.Activation("softmax", dtype="float32")(out))
            model.compile(optimizer=keras.optimizers.SGD(1.0), loss="categorical_crossentropy")
        before = model.get_weights()[0].copy()
        fit_multi_worker(model, strategy, ds, ds, 0, 1, 1, cfg, None, 2, [])
        deltas[policy] = (model.get_weights()[0] - before).tolist()
        deltas[policy + "_optimizer"] = type(model.optimizer).__name__
    print("RESULT " + json.dumps(deltas))
""")


@pytest.mark.slow
def test_multi_worker_loop_under_mixed_float16_matches_float32_first_update():
    out = subprocess.run([sys.executable, "-c", MULTI_WORKER], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={**{k: v for k, v in os.environ.items() if k != "TF_CONFIG"},
                                   "PYTHONPATH": str(ROOT)})
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, out.stderr[-3000:]
    deltas = json.loads(line[len("RESULT "):])
    assert deltas["mixed_float16_optimizer"] == "LossScaleOptimizer"
    f32, f16 = np.asarray(deltas["float32"]), np.asarray(deltas["mixed_float16"])
    assert np.abs(f32).max() > 1e-2, "the float32 step should move the weights"
    np.testing.assert_allclose(f16, f32, rtol=2e-2, atol=2e-3)


# --- serving side: metadata and JSON ------------------------------------------------------------------------

def _serving_model(tmp_path: Path, meta_doc: dict | None = None, nan: bool = False) -> Path:
    import onnx

    from cvkeras.serving.metadata import METADATA_KEY
    from tests.support.serving_models import BIAS, make_onnx

    bias = np.full_like(BIAS, np.nan) if nan else BIAS
    path = make_onnx(tmp_path / "model.onnx", bias=bias)
    if meta_doc is not None:
        model = onnx.load(str(path))
        prop = next(p for p in model.metadata_props if p.key == METADATA_KEY)
        doc = json.loads(prop.value)
        doc.update(meta_doc)
        prop.value = json.dumps(doc)
        onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("size", [[8], [0, 0], [100000, 100000]], ids=["one-number", "zero", "huge"])
@pytest.mark.parametrize("command", ["predict", "validate", "benchmark"])
def test_bad_model_metadata_input_size_is_one_line(tmp_path, size, command):
    from tests.support.serving_models import write_class_folder

    model = _serving_model(tmp_path, {"input_size": size})
    images = tmp_path / "imgs"
    write_class_folder(images, per_class=1)
    args = {"predict": [model, images], "validate": [model, "--data", images], "benchmark": [model]}[command]
    result = invoke(command, *args)
    assert_one_line_error(result, 2, "input_size")


def test_predict_json_never_prints_bare_nan(tmp_path):
    from tests.support.serving_models import write_class_folder

    model = _serving_model(tmp_path, nan=True)
    images = tmp_path / "imgs"
    write_class_folder(images, per_class=1)

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    result = invoke("predict", model, images, "--json")
    lines = [x for x in result.output.splitlines() if x.startswith("{")]
    assert lines, result.output
    docs = [json.loads(x, parse_constant=no_constants) for x in lines]
    assert all(d.get("score") is None for d in docs if "error" not in d)


# --- the console holds cvkeras' own lines: TensorFlow's start-up chatter only with --verbose ---------------

def test_tensorflow_start_up_lines_are_not_printed(run_copy):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-m", "cvkeras.cli", "evaluate", str(run_copy)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    noise = [x for x in out.stderr.splitlines() if "absl" in x or x[:5] in ("I0000", "W0000", "E0000")]
    assert not noise, noise


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    """Interrupted exports leaked their temp folders: SIGTERM now unwinds like Ctrl-C."""
    code = textwrap.dedent(f"""
        import os, signal, tempfile, time
        from cvkeras.cli import terminate_as_interrupt
        terminate_as_interrupt()
        try:
            with tempfile.TemporaryDirectory(prefix="cvkeras-savedmodel-", dir={str(tmp_path)!r}):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
        except KeyboardInterrupt:
            print("interrupted")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "interrupted", out.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, needle", [("model: mobilenet_v2\n", "'model'"),
                                          ("train: {learning_rate: fast}\n", "train.learning_rate"),
                                          ("train: {learning_rate: .nan}\n", "--lr"),
                                          ("- a\n- list\n", "mapping")])
def test_a_bad_config_file_is_one_line(tmp_path, data, text, needle):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    result = invoke("finetune", data, "--config", config, *QUICK, "--output", tmp_path / "run")
    assert_one_line_error(result, 2, needle)
    assert not (tmp_path / "run").exists() and config.read_text() == text


def test_resume_refuses_other_data_and_a_run_without_checkpoint(tmp_path, run_copy, data):
    other = write_shapes(tmp_path / "other", per_class=3, size=32)
    before = snapshot(run_copy)
    result = invoke("finetune", other, "--resume", "--output", run_copy)
    assert_one_line_error(result, 2, "recorded split")
    assert snapshot(run_copy) == before
    shutil.rmtree(run_copy / "checkpoints")
    result = invoke("finetune", "--resume", "--output", run_copy)
    assert_one_line_error(result, 2, "--force")  # the way out, not another --resume


def test_a_csv_file_under_two_labels_is_warned_about(tmp_path):
    from cvkeras.data.sources import read_csv

    data = write_shapes(tmp_path / "shapes", per_class=4, size=32)
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    rows.append(f"{Path('shapes/circle/circle_000.png')},square")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    split = read_csv(tmp_path / "data.csv")
    assert any("several labels" in w and "circle and square" in w for w in split.warnings), split.warnings


# === issue 27: hostile round two =========================================================================

def _alias_bomb(levels: int = 6, width: int = 9) -> str:
    """A YAML alias bomb as one flow list (a few hundred bytes): each item ``width`` aliases of the one before."""
    items = ['&a0 ["lol"]'] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return f"[{', '.join(items)}]"


def _peak_bytes(fn) -> tuple[object, int]:
    import tracemalloc

    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("where", ["finetune-config", "run-config"])
def test_a_yaml_alias_bomb_is_quoted_without_expanding_it(tmp_path, data, run_copy, where):
    """9 ** 6 leaves: a full repr is megabytes (9 ** 8 took 1.44 GB); the quote stays under a megabyte."""
    bomb = _alias_bomb()
    if where == "finetune-config":
        config = tmp_path / "bomb.yaml"
        config.write_text(f"model: {{name: {bomb}}}\n")
        args = ["finetune", data, "--config", config, "--output", tmp_path / "run"]
        needle = "model.name"
    else:
        cfg = yaml.safe_load((run_copy / "config.yaml").read_text())
        cfg["model"] = "BOMB"
        (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg).replace("BOMB", bomb))
        args, needle = ["evaluate", run_copy], "'model'"
    result, peak = _peak_bytes(lambda: invoke(*args))
    assert_one_line_error(result, 2, needle)
    assert len(result.output) < 1000 and peak < 1_000_000, (len(result.output), peak)


def test_quote_is_bounded_and_escapes_control_characters():
    from cvkeras.serving.errors import printable, quote

    assert quote("daisy") == "'daisy'"
    assert "\x1b" not in quote("a\x1b[2Jb") and "\\x1b" in quote("a\x1b[2Jb")
    assert len(quote("x" * 10_000)) <= 80 and len(quote(list(range(10_000)))) <= 80
    assert printable("rose\n\x1b]0;pwned\x07\u202e") == "rose\\n\\x1b]0;pwned\\x07\\u202e"


MATH_NAMES = ["price_$5_$10", "a$\\frac{x$b", "c$^$d"]


def test_class_names_matplotlib_would_read_as_math_are_plotted_as_text(run_copy):
    """evaluate (like finetune's end) draws the class names; they are never parsed as mathtext."""
    (run_copy / "labels.txt").write_text("".join(f"{n}\n" for n in MATH_NAMES))
    doc = json.loads((run_copy / "split.json").read_text())
    doc["classes"] = MATH_NAMES
    (run_copy / "split.json").write_text(json.dumps(doc))
    (run_copy / "confusion_matrix.png").unlink()
    result = invoke("evaluate", run_copy)
    assert result.exit_code == 0, result.output
    assert (run_copy / "confusion_matrix.png").stat().st_size > 0


def test_plot_titles_with_dollar_signs_are_not_math(tmp_path):
    from cvkeras.analysis.plots import plot_confusion, plot_curves

    plot_confusion([[1, 0], [0, 1]], MATH_NAMES[:2], tmp_path / "cm.png", title=MATH_NAMES[1])
    (tmp_path / "history.csv").write_text("epoch,stage,loss,val_loss,accuracy,val_accuracy,learning_rate\n"
                                          "1,1,1.0,1.0,0.5,0.5,0.001\n")
    plot_curves(tmp_path / "history.csv", tmp_path / "curves.png", title=MATH_NAMES[0] + MATH_NAMES[1])
    assert (tmp_path / "cm.png").is_file() and (tmp_path / "curves.png").is_file()


# --- explain writes only into a folder it owns ------------------------------------------------------------

def _photos(tmp: Path, data: Path, names: tuple[str, ...] = ("flower.png", "photo.png")) -> Path:
    photos = tmp / "photos"
    photos.mkdir()
    for name, src in zip(names, sorted(data.rglob("*.png")), strict=False):
        shutil.copy(src, photos / name)
    return photos


@pytest.mark.parametrize("case", ["output-is-the-input-folder", "output-holds-user-pngs", "output-is-a-file",
                                  "output-is-the-run"])
def test_explain_never_writes_among_files_it_did_not_write(tmp_path, data, run_copy, case):
    photos = _photos(tmp_path, data)
    out = {"output-is-the-input-folder": photos, "output-is-the-run": run_copy,
           "output-holds-user-pngs": tmp_path / "mine", "output-is-a-file": tmp_path / "notes.txt"}[case]
    if case == "output-holds-user-pngs":
        out.mkdir()
        (out / "photo.png").write_bytes(b"my photo")
        (out / "contact_sheet.png").write_bytes(b"my sheet")
    if case == "output-is-a-file":
        out.write_text("mine\n")
    before, run_before = snapshot(tmp_path), snapshot(run_copy)
    result = invoke("explain", run_copy, photos, "-o", out)
    assert_one_line_error(result, 2, str(out))
    assert snapshot(tmp_path) == before and snapshot(run_copy) == run_before


def test_explain_names_never_collide_with_the_sheet_or_an_input(tmp_path, data, run_copy):
    photos = _photos(tmp_path, data, ("contact_sheet.jpg", "flower.png"))
    Image.open(photos / "contact_sheet.jpg").convert("RGB").save(photos / "contact_sheet.jpg", format="JPEG")
    out = tmp_path / "cams"
    result = invoke("explain", run_copy, photos, "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["contact_sheet-2.png", "contact_sheet.png", "flower.png"]
    again = invoke("explain", run_copy, photos, "-o", out)  # a folder explain wrote is its own to write again
    assert again.exit_code == 0, again.output
    default = invoke("explain", run_copy, photos)
    assert default.exit_code == 0 and (run_copy / "explain" / "flower.png").is_file(), default.output
    assert runfiles.foreign_entries(run_copy) == []  # RUN/explain stays recorded in the run's manifest


# --- class names with control characters are refused when read; nothing raw reaches the terminal ----------

ESC_LABEL = "rose\x1b]0;pwned\x07\x1b[2J"


def test_a_csv_label_with_a_newline_is_refused_with_its_row(tmp_path, data):
    rows = [f"{p},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    rows[2] = rows[2].split(",")[0] + ',"circle\nsquare"'
    csv_file = tmp_path / "data.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    result = invoke("finetune", csv_file, *QUICK, "--output", tmp_path / "run")
    assert_one_line_error(result, 2, "data.csv:3", "control character", "'circle\\nsquare'")
    assert not (tmp_path / "run").exists()


def test_a_class_folder_named_with_escape_sequences_is_refused_and_never_printed_raw(tmp_path):
    data = write_shapes(tmp_path / "shapes", per_class=3, size=32)
    (data / "square").rename(data / ESC_LABEL)
    result = invoke("finetune", data, *QUICK, "--output", tmp_path / "run")
    assert_one_line_error(result, 2, str(data), "control character")
    assert "\x1b" not in result.output and "\\x1b" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("labels, needle", [(["red", ESC_LABEL, "blue", "grey"], "control character"),
                                            (["red", "red", "blue", "grey"], "listed twice")],
                         ids=["escape-sequence", "duplicate"])
def test_bad_labels_in_model_metadata_are_one_line(tmp_path, labels, needle):
    from tests.support.serving_models import write_class_folder

    model = _serving_model(tmp_path, {"labels": labels})
    images = tmp_path / "imgs"
    write_class_folder(images, per_class=1)
    result = invoke("predict", model, images)
    assert_one_line_error(result, 2, str(model), needle)
    assert "\x1b" not in result.output


def test_predict_table_escapes_control_characters_in_file_names(tmp_path):
    model = _serving_model(tmp_path)
    photo = tmp_path / f"{ESC_LABEL}.png"
    Image.new("RGB", (20, 20), (200, 30, 30)).save(photo)
    result = invoke("predict", model, photo)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "rose\\x1b]0;pwned" in result.output


def test_class_names_differing_only_by_case_are_warned_about(tmp_path):
    from cvkeras.data.sources import scan_folder

    data = write_shapes(tmp_path / "shapes", per_class=3, size=32)
    (data / "square").rename(data / "Circle")
    split = scan_folder(data)
    assert any("differ only by case" in w and "'Circle' and 'circle'" in w for w in split.warnings), split.warnings


# --- a full disk: one line naming the file, exit 2, earlier files intact -----------------------------------

def _disk_full_at(monkeypatch, name: str) -> None:
    """Writing any file called ``name`` fails like a full disk: the write raises ENOSPC, naming no file."""
    replace = os.replace

    def full(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(runfiles.os, "replace", full)


@pytest.mark.parametrize("command, name", [
    (["evaluate"], "metrics.json"), (["report"], "report.html"), (["explain", "IMAGES", "-o", "OUT"], "flower.png"),
    (["export", "--format", "onnx"], "model.onnx"),
], ids=["evaluate", "report", "explain", "export"])
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, data, run_copy, monkeypatch, command, name):
    photos = _photos(tmp_path, data)
    out = tmp_path / "cams"
    args = [str(photos) if a == "IMAGES" else str(out) if a == "OUT" else a for a in command]
    before = snapshot(run_copy)
    _disk_full_at(monkeypatch, name)
    result = invoke(args[0], run_copy, *args[1:])
    assert_one_line_error(result, 2, name, "no space left")
    assert not out.exists()  # explain leaves no folder it made
    after = snapshot(run_copy)
    kept = {k: v for k, v in after.items() if k in before and k != runfiles.MARKER}  # the manifest may grow
    assert kept == {k: v for k, v in before.items() if k != runfiles.MARKER}  # nothing written earlier is damaged
    assert not [f for f in after if ".tmp" in f]


def test_a_full_disk_in_finetune_names_the_checkpoint_and_resume_knows_the_finished_epoch(tmp_path, data,
                                                                                         monkeypatch):
    import keras

    run = tmp_path / "run"
    _disk_full_at(monkeypatch, "last.keras")
    result = invoke("finetune", data, *QUICK, "--output", run)
    assert_one_line_error(result, 2, str(run / "checkpoints" / "last.keras"), "no space left")
    keras.saving.load_model(run / "best.keras", safe_mode=True)  # the finished epoch's model is complete
    monkeypatch.undo()
    resume = invoke("finetune", "--resume", "--output", run)
    assert_one_line_error(resume, 2, "epoch(s) 1-1 finished", "best.keras")
    assert "before its first epoch" not in resume.output


# --- smaller items ----------------------------------------------------------------------------------------

def test_a_failed_set_up_leaves_no_stub_run_directory(tmp_path, data):
    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"not an h5 file")
    run = tmp_path / "run"
    result = invoke("finetune", data, *QUICK, "--weights", weights, "--output", run)
    assert_one_line_error(result, 2, str(weights))
    assert not run.exists()  # the retry the error invites is not met by "run directory exists"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("finetune", data, *QUICK, "--weights", weights, "--output", empty)
    assert_one_line_error(result, 2, str(weights))
    assert empty.is_dir() and list(empty.iterdir()) == []  # a folder the user made stays, as it was


@pytest.mark.parametrize("command, target", [("export", "cvkeras.export.exporter.export_run"),
                                             ("evaluate", "cvkeras.analysis.evaluate.evaluate_run"),
                                             ("report", "cvkeras.analysis.report.write_report")])
def test_ctrl_c_is_one_line_and_exit_130(run_copy, monkeypatch, command, target):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    before = snapshot(run_copy)
    result = invoke(command, run_copy)
    assert_one_line_error(result, 130, "interrupted", f"cvkeras {command}")
    assert snapshot(run_copy) == before


def test_exporting_an_unfinished_run_warns_that_it_is_unfinished(run_copy):
    state_file = run_copy / "checkpoints" / "state.json"
    state = json.loads(state_file.read_text())
    finished = invoke("export", run_copy, "--format", "onnx")
    assert finished.exit_code == 0 and "did not finish" not in finished.output, finished.output
    state.update(finished=False, stage=2)  # Ctrl-C in stage 2
    state_file.write_text(json.dumps(state))
    result = invoke("export", run_copy, "--format", "onnx")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "did not finish" in result.stderr and "--resume" in result.stderr


def test_predict_on_a_named_pipe_is_an_error_entry_not_a_hang(tmp_path):
    import threading

    model = _serving_model(tmp_path)
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    box = {}
    worker = threading.Thread(target=lambda: box.update(result=invoke("predict", model, fifo, "--json")), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():  # unblock the open() so the thread ends, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("predict blocked opening a named pipe")
    result = box["result"]
    assert result.exit_code == 1 and "named pipe" in result.output and "Traceback" not in result.output


def test_predict_on_a_folder_lists_webp_and_tiff_files_it_classifies_by_name(tmp_path):
    model = _serving_model(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.webp", "c.tiff"):
        Image.new("RGB", (20, 20), (200, 30, 30)).save(folder / name)
    result = invoke("predict", model, folder, "--json")
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert sorted(Path(d["path"]).name for d in docs) == ["a.png", "b.webp", "c.tiff"]
    assert all("error" not in d or d["error"] is None for d in docs), docs


def test_a_csv_row_naming_a_folder_says_it_is_a_folder(tmp_path, data):
    rows = [f"{p},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    rows[1] = f"{data / 'circle'},circle"
    csv_file = tmp_path / "data.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    result = invoke("finetune", csv_file, *QUICK, "--output", tmp_path / "run")
    assert_one_line_error(result, 2, "data.csv:2", "is a folder")


def test_a_dangling_symlink_is_listed_as_skipped(tmp_path):
    from cvkeras.data.sources import scan_folder

    data = write_shapes(tmp_path / "shapes", per_class=4, size=32)
    (data / "circle" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    split = scan_folder(data)
    reasons = {Path(p).name: why for p, why in split.skipped}
    assert "broken symlink" in reasons["gone.png"]


def test_the_confusion_matrix_figure_is_bounded_for_many_classes():
    """200 classes drew a 20600 x 10200 px figure (4.2 GB of RAM); it is capped, with every k-th name shown."""
    from cvkeras.analysis.plots import CONFUSION_MAX_TICKS, confusion_figure

    classes = [f"class_{i:03d}" for i in range(200)]
    fig = confusion_figure(np.eye(200, dtype=int).tolist(), classes)
    width, height = fig.get_size_inches() * fig.dpi
    assert width * height <= 6_000 * 3_000, (width, height)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0] == "class_000" and len(labels) <= CONFUSION_MAX_TICKS

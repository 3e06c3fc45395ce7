"""End-to-end fine-tuning through the CLI and the public API on tiny images and tiny models."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.support.cli import TINY as TINY_FLAGS
from tests.support.cli import invoke
from tests.support.shapes import write_shapes

TINY = [*TINY_FLAGS, "--augment", "light"]

# MobileNet alpha 0.25: a far shorter network than MobileNetV2, it trains in half the time; none of these tests is
# about the backbone (MobileNetV2 is fine-tuned through the CLI in test_distill.py, and the export tests' run)


@pytest.mark.slow
def test_finetune_writes_a_complete_run_directory(tmp_path, shapes_dir):
    run = tmp_path / "run"
    result = invoke("finetune", str(shapes_dir), *TINY, "--epochs", "1", "--fine-tune-epochs", "1",
                    "--class-weights", "auto", "--output", str(run))
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "labels.txt", "split.json", "history.csv", "best.keras", "metrics.json",
                 "curves.png", "confusion_matrix.png", "checkpoints/last.keras", "checkpoints/state.json"):
        assert (run / name).is_file(), name
    assert not list(run.rglob("*.tmp*")), "temp files left behind"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["name"] == "mobilenet" and cfg["model"]["image_size"] == [32, 32]
    assert cfg["train"]["class_weights"] == "auto" and cfg["run"]["precision"] == "float32"
    assert (run / "labels.txt").read_text().split() == ["circle", "square", "triangle"]
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["stage"] for r in rows] == ["1", "2"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}
    assert np.asarray(metrics["confusion_matrix"]).sum() == metrics["n"] == 6
    assert "val accuracy" in result.output

    # evaluate recomputes the same report from best.keras
    again = invoke("evaluate", str(run))
    assert again.exit_code == 0
    assert json.loads((run / "metrics.json").read_text())["accuracy"] == pytest.approx(metrics["accuracy"])

    # never overwrite a run without --force
    refused = invoke("finetune", str(shapes_dir), *TINY, "--output", str(run))
    assert refused.exit_code == 2 and "--force" in refused.output

    # --config reads the run's config back; flags override it
    run2 = tmp_path / "run2"
    result = invoke("finetune", "--config", str(run / "config.yaml"), "--epochs", "1", "--fine-tune-epochs", "0",
                    "--output", str(run2))
    assert result.exit_code == 0, result.output
    cfg2 = yaml.safe_load((run2 / "config.yaml").read_text())
    assert cfg2["data"]["source"] == str(shapes_dir) and cfg2["train"]["fine_tune_epochs"] == 0
    assert cfg2["train"]["class_weights"] == "auto"


def test_bad_data_is_a_one_line_error_with_exit_2(tmp_path):
    one = write_shapes(tmp_path / "one", per_class=3, classes=("circle",))
    for data in (str(tmp_path / "missing"), str(one)):
        result = invoke("finetune", data, *TINY, "--output", str(tmp_path / "r"))
        assert result.exit_code == 2
        assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1
        assert "Traceback" not in result.output
    result = invoke("finetune", str(one), "--model", "resnet5")
    assert result.exit_code == 2 and "did you mean resnet50" in result.output


@pytest.mark.slow
def test_corrupt_files_are_skipped_and_reported(tmp_path):
    data = write_shapes(tmp_path / "d", per_class=6)
    (data / "circle" / "bad.jpg").write_bytes(b"garbage")
    run = tmp_path / "run"
    result = invoke("finetune", str(data), *TINY, "--epochs", "1", "--fine-tune-epochs", "0", "--output", str(run))
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable" in result.output
    assert "bad.jpg" in (run / "skipped.txt").read_text()


@pytest.mark.slow
def test_resume_after_the_process_is_killed(tmp_path, shapes_dir):
    """Kill a real training process after its first checkpoint; --resume finishes without redoing it."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cvkeras.cli", "finetune", str(shapes_dir), *TINY, "--epochs", "2",
           "--fine-tune-epochs", "2", "--output", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run / "checkpoints" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["global_epoch"] >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["global_epoch"]
    assert 1 <= done < 4
    assert not (run / "metrics.json").exists()
    result = invoke("finetune", "--resume", "--output", str(run))
    assert result.exit_code == 0, result.output
    final = json.loads(state.read_text())
    assert final["finished"] and final["global_epoch"] == 4
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert (run / "metrics.json").is_file()
    again = invoke("finetune", "--resume", "--output", str(run))  # a finished run is not trained further
    assert again.exit_code == 0 and json.loads(state.read_text())["global_epoch"] == 4


@pytest.mark.slow
def test_mixed_precision_with_xla_trains_and_saves_a_float32_model(tmp_path, shapes_dir):
    import keras

    run = tmp_path / "run"
    # two full batches of 8: one XLA compilation of the train step (a last batch of 6 would compile another)
    result = invoke("finetune", str(shapes_dir), *TINY, "--epochs", "1", "--fine-tune-epochs", "0",
                    "--steps-per-epoch", "2", "--precision", "mixed_bfloat16", "--jit", "--output", str(run))
    assert result.exit_code == 0, result.output
    assert keras.mixed_precision.global_policy().name == "float32", "training leaked its dtype policy"
    model = keras.saving.load_model(run / "best.keras", safe_mode=True)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["run"]["precision"] == "mixed_bfloat16" and cfg["train"]["jit"] is True


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(tmp_path, shapes_dir):
    run = tmp_path / "run"
    env = {**os.environ, "CVKERAS_CPU_DEVICES": "2"}
    out = subprocess.run(
        [sys.executable, "-m", "cvkeras.cli", "finetune", str(shapes_dir), *TINY, "--epochs", "1",
         "--fine-tune-epochs", "1", "--strategy", "mirrored", "--output", str(run)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["replicas"] == 2
    assert (run / "best.keras").is_file()


@pytest.mark.slow
def test_mixup_cutmix_randaugment_and_tfds_source(tmp_path):
    import tensorflow_datasets as tfds

    run = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=16):
        result = invoke("finetune", "tfds:tf_flowers", *TINY, "--epochs", "1", "--fine-tune-epochs", "0",
                        "--mixup", "0.2", "--cutmix", "1.0", "--randaugment", "--output", str(run))
    assert result.exit_code == 0, result.output
    assert (run / "labels.txt").read_text().split() == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]
    assert json.loads((run / "split.json").read_text())["source"] == "tfds"


def test_cli_help_does_not_import_tensorflow():
    code = "import sys; from cvkeras.cli import app; assert 'tensorflow' not in sys.modules, 'tf imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_local_workers_train_in_sync(tmp_path, shapes_dir):
    """MultiWorkerMirroredStrategy from TF_CONFIG: two processes on 127.0.0.1 end with equal weights."""
    import keras

    from cvkeras.models.build import build_backbone
    from cvkeras.models.registry import get

    # a "pretrained" backbone file, as users pass with --weights PATH: BatchNorm is then frozen, so every
    # weight, trainable or not, must end identical on both workers
    weights = tmp_path / "backbone.weights.h5"
    build_backbone(get("mobilenet"), (32, 32), 0.25, None).save_weights(weights)
    args = [a if a != "none" else str(weights) for a in TINY]
    run = tmp_path / "run"
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = {**os.environ,
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "cvkeras.cli", "finetune", str(shapes_dir), *args, "--epochs", "1",
             "--fine-tune-epochs", "1", "--strategy", "multi-worker", "--steps-per-epoch", "2",
             "--output", str(run)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-1500:] + outputs[1][-1500:]
    worker_run = tmp_path / ".run-worker1"
    assert (run / "best.keras").is_file() and (worker_run / "checkpoints" / "last.keras").is_file()
    chief = keras.saving.load_model(run / "checkpoints" / "last.keras", safe_mode=True)
    other = keras.saving.load_model(worker_run / "checkpoints" / "last.keras", safe_mode=True)
    for a, b in zip(chief.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["stage"] for r in rows] == ["1", "2"] and all(r["val_accuracy"] for r in rows)
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["replicas"] == 2
    # only the chief writes the run (docs/cluster.md): every file in it is one the chief recorded writing,
    # and the other worker wrote nothing outside its own folder
    from cvkeras.run.files import foreign_entries

    assert foreign_entries(run) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".run-worker1", "backbone.weights.h5", "run",
                                                                 "shapes"])
    assert f"Results saved to {run}" in outputs[0] and f"Results saved to {run}" not in outputs[1]


def test_bad_options_and_unsafe_outputs_fail_before_any_file_is_written(tmp_path, shapes_dir):
    before = sorted(p.name for p in shapes_dir.rglob("*"))
    # --force replaces earlier runs only, never a folder that is not a run (here: the dataset itself)
    result = invoke("finetune", str(shapes_dir), *TINY, "--output", str(shapes_dir), "--force")
    assert result.exit_code == 2 and "holds the data" in result.output
    assert sorted(p.name for p in shapes_dir.rglob("*")) == before
    for flag, value, message in [("--unfreeze", "1.5", "--unfreeze"), ("--augment", "wild", "--augment"),
                                 ("--optimizer", "lion", "--optimizer"), ("--batch-size", "0", "--batch-size"),
                                 ("--image-size", "16", "minimum")]:
        run = tmp_path / f"run{flag}"
        result = invoke("finetune", str(shapes_dir), *TINY, flag, value, "--output", str(run))
        assert result.exit_code == 2 and message in result.output, (flag, result.output)
        assert not run.exists(), flag

"""The device side never needs TensorFlow: checked in a clean subprocess and in a fresh virtualenv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.serving_models import make_onnx, photo

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "keras", "tf2onnx", "tensorflow_datasets", "onnx", "ai_edge_litert")


@pytest.fixture
def model_and_image(tmp_path):
    model = make_onnx(tmp_path / "model.onnx")
    img = tmp_path / "img.png"
    Image.fromarray(photo(2, np.random.default_rng(5))).save(img)  # a blue "photo"
    return model, img


def test_serving_imports_no_tensorflow(model_and_image, tmp_path):
    model, img = model_and_image
    code = textwrap.dedent(f"""
        import json, sys
        from cvkeras import serving
        assert "onnxruntime" not in sys.modules, "import serving must stay cheap"
        import cvkeras.serving.benchmark, cvkeras.serving.cli, cvkeras.serving.predictor, cvkeras.serving.validate
        import typer
        from typer.testing import CliRunner
        r = serving.Predictor.load({str(model)!r}).predict({str(img)!r})
        app = typer.Typer()
        app.command()(cvkeras.serving.cli.predict)
        app.command()(cvkeras.serving.cli.validate)
        out = CliRunner().invoke(app, ["predict", {str(model)!r}, {str(img)!r}, "--json"])
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
        print(json.dumps({{"label": r.label, "cli": out.stdout, "code": out.exit_code, "heavy": heavy}}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert out["label"] == "blue" and out["code"] == 0
    assert json.loads(out["cli"])["label"] == "blue"


@pytest.mark.slow
def test_core_install_without_train_extra_runs_predict(model_and_image, tmp_path):
    """pip install the core distribution (no extras) into a fresh venv and run `cvkeras predict` there."""
    model, img = model_and_image
    if not (REPO / "cvkeras" / "cli" / "__init__.py").is_file():
        pytest.fail("cvkeras/cli/__init__.py (the console script cvkeras.cli:main) does not exist yet")
    src = tmp_path / "src"  # a copy, so building never writes into the working tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for pkg in ("cvkeras", "export", "serving"):
        if (REPO / pkg).is_dir():
            shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, clear=True)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    cmd = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)]
    pip = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    offline = ("No matching distribution", "Failed to establish")
    if pip.returncode != 0 and any(s in pip.stderr for s in offline):
        pytest.skip(f"no package index reachable: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr[-3000:]
    probe = subprocess.run([str(bin_dir / "python"), "-c", "import tensorflow"], capture_output=True, env=env)
    assert probe.returncode != 0, "the core install must not pull in TensorFlow"
    run = subprocess.run([str(bin_dir / "cvkeras"), "predict", str(model), str(img), "--json"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    row = json.loads(run.stdout.strip().splitlines()[-1])
    assert row["path"] == str(img) and row["label"] == "blue" and 0.5 < row["score"] <= 1.0

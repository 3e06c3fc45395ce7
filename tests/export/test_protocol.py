"""Issue #22 end to end through the CLI: a `train/` + `val/` layout whose files are numbered separately (every
name repeats), a test split set aside and evaluated once, and an export checked against exactly its own rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.cli import TINY as TINY_FLAGS
from tests.support.cli import invoke

TINY = [*TINY_FLAGS, "--augment", "light"]


def _repeated_names(root: Path, per_class: int = 10) -> Path:
    """root/train/<class>/000.png ... and root/val/<class>/000.png ...: different photos, the same names."""
    from cvkeras.data.demo import draw_shape

    rng = np.random.default_rng(7)
    for split, n in (("train", per_class), ("val", per_class // 2)):
        for kind in ("circle", "square", "triangle"):
            (root / split / kind).mkdir(parents=True)
            for i in range(n):
                draw_shape(kind, rng, 40).save(root / split / kind / f"{i:03d}.png")
    return root


@pytest.mark.slow
def test_train_val_layout_with_repeated_names_and_a_test_split(tmp_path):
    data = _repeated_names(tmp_path / "data")
    run = tmp_path / "run"
    done = invoke("finetune", data, *TINY, "--epochs", "1", "--fine-tune-epochs", "0", "--test-split", "0.2",
                "--output", run)
    assert done.exit_code == 0, done.output
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 15 and len(split["test"]) == 9 and len(split["train"]) == 21  # 20 % of all 45
    assert not {p for p, _ in split["test"]} & {p for p, _ in split["train"]}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["measured_on"] == {"images": "validation (selection: the best epoch was chosen on it)",
                                      "n": 15, "selection": True}
    assert metrics["test"]["n"] == 9 and metrics["test"]["measured_on"]["selection"] is False
    assert "selection figure" in done.output and "test accuracy" in done.output
    assert "test accuracy (evaluated once" in (run / "report.html").read_text()

    # float32 must match Keras exactly although train/circle/000.png and val/circle/000.png share a key
    # "circle/000.png" (on the previous code the val rows were paired with the training photos: max |dp| ~ 0.9)
    exported = invoke("export", run, "--format", "onnx", "--threads", "1")
    assert exported.exit_code == 0, exported.output
    row = json.loads((run / "export" / "export_report.json").read_text())["artifacts"][0]
    assert row["status"] == "passed" and row["max_abs_diff"] <= 1e-4 and row["n_reference"] == 15
    with np.load(run / "export" / "reference.npz") as z:
        paths = [str(p) for p in z["paths"]]
    assert "val/circle/000.png" in paths and "train/circle/000.png" in paths and len(set(paths)) == len(paths)
    checked = invoke("validate", run / "export" / "model.onnx", "--json", "--threads", "1")
    assert checked.exit_code == 0, checked.output
    got = json.loads(checked.stdout)
    assert got["n"] == 15 and got["max_abs_diff"] == row["max_abs_diff"] and got["agreement"] == 1.0

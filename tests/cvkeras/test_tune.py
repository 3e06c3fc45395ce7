"""`cvkeras tune`: the search space, the summary files, bad input, and a search end to end through the CLI."""

from __future__ import annotations

import csv
import json
import os

import pytest
from typer.testing import CliRunner

from cvkeras.cli import app
from cvkeras.run.config import FinetuneConfig
from tests.support.cli import invoke
from tests.support.shapes import write_shapes


def test_flags_given_are_fixed_and_the_rest_is_searched():
    import keras_tuner as kt

    from cvkeras.search.tune import KNOBS, search_space, trial_config

    hp = kt.HyperParameters()
    values = search_space(hp, fixed=set(), pretrained=True)
    assert set(values) == set(KNOBS)
    hp = kt.HyperParameters()
    values = search_space(hp, fixed={"learning_rate", "mixup", "augment"}, pretrained=False)
    assert set(values) == set(KNOBS) - {"learning_rate", "mix", "augment", "unfreeze"}
    cfg = trial_config(FinetuneConfig(data="x", learning_rate=0.5), {"mix": "cutmix", "dropout": 0.30000000004})
    assert (cfg.learning_rate, cfg.mixup, cfg.cutmix, cfg.dropout) == (0.5, 0.0, 1.0, 0.3)


def test_summary_writes_csv_plot_and_a_best_link_that_follows_the_objective(tmp_path):
    from cvkeras.search.tune_summary import BEST, CSV, PLOT, TRIALS, TrialRecord, record_trial, write_summary

    (tmp_path / TRIALS).mkdir()
    for t, status, score in (("0", "ok", 0.5), ("1", "failed", None), ("2", "ok", 0.75), ("3", "ok", 0.6)):
        (tmp_path / TRIALS / f"trial_00{t}").mkdir()
        record_trial(tmp_path, TrialRecord(t, status, score, 1.0, f"trial_00{t}", {"dropout": 0.1},
                                      "boom" if status == "failed" else ""))
    best = write_summary(tmp_path, "val_accuracy")
    assert best.trial == "2" and os.readlink(tmp_path / BEST) == os.path.join(TRIALS, "trial_002")
    rows = list(csv.DictReader((tmp_path / CSV).open()))
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "ok"] and rows[1]["error"] == "boom"
    assert (tmp_path / PLOT).stat().st_size > 1000
    assert write_summary(tmp_path, "val_cross_entropy").trial == "0"  # minimised: the lowest wins


def test_bad_tune_input_is_a_one_line_error(tmp_path):
    data = write_shapes(tmp_path / "d", per_class=4, size=32)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases = [
        (["--objective", "loss"], "unknown --objective"),
        (["--max-trials", "0"], "--max-trials must be at least 1"),
        (["--time-budget", "-1"], "--time-budget must be a positive"),
        (["--lr", "-1"], "--lr must be above 0"),
        (["-o", str(busy)], "exists and is not empty"),
    ]
    for extra, message in cases:
        out = ["-o", str(tmp_path / "t")] if "-o" not in extra else []
        result = invoke("tune", str(data), "--weights", "none", *out, *extra)
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "t").exists()
    resumed = invoke("tune", "--resume", "-o", str(busy))
    assert resumed.exit_code == 2 and "not a `cvkeras tune` directory" in resumed.output
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_tune_end_to_end_with_a_failed_trial_resume_and_export_of_best(tmp_path, monkeypatch):
    import cvkeras.train.trainer
    from cvkeras.run import rundir
    from cvkeras.train.stages import TrainingDivergedError

    data = write_shapes(tmp_path / "shapes", per_class=8, size=40)
    real = cvkeras.train.trainer.finetune
    calls = []

    def first_diverges(cfg, **kw):  # trial 0 fails as a NaN loss would; the search must go on
        calls.append((cfg, kw["output"]))
        if len(calls) != 2:  # the resumed trial too: only the resume's bookkeeping is checked, not training again
            raise TrainingDivergedError("the loss became NaN or infinite at batch 1 of epoch 1")
        return real(cfg, **kw)

    monkeypatch.setattr(cvkeras.train.trainer, "finetune", first_diverges)
    run = tmp_path / "tune"
    quick = ["-m", "mobilenet", "--alpha", "0.25", "--image-size", "32", "--weights", "none", "--batch-size", "8",
             "--epochs", "1", "--fine-tune-epochs", "0", "--steps-per-epoch", "1", "--augment", "light"]
    result = CliRunner().invoke(app, ["tune", str(data), *quick, "--max-trials", "2", "--algorithm", "random",
                                      "-o", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "trial 0: failed" in result.output and "Best: trial 1" in result.output
    assert "selection figure" in result.output  # issue #22.7: the best trial's score was chosen on validation
    rows = list(csv.DictReader((run / "tune.csv").open()))
    assert [(r["trial"], r["status"]) for r in rows] == [("0", "failed"), ("1", "ok")]
    assert "NaN" in rows[0]["error"] and "augment" not in rows[0]  # a flag given is fixed, not searched
    assert (run / "tune.png").is_file() and os.readlink(run / "best") == os.path.join("trials", "trial_001")

    # --resume continues the same search up to the new --max-trials: one more trial, nothing redone
    again = invoke("tune", "--resume", "-o", str(run), "--max-trials", "3",
                               catch_exceptions=False)
    assert again.exit_code == 0, again.output
    rows = list(csv.DictReader((run / "tune.csv").open()))
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and len(calls) == 3
    assert [r["status"] for r in rows] == ["failed", "ok", "failed"] and os.readlink(run / "best").endswith("_001")
    cfg, output = calls[2]  # the new trial got a full config of the same search and its own folder
    assert cfg.data == str(data) and cfg.augment == "light" and os.path.basename(output) == "trial_002"

    # the best trial is an ordinary run: its config replays, and `cvkeras export RUN/best` works
    best = run / "best"
    cfg = FinetuneConfig.from_dict(rundir.read_config(best / "config.yaml"))
    rec = json.loads((run / "trials" / f"{os.readlink(best).split('/')[-1]}.json").read_text())
    assert cfg.learning_rate == pytest.approx(rec["values"]["learning_rate"]) and cfg.augment == "light"
    exported = invoke("export", str(best), "--format", "onnx", catch_exceptions=False)  # one format suffices
    assert exported.exit_code == 0, exported.output
    assert (best / "export" / "model.onnx").is_file()


def test_time_budget_stops_new_trials_and_resume_goes_on_to_the_best(tmp_path):
    """The search loop with a stand-in trainer (objective = the trial's learning rate): no TensorFlow training."""
    from types import SimpleNamespace

    from cvkeras.search.tune import tune

    def train(cfg, output, **kw):
        os.makedirs(output, exist_ok=True)
        return SimpleNamespace(metrics={"accuracy": cfg.learning_rate})

    data = write_shapes(tmp_path / "d", per_class=4, size=32)
    base = FinetuneConfig(data=str(data), model="mobilenet", alpha=0.25, image_size=[32, 32], weights="none")
    lines: list[str] = []
    records = tune(base, tmp_path / "t", 3, {"model"}, algorithm="random", time_budget_min=1e-9,
                   log=lines.append, train=train)
    assert records == [] and any("time budget" in line for line in lines)
    records = tune(base, tmp_path / "t", 3, set(), resume=True, log=lines.append, train=train)
    assert [r.status for r in records] == ["ok"] * 3
    assert [r.objective for r in records] == sorted((r.objective for r in records), reverse=True)
    assert os.readlink(tmp_path / "t" / "best") == os.path.join("trials", f"trial_00{records[0].trial}")

"""The training recipe: the rules that resolve ``auto`` settings (pure, fast) and what a run records."""

from __future__ import annotations

import csv
import math

import pytest
import yaml
from typer.testing import CliRunner

from cvkeras.cli import app
from cvkeras.run.config import FinetuneConfig, placeholder
from cvkeras.train import recipe
from cvkeras.train.recipe import MIN_EPOCH_STEPS, STEP_FLOOR, resolve
from tests.support.cli import invoke


@pytest.mark.parametrize("n_train", [10, 50, 200, 245, 640, 2935, 20000])
def test_every_stage_gets_at_least_the_step_floor_and_small_sets_repeat_within_an_epoch(n_train) -> None:
    r = resolve(FinetuneConfig(), n_train=n_train, num_classes=5)
    one_pass = math.ceil(n_train / 32)
    assert r.steps_per_epoch == max(one_pass, MIN_EPOCH_STEPS) == r.config.epoch_steps
    for epochs in (r.config.epochs, r.config.fine_tune_epochs):
        assert epochs * r.steps_per_epoch >= STEP_FLOOR
        assert epochs >= recipe.BASE_EPOCHS
        # no more than one epoch past the floor, unless BASE_EPOCHS passes are needed anyway
        assert epochs == recipe.BASE_EPOCHS or (epochs - 1) * r.steps_per_epoch < STEP_FLOOR
    assert r.record()["stage_steps"] == [r.config.epochs * r.steps_per_epoch] * 2


def test_large_sets_train_base_epochs_of_one_pass() -> None:
    r = resolve(FinetuneConfig(), n_train=2935, num_classes=5)
    assert (r.config.epochs, r.config.fine_tune_epochs, r.steps_per_epoch) == (8, 8, 92)
    assert r.config.augment == "light"


def test_augmentation_strength_follows_images_per_class() -> None:
    assert resolve(FinetuneConfig(), n_train=99 * 3, num_classes=3).config.augment == "medium"
    assert resolve(FinetuneConfig(), n_train=100 * 3, num_classes=3).config.augment == "light"
    assert resolve(FinetuneConfig(augment="heavy"), n_train=30, num_classes=3).config.augment == "heavy"


def test_learning_rates_follow_the_batch_size() -> None:
    lr = {b: resolve(FinetuneConfig(batch_size=b), 1000, 4).config for b in (8, 32, 128)}
    assert lr[32].learning_rate == recipe.REFERENCE_LR["adamw"][0]
    assert lr[32].fine_tune_learning_rate == recipe.REFERENCE_LR["adamw"][1]
    assert lr[128].learning_rate == pytest.approx(2 * lr[32].learning_rate)  # sqrt(4) for AdamW
    assert lr[8].learning_rate == pytest.approx(lr[32].learning_rate / 2)
    sgd = {b: resolve(FinetuneConfig(batch_size=b, optimizer="sgd"), 1000, 4).config for b in (32, 128)}
    assert sgd[128].learning_rate == pytest.approx(4 * sgd[32].learning_rate)  # linear for SGD


def test_explicit_settings_win_and_explicit_epochs_mean_passes() -> None:
    cfg = FinetuneConfig(epochs=3, fine_tune_epochs=2, learning_rate=0.01, fine_tune_learning_rate=0.001,
                         augment="none")
    r = resolve(cfg, n_train=50, num_classes=5)
    assert r.auto == ("epoch_steps",)  # the default, which with explicit epochs is one pass
    assert (r.config.epochs, r.config.fine_tune_epochs, r.config.learning_rate, r.config.augment) == (3, 2, 0.01,
                                                                                                      "none")
    assert r.steps_per_epoch == 2  # one pass: the recipe lengthens epochs only when it picks their number
    fixed = resolve(FinetuneConfig(**{**cfg.__dict__, "epoch_steps": 2}), n_train=50, num_classes=5)
    assert fixed.auto == () and "nothing auto" in fixed.summary()
    half = resolve(FinetuneConfig(epochs=0), n_train=50, num_classes=5).config
    assert half.epochs == 0 and half.epoch_steps == 2 and half.fine_tune_epochs == 100  # 200 steps of 2
    assert resolve(FinetuneConfig(epoch_steps=7), n_train=50, num_classes=5).steps_per_epoch == 7


def test_the_step_cap_is_what_the_record_counts() -> None:
    r = resolve(FinetuneConfig(steps_per_epoch=3), n_train=50, num_classes=5)
    assert r.config.epoch_steps == 20 and r.steps_per_epoch == 3
    assert r.record()["stage_steps"] == [r.config.epochs * 3] * 2


def test_resolving_is_idempotent_and_leaves_no_auto() -> None:
    r = resolve(FinetuneConfig(), n_train=123, num_classes=4)
    assert not any(recipe.is_auto(getattr(r.config, name)) for name in recipe.AUTO_FIELDS)
    assert set(r.auto) == set(recipe.AUTO_FIELDS)
    again = resolve(r.config, n_train=123, num_classes=4)
    assert again.config == r.config and again.auto == ()
    assert FinetuneConfig.from_dict(r.config.to_dict()) == r.config


def test_auto_survives_config_yaml_and_placeholders_are_valid() -> None:
    doc = yaml.safe_load(yaml.safe_dump(FinetuneConfig().to_dict()))
    cfg = FinetuneConfig.from_dict(doc)
    assert cfg.learning_rate == "auto" and cfg.epochs == "auto"
    from cvkeras.train.trainer import validate_config

    validate_config(cfg)  # auto passes the range checks before the data is known
    assert not any(recipe.is_auto(getattr(placeholder(cfg), n)) for n in recipe.AUTO_FIELDS)
    with pytest.raises(ValueError, match="--epoch-steps"):
        validate_config(FinetuneConfig(epoch_steps=0))
    with pytest.raises(ValueError, match="at least one training image"):
        resolve(FinetuneConfig(), n_train=0, num_classes=3)


@pytest.mark.slow
def test_a_finetune_records_what_auto_resolved_to_and_a_replay_repeats_it(tmp_path, shapes_dir) -> None:
    run = tmp_path / "run"
    # MobileNet alpha 0.25: half MobileNetV2's training time; the recipe does not depend on the backbone
    tiny = ["--model", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "32",
            "--batch-size", "8", "--steps-per-epoch", "1", "--patience", "0"]
    result = invoke("finetune", str(shapes_dir), *tiny, "--output", str(run),
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load((run / "config.yaml").read_text())
    rec = doc["run"]["recipe"]
    n_train = rec["inputs"]["n_train"]
    assert rec["inputs"]["num_classes"] == 3 and n_train == 30  # 36 shapes, 6 for validation
    assert set(rec["auto"]) == set(recipe.AUTO_FIELDS)
    expected = resolve(FinetuneConfig(batch_size=8, steps_per_epoch=1), n_train=30, num_classes=3)
    assert rec["resolved"] == {n: getattr(expected.config, n) for n in recipe.AUTO_FIELDS}
    assert rec["steps_per_epoch"] == 1 and rec["resolved"]["epoch_steps"] == MIN_EPOCH_STEPS
    assert rec["resolved"]["augment"] == "medium"  # 10 images per class
    # the config sections hold the resolved numbers, so a replay or --resume repeats exactly this run
    for name in ("epochs", "fine_tune_epochs", "epoch_steps", "learning_rate", "fine_tune_learning_rate"):
        assert doc["train"][name] == rec["resolved"][name], name
    assert doc["data"]["augment"] == "medium"
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == rec["resolved"]["epochs"] + rec["resolved"]["fine_tune_epochs"]
    assert float(rows[0]["learning_rate_first_step"]) < rec["resolved"]["learning_rate"]  # warm-up
    assert "recipe" in result.output and "auto:" in result.output

    replay = tmp_path / "replay"
    again = CliRunner().invoke(app, ["finetune", "--config", str(run / "config.yaml"), "--epochs", "1",
                                     "--fine-tune-epochs", "1", "--output", str(replay)], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    doc2 = yaml.safe_load((replay / "config.yaml").read_text())
    assert doc2["run"]["recipe"]["auto"] == []
    assert doc2["train"]["learning_rate"] == doc["train"]["learning_rate"]
    assert doc2["train"]["epoch_steps"] == MIN_EPOCH_STEPS and doc2["data"]["augment"] == "medium"

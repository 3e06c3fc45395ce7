"""Silent ML-correctness bugs (issue 15): nothing crashes, but the figures would be wrong.

Each test checks a number against an independent recomputation; all run on tiny images and models.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from cvkeras.run.config import FinetuneConfig
from cvkeras.train import optim
from tests.support.shapes import write_shapes

# MobileNet alpha 0.25 trains in half MobileNetV2's time; the training tests are not about the backbone
TINY = dict(model="mobilenet", alpha=0.25, weights="none", image_size=[32, 32], batch_size=8, augment="light",
            precision="float32", strategy="none")


def _history(run) -> list[dict[str, str]]:
    return list(csv.DictReader(open(run / "history.csv")))


def _smoothed_ce(probs: np.ndarray, labels: np.ndarray, smoothing: float) -> float:
    """Keras' CategoricalCrossentropy(label_smoothing) by hand."""
    c = probs.shape[1]
    y = np.eye(c)[labels] * (1 - smoothing) + smoothing / c
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(np.mean(-(y * np.log(p)).sum(axis=1)))


# --- 1. the file cache ------------------------------------------------------------------------------
def test_file_cache_keeps_splits_and_runs_apart(tmp_path):
    """History's val figures are the validation images' own, also with --cache PATH shared by two runs."""
    from cvkeras.data.pipeline import load_split_images
    from cvkeras.models.build import load_model
    from cvkeras.train.trainer import finetune

    prefix = tmp_path / "cache" / "c"
    prefix.parent.mkdir()
    for i, seed in enumerate((0, 1)):  # two datasets, one prefix
        data = write_shapes(tmp_path / f"d{i}", per_class=8, seed=seed)
        run = tmp_path / f"run{i}"
        finetune(FinetuneConfig(data=str(data), epochs=1, fine_tune_epochs=0, cache=str(prefix), **TINY),
                 output=str(run), verbose=0)
        row = _history(run)[-1]
        images, labels, _ = load_split_images(run, "val")
        probs = load_model(run / "best.keras").predict(images.astype("float32"), verbose=0)
        assert float(row["val_accuracy"]) == pytest.approx(float((probs.argmax(1) == labels).mean()))
        assert float(row["val_loss"]) == pytest.approx(_smoothed_ce(probs, labels, 0.1), rel=1e-4)
    assert len({p.name.split(".")[0] for p in prefix.parent.glob("c-*.index")}) == 4  # 2 splits x 2 runs


# --- 2. the float32 copy is the trained network, for every family ------------------------------------
FAMILIES = [  # the smallest row of each registry family, at a small input
    ("convnext_tiny", None, 32), ("densenet121", None, 32), ("efficientnet_b0", None, 32),
    ("efficientnet_v2_b0", None, 32), ("inception_v3", None, 75), ("mobilenet", 0.25, 32),
    ("mobilenet_v2", 0.35, 32), ("mobilenet_v3_small", 0.75, 32), ("nasnet_mobile", None, 224),
    ("resnet50", None, 32), ("resnet50_v2", None, 32), ("vgg16", None, 32), ("xception", None, 71),
]
QUICK = {"efficientnet_b0", "mobilenet_v2"}


def test_families_cover_the_registry():
    from cvkeras.models.registry import REGISTRY

    assert {REGISTRY[name].family for name, _, _ in FAMILIES} == {spec.family for spec in REGISTRY.values()}


@pytest.mark.parametrize(("name", "alpha", "size"), [
    pytest.param(*row, marks=() if row[0] in QUICK else pytest.mark.slow, id=row[0]) for row in FAMILIES])
def test_float32_copy_is_the_trained_network(name, alpha, size, tmp_path, monkeypatch):
    """``weights="imagenet"`` (served from a file the test writes) vs the copy saved as best.keras."""
    import keras

    from cvkeras.models.build import build_backbone, build_classifier, to_float32
    from cvkeras.models.registry import get

    spec = get(name)
    donor = tmp_path / "donor.weights.h5"
    build_backbone(spec, (size, size), alpha, None).save_weights(donor)
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: str(donor))
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", lambda *a, **k: str(donor))
    trained = build_classifier(name, 3, (size, size), alpha, weights="imagenet")
    copy = to_float32(trained, name, 3, (size, size), alpha, 0.2)
    kinds = [type(layer).__name__ for layer in trained.get_layer("backbone").layers]
    assert [type(layer).__name__ for layer in copy.get_layer("backbone").layers] == kinds
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    np.testing.assert_allclose(copy.predict(x, verbose=0), trained.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_float32_copy_of_a_mixed_precision_model_computes_in_float32():
    import keras

    from cvkeras.models.build import build_classifier, to_float32

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        trained = build_classifier("efficientnet_b0", 3, (32, 32), weights="none")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    copy = to_float32(trained, "efficientnet_b0", 3, (32, 32), None, 0.2)
    layers = [copy, *copy.layers, *copy.get_layer("backbone").layers]
    assert {layer.dtype_policy.name for layer in layers} == {"float32"}
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(copy.predict(x, verbose=0), trained.predict(x, verbose=0), atol=0.02)


# --- 4, 8. weight decay ------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_weight_decay_shrinks_weights_but_not_biases_or_norms(optimizer):
    """A zero-gradient step leaves only the decay: kernels x (1 - lr wd); biases, BN gamma/beta untouched."""
    from cvkeras.models.build import build_classifier, set_trainable
    from cvkeras.train.optim import compile_model

    model = build_classifier("mobilenet_v2", 3, (32, 32), alpha=0.35, weights="none")
    set_trainable(model, 2, "all", freeze_bn=False)
    cfg = FinetuneConfig(optimizer=optimizer, weight_decay=0.05, warmup_epochs=0)
    lr = 0.01
    compile_model(model, cfg, lr, steps_per_epoch=10, epochs=1, num_classes=3)
    variables = model.trainable_variables
    before = [np.array(v) for v in variables]
    model.optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in variables])
    seen = set()
    for v, b in zip(variables, before, strict=True):
        kind = v.name.split("/")[-1]
        seen.add(kind)
        if kind in ("bias", "gamma", "beta"):
            np.testing.assert_array_equal(np.array(v), b, err_msg=v.path)
        else:
            np.testing.assert_allclose(np.array(v), b * (1 - lr * 0.05), rtol=1e-6, err_msg=v.path)
    assert {"kernel", "bias", "gamma", "beta"} <= seen


def test_default_weight_decay_is_not_negligible():
    """The per-step decay at the stage-1 peak rate: 1e-4 x 1e-3 = 1e-7 was effectively off."""
    from cvkeras.train.recipe import resolve

    cfg = resolve(FinetuneConfig(), n_train=1000, num_classes=5).config  # the default rate is auto
    assert cfg.weight_decay * cfg.learning_rate >= 1e-5


# --- 5. class weights --------------------------------------------------------------------------------
def test_a_mixed_image_is_weighted_by_its_mix():
    import tensorflow as tf

    from cvkeras.train.optim import class_weights, with_sample_weights

    weights = class_weights([90, 10], "auto")  # 0.556 and 5.0
    labels = tf.constant([[0.51, 0.49], [0.49, 0.51], [1.0, 0.0]])
    ds = tf.data.Dataset.from_tensors((tf.zeros([3, 4, 4, 3]), labels))
    _, _, w = next(iter(with_sample_weights(ds, weights, 2)))
    expected = labels.numpy() @ np.array([weights[0], weights[1]])
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    assert abs(w.numpy()[0] - w.numpy()[1]) < 0.2  # two near-equal mixes weigh nearly the same


@pytest.mark.slow
def test_class_weights_with_a_tfds_source_and_mixup(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    import cvkeras.train.datasets as datasets
    import cvkeras.train.trainer as train

    calls = []
    real = datasets.class_weights
    monkeypatch.setattr(datasets, "class_weights", lambda counts, mode: calls.append(counts) or real(counts, mode))
    with tfds.testing.mock_data(num_examples=16):
        train.finetune(FinetuneConfig(data="tfds:tf_flowers", epochs=1, fine_tune_epochs=0, mixup=0.4,
                                      class_weights="auto", **TINY), output=str(tmp_path / "run"), verbose=0)
    assert len(calls) == 1 and len(calls[0]) == 5 and sum(calls[0]) > 0  # counted, not dropped


# --- 6. the frozen backbone's dropout ----------------------------------------------------------------
def test_frozen_backbone_features_do_not_change_between_training_calls():
    import keras
    import tensorflow as tf

    from cvkeras.models.build import build_classifier, set_trainable

    model = build_classifier("efficientnet_b0", 3, (32, 32), weights="none")
    features = keras.Model(model.input, model.get_layer("pool").output)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")

    def spread() -> float:
        step = tf.function(lambda x: features(x, training=True))  # traced per stage, as fit's train step
        a, b = np.asarray(step(x)), np.asarray(step(x))
        return float(np.abs(a - b).max() / np.abs(a).max())

    set_trainable(model, 1)
    assert spread() < 1e-5, "dropout runs inside the frozen stage-1 backbone"
    set_trainable(model, 2, "all")
    assert spread() > 1e-2, "an unfrozen backbone's dropout should train"


# --- 7, 9, 10. from scratch, stage transition, history ----------------------------------------------
def test_stage_two_from_best_weights_history_lr_and_from_scratch(tmp_path, shapes_dir, monkeypatch):
    import keras

    import cvkeras.train.trainer as train

    fake = iter([0.9, 0.1])  # stage 1: epoch 1 best, epoch 2 worse -> stops early (patience 1)
    real_make = train._make_checkpointer

    def make(*args, **kwargs):
        inner = real_make(*args, **kwargs)

        class Faking(keras.callbacks.Callback):
            def set_model(self, model):
                super().set_model(model)
                inner.set_model(model)

            @property
            def diverged(self):  # the trainer reads the checkpointer's NaN verdict after fit
                return inner.diverged

            def on_epoch_begin(self, epoch, logs=None):
                inner.on_epoch_begin(epoch, logs)

            def on_train_batch_end(self, batch, logs=None):
                inner.on_train_batch_end(batch, logs)

            def on_epoch_end(self, epoch, logs=None):
                logs = dict(logs or {})
                if len(seen["stage1"]) < 2:  # the Spy below records each stage-1 epoch after this
                    logs["val_accuracy"] = next(fake)
                inner.on_epoch_end(epoch, logs)

        return Faking()

    seen = {"stage1": [], "stage2_start": None, "stage1_backbone_trainable": None}

    class Spy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            base = self.model.get_layer("backbone")
            if seen["stage1_backbone_trainable"] is None:
                bn = [layer.trainable for layer in base.layers
                      if isinstance(layer, keras.layers.BatchNormalization)]
                seen["stage1_backbone_trainable"] = base.trainable and all(bn)
            elif seen["stage2_start"] is None:
                seen["stage2_start"] = [np.array(w) for w in self.model.get_weights()]

        def on_epoch_end(self, epoch, logs=None):
            if seen["stage2_start"] is None:
                seen["stage1"].append([np.array(w) for w in self.model.get_weights()])

    monkeypatch.setattr(train, "_make_checkpointer", make)
    run = tmp_path / "run"
    cfg = FinetuneConfig(data=str(shapes_dir), epochs=3, fine_tune_epochs=1, patience=1, learning_rate=0.01,
                         warmup_epochs=1, **TINY)
    train.finetune(cfg, output=str(run), verbose=0, callbacks=[Spy()])

    # 9: stage 1 stopped after 2 epochs; stage 2 began from epoch 1's weights (the best), not epoch 2's
    assert len(seen["stage1"]) == 2
    for start, best in zip(seen["stage2_start"], seen["stage1"][0], strict=True):
        np.testing.assert_array_equal(start, best)
    assert any(not np.array_equal(a, b) for a, b in zip(seen["stage1"][0], seen["stage1"][1], strict=True))

    # 7: from scratch the whole network trains from stage 1 on, BatchNorm included; config.yaml says so
    assert seen["stage1_backbone_trainable"]
    doc = yaml.safe_load((run / "config.yaml").read_text())
    assert doc["train"]["unfreeze"] == "all" and "whole network" in doc["run"]["trains"]

    # 10: each epoch logs the rate its first step used (warm-up starts at a tenth of the peak)
    rows = _history(run)
    steps = int(np.ceil(sum(1 for _ in json.loads((run / "split.json").read_text())["train"]) / 8))
    stage1 = optim._schedule(0.01, steps, steps * 3)
    assert [float(r["learning_rate_first_step"]) for r in rows[:2]] == pytest.approx(
        [float(stage1(0)), float(stage1(steps))])
    assert float(rows[0]["learning_rate_first_step"]) == pytest.approx(0.001)
    stage2 = optim._schedule(doc["train"]["fine_tune_learning_rate"], steps, steps)  # resolved from auto
    assert float(rows[2]["learning_rate_first_step"]) == pytest.approx(float(stage2(0)))

    # 10: metrics.json has the plain cross-entropy, and no top-k for 3 classes (always 1.0)
    metrics = json.loads((run / "metrics.json").read_text())
    assert "cross_entropy" in metrics and "loss" not in metrics
    assert not any(k.startswith("top_") for k in metrics)


def test_top_k_is_reported_only_below_the_number_of_classes():
    from cvkeras.analysis.evaluate import classification_report

    rng = np.random.default_rng(0)
    for c, has_top5 in ((5, False), (6, True)):
        probs = rng.dirichlet(np.ones(c), size=20)
        labels = rng.integers(0, c, 20)
        report = classification_report(probs, labels, [str(i) for i in range(c)])
        assert ("top_5_accuracy" in report) is has_top5
        assert report["cross_entropy"] == pytest.approx(-np.mean(np.log(probs[np.arange(20), labels])))

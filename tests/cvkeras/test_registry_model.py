"""Registry rows and the classifier builder: names, normalisation layers, weights handling."""

from __future__ import annotations

import numpy as np
import pytest

from cvkeras.models.registry import REGISTRY, UnknownModelError, get, resolve_alpha
from tests.support.cli import invoke


def test_registry_covers_every_keras_application():
    import keras

    constructors = {n for n in dir(keras.applications) if n[0].isupper() and callable(getattr(keras.applications, n))}
    assert {spec.constructor for spec in REGISTRY.values()} == constructors
    assert len(REGISTRY) == 40


def test_lookup_is_tolerant_and_unknown_names_suggest():
    assert get("MobileNet-V3-Small").name == "mobilenet_v3_small"
    with pytest.raises(UnknownModelError, match="did you mean mobilenet_v2"):
        get("mobilenet_v22")
    assert resolve_alpha(get("mobilenet_v2"), 0.35) == 0.35
    with pytest.raises(ValueError, match="no width multiplier"):
        resolve_alpha(get("resnet50"), 0.5)
    with pytest.raises(ValueError, match="supports --alpha"):
        resolve_alpha(get("mobilenet"), 0.33)


def test_models_command_prints_the_table():
    result = invoke("models")
    assert result.exit_code == 0
    assert "efficientnet_v2_s" in result.output and "convnext_tiny" in result.output
    assert "0.35" in result.output


@pytest.mark.parametrize(
    ("name", "module"),
    [("mobilenet_v2", "mobilenet_v2"), ("resnet50", "resnet"), ("densenet121", "densenet")],
)
def test_in_model_normalisation_matches_keras_preprocess_input(name, module):
    import keras

    from cvkeras.models.build import build_classifier

    model = build_classifier(name, 3, (32, 32), weights="none")
    pre = keras.Model(model.input, model.get_layer("normalize").output)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(x.copy())
    np.testing.assert_allclose(pre.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-3)


def test_model_saves_and_loads_in_safe_mode(tmp_path):
    import keras

    from cvkeras.models.build import build_classifier

    model = build_classifier("resnet50", 3, (32, 32), weights="none")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    x = np.full((1, 32, 32, 3), 128.0, "float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert loaded.input.name == "image" or loaded.inputs[0].name == "image"


def test_weights_from_a_file_are_loaded(tmp_path):
    from cvkeras.models.build import build_backbone, build_classifier

    spec = get("mobilenet_v2")
    donor = build_backbone(spec, (32, 32), 0.35, None)
    path = tmp_path / "donor.weights.h5"
    donor.save_weights(path)
    model = build_classifier("mobilenet_v2", 3, (32, 32), alpha=0.35, weights=str(path))
    for a, b in zip(donor.get_weights(), model.get_layer("backbone").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_missing_weights_file_and_offline_download_are_one_line_errors(tmp_path, monkeypatch):
    import keras

    from cvkeras.models.build import WeightsError, build_classifier

    with pytest.raises(WeightsError, match="not found"):
        build_classifier("mobilenet_v2", 3, (32, 32), alpha=0.35, weights=str(tmp_path / "nope.h5"))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    with pytest.raises(WeightsError) as info:
        build_classifier("mobilenet_v2", 3, (96, 96), alpha=0.35, weights="imagenet")
    message = str(info.value)
    assert "--weights PATH" in message and "--weights none" in message and "\n" not in message


def test_set_trainable_keeps_batchnorm_frozen():
    import keras

    from cvkeras.models.build import build_classifier, set_trainable

    model = build_classifier("mobilenet_v2", 3, (32, 32), alpha=0.35, weights="none")
    assert set_trainable(model, 1) == 0
    assert not model.get_layer("backbone").trainable
    n = set_trainable(model, 2, 0.3)
    base = model.get_layer("backbone")
    assert n > 0
    assert not any(layer.trainable for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization))
    cut = len(base.layers) - round(0.3 * len(base.layers))
    assert not any(layer.trainable for layer in base.layers[:cut])
    with pytest.raises(ValueError, match="--unfreeze"):
        set_trainable(model, 2, 1.5)

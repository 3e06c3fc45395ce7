"""Build the classifier: in-model normalisation + a Keras Applications backbone + a softmax head.

The model takes ``float32`` NHWC RGB images in ``0..255`` (see ``cvkeras.serving.preprocess``) and outputs
class probabilities in float32, whatever the training precision. Normalisation uses standard
serialisable layers (no Lambda), so ``keras.saving.load_model(path, safe_mode=True)`` loads it and
exported graphs need no external preprocessing.

Example:
    >>> model = build_classifier("mobilenet_v2", num_classes=5, image_size=(160, 160), alpha=0.35,
    ...                          weights="none")
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cvkeras.models.registry import ModelSpec, resolve_model
from cvkeras.run.config import unfreeze_fraction
from cvkeras.serving.errors import CvkerasError, OptionError, first_line, quote
from cvkeras.serving.formats import INPUT_NAME, OUTPUT_NAME

IMAGENET_MEAN_RGB = np.array([123.675, 116.28, 103.53])
IMAGENET_STD_RGB = np.array([58.395, 57.12, 57.375])
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
BACKBONE = "backbone"


class WeightsError(CvkerasError, RuntimeError):
    """Pretrained weights that cannot be had; the message names the alternatives."""


def _normalisation_layers(mode: str):
    import keras

    if mode == "tf":
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")]
    if mode == "torch":
        return [
            keras.layers.Normalization(
                mean=IMAGENET_MEAN_RGB.tolist(), variance=(IMAGENET_STD_RGB**2).tolist(), name="normalize"
            )
        ]
    if mode == "caffe":
        # RGB -> BGR and mean subtraction as one frozen 1x1 convolution: a standard layer that every
        # converter (ONNX, TFLite int8) handles, unlike a custom channel-flip op.
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for out_c, in_c in enumerate((2, 1, 0)):
            kernel[0, 0, in_c, out_c] = 1.0
        conv = keras.layers.Conv2D(3, 1, use_bias=True, trainable=False, name="normalize")
        conv.build((None, None, None, 3))
        conv.set_weights([kernel, (-CAFFE_MEAN_BGR).astype("float32")])
        return [conv]
    if mode == "none":
        return []
    raise OptionError(f"unknown preprocessing mode {quote(mode)}")


def resolve_weights(weights: str | None) -> str | None:
    """``--weights`` as Keras takes it: None (random), ``imagenet`` or a checked path to a no-top .h5."""
    if weights is None or str(weights).lower() in ("none", "random", ""):
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = Path(os.path.expanduser(str(weights)))
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; pass --weights imagenet, none or a no-top .h5 file")
    return str(path)


def build_backbone(spec: ModelSpec, image_size: tuple[int, int], alpha: float | None, weights: str | None):
    """Instantiate the Keras Applications backbone without its top."""
    import keras

    ctor = getattr(keras.applications, spec.constructor)
    kwargs = dict(spec.extra_kwargs)
    if alpha is not None:
        kwargs["alpha"] = alpha
    shape = (int(image_size[0]), int(image_size[1]), 3)
    if min(shape[:2]) < spec.min_size:
        raise OptionError(f"{spec.name} needs an input of at least {spec.min_size} px, not {shape[:2]}")
    resolved = resolve_weights(weights)
    try:
        base = ctor(include_top=False, weights=resolved, input_shape=shape, pooling=None, **kwargs)
    except ValueError as exc:  # Keras' word on a bad argument or a weights file of another shape
        if resolved not in (None, "imagenet"):
            raise WeightsError(f"{resolved}: cannot load these weights into {spec.name} ({first_line(exc, 160)}); "
                               "pass the matching no-top .h5 file or --weights none") from None
        raise OptionError(f"{spec.name}: {first_line(exc, 200)}") from None
    except Exception as exc:  # download failures surface as URLError, OSError or Exception("URL fetch failure")
        if resolved == "imagenet":
            raise WeightsError(
                f"could not download ImageNet weights for {spec.name} ({type(exc).__name__}); offline? "
                "use --weights PATH (a no-top .h5 weights file) or --weights none"
            ) from None
        if resolved is not None:
            raise WeightsError(
                f"{resolved}: cannot load these weights into {spec.name} ({first_line(exc, 160)}); "
                "pass the matching no-top .h5 file or --weights none"
            ) from None
        raise
    base.name = BACKBONE
    return base


def build_classifier(
    model: str | ModelSpec,
    num_classes: int,
    image_size: tuple[int, int] | None = None,
    alpha: float | None = None,
    weights: str | None = "imagenet",
    dropout: float = 0.2,
):
    """Build the classifier for a registry row; the softmax head always computes in float32."""
    import keras

    choice = resolve_model(model, alpha, image_size or None)
    spec, alpha, size = choice.spec, choice.alpha, choice.image_size
    inputs = keras.Input(shape=(size[0], size[1], 3), name=INPUT_NAME, dtype="float32")
    x = inputs
    for layer in _normalisation_layers(spec.preprocess):
        x = layer(x)
    base = build_backbone(spec, size, alpha, weights)
    # Pretrained: BatchNorm stays in inference mode, also when unfrozen (its statistics are the
    # backbone's knowledge). From scratch there are no statistics yet, so BatchNorm must train.
    pretrained = resolve_weights(weights) is not None
    if not pretrained:
        for layer in base.layers:  # Keras' 0.999 momentum needs thousands of steps to settle
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = min(layer.momentum, 0.9)
    x = base(x, training=False) if pretrained else base(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name=f"cvkeras_{spec.name}")


def set_trainable(model, stage: int, unfreeze: float | str = 0.3, freeze_bn: bool = True) -> int:
    """Freeze for stage 1 (head only) or unfreeze the top fraction of the backbone for stage 2.

    BatchNorm layers stay frozen in both stages when ``freeze_bn`` (pretrained backbones); a backbone
    trained from scratch needs them to learn. Returns the number of trainable backbone layers.
    """
    import keras

    base = model.get_layer(BACKBONE)
    if stage == 1:
        base.trainable = False
        pin_frozen_dropout(model)
        return 0
    base.trainable = True
    layers = base.layers
    frac = unfreeze_fraction(unfreeze)
    cut = len(layers) - int(round(frac * len(layers)))
    count = 0
    for i, layer in enumerate(layers):
        layer.trainable = i >= cut and not (freeze_bn and isinstance(layer, keras.layers.BatchNormalization))
        count += int(layer.trainable and bool(layer.weights))
    pin_frozen_dropout(model)
    return count


def pin_frozen_dropout(model) -> int:
    """Keep the dropout layers of the frozen part of the backbone in inference mode during ``fit``.

    Under Keras 3, ``base(x, training=False)`` at build time does not hold in ``fit``: the outer
    ``training=True`` reaches every nested layer. BatchNorm stays in inference mode through
    ``trainable=False``, Dropout does not, so the dropout inside EfficientNet blocks would perturb a
    frozen backbone. A frozen Dropout layer is not handed the ``training`` argument (so it runs with its
    default, inference); an unfrozen one trains as usual. Nothing is saved: call it after every trainability
    change and after loading a checkpoint. Returns the number of dropout layers pinned.
    """
    import keras

    base = model.get_layer(BACKBONE)
    pinned = 0
    for layer in base._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Dropout):
            frozen = not (base.trainable and layer.trainable)
            # the one attribute Keras reads to inject ``training`` (Layer.__call__ and the functional
            # graph runner both consult it); without it Dropout.call runs with its default, inference
            layer._call_context_args = set() if frozen else {"training"}
            pinned += int(frozen)
    return pinned


def _float32_config(obj):
    """A model config with every mixed-precision dtype (policy or plain float16/bfloat16) set to float32."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "DTypePolicy" and str(obj.get("config", {}).get("name", "")).startswith("mixed_"):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_float32_config(v) for v in obj)
    if obj in ("float16", "bfloat16"):
        return "float32"
    return obj


def float32_copy(model):
    """A float32 twin of ``model`` built from the model's *own* config, with its weights copied.

    Rebuilding from the registry would not do: Keras' EfficientNet adds a ``Rescaling`` layer only when
    built with ``weights="imagenet"``, and that layer has no weights, so ``set_weights`` would succeed
    on a different network. The config holds every layer the trained model has.
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        clone = keras.Model.from_config(_float32_config(model.get_config()))
        clone.set_weights([np.asarray(w, dtype="float32") if np.asarray(w).dtype.kind == "f" else w
                           for w in model.get_weights()])
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return clone


def to_float32(model, spec_name: str | None = None, num_classes: int | None = None, image_size=None, alpha=None,
               dropout: float | None = None):
    """``model`` as float32 (for saving and export): see :func:`float32_copy`.

    The other arguments are accepted for existing callers and not used: the copy follows the model's
    own config, never a rebuild from the registry.
    """
    return float32_copy(model)


def load_model(path: str | os.PathLike):
    """Load a saved classifier (safe mode) as a float32 model, whatever the global dtype policy.

    Keras gives the input layer and nested backbone the *global* policy on load, so a process that
    trained in mixed precision would otherwise get a mixed model back.
    """
    import zipfile

    import keras

    from cvkeras.serving.errors import RunDirError

    fix = "restore it or re-run `cvkeras finetune` to write it again"
    if not Path(path).is_file():
        raise RunDirError(f"{path}: model file not found; {fix}")
    if str(path).endswith(".keras") and not zipfile.is_zipfile(path):
        raise RunDirError(f"{path}: truncated or not a .keras archive; {fix}")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as exc:  # damaged or unsafe content
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise RunDirError(f"{path}: cannot be loaded safely ({first}); cvkeras loads only models without "
                          f"custom code -- {fix}") from None
    finally:
        keras.mixed_precision.set_global_policy(previous)

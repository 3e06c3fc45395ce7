"""Grad-CAM and Grad-CAM++: where in the photo the classifier found its evidence.

The target is the last spatial feature map of the backbone -- the registry row's ``cam_layer``, or the
backbone's own output when the row names none -- so every one of the 40 backbones works without a flag.
Writing a run's heatmaps as PNGs and a contact sheet is :mod:`cvkeras.analysis.explain_run`'s job.

Example:
    >>> heat, probs = gradcam(model, images, default_layer(model, "mobilenet_v2"))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cvkeras.serving.errors import CvkerasError, quote

METHODS = ("gradcam", "gradcam++")


class ExplainError(CvkerasError, ValueError):
    """A bad layer, class or method name; the message says what exists."""


def _backbone(model):
    """The nested backbone of a cvkeras classifier (the one layer that is itself a model)."""
    import keras

    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(inner) != 1:
        raise ExplainError(f"{model.name}: expected one nested backbone, found {len(inner)}; "
                           "explain works on models made by `cvkeras finetune`")
    return inner[0]


def default_layer(model, spec_name: str | None = None) -> str:
    """The registry row's Grad-CAM layer for this model, or the backbone's output layer."""
    base = _backbone(model)
    if spec_name:
        from cvkeras.models.registry import get

        name = get(spec_name).cam_layer
        if name:
            return name
    return base.layers[-1].name


def gradcam(model, images: np.ndarray, layer: str | None = None, class_index: int | Sequence[int] | None = None,
            method: str = "gradcam") -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, H, W) in 0..1 at the input size, and the model's probabilities (N, C).

    ``images`` are float RGB 0..255 at the model's input size; ``class_index`` None explains each image's
    predicted class. ``layer`` names a layer of the backbone (default: its output).
    """
    import tensorflow as tf

    if method not in METHODS:
        raise ExplainError(f"unknown --method {quote(method)}; choose {' or '.join(METHODS)}")
    base = _backbone(model)
    layer = layer or base.layers[-1].name
    try:
        target = base.get_layer(layer)
    except ValueError:
        names = [x.name for x in base.layers if len(getattr(x.output, "shape", ())) == 4][-5:]
        raise ExplainError(f"no layer {quote(layer)} in {base.name}; "
                           f"the last spatial ones are {', '.join(names)}") from None
    if len(target.output.shape) != 4:
        raise ExplainError(f"layer {quote(layer)} is not a spatial feature map (shape {tuple(target.output.shape)})")
    import keras

    probe = base if target is base.layers[-1] else keras.Model(base.inputs, [target.output, base.output])
    x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    with tf.GradientTape() as tape:
        h = x
        feats = logits = None
        for lyr in model.layers:
            if isinstance(lyr, keras.layers.InputLayer):
                continue
            if lyr is base:
                out = probe(h, training=False)
                feats, h = (out, out) if probe is base else out
                tape.watch(feats)
            elif lyr is model.layers[-1] and isinstance(lyr, keras.layers.Dense):
                # the class score y^c of Grad-CAM is the logit, before the softmax saturates it
                logits = tf.matmul(tf.cast(h, tf.float32), tf.cast(lyr.kernel, tf.float32))
                if lyr.use_bias:
                    logits = logits + tf.cast(lyr.bias, tf.float32)
                h = lyr(h, training=False)
            else:
                h = lyr(h, training=False)
        probs = tf.cast(h, tf.float32)
        n = int(probs.shape[0])
        if class_index is None:
            idx = tf.argmax(probs, axis=-1, output_type=tf.int32)
        else:
            idx = tf.constant(np.broadcast_to(np.asarray(class_index, dtype=np.int32), (n,)))
        score = tf.gather(logits, idx, batch_dims=1) if logits is not None else tf.math.log(
            tf.gather(probs, idx, batch_dims=1) + 1e-12)
    grads = tf.cast(tape.gradient(score, feats), tf.float32)
    feats = tf.cast(feats, tf.float32)
    if method == "gradcam":
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    else:  # Grad-CAM++ (Chattopadhyay et al. 2018), exponential-score closed form
        g2, g3 = grads ** 2, grads ** 3
        denom = 2.0 * g2 + tf.reduce_sum(feats, axis=(1, 2), keepdims=True) * g3
        alpha = g2 / tf.where(tf.abs(denom) > 1e-12, denom, tf.ones_like(denom))
        weights = tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * feats, axis=-1))[..., None]
    cam = tf.image.resize(cam, tuple(images.shape[1:3]), method="bilinear")[..., 0].numpy()
    top = cam.reshape(n, -1).max(axis=1).reshape(n, 1, 1)
    cam = np.divide(cam, top, out=np.zeros_like(cam), where=top > 0)
    return cam.astype(np.float32), probs.numpy()


def overlay(image: np.ndarray, heat: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """The heatmap in the ``jet`` colour map blended over an RGB uint8 image of the same size."""
    from matplotlib import colormaps

    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255.0
    return np.clip((1 - opacity) * image.astype(np.float32) + opacity * colour, 0, 255).astype(np.uint8)

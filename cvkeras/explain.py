"""Grad-CAM and Grad-CAM++: where in the photo the classifier found its evidence.

The target is the last spatial feature map of the backbone -- the registry row's ``cam_layer``, or the
backbone's own output when the row names none -- so every one of the 40 backbones works without a flag.
Images are read with the device's decode-and-resize contract (``serving.preprocess``), so the heatmap is
drawn over exactly the pixels the model saw.

Example:
    >>> result = explain_run("runs/flowers", ["rose.jpg"], output="runs/flowers/explain")
    >>> result.items[0].label, result.items[0].png
    ('roses', PosixPath('runs/flowers/explain/rose.png'))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import CvkerasError, quote

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
        from cvkeras.registry import get

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


@dataclass
class Explanation:
    """One explained image: what was predicted, the explained class and where the picture went."""

    source: str
    label: str
    score: float
    predicted: str
    predicted_score: float
    heatmap: np.ndarray = field(repr=False)
    image: np.ndarray = field(repr=False)
    png: Path | None = None


@dataclass
class ExplainResult:
    items: list[Explanation]
    skipped: list[tuple[str, str]]
    layer: str
    method: str
    sheet: Path | None = None


def _figure(item: Explanation, method: str):
    from cvkeras.plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.5))
    axes[0].imshow(item.image)
    axes[0].set_title("input (as the model sees it)", fontsize=8)
    axes[1].imshow(overlay(item.image, item.heatmap))
    title = f"{item.label} {item.score:.1%}"
    if item.label != item.predicted:
        title += f"\n(predicted {item.predicted} {item.predicted_score:.1%})"
    axes[1].set_title(f"{method}: {title}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(Path(item.source).name, fontsize=9)
    fig.tight_layout()
    return fig


def contact_sheet(items: Sequence[Explanation], method: str, columns: int = 4):
    """All overlays of a batch in one figure, each titled with its file, class and score."""
    from cvkeras.plots import _plt

    plt = _plt()
    cols = max(1, min(columns, len(items)))
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, item in zip(axes.ravel(), items, strict=False):
        ax.imshow(overlay(item.image, item.heatmap))
        mark = "" if item.label == item.predicted else " *"
        ax.set_title(f"{Path(item.source).name[:22]}\n{item.label} {item.score:.0%}{mark}", fontsize=7)
    fig.suptitle(f"{method}; * = explained class is not the predicted one", fontsize=8)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> Path:
    from cvkeras.plots import _plt
    from cvkeras.rundir import atomic_write

    written = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    _plt().close(fig)
    return written


def explain_images(model, labels: list[str], sources: Sequence[str | os.PathLike], layer: str | None = None,
                   class_label: str | None = None, method: str = "gradcam", batch_size: int = 16,
                   progress: Any = None) -> ExplainResult:
    """Explain image files with a loaded classifier; unreadable files are skipped with the reason."""
    from serving.preprocess import ImageError, load_resized

    if class_label is not None and class_label not in labels:
        raise ExplainError(f"unknown --class {quote(class_label)}; the model's classes are {', '.join(labels)}")
    size = tuple(int(v) for v in model.input_shape[1:3])
    layer = layer or default_layer(model)
    items: list[Explanation] = []
    skipped: list[tuple[str, str]] = []
    todo = [str(s) for s in sources]
    for start in range(0, len(todo), batch_size):
        batch, arrays = [], []
        for src in todo[start:start + batch_size]:
            try:
                arrays.append(load_resized(src, size))
                batch.append(src)
            except ImageError as exc:
                skipped.append((src, str(exc)))
        if not batch:
            continue
        images = np.stack(arrays)
        target = None if class_label is None else labels.index(class_label)
        heat, probs = gradcam(model, images.astype(np.float32), layer, target, method)
        for i, src in enumerate(batch):
            k = int(np.argmax(probs[i])) if target is None else target
            top = int(np.argmax(probs[i]))
            items.append(Explanation(src, labels[k], float(probs[i, k]), labels[top], float(probs[i, top]),
                                     heat[i], images[i]))
        if progress:
            progress(len(items) + len(skipped), len(todo))
    return ExplainResult(items, skipped, layer, method)


def list_images(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Files as given, folders expanded to their image files (``serving.images.list_images``)."""
    from serving.images import list_images as images_in

    out: list[str] = []
    for p in map(Path, paths):
        out += [str(f) for f in images_in(p, utf8_only=False)] if p.is_dir() else [str(p)]
    return out


def explain_run(run: str | os.PathLike, images: Sequence[str | os.PathLike], layer: str | None = None,
                class_label: str | None = None, method: str = "gradcam", output: str | os.PathLike | None = None,
                progress: Any = None) -> ExplainResult:
    """Explain images with a run's ``best.keras``: one PNG per image and ``contact_sheet.png`` in ``output``
    (default ``RUN/explain``)."""
    from cvkeras import rundir
    from cvkeras.model import load_model

    rd = rundir.RunDir.open(run)
    run = rd.path
    labels = rd.labels()
    model_name = rd.model_name()
    model = load_model(rd.best)
    layer = layer or default_layer(model, model_name)
    result = explain_images(model, labels, list_images(images), layer, class_label, method, progress=progress)
    out = Path(output) if output else run / "explain"
    used: set[str] = set()
    for item in result.items:
        stem = Path(item.source).stem
        name, n = stem, 1
        while name in used:  # same file name in two folders
            n += 1
            name = f"{stem}-{n}"
        used.add(name)
        item.png = _save(_figure(item, method), out / f"{name}.png")
    if result.items:
        result.sheet = _save(contact_sheet(result.items, method), out / "contact_sheet.png")
    return result

"""What training minimises and how: the optimizer with decoupled weight decay, the warm-up + cosine
schedule, label smoothing, metrics, and class weighting (per image, by the label mix).
"""

from __future__ import annotations

import numpy as np

from cvkeras.run.config import CLASS_WEIGHTS, OPTIMIZERS, FinetuneConfig, check_choice

#: Variables never decayed: biases, normalisation scale/offset (BatchNorm, LayerNorm) and layer scales.
NO_DECAY = r"(?:^|/)(?:bias|gamma|beta)(?:/replica_\d+)?(?::\d+)?$"


def _schedule(lr: float, warmup_steps: int, total_steps: int):
    import keras

    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr * 0.1 if warmup_steps else lr,
        decay_steps=max(total_steps - warmup_steps, 1),
        alpha=0.01,
        warmup_target=lr if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def compile_model(model, cfg: FinetuneConfig, lr: float, steps_per_epoch: int, epochs: int, num_classes: int):
    """Compile with AdamW/SGD, warm-up + cosine decay, label smoothing, accuracy and top-5 (> 5 classes).

    Weight decay is decoupled for both optimizers: each step multiplies a decayed weight by
    ``1 - lr * weight_decay`` (the PyTorch AdamW convention, so the usual 0.05 means what it means
    there). Biases and normalisation parameters (``NO_DECAY``) are never decayed.
    """
    import keras

    schedule = _schedule(lr, int(round(cfg.warmup_epochs * steps_per_epoch)), steps_per_epoch * epochs)
    decay = float(cfg.weight_decay) or None
    if check_choice("--optimizer", cfg.optimizer, OPTIMIZERS) == "adamw":
        opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=decay or 0.0)
    else:
        opt = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True, weight_decay=decay)
    opt.exclude_from_weight_decay(var_names=[NO_DECAY])
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if num_classes > 5:  # with 5 classes or fewer top-5 accuracy is always 1
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top_5"))
    model.compile(
        optimizer=opt,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=metrics,
        jit_compile=bool(cfg.jit),
    )


def class_weights(counts: list[int], mode: str) -> dict[int, float] | None:
    """``auto``: inverse frequency (n / (C * count_c)); ``none``: no weighting."""
    if check_choice("--class-weights", mode, CLASS_WEIGHTS) == "none":
        return None
    total, c = sum(counts), len(counts)
    return {i: total / (c * n) if n else 0.0 for i, n in enumerate(counts)}


def with_sample_weights(ds, weights: dict[int, float], num_classes: int):
    """Add a per-image weight ``label · class_weights`` to a (images, soft labels) dataset.

    Keras' ``class_weight`` weights by the argmax of the label, so a MixUp/CutMix image would carry
    one class's weight whatever its mix; the dot product weights it by the mix (and equals the class
    weight for a one-hot label).
    """
    import tensorflow as tf

    cw = tf.constant([weights.get(i, 1.0) for i in range(num_classes)], tf.float32)
    return ds.map(lambda x, y: (x, y, tf.reduce_sum(tf.cast(y, tf.float32) * cw, axis=-1)),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def label_counts(ds, num_classes: int) -> list[int]:
    """Images per class of a (image, integer label) dataset, by one pass over its labels (TFDS sources)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for y in ds.map(lambda x, y: y).batch(4096).as_numpy_iterator():
        counts += np.bincount(np.asarray(y, dtype=np.int64).ravel(), minlength=num_classes)[:num_classes]
    return counts.tolist()

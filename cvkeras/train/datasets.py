"""The training and validation tf.data pipelines of a run (files or TFDS): augmentation, caching, steps per
epoch (the data repeats when an epoch is not one pass) and class weights as sample weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvkeras.run.config import FinetuneConfig
from cvkeras.train.optim import class_weights, label_counts, with_sample_weights


@dataclass
class TrainData:
    """The two pipelines a run trains on, their sizes, steps per epoch and class weights."""

    train_ds: Any
    val_ds: Any
    n_train: int
    n_val: int
    steps: int
    weights: dict[int, float] | None


def make_datasets(cfg: FinetuneConfig, split, run: Path, num_classes: int) -> TrainData:
    """The training and validation tf.data pipelines (files or TFDS), steps per epoch and class weights."""
    from cvkeras.data.augment import Augmenter
    from cvkeras.data.pipeline import make_dataset, tfds_dataset

    size = cfg.image_size
    augmenter = Augmenter(cfg.augment, cfg.randaugment, cfg.mixup, cfg.cutmix, cfg.seed)
    if split.source == "tfds":
        train_src, val_src = tfds_dataset(split.tfds, "train"), tfds_dataset(split.tfds, "val")
        n_train, n_val = int(train_src.cardinality().numpy()), int(val_src.cardinality().numpy())
        train_ds = make_dataset(None, None, size, cfg.batch_size, num_classes, True, augmenter, cfg.cache,
                                cfg.seed, source=train_src, cache_tag=f"{run.resolve()}:train:{cfg.data}")
        val_ds = make_dataset(None, None, size, cfg.batch_size, num_classes, cache=cfg.cache, source=val_src,
                              cache_tag=f"{run.resolve()}:val:{cfg.data}")
        counts = label_counts(train_src, num_classes) if cfg.class_weights != "none" else None
    else:
        n_train, n_val = len(split.train), len(split.val)
        train_ds = make_dataset([p for p, _ in split.train], [y for _, y in split.train], size, cfg.batch_size,
                                num_classes, True, augmenter, cfg.cache, cfg.seed, cache_tag=f"{run.resolve()}:train")
        val_ds = make_dataset([p for p, _ in split.val], [y for _, y in split.val], size, cfg.batch_size,
                              num_classes, cache=cfg.cache, cache_tag=f"{run.resolve()}:val")
        counts = split.counts("train")
    steps = int(cfg.epoch_steps)
    if cfg.steps_per_epoch is not None:
        steps = min(steps, int(cfg.steps_per_epoch))
    if cfg.steps_per_epoch is not None or steps != math.ceil(n_train / cfg.batch_size):
        train_ds = train_ds.repeat()
    weights = class_weights(counts, cfg.class_weights) if counts else None
    if weights:
        train_ds = with_sample_weights(train_ds, weights, num_classes)
    return TrainData(train_ds, val_ds, n_train, n_val, steps, weights)

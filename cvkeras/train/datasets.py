"""The training and validation tf.data pipelines of a run (files or TFDS): augmentation, caching (``--cache
auto`` resolved here), steps per epoch (the data repeats when an epoch is not one pass) and class weights as
sample weights; after training, the files the pipeline could not decode join ``skipped.txt``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvkeras.run import files as runfiles
from cvkeras.run import rundir
from cvkeras.run.config import FinetuneConfig
from cvkeras.run.rundir import RunDir
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
    cache: str = ""  # the header line's text: which cache, and why
    logs: list[Any] = field(default_factory=list)  # DecodeLog of the train and val pipelines (files only)
    scratch: Path | None = None  # an automatic file cache's folder, removed after training


def make_datasets(cfg: FinetuneConfig, split, run: Path, num_classes: int) -> TrainData:
    """The training and validation tf.data pipelines (files or TFDS), steps per epoch and class weights."""
    from cvkeras.data.augment import Augmenter
    from cvkeras.data.cache import resolve_cache
    from cvkeras.data.decode_log import DecodeLog
    from cvkeras.data.pipeline import make_dataset
    from cvkeras.data.tfds_source import tfds_dataset

    size = cfg.image_size
    augmenter = Augmenter(cfg.augment, cfg.randaugment, cfg.mixup, cfg.cutmix, cfg.seed)
    logs: list[DecodeLog] = []
    if split.source == "tfds":
        train_src, val_src = tfds_dataset(split.tfds, "train"), tfds_dataset(split.tfds, "val")
        n_train, n_val = int(train_src.cardinality().numpy()), int(val_src.cardinality().numpy())
        cache = resolve_cache(cfg.cache, n_train + n_val, size, RunDir(run).cache_dir)
        clear_stale_locks(cache.scratch)
        train_ds = make_dataset(None, None, size, cfg.batch_size, num_classes, True, augmenter, cache.value,
                                cfg.seed, source=train_src, cache_tag=f"{run.resolve()}:train:{cfg.data}")
        val_ds = make_dataset(None, None, size, cfg.batch_size, num_classes, cache=cache.value, source=val_src,
                              cache_tag=f"{run.resolve()}:val:{cfg.data}")
        counts = label_counts(train_src, num_classes) if cfg.class_weights != "none" else None
    else:
        n_train, n_val = len(split.train), len(split.val)
        cache = resolve_cache(cfg.cache, n_train + n_val, size, RunDir(run).cache_dir)
        clear_stale_locks(cache.scratch)
        logs = [DecodeLog([p for p, _ in split.train]), DecodeLog([p for p, _ in split.val])]
        train_ds = make_dataset(logs[0].paths, [y for _, y in split.train], size, cfg.batch_size, num_classes,
                                True, augmenter, cache.value, cfg.seed, cache_tag=f"{run.resolve()}:train",
                                log=logs[0], records=split.tfrecord)
        val_ds = make_dataset(logs[1].paths, [y for _, y in split.val], size, cfg.batch_size, num_classes,
                              cache=cache.value, cache_tag=f"{run.resolve()}:val", log=logs[1], records=split.tfrecord)
        counts = split.counts("train")
    steps = int(cfg.epoch_steps)
    if cfg.steps_per_epoch is not None:
        steps = min(steps, int(cfg.steps_per_epoch))
    # a pipeline that drops undecodable files has no known length: Keras would run it dry after one epoch
    if cfg.steps_per_epoch is not None or steps != math.ceil(n_train / cfg.batch_size) or logs:
        train_ds = train_ds.repeat()
    weights = class_weights(counts, cfg.class_weights) if counts else None
    if weights:
        train_ds = with_sample_weights(train_ds, weights, num_classes)
    return TrainData(train_ds, val_ds, n_train, n_val, steps, weights, cache.line, logs, cache.scratch)


def clear_stale_locks(scratch: Path | None) -> None:
    """An automatic file cache's lock files left by a killed run (TensorFlow refuses to cache beside them);
    the run directory's own lock is held, so no other process is writing there."""
    for lock in scratch.glob("*.lockfile") if scratch else ():
        lock.unlink(missing_ok=True)


def finish_data(data: TrainData, split: Any, rd: RunDir, seed: int, write: bool,
                warn: Callable[[str], None]) -> None:
    """After training: files the pipeline could not decode leave ``split`` (and ``split.json``) and join its
    skipped list (and ``skipped.txt``); an automatic file cache is removed."""
    if data.scratch is not None:
        shutil.rmtree(data.scratch, ignore_errors=True)
    bad = [f for log in data.logs for f in (log.failures() or [])]
    if not bad:
        return
    drop = {p for p, _ in bad}
    warn(f"{len(bad)} file(s) could not be decoded while training (e.g. {bad[0][0]}); they were left out "
         f"and are listed in {rd / rundir.SKIPPED}")
    split.train, split.val = ([it for it in items if it[0] not in drop] for items in (split.train, split.val))
    split.skipped += bad
    if write:
        rd.write_split(split.to_json(seed))
        listed = rd.text_lines(rundir.SKIPPED)
        runfiles.atomic_write(rd / rundir.SKIPPED,
                              "".join(f"{line}\n" for line in listed) + runfiles.skipped_lines(bad))

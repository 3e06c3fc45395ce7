"""tf.data input pipelines that honour the image contract of ``cvkeras.serving.preprocess``.

Decode (accurate-DCT JPEG, PNG/BMP/GIF first frame) and antialiased bilinear resize with rounding to
8-bit values run in parallel on the graph; decoded images are cached (memory or a file), then shuffled,
augmented (training only; never inside the model), batched and prefetched.

Example:
    >>> ds = make_dataset(paths, labels, (160, 160), batch_size=32, training=True, num_classes=5)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from cvkeras.data.decode import decoded_dataset
from cvkeras.data.decode_log import DecodeLog
from cvkeras.data.resize import resize_image
from cvkeras.serving.errors import quote

#: Decoded images a shuffle buffer holds (TFDS sources, and later passes over a cache); bounds its memory.
SHUFFLE_BUFFER = 10_000


def stratified_sample(labels: Sequence[int], max_samples: int | None, seed: int) -> np.ndarray:
    """Indices of at most ``max_samples`` items, spread evenly across classes, deterministic in ``seed``."""
    labels = np.asarray(labels)
    n = len(labels)
    if max_samples is None or max_samples >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    per_class = {c: rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)}
    chosen: list[int] = []
    while len(chosen) < max_samples:  # round-robin over classes keeps the mix balanced
        for c in sorted(per_class):
            if per_class[c] and len(chosen) < max_samples:
                chosen.append(per_class[c].pop())
    return np.sort(np.asarray(chosen))


def load_split_images(
    run: Any, split: str = "train", max_samples: int | None = None, seed: int | None = None,
    image_size: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decoded, resized images of a run's split as ``(uint8 NHWC, int labels, paths)``, no augmentation.

    Used for calibration (stratified, ``max_samples``) and for reference outputs. Deterministic: the
    seed defaults to the run's own.
    """
    from cvkeras.run.rundir import RunDir
    from cvkeras.serving.errors import RunDirError

    rd = RunDir(run)
    split_doc = rd.split()
    size = image_size or list(rd.image_size())
    seed = rd.seed() if seed is None else int(seed)
    if split_doc.get("source") == "tfds":
        from cvkeras.data.tfds_source import tfds_split_arrays

        images, labels = tfds_split_arrays(split_doc, split, size)
        idx = stratified_sample(labels, max_samples, seed)
        return images[idx], labels[idx], [f"tfds:{split}:{i}" for i in idx]
    items = split_doc.get(split) or []
    if not items:
        raise RunDirError(f"{run}/split.json: split {quote(split)} is empty")
    meta = split_doc.get("tfrecord")  # TFRecord items name records (SHARD#INDEX), not files
    gone = [] if meta else [p for p, _ in items if not os.path.isfile(p)]  # e.g. a run copied without its data
    if gone:
        print(f"warning: {len(gone)} of {len(items)} {split} file(s) in split.json are missing (e.g. {gone[0]}); "
              "skipped", file=sys.stderr)
        items = [it for it in items if it[0] not in set(gone)]
        if not items:
            raise RunDirError(f"{run}/split.json: none of the {split} files exist any more; restore the data")
    chosen = [(str(items[i][0]), int(items[i][1])) for i in stratified_sample([y for _, y in items], max_samples, seed)]
    if meta:
        from cvkeras.data.tfrecord import in_record_order, record_dataset

        chosen = in_record_order(meta, chosen)
    log = DecodeLog([p for p, _ in chosen])
    ds = (record_dataset(meta, chosen, size, log) if meta else
          decoded_dataset(log.paths, [y for _, y in chosen], size, log)).batch(64)
    images = np.concatenate([x.numpy().astype(np.uint8) for x, _ in ds]) if chosen else np.zeros((0, *size, 3))
    bad = {p for p, _ in log.failures() or []}
    if bad:
        print(f"warning: {len(bad)} {split} file(s) could not be decoded (e.g. {sorted(bad)[0]}); skipped",
              file=sys.stderr)
        chosen = [it for it in chosen if it[0] not in bad]
    return images, np.asarray([y for _, y in chosen], dtype=np.int64), [p for p, _ in chosen]


def cache_file(prefix: str, paths: Sequence[str] | None, labels: Sequence[int] | None, size: Sequence[int],
               tag: str = "") -> str:
    """The file-cache name for one dataset: ``PREFIX-<hash>``, never shared by different contents.

    TensorFlow's file cache replays whatever an earlier pipeline wrote under the same name, so one
    prefix for train and val (or for two runs) would hand one split the other's images and labels.
    The hash covers the tag (the caller's run and split), the image size and every file with its
    label, in order.
    """
    import hashlib

    h = hashlib.sha256(f"{tag}\0{list(map(int, size))}\n".encode())
    for p, y in zip(paths or [], labels if labels is not None else [], strict=True):
        h.update(f"{p}\0{int(y)}\n".encode())
    return f"{prefix}-{h.hexdigest()[:16]}"


def make_dataset(
    paths: Sequence[str] | None,
    labels: Sequence[int] | None,
    size: Sequence[int],
    batch_size: int,
    num_classes: int,
    training: bool = False,
    augmenter: Any = None,
    cache: str = "memory",
    seed: int = 0,
    source: Any = None,
    cache_tag: str = "",
    log: DecodeLog | None = None,
    records: dict[str, Any] | None = None,
):
    """The full input pipeline: shuffle files -> decode/resize -> cache -> shuffle -> batch -> augment -> prefetch.

    ``paths``/``labels`` name image files; alternatively ``source`` is a ready (uint8 image, label)
    dataset (TFDS). Labels come out one-hot float32 (label smoothing and mixup need soft labels).
    ``cache`` is ``memory``, ``none`` or a file path prefix for data that does not fit in memory; the
    file cache is named by :func:`cache_file` (prefix + the content and ``cache_tag``, e.g. run and split).
    ``log`` (files only): files that fail to decode are dropped and named there (:class:`DecodeLog`).
    ``records``: ``paths`` are TFRecord items of these shards (:func:`cvkeras.data.tfrecord.record_dataset`).
    """
    import tensorflow as tf

    cached = bool(cache) and cache != "none"
    if source is not None:
        ds = source.map(lambda x, y: (resize_image(x, size), tf.cast(y, tf.int32)),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    elif records is not None:
        from cvkeras.data.tfrecord import record_dataset

        ds = record_dataset(records, list(zip(paths, labels, strict=True)), size, log, seed if training else None,
                            reshuffle=not cached)
    else:  # training: the file list is shuffled, so the first batch waits for its own images only
        ds = decoded_dataset(paths, labels, size, log, seed if training else None, reshuffle=not cached)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.uint8), y))  # cache 8-bit values: 4x less memory traffic
    if cache == "memory":
        ds = ds.cache()
    elif cached:
        ds = ds.cache(cache_file(str(cache), paths, labels, size, cache_tag))

    def batched(images):
        images = images.batch(batch_size, drop_remainder=False, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)
        return images.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    if training and source is not None:  # TFDS: its records come in a fixed order
        ds = batched(ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True))
    elif training and cached:
        # The first pass fills the cache in the shuffled file order (decoding as it goes, no buffer to fill
        # first); every later pass shuffles the cached images anew. A new iterator (a second fit() stage)
        # starts with a pass in the cache's order again.
        again = ds.shuffle(min(len(paths), SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
        ds = batched(ds).concatenate(batched(again).repeat())
    else:  # validation, or no cache: every pass decodes, the file list reshuffled per pass when training
        ds = batched(ds)
    if training and augmenter is not None and augmenter.active:
        # One seed per batch, new each epoch, fixed by the seed: stateless augmentation runs in parallel
        # and still gives the same batches for the same --seed.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda xy, s: augmenter.stateless(xy[0], xy[1], s),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if augmenter.has_stateful:
            ds = ds.map(augmenter.stateful)  # stateful Keras layers: sequential, so draws stay in order
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1  # parallelism comes from the maps, not inside each op
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)

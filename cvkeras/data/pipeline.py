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

from cvkeras.data.decode_log import DecodeLog, sentinel_png
from cvkeras.serving import preprocess as contract
from cvkeras.serving.errors import quote

#: Decoded images a shuffle buffer holds (TFDS sources, and later passes over a cache); bounds its memory.
SHUFFLE_BUFFER = 10_000


def decode_resize(path, size: Sequence[int]):
    """TensorFlow twin of ``cvkeras.serving.preprocess.load_resized``: file path -> float32 HWC 0..255.

    Large JPEGs are decoded DCT-scaled by the contract's own rule (``preprocess.jpeg_scale_fits``).
    """
    import tensorflow as tf

    return decode_bytes(tf.io.read_file(path), size)


def decode_bytes(raw, size: Sequence[int]):
    """:func:`decode_resize` of the file's bytes."""
    import tensorflow as tf

    is_jpeg = tf.strings.substr(raw, 0, 2) == b"\xff\xd8"

    def jpeg():
        def at(m):  # ratio is an op attribute, not a tensor: one branch per DCT scale
            return lambda: tf.io.decode_jpeg(raw, channels=3, ratio=m, dct_method=contract.JPEG_DCT_METHOD)

        shape = tf.io.extract_jpeg_shape(raw)  # header only
        fits = [(contract.jpeg_scale_fits(shape[1], shape[0], size, m), at(m)) for m in contract.JPEG_SCALES]
        return tf.case(fits, default=at(1), exclusive=False)  # first that fits: contract.jpeg_scale

    def other():
        img = tf.io.decode_image(raw, channels=3, dtype=tf.uint8, expand_animations=False)
        return tf.ensure_shape(img, [None, None, 3])

    img = tf.cond(is_jpeg, jpeg, other)
    return resize_image(img, size)


def resize_image(img, size: Sequence[int]):
    """Resize an HWC image per the contract and round to 8-bit values (float32 out).

    Pillow resamples uint8 images in two passes -- width first, then height -- rounding to 8 bit in
    between; doing the same here (instead of one float resize) cuts the pixels that differ from the
    device by one grey level from ~15 % to ~1 %.
    """
    import tensorflow as tf

    if img.shape[-1] == 1:  # grey sources (e.g. TFDS mnist) are replicated to RGB, as the contract says
        img = tf.image.grayscale_to_rgb(img)
    elif img.shape[-1] == 4:
        img = img[..., :3]
    height, width = int(size[0]), int(size[1])

    def one_pass(x, to):
        x = tf.image.resize(x, to, method=contract.RESIZE_METHOD, antialias=contract.RESIZE_ANTIALIAS)
        return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)  # round half up, like Pillow

    img = tf.cast(img, tf.float32)
    img = one_pass(img, tf.stack([tf.shape(img)[0], width]))
    img = one_pass(img, (height, width))
    return tf.ensure_shape(img, [height, width, 3])


def decoded_dataset(paths: Sequence[str], labels: Sequence[int], size: Sequence[int], log: DecodeLog | None = None,
                    shuffle_seed: int | None = None, reshuffle: bool = False):
    """(image float32 HWC 0..255, label int32) per file, decoded in parallel, in order.

    With ``shuffle_seed`` the file list (names, not images: no decode waits on it) is put in a seeded random
    order first -- drawn anew on each pass with ``reshuffle``, else the same on every pass. ``log``: see
    :func:`decode_elements`.
    """
    import tensorflow as tf

    n = len(paths)
    files = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), np.asarray(labels, dtype=np.int32),
                                                np.arange(n, dtype=np.int64)))
    if shuffle_seed is not None and n:
        files = files.shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=reshuffle)
    return decode_elements(files, n, tf.io.read_file, size, log)


def decode_elements(ds, n: int, fetch: Any, size: Sequence[int], log: DecodeLog | None = None):
    """(image, label) of a dataset of ``(source, label, index)``: ``fetch(source)`` gives the encoded bytes
    (a file read, a record's field); ``index`` (0..n-1) names the element in ``log``.

    With ``log``, an element that fails to decode is dropped (and named in ``log``) instead of ending the pass.
    """
    import tensorflow as tf

    if log is None:
        return ds.map(lambda x, y, i: (decode_bytes(fetch(x), size), y), num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=True)
    end = tf.constant(sentinel_png())
    ds = ds.concatenate(tf.data.Dataset.from_tensors((tf.constant(""), np.int32(0), np.int64(n))))  # last

    def load(x, y, i):
        raw = tf.cond(i < n, lambda: fetch(x), lambda: end)
        return decode_bytes(raw, size), y, i

    def mark(x, y, i):
        return x, y, tf.numpy_function(log.mark, [i], tf.int64, stateful=True)

    def is_file(x, y, i):
        return i < n

    def drop_index(x, y, i):
        return x, y

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    return ds.map(mark).filter(is_file).map(drop_index)


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

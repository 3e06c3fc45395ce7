"""Decoding image files and TFRecord payloads in tf.data, per the image contract of ``cvkeras.serving.preprocess``
(DCT-scaled JPEG decode where the photo is much larger than the input, then the contract's resize), with
decode failures caught and logged (:class:`cvkeras.data.decode_log.DecodeLog`) instead of stopping training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cvkeras.data.decode_log import DecodeLog, sentinel_png
from cvkeras.data.resize import resize_image
from cvkeras.serving import preprocess as contract


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

"""``tfrecord:PATTERN``: sharded TFRecord files of ``tf.train.Example`` as a data source (local or ``gs://``).

Features (the common ImageNet-style names): :data:`ENCODED` ``image/encoded`` (bytes: a JPEG, PNG, BMP or GIF
file), :data:`LABEL` ``image/class/label`` (int64), optional :data:`TEXT` ``image/class/text`` (bytes, the
class name) and :data:`FILENAME` ``image/filename``. Class names come from ``labels.txt`` beside the first
shard (line k names label k), else from ``image/class/text``, label by label (any label values: they are
numbered in sorted order). Shards are listed with ``tf.io.gfile.glob`` (any file system TensorFlow reads).

Each record is an item ``SHARD#INDEX`` (its position in its shard), so a run's ``split.json`` lists its
records as a folder run lists its files, the split is made by the same seeded stratified rule (shards named
``validation-*``/``val-*`` or ``test-*`` are those splits, as given), and a record that does not decode is
dropped while training and named in ``skipped.txt``. Listing reads every record's label once (one pass over
the shards, images not decoded); training then streams the shards, shuffled shard by shard and through a
buffer of encoded records, never a buffer of decoded images.

Example:
    >>> write_tfrecords("photos/", "records/", shards=8)    # records/train-00000-of-00008.tfrecord ... labels.txt
    >>> # cvkeras finetune "tfrecord:records/train-*.tfrecord"
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from cvkeras.data.split import DataError, DataSplit, finish_split
from cvkeras.serving.errors import first_line, quote

ENCODED, LABEL, TEXT, FILENAME = "image/encoded", "image/class/label", "image/class/text", "image/filename"
LABELS_FILE = "labels.txt"
#: Encoded records a training shuffle buffer holds (bytes, not decoded images).
RECORD_BUFFER = 256
HELD_OUT = {"val": re.compile(r"^(val|validation)[-_.]"), "test": re.compile(r"^test[-_.]")}


def ref(shard: str, index: int) -> str:
    """The item name of record ``index`` of ``shard``."""
    return f"{shard}#{index}"


def _scan(shard: str) -> tuple[np.ndarray, list[bytes]]:
    """Labels (and class texts) of every record of one shard, images not decoded."""
    import tensorflow as tf

    spec = {LABEL: tf.io.FixedLenFeature([], tf.int64), TEXT: tf.io.FixedLenFeature([], tf.string, b"")}
    labels, texts = [], []
    try:
        for batch in tf.data.TFRecordDataset(shard).batch(1024).map(lambda r: tf.io.parse_example(r, spec)):
            labels.append(batch[LABEL].numpy())
            texts += batch[TEXT].numpy().tolist()
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as exc:
        raise DataError(f"{shard}: not a TFRecord of tf.train.Example with an int64 {quote(LABEL)} "
                        f"({first_line(exc, 160)}); write it with cvkeras.data.tfrecord.write_tfrecords") from None
    return (np.concatenate(labels) if labels else np.zeros(0, np.int64)), texts


def _class_names(shards: list[str], labels: np.ndarray, texts: list[bytes], spec: str) -> tuple[list[str], dict]:
    """Class names and the map from record label to class index."""
    import tensorflow as tf

    listing = os.path.join(os.path.dirname(shards[0]), LABELS_FILE)
    values = sorted({int(y) for y in labels})
    if tf.io.gfile.exists(listing):
        with tf.io.gfile.GFile(listing) as fh:
            names = [line.strip() for line in fh if line.strip()]
        bad = [y for y in values if not 0 <= y < len(names)]
        if bad:
            raise DataError(f"{listing}: names {len(names)} classes but a record has label {bad[0]}; "
                            "list one name per label, label 0 first")
        return names, {y: y for y in range(len(names))}
    text_of: dict[int, str] = {}
    for y, t in zip(labels.tolist(), texts, strict=True):
        if t and text_of.setdefault(y, t.decode("utf-8", "replace")) != t.decode("utf-8", "replace"):
            raise DataError(f"{spec}: label {y} has two class texts ({quote(text_of[y])} and "
                            f"{quote(t.decode('utf-8', 'replace'))}); make {TEXT} one name per label")
    missing = [y for y in values if y not in text_of]
    if missing:
        raise DataError(f"{spec}: no class name for label {missing[0]}; put {LABELS_FILE} (one name per line, "
                        f"label 0 first) beside the shards or write {quote(TEXT)} in every record")
    return [text_of[y] for y in values], {y: i for i, y in enumerate(values)}


def load_tfrecord(spec: str, val_split: float = 0.2, seed: int = 42, test_split: float = 0.0) -> DataSplit:
    """List the shards of ``tfrecord:PATTERN``, read their labels and split their records."""
    import tensorflow as tf

    pattern = spec.split(":", 1)[1]
    try:
        shards = sorted(tf.io.gfile.glob(pattern)) if pattern else []
        shards = [s if "://" in s else os.path.abspath(s) for s in shards]  # local: absolute, as files are
    except tf.errors.OpError as exc:
        raise DataError(f"{spec}: cannot list the shards ({first_line(exc, 160)}); check the path") from None
    if not shards:
        raise DataError(f"{spec}: no file matches; pass tfrecord:PATTERN, e.g. tfrecord:data/train-*.tfrecord")
    scans = [_scan(s) for s in shards]
    labels = np.concatenate([lab for lab, _ in scans])
    if not len(labels):
        raise DataError(f"{spec}: the shards hold no records (empty, or cut short); write them with "
                        "cvkeras.data.tfrecord.write_tfrecords")
    classes, index = _class_names(shards, labels, [t for _, ts in scans for t in ts], spec)
    splits: dict[str, list[tuple[str, int]]] = {"train": []}
    for shard, (lab, _) in zip(shards, scans, strict=True):
        name = next((k for k, rx in HELD_OUT.items() if rx.match(os.path.basename(shard))), "train")
        splits.setdefault(name, []).extend((ref(shard, i), index[int(y)]) for i, y in enumerate(lab.tolist()))
    result = finish_split(classes, splits, spec, val_split, seed, "tfrecord", pattern, test_split=test_split,
                          check_files=False)
    result.tfrecord = {"shards": shards, "counts": [len(lab) for lab, _ in scans]}
    return result


def record_dataset(meta: dict[str, Any], items: Sequence[tuple[str, int]], size: Sequence[int], log: Any = None,
                   shuffle_seed: int | None = None, reshuffle: bool = False):
    """(image float32 HWC 0..255, label int32) of the records ``items`` names, decoded in parallel.

    In shard order, item order within a shard (:func:`in_record_order` sorts items so); with
    ``shuffle_seed`` the shards come in a seeded random order (anew each pass with ``reshuffle``), read
    four at a time, through a buffer of :data:`RECORD_BUFFER` encoded records. ``log``: see
    :func:`cvkeras.data.decode.decode_elements`.
    """
    import tensorflow as tf

    from cvkeras.data.decode import decode_elements

    shards, counts = list(meta["shards"]), [int(c) for c in meta["counts"]]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    where = {s: k for k, s in enumerate(shards)}
    position = np.full(int(offsets[-1]), -1, np.int64)  # global record number -> item position (-1: not here)
    used = set()
    for pos, (r, _) in enumerate(items):
        shard, i = r.rsplit("#", 1)
        position[offsets[where[shard]] + int(i)] = pos
        used.add(where[shard])
    keep = sorted(used)
    files = tf.data.Dataset.from_tensor_slices(([shards[k] for k in keep], offsets[keep]))
    if shuffle_seed is not None and len(keep) > 1:
        files = files.shuffle(len(keep), seed=shuffle_seed, reshuffle_each_iteration=reshuffle)
    cycle = 4 if shuffle_seed is not None else 1
    parallel = {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": True} if cycle > 1 else {}
    records = files.interleave(lambda s, o: tf.data.TFRecordDataset(s).enumerate().map(lambda i, r: (r, o + i)),
                               cycle_length=cycle, **parallel)
    position_t = tf.constant(position)
    records = records.map(lambda r, g: (r, tf.gather(position_t, g))).filter(lambda r, k: k >= 0)
    if shuffle_seed is not None:
        records = records.shuffle(RECORD_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=reshuffle)
    labels_t = tf.constant(np.asarray([y for _, y in items], np.int32))
    records = records.map(lambda r, k: (r, tf.gather(labels_t, k), k))

    def fetch(serialized):
        return tf.io.parse_single_example(serialized, {ENCODED: tf.io.FixedLenFeature([], tf.string)})[ENCODED]

    return decode_elements(records, len(items), fetch, size, log)


def encoded_bytes(refs: Sequence[str]) -> dict[str, bytes]:
    """The encoded image of each record ``refs`` names (``SHARD#INDEX``), read shard by shard."""
    import tensorflow as tf

    wanted: dict[str, set[int]] = {}
    for r in refs:
        shard, i = r.rsplit("#", 1)
        wanted.setdefault(shard, set()).add(int(i))
    out = {}
    for shard, indices in wanted.items():
        for i, record in enumerate(tf.data.TFRecordDataset(shard).as_numpy_iterator()):
            if i in indices:
                out[ref(shard, i)] = tf.train.Example.FromString(record).features.feature[ENCODED].bytes_list.value[0]
    return out


def in_record_order(meta: dict[str, Any], items: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """``items`` in the order :func:`record_dataset` reads them unshuffled (shard, then index)."""
    where = {s: k for k, s in enumerate(meta["shards"])}
    return sorted(items, key=lambda it: (where[it[0].rsplit("#", 1)[0]], int(it[0].rsplit("#", 1)[1])))


def write_tfrecords(folder: str | os.PathLike, out: str, shards: int = 8, prefix: str = "train") -> list[str]:
    """Convert a folder of class sub-folders into ``OUT/PREFIX-00000-of-0000N.tfrecord`` shards and
    ``OUT/labels.txt`` (images stored as they are, not re-encoded; round-robin over the shards)."""
    import tensorflow as tf

    from cvkeras.serving.images import class_folders, list_images

    classes = class_folders(folder)
    items = [(p, y, c.name) for y, c in enumerate(classes) for p in list_images(c)]
    if len(classes) < 2 or not items:
        raise DataError(f"{folder}: need a folder of two or more class sub-folders of images to convert")
    tf.io.gfile.makedirs(out)
    names = [os.path.join(out, f"{prefix}-{k:05d}-of-{shards:05d}.tfrecord") for k in range(shards)]
    writers = [tf.io.TFRecordWriter(n) for n in names]

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    try:
        for k, (path, y, name) in enumerate(items):
            example = tf.train.Example(features=tf.train.Features(feature={
                ENCODED: feature(path.read_bytes()), LABEL: feature(y), TEXT: feature(name.encode()),
                FILENAME: feature(path.name.encode())}))
            writers[k % shards].write(example.SerializeToString())
    finally:
        for w in writers:
            w.close()
    with tf.io.gfile.GFile(os.path.join(out, LABELS_FILE), "w") as fh:
        fh.write("".join(f"{c.name}\n" for c in classes))
    return names

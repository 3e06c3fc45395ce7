"""TFDS sources (``tfds:NAME[:config]``): the (uint8 image, label) datasets and arrays TensorFlow decodes."""

from __future__ import annotations

from typing import Any

import numpy as np

from cvkeras.data.resize import resize_image
from cvkeras.serving.errors import first_line, quote


def tfds_dataset(tfds_meta: dict[str, Any], split: str):
    """The (uint8 image, label) tf.data dataset of one split of a TFDS source."""
    import tensorflow_datasets as tfds

    from cvkeras.data.split import DataError

    name = tfds_meta["splits"].get(split)
    if not name:
        raise DataError(f"tfds:{tfds_meta['name']}: has no {split} split")
    full = tfds_meta["name"] + (f"/{tfds_meta['config']}" if tfds_meta.get("config") else "")
    try:
        return tfds.load(full, split=name, data_dir=tfds_meta.get("data_dir"), as_supervised=True,
                         shuffle_files=False, download=True)
    except Exception as exc:  # offline, not prepared, bad split name...
        raise DataError(f"tfds:{full}: cannot load split {quote(name)} ({first_line(exc, 200)}); "
                        "prepare it or pass --tfds-data-dir") from None


def tfds_split_arrays(split_doc: dict[str, Any], split: str, size) -> tuple[np.ndarray, np.ndarray]:
    """All images of a TFDS split, resized per the contract, as uint8 arrays (for calibration/eval)."""
    ds = tfds_dataset(split_doc["tfds"], split).map(lambda x, y: (resize_image(x, size), y)).batch(256)
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy().astype(np.uint8))
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)

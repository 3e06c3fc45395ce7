"""What ``cvkeras check`` measures per image: the data listed and split as finetune does, each image hashed
(:mod:`cvkeras.data.duplicates`), thumbnailed and embedded by the frozen backbone; :mod:`cvkeras.data.check`
turns the :class:`Analysis` into findings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cvkeras.data import duplicates
from cvkeras.models.registry import ResolvedModel

SPLITS = ("train", "val", "test")


@dataclass
class Analysis:
    """Everything measured per image, in one order (train, val, test): the check's raw material."""

    classes: list[str]
    keys: list[str]  # file path, or tfds:SPLIT:INDEX
    splits: list[str]
    labels: np.ndarray
    signatures: list[duplicates.Signature]
    pixels: Callable[[int], str | None]  # digest of the full decode of image i
    thumbnail: Callable[[int], np.ndarray]  # small RGB uint8 image for the page
    features: np.ndarray  # L2-normalised pooled backbone features
    input_size: list[int]
    skipped: list[tuple[str, str]]
    pretrained: bool = True  # random-weight features measure no similarity: near copies by pHash alone

    @property
    def hashes(self) -> np.ndarray:
        return np.asarray([s.phash for s in self.signatures], dtype=np.uint64)


def feature_extractor(choice: ResolvedModel, weights: str):
    """The frozen backbone with finetune's input normalisation and global pooling (the classifier minus its
    head, built by :func:`cvkeras.models.build.build_classifier`); returns the Keras model and its input size."""
    import keras

    from cvkeras.models.build import build_classifier

    size = choice.image_size
    clf = build_classifier(choice.spec, 2, size, choice.alpha, weights, dropout=0.0)
    return keras.Model(clf.inputs, clf.get_layer("pool").output), size


def pretrained(weights: str) -> bool:
    """Whether ``weights`` names trained weights (their features measure similarity; random ones do not)."""
    from cvkeras.models.build import resolve_weights

    return str(weights).lower() not in ("none", "random", "") and resolve_weights(weights) is not None


def normed(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine similarity is then a dot product)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def analyse(data: str, choice: ResolvedModel, weights: str,
            val_split: float | None = None, seed: int | None = None, tfds_data_dir: str | None = None,
            workers: int = 4) -> Analysis:
    """List and split ``data`` as finetune does, then hash, measure and embed every image."""
    from cvkeras.data.sources import load_source
    from cvkeras.run.config import FinetuneConfig

    defaults = FinetuneConfig()
    split = load_source(data, defaults.val_split if val_split is None else val_split,
                        defaults.seed if seed is None else seed, tfds_data_dir)
    import keras

    keras.utils.set_random_seed(defaults.seed if seed is None else seed)  # random-weight backbones repeat too
    extractor, size = feature_extractor(choice, weights)
    if split.source == "tfds":
        return _analyse_tfds(split, extractor, size, weights)
    if split.source == "tfrecord":
        from cvkeras.data.split import DataError

        raise DataError(f"{data}: cvkeras check reads image files, not TFRecord shards; check the folder the "
                        "shards were written from")
    items = [(p, y, name) for name in SPLITS for p, y in getattr(split, name)]
    paths = [p for p, _, _ in items]
    labels = np.asarray([y for _, y, _ in items], dtype=np.int64)
    signatures = duplicates.file_signatures(paths, workers)
    features = _file_features(extractor, paths, labels, size)

    def thumbnail(i: int) -> np.ndarray:
        from cvkeras.serving.preprocess import load_image

        return _thumb(load_image(paths[i]))

    return Analysis(split.classes, paths, [n for _, _, n in items], labels, signatures,
                    lambda i: duplicates.pixel_digest(paths[i]), thumbnail, features, size, list(split.skipped),
                    pretrained(weights))


def _file_features(extractor, paths: list[str], labels: np.ndarray, size: list[int]) -> np.ndarray:
    """Pooled features of every file, decoded by finetune's own pipeline (no augmentation)."""
    from cvkeras.data.decode import decoded_dataset

    ds = decoded_dataset(paths, labels, size).map(lambda x, y: x).batch(32).prefetch(2)
    return normed(extractor.predict(ds, verbose=0))


def _thumb(image: np.ndarray, side: int = 128) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    img.thumbnail((side, side), Image.BILINEAR)
    return np.asarray(img)


def _analyse_tfds(split, extractor, size: list[int], weights: str) -> Analysis:
    """TFDS sources: the examples as TensorFlow decodes them (no files: exact means the same pixels)."""
    import hashlib

    from cvkeras.data.resize import resize_image
    from cvkeras.data.tfds_source import tfds_dataset
    from cvkeras.serving.preprocess import load_resized

    keys, names, labels, sigs, thumbs, resized = [], [], [], [], [], []
    for name in SPLITS:
        if not split.tfds["splits"].get(name):
            continue
        ds = tfds_dataset(split.tfds, name)
        for i, (image, label) in enumerate(ds.as_numpy_iterator()):
            image = image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)
            digest = hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()
            thumb = load_resized(image, (duplicates.HASH_SIZE,) * 2)
            sigs.append(duplicates.Signature(digest, int(duplicates.phash_array(thumb)[0]), image.shape[1],
                                             image.shape[0], duplicates.colour_layout(thumb)[0]))
            keys.append(f"tfds:{name}:{i}")
            names.append(name)
            labels.append(int(label))
            thumbs.append(_thumb(image))
            resized.append(resize_image(image, size).numpy().astype(np.uint8))
    features = extractor.predict(np.stack(resized).astype(np.float32), batch_size=32, verbose=0)
    return Analysis(list(split.classes), keys, names, np.asarray(labels, dtype=np.int64), sigs,
                    lambda i: sigs[i].sha256, lambda i: thumbs[i], normed(features), size, [],
                    pretrained(weights))

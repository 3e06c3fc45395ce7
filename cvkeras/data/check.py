"""``cvkeras check DATA``: what is wrong with a labelled image set before it costs a training run.

The data is listed and split exactly as ``finetune`` lists and splits it (:func:`cvkeras.data.sources.load_source`,
same ``--val-split``/``--seed`` defaults), then:

* duplicates (:mod:`cvkeras.data.duplicates`): exact (same bytes or pixels) and near copies, within a split and
  across splits (leakage), and copies filed under different classes;
* label issues: out-of-fold probabilities of a logistic regression on the frozen backbone's pooled features
  (stratified k-fold, so no photo is scored by a model that saw it), found and ranked by cleanlab's
  ``find_label_issues``; each with its given and suggested class;
* outliers: cleanlab's ``OutOfDistribution`` kNN score within each class, far below the class's own
  (Tukey's fence);
* class counts and imbalance, tiny and extreme-aspect images, and the files finetune would skip.

The result is one ``cvkeras.check/1`` document (docs/json.md); :mod:`cvkeras.data.check_html` draws it.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvkeras.data import duplicates
from cvkeras.serving.errors import CvkerasError

#: cleanlab's ranking and filter of label issues (docs/check.md: the three rankings and seven filters of
#: ``find_label_issues`` compared on flowers with 5 % planted label errors).
RANKED_BY = "self_confidence"
FILTER_BY = "predicted_neq_given"
FOLDS = 5  # cross-validation folds for the out-of-fold probabilities
OUTLIER_FENCE = 1.5  # an outlier scores below Q1 - OUTLIER_FENCE * IQR of its class's scores (Tukey's fence)
IMBALANCE_RATIO = 3.0  # largest / smallest class above this is reported as imbalance
TINY_FRACTION = 0.25  # shorter side below this fraction of the model input: upscaled more than 4x
MAX_ASPECT = 4.0  # longer / shorter side above this: squashed out of shape by the square input
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


def feature_extractor(model: str, alpha: float | None, weights: str, image_size: int | None):
    """The frozen backbone with finetune's input normalisation and global pooling (the classifier minus its
    head, built by :func:`cvkeras.models.build.build_classifier`); returns the Keras model and its input size."""
    import keras

    from cvkeras.models.build import build_classifier
    from cvkeras.models.registry import get, resolve_alpha

    spec = get(model)
    size = [image_size, image_size] if image_size else list(spec.input_size)
    clf = build_classifier(spec, 2, size, resolve_alpha(spec, alpha), weights, dropout=0.0)
    return keras.Model(clf.inputs, clf.get_layer("pool").output), size


def _pretrained(weights: str) -> bool:
    from cvkeras.models.build import _resolve_weights

    return str(weights).lower() not in ("none", "random", "") and _resolve_weights(weights) is not None


def _normed(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def analyse(data: str, model: str, alpha: float | None, weights: str, image_size: int | None = None,
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
    extractor, size = feature_extractor(model, alpha, weights, image_size)
    if split.source == "tfds":
        return _analyse_tfds(split, extractor, size, weights)
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
                    _pretrained(weights))


def _file_features(extractor, paths: list[str], labels: np.ndarray, size: list[int]) -> np.ndarray:
    """Pooled features of every file, decoded by finetune's own pipeline (no augmentation)."""
    from cvkeras.data.pipeline import decoded_dataset

    ds = decoded_dataset(paths, labels, size).map(lambda x, y: x).batch(32).prefetch(2)
    return _normed(extractor.predict(ds, verbose=0))


def _thumb(image: np.ndarray, side: int = 128) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    img.thumbnail((side, side), Image.BILINEAR)
    return np.asarray(img)


def _analyse_tfds(split, extractor, size: list[int], weights: str) -> Analysis:
    """TFDS sources: the examples as TensorFlow decodes them (no files: exact means the same pixels)."""
    import hashlib

    from cvkeras.data.pipeline import resize_image, tfds_dataset
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
                    lambda i: sigs[i].sha256, lambda i: thumbs[i], _normed(features), size, [],
                    _pretrained(weights))


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int,
                              seed: int = 0) -> np.ndarray:
    """Class probabilities of every image from a logistic regression that never saw it (stratified k-fold,
    k = min(FOLDS, smallest class)); classes too small to split (one image) keep their prior."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=num_classes)
    folds = int(min(FOLDS, counts[counts > 0].min()))
    if folds < 2:
        raise CheckError("a class has a single image: label issues need at least two per class; add images")
    probs = np.zeros((len(labels), num_classes), dtype=np.float64)
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        clf.fit(features[fit], labels[fit])
        probs[np.ix_(held, clf.classes_)] = clf.predict_proba(features[held])
    return probs


class CheckError(CvkerasError, ValueError):
    """Data the check cannot score; the message names the fix."""


def label_issues(labels: np.ndarray, probs: np.ndarray, ranked_by: str = RANKED_BY) -> list[tuple[int, int, float]]:
    """cleanlab's likely label errors, most likely first: (index, suggested class, label quality score)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    ranked = find_label_issues(labels, probs, return_indices_ranked_by=ranked_by, filter_by=FILTER_BY)
    scores = get_label_quality_scores(labels, probs, method=ranked_by)
    out = []
    for i in ranked:
        other = probs[i].copy()
        other[labels[i]] = -1.0  # the most probable class other than the given one
        out.append((int(i), int(other.argmax()), float(scores[i])))
    return out


def outliers(features: np.ndarray, labels: np.ndarray) -> list[tuple[int, float]]:
    """Images unlike the rest of their class: cleanlab's kNN out-of-distribution score within each class,
    below Q1 - OUTLIER_FENCE x IQR of that class's scores; lowest first."""
    from cleanlab.outlier import OutOfDistribution

    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 5:
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # cleanlab prints progress; stdout may hold --json
            scores = OutOfDistribution(params={"k": min(10, len(idx) - 1)}).fit_score(features=features[idx])
        q1, q3 = np.percentile(scores, [25, 75])
        out += [(int(idx[j]), float(scores[j])) for j in np.flatnonzero(scores < q1 - OUTLIER_FENCE * (q3 - q1))]
    return sorted(out, key=lambda t: t[1])


def duplicate_groups(a: Analysis) -> list[duplicates.Group]:
    """Exact and near copies among all images (pHash, byte/pixel digests and pretrained features)."""
    hashes = a.hashes
    exact = duplicates.exact_pairs([s.sha256 for s in a.signatures], hashes, a.pixels)
    layouts = np.stack([s.layout for s in a.signatures])
    near = duplicates.near_pairs(hashes, layouts, _normed(a.features - a.features.mean(axis=0)) if a.pretrained
                                 else None)
    return duplicates.group_pairs(len(a.keys), exact, near, a.splits, a.labels)


def check_document(a: Analysis, settings: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """The ``cvkeras.check/1`` document of an analysis (``run_check`` adds its wall time, ``seconds``)."""
    from cvkeras.serving.schema import schema_id

    names = a.classes
    groups = duplicate_groups(a)
    probs = out_of_fold_probabilities(a.features, a.labels, len(names), seed)
    issues = label_issues(a.labels, probs)
    counts = {c: {s: int(np.sum((a.labels == i) & (np.asarray(a.splits) == s))) for s in SPLITS}
              for i, c in enumerate(names)}
    totals = [sum(v.values()) for v in counts.values()]
    side = min(a.input_size)
    small = []
    for i, s in enumerate(a.signatures):
        short, long = min(s.width, s.height), max(s.width, s.height)
        why = ("tiny" if short < TINY_FRACTION * side else
               "extreme_aspect" if long > MAX_ASPECT * short else None)
        if why:
            small.append({"path": a.keys[i], "width": s.width, "height": s.height, "why": why})
    return {
        "schema": schema_id("check"),
        **settings,
        "images": {s: int(np.sum(np.asarray(a.splits) == s)) for s in SPLITS},
        "classes": {c: {**counts[c], "total": totals[i]} for i, c in enumerate(names)},
        "imbalance": max(totals) / max(min(totals), 1),
        "duplicates": [{"paths": [a.keys[m] for m in g.members], "kind": g.kind, "cross_split": g.cross_split,
                        "splits": g.splits, "labels": [names[y] for y in g.labels],
                        "conflicting_labels": g.conflicting} for g in groups],
        "label_issues": [{"path": a.keys[i], "split": a.splits[i], "given": names[int(a.labels[i])],
                          "suggested": names[s], "score": score} for i, s, score in issues],
        "outliers": [{"path": a.keys[i], "class": names[int(a.labels[i])], "score": score}
                     for i, score in outliers(a.features, a.labels)],
        "small_images": small,
        "skipped": [{"path": p, "reason": why} for p, why in a.skipped],
    }


def run_check(data: str, model: str | None = None, alpha: float | None = None, weights: str | None = None,
              image_size: int | None = None, val_split: float | None = None, seed: int | None = None,
              tfds_data_dir: str | None = None) -> tuple[dict[str, Any], Analysis]:
    """Check ``data`` end to end: the document and the analysis it was computed from (for the page)."""
    from cvkeras.models.registry import get, resolve_alpha
    from cvkeras.run.config import FinetuneConfig

    defaults = FinetuneConfig()
    model = get(model or defaults.model).name
    weights = weights or defaults.weights
    seed = defaults.seed if seed is None else seed
    start = time.perf_counter()
    a = analyse(data, model, alpha, weights, image_size, val_split, seed, tfds_data_dir)
    settings = {"data": data, "model": model, "alpha": resolve_alpha(get(model), alpha), "weights": weights,
                "input_size": list(a.input_size), "seed": seed,
                "val_split": defaults.val_split if val_split is None else val_split,
                "ranked_by": RANKED_BY, "filter_by": FILTER_BY, "phash_max_distance": duplicates.PHASH_MAX_DISTANCE,
                "layout_min": duplicates.LAYOUT_MIN, "cosine_min": duplicates.COSINE_MIN if a.pretrained else None}
    doc = check_document(a, settings, seed)
    doc["seconds"] = round(time.perf_counter() - start, 3)
    return doc, a


def summary_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The console's summary table: one row per finding type."""
    dups = doc["duplicates"]
    n = sum(doc["images"].values())
    return [
        ("images", ", ".join(f"{doc['images'][s]} {s}" for s in SPLITS if doc["images"][s])),
        ("classes", f"{len(doc['classes'])}, largest/smallest {doc['imbalance']:.1f}"
         + (" (imbalanced)" if doc["imbalance"] > IMBALANCE_RATIO else "")),
        ("duplicate groups", f"{len(dups)} ({sum(d['kind'] == 'exact' for d in dups)} exact, "
                             f"{sum(d['kind'] == 'near' for d in dups)} near)"),
        ("  across splits", str(sum(d["cross_split"] for d in dups))),
        ("  conflicting labels", str(sum(d["conflicting_labels"] for d in dups))),
        ("label issues", f"{len(doc['label_issues'])} of {n}"),
        ("outliers", str(len(doc["outliers"]))),
        ("tiny / extreme aspect", f"{sum(s['why'] == 'tiny' for s in doc['small_images'])} / "
                                  f"{sum(s['why'] == 'extreme_aspect' for s in doc['small_images'])}"),
        ("skipped (unreadable)", str(len(doc["skipped"]))),
    ]

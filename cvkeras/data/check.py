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
from typing import Any

import numpy as np

from cvkeras.data import duplicates
from cvkeras.data.check_analysis import SPLITS, Analysis, analyse, normed
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
    near = duplicates.near_pairs(hashes, layouts, normed(a.features - a.features.mean(axis=0)) if a.pretrained
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
    from cvkeras.models.registry import resolve_model
    from cvkeras.run.config import FinetuneConfig

    defaults = FinetuneConfig()
    choice = resolve_model(model or defaults.model, alpha, image_size or None)
    weights = weights or defaults.weights
    seed = defaults.seed if seed is None else seed
    start = time.perf_counter()
    a = analyse(data, choice, weights, val_split, seed, tfds_data_dir)
    settings = {"data": data, "model": choice.spec.name, "alpha": choice.alpha, "weights": weights,
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

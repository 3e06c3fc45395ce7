"""Benchmark ``cvkeras check`` on a real photo set with planted problems; prints one JSON document.

A copy of DATA (never DATA itself) is laid out as finetune's own split (``train/`` + ``val/``, the seeded
stratified split ``cvkeras.data.split.stratified_split`` makes), then problems are planted in it:

* ``--mislabel`` (5 %) of the photos moved to another class folder of their split;
* ``--near`` (50) near copies of training photos written into ``val/`` of the same class: rescaled 50-90 %,
  JPEG quality 60-90, up to 5 % cropped, brightness within +-15 %;
* the set's own byte-duplicates are found by digest and counted as planted exact copies.

Reported: precision and recall of duplicates (pairs) and label issues (recall in the top 2 x planted of
each cleanlab ranking), near-copy detectors compared (pHash alone at several distances, feature cosine
alone, the combined rule), the time per 1 000 images of the check and of finetune's cheap cross-split
pass, and the same check on the unplanted set (what a clean set produces).

Example:
    python bench/bench_check.py --data ../shared/data/flowers --alpha 0.35 \\
        --weights ../shared/data/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _plant(src: Path, dst: Path, seed: int, mislabel: float, near: int) -> dict:
    """Copy ``src`` as finetune splits it, plant the problems; returns the ground truth."""
    from PIL import Image

    from cvkeras.data.sources import scan_folder

    split = scan_folder(src, 0.2, seed)
    rng = np.random.default_rng(seed)
    where: dict[str, Path] = {}
    for name in ("train", "val"):
        for p, y in getattr(split, name):
            out = dst / name / split.classes[y] / Path(p).name
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, out)
            where[p] = out
    items = split.train + split.val
    moved = {}
    for k in rng.choice(len(items), int(round(mislabel * len(items))), replace=False):
        p, y = items[k]
        wrong = int(rng.choice([c for c in range(len(split.classes)) if c != y]))
        out = where[p].parent.parent / split.classes[wrong] / where[p].name
        out.parent.mkdir(parents=True, exist_ok=True)
        where[p].rename(out)
        where[p] = out
        moved[str(out.resolve())] = (split.classes[y], split.classes[wrong])
    train = [p for p, _ in split.train if str(where[p].resolve()) not in moved]
    pairs = []
    for k in rng.choice(len(train), near, replace=False):
        p = train[k]
        with Image.open(where[p]) as im:
            img = im.convert("RGB")
        w, h = img.size
        crop = rng.uniform(0.0, 0.05)
        left, top = rng.uniform(0, crop) * w, rng.uniform(0, crop) * h
        img = img.crop((int(left), int(top), int(w - (crop * w - left)), int(h - (crop * h - top))))
        scale = rng.uniform(0.5, 0.9)
        img = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.85, 1.15)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(60, 91)))
        out = dst / "val" / where[p].parent.name / f"nearcopy_{k}_{where[p].stem}.jpg"
        out.write_bytes(buf.getvalue())
        pairs.append((str(where[p].resolve()), str(out.resolve())))
    by_digest: dict[str, list[str]] = {}
    for f in sorted((dst).rglob("*.jpg")):
        by_digest.setdefault(hashlib.sha256(f.read_bytes()).hexdigest(), []).append(str(f.resolve()))
    exact = [tuple(g) for g in by_digest.values() if len(g) > 1]
    return {"moved": moved, "near": pairs, "exact": exact, "n": sum(1 for _ in dst.rglob("*.jpg"))}


def _pairs_of_groups(groups, keys) -> set[frozenset]:
    return {frozenset((keys[a], keys[b])) for g in groups for a, b in itertools.combinations(g.members, 2)}


def _names(pairs: set[frozenset]) -> set[frozenset]:
    """Pairs by file name: the planted copy and the data itself hold the same photos under other folders."""
    return {frozenset(Path(p).name for p in pair) for pair in pairs}


def _pr(found: set[frozenset], truth: set[frozenset], clean: set[frozenset] | None = None) -> dict:
    hit = found & truth
    out = {"found_pairs": len(found), "true_pairs": len(truth), "recall": len(hit) / max(len(truth), 1),
           "precision": len(hit) / max(len(found), 1)}
    if clean is not None:  # pairs found in the unplanted data too are copies the data already had
        rest = {p for p in found if frozenset(Path(k).name for k in p) not in clean}
        out["pairs_also_in_unplanted_data"] = len(found) - len(rest)
        out["precision_excluding_pairs_in_unplanted_data"] = len(hit & rest) / max(len(rest), 1)
    return out


def _detectors(a, clean, truth: set[frozenset]) -> dict:
    """Near-copy detectors compared on the same images (pairs across train/val only, as planted): each is
    scored on the planted set, its pairs on the unplanted set are excluded from the precision denominator."""
    from cvkeras.data import duplicates
    from cvkeras.data.check_analysis import normed as _normed

    def parts(x):
        splits = np.asarray(x.splits)
        rows, cols = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "val")
        feats = _normed(x.features - x.features.mean(axis=0))
        lay = np.stack([s.layout for s in x.signatures])
        return (rows, cols, duplicates.hamming(x.hashes[rows], x.hashes[cols]), lay[rows] @ lay[cols].T,
                feats[rows] @ feats[cols].T)

    def pairs(x, mask, rows, cols) -> set[frozenset]:
        return {frozenset((x.keys[rows[i]], x.keys[cols[j]])) for i, j in zip(*np.nonzero(mask), strict=True)}

    p, c = parts(a), parts(clean)
    rules = {f"phash<={t}": (lambda d, lay, cos, t=t: d <= t) for t in (6, 8, 10, 12, 14)}
    rules |= {f"centred feature cosine>={v}": (lambda d, lay, cos, v=v: cos >= v) for v in (0.7, 0.8, 0.9)}
    rules |= {f"phash<={t} & layout>={v}": (lambda d, lay, cos, t=t, v=v: (d <= t) & (lay >= v))
              for t, v in ((12, 0.85), (12, 0.9), (14, 0.9))}
    pd, ld, cd = duplicates.PHASH_MAX_DISTANCE, duplicates.LAYOUT_MIN, duplicates.COSINE_MIN
    rules["finetune's rule (phash & layout)"] = lambda d, lay, cos: (d <= pd) & (lay >= ld)
    rules["check's rule (phash & layout & cosine)"] = lambda d, lay, cos: (d <= pd) & (lay >= ld) & (cos >= cd)
    out = {}
    for name, rule in rules.items():
        clean_pairs = _names(pairs(clean, rule(*c[2:]), *c[:2]))
        out[name] = _pr(pairs(a, rule(*p[2:]), *p[:2]), truth, clean_pairs)
    return out


def _label_rankings(a, moved: dict) -> dict:
    """Recall of planted label errors in the top 2 x planted of cleanlab's rankings and filters."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from cvkeras.data.check import FILTER_BY, RANKED_BY, out_of_fold_probabilities

    probs = out_of_fold_probabilities(a.features, a.labels, len(a.classes), 42)
    planted = {i for i, k in enumerate(a.keys) if k in moved}
    top = 2 * len(planted)
    out: dict = {"planted": len(planted), "oof_accuracy": float(np.mean(probs.argmax(1) == a.labels))}

    def score(ranked) -> dict:
        found = set(ranked.tolist())
        return {"flagged": len(ranked), "flagged_precision": len(planted & found) / max(len(ranked), 1),
                "flagged_recall": len(planted & found) / len(planted),
                "recall_in_top_2x_planted": len(planted & set(ranked[:top].tolist())) / len(planted)}

    for method in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
        order = np.argsort(get_label_quality_scores(a.labels, probs, method=method), kind="stable")
        out[f"ranked_by={method}, no filter"] = score(order)
        out[f"ranked_by={method}, filter_by={FILTER_BY}"] = score(find_label_issues(
            a.labels, probs, return_indices_ranked_by=method, filter_by=FILTER_BY))
    for filter_by in ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
                      "low_normalized_margin", "low_self_confidence"):
        out[f"ranked_by={RANKED_BY}, filter_by={filter_by}"] = score(find_label_issues(
            a.labels, probs, return_indices_ranked_by=RANKED_BY, filter_by=filter_by))
    return out


def finetune_timing(data: str, weights: str, alpha: float, seed: int) -> dict:
    """finetune's leak pass against a default run on ``data``: the pass alone, and runs of 1 and 2 default
    stage-1 epochs (all else default). A default run has the recipe's E1 + E2 epochs; every epoch after the
    first costs at least a cached stage-1 epoch (W2 - W1: stage 2 also back-propagates), so
    W1 + (E1 + E2 - 1) x (W2 - W1) is a lower bound of its wall time and the share below an upper bound."""
    import subprocess

    from cvkeras.data.duplicates import cross_split_leaks
    from cvkeras.data.sources import load_source
    from cvkeras.run.config import FinetuneConfig
    from cvkeras.train.recipe import resolve

    split = load_source(data, 0.2, seed)
    start = time.perf_counter()
    groups, _ = cross_split_leaks(split)
    leak = time.perf_counter() - start
    recipe = resolve(FinetuneConfig(data=data, alpha=alpha, weights=weights), len(split.train), len(split.classes))
    walls = {}
    with tempfile.TemporaryDirectory(prefix="bench_check_ft-") as tmp:
        for epochs in (1, 2):
            cmd = [sys.executable, "-m", "cvkeras.cli", "finetune", data, "--alpha", str(alpha), "--weights", weights,
                   "--epochs", str(epochs), "--fine-tune-epochs", "0", "--quiet", "--output", f"{tmp}/run{epochs}"]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls[epochs] = time.perf_counter() - start
    epochs = int(recipe.config.epochs) + int(recipe.config.fine_tune_epochs)
    lower = walls[1] + (epochs - 1) * max(walls[2] - walls[1], 0.0)
    return {"images": len(split.train) + len(split.val), "leak_pass_seconds": round(leak, 2),
            "cross_split_groups": len(groups), "run_1_epoch_seconds": round(walls[1], 1),
            "run_2_epochs_seconds": round(walls[2], 1), "default_epochs": epochs,
            "default_run_seconds_lower_bound": round(lower, 1),
            "leak_pass_share_of_default_run_at_most": round(leak / lower, 4),
            "leak_pass_share_of_a_1_epoch_run": round(leak / walls[1], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/flowers")
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--alpha", type=float, default=0.35)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--mislabel", type=float, default=0.05)
    ap.add_argument("--near", type=int, default=50)
    ap.add_argument("--keep", help="Write the planted copy here (kept) instead of a temp folder.")
    ap.add_argument("--finetune-timing", action="store_true", help="Only time finetune's leak pass against "
                                                                   "default runs (see finetune_timing).")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.finetune_timing:
        load = list(os.getloadavg())
        doc = finetune_timing(str(Path(args.data).resolve()), args.weights, args.alpha, args.seed)
        print(json.dumps({"what": "finetune's cross-split leak pass against a default run", "cpus": os.cpu_count(),
                          "loadavg": load, **doc, "loadavg_after": list(os.getloadavg())}, indent=1))
        return
    from cvkeras.data.check import run_check
    from cvkeras.data.duplicates import cross_split_leaks
    from cvkeras.data.sources import load_source
    from cvkeras.train.quiet import quiet_tensorflow

    quiet_tensorflow()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_check-"))
    try:
        truth = _plant(Path(args.data).resolve(), tmp / "planted", args.seed, args.mislabel, args.near)
        clean_start = time.perf_counter()
        clean_doc, clean = run_check(str(Path(args.data).resolve()), args.model, args.alpha, args.weights,
                                     seed=args.seed)
        clean_seconds = time.perf_counter() - clean_start
        start = time.perf_counter()
        doc, a = run_check(str(tmp / "planted"), args.model, args.alpha, args.weights, seed=args.seed)
        seconds = time.perf_counter() - start
        n = len(a.keys)
        split = load_source(str(tmp / "planted"), 0.2, args.seed)
        leak_start = time.perf_counter()
        groups, drop = cross_split_leaks(split)
        leak_seconds = time.perf_counter() - leak_start
        clean_leaks, _ = cross_split_leaks(load_source(str(Path(args.data).resolve()), 0.2, args.seed))

        from cvkeras.data.check import duplicate_groups

        near_truth = {frozenset(p) for p in truth["near"]}
        exact_truth = {frozenset(c) for g in truth["exact"] for c in itertools.combinations(g, 2)}
        clean_pairs = _names(_pairs_of_groups(duplicate_groups(clean), clean.keys))
        found = _pairs_of_groups(duplicate_groups(a), a.keys)
        leak_items = [p for name in ("train", "val", "test") for p, _ in getattr(split, name)]
        leak_pairs = _pairs_of_groups(groups, leak_items)
        issues = [d["path"] for d in doc["label_issues"]]
        moved = truth["moved"]
        top = issues[:2 * len(moved)]
        result = {
            "what": "cvkeras check on a planted copy of the data, and on the data itself",
            "data": str(args.data), "model": args.model, "alpha": args.alpha, "weights": Path(args.weights).name,
            "cpus": os.cpu_count(), "loadavg": list(os.getloadavg()),
            "images": n, "planted": {"mislabelled": len(moved), "near_copies": len(near_truth),
                                     "exact_pairs_in_data": len(exact_truth)},
            "check_seconds": round(seconds, 2), "check_seconds_per_1000": round(1000 * seconds / n, 2),
            "finetune_leak_pass_seconds": round(leak_seconds, 2),
            "finetune_leak_pass_seconds_per_1000": round(1000 * leak_seconds / n, 2),
            "duplicates": {
                "near": _pr(found, near_truth, clean_pairs),
                "exact": _pr({p for p in found if p in exact_truth}, exact_truth),
                "all": _pr(found, near_truth | exact_truth, clean_pairs),
                "finetune_cross_split_pass": _pr(leak_pairs, near_truth, clean_pairs),
                "detectors_train_x_val": _detectors(a, clean, near_truth),
            },
            "label_issues": {"flagged": len(issues), "recall_in_top_2x_planted": len(set(top) & set(moved)) / len(
                moved), "precision_of_flagged": len(set(issues) & set(moved)) / max(len(issues), 1),
                "rankings": _label_rankings(a, moved)},
            "outliers": len(doc["outliers"]), "small_images": len(doc["small_images"]),
            "clean_set": {"images": len(clean.keys), "seconds": round(clean_seconds, 2),
                          "duplicate_groups": len(clean_doc["duplicates"]),
                          "duplicate_groups_across_finetunes_split": len(clean_leaks),
                          "label_issues": len(clean_doc["label_issues"]), "outliers": len(clean_doc["outliers"]),
                          "small_images": len(clean_doc["small_images"]),
                          "duplicate_groups_examples": [d["paths"] for d in clean_doc["duplicates"][:5]]},
            "loadavg_after": list(os.getloadavg()),
        }
        print(json.dumps(result, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

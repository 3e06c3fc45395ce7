"""Evaluation: the metrics report of a model on a labelled split, from ``best.keras``.

``classification_report`` is pure numpy (accuracy, top-k, loss, per-class precision/recall/F1/support,
confusion matrix) so it can be checked independently; ``evaluate_run`` recomputes a run's report
(``cvkeras evaluate RUN``) and writes ``metrics.json`` and ``confusion_matrix.png`` atomically. On the validation
split it fits the run's temperature (the ``calibration`` block, :mod:`cvkeras.analysis.calibration`); on the
test split or another dataset it applies the recorded one.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cvkeras.run.rundir import CONFUSION, RunDir
from cvkeras.serving.errors import RunDirError


def classification_report(probs: np.ndarray, labels: np.ndarray, classes: list[str], k: int = 5) -> dict[str, Any]:
    """Metrics of predicted probabilities ``(N, C)`` against integer labels ``(N,)``.

    ``cross_entropy`` is the plain mean ``-log p(true class)`` (no label smoothing, no class weights), so
    it is not history.csv's ``val_loss``. ``top_k_accuracy`` is reported only when ``k`` < classes
    (otherwise it is 1 by construction).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, c = probs.shape
    pred = probs.argmax(axis=1)
    topk = np.argsort(-probs, axis=1)[:, :k]
    cm = np.zeros((c, c), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp = cm[i, i]
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": support}
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(n), labels], eps, 1.0)))) if n else float("nan")
    report: dict[str, Any] = {
        "n": int(n),
        "accuracy": float((pred == labels).mean()) if n else float("nan"),
    }
    if k < c:
        report[f"top_{k}_accuracy"] = float((topk == labels[:, None]).any(axis=1).mean()) if n else float("nan")
    return {
        **report,
        "cross_entropy": loss,
        "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }


def predict_paths(model, paths: list[str], size, batch_size: int = 64) -> np.ndarray:
    """Keras model probabilities for image files through the training decode/resize (no augmentation)."""
    from cvkeras.data.decode import decoded_dataset

    ds = decoded_dataset(paths, np.zeros(len(paths), dtype=np.int32), size).batch(batch_size)
    out = [model.predict_on_batch(x) for x, _ in ds]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def evaluate_run(run: str | os.PathLike, data: str | None = None, split: str = "val",
                 write: bool = True) -> dict[str, Any]:
    """Recompute a run's metrics from ``best.keras`` on its own split, or on all of another dataset ``data``.

    The run's validation report goes to ``metrics.json``; ``--split test`` and ``--data`` reports go to
    ``metrics-test.json`` / ``metrics-data.json`` (and matching confusion-matrix plots).
    """
    from cvkeras.data.pipeline import load_split_images
    from cvkeras.data.sources import load_source
    from cvkeras.models.build import load_model

    rd = RunDir.open(run)
    run = rd.path
    classes = rd.labels()
    size = list(rd.image_size())
    model = load_model(rd.best)
    rd.check_labels(classes, int(model.output_shape[-1]))  # before anything is (re)written
    if data is None:
        images, labels, _ = load_split_images(run, split)
        probs = model.predict(images.astype(np.float32), batch_size=64, verbose=0)
    else:
        ds_split = load_source(data, seed=rd.seed())
        if ds_split.classes != classes:
            raise RunDirError(f"{data}: classes {ds_split.classes} differ from the run's {classes}")
        # another dataset is a held-out set as a whole: every image in it counts
        items = ds_split.train + ds_split.val + ds_split.test
        labels = np.asarray([y for _, y in items])
        probs = predict_paths(model, [p for p, _ in items], size)
    from cvkeras.serving.schema import schema_id

    report = {"schema": schema_id("metrics"), **classification_report(probs, labels, classes)}
    report["split"] = split if data is None else None  # --data: all of another dataset, not a split of the run
    report["data"] = "run" if data is None else data
    report["measured_on"] = measured_on(split if data is None else None, len(labels))
    from cvkeras.analysis.calibration import calibration_block

    cal = calibration_block(probs, labels, split if data is None else None, None if split == "val" and data is None
                            else rd.temperature())  # fitted on the run's val split, applied elsewhere
    if cal is not None:
        report["calibration"] = cal
    if write:
        # the run's own validation report is metrics.json; other evaluations get their own files
        default = data is None and split == "val"
        name = "" if default else ("-data" if data is not None else f"-{split}")
        rd.write_metrics(report, name)
        from cvkeras.analysis.plots import plot_confusion, report_title

        what = f"{data}" if data is not None else f"{split} split"
        plot_confusion(report["confusion_matrix"], classes, run / CONFUSION.replace(".png", f"{name}.png"),
                       title=report_title(report, what))
    return report


#: What each set of images is to a run's figures: the validation split is looked at to choose the best epoch,
#: the stage-2 start and (tune, distill) the winner, so its accuracy is the selection figure; a test split
#: is evaluated once, at the end, and nothing is chosen on it.
ROLES = {"val": "validation (selection: the best epoch was chosen on it)",
         "test": "test (evaluated once, at the end; nothing chosen on it)"}


def measured_on(split: str | None, n: int) -> dict[str, Any]:
    """``measured_on`` of a metrics document: which images, how many, and whether anything was chosen on them."""
    return {"images": ROLES.get(split, "another dataset (--data)") if split is not None
            else "another dataset (--data)", "n": int(n), "selection": split == "val"}


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Headline figures for a console table."""
    topk = next((k for k in report if k.startswith("top_")), None)
    rows = [("images", str(report["n"])), ("accuracy", f"{report['accuracy']:.4f}")]
    if topk:
        rows.append((topk.replace("_", "-"), f"{report[topk]:.4f}"))
    rows += [("cross-entropy", f"{report['cross_entropy']:.4f}"), ("macro F1", f"{report['macro_f1']:.4f}")]
    return rows

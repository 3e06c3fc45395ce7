"""Training plots: loss/accuracy curves and the confusion matrix, written atomically as PNG."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from cvkeras.rundir import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history_csv: str | os.PathLike, out: str | os.PathLike) -> Path | None:
    """Loss and accuracy per epoch (train and val), with the stage boundary marked."""
    rows = list(csv.DictReader(open(history_csv))) if Path(history_csv).is_file() else []
    if not rows:
        return None
    plt = _plt()
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            ys = [float(r[prefix + metric]) if r.get(prefix + metric) else float("nan") for r in rows]
            ax.plot(epochs, ys, style, marker="o", label=(prefix or "train_") + metric)
        stage2 = [e for e, r in zip(epochs, rows, strict=True) if r.get("stage") == "2"]
        if stage2:
            ax.axvline(stage2[0] - 0.5, color="grey", lw=0.8, ls=":", label="fine-tune")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    path = atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def plot_confusion(cm: list[list[int]], classes: list[str], out: str | os.PathLike) -> Path:
    """The confusion matrix (rows: true class, columns: predicted) with counts."""
    import numpy as np

    plt = _plt()
    cm_arr = np.asarray(cm)
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm_arr, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, str(cm_arr[i, j]), ha="center", va="center",
                        color="white" if cm_arr[i, j] > cm_arr.max() / 2 else "black", fontsize=8)
    fig.tight_layout()
    path = atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path

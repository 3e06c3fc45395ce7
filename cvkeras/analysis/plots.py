"""Training plots: loss/accuracy/learning-rate curves and the confusion matrix, written atomically as PNG.

The figures are built by pure functions (``curves_figure``, ``confusion_figure``) so tests can check
what a person will see -- integer epoch ticks, the best epoch marked, the stage boundary, a normalised
matrix beside the counts -- and written by ``plot_curves`` / ``plot_confusion``.

Example:
    >>> plot_curves("runs/demo/history.csv", "runs/demo/curves.png", title="val: 240 images, acc 0.912")
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from cvkeras.run.files import atomic_write

#: history.csv's learning-rate column (older runs logged ``learning_rate``).
LR_COLUMNS = ("learning_rate_first_step", "learning_rate")
#: The confusion matrix figure grows 0.5 inch per class up to this side (inches, at 100 dpi): unbounded,
#: 200 classes drew a 20600 x 10200 px PNG and took 4.2 GB of RAM and a minute after training.
CONFUSION_MAX_SIDE = 24.0
#: At most this many class names per axis; with more classes every k-th is labelled (metrics.json and the
#: report's per-class table name them all).
CONFUSION_MAX_TICKS = 50


def pyplot():
    """matplotlib.pyplot on the Agg backend, with text never read as mathtext."""
    import matplotlib

    matplotlib.use("Agg")
    # class names and file names are text, never mathtext: ``price_$5_$10`` or ``a$\\frac{x$b`` made
    # matplotlib raise after the whole training
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _floats(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]


def best_epoch(rows: list[dict[str, str]]) -> int | None:
    """The epoch with the highest validation accuracy (the first one on ties), as ``best.keras`` keeps it."""
    best, best_acc = None, -math.inf
    for r in rows:
        acc = float(r["val_accuracy"]) if r.get("val_accuracy") not in (None, "") else math.nan
        if not math.isnan(acc) and acc > best_acc:
            best, best_acc = int(r["epoch"]), acc
    return best


def curves_figure(rows: list[dict[str, str]], title: str | None = None):
    """Loss, accuracy and learning rate per epoch (train and val), stage boundary and best epoch marked."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    epochs = [int(r["epoch"]) for r in rows]
    best = best_epoch(rows)
    stage2 = [e for e, r in zip(epochs, rows, strict=True) if str(r.get("stage")) == "2"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, metric in zip(axes[:2], ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            ax.plot(epochs, _floats(rows, prefix + metric), style, marker="o", label=(prefix or "train_") + metric)
        ax.set_title(metric)
    lr_ax = axes[2]
    lr_key = next((k for k in LR_COLUMNS if rows and k in rows[0]), LR_COLUMNS[0])
    lr_ax.plot(epochs, _floats(rows, lr_key), "-", marker="o", color="tab:purple", label="at the epoch's first step")
    lr_ax.set_title("learning rate")
    if any(v > 0 for v in _floats(rows, lr_key)):
        lr_ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if stage2:
            ax.axvline(stage2[0] - 0.5, color="grey", lw=0.8, ls=":", label="fine-tune starts")
        if best is not None:
            ax.axvline(best, color="tab:green", lw=1.2, ls="-.", label=f"best epoch ({best})")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(history_csv: str | os.PathLike, out: str | os.PathLike, title: str | None = None) -> Path | None:
    """Write ``curves_figure`` of a ``history.csv`` as a PNG; None when there is no history yet."""
    path = Path(history_csv)
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    fig = curves_figure(rows, title)
    written = atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    pyplot().close(fig)
    return written


def confusion_figure(cm: list[list[int]], classes: list[str], title: str | None = None) -> Any:
    """Counts (left) and row-normalised recall per true class (right), each with a colour bar."""
    import numpy as np

    plt = pyplot()
    counts = np.asarray(cm, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    n = len(classes)
    side = min(max(4.0, 0.5 * n + 2), CONFUSION_MAX_SIDE)
    ticks = list(range(0, n, math.ceil(n / CONFUSION_MAX_TICKS) if n else 1))
    names = [classes[i] for i in ticks]
    small = {} if len(ticks) <= 30 else {"fontsize": 6}
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 2, side))
    for ax, data, label, fmt, vmax in ((axes[0], counts, "count", "d", None),
                                       (axes[1], norm, "fraction of the true class", ".2f", 1.0)):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=vmax)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
        ax.set_xticks(ticks, names, rotation=45, ha="right", **small)
        ax.set_yticks(ticks, names, **small)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("counts" if fmt == "d" else "normalised by true class")
        if n <= 30:
            top = data.max() if data.size else 0
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=8,
                            color="white" if top and data[i, j] > top / 2 else "black")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(cm: list[list[int]], classes: list[str], out: str | os.PathLike, title: str | None = None) -> Path:
    """Write ``confusion_figure`` as a PNG."""
    fig = confusion_figure(cm, classes, title)
    written = atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    pyplot().close(fig)
    return written


def report_title(report: dict[str, Any], what: str) -> str:
    """``"val split: 120 images, accuracy 91.7 %"`` from a metrics report (``n``, ``accuracy``)."""
    return f"{what}: {report.get('n', '?')} images, accuracy {100 * float(report.get('accuracy', math.nan)):.1f} %"

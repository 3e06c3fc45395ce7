"""The training plots show what a person needs: integer epochs, best epoch, stages, lr, normalised matrix."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("matplotlib")

from cvkeras.analysis.plots import best_epoch, confusion_figure, curves_figure, plot_confusion, plot_curves  # noqa: E402

ROWS = [
    {"epoch": "1", "stage": "1", "loss": "1.2", "accuracy": "0.5", "val_loss": "1.1", "val_accuracy": "0.55",
     "learning_rate_first_step": "0.001"},
    {"epoch": "2", "stage": "1", "loss": "0.9", "accuracy": "0.7", "val_loss": "0.8", "val_accuracy": "0.75",
     "learning_rate_first_step": "0.0005"},
    {"epoch": "3", "stage": "2", "loss": "0.7", "accuracy": "0.8", "val_loss": "0.7", "val_accuracy": "0.75",
     "learning_rate_first_step": "0.0001"},
    {"epoch": "4", "stage": "2", "loss": "0.6", "accuracy": "0.85", "val_loss": "0.75", "val_accuracy": "0.7",
     "learning_rate_first_step": "0.00005"},
]


def test_best_epoch_is_first_highest_val_accuracy():
    assert best_epoch(ROWS) == 2
    assert best_epoch([{**r, "val_accuracy": ""} for r in ROWS]) is None


def test_curves_figure_marks_best_stage_and_lr_with_integer_ticks():
    from matplotlib.ticker import MaxNLocator

    fig = curves_figure(ROWS, title="val split: 40 images, accuracy 75.0 %")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["loss", "accuracy", "learning rate"]
    assert fig._suptitle.get_text().startswith("val split: 40 images")
    for ax in axes:
        assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 4]
        assert ticks and all(float(t).is_integer() for t in ticks)
        vlines = {round(line.get_xdata()[0], 2) for line in ax.get_lines() if len(set(line.get_xdata())) == 1}
        assert 2.0 in vlines  # best epoch
        assert 2.5 in vlines  # stage 2 starts after epoch 2
    lr_line = axes[2].get_lines()[0]
    assert list(lr_line.get_ydata()) == [0.001, 0.0005, 0.0001, 0.00005]
    assert axes[2].get_yscale() == "log"
    old = curves_figure([{("learning_rate" if k.startswith("learning") else k): v for k, v in r.items()} for r in ROWS])
    assert list(old.axes[2].get_lines()[0].get_ydata()) == [0.001, 0.0005, 0.0001, 0.00005]  # runs made before


def test_confusion_figure_has_counts_and_normalised_rows_with_colour_bars():
    fig = confusion_figure([[8, 2], [1, 9]], ["cat", "dog"], title="t")
    images = [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images()]
    assert len(images) == 2
    counts, norm = images
    assert counts.tolist() == [[8, 2], [1, 9]]
    assert norm.ravel().tolist() == pytest.approx([0.8, 0.2, 0.1, 0.9])
    assert len(fig.axes) == 4  # two matrices and two colour bars


def test_plot_files_are_written(tmp_path):
    hist = tmp_path / "history.csv"
    with open(hist, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        w.writeheader()
        w.writerows(ROWS)
    out = plot_curves(hist, tmp_path / "curves.png", title="x")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_curves(tmp_path / "missing.csv", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    cm = plot_confusion([[1, 0], [0, 0]], ["a", "b"], tmp_path / "cm.png")  # an empty true class row is fine
    assert cm.read_bytes()[:4] == b"\x89PNG"

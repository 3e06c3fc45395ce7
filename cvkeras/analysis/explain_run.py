"""``cvkeras explain``'s job: Grad-CAM heatmaps of image files with a run's ``best.keras``, one PNG per image
and a contact sheet, written only into a folder explain owns (:func:`claim_output`).

Images are read with the device's decode-and-resize contract (``cvkeras.serving.preprocess``), so the heatmap is
drawn over exactly the pixels the model saw; the heatmaps themselves are :mod:`cvkeras.analysis.explain`'s.

Example:
    >>> result = explain_run("runs/flowers", ["rose.jpg"], output="runs/flowers/explain")
    >>> result.items[0].label, result.items[0].png
    ('roses', PosixPath('runs/flowers/explain/rose.png'))
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.analysis.explain import ExplainError, default_layer, gradcam, overlay
from cvkeras.run import files as runfiles
from cvkeras.serving.errors import RunDirError, quote

SHEET = "contact_sheet.png"


@dataclass
class Explanation:
    """One explained image: what was predicted, the explained class and where the picture went."""

    source: str
    label: str
    score: float
    predicted: str
    predicted_score: float
    heatmap: np.ndarray = field(repr=False)
    image: np.ndarray = field(repr=False)
    png: Path | None = None


@dataclass
class ExplainResult:
    """What one explain call did: the explained images, the skipped files and where the contact sheet went."""

    items: list[Explanation]
    skipped: list[tuple[str, str]]
    layer: str
    method: str
    sheet: Path | None = None


def _figure(item: Explanation, method: str):
    """One image's figure: the input as the model saw it beside its heatmap overlay."""
    from cvkeras.analysis.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.5))
    axes[0].imshow(item.image)
    axes[0].set_title("input (as the model sees it)", fontsize=8)
    axes[1].imshow(overlay(item.image, item.heatmap))
    title = f"{item.label} {item.score:.1%}"
    if item.label != item.predicted:
        title += f"\n(predicted {item.predicted} {item.predicted_score:.1%})"
    axes[1].set_title(f"{method}: {title}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(Path(item.source).name, fontsize=9)
    fig.tight_layout()
    return fig


def contact_sheet(items: Sequence[Explanation], method: str, columns: int = 4):
    """All overlays of a batch in one figure, each titled with its file, class and score."""
    from cvkeras.analysis.plots import pyplot

    plt = pyplot()
    cols = max(1, min(columns, len(items)))
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, item in zip(axes.ravel(), items, strict=False):
        ax.imshow(overlay(item.image, item.heatmap))
        mark = "" if item.label == item.predicted else " *"
        ax.set_title(f"{Path(item.source).name[:22]}\n{item.label} {item.score:.0%}{mark}", fontsize=7)
    fig.suptitle(f"{method}; * = explained class is not the predicted one", fontsize=8)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> Path:
    from cvkeras.analysis.plots import pyplot
    from cvkeras.run.files import atomic_write

    written = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    pyplot().close(fig)
    return written


def explain_images(model, labels: list[str], sources: Sequence[str | os.PathLike], layer: str | None = None,
                   class_label: str | None = None, method: str = "gradcam", batch_size: int = 16,
                   progress: Any = None) -> ExplainResult:
    """Explain image files with a loaded classifier; unreadable files are skipped with the reason."""
    from cvkeras.serving.preprocess import ImageError, load_resized

    if class_label is not None and class_label not in labels:
        raise ExplainError(f"unknown --class {quote(class_label)}; the model's classes are {', '.join(labels)}")
    size = tuple(int(v) for v in model.input_shape[1:3])
    layer = layer or default_layer(model)
    items: list[Explanation] = []
    skipped: list[tuple[str, str]] = []
    todo = [str(s) for s in sources]
    for start in range(0, len(todo), batch_size):
        batch, arrays = [], []
        for src in todo[start:start + batch_size]:
            try:
                arrays.append(load_resized(src, size))
                batch.append(src)
            except ImageError as exc:
                skipped.append((src, str(exc)))
        if not batch:
            continue
        images = np.stack(arrays)
        target = None if class_label is None else labels.index(class_label)
        heat, probs = gradcam(model, images.astype(np.float32), layer, target, method)
        for i, src in enumerate(batch):
            k = int(np.argmax(probs[i])) if target is None else target
            top = int(np.argmax(probs[i]))
            items.append(Explanation(src, labels[k], float(probs[i, k]), labels[top], float(probs[i, top]),
                                     heat[i], images[i]))
        if progress:
            progress(len(items) + len(skipped), len(todo))
    return ExplainResult(items, skipped, layer, method)


def list_images(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Files as given, folders expanded to their image files (``cvkeras.serving.images.list_images``)."""
    from cvkeras.serving.images import list_images as images_in

    out: list[str] = []
    for p in map(Path, paths):
        out += [str(f) for f in images_in(p, utf8_only=False, other_formats=True)] if p.is_dir() else [str(p)]
    return out


def claim_output(out: Path, run: Path) -> tuple[bool, bool]:
    """Check that explain may write into ``out`` and make it; returns (folder made here, marker written here).

    explain writes only into a folder it owns: a new or empty one (marked as cvkeras' so each PNG is
    recorded), ``RUN/explain``, or one it wrote before -- never a folder holding files cvkeras did not
    write (the photos being explained, a user's own ``photo.png``), nor a run directory itself.
    """
    from cvkeras.run.rundir import CONFIG

    fix = "pass --output a new or empty folder"
    if out.exists() and not out.is_dir():
        raise ExplainError(f"{out}: exists and is not a folder; {fix}")
    if out.resolve() == run.resolve() or (out / CONFIG).is_file():
        raise ExplainError(f"{out}: is a run directory; explain writes into RUN/explain by default -- {fix}")
    if out.is_dir() and any(out.iterdir()):
        owner = next((d for d in (out, out.parent, out.parent.parent) if (d / runfiles.MARKER).is_file()), None)
        prefix = "" if owner is None or owner == out else out.relative_to(owner).as_posix() + "/"
        try:
            foreign = ["?"] if owner is None else [f for f in runfiles.foreign_entries(owner) if f.startswith(prefix)]
        except RunDirError:
            foreign = ["?"]
        if foreign:
            example = "" if foreign == ["?"] else f" (e.g. {runfiles.printable_path(foreign[0][len(prefix):])})"
            raise ExplainError(f"{out}: holds files cvkeras did not write{example}; refusing to write heatmaps "
                               f"among them -- {fix}")
        return False, False
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    marked = not any((d / runfiles.MARKER).is_file() for d in (out, out.parent, out.parent.parent))
    if marked:
        runfiles.mark_run(out)
    return made, marked


def output_names(sources: Sequence[str], out: Path) -> list[Path]:
    """One PNG per source in ``out``, named after it: unique (same names from two folders get ``-2``), never
    the contact sheet's name and never the path of an input image (``-o`` next to the photos)."""
    inputs = {os.path.realpath(s) for s in sources}
    used = {SHEET}
    paths = []
    for src in sources:
        stem = Path(src).stem
        name, n = stem, 1
        while f"{name}.png" in used or os.path.realpath(out / f"{name}.png") in inputs:
            n += 1
            name = f"{stem}-{n}"
        used.add(f"{name}.png")
        paths.append(out / f"{name}.png")
    return paths


def explain_run(run: str | os.PathLike, images: Sequence[str | os.PathLike], layer: str | None = None,
                class_label: str | None = None, method: str = "gradcam", output: str | os.PathLike | None = None,
                progress: Any = None) -> ExplainResult:
    """Explain images with a run's ``best.keras``: one PNG per image and ``contact_sheet.png`` in ``output``
    (default ``RUN/explain``; see :func:`claim_output` for which folders it may be)."""
    from cvkeras.models.build import load_model
    from cvkeras.run.rundir import RunDir

    rd = RunDir.open(run)
    run = rd.path
    out = Path(output) if output else run / "explain"
    made, marked = claim_output(out, run)  # before the model loads: a wrong -o fails in a second
    written: list[Path] = []

    def undo() -> None:  # a folder this call made or marked holds only what it wrote: leave nothing half-done
        if marked:
            for path in [*written, out / runfiles.MARKER]:
                path.unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()

    try:
        labels = rd.labels()
        model_name = rd.model_name()
        model = load_model(rd.best)
        layer = layer or default_layer(model, model_name)
        result = explain_images(model, labels, list_images(images), layer, class_label, method, progress=progress)
        if not result.items:
            undo()
            return result
        for item, png in zip(result.items, output_names([i.source for i in result.items], out), strict=True):
            item.png = _save(_figure(item, method), png)
            written.append(png)
        result.sheet = _save(contact_sheet(result.items, method), out / SHEET)
    except BaseException:
        undo()
        raise
    return result

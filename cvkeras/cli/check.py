"""``cvkeras check``: the Typer command (registered by :mod:`cvkeras.cli`) and its console output."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cvkeras.cli.errors import command_errors
from cvkeras.serving.console import print_json, stdout_console

console = stdout_console()
err = Console(stderr=True)


def check(
    data: str = typer.Argument(..., help="Class folder, CSV manifest (path,label[,split]), tfds:NAME[:cfg] or "
                                         "demo:shapes: listed and split exactly as finetune does."),
    model: str = typer.Option(None, "--model", "-m", help="Backbone whose frozen features score the photos "
                                                        "(default: finetune's)."),
    alpha: float = typer.Option(None, help="Width multiplier, for families that have one."),
    image_size: int = typer.Option(None, "--image-size", help="Square input size in px (default: the model's)."),
    weights: str = typer.Option(None, help="imagenet (Keras download), none, or a no-top .h5 path."),
    val_split: float = typer.Option(None, help="Validation fraction when the data has no val split (as finetune)."),
    seed: int = typer.Option(None, help="Split seed (as finetune) and cross-validation seed."),
    tfds_data_dir: str = typer.Option(None, help="TFDS data_dir (a prepared or offline copy)."),
    output: Path = typer.Option(None, "--output", "-o", help="Folder for check.html (thumbnails of every "
                                                            "finding) and check.json."),
    top: int = typer.Option(10, "--top", min=0, help="Findings listed per kind on the console."),
    json_out: bool = typer.Option(False, "--json", help="Print the findings as JSON (docs/json.md)."),
) -> None:
    """Find leaked duplicates, likely label errors and outliers in a labelled image set before training.

    Exact and near copies within and across splits (leaks into validation) and under different classes;
    label errors ranked by cleanlab from out-of-fold predictions on frozen backbone features; photos unlike
    their class; class imbalance; tiny or extreme-aspect images; files finetune would skip.

    Examples:
      cvkeras check data/flowers --alpha 0.35 --output check-flowers
      cvkeras check data/flowers --json > findings.json
    """
    from cvkeras.train.quiet import quiet_tensorflow

    quiet_tensorflow()
    from cvkeras.data.check import run_check
    from cvkeras.data.check_html import check_output, write_page

    with command_errors():
        if output is not None:
            check_output(output)  # refused before the work, not after it
        doc, analysis = run_check(data, model, alpha, weights, image_size, val_split, seed, tfds_data_dir)
        page = write_page(doc, analysis, output) if output is not None else None
    if json_out:
        print_json(doc)
        return
    _print_findings(doc, top)
    if page is not None:
        console.print(f"Findings saved to {page} (and {page.with_name('check.json')})", highlight=False,
                      soft_wrap=True)


def _print_findings(doc: dict, top: int) -> None:
    """The summary table, then the first ``top`` findings of each kind with their paths."""
    from cvkeras.data.check import summary_rows

    table = Table(title=f"check: {doc['data']}")
    table.add_column("finding")
    table.add_column("count")
    for k, v in summary_rows(doc):
        table.add_row(k, v)
    console.print(table)

    def say(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True, markup=False)

    for g in doc["duplicates"][:top]:
        tags = g["kind"] + (", across splits" if g["cross_split"] else "") + (
            ", conflicting labels" if g["conflicting_labels"] else "")
        say(f"duplicate ({tags}): " + "  ".join(f"{p} [{s}/{c}]" for p, s, c in zip(g["paths"], g["splits"],
                                                                                   g["labels"], strict=True)))
    for d in doc["label_issues"][:top]:
        say(f"label issue: {d['path']}  filed {d['given']}, looks {d['suggested']} (quality {d['score']:.3f})")
    for d in doc["outliers"][:top]:
        say(f"outlier: {d['path']}  unlike its class {d['class']} (score {d['score']:.3f})")
    for d in doc["small_images"][:top]:
        say(f"{d['why'].replace('_', ' ')}: {d['path']}  {d['width']}x{d['height']} px")
    for d in doc["skipped"][:top]:
        say(f"skipped: {d['path']}  {d['reason']}")

"""The commands that look at a finished run: ``evaluate`` (metrics again, on a split or another dataset),
``explain`` (Grad-CAM heatmaps) and ``report`` (one self-contained report.html).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cvkeras.cli.errors import command_errors
from cvkeras.serving.console import print_json, stdout_console
from cvkeras.serving.errors import fail, printable, quote
from cvkeras.train.quiet import quiet_tensorflow

console = stdout_console()
err = Console(stderr=True)


def evaluate(
    run: Path = typer.Argument(..., help="Run directory made by `cvkeras finetune`."),
    data: str = typer.Option(None, help="Evaluate on another dataset with the same classes."),
    split: str = typer.Option("val", help="val or test."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics report as JSON (docs/json.md)."),
) -> None:
    """Recompute a run's metrics report (metrics.json, confusion_matrix.png) from best.keras."""
    quiet_tensorflow()
    from cvkeras.analysis.evaluate import evaluate_run, summary_rows
    from cvkeras.run.files import run_lock

    if split not in ("val", "test"):
        raise fail(f"unknown --split {quote(split)}; use val or test")
    with command_errors():
        with run_lock(run, "evaluate") if run.is_dir() else contextlib.nullcontext():
            report = evaluate_run(run, data=data, split=split)
    if json_out:
        print_json(report)
        return
    table = Table(title=f"{run} ({split if data is None else data})")
    table.add_column("metric")
    table.add_column("value")
    for k, v in summary_rows(report):
        table.add_row(k, v)
    cal = report.get("calibration")
    if cal:
        table.add_row("calibration", f"T {cal['temperature']:.3g}{' (fitted here)' if cal['fitted'] else ''}: ECE "
                      f"{cal['ece_before']:.4f} -> {cal['ece_after']:.4f}, NLL {cal['nll_before']:.4f} -> "
                      f"{cal['nll_after']:.4f}")
    console.print(table)


def explain(
    run: Path = typer.Argument(..., help="Run directory made by `cvkeras finetune`."),
    images: list[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    layer: str = typer.Option(None, "--layer", help="Backbone layer to explain (default: the registry row's)."),
    class_label: str = typer.Option(None, "--class", help="Explain this class instead of the predicted one."),
    method: str = typer.Option("gradcam", "--method", help="gradcam or gradcam++."),
    output: Path = typer.Option(None, "--output", "-o", help="Folder for the PNGs (default: RUN/explain)."),
) -> None:
    """Show where the model looks: a Grad-CAM heatmap over each image, plus one contact sheet."""
    quiet_tensorflow()
    from rich.progress import Progress

    from cvkeras.analysis.explain_run import explain_run

    with command_errors():
        with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("explaining", total=None)
            result = explain_run(run, images, layer, class_label, method, output,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    for src, why in result.skipped:
        err.print(printable(f"skipped {src}: {why}"), highlight=False, soft_wrap=True, markup=False)
    if not result.items:
        raise fail("no readable image among the given paths; pass image files or folders of them")
    table = Table(title=f"{result.method} on layer {result.layer}")
    for col in ("image", "class", "score", "predicted"):
        table.add_column(col, overflow="fold")
    from rich.markup import escape

    for item in result.items:  # file and class names are user text: no markup, no control characters
        table.add_row(*(escape(printable(v)) for v in (Path(item.source).name, item.label, f"{item.score:.1%}",
                                                       item.predicted)))
    console.print(table)
    console.print(printable(f"Results saved to {result.sheet.parent} (contact sheet: {result.sheet.name})"),
                  highlight=False, markup=False)


def report(
    run: Path = typer.Argument(..., help="Run directory made by `cvkeras finetune`."),
    mistakes: int = typer.Option(8, "--mistakes", min=0, max=100, help="Worst validation mistakes to show."),
) -> None:
    """Write RUN/report.html: config, curves, confusion matrix, per-class table, worst mistakes with Grad-CAM,
    skipped files and the export table; one self-contained file that opens offline."""
    quiet_tensorflow()
    from cvkeras.analysis.report import write_report

    with command_errors():
        path = write_report(run, mistakes)
    console.print(f"Report saved to {path}", highlight=False)

"""The ``cvkeras`` command line: thin Typer commands that parse, call the library and print.

Heavy libraries (TensorFlow, Keras, tf2onnx) are imported inside the commands that need them, so
``cvkeras --help``, ``models``, ``predict``, ``validate`` and ``benchmark`` start fast and work on a
device without TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cvkeras.cli.finetune import finetune, run_finetune
from cvkeras.cli.helpfmt import FinetuneHelpCommand, HelpCommand, HelpGroup
from cvkeras.serving.console import print_json, stdout_console
from cvkeras.serving.errors import CvkerasError, fail, printable, quote
from cvkeras.serving.schema import schema_id  # standard library only: cheap for --help

app = typer.Typer(
    help="Fine-tune Keras Applications classifiers, export them to ONNX/TFLite and run them on devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=HelpGroup,
)
console = stdout_console()
err = Console(stderr=True)


def _quiet_tf() -> None:
    from cvkeras.train.quiet import quiet_tensorflow

    quiet_tensorflow()


def _print_version(value: bool) -> None:
    if value:
        from cvkeras import __version__

        console.print(f"cvkeras {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _options(
    verbose: bool = typer.Option(False, "--verbose", help="Show TensorFlow's own log lines too."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    """Options for every command."""
    if verbose:
        os.environ["CVKERAS_VERBOSE"] = "1"


def _num(row: dict, key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
    return format(row[key] * scale, fmt) if key in row else "?"


@app.command(cls=HelpCommand)
def models(
    measure: str = typer.Option(None, "--measure", help="Build this model here and measure it (needs TensorFlow)."),
    alpha: float = typer.Option(None, help="Width multiplier for --measure."),
    image_size: int = typer.Option(None, "--image-size", help="Input size in px for --measure."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table (docs/json.md)."),
) -> None:
    """List the backbones by what an edge model is chosen by: parameters, multiply-adds and file size.

    Figures are computed from the real Keras models at each row's default input size and width (backbone
    without its head). --measure NAME builds one model here, at any width and size, and adds its CPU latency.
    """
    from cvkeras.models.registry import REGISTRY
    from cvkeras.models.stats import load_table

    if measure:
        _quiet_tf()
        from cvkeras.models.stats import measure as measure_row

        try:
            row = measure_row(measure, alpha, image_size)
        except CvkerasError as exc:
            raise fail(exc) from None
        specs, stats = [REGISTRY[row["name"]]], {row["name"]: row}
    else:
        specs, stats = list(REGISTRY.values()), load_table()
    if json_out:
        print_json({"schema": schema_id("models"), "models": [models_row(spec, stats.get(spec.name, {}))
                                                              for spec in specs]})
        return
    from rich import box

    table = Table(title=f"{len(specs)} Keras Applications backbone{'s' if len(specs) > 1 else ''}",
                  box=box.SIMPLE_HEAD)
    timed = any("cpu_ms" in row for row in stats.values())  # latency is machine-specific: shown when measured
    for col in ("name", "input", "params M", "GMACs", "fp32 MB", *(("CPU ms",) if timed else ()), "--alpha"):
        left = col in ("name", "input", "--alpha")
        table.add_column(col, no_wrap=True, min_width=len(col), justify="left" if left else "right")
    for spec in specs:
        row = stats.get(spec.name, {})
        size = row.get("input_size", spec.input_size)
        alphas = f"{min(spec.alphas):g}-{max(spec.alphas):g}" if spec.alphas else "-"
        table.add_row(spec.name, f"{size[0]}x{size[1]}", _num(row, "params", 1e-6), _num(row, "gmacs"),
                      _num(row, "float32_mb"), *((_num(row, "cpu_ms", fmt=".0f"),) if timed else ()), alphas)
    console.print(table)
    if not measure:
        console.print("Backbones without head, at the default size and width. `cvkeras models --measure NAME "
                      "[--alpha A] [--image-size N]` builds one here and times it on this machine.")


def models_row(spec, row: dict) -> dict:
    """One backbone for ``models --json`` (``cvkeras.models/1``): sizes in bytes from the parameter count."""
    params = row.get("params")
    out = {"name": spec.name, "alphas": list(spec.alphas or []), "alpha": row.get("alpha"),
           "input_size": list(row.get("input_size", spec.input_size)), "params": params,
           "gmacs": row.get("gmacs"), "float32_size_bytes": None if params is None else 4 * params,
           "int8_size_bytes": params}
    if "cpu_ms" in row:
        out["cpu_ms"] = row["cpu_ms"]
    return out


app.command(name="finetune", cls=FinetuneHelpCommand)(finetune)


def _register_check() -> None:
    from cvkeras.cli.check import check

    app.command(name="check", cls=HelpCommand)(check)


_register_check()


@app.command(cls=HelpCommand)
def evaluate(
    run: Path = typer.Argument(..., help="Run directory made by `cvkeras finetune`."),
    data: str = typer.Option(None, help="Evaluate on another dataset with the same classes."),
    split: str = typer.Option("val", help="val or test."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics report as JSON (docs/json.md)."),
) -> None:
    """Recompute a run's metrics report (metrics.json, confusion_matrix.png) from best.keras."""
    _quiet_tf()
    from cvkeras.analysis.evaluate import evaluate_run, summary_rows
    from cvkeras.run.files import os_error_line, run_lock

    if split not in ("val", "test"):
        raise fail(f"unknown --split {quote(split)}; use val or test")
    try:
        with run_lock(run, "evaluate") if run.is_dir() else contextlib.nullcontext():
            report = evaluate_run(run, data=data, split=split)
    except CvkerasError as exc:
        raise fail(exc) from None
    except OSError as exc:
        raise fail(os_error_line(exc)) from None
    if json_out:
        print_json(report)
        return
    table = Table(title=f"{run} ({split if data is None else data})")
    table.add_column("metric")
    table.add_column("value")
    for k, v in summary_rows(report):
        table.add_row(k, v)
    console.print(table)


@app.command(cls=HelpCommand)
def explain(
    run: Path = typer.Argument(..., help="Run directory made by `cvkeras finetune`."),
    images: list[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    layer: str = typer.Option(None, "--layer", help="Backbone layer to explain (default: the registry row's)."),
    class_label: str = typer.Option(None, "--class", help="Explain this class instead of the predicted one."),
    method: str = typer.Option("gradcam", "--method", help="gradcam or gradcam++."),
    output: Path = typer.Option(None, "--output", "-o", help="Folder for the PNGs (default: RUN/explain)."),
) -> None:
    """Show where the model looks: a Grad-CAM heatmap over each image, plus one contact sheet."""
    _quiet_tf()
    from rich.progress import Progress

    from cvkeras.analysis.explain import explain_run
    from cvkeras.run.files import os_error_line

    try:
        with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("explaining", total=None)
            result = explain_run(run, images, layer, class_label, method, output,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    except CvkerasError as exc:
        raise fail(exc) from None
    except OSError as exc:
        raise fail(os_error_line(exc)) from None
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


@app.command(cls=HelpCommand)
def report(
    run: Path = typer.Argument(..., help="Run directory made by `cvkeras finetune`."),
    mistakes: int = typer.Option(8, "--mistakes", min=0, max=100, help="Worst validation mistakes to show."),
) -> None:
    """Write RUN/report.html: config, curves, confusion matrix, per-class table, worst mistakes with Grad-CAM,
    skipped files and the export table; one self-contained file that opens offline."""
    _quiet_tf()
    from cvkeras.analysis.report import write_report
    from cvkeras.run.files import os_error_line

    try:
        path = write_report(run, mistakes)
    except CvkerasError as exc:
        raise fail(exc) from None
    except OSError as exc:
        raise fail(os_error_line(exc)) from None
    console.print(f"Report saved to {path}", highlight=False)


#: One short example per command, printed under its --help (the leading newline keeps the indentation).
EXAMPLES = {
    "export": "\nExamples:\n  cvkeras export runs/mobilenet_v2-1          # float32 ONNX + TFLite\n"
              "  cvkeras export runs/mobilenet_v2-1 --int8   # and checked int8 models",
    "predict": "\nExamples:\n  cvkeras predict runs/mobilenet_v2-1/export/model.onnx photo.jpg\n"
               "  cvkeras predict model_int8.tflite photos/ --top-k 3 --json",
    "validate": "\nExample:\n  cvkeras validate export/model_int8.onnx --data data/flowers/val",
    "benchmark": "\nExample:\n  cvkeras benchmark export/model.onnx export/model_int8.onnx",
}


def _register_package_commands() -> None:
    """Commands implemented by the export and serving packages (their thin wrappers live there)."""
    from cvkeras.cli.export import export as export_cmd
    from cvkeras.serving import cli as serving_cli

    app.command(name="export", cls=HelpCommand, epilog=EXAMPLES["export"])(export_cmd)
    for name in ("predict", "validate", "benchmark"):
        app.command(name=name, cls=HelpCommand, epilog=EXAMPLES.get(name))(getattr(serving_cli, name))


_register_package_commands()


@app.command(cls=HelpCommand)
def demo(
    output: str = typer.Option("runs/demo", "--output", "-o", help="Run directory for the demo."),
    force: bool = typer.Option(True, "--force/--no-force", help="Overwrite an earlier demo run."),
    shapes: bool = typer.Option(False, "--shapes", help="Generated shapes, trained from scratch, instead of the "
                                                        "built-in flower photos and ImageNet weights."),
) -> None:
    """The main job offline on built-in data: fine-tune MobileNetV2 (ImageNet weights) on 5 classes of flower
    photos, export checked int8 models, validate, predict; RUN/report.html shows the result."""
    _quiet_tf()
    from cvkeras.cli.demo import run_demo

    try:
        code = run_demo(output, force, console, app, shapes)
    except CvkerasError as exc:  # damaged demo data: one line, nothing run
        raise fail(exc) from None
    raise typer.Exit(code)


def _register_search_commands() -> None:
    """``distill`` and ``tune`` take finetune's flags: their modules build them from its signature."""
    from cvkeras.cli import distill as distill_cli

    distill_cli.register(app, finetune, fail, run_finetune, FinetuneHelpCommand)
    distill_cli.register_tune(app, finetune, fail, FinetuneHelpCommand)


_register_search_commands()


def terminate_as_interrupt() -> None:
    """SIGTERM acts like Ctrl-C: ``finally`` blocks run, so temp files and folders are removed and
    checkpoints stay consistent (the default SIGTERM kills the process where it stands)."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    """Console-script entry point."""
    terminate_as_interrupt()
    app(prog_name="cvkeras")


if __name__ == "__main__":
    main()
    sys.exit(0)

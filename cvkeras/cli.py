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

from cvkeras.helpfmt import FinetuneHelpCommand, HelpCommand, HelpGroup

app = typer.Typer(
    help="Fine-tune Keras Applications classifiers, export them to ONNX/TFLite and run them on devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=HelpGroup,
)
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one ``error:`` line on stderr and return the Exit to raise."""
    lines = str(message).strip().splitlines() or ["failed"]
    err.print(f"[bold red]error:[/] {lines[0]}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code)


def _quiet_tf() -> None:
    from cvkeras.quiet import quiet_tensorflow

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
) -> None:
    """List the backbones by what an edge model is chosen by: parameters, multiply-adds and file size.

    Figures are computed from the real Keras models at each row's default input size and width (backbone
    without its head). --measure NAME builds one model here, at any width and size, and adds its CPU latency.
    """
    from cvkeras.model_stats import load_table
    from cvkeras.registry import REGISTRY

    if measure:
        _quiet_tf()
        from cvkeras.model_stats import measure as measure_row

        try:
            row = measure_row(measure, alpha, image_size)
        except (KeyError, ValueError) as exc:
            raise fail(str(exc)) from None
        specs, stats = [REGISTRY[row["name"]]], {row["name"]: row}
    else:
        specs, stats = list(REGISTRY.values()), load_table()
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


@app.command(cls=FinetuneHelpCommand)
def finetune(
    data: str = typer.Argument(None, help="Class folder, CSV manifest (path,label[,split]), tfds:NAME[:cfg] "
                                          "or demo:shapes. Required unless --config or --resume gives it."),
    model: str = typer.Option(None, "--model", "-m", help="Registry name (see `cvkeras models`)."),
    alpha: float = typer.Option(None, help="Width multiplier, for families that have one."),
    image_size: int = typer.Option(None, "--image-size", help="Square input size in px "
                                    "(default: the model's own, see `cvkeras models`)."),
    weights: str = typer.Option(None, help="imagenet (Keras download), none, or a no-top .h5 path."),
    output: str = typer.Option(None, "--output", "-o", help="Run directory (default: runs/MODEL-N, the next free N)."),
    config: Path = typer.Option(None, "--config", help="Read settings from a config.yaml; flags override it."),
    epochs: int = typer.Option(None, help="Head-training epochs, backbone frozen (0 skips); auto: at least 200 "
                                          "steps, 8 passes on a large set."),
    fine_tune_epochs: int = typer.Option(None, help="Fine-tuning epochs, top of backbone unfrozen (0 skips); "
                                                    "auto: as --epochs."),
    epoch_steps: int = typer.Option(None, help="Steps per epoch (the data repeats); auto: one pass, at least 20 "
                                               "steps when both epoch counts are auto."),
    unfreeze: str = typer.Option(None, help="Fraction of backbone layers to unfreeze in stage 2, or 'all'."),
    batch_size: int = typer.Option(None, help="Global batch size (split across replicas)."),
    learning_rate: float = typer.Option(None, "--lr", help="Stage-1 peak learning rate; auto: 5e-3 at batch 32, "
                                                            "times sqrt(batch/32) (SGD: 5e-2, linear)."),
    fine_tune_learning_rate: float = typer.Option(None, "--fine-tune-lr", help="Stage-2 peak learning rate; auto: "
                                                  "1e-4 at batch 32, scaled as --lr (SGD: 1e-3)."),
    optimizer: str = typer.Option(None, help="Optimizer; sgd uses momentum 0.9."),
    weight_decay: float = typer.Option(None, help="Decoupled weight decay (per step w -= lr*wd*w; not biases or "
                                                  "norms), AdamW and SGD."),
    warmup_epochs: float = typer.Option(None, help="Linear warm-up before cosine decay, in epochs."),
    label_smoothing: float = typer.Option(None, help="Label smoothing."),
    dropout: float = typer.Option(None, help="Dropout before the head."),
    class_weights: str = typer.Option(None, help="Class weighting; auto: inverse class frequency."),
    patience: int = typer.Option(None, help="Early stopping patience on val accuracy (0: off)."),
    augment: str = typer.Option(None, help="Augmentation preset; auto: medium below 100 training images per "
                                           "class, else light."),
    randaugment: bool = typer.Option(None, "--randaugment/--no-randaugment", help="Add RandAugment."),
    mixup: float = typer.Option(None, help="MixUp Beta alpha (0: off)."),
    cutmix: float = typer.Option(None, help="CutMix Beta alpha (0: off)."),
    val_split: float = typer.Option(None, help="Validation fraction when the data has no val split."),
    seed: int = typer.Option(None, help="Seed for the split, shuffling, augmentation and init."),
    cache: str = typer.Option(None, help="memory, none, or a file path prefix for a file cache."),
    tfds_data_dir: str = typer.Option(None, help="TFDS data_dir (a prepared or offline copy)."),
    precision: str = typer.Option(None, help="Numeric precision; auto: mixed_float16 on a GPU of compute "
                                                 "capability 7.0+, else float32."),
    strategy: str = typer.Option(None, help="Distribution strategy; auto: mirrored on more than one "
                                                "GPU; multi-worker reads TF_CONFIG."),
    jit: bool = typer.Option(None, "--jit/--no-jit", help="Compile with XLA."),
    steps_per_epoch: int = typer.Option(None, help="Cap on steps per epoch (quick runs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --output."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors, warnings and the final line."),
) -> None:
    """Fine-tune a classifier on labelled images and write a run directory.

    Stage 1 trains a new head on the frozen backbone, stage 2 fine-tunes the top of the backbone. The run
    directory gets best.keras, metrics, plots, report.html and the exact split and config used.

    Examples:
      cvkeras finetune data/flowers           # one folder per class
      cvkeras finetune data/flowers -m efficientnet_b0 --epochs 5
      cvkeras finetune demo:shapes --alpha 0.35 --weights none -o runs/try
    """
    _quiet_tf()
    from cvkeras import rundir
    from cvkeras.config import FinetuneConfig

    source = config or (Path(output) / rundir.CONFIG if resume and output else None)
    try:
        base = FinetuneConfig.from_dict(rundir.read_config(source)) if source else FinetuneConfig()
    except (rundir.RunDirError, ValueError, TypeError) as exc:
        raise fail(f"{source}: {exc}") from None
    overrides = dict(
        data=data, model=model, alpha=alpha, image_size=None if image_size is None else [image_size, image_size],
        weights=weights, epochs=epochs, fine_tune_epochs=fine_tune_epochs, epoch_steps=epoch_steps, unfreeze=unfreeze,
        batch_size=batch_size, learning_rate=learning_rate, fine_tune_learning_rate=fine_tune_learning_rate,
        optimizer=optimizer, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing, dropout=dropout, class_weights=class_weights, patience=patience,
        augment=augment, randaugment=randaugment, mixup=mixup, cutmix=cutmix, val_split=val_split, seed=seed,
        cache=cache, tfds_data_dir=tfds_data_dir, precision=precision, strategy=strategy, jit=jit,
        steps_per_epoch=steps_per_epoch,
    )
    if model and base.model and get_model_name(model) != get_model_name(base.model):
        base.alpha = None  # a replayed config's width and size belong to its own model
        base.image_size = None
    cfg = base.merged(overrides)
    run_finetune(cfg, output, force, resume, quiet)


def get_model_name(name: str) -> str:
    from cvkeras.registry import UnknownModelError, get

    try:
        return get(name).name
    except UnknownModelError:
        return name


def run_finetune(cfg, output: str | None, force: bool, resume: bool, quiet: bool = False):
    """Call the trainer, turning expected failures into one-line errors; print the summary."""
    from cvkeras.data import DataError
    from cvkeras.model import WeightsError
    from cvkeras.registry import UnknownModelError
    from cvkeras.rundir import RunDirError, os_error_line
    from cvkeras.train import RunExistsError, TrainingDivergedError, finetune

    try:
        result = finetune(cfg, output=output, force=force, resume=resume, verbose=0 if quiet else None,
                          log=(lambda line: None) if quiet else None)
    except TrainingDivergedError as exc:
        raise fail(str(exc), 1) from None
    except (DataError, WeightsError, UnknownModelError, RunDirError, RunExistsError, ValueError, TypeError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(os_error_line(exc)) from None
    except KeyboardInterrupt:
        where = output or "runs/<model>-N (the run printed above)"
        raise fail(f"interrupted; finished epochs are saved -- continue with "
                   f"`cvkeras finetune --resume --output {where}`", 130) from None
    except Exception as exc:  # TensorFlow's own errors (e.g. a file its decoders reject) as one line
        if type(exc).__module__.startswith("tensorflow"):
            raise fail(f"TensorFlow failed: {str(exc).splitlines()[0][:300]}") from None
        raise
    if result.skipped:
        err.print(f"skipped {result.skipped} unreadable file(s); see {result.run_dir / 'skipped.txt'}",
                  highlight=False, soft_wrap=True)
    if not quiet:
        for line in summary_lines(result):
            console.print(line, highlight=False, soft_wrap=True, markup=False)
    console.print(final_line(result), highlight=False, soft_wrap=True, markup=False)
    return result


def summary_lines(result) -> list[str]:
    """The end-of-run summary: best epoch, the validation figures, where plots and report went.

    Plain ``name  value`` lines rather than a table, so nothing is cut at any terminal width."""
    from cvkeras.evaluate import summary_rows
    from cvkeras.rundir import CONFUSION, CURVES

    run = result.run_dir
    lines = [f"finished   {result.epochs_run} epochs, best epoch {result.best_epoch}, {result.precision}"
             + (f" on {result.replicas} replicas" if result.replicas > 1 else "")]
    if result.metrics:
        lines += [f"val {k:<14} {v}" for k, v in summary_rows(result.metrics)]
        test = result.metrics.get("test")
        if test:
            lines.append(f"test accuracy      {test['accuracy']:.4f} on {test['n']} images")
    plots = [name for name in (CURVES, CONFUSION, "report.html") if (run / name).is_file()]
    if plots:
        lines.append(f"saved      {', '.join(plots)} in {run}")
    return lines


def final_line(result) -> str:
    """The one line even --quiet prints: where the run is, its accuracy and the next command."""
    run = result.run_dir
    acc = result.metrics.get("accuracy") if result.metrics else None
    score = f" (val accuracy {100 * acc:.2f} % at epoch {result.best_epoch})" if acc is not None else ""
    return f"Results saved to {run}{score}. Next: cvkeras export {run} --int8"


@app.command(cls=HelpCommand)
def evaluate(
    run: Path = typer.Argument(..., help="Run directory made by `cvkeras finetune`."),
    data: str = typer.Option(None, help="Evaluate on another dataset with the same classes."),
    split: str = typer.Option("val", help="val or test."),
) -> None:
    """Recompute a run's metrics report (metrics.json, confusion_matrix.png) from best.keras."""
    _quiet_tf()
    from cvkeras.data import DataError
    from cvkeras.evaluate import evaluate_run, summary_rows
    from cvkeras.rundir import RunDirError, os_error_line, run_lock

    if split not in ("val", "test"):
        raise fail(f"unknown --split {split!r}; use val or test")
    try:
        with run_lock(run, "evaluate") if run.is_dir() else contextlib.nullcontext():
            report = evaluate_run(run, data=data, split=split)
    except (RunDirError, DataError, ValueError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(os_error_line(exc)) from None
    table = Table(title=f"{run} ({split})")
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

    from cvkeras.explain import ExplainError, explain_run
    from cvkeras.rundir import RunDirError

    try:
        with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("explaining", total=None)
            result = explain_run(run, images, layer, class_label, method, output,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (RunDirError, ExplainError) as exc:
        raise fail(str(exc)) from None
    for src, why in result.skipped:
        err.print(f"skipped {src}: {why}", highlight=False, soft_wrap=True, markup=False)
    if not result.items:
        raise fail("no readable image among the given paths; pass image files or folders of them")
    table = Table(title=f"{result.method} on layer {result.layer}")
    for col in ("image", "class", "score", "predicted"):
        table.add_column(col, overflow="fold")
    for item in result.items:
        table.add_row(Path(item.source).name, item.label, f"{item.score:.1%}", item.predicted)
    console.print(table)
    console.print(f"Results saved to {result.sheet.parent} (contact sheet: {result.sheet.name})", highlight=False)


@app.command(cls=HelpCommand)
def report(
    run: Path = typer.Argument(..., help="Run directory made by `cvkeras finetune`."),
    mistakes: int = typer.Option(8, "--mistakes", min=0, max=100, help="Worst validation mistakes to show."),
) -> None:
    """Write RUN/report.html: config, curves, confusion matrix, per-class table, worst mistakes with Grad-CAM,
    skipped files and the export table; one self-contained file that opens offline."""
    _quiet_tf()
    from cvkeras.report import write_report
    from cvkeras.rundir import RunDirError

    try:
        path = write_report(run, mistakes)
    except RunDirError as exc:
        raise fail(str(exc)) from None
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
    from export.cli import export as export_cmd
    from serving import cli as serving_cli

    app.command(name="export", cls=HelpCommand, epilog=EXAMPLES["export"])(export_cmd)
    for name in ("predict", "validate", "benchmark"):
        app.command(name=name, cls=HelpCommand, epilog=EXAMPLES.get(name))(getattr(serving_cli, name))


_register_package_commands()


@app.command(cls=HelpCommand)
def demo(
    output: str = typer.Option("runs/demo", "--output", "-o", help="Run directory for the demo."),
    force: bool = typer.Option(True, "--force/--no-force", help="Overwrite an earlier demo run."),
) -> None:
    """The main job on built-in data: fine-tune on demo:shapes, export int8, validate, predict."""
    _quiet_tf()
    from cvkeras.demo_job import run_demo

    code = run_demo(output, force, console)
    raise typer.Exit(code)


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

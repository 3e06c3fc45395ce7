"""``cvkeras export RUN``: the Typer command (registered by ``cvkeras.cli`` with ``app.command()``)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import typer

from export.calibration import DEFAULT_SAMPLES
from export.errors import ExportError
from export.to_onnx import DEFAULT_OPSET
from serving.validate import DEFAULT_MIN_AGREEMENT


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(report) -> None:
    """The per-artifact table: accuracy, drop and agreement with 95 % intervals, size, latency, status."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    im = report.images
    table = Table(title=f"{report.model_name}: Keras accuracy {100 * report.keras_accuracy:.2f}% on "
                        f"{report.n_val} validation images; agreement over {im.get('fidelity')} images "
                        f"({im.get('val')} val + {im.get('held_back_train')} held-back training), "
                        f"{im.get('calibration')} calibration images", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("artifact", no_wrap=True)
    for col in ("acc %", "drop [95% CI]", "agree % [95% CI]", "max|dp|", "MB", "ms/img", "float layers"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for a in report.artifacts:
        colour = {"passed": "green", "failed": "red", "error": "red"}.get(a.status, "yellow")
        drop = _fmt(a.accuracy_drop, "+.2f")
        if a.accuracy_drop_ci:
            drop += f" [{a.accuracy_drop_ci[0]:+.2f}, {a.accuracy_drop_ci[1]:+.2f}]"
        agree = _fmt(None if a.agreement is None else 100 * a.agreement, ".2f")
        if a.agreement_ci:
            agree += f" [{100 * a.agreement_ci[0]:.2f}, {100 * a.agreement_ci[1]:.2f}]"
        table.add_row(
            a.name, _fmt(None if a.paired_accuracy is None else 100 * a.paired_accuracy, ".2f"), drop, agree,
            _fmt(a.max_abs_diff, ".1e"),
            _fmt(None if a.size_bytes is None else a.size_bytes / 1e6, ".2f"), _fmt(a.latency_ms_per_image, ".2f"),
            "-" if a.float_layers is None else str(len(a.float_layers)),
            f"[{colour}]{a.status}[/{colour}]",
        )
    # A pipe or a log file gets the whole table rather than rich's 80-column default.
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    for a in report.artifacts:
        if a.float_layers:
            rep = a.repair or {}
            print(f"{a.name}: repaired, {len(a.float_layers)} layer(s) kept in float32 "
                  f"({', '.join(a.float_layers)}); size x{rep.get('size_cost', float('nan')):.3f}, "
                  f"latency x{rep.get('latency_cost', float('nan')):.3f} of the full int8 model")


def export(
    run: Path = typer.Argument(..., help="Run directory written by `cvkeras finetune`."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Export directory [default: RUN/export]."),
    format: str = typer.Option("onnx,tflite", "--format", help="Comma-separated formats: onnx, tflite."),
    int8: bool = typer.Option(False, "--int8", help="Also make calibrated int8 models (ONNX QDQ, TFLite full "
                                                     "integer) and a dynamic-range TFLite."),
    fp16: bool = typer.Option(False, "--fp16", help="Also make float16 models."),
    calibration: str = typer.Option("minmax", "--calibration", help="ONNX int8 calibration: minmax, entropy "
                                                                     "or percentile."),
    calibration_samples: int = typer.Option(DEFAULT_SAMPLES, "--calibration-samples",
                                            help="Training images used for calibration (stratified)."),
    io_type: str = typer.Option("uint8", "--io-type",
                                help="Input/output type of model_int8.tflite: uint8, int8 or float32."),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset."),
    max_accuracy_drop: float = typer.Option(
        1.0, "--max-accuracy-drop", help="Largest accuracy loss (points) allowed for reduced precision."),
    threads: int | None = typer.Option(None, "--threads", help="Runtime threads for verification."),
    min_agreement: float = typer.Option(
        DEFAULT_MIN_AGREEMENT, "--min-agreement",
        help="Smallest top-1 agreement with the Keras model (fraction) allowed for reduced precision, "
             "over the validation and held-back training images."),
    repair: bool = typer.Option(True, "--repair/--no-repair",
                                help="When int8 misses a gate, keep its worst layers in float until it passes."),
    calibration_flip: bool = typer.Option(True, "--calibration-flip/--no-calibration-flip",
                                          help="Calibrate on the calibration images and their mirror images."),
    json_out: bool = typer.Option(False, "--json", help="Print export_report.json on stdout instead of the "
                                                        "table (docs/json.md)."),
) -> None:
    """Export a fine-tuned run to ONNX and TFLite, each checked against the Keras model.

    Writes model.onnx and model.tflite (float32) to RUN/export; --int8 adds model_int8.onnx,
    model_int8.tflite and model_dynamic.tflite, --fp16 adds model_fp16.onnx and model_fp16.tflite. Every
    artifact carries its labels and input contract, and is run on the validation split: float32 must match
    Keras, reduced precision must stay within --max-accuracy-drop. Exit 1 when a check fails (files are
    kept), 2 when the export cannot run or a conversion fails.
    """
    from cvkeras.quiet import quiet_tensorflow

    quiet_tensorflow()  # TensorFlow's start-up lines are not errors; --verbose shows them
    from rich.console import Console

    from cvkeras.rundir import RunDirError
    from export.exporter import REPORT_FILE, export_run

    err = Console(stderr=True)
    import math

    from cvkeras.rundir import os_error_line, run_lock

    bad = ("--threads must be a whole number >= 1" if threads is not None and threads < 1 else
           "--max-accuracy-drop must be a finite number >= 0" if not (math.isfinite(max_accuracy_drop)
                                                                     and max_accuracy_drop >= 0) else None)
    if bad:
        print(f"error: {bad}, not {threads if bad.startswith('--threads') else max_accuracy_drop}", file=sys.stderr)
        raise typer.Exit(2)
    try:
        with run_lock(run, "export") if run.is_dir() else contextlib.nullcontext():
            report = export_run(
                run, output, format, int8=int8, fp16=fp16, calibration=calibration,
                calibration_samples=calibration_samples, io_type=io_type, opset=opset,
                max_accuracy_drop=max_accuracy_drop, threads=threads, min_agreement=min_agreement,
                repair=repair, calibration_flip=calibration_flip,
                progress=lambda msg: err.print(f"[dim]{msg}[/dim]"),
            )
    except (ExportError, RunDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    except OSError as exc:  # e.g. a read-only run directory
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        raise typer.Exit(2) from None
    if json_out:
        import json

        from serving.cli import _json_safe

        print(json.dumps(_json_safe(report.to_dict()), allow_nan=False))
    else:
        print_table(report)
    if output is None or Path(output).resolve() == (Path(run) / "export").resolve():
        from cvkeras.report import refresh

        refresh(run, warn=lambda line: print(line, file=sys.stderr))
    for name in report.unverified_files:
        print(f"warning: {Path(report.output) / name}: not made by this export, and cvkeras cannot prove it "
              "wrote it, so it was left in place unverified (listed in unverified_files of the report); "
              "delete or move it", file=sys.stderr)
    for a in report.artifacts:
        if not a.ok:
            print(f"error: {a.error or a.name + ': ' + a.status}", file=sys.stderr)
    if report.exit_code:
        raise typer.Exit(report.exit_code)
    if not json_out:
        print(f"all {len(report.artifacts)} artifacts verified; report: {Path(report.output) / REPORT_FILE}")

"""``cvkeras export RUN``: the Typer command (registered by ``cvkeras.cli`` with ``app.command()``)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import typer

from cvkeras.export.options import ExportOptions
from cvkeras.serving.errors import printable


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(report) -> None:
    """The per-artifact table: accuracy, drop and agreement with 95 % intervals, size, latency, status."""
    from rich import box
    from rich.table import Table

    from cvkeras.serving.console import stdout_console

    im = report.images
    table = Table(title=f"{report.model_name}: Keras accuracy {100 * report.keras_accuracy:.2f}% on "
                        f"{report.n_val} validation images; accuracy, drop, agreement and max|dp| on those "
                        f"{im.get('val')} validation images (the gates); 'held-back' is the agreement on "
                        f"{im.get('held_back_train')} held-back training images (seen in training, not gated); "
                        f"{im.get('calibration')} calibration images; ECE of the scores at the run's temperature "
                        f"{report.temperature:.3g}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("artifact", no_wrap=True)
    for col in ("acc %", "drop [95% CI]", "agree % [95% CI]", "held-back %", "max|dp|", "ECE", "MB", "ms/img",
                "float layers"):
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
            _fmt(None if a.held_back_agreement is None else 100 * a.held_back_agreement, ".2f"),
            _fmt(a.max_abs_diff, ".1e"),
            _fmt(a.ece, ".3f"),
            _fmt(None if a.size_bytes is None else a.size_bytes / 1e6, ".2f"), _fmt(a.latency_ms_per_image, ".2f"),
            "-" if a.float_layers is None else str(len(a.float_layers)),
            f"[{colour}]{a.status}[/{colour}]",
        )
    stdout_console().print(table)  # a pipe or a log file gets the whole table, not rich's 80 columns
    for a in report.artifacts:
        if a.float_layers:
            rep = a.repair or {}
            print(f"{a.name}: repaired, {len(a.float_layers)} layer(s) kept in float32 "
                  f"({layer_list(a.float_layers)}); size x{rep.get('size_cost', float('nan')):.3f}, "
                  f"latency x{rep.get('latency_cost', float('nan')):.3f} of the full int8 model")


#: In a TFLite fused op name (``act;bn;conv``), the part that names the weighted op.
_WEIGHTED = ("/convolution", "/depthwise", "/MatMul", "/BiasAdd")


def layer_list(names: list[str], most: int = 4) -> str:
    """Layer names for one console line: each TFLite fused name (``a;b;c``) by its weighted op's part, at
    most ``most`` of them (``export_report.json`` has them all)."""
    def weighted_part(name: str) -> str:
        parts = name.split(";")
        return next((x for x in parts if x.endswith(_WEIGHTED)), parts[0])

    short = [weighted_part(n) for n in names]
    more = f", ... {len(short) - most} more in export_report.json" if len(short) > most else ""
    return ", ".join(short[:most]) + more


def export(
    run: Path = typer.Argument(..., help="Run directory written by `cvkeras finetune`."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Export directory [default: RUN/export]."),
    format: str = typer.Option(",".join(ExportOptions.formats), "--format",
                               help="Comma-separated formats: onnx, tflite."),
    int8: bool = typer.Option(ExportOptions.int8, "--int8", help="Also make calibrated int8 models (ONNX QDQ, "
                                                                 "TFLite full integer) and a dynamic-range TFLite."),
    fp16: bool = typer.Option(ExportOptions.fp16, "--fp16", help="Also make float16 models."),
    calibration: str = typer.Option(ExportOptions.calibration, "--calibration",
                                    help="ONNX int8 calibration: minmax, entropy or percentile."),
    calibration_samples: int = typer.Option(ExportOptions.calibration_samples, "--calibration-samples",
                                            help="Training images used for calibration (stratified)."),
    io_type: str = typer.Option(ExportOptions.io_type, "--io-type",
                                help="Input/output type of model_int8.tflite: uint8, int8 or float32."),
    opset: int = typer.Option(ExportOptions.opset, "--opset", help="ONNX opset."),
    max_accuracy_drop: float = typer.Option(
        ExportOptions.max_accuracy_drop, "--max-accuracy-drop",
        help="Largest accuracy loss (points) allowed for reduced precision."),
    threads: int | None = typer.Option(ExportOptions.threads, "--threads", help="Runtime threads for verification."),
    min_agreement: float = typer.Option(
        ExportOptions.min_agreement, "--min-agreement",
        help="Smallest top-1 agreement with the Keras model (fraction) allowed for reduced precision, "
             "on the validation images (held-back training images are reported apart, never gated)."),
    repair: bool = typer.Option(ExportOptions.repair, "--repair/--no-repair",
                                help="When int8 misses a gate, keep its worst layers in float: the fewest that "
                                     "hold on held-back training images with a 95 % predicted chance to pass on "
                                     "validation, then judged once on validation."),
    repair_min_agreement: float | None = typer.Option(
        ExportOptions.repair_min_agreement, "--repair-min-agreement", show_default=False,
        help="Agreement the repair's search needs on the held-back training images (fraction; default: a "
             "quarter of the disagreement --min-agreement allows, 0.9975 for 0.99: training images flip less)."),
    calibration_flip: bool = typer.Option(ExportOptions.calibration_flip, "--calibration-flip/--no-calibration-flip",
                                          help="Calibrate on the calibration images and their mirror images."),
    float_stem: bool = typer.Option(ExportOptions.float_stem, "--float-stem/--int8-stem",
                                    help="Keep model_int8.onnx's stem (input normalisation, first convs) in float32, "
                                         "which ONNX Runtime's CPU kernels run faster; --int8-stem for an all-int8 "
                                         "graph (e.g. an int8-only accelerator)."),
    unknown: str = typer.Option("on", "--unknown", help="on: the models (ONNX and TFLite) say `unknown` for "
                                "images like none of the training images (docs/unknown.md); off: they always answer "
                                "a class."),
    unknown_accept: float = typer.Option(ExportOptions.unknown_accept, "--unknown-accept",
                                         help="Fraction of the validation images the unknown threshold accepts."),
    ood: Path | None = typer.Option(None, "--ood", show_default=False, help="Photos of none of the classes: "
                                    "report the unknown detector's AUROC and false-accept rate on them."),
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
    from cvkeras.train.quiet import quiet_tensorflow

    quiet_tensorflow()  # TensorFlow's start-up lines are not errors; --verbose shows them
    from rich.console import Console

    from cvkeras.export.exporter import REPORT_FILE, export_run

    err = Console(stderr=True)
    from cvkeras.cli.errors import command_errors
    from cvkeras.run.files import run_lock
    from cvkeras.run.rundir import RunDir

    with command_errors():  # also an OSError such as a read-only run directory
        if unknown not in ("on", "off"):
            from cvkeras.export.errors import ExportError

            raise ExportError(f"--unknown must be on or off, not {printable(unknown)!r}")
        options = ExportOptions(
            formats=format, int8=int8, fp16=fp16, calibration=calibration, calibration_samples=calibration_samples,
            io_type=io_type, opset=opset, max_accuracy_drop=max_accuracy_drop, threads=threads,
            min_agreement=min_agreement, repair=repair, calibration_flip=calibration_flip, float_stem=float_stem,
            repair_min_agreement=repair_min_agreement, unknown=unknown == "on", unknown_accept=unknown_accept,
            ood=None if ood is None else str(ood),
        ).checked()  # every option, before the run directory is locked or read
        with run_lock(run, "export") if run.is_dir() else contextlib.nullcontext():
            unfinished = RunDir(run).unfinished()
            if unfinished:
                print(f"warning: {printable(unfinished)}", file=sys.stderr)
            report = export_run(run, output, options, progress=lambda msg: err.print(f"[dim]{msg}[/dim]"))
    if json_out:
        from cvkeras.serving.console import print_json

        print_json(report.to_dict())
    else:
        print_table(report)
    if output is None or Path(output).resolve() == (Path(run) / "export").resolve():
        from cvkeras.analysis.report import refresh

        refresh(run, warn=lambda line: print(line, file=sys.stderr))
    for name in report.unverified_files:
        print(f"warning: {Path(report.output) / name}: not made by this export, and cvkeras cannot prove it "
              "wrote it, so it was left in place unverified (listed in unverified_files of the report); "
              "delete or move it", file=sys.stderr)
    for line in unknown_drift(report.artifacts):
        print(line, file=sys.stderr)
    for a in report.artifacts:
        if not a.ok:
            print(f"error: {a.error or a.name + ': ' + a.status}", file=sys.stderr)
    if report.exit_code:
        raise typer.Exit(report.exit_code)
    if not json_out:
        print_unknown(report.unknown)
        print(f"all {len(report.artifacts)} artifacts verified; report: {Path(report.output) / REPORT_FILE}")


def unknown_drift(artifacts) -> list[str]:
    """A warning per artifact that passed its gates but whose unknown/known decisions keep fewer than
    ``MIN_DECISION_AGREEMENT`` of the Keras model's on the validation images (a reduced-precision file near
    the threshold); a refused file has its error line already."""
    from cvkeras.serving.unknown import MIN_DECISION_AGREEMENT

    out = []
    for a in artifacts:
        u = a.unknown or {}
        if a.ok and u.get("agreement") is not None and u["agreement"] < MIN_DECISION_AGREEMENT:
            out.append(f"warning: {a.name}: its unknown/known answers agree with the Keras model's on "
                       f"{100 * u['agreement']:.2f} % of {u.get('n_agreement')} validation images (under "
                       f"{100 * MIN_DECISION_AGREEMENT:g} %): images near the threshold flip; the float32 "
                       "file keeps them")
    return out


def print_unknown(block: dict | None) -> None:
    """One line on the unknown detector: threshold, acceptance, and the --ood figures when given."""
    if block is None:
        return
    kinds = " and ".join({"onnx": "ONNX", "tflite": "TFLite"}.get(f, f) for f in block["formats"])
    line = (f"unknown ({block['score']}, {kinds} models): threshold {block['threshold']:.4f}, Keras accepts "
            f"{100 * block['keras_accept_rate']:.1f} % of {block['chosen_on']['n']} validation images")
    if block["ood"] is not None:
        o = block["ood"]
        line += f"; --ood: AUROC {o['auroc']:.3f}, {100 * o['false_accept']:.1f} % of {o['n']} falsely accepted"
    print(line)

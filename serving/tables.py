"""How ``predict``, ``validate`` and ``benchmark`` show their results on the console: rich tables on stdout
(never a cut cell: :func:`cvkeras.serving.console.print_rows`), percentages as the console speaks them, and
user text (file names, labels) escaped. Their ``--json`` output is the documents themselves (docs/json.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from cvkeras.serving.console import print_rows, stdout_console
from cvkeras.serving.errors import printable

if TYPE_CHECKING:
    from cvkeras.serving.results import Prediction
    from cvkeras.serving.validation_report import ValidationReport


def prediction_table(results: list[Prediction], top_k: int) -> None:
    """The ``predict`` table: file, label (``unknown`` for an image the model's detector rejects), score and
    (``top_k`` > 1) the best classes; errors in red."""
    from rich.markup import escape as escape_markup

    def escape(text: str) -> str:  # file names and labels are user text: no markup, no control characters
        return escape_markup(printable(text))

    columns = [("file", "left"), ("label", "left"), ("score", "right")]
    if top_k > 1:
        columns.append((f"top {top_k}", "left"))
    rows = []
    for r in results:
        if r.ok:
            # an image like none of the training images shows `unknown`; top-k still lists the closest classes
            label = "[yellow]unknown[/yellow]" if r.unknown else escape(str(r.label))
            row = [escape(r.path or ""), label, f"{r.score:.3f}"]
            if top_k > 1:
                row.append(escape(", ".join(f"{name} {score:.3f}" for name, score in r.top_k)))
        else:
            row = [escape(r.path or ""), "[red]error[/red]", "", *([escape(r.error or "")] if top_k > 1 else [])]
            if top_k == 1:
                row[2] = escape(r.error or "")
        rows.append(row)
    print_rows(None, columns, rows, optional=(f"top {top_k}",))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100.0 * v:.2f} %"


def validation_tables(report: ValidationReport) -> None:
    """The ``validate`` summary and per-class tables; the first unreadable files on stderr."""
    from rich.table import Table

    console = stdout_console()
    summary = Table(title=f"validation of {report.model}", show_header=False)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    drop = "-" if report.accuracy_drop is None else f"{report.accuracy_drop:+.2f} points"
    if report.accuracy_drop_ci:
        drop += f" [95 % CI {report.accuracy_drop_ci[0]:+.2f}..{report.accuracy_drop_ci[1]:+.2f}]"
    agree = _pct(report.agreement)
    if report.agreement_ci:
        agree += f" [95 % CI {100 * report.agreement_ci[0]:.2f}..{100 * report.agreement_ci[1]:.2f}]"
    on = report.measured_on.get("accuracy", {}).get("images", "given images")
    rows = [
        ("images", f"{report.n} ({on})"),
        ("accuracy", _pct(report.accuracy)),
        ("reference accuracy", _pct(report.reference_accuracy)),
        ("accuracy on the same images", _pct(report.paired_accuracy)),
        ("validation images compared", str(report.n_paired)),
        ("accuracy drop", f"{drop} (max {report.max_accuracy_drop:g})"),
        ("top-1 agreement", f"{agree} (min {100 * report.min_agreement:g} %)"),
        ("max |p - p_ref|", "-" if report.max_abs_diff is None else f"{report.max_abs_diff:.4f}"
         + (" (before the temperature)" if report.temperature != 1.0 else "")),
        ("matched reference outputs", str(report.n_reference)),
    ]
    if report.n_held_back:
        rows.append(("held-back training agreement", f"{_pct(report.held_back_agreement)} on {report.n_held_back} "
                                                     "images (seen in training; not gated)"))
    if report.n_seen:
        rows.append(("training images (apart)", f"{report.n_seen}, accuracy {_pct(report.seen_accuracy)}"))
    if report.ece is not None:
        rows.append(("calibration", f"ECE {report.ece:.4f}, NLL {report.nll:.4f} at temperature "
                                    f"{report.temperature:.3g} (the scores the device gives)"))
    if (u := report.unknown) is not None:
        rows.append(("unknown: accepted", f"{_pct(u['accept_rate'])} of {u['n']} images (target "
                                          f"{100 * u['accept_target']:g} %, threshold {u['threshold']:.4f})"))
        if u["agreement"] is not None:
            rows.append(("unknown: same decision as Keras", f"{_pct(u['agreement'])} on {u['n_agreement']} images"))
        if u["ood"] is not None:
            rows.append(("unknown: --ood images", f"AUROC {u['ood']['auroc']:.3f}, falsely accepted "
                                                   f"{_pct(u['ood']['false_accept'])} of {u['ood']['n']}"))
    rows += [
        ("latency per image", f"{report.latency_ms_per_image:.2f} ms"),
        ("unreadable files", str(len(report.failures))),
        ("result", "[green]passed[/green]" if report.passed else "[red]FAILED[/red]"),
    ]
    for name, value in rows:
        summary.add_row(name, value)
    console.print(summary)
    per_class = Table(title="per-class accuracy")
    per_class.add_column("class")
    per_class.add_column("accuracy", justify="right")
    per_class.add_column("images", justify="right")
    for name, acc in report.per_class.items():
        per_class.add_row(name, _pct(acc), str(report.support[name]))
    console.print(per_class)
    for f in report.failures[:10]:
        typer.echo(f"skipped: {f['error']}", err=True)


def benchmark_table(doc: dict[str, Any], batch_size: int, threads: int | None, rounds: int) -> None:
    """The ``benchmark`` table (one row per model and mode, rounds as ranges); its warnings on stderr."""
    from rich.markup import escape

    title = (f"benchmark: batch {batch_size}, threads {threads or 'auto'}, {rounds} rounds, "
             f"load average {doc['loadavg'][0]}-{doc['loadavg'][1]} on {doc['cpus']} CPUs")
    columns = [
        ("model", "model", "{}"),
        ("mode", "mode", "{}"),
        ("precision", "precision", "{}"),
        ("size MB", "size_bytes", "{:.2f}"),
        ("load ms", "load_time_ms", "{:.0f}"),
        ("image p50 ms", "latency_ms_per_image_p50", "{:.2f}"),
        ("image rounds ms", "image_rounds", "{}"),
        ("batch p50 ms", "latency_ms_per_batch_p50", "{:.2f}"),
        ("images/s", "throughput_ips", "{:.1f}"),
        ("images/s rounds", "tput_rounds", "{}"),
    ]
    rows = []
    for row in doc["models"]:
        im, tp = row["latency_ms_per_image_rounds"], row["throughput_ips_rounds"]
        values = {**row, "size_bytes": row["size_bytes"] / 1e6,
                  "image_rounds": f"{im['min']:.2f}-{im['max']:.2f}", "tput_rounds": f"{tp['min']:.0f}-{tp['max']:.0f}"}
        rows.append([escape(fmt.format(values[key])) for _, key, fmt in columns])
    print_rows(title, [(name, "left" if name in ("model", "mode") else "right") for name, *_ in columns], rows)
    for warning in doc["warnings"]:
        typer.echo("warning: " + warning, err=True)

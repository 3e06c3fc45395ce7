"""``cvkeras models``: the backbones by what an edge model is chosen by (parameters, multiply-adds, file size),
as a table or as ``cvkeras.models/1`` JSON; ``--measure`` builds one here and times it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cvkeras.serving.console import print_json, stdout_console
from cvkeras.serving.errors import CvkerasError, fail
from cvkeras.serving.schema import schema_id  # standard library only: cheap for --help
from cvkeras.train.quiet import quiet_tensorflow

if TYPE_CHECKING:
    from cvkeras.models.registry import ModelSpec

console = stdout_console()


def _num(row: dict, key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
    """One figure of a row for the table, or ? when it was not measured."""
    return format(row[key] * scale, fmt) if key in row else "?"


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
        quiet_tensorflow()
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


def models_row(spec: ModelSpec, row: dict) -> dict:
    """One backbone for ``models --json`` (``cvkeras.models/1``): sizes in bytes from the parameter count."""
    params = row.get("params")
    out = {"name": spec.name, "alphas": list(spec.alphas or []), "alpha": row.get("alpha"),
           "input_size": list(row.get("input_size", spec.input_size)), "params": params,
           "gmacs": row.get("gmacs"), "float32_size_bytes": None if params is None else 4 * params,
           "int8_size_bytes": params}
    if "cpu_ms" in row:
        out["cpu_ms"] = row["cpu_ms"]
    return out

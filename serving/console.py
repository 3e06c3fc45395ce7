"""How every command prints: one stdout console (one width rule), tables that never cut a cell, JSON
without bare NaN. Errors go through :func:`cvkeras.serving.errors.fail`. Device side: rich only.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any


def json_safe(value: Any) -> Any:
    """NaN and infinities (a model that emits them) become null: bare NaN is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def print_json(doc: Any) -> None:
    """One JSON document on stdout (NaN and infinities as null: bare NaN is not JSON)."""
    import json

    print(json.dumps(json_safe(doc), allow_nan=False), flush=True)  # flushed: `predict --json` streams lines


def stdout_console() -> Any:
    """Rich console on stdout; wide when piped (rich's 80-column default would fold file paths)."""
    from rich.console import Console

    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=160 if piped else None)


def print_rows(title: str | None, columns: list[tuple[str, str]], rows: list[list[str]],
               optional: tuple[str, ...] = ()) -> None:
    """Print rows as a table whose cells are never cut or folded mid-word.

    ``columns`` are ``(title, justify)``. When the table is wider than the terminal, the ``optional``
    columns are left out; if it is still too wide, each row is printed as a block of ``name: value``
    lines headed by its first cell (a stacked layout that fits any width).
    """
    from rich import box
    from rich.table import Table

    console = stdout_console()

    def width(cols: list[int]) -> int:  # rich's SIMPLE_HEAD box: one space either side of each cell
        return sum(max([len(columns[i][0])] + [len(_plain(r[i])) for r in rows]) + 2 for i in cols)

    keep = list(range(len(columns)))
    if width(keep) > console.width:
        keep = [i for i in keep if columns[i][0] not in optional]
    if width(keep) <= console.width:
        table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=True)
        for i in keep:
            table.add_column(columns[i][0], justify=columns[i][1], no_wrap=True)
        for row in rows:
            table.add_row(*[row[i] for i in keep])
        console.print(table)
        return
    if title:
        console.print(title, soft_wrap=True)
    pad = max(len(columns[i][0]) for i in keep[1:]) if len(keep) > 1 else 0
    for row in rows:
        console.print(row[keep[0]], soft_wrap=True)
        for i in keep[1:]:
            console.print(f"  {columns[i][0]:<{pad}}  {row[i]}", soft_wrap=True)


def _plain(cell: str) -> str:
    from rich.text import Text

    return Text.from_markup(cell).plain

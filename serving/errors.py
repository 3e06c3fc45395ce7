"""The one error type for expected failures, and the one way a command reports them.

Every failure a user can fix (a bad file, a wrong option, a damaged run directory) raises a subclass of
:class:`CvkerasError` whose message is one line naming the file and the fix; the command lines catch
``CvkerasError`` (and ``OSError``) only, so any other exception is a bug and keeps its traceback.

This module is the lowest layer (standard library only; ``typer`` is imported by :func:`fail` when a
command reports), so the device side, the training side and the exporter all share it.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

#: Characters a terminal acts on (C0/C1 controls with ESC, DEL) or that reorder text (bidi overrides).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
#: How much of a user value a message quotes (its repr, cut): messages stay one readable line.
QUOTE_LIMIT = 80


class CvkerasError(Exception):
    """An expected failure: one line naming the file and the fix; ``exit_code`` is the command's exit status."""

    exit_code = 2


class OptionError(CvkerasError, ValueError):
    """A bad option or setting value (also a ValueError, as callers of the library functions expect)."""


class RunDirError(CvkerasError, ValueError):
    """A run directory that is missing, incomplete or damaged; the message names the file and the fix."""


def has_control(text: str) -> bool:
    """Whether ``text`` holds a character a terminal acts on or a line-based file splits at (see ``printable``)."""
    return _CONTROL.search(text) is not None


def printable(text: str, limit: int = 2000) -> str:
    """``text`` safe to print on one terminal line: control characters (newline, ESC, bidi overrides) shown
    escaped (``\\n``, ``\\x1b``), at most ``limit`` characters (cut with ``...``).

    A label or file name reaches the terminal through messages and tables; raw, ESC sequences would clear the
    screen or retitle the window and a newline would forge a line.
    """
    text = str(text)
    cut = len(text) > limit
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text[: limit + 1])
    return text[: limit - 3] + "..." if cut or len(text) > limit else text


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, QUOTE_LIMIT, QUOTE_LIMIT, 40
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = 6


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """The one way a message quotes a user value: its repr, bounded and escaped (``printable``).

    The repr is built bounded (``reprlib``: a few items per level, a few levels), never in full and then cut:
    a YAML alias bomb of a few hundred bytes would otherwise expand to gigabytes before the error prints.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # a repr that fails (an int past Python's digit limit, a broken __repr__)
        text = f"<{type(value).__name__}>"
    return printable(text, limit)


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an exception's (or a message's) text, at most ``limit`` characters.

    Converters and runtimes raise pages of log; one line of them goes into an ``error:`` message.
    """
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line[:limit]
    return type(exc).__name__ if isinstance(exc, BaseException) else "failed"


def fail(message: BaseException | str, code: int | None = None) -> Any:
    """Print one ``error:`` line on stderr and return the ``typer.Exit`` to raise.

    ``code`` defaults to the error's ``exit_code`` (2 for anything else).
    """
    import typer

    if code is None:
        code = getattr(message, "exit_code", 2)
    typer.echo(f"error: {printable(first_line(message, 2000))}", err=True)
    return typer.Exit(code)

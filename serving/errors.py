"""The one error type for expected failures, and the one way a command reports them.

Every failure a user can fix (a bad file, a wrong option, a damaged run directory) raises a subclass of
:class:`CvkerasError` whose message is one line naming the file and the fix; the command lines catch
``CvkerasError`` (and ``OSError``) only, so any other exception is a bug and keeps its traceback.

This module is the lowest layer (standard library only; ``typer`` is imported by :func:`fail` when a
command reports), so the device side, the training side and the exporter all share it.
"""

from __future__ import annotations

from typing import Any


class CvkerasError(Exception):
    """An expected failure: one line naming the file and the fix; ``exit_code`` is the command's exit status."""

    exit_code = 2


class OptionError(CvkerasError, ValueError):
    """A bad option or setting value (also a ValueError, as callers of the library functions expect)."""


class RunDirError(CvkerasError, ValueError):
    """A run directory that is missing, incomplete or damaged; the message names the file and the fix."""


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
    typer.echo(f"error: {first_line(message, 2000)}", err=True)
    return typer.Exit(code)

"""Errors of the export package: each carries a one-line message naming the file and the fix."""

from __future__ import annotations


class ExportError(RuntimeError):
    """The export cannot run (bad run directory, bad option, unloadable model): exit code 2."""


class ConversionError(ExportError):
    """One artifact could not be converted (e.g. an op the converter does not support)."""

    def __init__(self, artifact: str, message: str) -> None:
        super().__init__(f"{artifact}: {message}")
        self.artifact = artifact


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's text (converters raise pages of log)."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line[:limit]
    return type(exc).__name__

"""Errors of the export package: each carries a one-line message naming the file and the fix."""

from __future__ import annotations

from serving.errors import CvkerasError, first_line

__all__ = ["ConversionError", "ExportError", "first_line"]


class ExportError(CvkerasError, RuntimeError):
    """The export cannot run (bad run directory, bad option, unloadable model): exit code 2."""


class ConversionError(ExportError):
    """One artifact could not be converted (e.g. an op the converter does not support)."""

    def __init__(self, artifact: str, message: str) -> None:
        super().__init__(f"{artifact}: {message}")
        self.artifact = artifact

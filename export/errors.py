"""Errors of the export package: each carries a one-line message naming the file and the fix; and
:func:`quiet`, which keeps the converters' own chatter off the console (both formats' converters use it).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

from cvkeras.serving.errors import CvkerasError, first_line

__all__ = ["ConversionError", "ExportError", "converting", "quiet"]


class ExportError(CvkerasError, RuntimeError):
    """The export cannot run (bad run directory, bad option, unloadable model): exit code 2."""


class ConversionError(ExportError):
    """One artifact could not be converted (e.g. an op the converter does not support)."""

    def __init__(self, artifact: str, message: str) -> None:
        super().__init__(f"{artifact}: {message}")
        self.artifact = artifact


@contextlib.contextmanager
def converting(artifact: str, what: str, fix: str = "") -> Iterator[None]:
    """Any error raised inside, except an ExportError (already one line), as a ConversionError for ``artifact``:
    ``"<what> failed (<its first line>); <fix>"``. Converters, runtimes and numpy raise many types.

        >>> with converting("model_int8.onnx", "int8 bias correction", "export without --int8"):  # doctest: +SKIP
        ...     correct_biases(...)
    """
    try:
        yield
    except ExportError:
        raise
    except Exception as exc:  # the point: every other type becomes one line
        raise ConversionError(artifact, f"{what} failed ({first_line(exc)})" + (f"; {fix}" if fix else "")) from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence converter chatter (Python logging and stdout prints); errors still raise."""
    loggers = [logging.getLogger(n) for n in ("tf2onnx", "tensorflow", "absl", "onnxruntime")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)

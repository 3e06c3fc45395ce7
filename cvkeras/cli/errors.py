"""How every command ends on an expected failure: one ``error:`` line on stderr and the error's exit code.

A :class:`~cvkeras.serving.errors.CvkerasError` prints as it says (exit 2, or its own ``exit_code``); an
OSError (a full disk, a read-only folder) prints naming the file (:func:`cvkeras.run.files.os_error_line`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cvkeras.run.files import os_error_line
from cvkeras.serving.errors import CvkerasError, fail


@contextlib.contextmanager
def command_errors() -> Iterator[None]:
    """Turn the expected failures of the block into ``typer.Exit`` after one ``error:`` line."""
    try:
        yield
    except CvkerasError as exc:
        raise fail(exc) from None
    except OSError as exc:
        raise fail(os_error_line(exc)) from None

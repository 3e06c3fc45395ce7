"""The one way tests drive the command line, and the tiny-run flags every training test starts from."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner, Result

from cvkeras.cli import app

#: The smallest real run: MobileNet a0.25 from random weights at 32 px, batch 8. Tests add epochs and steps.
TINY = ["--model", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "32", "--batch-size", "8"]


def invoke(*args: Any, **kwargs: Any) -> Result:
    """Run ``cvkeras ARGS`` in-process (arguments may be paths or numbers); ``kwargs`` go to ``CliRunner.invoke``."""
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def json_lines(text: str) -> list[dict]:
    """The JSON objects of a command's output, one per line (``predict --json``)."""
    import json

    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

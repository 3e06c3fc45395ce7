"""The ``cvkeras`` command line: the app, which registers every command in the order ``--help`` lists them.

Each command is a thin Typer function in its own module here (``models``, ``finetune``, ``check``, the run
views in :mod:`cvkeras.cli.analysis`, ``export``, ``demo``, ``distill``, ``tune``), or in the serving package
(``predict``, ``validate``, ``benchmark``). Heavy libraries (TensorFlow, Keras, tf2onnx) are imported inside
the commands that need them, so ``cvkeras --help``, ``models``, ``predict``, ``validate`` and ``benchmark``
start fast and work on a device without TensorFlow.
"""

from __future__ import annotations

import os
import sys

import typer

from cvkeras.cli import distill as distill_cli
from cvkeras.cli import tune as tune_cli
from cvkeras.cli.analysis import evaluate, explain, report
from cvkeras.cli.check import check
from cvkeras.cli.export import export as export_cmd
from cvkeras.cli.finetune import finetune
from cvkeras.cli.helpfmt import FinetuneHelpCommand, HelpCommand, HelpGroup
from cvkeras.cli.models import models
from cvkeras.serving import cli as serving_cli
from cvkeras.serving.console import stdout_console
from cvkeras.serving.errors import CvkerasError, fail
from cvkeras.train.quiet import quiet_tensorflow

app = typer.Typer(
    help="Fine-tune Keras Applications classifiers, export them to ONNX/TFLite and run them on devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=HelpGroup,
)
console = stdout_console()


def _print_version(value: bool) -> None:
    if value:
        from cvkeras import __version__

        console.print(f"cvkeras {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _options(
    verbose: bool = typer.Option(False, "--verbose", help="Show TensorFlow's own log lines too."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    """Options for every command."""
    if verbose:
        os.environ["CVKERAS_VERBOSE"] = "1"


#: One short example per command, printed under its --help (the leading newline keeps the indentation).
EXAMPLES = {
    "export": "\nExamples:\n  cvkeras export runs/mobilenet_v2-1          # float32 ONNX + TFLite\n"
              "  cvkeras export runs/mobilenet_v2-1 --int8   # and checked int8 models",
    "predict": "\nExamples:\n  cvkeras predict runs/mobilenet_v2-1/export/model.onnx photo.jpg\n"
               "  cvkeras predict model_int8.tflite photos/ --top-k 3 --json",
    "validate": "\nExample:\n  cvkeras validate export/model_int8.onnx --data data/flowers/val",
    "benchmark": "\nExample:\n  cvkeras benchmark export/model.onnx export/model_int8.onnx",
}


def demo(
    output: str = typer.Option("runs/demo", "--output", "-o", help="Run directory for the demo."),
    force: bool = typer.Option(True, "--force/--no-force", help="Overwrite an earlier demo run."),
    shapes: bool = typer.Option(False, "--shapes", help="Generated shapes, trained from scratch, instead of the "
                                                        "built-in flower photos and ImageNet weights."),
) -> None:
    """The main job offline on built-in data: fine-tune MobileNetV2 (ImageNet weights) on 5 classes of flower
    photos, export checked int8 models, validate, predict; RUN/report.html shows the result."""
    quiet_tensorflow()
    from cvkeras.cli.demo import run_demo

    try:
        code = run_demo(output, force, console, app, shapes)
    except CvkerasError as exc:  # damaged demo data: one line, nothing run
        raise fail(exc) from None
    raise typer.Exit(code)


app.command(name="models", cls=HelpCommand)(models)
app.command(name="finetune", cls=FinetuneHelpCommand)(finetune)
app.command(name="check", cls=HelpCommand)(check)
for _command in (evaluate, explain, report):
    app.command(cls=HelpCommand)(_command)
app.command(name="export", cls=HelpCommand, epilog=EXAMPLES["export"])(export_cmd)
for _name in ("predict", "validate", "benchmark"):
    app.command(name=_name, cls=HelpCommand, epilog=EXAMPLES.get(_name))(getattr(serving_cli, _name))
app.command(name="demo", cls=HelpCommand)(demo)
distill_cli.register(app)  # distill and tune take finetune's flags: their modules build them from its signature
tune_cli.register(app)


def terminate_as_interrupt() -> None:
    """SIGTERM acts like Ctrl-C: ``finally`` blocks run, so temp files and folders are removed and
    checkpoints stay consistent (the default SIGTERM kills the process where it stands)."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    """Console-script entry point."""
    terminate_as_interrupt()
    app(prog_name="cvkeras")


if __name__ == "__main__":
    main()
    sys.exit(0)

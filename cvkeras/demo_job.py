"""``cvkeras demo``: the main job end to end on the built-in data, as the four commands a user runs.

1. ``cvkeras finetune demo:shapes`` -- a small MobileNetV2 trained from scratch (no download needed);
2. ``cvkeras export RUN --int8`` -- ONNX and TFLite, float32 and int8, each verified against Keras;
3. ``cvkeras validate RUN/export/model_int8.onnx --data VAL --reference RUN/export`` -- device-side parity;
4. ``cvkeras predict RUN/export/model_int8.onnx IMAGES`` -- the TensorFlow-free predictor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

#: Settings that make a from-scratch model learn the shapes within a couple of minutes on a CPU.
DEMO_FLAGS = ["--model", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "64",
              "--epochs", "0", "--fine-tune-epochs", "20", "--unfreeze", "all", "--fine-tune-lr", "0.003",
              "--batch-size", "32", "--augment", "light", "--label-smoothing", "0", "--patience", "0"]


def _run(app: Any, console: Console, args: list[str]) -> int:
    """Run one ``cvkeras`` command line in this process, exactly as the console script would."""
    import typer

    console.rule("$ cvkeras " + " ".join(args))
    try:
        rv = typer.main.get_command(app).main(args, prog_name="cvkeras", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:  # usage errors of the command line parser carry an exit code
        if hasattr(exc, "exit_code") and hasattr(exc, "show"):
            exc.show()
            return int(exc.exit_code)
        raise
    return int(rv or 0)


def run_demo(output: str, force: bool, console: Console, app: Any) -> int:
    """Run the four steps with the Typer ``app`` (``cvkeras.cli.app``); stop at the first that fails and
    return its exit code."""
    from cvkeras.demo import ensure_demo
    from serving.images import list_images

    val = ensure_demo("demo:shapes") / "val"
    run = Path(output)
    export_dir = run / "export"
    images = [str(p) for p in list_images(val)[::40]]
    steps = [
        ["finetune", "demo:shapes", *DEMO_FLAGS, "--output", str(run), *(["--force"] if force else [])],
        ["export", str(run), "--int8"],
        ["validate", str(export_dir / "model_int8.onnx"), "--data", str(val), "--reference", str(export_dir)],
        ["predict", str(export_dir / "model_int8.onnx"), *images, "--top-k", "2"],
    ]
    for args in steps:
        code = _run(app, console, args)
        if code:
            console.print(f"[red]step `cvkeras {args[0]}` failed with exit code {code}[/]")
            return code
    console.rule("done")
    console.print(f"run directory: {run}   exported models: {export_dir}")
    return 0

"""``cvkeras demo``: the main job end to end on the built-in data, as the commands a user runs.

Default (real photos, real backbone, offline: both ship in the package, see :mod:`cvkeras.data.demo`):

1. ``cvkeras finetune FLOWERS --weights WEIGHTS ...`` -- MobileNetV2 alpha 0.35 from its ImageNet weights,
   the head trained on the frozen backbone;
2. ``cvkeras export RUN --int8 --format onnx`` -- ONNX float32 and int8, each verified against Keras (and
   the run's ``report.html`` refreshed, with Grad-CAM of the worst validation mistakes);
3. ``cvkeras validate RUN/export/model_int8.onnx --run RUN`` -- device-side check on the run's own val split;
4. ``cvkeras predict RUN/export/model_int8.onnx PHOTOS`` -- the TensorFlow-free predictor.

``--shapes``: the same four steps on the generated ``demo:shapes`` set, trained from scratch.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from rich.console import Console

#: The flower recipe, chosen by measurement (docs/benchmarks.md, "Demo"): 160 px input, 10 epochs of the head
#: on the frozen ImageNet backbone. Unfreezing the whole backbone for 6 more epochs reached the same 83.00 % on
#: the validation photos, took twice as long, and left int8 further from the float model (full-int8 agreement
#: 96.9-98.7 % against 97.3-98.3 %). 40 % of the 750 photos validate: the 99 % agreement gate allows 3 flips.
FLOWER_FLAGS = ["--model", "mobilenet_v2", "--alpha", "0.35", "--image-size", "160", "--val-split", "0.4",
                "--epochs", "10", "--fine-tune-epochs", "0"]

#: The flower demo exports what its device steps run, ONNX (float32 and int8), without the int8 repair. With
#: TFLite too, a whole demo took 16 minutes here (2026-12-05, loaded machine); the repair's search on this model
#: tried seven float-layer mixes for ~100 s and none was predicted to pass (every weighted layer float: 99.05 %,
#: a 69 % chance), because its int8 noise sits in the activations all through the network (docs/benchmarks.md,
#: "Demo"). `cvkeras export RUN --int8` makes every format and repairs.
DEMO_EXPORT = ["--format", "onnx", "--no-repair"]

#: Settings that make a from-scratch model learn the shapes within a couple of minutes on a CPU.
SHAPES_FLAGS = ["--model", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "64",
                "--epochs", "0", "--fine-tune-epochs", "20", "--unfreeze", "all", "--fine-tune-lr", "0.003",
                "--batch-size", "32", "--augment", "light", "--label-smoothing", "0", "--patience", "0"]


def _run(app: Any, console: Console, args: list[str]) -> int:
    """Run one ``cvkeras`` command line in this process, exactly as the console script would."""
    import typer

    console.rule("$ cvkeras " + shlex.join(args))
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


def demo_steps(run: Path, force: bool, shapes: bool, model: str = "model_int8.onnx") -> list[list[str]]:
    """The command lines the demo runs, in order (each one a user could type); the device steps run
    ``RUN/export/MODEL`` (the int8 file unless its gate refused it, see :func:`run_demo`)."""
    from cvkeras.serving.images import list_images

    export_dir = run / "export"
    path = str(export_dir / model)
    again = ["--force"] if force else []
    if shapes:
        from cvkeras.data.demo import ensure_demo

        val = ensure_demo("demo:shapes") / "val"
        images = [str(p) for p in list_images(val)[::40]]
        return [["finetune", "demo:shapes", *SHAPES_FLAGS, "--output", str(run), *again],
                ["export", str(run), "--int8"],
                ["validate", path, "--data", str(val), "--reference", str(export_dir)],
                ["predict", path, *images, "--top-k", "2"]]
    from cvkeras.data.demo import FLOWERS, demo_weights

    photos = [str(next(iter(list_images(folder)))) for folder in sorted(p for p in FLOWERS.iterdir() if p.is_dir())]
    return [["finetune", str(FLOWERS), "--weights", str(demo_weights()), *FLOWER_FLAGS, "--output", str(run),
             *again],
            ["export", str(run), "--int8", *DEMO_EXPORT],
            ["validate", path, "--run", str(run)],
            ["predict", path, *photos, "--top-k", "2"]]


def refused_int8(run: Path) -> tuple[str, str] | None:
    """When export refused only int8 files (their gates missed, the float32 model passed): the verdict line the
    demo prints and the ONNX file its device steps then run (``model_int8.onnx`` if that one passed, else
    ``model.onnx``); None when anything else failed (then the demo stops)."""
    from cvkeras.analysis.report import EXPORT_REPORT
    from cvkeras.run.rundir import RunDir
    from cvkeras.serving.schema import upgrade_export_report

    doc = RunDir(run).json_doc(str(EXPORT_REPORT))
    arts = upgrade_export_report(doc).get("artifacts", []) if isinstance(doc, dict) else []
    status = {a.get("name"): a.get("status") for a in arts}
    failed = [a for a in arts if a.get("status") != "passed"]
    if status.get("model.onnx") != "passed" or not failed or any(
            a.get("status") != "failed" or "int8" not in str(a.get("name")) or a.get("agreement") is None
            for a in failed):  # an int8 file that could not even be run is an error, not a verdict
        return None
    names = ", ".join(str(a["name"]) for a in failed)
    use = "model_int8.onnx" if status.get("model_int8.onnx") == "passed" else "model.onnx"
    return (f"verdict: export refused {names} (its gate, above: kept for inspection, never for deployment); "
            f"{use} passed, so the demo goes on with it. With your own photos int8 passes when the classes are "
            "far apart for the model; else ship model.onnx, or try --fp16 or a larger backbone."), use


def run_demo(output: str, force: bool, console: Console, app: Any, shapes: bool = False) -> int:
    """Run the steps with the Typer ``app`` (``cvkeras.cli.app``); stop at the first that fails and return its
    exit code, except an export whose int8 gate refused the int8 file alone: the demo says so and runs the
    device steps on the float32 file that passed. The last lines say what to run on your own photos."""
    run = Path(output)
    steps = demo_steps(run, force, shapes)
    for i, args in enumerate(steps):
        code = _run(app, console, args)
        verdict = refused_int8(run) if code == 1 and args[0] == "export" else None
        if verdict:
            console.print(f"[yellow]{verdict[0]}[/]", highlight=False)
            steps[i + 1:] = demo_steps(run, force, shapes, model=verdict[1])[i + 1:]
        elif code:
            console.print(f"[red]step `cvkeras {args[0]}` failed with exit code {code}[/]")
            return code
    console.rule("done")
    console.print(f"Report: {run / 'report.html'}   models: {run / 'export'}", highlight=False)
    console.print("Your own photos (one folder per class):\n"
                  "  cvkeras finetune PHOTOS/ --output runs/mine      # add --weights FILE.h5 offline\n"
                  "  cvkeras export runs/mine --int8\n"
                  "  cvkeras predict runs/mine/export/model_int8.onnx photo.jpg", highlight=False)
    return 0

"""``cvkeras finetune``: the Typer command (registered by :mod:`cvkeras.cli`), its error handling and the
end-of-run summary it prints.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from cvkeras.serving.console import print_json, stdout_console
from cvkeras.serving.errors import CvkerasError, fail, first_line
from cvkeras.serving.schema import schema_id  # standard library only: cheap for --help
from cvkeras.train.quiet import quiet_tensorflow

if TYPE_CHECKING:
    from cvkeras.run.config import FinetuneConfig

console = stdout_console()
err = Console(stderr=True)


def finetune(
    data: str = typer.Argument(None, help="Class folder, CSV manifest (path,label[,split]), tfds:NAME[:cfg], "
                                          "tfrecord:PATTERN (shards; docs/usage.md) or demo:shapes. Required "
                                          "unless --config or --resume gives it."),
    model: str = typer.Option(None, "--model", "-m", help="Registry name (see `cvkeras models`)."),
    alpha: float = typer.Option(None, help="Width multiplier, for families that have one."),
    image_size: int = typer.Option(None, "--image-size", help="Square input size in px "
                                    "(default: the model's own, see `cvkeras models`)."),
    weights: str = typer.Option(None, help="imagenet (Keras download), none, or a no-top .h5 path."),
    output: str = typer.Option(None, "--output", "-o", help="Run directory (default: runs/MODEL-N, the next free N)."),
    config: Path = typer.Option(None, "--config", help="Read settings from a config.yaml; flags override it."),
    epochs: int = typer.Option(None, help="Head-training epochs, backbone frozen (0 skips); auto: at least 200 "
                                          "steps, 8 passes on a large set."),
    fine_tune_epochs: int = typer.Option(None, help="Fine-tuning epochs, top of backbone unfrozen (0 skips); "
                                                    "auto: as --epochs."),
    epoch_steps: int = typer.Option(None, help="Steps per epoch (the data repeats); auto: one pass, at least 20 "
                                               "steps when both epoch counts are auto."),
    unfreeze: str = typer.Option(None, help="Fraction of backbone layers to unfreeze in stage 2, or 'all'."),
    batch_size: int = typer.Option(None, help="Global batch size (split across replicas)."),
    learning_rate: float = typer.Option(None, "--lr", help="Stage-1 peak learning rate; auto: 5e-3 at batch 32, "
                                                            "times sqrt(batch/32) (SGD: 5e-2, linear)."),
    fine_tune_learning_rate: float = typer.Option(None, "--fine-tune-lr", help="Stage-2 peak learning rate; auto: "
                                                  "1e-4 at batch 32, scaled as --lr (SGD: 1e-3)."),
    optimizer: str = typer.Option(None, help="Optimizer; sgd uses momentum 0.9."),
    weight_decay: float = typer.Option(None, help="Decoupled weight decay (per step w -= lr*wd*w; not biases or "
                                                  "norms), AdamW and SGD."),
    warmup_epochs: float = typer.Option(None, help="Linear warm-up before cosine decay, in epochs."),
    label_smoothing: float = typer.Option(None, help="Label smoothing."),
    dropout: float = typer.Option(None, help="Dropout before the head."),
    class_weights: str = typer.Option(None, help="Class weighting; auto: inverse class frequency."),
    patience: int = typer.Option(None, help="Early stopping patience on val accuracy (0: off)."),
    augment: str = typer.Option(None, help="Augmentation preset; auto: medium below 100 training images per "
                                           "class, else light."),
    randaugment: bool = typer.Option(None, "--randaugment/--no-randaugment", help="Add RandAugment."),
    mixup: float = typer.Option(None, help="MixUp Beta alpha (0: off)."),
    cutmix: float = typer.Option(None, help="CutMix Beta alpha (0: off)."),
    val_split: float = typer.Option(None, help="Validation fraction when the data has no val split."),
    test_split: float = typer.Option(None, help="Test fraction when the data has no test split (0: none): "
                                                "evaluated once at the end; the validation figures are the ones "
                                                "the best epoch was chosen on."),
    dedupe: bool = typer.Option(None, "--dedupe/--no-dedupe", help="Drop validation/test images that copy a "
                                "training image (exact or near copies are always reported)."),
    seed: int = typer.Option(None, help="Seed for the split, shuffling, augmentation and init."),
    cache: str = typer.Option(None, help="Where decoded images are kept: memory, none, a file path prefix, or "
                                         "auto (memory when they fit a quarter of the available RAM, else a file "
                                         "cache in the run, else none)."),
    tfds_data_dir: str = typer.Option(None, help="TFDS data_dir (a prepared or offline copy)."),
    precision: str = typer.Option(None, help="Numeric precision; auto: mixed_float16 on a GPU of compute "
                                                 "capability 7.0+, else float32."),
    strategy: str = typer.Option(None, help="Distribution strategy; auto: mirrored on more than one "
                                                "GPU; multi-worker reads TF_CONFIG."),
    jit: bool = typer.Option(None, "--jit/--no-jit", help="Compile with XLA."),
    steps_per_epoch: int = typer.Option(None, help="Cap on steps per epoch (quick runs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --output."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors, warnings and the final line."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary (docs/json.md) instead of the "
                                                        "progress and summary lines."),
) -> None:
    """Fine-tune a classifier on labelled images and write a run directory.

    Stage 1 trains a new head on the frozen backbone, stage 2 fine-tunes the top of the backbone. The run
    directory gets best.keras, metrics, plots, report.html and the exact split and config used.

    Examples:
      cvkeras finetune data/flowers           # one folder per class
      cvkeras finetune data/flowers -m efficientnet_b0 --epochs 5
      cvkeras finetune demo:shapes --alpha 0.35 --weights none -o runs/try
    """
    flags = dict(locals())  # first statement: exactly the command's parameters
    quiet_tensorflow()
    try:
        cfg, _ = load_config(flags, resume)
    except CvkerasError as exc:
        raise fail(exc) from None
    result = run_finetune(cfg, output, force, resume, quiet or json_out, json_out)
    if json_out:
        print_json({"schema": schema_id("finetune"), "run": str(result.run_dir), "epochs_run": result.epochs_run,
                    "best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
                    "precision": result.precision, "replicas": result.replicas, "skipped": result.skipped,
                    "metrics": result.metrics})


def load_config(flags: dict[str, Any], resume: bool = False) -> tuple[FinetuneConfig, dict[str, Any]]:
    """The one merge of a command's settings (finetune, distill, tune): ``--config`` -- or on ``--resume`` the
    run's own config.yaml -- under the flags given (:meth:`FinetuneConfig.merged`), and the file's raw document.

    Raises RunDirError naming the file when it cannot be read."""
    from cvkeras.run.config import FinetuneConfig
    from cvkeras.run.rundir import CONFIG, read_config
    from cvkeras.serving.errors import RunDirError

    config, output = flags.get("config"), flags.get("output")
    source = config or (Path(output) / CONFIG if resume and output else None)
    base, doc = FinetuneConfig(), {}
    if source:
        try:
            doc = read_config(source)
            base = FinetuneConfig.from_dict(doc)
        except CvkerasError as exc:
            raise RunDirError(f"{source}: {exc}") from None
    return base.merged(FinetuneConfig.overrides(flags)), doc


def finetune_parameters(drop: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """finetune's Typer parameters with their annotations resolved (this module uses postponed annotations):
    distill and tune build their signatures from them, so the three commands never drift apart."""
    hints = typing.get_type_hints(finetune)
    return [p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(finetune).parameters.values() if p.name not in drop]


def run_finetune(cfg, output: str | None, force: bool, resume: bool, quiet: bool = False, no_final: bool = False,
                 hook=None):
    """Call the trainer, turning expected failures into one-line errors; print the summary."""
    from cvkeras.run.files import os_error_line
    from cvkeras.train.trainer import finetune

    try:
        result = finetune(cfg, output=output, force=force, resume=resume, verbose=0 if quiet else None,
                          log=(lambda line: None) if quiet else None, hook=hook)
    except CvkerasError as exc:  # exit 1 for a diverged loss, 2 for the rest
        raise fail(exc) from None
    except OSError as exc:
        raise fail(os_error_line(exc)) from None
    except KeyboardInterrupt:
        where = output or "runs/<model>-N (the run printed above)"
        raise fail(f"interrupted; finished epochs are saved -- continue with "
                   f"`cvkeras finetune --resume --output {where}`", 130) from None
    except Exception as exc:  # TensorFlow's own errors (e.g. a file its decoders reject) as one line
        if type(exc).__module__.startswith("tensorflow"):
            raise fail(f"TensorFlow failed: {first_line(exc)}") from None
        raise
    if result.skipped:
        err.print(f"skipped {result.skipped} unreadable file(s) or copies dropped by --dedupe; see "
                  f"{result.run_dir / 'skipped.txt'}",
                  highlight=False, soft_wrap=True)
    if not quiet:
        for line in summary_lines(result):
            console.print(line, highlight=False, soft_wrap=True, markup=False)
    if not no_final:  # --json: stdout holds the JSON document only
        console.print(final_line(result), highlight=False, soft_wrap=True, markup=False)
    return result


def summary_lines(result) -> list[str]:
    """The end-of-run summary: best epoch, the validation figures, where plots and report went.

    Plain ``name  value`` lines rather than a table, so nothing is cut at any terminal width."""
    from cvkeras.analysis.calibration import summary_line
    from cvkeras.analysis.evaluate import summary_rows
    from cvkeras.run.rundir import CONFUSION, CURVES

    run = result.run_dir
    lines = [f"finished   {result.epochs_run} epochs, best epoch {result.best_epoch}, {result.precision}"
             + (f" on {result.replicas} replicas" if result.replicas > 1 else "")]
    if result.metrics:
        lines += [f"val {k:<14} {v}" for k, v in summary_rows(result.metrics)]
        lines.append("val figures are selection figures: the best epoch was chosen on these images"
                     + ("" if result.metrics.get("test") else " (--test-split sets aside images for an unbiased one)"))
        test = result.metrics.get("test")
        if test:
            lines.append(f"test accuracy      {test['accuracy']:.4f} on {test['n']} images (evaluated once)")
        calibration = summary_line(result.metrics)
        if calibration:
            lines.append(calibration)
    plots = [name for name in (CURVES, CONFUSION, "report.html") if (run / name).is_file()]
    if plots:
        lines.append(f"saved      {', '.join(plots)} in {run}")
    return lines


def final_line(result) -> str:
    """The one line even --quiet prints: where the run is, its accuracy and the next command."""
    run = result.run_dir
    acc = result.metrics.get("accuracy") if result.metrics else None
    test = (result.metrics or {}).get("test")
    score = (f" (val accuracy {100 * acc:.2f} % at epoch {result.best_epoch}, the selection figure"
             + (f"; test accuracy {100 * test['accuracy']:.2f} % on {test['n']} images" if test else "") + ")"
             if acc is not None else "")
    return f"Results saved to {run}{score}. Next: cvkeras export {run} --int8"

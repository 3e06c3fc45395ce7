"""The trainer: two-stage fine-tuning with checkpoints, resume, mixed precision and tf.distribute.

Stage 1 trains the head on a frozen backbone (BatchNorm in inference mode); stage 2 unfreezes the top
``unfreeze`` fraction of the backbone (BatchNorm stays frozen) at a lower learning rate. Every epoch
writes ``checkpoints/last.keras`` (with optimizer state) and ``checkpoints/state.json`` atomically, so an
interrupted run resumes where it stopped; the best model by validation accuracy is kept as a float32
``best.keras``.

This module is the job from start to end; its parts live beside it: option checks in
:mod:`cvkeras.run.config`, the run directory in :mod:`cvkeras.run.claim` / :mod:`cvkeras.run.rundir`, precision
and strategies in :mod:`cvkeras.train.distribute`, the optimizer in :mod:`cvkeras.train.optim`, the per-epoch
bookkeeping in :mod:`cvkeras.train.callbacks`, the pipelines in :mod:`cvkeras.train.datasets` and the two
stages in :mod:`cvkeras.train.stages`.

Example:
    >>> result = finetune(FinetuneConfig(data="demo:shapes", model="mobilenet_v2", alpha=0.35,
    ...                                  weights="none"), output="runs/demo")
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvkeras.run import files as runfiles
from cvkeras.run import rundir
from cvkeras.run.claim import RunExistsError, check_output_vs_data, prepare_run
from cvkeras.run.config import (
    FinetuneConfig,
    validate_config,
)
from cvkeras.run.rundir import RunDir
from cvkeras.serving.errors import OptionError, RunDirError, first_line, printable, quote
from cvkeras.train.callbacks import make_checkpointer as _make_checkpointer
from cvkeras.train.datasets import finish_data, make_datasets
from cvkeras.train.distribute import (
    is_chief,
    make_strategy,
    resolve_precision,
    split_cpu,
    worker_index,
)
from cvkeras.train.recipe import resolve
from cvkeras.train.stages import run_stages


def warn(message: str) -> None:
    """One ``warning:`` line on stderr (data oddities the run continues through)."""
    print(f"warning: {printable(message)}", file=sys.stderr, flush=True)


@dataclass
class FinetuneResult:
    run_dir: Path
    metrics: dict[str, Any]
    best_val_accuracy: float
    epochs_run: int
    skipped: int
    precision: str
    replicas: int
    best_epoch: int = 0


def header_lines(cfg: FinetuneConfig, run: Path, classes: list[str], n_train: int, n_val: int, n_test: int,
                 params: int, precision: str, replicas: int) -> list[str]:
    """The lines printed before training: data, model, input and where the run goes."""
    shown = ", ".join(classes[:6]) + (f", ... ({len(classes) - 6} more)" if len(classes) > 6 else "")
    images = f"{n_train} train, {n_val} val" + (f", {n_test} test" if n_test else "")
    model = cfg.model + (f" (alpha {cfg.alpha:g})" if cfg.alpha is not None else "")
    size = cfg.image_size or []
    return [f"data       {cfg.data}: {images} images",
            f"classes    {len(classes)}: {shown}",
            f"model      {model}, {params / 1e6:.2f} M parameters, weights {cfg.weights}",
            f"input      {'x'.join(str(v) for v in size)} px, batch {cfg.batch_size}, {precision}"
            + (f" on {replicas} replicas" if replicas > 1 else ""),
            f"output     {run}"]


def finetune(cfg: FinetuneConfig, output: str | None = None, force: bool = False, resume: bool = False,
             verbose: int | None = None, callbacks: list | None = None,
             log: Callable[[str], None] | None = None, hook: Any = None) -> FinetuneResult:
    """Run (or resume) a fine-tuning job end to end and write the run directory.

    ``log`` receives the story lines (header, stage labels); default: print to stdout. ``hook`` (e.g.
    :class:`cvkeras.search.distill.Distillation`) has ``check(classes)`` (before the run directory is touched),
    ``record(config_doc)`` and ``attach(model)`` (after the model is built or loaded).
    """
    log = log or (lambda line: print(line, flush=True))
    if os.environ.get("CVKERAS_CPU_DEVICES"):
        split_cpu(int(os.environ["CVKERAS_CPU_DEVICES"]))
    import warnings

    import keras

    # Keras warns that fit()'s shuffle flag is ignored for a tf.data input; ours is shuffled in the pipeline.
    warnings.filterwarnings("ignore", message=".*shuffle=True. was passed", category=UserWarning)
    # Keras says "ran out of data" when a dataset of unknown length (files that fail to decode are dropped:
    # cvkeras.data.decode_log) first ends; validation then learns its length, and training data repeats
    warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        with contextlib.ExitStack() as stack:  # holds the run directory's lock until training is done
            return _finetune(cfg, output, force, resume, verbose, callbacks, stack, log, hook)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _finetune(cfg: FinetuneConfig, output: str | None, force: bool, resume: bool, verbose: int | None,
              callbacks: list | None, stack: contextlib.ExitStack, log: Callable[[str], None],
              hook: Any = None) -> FinetuneResult:
    import keras

    from cvkeras.data.duplicates import finetune_leaks
    from cvkeras.data.sources import load_source
    from cvkeras.models.build import build_classifier, float32_copy

    if not cfg.data and not resume:
        raise OptionError("no data given; pass a class folder, a .csv manifest, tfds:NAME or demo:shapes")
    spec = None
    if cfg.data or not resume:  # the model is resolved once: registry row, width, input size
        cfg, spec = validate_config(cfg)
    strategy = make_strategy(cfg.strategy)  # first: multi-worker needs it before other TF ops
    write = True  # every worker checkpoints (collectives need all of them); only the chief writes the run
    if not is_chief():  # a non-chief worker writes its own copy beside the run, never into it
        output = str(Path(output or "runs/worker").with_name(f".{Path(output or 'worker').name}-worker"
                                                               f"{worker_index()}"))
        force = True
    if not resume:  # the data is scanned (and refused) before the run directory is touched
        if output:
            check_output_vs_data(Path(output), cfg.data)
        split = load_source(cfg.data, cfg.val_split, cfg.seed, cfg.tfds_data_dir, cfg.test_split)
        leaks = finetune_leaks(split, cfg.dedupe)  # copies across splits: warned, --dedupe drops them
        if hook:
            hook.check(split.classes)
    before = None if output is None or not Path(output).is_dir() else any(Path(output).iterdir())  # None: new
    run, cfg = prepare_run(cfg, output, force, resume, stack)
    if spec is None:  # --resume as recorded: the run's own settings
        cfg, spec = cfg.resolved()
    if not resume:  # runs before the lock is released: a failed set-up leaves no stub that blocks the retry
        stack.push(lambda exc_type, exc, tb: _undo_setup(run, before) if exc_type else None)
    rd = RunDir(run)
    keras.utils.set_random_seed(cfg.seed)
    precision = resolve_precision(cfg.precision)
    keras.mixed_precision.set_global_policy(precision)
    if resume:
        split = _recorded_split(rd, cfg)
    for message in split.warnings:
        warn(message)
    classes = split.classes
    num_classes = len(classes)
    pretrained = str(cfg.weights).lower() not in ("none", "random", "")
    if not pretrained and str(cfg.unfreeze) != "all":
        # a random backbone left frozen (with BatchNorm statistics at mean 0 / variance 1) learns nothing:
        # from scratch the whole network trains in every stage, and config.yaml says so
        log(f"--weights {cfg.weights}: training the whole network in every stage (--unfreeze all)")
        cfg.unfreeze = "all"
    if split.source == "tfds":
        from cvkeras.data.tfds_source import tfds_dataset

        n_train = int(tfds_dataset(split.tfds, "train").cardinality().numpy())
    else:
        n_train = len(split.train)
    recipe = resolve(cfg, n_train, num_classes)
    cfg = recipe.config  # no "auto" left: config.yaml records what ran, so a replay or --resume repeats it
    if write and not resume:
        _write_run_files(rd, cfg, split, precision, strategy.num_replicas_in_sync, pretrained, hook,
                         recipe.record())
        if leaks:
            leaks.write(rd.path)
    data = make_datasets(cfg, split, run, num_classes)

    state: dict[str, Any] = rd.state() if resume else {
        "stage": 1, "epoch": 0, "global_epoch": 0, "best_val_accuracy": -1.0, "best_epoch": 0, "wait": 0,
        "history": [], "finished": False}
    if state is None:
        raise RunExistsError(f"{run}: no checkpoint to resume from; start it again with --force")
    with strategy.scope():
        if resume:
            model = _load_checkpoint(rd)
        else:
            model = build_classifier(spec, num_classes, cfg.image_size, cfg.alpha, cfg.weights, cfg.dropout)
        if hook:
            hook.attach(model)
    export_model = float32_copy(model)  # the trained network's own config, in float32
    checkpointer = _make_checkpointer(run, export_model, state, cfg.patience, write)
    verbose = verbose if verbose is not None else (1 if sys.stdout.isatty() else 2)
    for line in header_lines(cfg, run, classes, data.n_train, data.n_val, len(split.test or ()),
                             model.count_params(), precision, strategy.num_replicas_in_sync):
        log(line)
    log(f"cache      {data.cache}")
    log(recipe.summary())
    run_stages(model, strategy, cfg, data, state, checkpointer, [checkpointer, *(callbacks or [])], rd,
                resume, pretrained, num_classes, verbose, log)
    finish_data(data, split, rd, cfg.seed, write, warn)
    state["finished"] = True
    if write:
        rd.write_state(state)
    metrics = _final_metrics(rd, spec.name, bool(split.test)) if write else {}
    return FinetuneResult(run, metrics, state["best_val_accuracy"], state["global_epoch"], len(split.skipped),
                          precision, strategy.num_replicas_in_sync, state["best_epoch"])


def _undo_setup(run: Path, had_files: bool | None) -> None:
    """After a failure before any epoch ended (a weights file Keras cannot load, Ctrl-C while building):
    remove the files this run wrote (its manifest only), and its marker and the folder when the folder was
    empty (``had_files`` False) or new (None), so the retry the error suggests does not meet "run directory
    exists". A run with a finished epoch is kept."""
    if (run / rundir.HISTORY).exists():
        return
    try:
        runfiles.clear_run(run)  # manifest files only; refuses (removing nothing) if anyone else added a file
    except (RunDirError, OSError):
        return
    if not had_files:
        for name in (runfiles.MARKER, runfiles.LOCK):
            (run / name).unlink(missing_ok=True)
    if had_files is None:
        with contextlib.suppress(OSError):
            run.rmdir()


def _load_checkpoint(rd: RunDir):
    """``checkpoints/last.keras`` with its optimizer state and precision policy (safe mode)."""
    import keras

    try:
        return keras.saving.load_model(rd.last, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file, whatever Keras raises for it
        raise RunDirError(f"{rd.last}: cannot load the checkpoint ({first_line(exc, 200)}); start the "
                                 "run again with --force") from None


def _recorded_split(rd: RunDir, cfg: FinetuneConfig):
    """--resume: exactly the recorded split; files added since are reported, never mixed in."""
    from cvkeras.data.sources import recorded_split

    recorded = rd.config().data
    if cfg.data and recorded and cfg.data != recorded:
        raise RunExistsError(f"{rd.path}: was trained on {recorded}; --resume continues on its recorded "
                             f"split, so drop the data argument {quote(cfg.data)} or start a new run")
    return recorded_split(rd.path)


def _write_run_files(rd: RunDir, cfg: FinetuneConfig, split, precision: str, replicas: int,
                     pretrained: bool, hook: Any = None, recipe: dict[str, Any] | None = None) -> None:
    """config.yaml (with the run's facts; ``hook.record`` adds its own), labels.txt, split.json, skipped.txt."""
    doc = cfg.to_dict()
    doc["run"] = {"precision": precision, "replicas": replicas, "classes": len(split.classes),
                  "cvkeras": __import__("cvkeras").__version__,
                  "trains": ("head, then the top --unfreeze of the backbone (BatchNorm frozen)" if pretrained
                             else "the whole network in every stage, BatchNorm included (from scratch)")}
    if recipe is not None:
        doc["run"]["recipe"] = recipe  # what the auto settings resolved to, and from what
    if hook:
        hook.record(doc)
    rd.write_config(doc)
    rd.write_labels(split.classes)
    rd.write_split(split.to_json(cfg.seed))
    if split.skipped:
        runfiles.atomic_write(rd / rundir.SKIPPED, runfiles.skipped_lines(split.skipped))


def _final_metrics(rd: RunDir, model_name: str, has_test: bool) -> dict[str, Any]:
    """Evaluate best.keras on the val split (metrics.json, plots), the test split too, refresh report.html."""
    from cvkeras.analysis.evaluate import evaluate_run
    from cvkeras.analysis.plots import plot_curves, report_title
    from cvkeras.analysis.report import refresh

    metrics = evaluate_run(rd.path, split="val")
    plot_curves(rd / rundir.HISTORY, rd / rundir.CURVES,
                title=f"{model_name} - best epoch on the " + report_title(metrics, "val split"))
    if has_test:
        test = evaluate_run(rd.path, split="test", write=False)
        metrics["test"] = {k: test[k] for k in ("n", "accuracy", "cross_entropy", "macro_f1", "measured_on",
                                                "calibration") if k in test}
        rd.write_metrics(metrics)
    refresh(rd.path, warn=lambda line: print(line, file=sys.stderr))
    return metrics

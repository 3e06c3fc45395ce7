"""The trainer: two-stage fine-tuning with checkpoints, resume, mixed precision and tf.distribute.

Stage 1 trains the head on a frozen backbone (BatchNorm in inference mode); stage 2 unfreezes the top
``unfreeze`` fraction of the backbone (BatchNorm stays frozen) at a lower learning rate. Every epoch
writes ``checkpoints/last.keras`` (with optimizer state) and ``checkpoints/state.json`` atomically, so an
interrupted run resumes where it stopped; the best model by validation accuracy is kept as a float32
``best.keras``.

Example:
    >>> result = finetune(FinetuneConfig(data="demo:shapes", model="mobilenet_v2", alpha=0.35,
    ...                                  weights="none"), output="runs/demo")
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras import rundir
from cvkeras.config import FinetuneConfig
from cvkeras.recipe import placeholder, resolve
from cvkeras.registry import get, resolve_alpha

STATE = "state.json"
LAST = "last.keras"
#: ``loss``/``val_loss`` are the training objective (label smoothing; ``loss`` also class-weighted), not
#: metrics.json's ``cross_entropy``; ``learning_rate_first_step`` is the rate of the epoch's first step.
HISTORY_FIELDS = ("epoch", "stage", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate_first_step")
#: Variables never decayed: biases, normalisation scale/offset (BatchNorm, LayerNorm) and layer scales.
NO_DECAY = r"(?:^|/)(?:bias|gamma|beta)(?:/replica_\d+)?(?::\d+)?$"
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "none", "mirrored", "multi-worker")
OPTIMIZERS = ("adamw", "sgd")
CLASS_WEIGHTS = ("auto", "none")


def check_choice(flag: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a ValueError naming the flag and the choices."""
    if value not in allowed:
        raise ValueError(f"unknown {flag} {value!r}; choose {', '.join(allowed[:-1])} or {allowed[-1]}")
    return value


class RunExistsError(FileExistsError):
    def __str__(self) -> str:
        return str(self.args[0])


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint and best.keras are kept."""


def warn(message: str) -> None:
    """One ``warning:`` line on stderr (data oddities the run continues through)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


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


def next_run_dir(model: str, base: str | os.PathLike = "runs") -> Path:
    """``runs/<model>-N`` with the first free N (never an existing run)."""
    base = Path(base)
    taken = {int(m.group(1)) for p in base.glob(f"{model}-*") if (m := re.fullmatch(rf"{model}-(\d+)", p.name))}
    n = 1
    while n in taken:
        n += 1
    return base / f"{model}-{n}"


def resolve_precision(precision: str) -> str:
    """``auto`` picks mixed_float16 on a GPU of compute capability >= 7.0, else float32."""
    if check_choice("--precision", precision, PRECISIONS) != "auto":
        return precision
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if cc and cc[0] >= 7:
            return "mixed_float16"
    return "float32"


def make_strategy(name: str):
    """tf.distribute strategy: auto (mirrored on >1 GPU), none, mirrored, multi-worker (TF_CONFIG)."""
    import tensorflow as tf

    check_choice("--strategy", name, STRATEGIES)
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if "TF_CONFIG" not in os.environ:  # multi-worker
        raise ValueError("--strategy multi-worker needs TF_CONFIG describing the cluster")
    return tf.distribute.MultiWorkerMirroredStrategy()


def split_cpu(n: int) -> None:
    """Expose the CPU as ``n`` logical devices (for mirrored training tests); call before TF runs."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def worker_index() -> int:
    return int(json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0))


def is_chief() -> bool:
    """Whether this process writes the run directory: the chief, or worker 0 when there is no chief."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = cluster.get("task", {})
    kind = task.get("type", "worker")
    if kind == "chief":
        return True
    return kind == "worker" and worker_index() == 0 and "chief" not in cluster.get("cluster", {})


def _schedule(lr: float, warmup_steps: int, total_steps: int):
    import keras

    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr * 0.1 if warmup_steps else lr,
        decay_steps=max(total_steps - warmup_steps, 1),
        alpha=0.01,
        warmup_target=lr if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def compile_model(model, cfg: FinetuneConfig, lr: float, steps_per_epoch: int, epochs: int, num_classes: int):
    """Compile with AdamW/SGD, warm-up + cosine decay, label smoothing, accuracy and top-5 (> 5 classes).

    Weight decay is decoupled for both optimizers: each step multiplies a decayed weight by
    ``1 - lr * weight_decay`` (the PyTorch AdamW convention, so the usual 0.05 means what it means
    there). Biases and normalisation parameters (``NO_DECAY``) are never decayed.
    """
    import keras

    schedule = _schedule(lr, int(round(cfg.warmup_epochs * steps_per_epoch)), steps_per_epoch * epochs)
    decay = float(cfg.weight_decay) or None
    if check_choice("--optimizer", cfg.optimizer, OPTIMIZERS) == "adamw":
        opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=decay or 0.0)
    else:
        opt = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True, weight_decay=decay)
    opt.exclude_from_weight_decay(var_names=[NO_DECAY])
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if num_classes > 5:  # with 5 classes or fewer top-5 accuracy is always 1
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top_5"))
    model.compile(
        optimizer=opt,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=metrics,
        jit_compile=bool(cfg.jit),
    )


def class_weights(counts: list[int], mode: str) -> dict[int, float] | None:
    """``auto``: inverse frequency (n / (C * count_c)); ``none``: no weighting."""
    if check_choice("--class-weights", mode, CLASS_WEIGHTS) == "none":
        return None
    total, c = sum(counts), len(counts)
    return {i: total / (c * n) if n else 0.0 for i, n in enumerate(counts)}


def with_sample_weights(ds, weights: dict[int, float], num_classes: int):
    """Add a per-image weight ``label · class_weights`` to a (images, soft labels) dataset.

    Keras' ``class_weight`` weights by the argmax of the label, so a MixUp/CutMix image would carry
    one class's weight whatever its mix; the dot product weights it by the mix (and equals the class
    weight for a one-hot label).
    """
    import tensorflow as tf

    cw = tf.constant([weights.get(i, 1.0) for i in range(num_classes)], tf.float32)
    return ds.map(lambda x, y: (x, y, tf.reduce_sum(tf.cast(y, tf.float32) * cw, axis=-1)),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def label_counts(ds, num_classes: int) -> list[int]:
    """Images per class of a (image, integer label) dataset, by one pass over its labels (TFDS sources)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for y in ds.map(lambda x, y: y).batch(4096).as_numpy_iterator():
        counts += np.bincount(np.asarray(y, dtype=np.int64).ravel(), minlength=num_classes)[:num_classes]
    return counts.tolist()


def fit_multi_worker(model, strategy, train_ds, val_ds, initial_epoch: int, epochs: int, steps: int,
                     cfg: FinetuneConfig, weights: dict[int, float] | None, num_classes: int, callbacks: list) -> None:
    """The training loop under MultiWorkerMirroredStrategy, written out with ``strategy.run``.

    Keras 3's ``model.fit`` fails under this strategy (keras-team/keras#20585: a PerReplica value reaches
    a tensor conversion), so this loop does what fit does: per-replica loss scaled by the *global* batch,
    gradients all-reduced by the optimizer, metrics summed across workers, validation, then the same
    callbacks (checkpointing, early stopping) with the same logs.
    """
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing, reduction=None)
    opt = model.optimizer
    # mixed_float16: compile wrapped the optimizer in a LossScaleOptimizer whose apply_gradients divides by
    # the loss scale, so the loss must be multiplied by it first (as fit's train_step does)
    scaled = isinstance(opt, keras.optimizers.LossScaleOptimizer)
    with strategy.scope():
        opt.build(model.trainable_variables)
    iterator = iter(strategy.experimental_distribute_dataset(train_ds.repeat()))

    @tf.function
    def train_step(it):
        def step(x, y, w=None):  # w: per-image class weights from with_sample_weights
            with tf.GradientTape() as tape:
                p = model(x, training=True)
                per_example = loss_fn(y, p) * (w if w is not None else 1.0)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=cfg.batch_size)
                scaled_loss = opt.scale_loss(loss) if scaled else loss
            grads = tape.gradient(scaled_loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            correct = tf.reduce_sum(tf.cast(tf.argmax(p, -1) == tf.argmax(y, -1), tf.float32))
            return loss, correct, tf.cast(tf.shape(y)[0], tf.float32)

        loss, correct, count = strategy.run(step, args=next(it))
        return (strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", correct, axis=None),
                strategy.reduce("SUM", count, axis=None))

    for cb in callbacks:
        cb.set_model(model)
    for epoch in range(initial_epoch, epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        total_loss = total_correct = total_count = 0.0
        for _ in range(steps):
            loss, correct, count = train_step(iterator)
            total_loss += float(loss)
            total_correct += float(correct)
            total_count += float(count)
        val_loss = val_correct = val_count = 0.0
        for x, y in val_ds:  # every worker sees the whole validation set, so all agree on early stopping
            p = model(x, training=False)
            val_loss += float(tf.reduce_sum(keras.losses.categorical_crossentropy(y, p)))
            val_correct += float(tf.reduce_sum(tf.cast(tf.argmax(p, -1) == tf.argmax(y, -1), tf.float32)))
            val_count += float(tf.shape(y)[0])
        logs = {"loss": total_loss / steps, "accuracy": total_correct / max(total_count, 1.0),
                "val_loss": val_loss / max(val_count, 1.0), "val_accuracy": val_correct / max(val_count, 1.0)}
        print(f"Epoch {epoch + 1}/{epochs} - " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
        model.stop_training = False
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break


def _make_checkpointer(run: Path, export_model, state: dict[str, Any], patience: int, write: bool):
    """A Keras callback that checkpoints each epoch, keeps the best float32 model and stops early."""
    import keras

    class Checkpointer(keras.callbacks.Callback):
        diverged: str | None = None
        first_step_lr = float("nan")

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.diverged = f"batch {batch + 1}"
                self.model.stop_training = True

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            # before the epoch's first step the optimizer's rate is that step's; at the end it is the next's
            self.first_step_lr = float(np.asarray(self.model.optimizer.learning_rate))

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            if self.diverged or not all(math.isfinite(float(logs[k])) for k in ("loss", "val_loss") if k in logs):
                self.diverged = self.diverged or "the end of the epoch"
                self.model.stop_training = True  # the NaN model is never checkpointed nor kept as best
                return
            stage = state["stage"]
            val_acc = float(logs.get("val_accuracy", float("nan")))
            improved = not math.isnan(val_acc) and val_acc > state["best_val_accuracy"]
            if improved:
                state["best_val_accuracy"] = val_acc
                state["best_epoch"] = state["global_epoch"] + 1
                state["wait"] = 0
            else:
                state["wait"] += 1
            state["epoch"] = epoch + 1
            state["global_epoch"] += 1
            row = {"epoch": state["global_epoch"], "stage": stage, "learning_rate_first_step": self.first_step_lr}
            row.update({k: float(logs[k]) for k in HISTORY_FIELDS if k in logs})
            state["history"].append(row)
            if write:
                if improved or not (run / rundir.BEST).exists():
                    export_model.set_weights(self.model.get_weights())
                    rundir.atomic_write(run / rundir.BEST, lambda tmp: export_model.save(tmp))
                buf = io.StringIO()
                w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
                w.writeheader()
                w.writerows(state["history"])
                rundir.atomic_write(run / rundir.HISTORY, buf.getvalue())
                ckpt = run / rundir.CHECKPOINTS
                rundir.atomic_write(ckpt / LAST, lambda tmp: self.model.save(tmp))
                rundir.write_json(ckpt / STATE, state)
            if patience and state["wait"] >= patience:
                self.model.stop_training = True

    return Checkpointer()


def _check_output_vs_data(run: Path, data: str) -> None:
    """Refuse an --output inside the data folder (it would be scanned as data) or holding the data."""
    if not data or data.startswith(("tfds:", "demo:")):
        return
    src = Path(data).expanduser().resolve()
    out = run.expanduser().resolve()
    if src.is_relative_to(out):
        raise RunExistsError(f"{run}: holds the data {data}; refusing to use it as a run directory, "
                             "pick another --output")
    if src.is_dir() and out.is_relative_to(src):
        raise RunExistsError(f"{run}: is inside the data folder {data} (it would be read as a class); "
                             "pick an --output outside it")


def _prepare_run(cfg: FinetuneConfig, output: str | None, force: bool, resume: bool,
                 stack: contextlib.ExitStack) -> tuple[Path, FinetuneConfig]:
    """The run directory to write, locked for this process; with --force only cvkeras' own files are removed."""
    if resume:
        if not output:
            raise RunExistsError("--resume needs --output RUN_DIR naming the run to continue")
        run = Path(output)
        if not (run / rundir.CHECKPOINTS / STATE).is_file():
            raise RunExistsError(f"{run}: no checkpoint to resume from (the run stopped before its first "
                                 "epoch ended); start it again with --force")
        stack.enter_context(rundir.run_lock(run, "finetune --resume"))
        # A config without data means "as saved"; the CLI passes the saved config with its flags applied.
        return run, cfg if cfg.data else FinetuneConfig.from_dict(rundir.read_config(run))
    run = Path(output) if output else next_run_dir(get(cfg.model).name)
    _check_output_vs_data(run, cfg.data)
    if run.exists() and not run.is_dir():
        raise RunExistsError(f"{run}: is a file; pass a folder to --output")
    if run.exists() and any(run.iterdir()):
        if not force:
            raise RunExistsError(f"{run}: run directory exists; pass --force to overwrite or --resume to continue")
        # --force replaces what cvkeras wrote into a run it marked: never a dataset, a home folder or a
        # folder where anyone else put a file
        try:
            foreign = rundir.foreign_entries(run)
        except rundir.RunDirError as exc:
            raise RunExistsError(f"{exc}; refusing to overwrite it, pick another --output") from None
        if foreign:
            raise RunExistsError(f"{run}: holds files cvkeras did not write (e.g. {foreign[0]}); refusing to "
                                 "overwrite it, move them or pick another --output")
        stack.enter_context(rundir.run_lock(run, "finetune --force"))
        rundir.clear_run(run)  # checks again under the lock; removes only manifest files
    else:
        run.mkdir(parents=True, exist_ok=True)
        stack.enter_context(rundir.run_lock(run, "finetune"))
        if any(p.name != rundir.LOCK for p in run.iterdir()):  # another run started here meanwhile
            raise RunExistsError(f"{run}: run directory exists; pass --force to overwrite or --resume to continue")
    rundir.mark_run(run)
    return run, cfg


# (option, smallest, largest, whether the smallest itself is allowed); None: unbounded on that side
NUMBER_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "learning_rate": (0.0, None, False), "fine_tune_learning_rate": (0.0, None, False),
    "weight_decay": (0.0, None, True), "warmup_epochs": (0.0, None, True), "label_smoothing": (0.0, 1.0, True),
    "dropout": (0.0, 1.0, True), "mixup": (0.0, None, True), "cutmix": (0.0, None, True),
    "val_split": (0.0, 1.0, False), "batch_size": (1, None, True), "epochs": (0, None, True),
    "fine_tune_epochs": (0, None, True), "patience": (0, None, True), "seed": (0, 2**32 - 1, True),
    "steps_per_epoch": (1, None, True), "epoch_steps": (1, None, True),
}


def _check_numbers(cfg: FinetuneConfig) -> None:
    """Every numeric option is a finite number in its range (NaN, inf and negative sizes are refused)."""
    whole = {"batch_size", "epochs", "fine_tune_epochs", "patience", "seed", "steps_per_epoch", "epoch_steps"}
    for name, (low, high, low_ok) in NUMBER_RANGES.items():
        value = getattr(cfg, name)
        if value is None and name == "steps_per_epoch":
            continue
        flag = "--" + {"learning_rate": "lr", "fine_tune_learning_rate": "fine-tune-lr"}.get(
            name, name.replace("_", "-"))
        if not rundir.is_finite_number(value) or (name in whole and not float(value).is_integer()):
            raise ValueError(f"{flag} must be a finite {'whole ' if name in whole else ''}number, not {value!r}")
        if low is not None and (value < low or (value == low and not low_ok)):
            raise ValueError(f"{flag} must be {'at least' if low_ok else 'above'} {low}, not {value}")
        if high is not None and (value > high or (value == high and high == 1.0)):
            raise ValueError(f"{flag} must be below {high}, not {value}")
    if cfg.alpha is not None and not rundir.is_finite_number(cfg.alpha):
        raise ValueError(f"--alpha must be a finite number, not {cfg.alpha!r}")


def validate_config(cfg: FinetuneConfig) -> None:
    """Check every option before any file is touched, so a typo never leaves a half-made run."""
    from cvkeras.augment import Augmenter
    from cvkeras.model import unfreeze_fraction

    spec = get(cfg.model)
    cfg = placeholder(cfg)  # "auto" settings are resolved from the data later (cvkeras.recipe)
    _check_numbers(cfg)
    resolve_alpha(spec, cfg.alpha)
    size = list(spec.input_size if cfg.image_size is None else cfg.image_size)
    if not size or len(size) > 2 or not all(type(v) is int for v in size):
        raise ValueError(f"--image-size must be one or two whole numbers of px, not {size}")
    if min(size) < spec.min_size:
        raise ValueError(f"--image-size {size} is below {spec.name}'s minimum of {spec.min_size} px")
    if max(size) > rundir.MAX_IMAGE_SIDE:
        raise ValueError(f"--image-size {size} is above the maximum of {rundir.MAX_IMAGE_SIDE} px")
    Augmenter(cfg.augment, cfg.randaugment, cfg.mixup, cfg.cutmix, cfg.seed)
    unfreeze_fraction(cfg.unfreeze)
    check_choice("--optimizer", cfg.optimizer, OPTIMIZERS)
    check_choice("--class-weights", cfg.class_weights, CLASS_WEIGHTS)
    check_choice("--precision", cfg.precision, PRECISIONS)
    check_choice("--strategy", cfg.strategy, STRATEGIES)
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, not {cfg.batch_size}")
    if cfg.epochs < 0 or cfg.fine_tune_epochs < 0 or cfg.epochs + cfg.fine_tune_epochs == 0:
        raise ValueError("--epochs and --fine-tune-epochs must be >= 0 and not both 0")
    if not 0.0 < cfg.val_split < 1.0:
        raise ValueError(f"--val-split must be between 0 and 1, not {cfg.val_split}")
    if cfg.learning_rate <= 0 or cfg.fine_tune_learning_rate <= 0:
        raise ValueError("learning rates must be positive")


def stage_label(stage: int, pretrained: bool, unfreeze: str) -> str:
    """What a stage trains, in words: the console labels each ``Epoch 1/N`` block with it."""
    if not pretrained:
        return "whole network from scratch" + (", fine-tune learning rate" if stage == 2 else "")
    if stage == 1:
        return "head on a frozen backbone"
    if str(unfreeze) == "all":
        return "fine-tuning the whole backbone"
    return f"fine-tuning top {100 * float(unfreeze):g} % of the backbone"


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
             log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Run (or resume) a fine-tuning job end to end and write the run directory.

    ``log`` receives the story lines (header, stage labels); default: print to stdout.
    """
    log = log or (lambda line: print(line, flush=True))
    if os.environ.get("CVKERAS_CPU_DEVICES"):
        split_cpu(int(os.environ["CVKERAS_CPU_DEVICES"]))
    import warnings

    import keras

    # Keras warns that fit()'s shuffle flag is ignored for a tf.data input; ours is shuffled in the pipeline.
    warnings.filterwarnings("ignore", message=".*shuffle=True. was passed", category=UserWarning)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        with contextlib.ExitStack() as stack:  # holds the run directory's lock until training is done
            return _finetune(cfg, output, force, resume, verbose, callbacks, stack, log)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _finetune(cfg: FinetuneConfig, output: str | None, force: bool, resume: bool, verbose: int | None,
              callbacks: list | None, stack: contextlib.ExitStack, log: Callable[[str], None]) -> FinetuneResult:
    import keras
    import tensorflow as tf

    from cvkeras.augment import Augmenter
    from cvkeras.data import load_source, recorded_split, tfds_dataset
    from cvkeras.model import build_classifier, float32_copy, load_model, pin_frozen_dropout, set_trainable
    from cvkeras.pipeline import make_dataset

    if not cfg.data and not resume:
        raise ValueError("no data given; pass a class folder, a .csv manifest, tfds:NAME or demo:shapes")
    if cfg.data or not resume:
        validate_config(cfg)
    strategy = make_strategy(cfg.strategy)  # first: multi-worker needs it before other TF ops
    write = True  # every worker checkpoints (collectives need all of them); only the chief writes the run
    if not is_chief():  # a non-chief worker writes its own copy beside the run, never into it
        output = str(Path(output or "runs/worker").with_name(f".{Path(output or 'worker').name}-worker"
                                                               f"{worker_index()}"))
        force = True
    if not resume:  # the data is scanned (and refused) before the run directory is touched
        if output:
            _check_output_vs_data(Path(output), cfg.data)
        split = load_source(cfg.data, cfg.val_split, cfg.seed, cfg.tfds_data_dir)
    run, cfg = _prepare_run(cfg, output, force, resume, stack)
    spec = get(cfg.model)
    cfg.model = spec.name
    cfg.alpha = resolve_alpha(spec, cfg.alpha)
    cfg.image_size = list(cfg.image_size or spec.input_size)
    if len(cfg.image_size) == 1:
        cfg.image_size = [cfg.image_size[0]] * 2
    keras.utils.set_random_seed(cfg.seed)
    precision = resolve_precision(cfg.precision)
    keras.mixed_precision.set_global_policy(precision)

    if resume:  # exactly the recorded split: files added since are reported, never mixed in
        recorded = rundir.read_run_config(run).get("data", {}).get("source")
        if cfg.data and recorded and cfg.data != recorded:
            raise RunExistsError(f"{run}: was trained on {recorded}; --resume continues on its recorded "
                                 f"split, so drop the data argument {cfg.data!r} or start a new run")
        split = recorded_split(run)
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
    recipe = resolve(cfg, len(split.train) if split.source != "tfds" else
                     int(tfds_dataset(split.tfds, "train").cardinality().numpy()), num_classes)
    cfg = recipe.config  # no "auto" left: config.yaml records what ran, so a replay or --resume repeats it
    if write and not resume:
        doc = cfg.to_dict()
        doc["run"] = {"precision": precision, "replicas": strategy.num_replicas_in_sync,
                      "classes": num_classes, "cvkeras": __import__("cvkeras").__version__,
                      "trains": ("head, then the top --unfreeze of the backbone (BatchNorm frozen)" if pretrained
                                 else "the whole network in every stage, BatchNorm included (from scratch)"),
                      "recipe": recipe.record()}
        rundir.write_config(run, doc)
        rundir.write_labels(run, classes)
        rundir.write_json(run / rundir.SPLIT, split.to_json(cfg.seed))
        if split.skipped:
            rundir.atomic_write(run / rundir.SKIPPED, "".join(f"{rundir.printable_path(p)}\t{why}\n"
                                                               for p, why in split.skipped))

    size = cfg.image_size
    augmenter = Augmenter(cfg.augment, cfg.randaugment, cfg.mixup, cfg.cutmix, cfg.seed)
    if split.source == "tfds":
        train_src, val_src = tfds_dataset(split.tfds, "train"), tfds_dataset(split.tfds, "val")
        n_train = int(train_src.cardinality().numpy())
        train_ds = make_dataset(None, None, size, cfg.batch_size, num_classes, True, augmenter, cfg.cache,
                                cfg.seed, source=train_src, cache_tag=f"{run.resolve()}:train:{cfg.data}")
        val_ds = make_dataset(None, None, size, cfg.batch_size, num_classes, cache=cfg.cache, source=val_src,
                              cache_tag=f"{run.resolve()}:val:{cfg.data}")
        counts = label_counts(train_src, num_classes) if cfg.class_weights != "none" else None
    else:
        n_train = len(split.train)
        train_ds = make_dataset([p for p, _ in split.train], [y for _, y in split.train], size, cfg.batch_size,
                                num_classes, True, augmenter, cfg.cache, cfg.seed, cache_tag=f"{run.resolve()}:train")
        val_ds = make_dataset([p for p, _ in split.val], [y for _, y in split.val], size, cfg.batch_size,
                              num_classes, cache=cfg.cache, cache_tag=f"{run.resolve()}:val")
        counts = split.counts("train")
    steps = int(cfg.epoch_steps)
    if cfg.steps_per_epoch is not None:
        steps = min(steps, int(cfg.steps_per_epoch))
    if cfg.steps_per_epoch is not None or steps != math.ceil(n_train / cfg.batch_size):
        train_ds = train_ds.repeat()
    weights = class_weights(counts, cfg.class_weights) if counts else None
    if weights:
        train_ds = with_sample_weights(train_ds, weights, num_classes)

    state_path = run / rundir.CHECKPOINTS / STATE
    state: dict[str, Any] = json.loads(state_path.read_text()) if resume else {
        "stage": 1, "epoch": 0, "global_epoch": 0, "best_val_accuracy": -1.0, "best_epoch": 0, "wait": 0,
        "history": [], "finished": False}
    with strategy.scope():
        if resume:
            model = keras.saving.load_model(run / rundir.CHECKPOINTS / LAST, safe_mode=True)  # keeps policy
        else:
            model = build_classifier(spec, num_classes, size, cfg.alpha, cfg.weights, cfg.dropout)
    export_model = float32_copy(model)  # the trained network's own config, in float32
    checkpointer = _make_checkpointer(run, export_model, state, cfg.patience, write)
    verbose = verbose if verbose is not None else (1 if sys.stdout.isatty() else 2)
    fit_kwargs = dict(validation_data=val_ds, steps_per_epoch=steps, verbose=verbose,
                      callbacks=[checkpointer, *(callbacks or [])])

    stages = [(1, cfg.epochs, cfg.learning_rate), (2, cfg.fine_tune_epochs, cfg.fine_tune_learning_rate)]
    n_val = int(val_src.cardinality().numpy()) if split.source == "tfds" else len(split.val)
    for line in header_lines(cfg, run, classes, n_train, n_val, len(split.test or ()), model.count_params(),
                             precision, strategy.num_replicas_in_sync):
        log(line)
    log(recipe.summary())
    planned = [s for s, e, _ in stages if e > 0]
    for stage, epochs, lr in stages:
        if state.get("finished") or stage < state["stage"] or epochs <= 0:
            continue
        if resume and stage == state["stage"] and cfg.patience and state["wait"] >= cfg.patience:
            continue  # this stage had already stopped early when the run was interrupted
        continuing = resume and stage == state["stage"] and state["epoch"] > 0
        if state["stage"] != stage:
            state.update(stage=stage, epoch=0, wait=0)
        if state["epoch"] >= epochs:
            continue
        if not continuing:
            best = run / rundir.BEST
            if stage > 1 and 0 < state["best_epoch"] < state["global_epoch"] and best.is_file():
                # the earlier stage's last epoch is not its best (e.g. it stopped early): go on from the best
                model.set_weights(load_model(best).get_weights())
                log(f"stage {stage} starts from the best weights so far (epoch {state['best_epoch']})")
            with strategy.scope():
                set_trainable(model, stage if pretrained else 2, cfg.unfreeze, freeze_bn=pretrained)
                compile_model(model, cfg, lr, steps, epochs, num_classes)
        else:
            pin_frozen_dropout(model)  # not saved with the checkpoint
        log(f"stage {planned.index(stage) + 1}/{len(planned)}: {stage_label(stage, pretrained, cfg.unfreeze)} "
            f"({epochs} epoch{'s' if epochs != 1 else ''}, lr {lr:g})")
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            fit_multi_worker(model, strategy, train_ds, val_ds, state["epoch"], epochs, steps, cfg,
                             weights, num_classes, fit_kwargs["callbacks"])
        else:
            model.fit(train_ds, initial_epoch=state["epoch"], epochs=epochs, **fit_kwargs)
        if checkpointer.diverged:
            raise TrainingDivergedError(
                f"the loss became NaN or infinite at {checkpointer.diverged} of epoch {state['global_epoch'] + 1} "
                f"(stage {stage}); training stopped -- the last good checkpoint and best.keras in {run} are "
                "kept; lower --lr/--fine-tune-lr and start again with --force")
        resume = False  # a later stage starts fresh
    state["finished"] = True
    if write:
        rundir.write_json(state_path, state)

    from cvkeras.evaluate import evaluate_run
    from cvkeras.plots import plot_curves, report_title

    metrics: dict[str, Any] = {}
    if write:
        metrics = evaluate_run(run, split="val")
        plot_curves(run / rundir.HISTORY, run / rundir.CURVES,
                    title=f"{spec.name} - best epoch on the " + report_title(metrics, "val split"))
        if split.test:
            test = evaluate_run(run, split="test", write=False)
            metrics["test"] = {k: test[k] for k in ("n", "accuracy", "cross_entropy", "macro_f1")}
            rundir.write_json(run / rundir.METRICS, metrics)
        from cvkeras.report import refresh

        refresh(run, warn=lambda line: print(line, file=sys.stderr))
    return FinetuneResult(run, metrics, state["best_val_accuracy"], state["global_epoch"], len(split.skipped),
                          precision, strategy.num_replicas_in_sync, state["best_epoch"])

"""The training recipe: what ``auto`` settings resolve to for a given data set and batch size.

A fixed number of epochs is a different amount of training on every data set: 8 epochs of 245 images at
batch 32 are 64 optimizer steps, of 3000 images 752. The recipe sizes each stage in *optimizer steps*
instead, with a floor for small sets, and scales the other knobs by the data:

* **epoch length** (only when both stages' epochs are ``auto``): one pass over the training set, but at
  least ``MIN_EPOCH_STEPS`` steps (a small set is repeated within an epoch), so that validation, checkpoints
  and early stopping run every ~20 steps rather than after every 2;
* **epochs per stage**: ``BASE_EPOCHS`` passes, or as many epochs as it takes to reach ``STEP_FLOOR``
  optimizer steps when that is more (a small set trains longer; a large one is unchanged);
* **learning rates** follow the batch size (square-root rule for Adam-type optimizers, linear for SGD)
  from reference rates at batch 32;
* **augmentation**: ``medium`` below ``MEDIUM_AUGMENT_BELOW`` training images per class, else ``light``.

Everything here is a pure function of its arguments (no TensorFlow), so the rules are unit-tested directly;
``finetune`` calls :func:`resolve` once, before anything is written, records :func:`Recipe.record` in the
run's ``config.yaml`` (``run.recipe``) and writes the resolved numbers into the config sections, so
``--resume`` and ``--config RUN/config.yaml`` replay exactly what ran.

Example:
    >>> r = resolve(FinetuneConfig(), n_train=50, num_classes=5)
    >>> r.config.epochs, r.config.fine_tune_epochs, r.steps_per_epoch, r.config.augment
    (10, 10, 20, 'medium')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from cvkeras.run.config import AUTO_FIELDS, FinetuneConfig, is_auto
from cvkeras.serving.errors import OptionError

#: Reference batch size of the reference learning rates.
REFERENCE_BATCH = 32
#: Peak learning rates at batch 32: stage 1 (head on frozen features), stage 2 (top of the backbone).
REFERENCE_LR = {"adamw": (5e-3, 1e-4), "sgd": (5e-2, 1e-3)}
#: Epochs per stage on a large set (where BASE_EPOCHS passes exceed the step floor).
BASE_EPOCHS = 8
#: The least optimizer steps per stage: small sets train this long whatever their size.
STEP_FLOOR = 200
#: With auto epochs, an epoch is at least this many steps (small sets repeat within an epoch).
MIN_EPOCH_STEPS = 20
#: Below this many training images per class the augmentation is ``medium`` (stronger crops, rotation,
#: colour jitter), else ``light``.
MEDIUM_AUGMENT_BELOW = 100


@dataclass(frozen=True)
class Recipe:
    """The resolved config (no ``auto`` left), the steps each epoch runs (``epoch_steps`` under the
    ``--steps-per-epoch`` cap) and what the rules saw."""

    config: FinetuneConfig
    steps_per_epoch: int
    auto: tuple[str, ...]
    inputs: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """What goes into ``config.yaml``'s ``run.recipe``: the rule inputs, which fields were auto, and
        what every one of them resolved to, plus the resulting step budget per stage."""
        cfg = self.config
        resolved = {name: getattr(cfg, name) for name in AUTO_FIELDS}
        return {"auto": list(self.auto), "resolved": resolved, "inputs": dict(self.inputs),
                "steps_per_epoch": self.steps_per_epoch,
                "stage_steps": [cfg.epochs * self.steps_per_epoch, cfg.fine_tune_epochs * self.steps_per_epoch]}

    def summary(self) -> str:
        """One console line: what auto chose, or that nothing was auto."""
        if not self.auto:
            return "recipe     as configured (nothing auto)"
        cfg = self.config
        parts = [f"{cfg.epochs} + {cfg.fine_tune_epochs} epochs of {self.steps_per_epoch} steps",
                 f"lr {cfg.learning_rate:g} / {cfg.fine_tune_learning_rate:g}", f"augment {cfg.augment}"]
        return (f"recipe     {', '.join(parts)} (auto: {', '.join(self.auto)}; "
                f"{self.inputs['n_train']} train images, {self.inputs['images_per_class']:g}/class)")


def data_steps(n_train: int, batch_size: int) -> int:
    """Steps in one pass over the training set."""
    return max(1, math.ceil(n_train / max(1, batch_size)))


def stage_epochs(steps_per_epoch: int) -> int:
    """Epochs of one stage: BASE_EPOCHS, or enough to reach STEP_FLOOR steps."""
    return max(BASE_EPOCHS, math.ceil(STEP_FLOOR / steps_per_epoch))


def scaled_lr(reference: float, batch_size: int, optimizer: str) -> float:
    """A reference rate at batch 32 moved to ``batch_size``: square root for AdamW, linear for SGD."""
    ratio = batch_size / REFERENCE_BATCH
    return float(f"{reference * (ratio if optimizer == 'sgd' else math.sqrt(ratio)):.3g}")


def resolve(cfg: FinetuneConfig, n_train: int, num_classes: int) -> Recipe:
    """Replace every ``auto`` setting of ``cfg`` by its value for this data; explicit settings win.

    ``n_train``: training images; ``num_classes``: classes. The batch size, optimizer and model come from
    ``cfg``. Returns a new config (``cfg`` is not changed).
    """
    if n_train < 1 or num_classes < 1:
        raise OptionError(f"the recipe needs at least one training image and class, not {n_train} / {num_classes}")
    per_class = n_train / num_classes
    auto = tuple(name for name in AUTO_FIELDS if is_auto(getattr(cfg, name)))
    one_pass = data_steps(n_train, cfg.batch_size)
    if is_auto(cfg.epoch_steps):
        # a longer epoch only when the recipe also chooses the epoch counts (explicit epochs mean passes)
        lengthen = is_auto(cfg.epochs) and is_auto(cfg.fine_tune_epochs)
        epoch_steps = max(one_pass, MIN_EPOCH_STEPS) if lengthen else one_pass
    else:
        epoch_steps = int(cfg.epoch_steps)
    epochs = stage_epochs(epoch_steps)
    lr1, lr2 = REFERENCE_LR.get(cfg.optimizer, REFERENCE_LR["adamw"])
    values = {
        "epochs": epochs,
        "fine_tune_epochs": epochs,
        "epoch_steps": epoch_steps,
        "learning_rate": scaled_lr(lr1, cfg.batch_size, cfg.optimizer),
        "fine_tune_learning_rate": scaled_lr(lr2, cfg.batch_size, cfg.optimizer),
        "augment": "medium" if per_class < MEDIUM_AUGMENT_BELOW else "light",
    }
    out = replace(cfg, **{name: values[name] for name in auto})
    if is_auto(cfg.epoch_steps):
        out = replace(out, epoch_steps=epoch_steps)
    inputs = {"n_train": int(n_train), "num_classes": int(num_classes), "images_per_class": round(per_class, 2),
              "batch_size": int(cfg.batch_size), "optimizer": cfg.optimizer, "model": cfg.model}
    steps = min(epoch_steps, int(cfg.steps_per_epoch)) if cfg.steps_per_epoch is not None else epoch_steps
    return Recipe(out, steps, auto, inputs)

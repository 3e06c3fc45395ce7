"""The one configuration object shared by finetune, evaluate and export, and everything about its fields.

``FinetuneConfig`` is written to ``config.yaml`` in sections (model / data / train / run) and read back
with ``--config`` (or by :class:`cvkeras.run.rundir.RunDir`); command-line flags override what the file says.
This module owns the fields, their defaults (the CLI help shows them), the allowed values
(:data:`CHOICES`), the range checks (:func:`validate_config`) and the merge rules (:meth:`FinetuneConfig.merged`).

Example:
    >>> cfg = FinetuneConfig(data="demo:shapes", model="mobilenet_v2", alpha=0.35)
    >>> FinetuneConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from cvkeras.data.augment import PRESETS as AUGMENT_PRESETS
from cvkeras.models.registry import ModelSpec, resolve_model
from cvkeras.serving.errors import OptionError, quote
from cvkeras.serving.metadata import MAX_INPUT_SIDE

SECTIONS: dict[str, tuple[str, ...]] = {
    "model": ("name", "alpha", "image_size", "weights", "dropout"),
    "data": ("source", "val_split", "test_split", "seed", "tfds_data_dir", "cache", "batch_size", "augment",
             "randaugment", "mixup", "cutmix", "dedupe"),
    "train": ("epochs", "fine_tune_epochs", "epoch_steps", "unfreeze", "optimizer", "learning_rate",
              "fine_tune_learning_rate",
              "warmup_epochs", "weight_decay", "label_smoothing", "class_weights", "patience", "precision",
              "strategy", "jit", "steps_per_epoch"),
}
_RENAME = {("model", "name"): "model", ("data", "source"): "data"}
#: Fields holding text (YAML may give a list or a mapping by mistake: refused by name, not a TypeError later).
_TEXT = {"data", "model", "weights", "cache", "augment", "unfreeze", "optimizer", "class_weights", "precision",
         "strategy", "tfds_data_dir"}
_FLOATS = {"alpha", "dropout", "val_split", "test_split", "mixup", "cutmix", "learning_rate", "fine_tune_learning_rate",
           "warmup_epochs", "weight_decay", "label_smoothing"}

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "none", "mirrored", "multi-worker")
OPTIMIZERS = ("adamw", "sgd")
CLASS_WEIGHTS = ("auto", "none")
#: Allowed values of the fields that have a fixed set (the CLI help lists them; validate_config checks them).
CHOICES: dict[str, tuple[str, ...]] = {"optimizer": OPTIMIZERS, "precision": PRECISIONS, "strategy": STRATEGIES,
                                       "class_weights": CLASS_WEIGHTS, "augment": ("auto", *AUGMENT_PRESETS)}


def is_finite_number(value: Any) -> bool:
    """True for an int or float that is neither NaN nor infinite (bools are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run, with the defaults users get."""

    data: str = ""
    model: str = "mobilenet_v2"
    alpha: float | None = None
    image_size: list[int] | None = None  # None: the registry row's default
    weights: str = "imagenet"
    dropout: float = 0.2
    val_split: float = 0.2
    #: fraction of the images set aside as a test split when the data has none (0: none): evaluated once,
    #: at the end, unlike the validation split that training chooses its best epoch on
    test_split: float = 0.0
    seed: int = 42
    tfds_data_dir: str | None = None
    cache: str = "auto"
    batch_size: int = 32
    augment: str = "auto"  # auto: medium below 100 training images per class, else light (cvkeras.train.recipe)
    randaugment: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    dedupe: bool = False  # drop validation/test copies of training images (cvkeras.data.duplicates.finetune_leaks)
    # "auto" settings are resolved from the data by cvkeras.train.recipe.resolve before training; config.yaml
    # records the resolved numbers (and run.recipe what was auto), so a replay or --resume reuses them
    epochs: int | str = "auto"
    fine_tune_epochs: int | str = "auto"
    epoch_steps: int | str = "auto"  # steps per epoch; explicit: exactly that many (the data repeats)
    unfreeze: str = "0.3"
    optimizer: str = "adamw"
    learning_rate: float | str = "auto"
    fine_tune_learning_rate: float | str = "auto"
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05  # decoupled: each step w -= lr * weight_decay * w (biases, norms excluded)
    label_smoothing: float = 0.0
    class_weights: str = "none"
    patience: int = 5
    precision: str = "auto"
    strategy: str = "auto"
    jit: bool = False
    steps_per_epoch: int | None = None  # cap per epoch (quick runs, benchmarks)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        flat = asdict(self)
        out: dict[str, Any] = {}
        for section, names in SECTIONS.items():
            out[section] = {name: flat[_RENAME.get((section, name), name)] for name in names}
        return out

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FinetuneConfig:
        """Read the sectioned form (``config.yaml``); unknown keys are an error naming the key."""
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for section, values in (doc or {}).items():
            if section in ("run", "result"):
                continue
            if section not in SECTIONS:
                raise OptionError(f"unknown config section {quote(section)}; expected {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise OptionError(f"config section {quote(section)} must be a mapping of settings, "
                                  f"not {quote(values, 60)}")
            for name, value in values.items():
                key = _RENAME.get((section, name), name)
                if key not in known:
                    raise OptionError(f"unknown config key {section}.{name}")
                # YAML 1.1 reads 1e-3 (no dot) as a string; "auto" is resolved later (cvkeras.train.recipe)
                if key in _FLOATS and isinstance(value, str) and value.strip().lower() != "auto":
                    try:
                        value = float(value)
                    except ValueError:
                        raise OptionError(f"config key {section}.{name} must be a number, not {quote(value)}") from None
                if (key in _TEXT and value is not None and not isinstance(value, str)
                        and not (key == "unfreeze" and is_finite_number(value))):
                    raise OptionError(f"config key {section}.{name} must be text, not {quote(value, 60)}")
                kwargs[key] = value
        size = kwargs.get("image_size")
        if isinstance(size, int):
            kwargs["image_size"] = [size, size]
        elif size is not None and (not isinstance(size, list) or not all(isinstance(v, int) for v in size)):
            raise OptionError(f"model.image_size must be an int or [height, width], not {quote(size)}")
        return cls(**kwargs)

    def merged(self, overrides: dict[str, Any]) -> FinetuneConfig:
        """A copy with every non-None override applied (flags over file).

        A replayed config's width and input size belong to its own model: overriding ``model`` with
        another backbone drops them (unless the overrides give them too).
        """
        d = asdict(self)
        model = overrides.get("model")
        if model and self.model and canonical_model(model) != canonical_model(self.model):
            d["alpha"] = d["image_size"] = None
        d.update({k: v for k, v in overrides.items() if v is not None})
        return FinetuneConfig(**d)

    def resolved(self) -> tuple[FinetuneConfig, ModelSpec]:
        """A copy with what the registry row decides filled in -- canonical model name, width, ``[height, width]``
        input (:func:`cvkeras.models.registry.resolve_model`) -- and the row. Called once per command."""
        choice = resolve_model(self.model, self.alpha, self.image_size)
        return replace(self, model=choice.spec.name, alpha=choice.alpha, image_size=choice.image_size), choice.spec

    @staticmethod
    def overrides(flags: dict[str, Any]) -> dict[str, Any]:
        """The command-line values that name a field (others ignored); a square ``image_size`` N -> [N, N]."""
        names = {f.name for f in fields(FinetuneConfig)}
        out = {k: v for k, v in flags.items() if k in names and k != "extra"}
        if isinstance(out.get("image_size"), int):
            out["image_size"] = [out["image_size"]] * 2
        return out


def canonical_model(name: str) -> str:
    """The registry's spelling of a model name (unknown names as given: the trainer reports them)."""
    from cvkeras.models.registry import UnknownModelError, get

    try:
        return get(name).name
    except UnknownModelError:
        return name


def unfreeze_fraction(unfreeze: float | str) -> float:
    """``--unfreeze`` as a fraction of backbone layers: a number in 0..1, or ``all`` (= 1.0)."""
    if str(unfreeze) == "all":
        return 1.0
    try:
        frac = float(unfreeze)
    except (TypeError, ValueError):  # e.g. a list in config.yaml
        frac = -1.0
    if not 0.0 <= frac <= 1.0:
        raise OptionError(f"--unfreeze must be a fraction in 0..1 or 'all', not {quote(unfreeze)}")
    return frac


def check_choice(flag: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a ValueError naming the flag and the choices."""
    if value not in allowed:
        raise OptionError(f"unknown {flag} {quote(value)}; choose {', '.join(allowed[:-1])} or {allowed[-1]}")
    return value


# (option, smallest, largest, whether the smallest itself is allowed); None: unbounded on that side
NUMBER_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "learning_rate": (0.0, None, False), "fine_tune_learning_rate": (0.0, None, False),
    "weight_decay": (0.0, None, True), "warmup_epochs": (0.0, None, True), "label_smoothing": (0.0, 1.0, True),
    "dropout": (0.0, 1.0, True), "mixup": (0.0, None, True), "cutmix": (0.0, None, True),
    "val_split": (0.0, 1.0, False), "test_split": (0.0, 1.0, True), "batch_size": (1, None, True),
    "epochs": (0, None, True),
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
        if not is_finite_number(value) or (name in whole and not float(value).is_integer()):
            raise OptionError(f"{flag} must be a finite {'whole ' if name in whole else ''}number, not {quote(value)}")
        if low is not None and (value < low or (value == low and not low_ok)):
            raise OptionError(f"{flag} must be {'at least' if low_ok else 'above'} {low}, not {value}")
        if high is not None and (value > high or (value == high and high == 1.0)):
            raise OptionError(f"{flag} must be below {high}, not {value}")
    if cfg.alpha is not None and not is_finite_number(cfg.alpha):
        raise OptionError(f"--alpha must be a finite number, not {quote(cfg.alpha)}")


AUTO = "auto"
#: Fields that take ``auto`` (resolved from the data by :func:`cvkeras.train.recipe.resolve`).
AUTO_FIELDS = ("epochs", "fine_tune_epochs", "epoch_steps", "learning_rate", "fine_tune_learning_rate", "augment")


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def placeholder(cfg: FinetuneConfig) -> FinetuneConfig:
    """``cfg`` with each ``auto`` replaced by a valid stand-in, for range checks before the data is read."""
    stand_in = {"epochs": 1, "fine_tune_epochs": 1, "epoch_steps": 1, "learning_rate": 1e-3,
                "fine_tune_learning_rate": 1e-4, "augment": "light"}
    return replace(cfg, **{name: stand_in[name] for name in AUTO_FIELDS if is_auto(getattr(cfg, name))})


def validate_config(cfg: FinetuneConfig) -> tuple[FinetuneConfig, ModelSpec]:
    """Check every option before any file is touched, so a typo never leaves a half-made run.

    Returns :meth:`FinetuneConfig.resolved`: the config with its model resolved, and the registry row."""
    from cvkeras.data.augment import Augmenter

    given = cfg
    cfg = placeholder(cfg)  # "auto" settings are resolved from the data later (cvkeras.train.recipe)
    _check_numbers(cfg)
    resolved, spec = given.resolved()
    size = resolved.image_size
    if not size or len(size) > 2 or not all(type(v) is int for v in size):
        raise OptionError(f"--image-size must be one or two whole numbers of px, not {size}")
    if min(size) < spec.min_size:
        raise OptionError(f"--image-size {size} is below {spec.name}'s minimum of {spec.min_size} px")
    if max(size) > MAX_INPUT_SIDE:
        raise OptionError(f"--image-size {size} is above the maximum of {MAX_INPUT_SIDE} px")
    Augmenter(cfg.augment, cfg.randaugment, cfg.mixup, cfg.cutmix, cfg.seed)
    unfreeze_fraction(cfg.unfreeze)
    check_choice("--optimizer", cfg.optimizer, OPTIMIZERS)
    check_choice("--class-weights", cfg.class_weights, CLASS_WEIGHTS)
    check_choice("--precision", cfg.precision, PRECISIONS)
    check_choice("--strategy", cfg.strategy, STRATEGIES)
    if cfg.batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, not {cfg.batch_size}")
    if cfg.epochs < 0 or cfg.fine_tune_epochs < 0 or cfg.epochs + cfg.fine_tune_epochs == 0:
        raise OptionError("--epochs and --fine-tune-epochs must be >= 0 and not both 0")
    if not 0.0 < cfg.val_split < 1.0:
        raise OptionError(f"--val-split must be between 0 and 1, not {cfg.val_split}")
    if not 0.0 <= cfg.test_split < 1.0 or cfg.val_split + cfg.test_split >= 1.0:
        raise OptionError(f"--test-split must be in 0..1 and leave training images beside --val-split "
                          f"({cfg.val_split}), not {cfg.test_split}")
    if cfg.learning_rate <= 0 or cfg.fine_tune_learning_rate <= 0:
        raise OptionError("learning rates must be positive")
    return resolved, spec

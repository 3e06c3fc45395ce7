"""The one configuration object shared by finetune, evaluate and export.

``FinetuneConfig`` is written to ``config.yaml`` in sections (model / data / train / run) and read back
with ``--config``; command-line flags override what the file says.

Example:
    >>> cfg = FinetuneConfig(data="demo:shapes", model="mobilenet_v2", alpha=0.35)
    >>> FinetuneConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SECTIONS: dict[str, tuple[str, ...]] = {
    "model": ("name", "alpha", "image_size", "weights", "dropout"),
    "data": ("source", "val_split", "seed", "tfds_data_dir", "cache", "batch_size", "augment", "randaugment",
             "mixup", "cutmix"),
    "train": ("epochs", "fine_tune_epochs", "epoch_steps", "unfreeze", "optimizer", "learning_rate",
              "fine_tune_learning_rate",
              "warmup_epochs", "weight_decay", "label_smoothing", "class_weights", "patience", "precision",
              "strategy", "jit", "steps_per_epoch"),
}
_RENAME = {("model", "name"): "model", ("data", "source"): "data"}
_FLOATS = {"alpha", "dropout", "val_split", "mixup", "cutmix", "learning_rate", "fine_tune_learning_rate",
           "warmup_epochs", "weight_decay", "label_smoothing"}


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
    seed: int = 42
    tfds_data_dir: str | None = None
    cache: str = "memory"
    batch_size: int = 32
    augment: str = "auto"  # auto: medium below 100 training images per class, else light (cvkeras.recipe)
    randaugment: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    # "auto" settings are resolved from the data by cvkeras.recipe.resolve before training; config.yaml
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
                raise ValueError(f"unknown config section {section!r}; expected {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise ValueError(f"config section {section!r} must be a mapping of settings, not {values!r:.60}")
            for name, value in values.items():
                key = _RENAME.get((section, name), name)
                if key not in known:
                    raise ValueError(f"unknown config key {section}.{name}")
                # YAML 1.1 reads 1e-3 (no dot) as a string; "auto" is resolved later (cvkeras.recipe)
                if key in _FLOATS and isinstance(value, str) and value.strip().lower() != "auto":
                    try:
                        value = float(value)
                    except ValueError:
                        raise ValueError(f"config key {section}.{name} must be a number, not {value!r}") from None
                kwargs[key] = value
        size = kwargs.get("image_size")
        if isinstance(size, int):
            kwargs["image_size"] = [size, size]
        elif size is not None and (not isinstance(size, list) or not all(isinstance(v, int) for v in size)):
            raise ValueError(f"model.image_size must be an int or [height, width], not {size!r}")
        return cls(**kwargs)

    def merged(self, overrides: dict[str, Any]) -> FinetuneConfig:
        """A copy with every non-None override applied (flags over file)."""
        d = asdict(self)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return FinetuneConfig(**d)

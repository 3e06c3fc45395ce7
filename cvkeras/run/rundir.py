"""The run directory: the contract between ``cvkeras finetune``, ``evaluate`` and ``export``. It holds::

    config.yaml          the whole resolved configuration (``--config`` reads it back)
    labels.txt           one class name per line, index = line number
    split.json           {"source": ..., "root": ..., "seed": ..., "train": [[path, label], ...],
                          "val": [...], "test": [...]}  (paths absolute; tfds runs keep "tfds" instead)
    history.csv          one row per epoch, both stages
    best.keras           the best float32 model (input: RGB float32 0..255 NHWC, output: probabilities)
    checkpoints/         last.keras + state.json, for ``--resume``; cache/ a file cache while training
    metrics.json         accuracy, top-k, loss, per-class P/R/F1/support, confusion matrix, temperature
    curves.png, confusion_matrix.png, skipped.txt (when files were skipped)
    .cvkeras-run         marker + manifest: every file cvkeras wrote here (``--force`` removes only those);
                         .cvkeras-lock: the OS lock one writer holds (pid and host of the holder inside)

:class:`RunDir` is the one reader and writer of this contract (finetune, evaluate, explain, report, export, tests);
no TensorFlow here. Atomic writes, the manifest and the lock are :mod:`cvkeras.run.files`'.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cvkeras.run.config import FinetuneConfig
from cvkeras.run.files import CACHE, CHECKPOINTS, EXPORT, atomic_write, mark_run, write_json
from cvkeras.serving.calibration import temperature_problem
from cvkeras.serving.errors import CvkerasError, RunDirError, first_line, quote
from cvkeras.serving.formats import LABELS, SPLIT, existing_file, labels_text, read_labels, read_split
from cvkeras.serving.metadata import MAX_INPUT_SIDE

CONFIG = "config.yaml"
HISTORY = "history.csv"
BEST = "best.keras"
METRICS = "metrics.json"
CURVES = "curves.png"
CONFUSION = "confusion_matrix.png"
SKIPPED = "skipped.txt"
STATE = "state.json"  # in checkpoints/: the trainer's progress, for --resume
LAST = "last.keras"  # in checkpoints/: the last epoch's model with its optimizer state


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``config.yaml`` as written (a file, or a folder that holds one), unchecked: ``--config``'s reader.

    A run's own config is read with :meth:`RunDir.config_doc`, which also checks the fields readers rely on."""
    import yaml

    p = existing_file(path, CONFIG, RunDirError, "config not found; pass a run directory made by `cvkeras finetune`")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise RunDirError(f"{p}: not valid YAML ({first_line(exc)}); fix or regenerate it") from None
    if not isinstance(cfg, dict):
        raise RunDirError(f"{p}: expected a mapping of settings; fix or regenerate it")
    return cfg


def _field(cfg: dict[str, Any], p: Path, section: str, name: str) -> Any:
    """``cfg[section][name]`` checked (model.name, model.image_size, data.seed), RunDirError naming it."""
    fix = "fix it or restore config.yaml from the run"
    values = cfg.get(section, {} if section != "model" else None)
    if not isinstance(values, dict):
        what = " (name, image_size, ...)" if section == "model" else ""
        raise RunDirError(f"{p}: field {quote(section)} must be a mapping{what}, not {quote(values, 60)}; {fix}")
    if (section, name) == ("model", "name"):
        if not isinstance(values.get("name"), str):
            raise RunDirError(f"{p}: field model.name must be a model name; {fix}")
        return values["name"]
    if (section, name) == ("model", "image_size"):
        size = values.get("image_size")
        if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and 1 <= v <= MAX_INPUT_SIDE
                                                                for v in size)):
            raise RunDirError(f"{p}: field model.image_size must be [height, width] in 1..{MAX_INPUT_SIDE}, "
                              f"not {quote(size, 60)}; {fix}")
        return size
    if (section, name) == ("data", "seed"):
        seed = values.get("seed", FinetuneConfig.seed)
        if type(seed) is not int:
            raise RunDirError(f"{p}: field data.seed must be an integer, not {quote(seed, 40)}; {fix}")
        return seed
    return values.get(name)


class RunDir:
    """A run directory: where each file lives, and the one way to read and write them.

    Example:
        >>> run = RunDir.open("runs/flowers")        # checked: config, labels, split (and best.keras)
        >>> run.config().model, run.image_size(), run.seed(), run.labels()
        ('mobilenet_v2', (224, 224), 42, ['daisy', 'roses'])
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def create(cls, path: str | os.PathLike) -> RunDir:
        """A new (or empty) run directory, marked as cvkeras' so that every file written into it is recorded.

        ``cvkeras finetune`` claims its output with :func:`cvkeras.run.claim.prepare_run` (lock, --force,
        --resume), which ends here too.
        """
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        mark_run(run.path)
        return run

    @classmethod
    def open(cls, path: str | os.PathLike, need_model: bool = True) -> RunDir:
        """A finished run, checked before any work starts (RunDirError naming what is missing otherwise)."""
        run = cls(path)
        p = run.path
        if not p.is_dir():
            raise RunDirError(f"{p}: run directory not found; pass the --output of `cvkeras finetune`")
        for name in (CONFIG, LABELS, SPLIT) + ((BEST,) if need_model else ()):
            if not (p / name).is_file():
                raise RunDirError(f"{p / name}: missing; the run did not finish -- "
                                  "resume it with `cvkeras finetune --resume`")
        run.config_doc()  # every file a reader relies on is checked before any work starts
        labels = run.labels()
        classes = run.split().get("classes")
        if classes is not None and classes != labels:
            raise RunDirError(f"{p / LABELS}: class names differ from split.json's {quote(classes)}; "
                              "restore the run's labels.txt")
        return run

    # --- where things are ---------------------------------------------------------------------------------
    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def state_path(self) -> Path:
        return self.path / CHECKPOINTS / STATE

    @property
    def last(self) -> Path:
        return self.path / CHECKPOINTS / LAST

    @property
    def export_dir(self) -> Path:
        return self.path / EXPORT

    @property
    def cache_dir(self) -> Path:  # --cache auto's file cache of decoded images (removed after training)
        return self.path / CACHE

    # --- reading ------------------------------------------------------------------------------------------
    def config_doc(self, checked: bool = True) -> dict[str, Any]:
        """``config.yaml`` as written (sections, plus the ``run`` facts), with the fields readers need checked
        (model.name, model.image_size, data, train); unchecked (a view such as the report): as it is, or {}."""
        p = self.path / CONFIG
        if not checked:
            return read_config(p) if p.is_file() else {}
        cfg = read_config(p)
        _field(cfg, p, "model", "name")
        _field(cfg, p, "model", "image_size")
        for section in ("data", "train"):
            if not isinstance(cfg.get(section, {}), dict):
                raise RunDirError(f"{p}: field '{section}' must be a mapping; fix it or restore config.yaml "
                                  "from the run")
        _field(cfg, p, "data", "seed")
        return cfg

    def config(self) -> FinetuneConfig:
        """The run's settings as a :class:`FinetuneConfig` (a field it cannot hold is a RunDirError)."""
        try:
            return FinetuneConfig.from_dict(self.config_doc())
        except RunDirError:
            raise
        except CvkerasError as exc:
            raise RunDirError(f"{self.path / CONFIG}: {exc}; fix it or restore config.yaml from the run") from None

    def run_info(self) -> dict[str, Any]:
        """The ``run`` section of ``config.yaml``: precision, replicas, classes, cvkeras version."""
        info = self.config_doc().get("run") or {}
        return info if isinstance(info, dict) else {}

    def _get(self, section: str, name: str) -> Any:
        p = self.path / CONFIG
        return _field(read_config(p), p, section, name)

    def image_size(self) -> tuple[int, int]:
        """The model's input ``(height, width)``, as recorded in ``config.yaml``."""
        h, w = self._get("model", "image_size")
        return int(h), int(w)

    def seed(self) -> int:
        """The run's seed (split, shuffling, calibration sample); :class:`FinetuneConfig`'s default if absent."""
        return int(self._get("data", "seed"))

    def model_name(self) -> str:
        return str(self._get("model", "name"))

    def labels(self) -> list[str]:
        return read_labels(self.path)

    def split(self) -> dict[str, Any]:
        return read_split(self.path)

    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` (the validation report), or {} before the run wrote one."""
        return self.json_doc(METRICS) or {}

    def temperature(self) -> float | None:
        """The temperature fitted on the val split (metrics.json ``calibration.temperature``); None before calibration.
        One that is not a finite number > 0 is a RunDirError naming the file."""
        cal = self.metrics().get("calibration")
        t = cal.get("temperature") if isinstance(cal, dict) else None
        if t is not None and (problem := temperature_problem(t)):
            raise RunDirError(f"{self.path / METRICS}: calibration.temperature {problem}; `cvkeras evaluate` refits")
        return None if t is None else float(t)

    def json_doc(self, name: str) -> Any:
        """A JSON file of the run (``name`` relative to it), None when there is none."""
        p = self.path / name
        return json.loads(p.read_text()) if p.is_file() else None

    def text_lines(self, name: str) -> list[str]:
        """A text file of the run as lines (undecodable bytes replaced), [] when there is none."""
        p = self.path / name
        return p.read_text(errors="replace").splitlines() if p.is_file() else []

    def state(self) -> dict[str, Any] | None:
        """The trainer's progress (``checkpoints/state.json``), None before the first epoch ended."""
        p = self.state_path
        if not p.is_file():
            return None
        try:
            doc = json.loads(p.read_text())
        except ValueError as exc:
            raise RunDirError(f"{p}: not valid JSON ({first_line(exc)}); start the run again with --force") from None
        if not isinstance(doc, dict):
            raise RunDirError(f"{p}: expected a JSON object; start the run again with --force")
        return doc

    def unfinished(self) -> str | None:
        """A warning line when training stopped before its last epoch (Ctrl-C, a full disk), else None:
        ``best.keras`` is then the best of the finished epochs only, and the user should know before shipping it."""
        try:
            state = self.state()
        except RunDirError:
            return None  # a damaged state.json is --resume's error to report
        if state is None or state.get("finished", True):
            return None
        return (f"{self.path}: training stopped after epoch {state.get('global_epoch', '?')} (stage "
                f"{state.get('stage', '?')}) and did not finish; best.keras is the best of the finished epochs -- "
                f"`cvkeras finetune --resume --output {self.path}` completes it")

    def check_labels(self, labels: list[str], outputs: int) -> None:
        """RunDirError unless ``labels.txt`` matches the model's outputs and the recorded split's classes."""
        p = self.path / LABELS
        if outputs != len(labels):
            raise RunDirError(f"{p}: lists {len(labels)} classes but the model outputs {outputs}; "
                              "restore the run's labels.txt (nothing was written)")
        classes = self.split().get("classes")
        if classes is not None and classes != labels:
            raise RunDirError(f"{p}: class names differ from split.json's {quote(classes)}; "
                              "restore the run's labels.txt (nothing was written)")

    # --- writing ------------------------------------------------------------------------------------------
    def write_config(self, cfg: FinetuneConfig | dict[str, Any], run_info: dict[str, Any] | None = None) -> Path:
        """Write ``config.yaml``: the config's sections, plus ``run`` facts when given."""
        doc = cfg.to_dict() if isinstance(cfg, FinetuneConfig) else dict(cfg)
        if run_info is not None:
            doc["run"] = run_info
        import yaml

        return atomic_write(self.path / CONFIG, yaml.safe_dump(doc, sort_keys=False))

    def write_labels(self, labels: list[str]) -> Path:
        """Write ``labels.txt`` (format: :mod:`cvkeras.serving.formats`)."""
        return atomic_write(self.path / LABELS, labels_text(labels))

    def write_split(self, doc: dict[str, Any]) -> Path:
        """Write ``split.json`` (build ``doc`` with :func:`cvkeras.serving.formats.split_doc`)."""
        return write_json(self.path / SPLIT, doc)

    def write_metrics(self, report: dict[str, Any], suffix: str = "") -> Path:
        """Write ``metrics.json``, or ``metrics<suffix>.json`` for another split or dataset (e.g. ``-test``)."""
        return write_json(self.path / METRICS.replace(".json", f"{suffix}.json"), report)

    def write_state(self, state: dict[str, Any]) -> Path:
        return write_json(self.state_path, state)

"""Hyperparameter search over the fine-tuning recipe with KerasTuner (``cvkeras tune``).

A KerasTuner oracle (Bayesian optimisation or random search) proposes values for the recipe's own knobs
-- learning rates, unfreeze depth, dropout, label smoothing, weight decay, augmentation preset, MixUp or
CutMix -- and :class:`RecipeTuner` trains each proposal with the ordinary :func:`cvkeras.train.trainer.finetune`
into ``RUN/trials/trial_NNN`` (a normal run directory). Flags given on the command line are fixed and not
searched. The tuning directory holds::

    RUN/keras_tuner/          KerasTuner's own project (oracle state: --resume continues from it)
    RUN/trials/trial_NNN/     one run directory per trial (+ trial_NNN.json: status, objective, time)
    RUN/tune.csv              one row per trial: status, objective, seconds, the values tried, error
    RUN/tune.png              the objective per trial, best marked, failures as crosses
    RUN/best -> trials/...    the best trial (``cvkeras export RUN/best`` works; its config.yaml replays)

A trial that fails (an error, a NaN loss) is recorded as ``failed`` and the search goes on. KerasTuner's
chief/worker mode (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``) runs
trials on several machines sharing one oracle; ``RUN`` must then be on a shared file system.

Example:
    >>> tune(FinetuneConfig(data="demo:shapes", weights="none"), "runs/tune", max_trials=4, fixed=set())
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvkeras.run.config import FinetuneConfig, is_finite_number
from cvkeras.search.tune_summary import (
    OBJECTIVES,
    TRIALS,
    TrialRecord,
    read_records,
    record_trial,
    trial_name,
    write_summary,
)
from cvkeras.serving.errors import CvkerasError, quote

MARKER = ".cvkeras-tune"
PROJECT = "keras_tuner"
ALGORITHMS = ("bayesian", "random")
#: knob -> FinetuneConfig fields it sets (a fixed flag among them takes the knob out of the search)
KNOBS: dict[str, tuple[str, ...]] = {
    "learning_rate": ("learning_rate",), "fine_tune_learning_rate": ("fine_tune_learning_rate",),
    "unfreeze": ("unfreeze",), "dropout": ("dropout",), "label_smoothing": ("label_smoothing",),
    "weight_decay": ("weight_decay",), "augment": ("augment",), "mix": ("mixup", "cutmix"),
}
MIX = {"none": (0.0, 0.0), "mixup": (0.2, 0.0), "cutmix": (0.0, 1.0)}


class TuneError(CvkerasError, ValueError):
    """A tuning directory or setting that cannot be used; the message names it and the fix."""


class TimeBudgetSpent(Exception):
    """Raised before a new trial would start after ``--time-budget`` minutes."""


def search_space(hp: Any, fixed: set[str], pretrained: bool) -> dict[str, Any]:
    """Declare the knobs not fixed by a flag on ``hp`` (a keras_tuner HyperParameters); their values."""
    values: dict[str, Any] = {}
    free = {k for k, names in KNOBS.items() if not any(n in fixed for n in names)}
    if not pretrained:  # from scratch the whole network trains in every stage: no unfreeze depth to choose
        free.discard("unfreeze")
    if "learning_rate" in free:
        values["learning_rate"] = hp.Float("learning_rate", 5e-4, 2e-2, sampling="log")
    if "fine_tune_learning_rate" in free:
        values["fine_tune_learning_rate"] = hp.Float("fine_tune_learning_rate", 1e-5, 1e-3, sampling="log")
    if "unfreeze" in free:
        values["unfreeze"] = hp.Choice("unfreeze", ["0.1", "0.3", "0.5", "all"])
    if "dropout" in free:
        values["dropout"] = hp.Float("dropout", 0.0, 0.5, step=0.1)
    if "label_smoothing" in free:
        values["label_smoothing"] = hp.Choice("label_smoothing", [0.0, 0.05, 0.1, 0.2])
    if "weight_decay" in free:
        values["weight_decay"] = hp.Choice("weight_decay", [0.0, 0.01, 0.05, 0.1])
    if "augment" in free:
        values["augment"] = hp.Choice("augment", ["none", "light", "medium", "heavy"])
    if "mix" in free:
        values["mix"] = hp.Choice("mix", list(MIX))
    return values


def trial_config(base: FinetuneConfig, values: dict[str, Any]) -> FinetuneConfig:
    """``base`` with a trial's knob values applied (``mix`` sets MixUp/CutMix)."""
    overrides = {k: v for k, v in values.items() if k != "mix"}
    if "dropout" in overrides:
        overrides["dropout"] = round(float(overrides["dropout"]), 6)
    if "mix" in values:
        overrides["mixup"], overrides["cutmix"] = MIX[values["mix"]]
    return base.merged(overrides)


def make_tuner(run: Path, base: FinetuneConfig, fixed: set[str], objective: str, algorithm: str, max_trials: int,
               resume: bool, time_budget_s: float | None, log: Callable[[str], None],
               train: Callable[..., Any] | None = None) -> Any:
    """The KerasTuner tuner (oracle + :class:`RecipeTuner`); ``train`` defaults to cvkeras.train.trainer.finetune."""
    import keras_tuner as kt

    key, direction = OBJECTIVES[objective]
    pretrained = str(base.weights).lower() not in ("none", "random", "")
    hp = kt.HyperParameters()
    search_space(hp, fixed, pretrained)
    common = dict(objective=kt.Objective(objective, direction), max_trials=max_trials, hyperparameters=hp,
                  seed=base.seed, tune_new_entries=False, allow_new_entries=False,
                  max_consecutive_failed_trials=max_trials + 1)  # a failed trial never ends the search
    oracle = (kt.oracles.BayesianOptimizationOracle(**common) if algorithm == "bayesian"
              else kt.oracles.RandomSearchOracle(**common))

    class RecipeTuner(kt.engine.base_tuner.BaseTuner):
        """Runs each trial as a finetune run directory and reports the objective from its metrics.json."""

        def pre_create_trial(self) -> None:
            if time_budget_s is not None and time.monotonic() - self._started > time_budget_s:
                raise TimeBudgetSpent()

        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
            return run_one(run, base, trial, key, objective, log, train)

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            if trial.status != "COMPLETED":  # KerasTuner kept the traceback; the record has the one line
                record_path = run / TRIALS / f"{trial_name(trial.trial_id)}.json"
                if not record_path.is_file():  # an error before run_one could record it
                    record_trial(run, TrialRecord(trial.trial_id, "failed", None, 0.0, trial_name(trial.trial_id),
                                             dict(trial.hyperparameters.values),
                                             (trial.message or "").strip().splitlines()[-1][:300]))
            best = write_summary(run, objective)
            r = next((x for x in read_records(run) if x.trial == trial.trial_id), None)
            if r is not None:
                score = "-" if r.objective is None else f"{r.objective:.4f}"
                log(f"trial {r.trial}: {r.status}, {objective} {score}, {r.seconds:.0f} s"
                    + (f" ({r.error})" if r.error else "")
                    + (f"; best so far: trial {best.trial} ({best.objective:.4f})" if best else ""))

        def save_model(self, trial_id: str, model: Any, step: int = 0) -> None:
            pass  # the trial's run directory holds its models

        def load_model(self, trial: Any) -> Any:
            from cvkeras.models.build import load_model
            from cvkeras.run.rundir import BEST as BEST_KERAS

            return load_model(run / TRIALS / trial_name(trial.trial_id) / BEST_KERAS)

    tuner = RecipeTuner(oracle=oracle, directory=str(run), project_name=PROJECT, overwrite=not resume)
    tuner._started = time.monotonic()
    return tuner


def run_one(run: Path, base: FinetuneConfig, trial: Any, key: str, objective: str, log: Callable[[str], None],
            train: Callable[..., Any] | None = None) -> dict[str, float]:
    """Train one trial into ``RUN/trials/trial_NNN``; record it; its objective, or FailedTrialError."""
    import keras
    from keras_tuner.errors import FailedTrialError

    from cvkeras.run.files import CHECKPOINTS
    from cvkeras.run.rundir import STATE
    from cvkeras.train.trainer import finetune

    train = train or finetune
    name = trial_name(trial.trial_id)
    out = run / TRIALS / name
    values = dict(trial.hyperparameters.values)
    cfg = trial_config(base, values)
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    log(f"trial {trial.trial_id}: {shown or 'the given recipe'} -> {out}")
    resume = (out / CHECKPOINTS / STATE).is_file()  # an interrupted trial continues where it stopped
    start = time.perf_counter()
    try:
        result = train(cfg, output=str(out), force=not resume, resume=resume, verbose=0,
                       log=lambda line: None)
        score = result.metrics.get(key)
        if score is None or not math.isfinite(float(score)):
            raise ValueError(f"metrics.json has no finite {key} ({quote(score)})")
        score = float(score)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 -- any failure of one trial is recorded, the search goes on
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        record_trial(run, TrialRecord(trial.trial_id, "failed", None, round(time.perf_counter() - start, 1), name,
                                 values, f"{type(exc).__name__}: {line}"))
        raise FailedTrialError(line) from None
    finally:
        keras.backend.clear_session()  # each trial builds its models afresh: free the last one's graph
    record_trial(run, TrialRecord(trial.trial_id, "ok", score, round(time.perf_counter() - start, 1), name, values))
    return {objective: score}


def check_tune_dir(run: Path, resume: bool) -> None:
    """A new tuning directory must be absent or empty; --resume needs one made by cvkeras tune."""
    marked = (run / MARKER).is_file()
    if run.exists() and not run.is_dir():
        raise TuneError(f"{run}: is a file; pass a folder to --output")
    if resume:
        if not marked:
            raise TuneError(f"{run}: not a `cvkeras tune` directory ({MARKER} missing); nothing to resume -- "
                            "drop --resume to start a new search")
        return
    if run.exists() and any(run.iterdir()):
        hint = "pass --resume to continue it" if marked else "pick another --output"
        raise TuneError(f"{run}: exists and is not empty; {hint}")


def tune(base: FinetuneConfig, output: str | os.PathLike, max_trials: int, fixed: set[str],
         objective: str = "val_accuracy", algorithm: str = "bayesian", time_budget_min: float | None = None,
         resume: bool = False, log: Callable[[str], None] | None = None,
         train: Callable[..., Any] | None = None) -> list[TrialRecord]:
    """Run (or resume) a search into ``output``; the trial records, best first.

    ``fixed`` names the FinetuneConfig fields the user set (not searched). ``train`` replaces
    :func:`cvkeras.train.trainer.finetune` (tests).
    """
    from cvkeras.run.config import validate_config
    from cvkeras.run.files import write_json

    log = log or (lambda line: print(line, flush=True))
    if objective not in OBJECTIVES:
        raise TuneError(f"unknown --objective {quote(objective)}; choose {', '.join(OBJECTIVES)}")
    if algorithm not in ALGORITHMS:
        raise TuneError(f"unknown --algorithm {quote(algorithm)}; choose {' or '.join(ALGORITHMS)}")
    if not isinstance(max_trials, int) or max_trials < 1:
        raise TuneError(f"--max-trials must be at least 1, not {quote(max_trials)}")
    if time_budget_min is not None and not (is_finite_number(time_budget_min) and time_budget_min > 0):
        raise TuneError(f"--time-budget must be a positive number of minutes, not {quote(time_budget_min)}")
    run = Path(output)
    if resume:  # the search continues with its recorded settings; only --max-trials and --time-budget change
        check_tune_dir(run, resume)
        try:
            recorded = json.loads((run / MARKER).read_text())
            objective, algorithm = recorded["objective"], recorded["algorithm"]
            base, fixed = FinetuneConfig.from_dict(recorded["config"]), set(recorded["fixed"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TuneError(f"{run / MARKER}: unreadable ({exc}); start a new search with another --output") from None
    if not base.data:
        raise TuneError("no data given; pass a class folder, a .csv manifest, tfds:NAME or demo:shapes")
    validate_config(base)  # the fixed part is checked before anything is written
    try:
        import keras_tuner  # noqa: F401
        if algorithm == "bayesian":
            import scipy  # noqa: F401 -- KerasTuner's Bayesian oracle needs both
            import sklearn  # noqa: F401
    except ImportError as exc:
        raise TuneError(f"cvkeras tune needs {exc.name}: pip install 'cvkeras[train]' "
                        "(keras-tuner, scipy, scikit-learn)") from None
    from keras_tuner.src.distribute import utils as dist_utils

    # chief/worker mode: the chief (or a single process) owns the directory; a worker joins it as it is
    worker = dist_utils.has_chief_oracle() and not dist_utils.is_chief_oracle()
    if not worker:
        check_tune_dir(run, resume)
    else:  # the chief makes the directory: a worker started first waits for it
        deadline = time.monotonic() + 600
        while not (run / MARKER).is_file():
            if time.monotonic() > deadline:
                raise TuneError(f"{run}: the chief did not create this tuning directory within 10 min; start "
                                "the chief (KERASTUNER_TUNER_ID=chief) with the same --output")
            time.sleep(2)
    (run / TRIALS).mkdir(parents=True, exist_ok=True)
    if worker:
        log(f"worker {os.environ.get('KERASTUNER_TUNER_ID')}: trials from the oracle at "
            f"{os.environ.get('KERASTUNER_ORACLE_IP')}:{os.environ.get('KERASTUNER_ORACLE_PORT')}")
    elif not resume:
        write_json(run / MARKER, {"objective": objective, "algorithm": algorithm, "max_trials": max_trials,
                                         "fixed": sorted(fixed), "config": base.to_dict()})
    budget = None if time_budget_min is None else 60.0 * float(time_budget_min)
    tuner = make_tuner(run, base, fixed, objective, algorithm, max_trials, resume or worker, budget, log, train)
    try:
        tuner.search(verbose=0)
    except TimeBudgetSpent:
        log(f"time budget of {time_budget_min:g} min spent; no new trial started (--resume continues)")
    if dist_utils.is_chief_oracle():
        log("chief: all trials finished")
    write_summary(run, objective)
    records = read_records(run)
    direction = OBJECTIVES[objective][1]
    ok = sorted((r for r in records if r.status == "ok"), key=lambda r: r.objective,
                reverse=direction == "max")
    return ok + [r for r in records if r.status != "ok"]

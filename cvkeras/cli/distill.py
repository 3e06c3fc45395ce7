"""``cvkeras distill``: finetune's command with a teacher (see :mod:`cvkeras.search.distill`).

The command takes every ``finetune`` flag -- its signature is finetune's own, with ``--model`` renamed
``--student`` and ``--teacher``, ``--temperature`` and ``--alpha`` added -- so the two never drift apart.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from cvkeras.serving.errors import CvkerasError


def base_config(config: Path | None, output: str | None, resume: bool) -> tuple[Any, dict[str, Any]]:
    """The FinetuneConfig from ``--config`` (or the run's own on ``--resume``) and the raw document.

    Raises RunDirError naming the file when it cannot be read."""
    from cvkeras.run import rundir
    from cvkeras.run.config import FinetuneConfig
    from cvkeras.serving.errors import CvkerasError

    source = config or (Path(output) / rundir.CONFIG if resume and output else None)
    if not source:
        return FinetuneConfig(), {}
    try:
        doc = rundir.read_config(source)
        return FinetuneConfig.from_dict(doc), doc
    except CvkerasError as exc:
        raise rundir.RunDirError(f"{source}: {exc}") from None


def merged_config(kw: dict[str, Any], base: Any) -> Any:
    """finetune's rule (FinetuneConfig.merged): flags over file; another --model drops the file's width and size."""
    from cvkeras.run.config import FinetuneConfig

    return base.merged(FinetuneConfig.overrides(kw))


def finetune_parameters(finetune_cmd: Callable[..., Any], drop: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """finetune's Typer parameters with their annotations resolved (cli.py uses postponed annotations)."""
    hints = typing.get_type_hints(finetune_cmd)
    return [p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(finetune_cmd).parameters.values() if p.name not in drop]


def register(app: typer.Typer, finetune_cmd: Callable[..., Any], fail: Callable[..., typer.Exit],
             run_finetune: Callable[..., Any], help_cls: type) -> None:
    """Add ``distill`` to the app (passed in, so ``python -m cvkeras.cli`` registers on its own app)."""
    from cvkeras.search.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE

    def distill(**kw: Any) -> None:
        """Distil a fine-tuned teacher run into a smaller student; the result is an ordinary run directory.

        The student trains with finetune's two-stage recipe; each training image's loss mixes the hard label
        (weight --alpha) with the teacher's softened prediction at --temperature on the same augmented
        image. The teacher may have another backbone, input size or normalisation. best.keras is the student:
        export, evaluate, explain and report work as for any run; config.yaml records the teacher.

        Examples:
          cvkeras distill data/flowers --teacher runs/big --student mobilenet --alpha 0.25 -o runs/small
          cvkeras export runs/small --int8
        """
        from cvkeras.train.quiet import quiet_tensorflow

        quiet_tensorflow()
        from cvkeras.search.distill import Distillation

        kw["model"] = kw.pop("student")
        teacher, temperature, alpha = kw.pop("teacher"), kw.pop("temperature"), kw.pop("kd_alpha")
        output, resume, force, quiet = kw["output"], kw["resume"], kw["force"], kw["quiet"]
        try:
            base, doc = base_config(kw["config"], output, resume)
        except CvkerasError as exc:
            raise fail(exc) from None
        recorded = ((doc.get("run") or {}).get("distill") or {}) if isinstance(doc.get("run"), dict) else {}
        if resume and teacher and recorded.get("teacher") and \
                Path(teacher).resolve() != Path(recorded["teacher"]).resolve():
            raise fail(f"{output}: was distilled from {recorded['teacher']}; --resume continues with that teacher, "
                       "so drop --teacher or start a new run with another --output")
        teacher = teacher or recorded.get("teacher")
        temperature = temperature if temperature is not None else recorded.get("temperature", DEFAULT_TEMPERATURE)
        alpha = alpha if alpha is not None else recorded.get("alpha", DEFAULT_ALPHA)
        if not teacher:
            raise fail("--teacher RUN is required: the run directory of a finished `cvkeras finetune`")
        if not kw["model"] and not (kw["config"] or resume):
            raise fail("--student MODEL is required (a registry name, see `cvkeras models`), e.g. --student mobilenet")
        if output and Path(output).resolve() == Path(teacher).resolve():
            raise fail(f"{output}: is the teacher run; pick another --output for the student")
        cfg = merged_config(kw, base)
        if cfg.strategy in ("mirrored", "multi-worker"):
            raise fail(f"distill trains on one device; --strategy {cfg.strategy} is not supported, use none")
        cfg.strategy = "none"
        from cvkeras.run.config import validate_config

        try:
            if cfg.data or not resume:  # the student's settings first: a typo never waits for the teacher
                validate_config(cfg)
            hook = Distillation.from_run(teacher, temperature, alpha,
                                         log=None if quiet else (lambda line: print(line, flush=True)))
        except CvkerasError as exc:
            raise fail(exc) from None
        run_finetune(cfg, output, force, resume, quiet, hook=hook)

    params = []
    for p in finetune_parameters(finetune_cmd, drop=("json_out",)):
        if p.name == "model":
            p = inspect.Parameter("student", p.kind, annotation=str, default=typer.Option(
                None, "--student", "-m", help="The student's registry name (see `cvkeras models`)."))
        params.append(p)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params[1:1] = [
        inspect.Parameter("teacher", kind, annotation=str, default=typer.Option(
            None, "--teacher", help="Run directory of the teacher (a finished finetune or distill run; "
                                    "required unless --config/--resume records it).")),
        inspect.Parameter("temperature", kind, annotation=float, default=typer.Option(
            None, "--temperature", help=f"Softmax temperature of the soft targets (default {DEFAULT_TEMPERATURE:g}).")),
        inspect.Parameter("kd_alpha", kind, annotation=float, default=typer.Option(
            None, "--alpha", help=f"Weight of the hard-label loss; the soft targets get 1 - alpha "
                                  f"(default {DEFAULT_ALPHA:g}).")),
    ]
    # finetune's --alpha is the width multiplier; here --alpha is the distillation weight, the width is --width
    params = [p.replace(default=typer.Option(None, "--width", help="The student's width multiplier, for families "
                                                                    "that have one."))
              if p.name == "alpha" else p for p in params]

    distill.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    app.command(name="distill", cls=help_cls)(distill)


def register_tune(app: typer.Typer, finetune_cmd: Callable[..., Any], fail: Callable[..., typer.Exit],
                  help_cls: type) -> None:
    """Add ``tune``: finetune's flags (each one given is fixed) plus the search's own options."""
    from cvkeras.search.tune import ALGORITHMS, OBJECTIVES

    def tune(**kw: Any) -> None:
        """Search the fine-tuning recipe with KerasTuner; every trial is a run directory under RUN/trials/.

        Searched (unless given as a flag): --lr, --fine-tune-lr, --unfreeze, --dropout, --label-smoothing,
        --weight-decay, --augment and MixUp/CutMix. Writes RUN/tune.csv, RUN/tune.png and RUN/best (the
        best trial: `cvkeras export RUN/best`; its config.yaml replays with `cvkeras finetune --config`).
        A failed trial is recorded and the search goes on; --resume continues an interrupted search.
        KerasTuner's chief/worker mode (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT)
        spreads trials over machines sharing RUN.

        Examples:
          cvkeras tune data/flowers --alpha 0.35 --epochs 3 --fine-tune-epochs 3 --max-trials 10 -o runs/tune
          cvkeras tune --resume -o runs/tune --max-trials 20
        """
        from cvkeras.train.quiet import quiet_tensorflow

        quiet_tensorflow()
        from cvkeras.run.claim import next_run_dir
        from cvkeras.search.tune import tune as run_tune

        max_trials, budget = kw.pop("max_trials"), kw.pop("time_budget")
        objective, algorithm = kw.pop("objective"), kw.pop("algorithm")
        output, resume, quiet = kw["output"], kw["resume"], kw["quiet"]
        if resume and not output:
            raise fail("--resume needs --output RUN naming the search to continue")
        try:
            base, _ = base_config(kw["config"], None, False)
        except CvkerasError as exc:
            raise fail(exc) from None
        from cvkeras.run.config import FinetuneConfig

        overrides = FinetuneConfig.overrides(kw)
        fixed = {k for k, v in overrides.items() if v is not None and k != "data"}
        cfg = merged_config(kw, base)
        out = Path(output) if output else next_run_dir("tune")
        log = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
        try:
            records = run_tune(cfg, out, max_trials, fixed, objective, algorithm, budget, resume, log)
        except CvkerasError as exc:
            raise fail(exc) from None
        except KeyboardInterrupt:
            raise fail(f"interrupted; finished trials are kept -- continue with `cvkeras tune --resume "
                       f"--output {out}`", 130) from None
        print_leaderboard(records, out, quiet)

    params = [p for p in finetune_parameters(finetune_cmd, drop=("force", "json_out"))]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params[1:1] = [
        inspect.Parameter("max_trials", kind, annotation=int, default=typer.Option(
            10, "--max-trials", help="Trials to run in all (a resumed search counts the earlier ones).")),
        inspect.Parameter("time_budget", kind, annotation=float, default=typer.Option(
            None, "--time-budget", help="Minutes after which no new trial starts (the running one finishes).")),
        inspect.Parameter("objective", kind, annotation=str, default=typer.Option(
            "val_accuracy", "--objective", help=f"What the search optimises: {', '.join(OBJECTIVES)}.")),
        inspect.Parameter("algorithm", kind, annotation=str, default=typer.Option(
            "bayesian", "--algorithm", help=f"KerasTuner oracle: {' or '.join(ALGORITHMS)}.")),
    ]
    params = [p.replace(default=typer.Option(False, "--resume", help="Continue the search in --output (its "
                                                                     "recorded settings; --max-trials may grow)."))
              if p.name == "resume" else p for p in params]
    tune.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    app.command(name="tune", cls=help_cls)(tune)


def print_leaderboard(records: list[Any], run: Path, quiet: bool) -> None:
    """The trials best first as a table, then the line naming the best run and the next commands."""
    from rich.console import Console
    from rich.table import Table

    from cvkeras.search.tune_summary import BEST, CSV, PLOT

    console = Console()
    ok = [r for r in records if r.status == "ok"]
    if not quiet and records:
        table = Table(title=f"{run}: {len(ok)} of {len(records)} trials finished")
        for col, kw in (("#", {"no_wrap": True}), ("trial", {"no_wrap": True}), ("objective", {"no_wrap": True}),
                        ("min", {"no_wrap": True, "justify": "right"}), ("settings", {"overflow": "fold"})):
            table.add_column(col, **kw)
        for i, r in enumerate(records, 1):
            settings = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in sorted(r.values.items()))
            if r.status != "ok":
                settings = f"failed: {r.error} ({settings})"
            table.add_row(str(i) if r.status == "ok" else "-", r.trial,
                          "-" if r.objective is None else f"{r.objective:.4f}", f"{r.seconds / 60:.1f}", settings)
        console.print(table)
    if ok:
        best = ok[0]
        console.print(f"Best: trial {best.trial} ({best.objective:.4f}) -> {run / BEST}; {run / CSV}, "
                      f"{run / PLOT}. Next: cvkeras export {run / BEST} --int8", highlight=False, soft_wrap=True)
        console.print(f"The objective is a selection figure: every trial was scored, and the best one chosen, on "
                      f"the validation split, so its {best.objective:.4f} is optimistic; a test split "
                      "(--test-split, or a test/ folder) gives each trial's run an unbiased figure.",
                      highlight=False, soft_wrap=True)
    else:
        console.print(f"No trial finished; see {run / CSV}", highlight=False, soft_wrap=True)

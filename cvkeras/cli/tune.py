"""``cvkeras tune``: finetune's command with a KerasTuner search over the recipe (see :mod:`cvkeras.search.tune`).

The command takes every ``finetune`` flag -- each one given is fixed, the rest of the recipe is searched -- plus
the search's own options, and prints the trials best first.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from cvkeras.cli.finetune import finetune_parameters, load_config
from cvkeras.cli.helpfmt import FinetuneHelpCommand
from cvkeras.serving.errors import CvkerasError, fail


def register(app: typer.Typer) -> None:
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
            cfg, _ = load_config(kw)  # the search's own --resume continues the search, not a run's config
        except CvkerasError as exc:
            raise fail(exc) from None
        from cvkeras.run.config import FinetuneConfig

        fixed = {k for k, v in FinetuneConfig.overrides(kw).items() if v is not None and k != "data"}
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

    params = [p for p in finetune_parameters(drop=("force", "json_out"))]
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
    app.command(name="tune", cls=FinetuneHelpCommand)(tune)


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

"""Choosing and claiming the run directory a finetune writes: a fresh ``runs/MODEL-N``, an ``--output``
(refused inside or around the data), ``--force`` (removes only cvkeras' own files) or ``--resume``.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from cvkeras.run import files as runfiles
from cvkeras.run import rundir
from cvkeras.run.config import FinetuneConfig
from cvkeras.serving.errors import CvkerasError, RunDirError


class RunExistsError(CvkerasError, FileExistsError):
    def __str__(self) -> str:
        return str(self.args[0])


def next_run_dir(model: str, base: str | os.PathLike = "runs") -> Path:
    """``runs/<model>-N`` with the first free N (never an existing run)."""
    base = Path(base)
    taken = {int(m.group(1)) for p in base.glob(f"{model}-*") if (m := re.fullmatch(rf"{model}-(\d+)", p.name))}
    n = 1
    while n in taken:
        n += 1
    return base / f"{model}-{n}"


def check_output_vs_data(run: Path, data: str) -> None:
    """Refuse an --output inside the data folder (it would be scanned as data) or holding the data."""
    if not data or data.startswith(("tfds:", "tfrecord:", "demo:")):
        return
    src = Path(data).expanduser().resolve()
    out = run.expanduser().resolve()
    if src.is_relative_to(out):
        raise RunExistsError(f"{run}: holds the data {data}; refusing to use it as a run directory, "
                             "pick another --output")
    if src.is_dir() and out.is_relative_to(src):
        raise RunExistsError(f"{run}: is inside the data folder {data} (it would be read as a class); "
                             "pick an --output outside it")


def no_checkpoint_line(run: Path) -> str:
    """Why ``--resume`` cannot continue a run without ``checkpoints/state.json``, from what the run holds:
    epochs whose history and best model were written before the checkpoint write failed (a full disk) are
    named as finished, so the user knows ``best.keras`` is usable and what a restart repeats."""
    import csv

    history = run / rundir.HISTORY
    try:
        with open(history, newline="") as fh:
            done = [row.get("epoch") for row in csv.DictReader(fh)]
    except (OSError, ValueError, csv.Error):
        done = []
    if done and (run / rundir.BEST).is_file():
        return (f"{run}: epoch(s) 1-{done[-1]} finished ({rundir.HISTORY}, {rundir.BEST} are complete) but their "
                f"checkpoint {runfiles.CHECKPOINTS}/{rundir.STATE} was never written (a write failed), so training "
                "cannot continue from it; evaluate or export the run as it is, or start it again with --force")
    return (f"{run}: no checkpoint to resume from (the run stopped before its first epoch ended); start it again "
            "with --force")


def prepare_run(cfg: FinetuneConfig, output: str | None, force: bool, resume: bool,
                 stack: contextlib.ExitStack) -> tuple[Path, FinetuneConfig]:
    """The run directory to write, locked for this process; with --force only cvkeras' own files are removed.

    ``cfg`` is resolved (:meth:`FinetuneConfig.resolved`): a new run is named after its canonical model."""
    if resume:
        if not output:
            raise RunExistsError("--resume needs --output RUN_DIR naming the run to continue")
        run = Path(output)
        if not rundir.RunDir(run).state_path.is_file():
            raise RunExistsError(no_checkpoint_line(run))
        stack.enter_context(runfiles.run_lock(run, "finetune --resume"))
        # A config without data means "as saved"; the CLI passes the saved config with its flags applied.
        return run, cfg if cfg.data else rundir.RunDir(run).config()
    run = Path(output) if output else next_run_dir(cfg.model)
    check_output_vs_data(run, cfg.data)
    if run.exists() and not run.is_dir():
        raise RunExistsError(f"{run}: is a file; pass a folder to --output")
    if run.exists() and any(run.iterdir()):
        if not force:
            raise RunExistsError(f"{run}: run directory exists; pass --force to overwrite or --resume to continue")
        # --force replaces what cvkeras wrote into a run it marked: never a dataset, a home folder or a
        # folder where anyone else put a file
        try:
            foreign = runfiles.foreign_entries(run)
        except RunDirError as exc:
            raise RunExistsError(f"{exc}; refusing to overwrite it, pick another --output") from None
        if foreign:
            raise RunExistsError(f"{run}: holds files cvkeras did not write (e.g. {foreign[0]}); refusing to "
                                 "overwrite it, move them or pick another --output")
        stack.enter_context(runfiles.run_lock(run, "finetune --force"))
        runfiles.clear_run(run)  # checks again under the lock; removes only manifest files
    else:
        run.mkdir(parents=True, exist_ok=True)
        stack.enter_context(runfiles.run_lock(run, "finetune"))
        if any(p.name != runfiles.LOCK for p in run.iterdir()):  # another run started here meanwhile
            raise RunExistsError(f"{run}: run directory exists; pass --force to overwrite or --resume to continue")
    rundir.RunDir.create(run)  # marks it: --force may later remove exactly what cvkeras writes here
    return run, cfg

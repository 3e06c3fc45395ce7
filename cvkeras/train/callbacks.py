"""The trainer's per-epoch bookkeeping, as one Keras callback (the multi-worker loop calls it too).

Each epoch it stops on a NaN/inf loss (the NaN model is never saved), records the history row, keeps the
best float32 model as ``best.keras``, writes ``history.csv``, ``checkpoints/last.keras`` and
``checkpoints/state.json`` (so ``--resume`` continues exactly there), and stops early after ``patience``
epochs without a better validation accuracy. It is one callback rather than Keras' CSVLogger +
EarlyStopping + ModelCheckpoint because the three share ``state``, which must survive an interrupted run
and a resume, and because only the chief worker writes.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.run import rundir
from cvkeras.run.files import CHECKPOINTS, atomic_write, write_json

#: ``loss``/``val_loss`` are the training objective (label smoothing; ``loss`` also class-weighted), not
#: metrics.json's ``cross_entropy``; ``learning_rate_first_step`` is the rate of the epoch's first step.
HISTORY_FIELDS = ("epoch", "stage", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate_first_step")


def history_csv(rows: list[dict[str, Any]]) -> str:
    """``history.csv``'s content: one row per epoch, both stages, columns ``HISTORY_FIELDS``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def make_checkpointer(run: Path, export_model, state: dict[str, Any], patience: int, write: bool):
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
                    atomic_write(run / rundir.BEST, lambda tmp: export_model.save(tmp))
                atomic_write(run / rundir.HISTORY, history_csv(state["history"]))
                ckpt = run / CHECKPOINTS
                atomic_write(ckpt / rundir.LAST, lambda tmp: self.model.save(tmp))
                write_json(ckpt / rundir.STATE, state)
            if patience and state["wait"] >= patience:
                self.model.stop_training = True

    return Checkpointer()

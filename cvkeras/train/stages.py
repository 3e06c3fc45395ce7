"""The two training stages: stage 1 trains the head on a frozen backbone (BatchNorm in inference mode),
stage 2 unfreezes the top ``unfreeze`` fraction of the backbone at a lower learning rate; each resumes
where the checkpoint state says it stopped, and stage 2 starts from the best weights so far.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cvkeras.run.config import FinetuneConfig
from cvkeras.run.rundir import RunDir
from cvkeras.serving.errors import CvkerasError
from cvkeras.train.distribute import fit_multi_worker
from cvkeras.train.optim import compile_model


class TrainingDivergedError(CvkerasError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint and best.keras are kept."""

    exit_code = 1


def stage_label(stage: int, pretrained: bool, unfreeze: str) -> str:
    """What a stage trains, in words: the console labels each ``Epoch 1/N`` block with it."""
    if not pretrained:
        return "whole network from scratch" + (", fine-tune learning rate" if stage == 2 else "")
    if stage == 1:
        return "head on a frozen backbone"
    if str(unfreeze) == "all":
        return "fine-tuning the whole backbone"
    return f"fine-tuning top {100 * float(unfreeze):g} % of the backbone"


def run_stages(model, strategy, cfg: FinetuneConfig, data: Any, state: dict[str, Any], checkpointer,
                callbacks: list, rd: RunDir, resume: bool, pretrained: bool, num_classes: int, verbose: int,
                log: Callable[[str], None]) -> None:
    """Stage 1 (head) then stage 2 (top of the backbone), each resumable where ``state`` says it stopped."""
    import tensorflow as tf

    from cvkeras.models.build import load_model, pin_frozen_dropout, set_trainable

    stages = [(1, cfg.epochs, cfg.learning_rate), (2, cfg.fine_tune_epochs, cfg.fine_tune_learning_rate)]
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
            if stage > 1 and 0 < state["best_epoch"] < state["global_epoch"] and rd.best.is_file():
                # the earlier stage's last epoch is not its best (e.g. it stopped early): go on from the best
                model.set_weights(load_model(rd.best).get_weights())
                log(f"stage {stage} starts from the best weights so far (epoch {state['best_epoch']})")
            with strategy.scope():
                set_trainable(model, stage if pretrained else 2, cfg.unfreeze, freeze_bn=pretrained)
                compile_model(model, cfg, lr, data.steps, epochs, num_classes)
        else:
            pin_frozen_dropout(model)  # not saved with the checkpoint
        log(f"stage {planned.index(stage) + 1}/{len(planned)}: {stage_label(stage, pretrained, cfg.unfreeze)} "
            f"({epochs} epoch{'s' if epochs != 1 else ''}, lr {lr:g})")
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            fit_multi_worker(model, strategy, data.train_ds, data.val_ds, state["epoch"], epochs, data.steps, cfg,
                             data.weights, num_classes, callbacks)
        else:
            model.fit(data.train_ds, initial_epoch=state["epoch"], epochs=epochs, validation_data=data.val_ds,
                      steps_per_epoch=data.steps, verbose=verbose, callbacks=callbacks)
        if checkpointer.diverged:
            raise TrainingDivergedError(
                f"the loss became NaN or infinite at {checkpointer.diverged} of epoch {state['global_epoch'] + 1} "
                f"(stage {stage}); training stopped -- the last good checkpoint and best.keras in {rd.path} are "
                "kept; lower --lr/--fine-tune-lr and start again with --force")
        resume = False  # a later stage starts fresh

"""Knowledge distillation: a fine-tuned teacher run trains a smaller student with soft targets.

The student is trained by the ordinary two-stage :func:`cvkeras.train.trainer.finetune`, so a distilled run is a
normal run directory (``best.keras`` is the float32 *student*; export, evaluate, explain and the report
work unchanged). :class:`Distillation` is the small hook finetune accepts: it checks the teacher against
the data's classes before anything is written, records the teacher in ``config.yaml`` (``run.distill``) and
replaces the student's ``train_step`` with one that mixes, per image,

    loss = alpha * CE(y, p_s) + (1 - alpha) * T^2 * KL(softmax(log p_t / T) || softmax(log p_s / T))

where ``y`` is the batch's label as the pipeline made it (one-hot, or the MixUp/CutMix soft label; the
compiled loss keeps label smoothing) and ``p_t`` is the teacher's output on *exactly the augmented batch the
student sees*, resized to the teacher's input size when the two differ. Models take RGB 0..255 and carry
their own normalisation, so a teacher with another backbone or normalisation needs nothing else.

Example:
    >>> hook = Distillation.from_run("runs/teacher", temperature=4.0, alpha=0.3)
    >>> finetune(cfg, output="runs/student", hook=hook)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvkeras.serving.errors import CvkerasError, quote

DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.3
#: Probabilities are turned back into logits as log(max(p, EPS)); a softmax output is never exactly 0 in
#: practice, and the clip keeps a float32 underflow from becoming -inf.
EPS = 1e-12


class DistillError(CvkerasError, ValueError):
    """A teacher that cannot teach this student (not a run, other classes, bad temperature or alpha)."""


def check_settings(temperature: float, alpha: float) -> None:
    """``--temperature`` > 0 and ``--alpha`` in 0..1, finite; a DistillError naming the flag otherwise."""
    if not isinstance(temperature, int | float) or not math.isfinite(temperature) or temperature <= 0:
        raise DistillError(f"--temperature must be a finite number above 0, not {quote(temperature)}")
    if not isinstance(alpha, int | float) or not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise DistillError(f"--alpha must be a number in 0..1 (the weight of the hard-label loss), not {quote(alpha)}")


@dataclass
class Distillation:
    """The finetune hook that turns a run into a distilled one (see the module docstring)."""

    teacher_run: Path
    temperature: float = DEFAULT_TEMPERATURE
    alpha: float = DEFAULT_ALPHA
    labels: list[str] = field(default_factory=list)
    teacher_model: str = ""
    teacher_alpha: float | None = None
    teacher_size: list[int] = field(default_factory=list)
    log: Callable[[str], None] | None = None
    _teacher: Any = None

    @classmethod
    def from_run(cls, run: str | os.PathLike, temperature: float = DEFAULT_TEMPERATURE,
                 alpha: float = DEFAULT_ALPHA, log: Callable[[str], None] | None = None) -> Distillation:
        """Check a teacher run directory (config, labels, split, best.keras present and consistent)."""
        from cvkeras.run.rundir import RunDir
        from cvkeras.serving.errors import RunDirError

        check_settings(temperature, alpha)
        path = Path(run)
        if not path.is_dir():
            raise DistillError(f"{path}: teacher run directory not found; pass --teacher the --output of a "
                               "finished `cvkeras finetune`")
        try:
            rd = RunDir.open(path)
            cfg = rd.config_doc()
            labels = rd.labels()
        except RunDirError as exc:
            raise DistillError(f"--teacher: {exc}") from None
        model = cfg["model"]
        return cls(path, float(temperature), float(alpha), labels, str(model["name"]), model.get("alpha"),
                   list(model["image_size"]), log)

    # --- the three hook points finetune calls ------------------------------------------------------------
    def check(self, classes: list[str]) -> None:
        """Before the run directory is touched: the teacher must know exactly the data's classes, in order."""
        if list(classes) != list(self.labels):
            raise DistillError(
                f"{self.teacher_run / 'labels.txt'}: the teacher's classes {self.labels} differ from the data's "
                f"{list(classes)}; distil from a teacher trained on the same classes")

    def record(self, doc: dict[str, Any]) -> None:
        """Write the teacher into ``config.yaml`` (``run.distill``); finetune --config ignores it."""
        doc.setdefault("run", {})["distill"] = {
            "teacher": os.path.abspath(self.teacher_run), "teacher_model": self.teacher_model,
            "teacher_alpha": self.teacher_alpha, "teacher_image_size": list(self.teacher_size),
            "temperature": self.temperature, "alpha": self.alpha,
        }
        doc["run"]["trains"] = (f"{doc['run'].get('trains', 'the student')}; distilled from the teacher "
                                f"{self.teacher_run} at temperature {self.temperature:g}, alpha {self.alpha:g}")

    def attach(self, model: Any) -> None:
        """Give the student (built or loaded from a checkpoint) the distilling ``train_step``."""
        from cvkeras.models.build import load_model
        from cvkeras.run.rundir import RunDir
        from cvkeras.serving.errors import RunDirError

        teacher = RunDir(self.teacher_run)
        if self._teacher is None:
            try:
                self._teacher = load_model(teacher.best)
            except RunDirError as exc:
                raise DistillError(f"--teacher: {exc}") from None
            self._teacher.trainable = False
            outputs = int(self._teacher.outputs[0].shape[-1])
            if outputs != len(self.labels):
                raise DistillError(f"{teacher.best}: outputs {outputs} classes but labels.txt lists "
                                   f"{len(self.labels)}; restore the teacher run")
        if self.log:
            width = f" (alpha {self.teacher_alpha:g})" if self.teacher_alpha is not None else ""
            self.log(f"teacher    {self.teacher_run}: {self.teacher_model}{width}, "
                     f"{'x'.join(map(str, self.teacher_size))} px; temperature {self.temperature:g}, "
                     f"hard-label weight alpha {self.alpha:g}")
        model.train_step = make_train_step(model, self._teacher, self.temperature, self.alpha)


def soften(probs: Any, temperature: float) -> tuple[Any, Any]:
    """Probabilities at ``temperature``: softmax(log p / T), returned with its log."""
    import tensorflow as tf

    logits = tf.math.log(tf.clip_by_value(tf.cast(probs, tf.float32), EPS, 1.0)) / temperature
    return tf.nn.softmax(logits, axis=-1), tf.nn.log_softmax(logits, axis=-1)


def kd_loss(teacher_probs: Any, student_probs: Any, temperature: float) -> Any:
    """Per-image T^2 * KL(teacher_T || student_T) (Hinton et al.; T^2 keeps gradients comparable across T)."""
    import tensorflow as tf

    p_t, log_t = soften(tf.stop_gradient(teacher_probs), temperature)
    _, log_s = soften(student_probs, temperature)
    return temperature**2 * tf.reduce_sum(p_t * (log_t - log_s), axis=-1)


def teacher_view(images: Any, teacher: Any) -> Any:
    """The student's batch (float32 RGB 0..255, augmented) at the teacher's input size."""
    import tensorflow as tf

    height, width = (int(v) for v in teacher.inputs[0].shape[1:3])
    if tuple(images.shape[1:3]) == (height, width):
        return images
    resized = tf.image.resize(tf.cast(images, tf.float32), (height, width), method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)


def make_train_step(student: Any, teacher: Any, temperature: float, alpha: float) -> Callable[[Any], Any]:
    """A Keras 3 (TensorFlow backend) ``train_step`` for ``student`` with the distillation loss.

    Mirrors Keras' own step: the compiled (hard-label) loss with its sample weights, the loss tracker,
    loss scaling for mixed precision, then the compiled metrics on the student's prediction.
    """
    import tensorflow as tf
    from keras.src import tree
    from keras.src.trainers.data_adapters import data_adapter_utils

    def train_step(data: Any) -> Any:
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        p_teacher = teacher(teacher_view(x, teacher), training=False)
        with tf.GradientTape() as tape:
            p_student = student(x, training=True)
            hard = student.compute_loss(x=x, y=y, y_pred=p_student, sample_weight=sample_weight, training=True)
            soft = kd_loss(p_teacher, p_student, temperature)
            if sample_weight is not None:  # class weights weigh the soft term as they weigh the hard one
                soft = soft * tf.cast(sample_weight, soft.dtype)
            loss = alpha * tf.cast(hard, tf.float32) + (1.0 - alpha) * tf.reduce_mean(soft)
            batch = tf.shape(next(i for i in tree.flatten(x) if i is not None))[0]
            student._loss_tracker.update_state(loss, sample_weight=batch)
            scaled = student.optimizer.scale_loss(loss)
        weights = student.trainable_weights
        grads = tape.gradient(scaled, weights)
        student.optimizer.apply_gradients(zip(grads, weights, strict=True))
        return student.compute_metrics(x, y, p_student, sample_weight=sample_weight)

    return train_step

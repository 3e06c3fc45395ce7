"""Where training runs: numeric precision, the tf.distribute strategy, which worker writes the run, and the
training loop under MultiWorkerMirroredStrategy (Keras 3's ``fit`` fails there). TensorFlow is imported
inside the functions.
"""

from __future__ import annotations

import json
import os

from cvkeras.run.config import PRECISIONS, STRATEGIES, FinetuneConfig, check_choice
from cvkeras.serving.errors import OptionError


def resolve_precision(precision: str) -> str:
    """``auto`` picks mixed_float16 on a GPU of compute capability >= 7.0, else float32."""
    if check_choice("--precision", precision, PRECISIONS) != "auto":
        return precision
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if cc and cc[0] >= 7:
            return "mixed_float16"
    return "float32"


def make_strategy(name: str):
    """tf.distribute strategy: auto (mirrored on >1 GPU), none, mirrored, multi-worker (TF_CONFIG)."""
    import tensorflow as tf

    check_choice("--strategy", name, STRATEGIES)
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if "TF_CONFIG" not in os.environ:  # multi-worker
        raise OptionError("--strategy multi-worker needs TF_CONFIG describing the cluster")
    return tf.distribute.MultiWorkerMirroredStrategy()


def split_cpu(n: int) -> None:
    """Expose the CPU as ``n`` logical devices (for mirrored training tests); call before TF runs."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def worker_index() -> int:
    return int(json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0))


def is_chief() -> bool:
    """Whether this process writes the run directory: the chief, or worker 0 when there is no chief."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = cluster.get("task", {})
    kind = task.get("type", "worker")
    if kind == "chief":
        return True
    return kind == "worker" and worker_index() == 0 and "chief" not in cluster.get("cluster", {})


def fit_multi_worker(model, strategy, train_ds, val_ds, initial_epoch: int, epochs: int, steps: int,
                     cfg: FinetuneConfig, weights: dict[int, float] | None, num_classes: int, callbacks: list) -> None:
    """The training loop under MultiWorkerMirroredStrategy, written out with ``strategy.run``.

    Keras 3's ``model.fit`` fails under this strategy (keras-team/keras#20585: a PerReplica value reaches
    a tensor conversion), so this loop does what fit does: per-replica loss scaled by the *global* batch,
    gradients all-reduced by the optimizer, metrics summed across workers, validation, then the same
    callbacks (checkpointing, early stopping) with the same logs.
    """
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing, reduction=None)
    opt = model.optimizer
    # mixed_float16: compile wrapped the optimizer in a LossScaleOptimizer whose apply_gradients divides by
    # the loss scale, so the loss must be multiplied by it first (as fit's train_step does)
    scaled = isinstance(opt, keras.optimizers.LossScaleOptimizer)
    with strategy.scope():
        opt.build(model.trainable_variables)
    iterator = iter(strategy.experimental_distribute_dataset(train_ds.repeat()))

    @tf.function
    def train_step(it):
        def step(x, y, w=None):  # w: per-image class weights from with_sample_weights
            with tf.GradientTape() as tape:
                p = model(x, training=True)
                per_example = loss_fn(y, p) * (w if w is not None else 1.0)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=cfg.batch_size)
                scaled_loss = opt.scale_loss(loss) if scaled else loss
            grads = tape.gradient(scaled_loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            correct = tf.reduce_sum(tf.cast(tf.argmax(p, -1) == tf.argmax(y, -1), tf.float32))
            return loss, correct, tf.cast(tf.shape(y)[0], tf.float32)

        loss, correct, count = strategy.run(step, args=next(it))
        return (strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", correct, axis=None),
                strategy.reduce("SUM", count, axis=None))

    for cb in callbacks:
        cb.set_model(model)
    for epoch in range(initial_epoch, epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        total_loss = total_correct = total_count = 0.0
        for _ in range(steps):
            loss, correct, count = train_step(iterator)
            total_loss += float(loss)
            total_correct += float(correct)
            total_count += float(count)
        val_loss = val_correct = val_count = 0.0
        for x, y in val_ds:  # every worker sees the whole validation set, so all agree on early stopping
            p = model(x, training=False)
            val_loss += float(tf.reduce_sum(keras.losses.categorical_crossentropy(y, p)))
            val_correct += float(tf.reduce_sum(tf.cast(tf.argmax(p, -1) == tf.argmax(y, -1), tf.float32)))
            val_count += float(tf.shape(y)[0])
        logs = {"loss": total_loss / steps, "accuracy": total_correct / max(total_count, 1.0),
                "val_loss": val_loss / max(val_count, 1.0), "val_accuracy": val_correct / max(val_count, 1.0)}
        print(f"Epoch {epoch + 1}/{epochs} - " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
        model.stop_training = False
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break

"""Input-pipeline benchmark: does ``cvkeras finetune``'s tf.data pipeline keep the model busy?

On the real JPEG photos in ``../shared/data/flowers`` it measures training images/second of the same
model (MobileNetV2 alpha 0.35, 160 px, batch 32, real ImageNet weights) in both stages, fed from:

* ``cvkeras``: ``cvkeras.data.pipeline.make_dataset`` with the default settings (memory cache of decoded
  images, shuffle, ``light`` augmentation, prefetch), in steady state (cache filled by a first epoch);
* ``in_memory``: one pre-decoded batch repeated from memory -- the compute limit;
* ``plain``: ``keras.utils.image_dataset_from_directory`` + ``prefetch``, what a user would write.

Prints JSON with the ratios measured in this one run. Goals: cvkeras >= 0.9 of in_memory in both
stages, and faster than plain. Usage: ``python bench/pipeline.py [--steps 40] [--data DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def _throughput(model, ds, steps: int, batch: int) -> float:
    import keras

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.last = time.perf_counter() - self.t0

    timer = Timer()
    model.fit(ds, steps_per_epoch=steps, epochs=2, verbose=0, callbacks=[timer])  # epoch 1 warms up
    return steps * batch / timer.last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "flowers"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from cvkeras.data.augment import Augmenter
    from cvkeras.data.pipeline import make_dataset
    from cvkeras.data.sources import load_source
    from cvkeras.models.build import build_classifier, set_trainable
    from cvkeras.run.config import FinetuneConfig
    from cvkeras.train.optim import compile_model

    cfg = FinetuneConfig()
    keras.utils.set_random_seed(0)
    split = load_source(args.data, cfg.val_split, cfg.seed)
    n = len(split.classes)
    size = (args.size, args.size)
    paths, labels = [p for p, _ in split.train], [y for _, y in split.train]

    t0 = time.perf_counter()
    ours = make_dataset(paths, labels, size, args.batch, n, True, Augmenter(cfg.augment, seed=0), "memory", 0)
    for _ in ours:  # fill the cache (the first epoch of a real run)
        pass
    first_epoch_decode_s = time.perf_counter() - t0
    ours = ours.repeat()
    xb, yb = next(iter(make_dataset(paths[: args.batch], labels[: args.batch], size, args.batch, n)))
    in_memory = tf.data.Dataset.from_tensors((xb, yb)).repeat()
    with contextlib.redirect_stdout(sys.stderr):  # it prints "Using N files"; stdout is for the JSON
        plain = keras.utils.image_dataset_from_directory(
            args.data, image_size=size, batch_size=args.batch, label_mode="categorical", seed=0,
            validation_split=0.2, subset="training", verbose=False).prefetch(tf.data.AUTOTUNE).repeat()

    results: dict[str, dict[str, float]] = {}
    for stage in (1, 2):
        results[f"stage{stage}"] = {}
        feeds = (("in_memory", in_memory), ("cvkeras", ours), ("plain", plain))
        for _ in range(args.rounds):  # interleaved rounds, best of each: load noise hits all feeds alike
            for name, ds in feeds:
                model = build_classifier("mobilenet_v2", n, size, alpha=0.35, weights=str(WEIGHTS))
                set_trainable(model, stage, cfg.unfreeze)
                compile_model(model, cfg, 1e-3, args.steps, 2, n)
                ips = _throughput(model, ds, args.steps, args.batch)
                best = results[f"stage{stage}"].get(name, 0.0)
                results[f"stage{stage}"][name] = round(max(best, ips), 1)
                keras.backend.clear_session()
        r = results[f"stage{stage}"]
        r["cvkeras_vs_in_memory"] = round(r["cvkeras"] / r["in_memory"], 3)
        r["cvkeras_vs_plain"] = round(r["cvkeras"] / r["plain"], 3)
    print(json.dumps({
        "benchmark": "pipeline", "unit": "training images/s", "model": "mobilenet_v2 alpha 0.35",
        "image_size": args.size, "batch": args.batch, "steps_timed": args.steps, "rounds": args.rounds,
        "train_images": len(paths),
        "first_epoch_decode_s": round(first_epoch_decode_s, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, TF {tf.__version__}, numpy {np.__version__}",
        **results,
        "goals": {"cvkeras_vs_in_memory": ">= 0.9", "cvkeras_vs_plain": "> 1.0"},
    }, indent=2))


if __name__ == "__main__":
    main()

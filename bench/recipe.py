"""Data-size sweep of the training recipe on real photos; prints JSON rows (one per job) and a summary.

Rows: training subsets of the flowers (``../shared/data/flowers``) with 10 and 40 images per class (two
seeds at 10: a different subset and training seed each) and the full training split (MobileNetV2 a0.5
only), MobileNet a0.25 and MobileNetV2 a0.5 at 224 px with their real ImageNet weights. Every row is
validated on the same 735 photos: the seeded 80/20 split cvkeras makes of the whole folder (seed 42).

Per row three methods, each in a fresh subprocess, taking turns (the order rotates from row to row, so
machine load falls on all of them):

* ``cvkeras``: ``cvkeras.train.trainer.finetune`` with every default (the recipe's ``auto`` settings), on a CSV
  manifest of the subset with its split; accuracy = metrics.json (the best epoch's model);
* ``probe``: a linear probe: multinomial logistic regression (L2, C = 1, as scikit-learn's default, fitted
  to convergence by full-batch gradient descent) on the frozen backbone's global-average-pooled features
  of the un-augmented training images;
* ``guide``: the TensorFlow transfer-learning guide as written (tensorflow.org/tutorials/images/
  transfer_learning): frozen base called with ``training=False``, RandomFlip("horizontal") +
  RandomRotation(0.2) inside the model, GAP, Dropout 0.2, a dense head, Adam 1e-4 for 10 epochs, then
  layers from index 100 of the base unfrozen, RMSprop 1e-5 for 10 more epochs; batch 32; accuracy = the
  last epoch's validation accuracy, as the guide reports it.

Seconds: ``train_s`` is the time inside training (cvkeras and guide: both stages' ``fit`` including their
per-epoch validation; probe: feature extraction + fit); cvkeras' ``total_s`` adds its decode, final
evaluation and report. Images for the guide and the probe are decoded once beforehand (not timed).
Then ``cvkeras export RUN --int8 --format onnx --no-repair`` for every cvkeras run, right after its row:
the full int8 ONNX model's top-1 agreement with Keras (on the 735 validation photos plus the held-back
training images; repair would keep layers in float until the 99 % gate passes).

Results are cached in ``bench/out/recipe/results.jsonl`` (a rerun skips finished jobs) and the runs in
``bench/out/recipe/runs/``; progress goes to stderr.

Usage::

    PYTHONPATH=. python bench/recipe.py [--rows a0.25-10-s0,...] [--methods cvkeras,probe,guide] [--no-export]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
REPO = HERE.parent
SHARED = Path(os.environ.get("CVKERAS_SHARED_DATA", REPO.parent / "shared" / "data"))  # a worktree: set it
DATA = SHARED / "flowers"
WEIGHTS = SHARED / "weights"
OUT = HERE / "out" / "recipe"
SIZE = 224
MODELS = {
    "a0.25": ("mobilenet", 0.25, "mobilenet_2_5_224_tf_no_top.h5"),
    "v2a0.5": ("mobilenet_v2", 0.5, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"),
}
#: (model key, images per class or 0 = all, seed): one seed of every size first, then the second seeds.
ROWS = (("a0.25", 10, 0), ("v2a0.5", 10, 0), ("a0.25", 40, 0), ("v2a0.5", 40, 0), ("v2a0.5", 0, 0),
        ("a0.25", 10, 1), ("v2a0.5", 10, 1))
METHODS = ("cvkeras", "probe", "guide")


def row_key(model: str, per_class: int, seed: int) -> str:
    return f"{model}-{per_class or 'all'}-s{seed}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- data
def manifest(per_class: int, seed: int) -> Path:
    """A CSV (absolute paths, split column) of ``per_class`` training images per class + the fixed val split."""
    path = OUT / "data" / f"flowers-{per_class or 'all'}-s{seed}.csv"
    if path.is_file():
        return path
    from cvkeras.data.sources import load_source

    split = load_source(str(DATA), 0.2, 42)
    rng = np.random.default_rng(1000 + seed)
    train = []
    for c in range(len(split.classes)):
        files = sorted(p for p, y in split.train if y == c)
        if per_class:
            files = [files[i] for i in rng.permutation(len(files))[:per_class]]
        train += [(p, split.classes[c]) for p in files]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows([p, label, "train"] for p, label in train)
        w.writerows([p, split.classes[y], "val"] for p, y in split.val)
    tmp.rename(path)
    return path


def read_manifest(path: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = sorted({r["label"] for r in rows})
    out: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for r in rows:
        out[r["split"]].append((r["path"], classes.index(r["label"])))
    return classes, out


def decoded(path: Path) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """uint8 images (Pillow, the serving decode) and labels of a manifest's splits."""
    from cvkeras.serving.preprocess import load_resized

    classes, splits = read_manifest(path)
    out = {}
    for name, items in splits.items():
        x = np.stack([load_resized(p, (SIZE, SIZE)) for p, _ in items])
        out[name] = (x, np.array([y for _, y in items], np.int64))
    return classes, out


# ----------------------------------------------------------------------------------------------- jobs
def job_cvkeras(model: str, alpha: float, weights: Path, data: Path, seed: int, run: Path) -> dict:
    import keras

    from cvkeras.run.config import FinetuneConfig
    from cvkeras.run.rundir import read_config
    from cvkeras.train.trainer import finetune

    fit_s = [0.0]

    class Timer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()

        def on_train_end(self, logs=None):
            fit_s[0] += time.perf_counter() - self.t0

    cfg = FinetuneConfig(data=str(data), model=model, alpha=alpha, image_size=[SIZE, SIZE], weights=str(weights),
                         seed=42 + seed)
    t0 = time.perf_counter()
    result = finetune(cfg, output=str(run), force=True, verbose=0, callbacks=[Timer()], log=lambda line: None)
    total = time.perf_counter() - t0
    recipe = read_config(run / "config.yaml")["run"]["recipe"]
    return {"accuracy": result.metrics["accuracy"], "train_s": round(fit_s[0], 1), "total_s": round(total, 1),
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "recipe": recipe}


def _backbone(model: str, alpha: float, weights: Path, pooling: str | None):
    import keras

    ctor = {"mobilenet": keras.applications.MobileNet, "mobilenet_v2": keras.applications.MobileNetV2}[model]
    return ctor(input_shape=(SIZE, SIZE, 3), alpha=alpha, include_top=False, weights=str(weights), pooling=pooling)


def _preprocess(model: str):
    import keras

    mod = keras.applications.mobilenet_v2 if model == "mobilenet_v2" else keras.applications.mobilenet
    return mod.preprocess_input


def job_probe(model: str, alpha: float, weights: Path, data: Path, seed: int, run: Path) -> dict:
    classes, d = decoded(data)
    t0 = time.perf_counter()
    base = _backbone(model, alpha, weights, "avg")
    pre = _preprocess(model)

    def features(x: np.ndarray) -> np.ndarray:
        return np.concatenate([base.predict(pre(x[i:i + 64].astype(np.float32)), verbose=0)
                               for i in range(0, len(x), 64)])

    f_train = features(d["train"][0])
    w, b = logistic_regression(f_train, d["train"][1], len(classes))
    train_s = time.perf_counter() - t0
    f_val = features(d["val"][0])
    acc = float(np.mean(np.argmax(f_val @ w + b, 1) == d["val"][1]))
    return {"accuracy": acc, "train_s": round(train_s, 1)}


def logistic_regression(x: np.ndarray, y: np.ndarray, k: int, c: float = 1.0, iters: int = 3000):
    """Multinomial logistic regression, objective 0.5 |W|^2 + C * sum CE (scikit-learn's, bias unpenalised),
    by full-batch Adam to a small gradient."""
    n, d = x.shape
    w, b = np.zeros((d, k)), np.zeros(k)
    onehot = np.eye(k)[y]
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    lr = 0.05
    for t in range(1, iters + 1):
        z = x @ w + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        g = [w + c * x.T @ (p - onehot), c * (p - onehot).sum(0)]
        if max(np.abs(g[0]).max(), np.abs(g[1]).max()) < 1e-4:
            break
        for i, (param, grad) in enumerate(zip((w, b), g, strict=True)):
            m[i] = 0.9 * m[i] + 0.1 * grad
            v[i] = 0.999 * v[i] + 0.001 * grad**2
            param -= lr * (m[i] / (1 - 0.9**t)) / (np.sqrt(v[i] / (1 - 0.999**t)) + 1e-8)
    return w, b


def job_guide(model: str, alpha: float, weights: Path, data: Path, seed: int, run: Path) -> dict:
    import keras
    import tensorflow as tf

    classes, d = decoded(data)
    keras.utils.set_random_seed(42 + seed)
    batch = 32
    train = tf.data.Dataset.from_tensor_slices(d["train"]).shuffle(len(d["train"][1]), seed=42 + seed)
    train = train.batch(batch).prefetch(tf.data.AUTOTUNE)
    val = tf.data.Dataset.from_tensor_slices(d["val"]).batch(batch).prefetch(tf.data.AUTOTUNE)
    t0 = time.perf_counter()
    base = _backbone(model, alpha, weights, None)
    base.trainable = False
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.2)])
    pre = _preprocess(model)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = augmentation(inputs)
    x = pre(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(len(classes))(x)
    net = keras.Model(inputs, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    net.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
    h1 = net.fit(train, epochs=10, validation_data=val, verbose=0)
    base.trainable = True
    for layer in base.layers[:100]:
        layer.trainable = False
    net.compile(optimizer=keras.optimizers.RMSprop(1e-5), loss=loss, metrics=["accuracy"])
    h2 = net.fit(train, epochs=20, initial_epoch=len(h1.epoch), validation_data=val, verbose=0)
    train_s = time.perf_counter() - t0
    accs = h1.history["val_accuracy"] + h2.history["val_accuracy"]
    return {"accuracy": float(accs[-1]), "train_s": round(train_s, 1), "best_epoch_accuracy": float(max(accs)),
            "stage1_accuracy": float(h1.history["val_accuracy"][-1])}


def job_export(run: Path) -> dict:
    from cvkeras.export import export_run

    t0 = time.perf_counter()
    # no repair: the full int8 model's agreement is what tells how robust the trained model is to int8
    report = export_run(run, run / "export", formats=("onnx",), int8=True, repair=False)
    out = {"export_s": round(time.perf_counter() - t0, 1)}
    for a in report.artifacts:
        if a.name == "model_int8.onnx":
            full = (a.repair or {}).get("full_int8", {})
            out.update(int8_onnx_status=a.status, int8_onnx_agreement=a.agreement,
                       int8_onnx_full_agreement=full.get("agreement", a.agreement),
                       int8_onnx_float_layers=len(a.float_layers or []), n_agreement=a.n_agreement)
    return out


JOBS = {"cvkeras": job_cvkeras, "probe": job_probe, "guide": job_guide}


def worker(args) -> int:
    model, alpha, weight_file = MODELS[args.model]
    run = Path(args.run)
    if args.method == "export":
        result = job_export(run)
    else:
        result = JOBS[args.method](model, alpha, WEIGHTS / weight_file, Path(args.data), args.seed, run)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------- driver
def load_results() -> dict[str, dict]:
    path = OUT / "results.jsonl"
    if not path.is_file():
        return {}
    return {(r := json.loads(line))["job"]: r for line in path.read_text().splitlines() if line.strip()}


def run_job(job: str, argv: list[str]) -> dict:
    log(f"{job}: start")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", *argv], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        log(f"{job}: FAILED rc={proc.returncode}\n{proc.stderr[-3000:]}")
        return {"job": job, "error": proc.stderr.strip().splitlines()[-1:] or [f"rc {proc.returncode}"]}
    result = {"job": job, **json.loads(lines[-1][7:]), "wall_s": round(time.perf_counter() - t0, 1),
              "load_avg": round(os.getloadavg()[0], 2)}
    with open(OUT / "results.jsonl", "a") as fh:
        fh.write(json.dumps(result) + "\n")
    log(f"{job}: {json.dumps(result)[:300]}")
    return result


def summary(results: dict[str, dict], rows) -> list[dict]:
    table = []
    for model, per_class, seed in rows:
        key = row_key(model, per_class, seed)
        r = {m: results.get(f"{key}/{m}", {}) for m in METHODS}
        ex = results.get(f"{key}/export", {})
        row = {"row": key, "model": model, "per_class": per_class or "all", "seed": seed}
        for m in METHODS:
            row[f"{m}_acc_pct"] = None if "accuracy" not in r[m] else round(100 * r[m]["accuracy"], 2)
            row[f"{m}_train_s"] = r[m].get("train_s")
        row["cvkeras_total_s"] = r["cvkeras"].get("total_s")
        row["int8_onnx_full_agreement_pct"] = (None if ex.get("int8_onnx_full_agreement") is None
                                               else round(100 * ex["int8_onnx_full_agreement"], 2))
        row["int8_onnx_agreement_pct"] = (None if ex.get("int8_onnx_agreement") is None
                                          else round(100 * ex["int8_onnx_agreement"], 2))
        row["int8_onnx_status"] = ex.get("int8_onnx_status")
        c, p, g = (row[f"{m}_acc_pct"] for m in METHODS)
        if None not in (c, p, g):
            row["goal_probe_plus_2"] = c >= p + 2
            row["goal_guide"] = c >= g
            row["goal_above_chance"] = c > 100 / 5
        if per_class == 0 and row["cvkeras_train_s"] and row["guide_train_s"]:
            row["time_vs_guide"] = round(row["cvkeras_train_s"] / row["guide_train_s"], 2)
            row["goal_time_1.5x"] = row["time_vs_guide"] <= 1.5
        row["recipe"] = {k: r["cvkeras"].get("recipe", {}).get("resolved", {}).get(k)
                         for k in ("epochs", "fine_tune_epochs", "epoch_steps", "learning_rate", "augment")}
        table.append(row)
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--rows", help="comma-separated row keys (default: all), e.g. a0.25-10-s0,v2a0.5-all-s0")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--summary", action="store_true", help="print the table from cached results only")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [r for r in ROWS if not args.rows or row_key(*r) in args.rows.split(",")]
    methods = [m for m in METHODS if m in args.methods.split(",")]
    results = load_results()
    if not args.summary:
        for i, (model, per_class, seed) in enumerate(rows):
            key = row_key(model, per_class, seed)
            data = manifest(per_class, seed)
            order = methods[i % len(methods):] + methods[:i % len(methods)]  # rotate: load falls on all
            for m in order:
                job = f"{key}/{m}"
                if job in results and "error" not in results[job]:
                    continue
                results[job] = run_job(job, ["--method", m, "--model", model, "--data", str(data),
                                             "--seed", str(seed), "--run", str(OUT / "runs" / key)])
            job = f"{key}/export"  # right after the row's training, so every finished row is complete
            if args.no_export or (job in results and "error" not in results[job]) or "accuracy" not in results.get(
                    f"{key}/cvkeras", {}):
                continue
            results[job] = run_job(job, ["--method", "export", "--model", model, "--run", str(OUT / "runs" / key)])
    table = summary(results, rows)
    print(json.dumps({"benchmark": "recipe", "validation_images": 735, "image_size": SIZE,
                      "load_avg_end": [round(v, 2) for v in os.getloadavg()], "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

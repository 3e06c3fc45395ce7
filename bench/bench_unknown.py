"""Benchmark the unknown detector (issue #24 point 4) through the product; prints one JSON document.

Per backbone (MobileNetV2 a0.35, MobileNet a0.25; real ImageNet weights, 160 px) and in-distribution set
(A = daisy, dandelion, tulips; B = roses, sunflowers, tulips; from ``../shared/data/flowers``):

1. a run directory made by hand the way ``cvkeras finetune`` writes one: the classifier of
   ``cvkeras.models.build`` with its backbone frozen, its head trained on the cached pooled features of the
   training images (60 % per class, seeded), split.json with 20 % validation, the temperature fitted on it in
   metrics.json; the other 20 % is a test folder nothing is fitted or chosen on;
2. ``cvkeras export RUN --format onnx --int8 --ood FAR`` (threshold at 95 % of the validation images);
   ``--format tflite``: the same with ``model.tflite`` and the full-integer ``model_int8.tflite`` (uint8 in);
3. per artifact (float32, int8), through ``serving``: ECE before/after the temperature and the acceptance on
   the test images, accept/reject agreement of int8 with float32 on test + near + far images, AUROC and
   false-accept rate on near-OOD (the two other flower classes) and far-OOD (400 generated images: smooth
   noise, shapes, blurred textures, text-like dashes, checkerboards/gradients; not photos);
4. the cost on this CPU: batch-1 latency of the model without and with the features output and score
   (interleaved rounds, one thread), and the bytes the detector adds to the file.

The head is trained on frozen features (no backbone fine-tuning): the run is what stage 1 of the recipe gives.
Usage: ``python bench/bench_unknown.py [--backbones mnv2_a035,mnv1_a025] [--sets A,B] [--format onnx|tflite]``.
Out: bench/out/unknown/ (``results.json``; ``results_tflite.json`` for ``--format tflite``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
OUT = HERE / "out" / "unknown"
S, SEED = 160, 0
CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
SETS = {"A": ["daisy", "dandelion", "tulips"], "B": ["roses", "sunflowers", "tulips"]}
BACKBONES = {"mnv2_a035": ("mobilenet_v2", 0.35, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"),
             "mnv1_a025": ("mobilenet", 0.25, "mobilenet_2_5_224_tf_no_top.h5")}
GOALS = {"ece_after_max": 0.03, "far_auroc_min": 0.95, "far_false_accept_max": 0.20, "near_auroc_min": 0.80,
         "int8_agreement_min": 0.99, "cost_ratio_max": 0.10}


def far_images(folder: Path, n_per: int = 80, seed: int = 1234) -> Path:
    """Write 5 kinds x ``n_per`` generated non-flower images (PNG, S x S) under ``folder``, once."""
    if folder.is_dir() and len(list(folder.glob("*.png"))) == 5 * n_per:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    col = lambda: tuple(int(v) for v in rng.integers(0, 256, 3))  # noqa: E731
    for i in range(5 * n_per):
        kind = i // n_per
        if kind == 0:  # smooth noise: low-res random colours upsampled
            g = int(rng.integers(2, 9))
            im = Image.fromarray(rng.integers(0, 256, (g, g, 3), dtype=np.uint8)).resize((S, S), Image.BICUBIC)
        elif kind == 1:  # shapes on a plain background
            im = Image.new("RGB", (S, S), col())
            d = ImageDraw.Draw(im)
            for _ in range(int(rng.integers(1, 6))):
                x0, y0 = (int(v) for v in rng.integers(0, S - 20, 2))
                w, h = (int(v) for v in rng.integers(15, 90, 2))
                (d.rectangle if rng.random() < 0.5 else d.ellipse)([x0, y0, min(S - 1, x0 + w), min(S - 1, y0 + h)],
                                                                    fill=col())
        elif kind == 2:  # blurred, colour-shifted noise texture
            a = Image.fromarray(rng.integers(0, 256, (S, S, 3), dtype=np.uint8))
            f = np.asarray(a.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 4)))), np.float32)
            im = Image.fromarray(np.clip((f - f.mean()) * rng.uniform(2, 6) + rng.uniform(40, 215, 3), 0, 255)
                                 .astype(np.uint8))
        elif kind == 3:  # text-like rows of dark dashes on light paper
            im = Image.new("RGB", (S, S), (int(rng.integers(200, 256)),) * 3)
            d, lh = ImageDraw.Draw(im), int(rng.integers(8, 18))
            ink = tuple(int(v) for v in rng.integers(0, 80, 3))
            for y in range(6, S - lh, lh + int(rng.integers(3, 8))):
                x = 6
                while x < S - 10:
                    w = int(rng.integers(3, 25))
                    d.rectangle([x, y, min(S - 6, x + w), y + lh - 3], fill=ink)
                    x += w + int(rng.integers(3, 8))
        else:  # checkerboard or linear gradient
            yy, xx = np.mgrid[:S, :S]
            c = int(rng.integers(4, 40))
            t = (xx if rng.random() < 0.5 else yy)[..., None] / (S - 1)
            a = (np.where(((yy // c + xx // c) % 2)[..., None], col(), col()) if i % 2
                 else (1 - t) * np.array(col()) + t * np.array(col()))
            im = Image.fromarray(np.asarray(a, np.uint8))
        im.save(folder / f"far_{i:03d}.png")
    return folder


def link_folder(folder: Path, items: list[tuple[str, str]]) -> Path:
    """``folder/<class>/<file>`` symlinks to ``items`` (class, path): a data folder without copying photos."""
    for cls, path in items:
        (folder / cls).mkdir(parents=True, exist_ok=True)
        dst = folder / cls / Path(path).name
        if not dst.exists():
            dst.symlink_to(path)
    return folder


def make_run(run: Path, bb: str, classes: list[str]) -> dict:
    """The hand-made run directory (module docstring, step 1); returns the test and near-OOD folders."""
    import keras

    from cvkeras.models.build import build_classifier
    from cvkeras.run import rundir
    from cvkeras.run.config import FinetuneConfig
    from cvkeras.serving.calibration import fit_temperature
    from cvkeras.serving.formats import split_doc
    from cvkeras.serving.images import list_images
    from cvkeras.serving.preprocess import load_resized

    rng = np.random.default_rng(SEED)
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    for c, name in enumerate(classes):
        files = [str(p) for p in list_images(SHARED / "flowers" / name)]
        rng.shuffle(files)
        a, b = round(0.6 * len(files)), round(0.8 * len(files))
        for key, chunk in (("train", files[:a]), ("val", files[a:b]), ("test", files[b:])):
            parts[key] += [[p, c] for p in chunk]
    near = [(n, str(p)) for n in CLASSES if n not in classes for p in list_images(SHARED / "flowers" / n)]
    folders = {"test": link_folder(run.parent / "test", [(classes[c], p) for p, c in parts["test"]]),
               "near": link_folder(run.parent / "near", near)}
    if (run / "best.keras").is_file():
        return folders
    model_name, alpha, weights = BACKBONES[bb]
    keras.utils.set_random_seed(SEED)
    model = build_classifier(model_name, len(classes), (S, S), alpha, str(SHARED / "weights" / weights))
    feats_model = keras.Model(model.inputs, model.layers[-1].input)
    x = {k: np.stack([load_resized(p, (S, S)) for p, _ in v]).astype(np.float32) for k, v in parts.items()
         if k != "test"}
    y = {k: np.asarray([c for _, c in v]) for k, v in parts.items()}
    f = {k: feats_model.predict(v, batch_size=64, verbose=0) for k, v in x.items()}
    head = keras.Sequential([keras.Input((f["train"].shape[1],)), keras.layers.Dropout(0.2),
                             keras.layers.Dense(len(classes), activation="softmax")])
    head.compile(keras.optimizers.AdamW(1e-3), "sparse_categorical_crossentropy")
    head.fit(f["train"], y["train"], batch_size=32, epochs=10, verbose=0)
    model.layers[-1].set_weights(head.layers[-1].get_weights())
    t = fit_temperature(model.predict(x["val"], batch_size=64, verbose=0), y["val"])
    run.mkdir(parents=True, exist_ok=True)
    rd = rundir.RunDir(run)
    model.save(rd.best)
    rd.write_labels(classes)
    rd.write_config(FinetuneConfig(data=str(SHARED / "flowers"), model=model_name, alpha=alpha, image_size=[S, S],
                                   weights=str(SHARED / "weights" / weights), seed=SEED, val_split=0.2))
    rd.write_split(split_doc("folder", str(SHARED / "flowers"), SEED, classes,
                             {"train": parts["train"], "val": parts["val"]}))
    rd.write_metrics({"calibration": {"temperature": t}})
    return folders


def scores_of(pred, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Raw probabilities and unknown scores of ``files`` through the predictor (decoded as on a device)."""
    probs, scores = [], []
    for batch in pred.batches(files, 32):
        p, s = pred.predict_arrays(batch.x, raw=True)
        probs.append(p)
        scores.append(s)
    return np.concatenate(probs), np.concatenate(scores)


def cost(pred, image: np.ndarray, rounds: int = 7, iters: int = 100) -> dict:
    """Batch-1 latency (ms, median of round medians) of probabilities only and of probabilities + score."""
    runner = pred._runner_for("latency")
    x = image[None].astype(np.float32)
    plain, full = [], []
    for _ in range(rounds):  # interleaved: the machine's load hits both alike
        for out, fn in ((plain, lambda: runner.run(x)), (full, lambda: pred.unknown.scores(runner.run_features(x)[1]))):
            t = []
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
            out.append(1000 * float(np.median(t)))
    feats = runner.run_features(x)[1]
    t0 = time.perf_counter()
    for _ in range(1000):
        pred.unknown.scores(feats)
    score_ms = (time.perf_counter() - t0)
    return {"model_ms": float(np.median(plain)), "with_features_and_score_ms": float(np.median(full)),
            "score_only_ms": score_ms, "cost_ratio": (float(np.median(full)) - float(np.median(plain)))
            / float(np.median(plain)), "score_ratio": score_ms / float(np.median(plain)),
            "metadata_bytes": len(json.dumps(pred.metadata.unknown))}


def cell(bb: str, set_name: str, far: Path, fmt: str = "onnx") -> dict:
    from cvkeras.serving.calibration import apply_temperature, ece
    from cvkeras.serving.images import list_images
    from cvkeras.serving.predictor import Predictor
    from cvkeras.serving.preprocess import load_resized
    from cvkeras.serving.unknown import auroc, ood_figures

    classes = SETS[set_name]
    base = OUT / f"{bb}_{set_name}"
    folders = make_run(base / "run", bb, classes)
    export = base / ("export" if fmt == "onnx" else f"export_{fmt}")
    names = (f"model.{fmt}", f"model_int8.{fmt}")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "cvkeras.cli", "export", str(base / "run"), "--format", fmt,
                          "--int8", "--ood", str(far), "--output", str(export), "--json", "--threads", "1"],
                         capture_output=True, text=True)
    if res.returncode not in (0, 1):
        raise SystemExit(res.stderr[-2000:])
    report = json.loads(res.stdout)
    doc = {"classes": classes, "export_seconds": time.perf_counter() - t0, "export_unknown": report["unknown"],
           "artifacts": {}}
    test = [str(p) for c in classes for p in list_images(folders["test"] / c)]
    labels = np.asarray([classes.index(Path(p).parent.name) for p in test])
    sets = {"test": test, "near": [str(p) for c in os.listdir(folders["near"]) for p in
                                   list_images(folders["near"] / c)], "far": [str(p) for p in list_images(far)]}
    decisions = {}
    for name in names:
        pred = Predictor.load(export / name, threads=1, mode="throughput")
        out = {k: scores_of(pred, v) for k, v in sets.items()}
        thr, t = pred.unknown.threshold, pred.temperature
        p_test, s_test = out["test"]
        decisions[name] = np.concatenate([out[k][1] > thr for k in sets])
        row = next(a for a in report["artifacts"] if a["name"] == name)
        doc["artifacts"][name] = {
            "status": row["status"], "export_unknown": row.get("unknown"),  # its validation figures vs Keras
            "accuracy_test": float((p_test.argmax(1) == labels).mean()), "temperature": t,
            "ece_before": ece(p_test, labels), "ece_after": ece(apply_temperature(p_test, t), labels),
            "accept_rate_test": float((s_test <= thr).mean()), "n_test": len(test),
            "near": ood_figures(s_test, out["near"][1], thr), "far": ood_figures(s_test, out["far"][1], thr),
            "far_auroc_msp": auroc(-apply_temperature(p_test, t).max(1), -apply_temperature(out["far"][0], t).max(1)),
            "near_auroc_msp": auroc(-apply_temperature(p_test, t).max(1),
                                    -apply_temperature(out["near"][0], t).max(1)),
            "size_bytes": (export / name).stat().st_size,
            "cost": cost(pred, load_resized(test[0], (S, S))),
        }
    same = decisions[names[0]] == decisions[names[1]]
    doc["int8_agreement"] = {"all": float(same.mean()), "n": int(len(same))}
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--format", default="onnx", choices=("onnx", "tflite"))
    args = ap.parse_args()
    far = far_images(OUT / "far")
    cells = {f"{bb}/{s}": cell(bb, s, far, args.format) for bb in args.backbones.split(",")
             for s in args.sets.split(",")}
    doc = {"what": "unknown detector (cos_proto) through cvkeras export + serving, issue #24 point 4",
           "format": args.format, "goals": GOALS, "cells": cells}
    (OUT / ("results.json" if args.format == "onnx" else f"results_{args.format}.json")).write_text(
        json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

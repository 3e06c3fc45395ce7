"""Benchmark how finetune's start-up and memory grow with the data set (issue 26); prints one JSON document.

Camera-like JPEGs (1600x1200: a smooth colour field, a few shapes, sensor-like noise; quality 90; 10
classes) are generated once under ``--root`` (not the repository): ``pool/`` holds the largest set and each
size ``nN/`` hard-links the first N/10 files of every class. For every size, the same finetune (MobileNetV2
alpha 0.35, random weights, ``--image-size`` px, batch 32, one stage-1 epoch of one pass, stage 2 off) runs
as a child process of each code version, interleaved (new, old, new, old ...: the new code first, so a long
old run cannot hold it up):

* ``t_first_step_s``: from starting the child to the end of its first training step (TensorFlow import,
  data scan and checks, model build, first batch);
* ``first_epoch_images_per_s``: training images of the first epoch / its time from the first step's start
  to the last step's end (every image is decoded in that pass; the memory or file cache is filled);
* ``peak_rss_mb``: the child's peak resident memory (``wait4`` rusage);
* ``total_s``: the whole command, final evaluation and report included.

``--old DIR`` is a copy of the code to compare with (``git archive main | tar -x -C DIR``), ``--new DIR``
optionally one of the code under test; the child points the editable install's package mapping at it. The
host's load is recorded (load averages, cores).

Example:
    nice python bench/bench_scale.py --root /work/scratch/scale --sizes 1000 10000 --old /work/scratch/scale/main
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CLASSES = 10
BATCH = 32
WIDTH, HEIGHT = 1600, 1200


def camera_like(seed: int, label: int) -> bytes:
    """One 1600x1200 JPEG: a smooth colour field tinted by the class, a few shapes, noise of sigma ~6."""
    import io

    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    field = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    field[..., label % 3] = np.clip(field[..., label % 3].astype(int) + 60, 0, 255)
    img = Image.fromarray(field).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x, y = int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT))
        r = int(rng.integers(40, 300))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=colour)
    arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 6, (HEIGHT, WIDTH, 1)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_one(job: tuple[Path, int, int]) -> None:
    path, seed, label = job
    if not path.exists():  # written whole (temporary name, then renamed): an interrupted run leaves no stub
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(camera_like(seed, label))
        tmp.rename(path)


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a comment segment after its start marker: other bytes, the same pixels and decode."""
    body = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def generate(root: Path, sizes: list[int], workers: int, copies_above: int | None = None) -> dict[int, Path]:
    """The data sets, generated once (existing files are kept): size -> folder. With ``copies_above``, a
    larger set (folder ``nNc``) holds the first ``copies_above`` files and byte-distinct copies of them."""
    per_class = min(max(sizes), copies_above or max(sizes)) // CLASSES
    pool = root / "pool"
    for c in range(CLASSES):
        (pool / f"c{c}").mkdir(parents=True, exist_ok=True)
    jobs = [(pool / f"c{c}" / f"img_{i:05d}.jpg", c * 1_000_003 + i, c) for i in range(per_class)
            for c in range(CLASSES)]  # round-robin: the smaller sets are complete first
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(write_one, jobs, chunksize=64))
    out = {}
    for n in sizes:
        folder = root / (f"n{n}c" if n // CLASSES > per_class else f"n{n}")
        for c in range(CLASSES):
            (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n // CLASSES):
                dst = folder / f"c{c}" / f"img_{i:05d}.jpg"
                src = pool / f"c{c}" / f"img_{i % per_class:05d}.jpg"
                if dst.exists():
                    continue
                if i < per_class:
                    os.link(src, dst)
                else:
                    dst.with_suffix(".tmp").write_bytes(with_comment(src.read_bytes(), f"copy {i // per_class}"))
                    dst.with_suffix(".tmp").rename(dst)
        out[n] = folder
    return out


class StepCap(Exception):
    """Ends a child finetune after ``--steps`` training steps."""


def child(args: argparse.Namespace) -> None:
    """One finetune in this process, with timing marks; writes them to ``args.marks``."""
    if args.code:  # run another copy of the code: re-point the editable install's package mapping
        import __editable___cvkeras_0_1_0_finder as finder  # noqa: PLC0415

        finder.MAPPING.update({"cvkeras": f"{args.code}/cvkeras", "cvkeras.export": f"{args.code}/export",
                               "cvkeras.serving": f"{args.code}/serving"})
    import keras

    import cvkeras.train.trainer as trainer
    from cvkeras.run.config import FinetuneConfig

    marks: dict[str, float] = {}

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            marks.setdefault("first_step_begin", time.time())

        def on_train_batch_end(self, batch, logs=None):
            marks.setdefault("first_step_end", time.time())
            if "epoch1_end" not in marks:
                marks["last_step_end"], marks["steps"] = time.time(), batch + 1
            if args.steps and batch + 1 >= args.steps:
                raise StepCap  # the timed steps are done: no validation, no final evaluation

        def on_epoch_end(self, epoch, logs=None):
            marks.setdefault("epoch1_end", time.time())

    lines: list[str] = []
    cfg = FinetuneConfig(data=args.data, model="mobilenet_v2", alpha=0.35, weights="none",
                         image_size=[args.image_size] * 2, batch_size=BATCH, epochs=1, fine_tune_epochs=0)
    try:
        skipped = trainer.finetune(cfg, output=args.output, force=True, verbose=0, callbacks=[Timer()],
                                   log=lines.append).skipped
    except StepCap:
        skipped = None
    marks["done"] = time.time()
    doc = {"marks": marks, "code": trainer.__file__, "skipped": skipped,
           "header": [line for line in lines if line.startswith(("data ", "cache "))]}
    Path(args.marks).write_text(json.dumps(doc))
    if skipped is None:  # ended mid-epoch: tf.data's reader threads stay blocked and would hold up the exit
        sys.stdout.flush()
        os._exit(0)


def measure(data: Path, code: str | None, work: Path, image_size: int, steps: int | None) -> dict:
    """Run one child finetune; its timings and peak RSS."""
    marks = work / "marks.json"
    marks.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--data", str(data), "--output",
           str(work / "run"), "--marks", str(marks), "--image-size", str(image_size)] + (["--code", code] if code
                                                                                         else []) + (
        ["--steps", str(steps)] if steps else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(work / "stderr.txt", "w"))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    if status != 0 or not marks.is_file():
        tail = (work / "stderr.txt").read_text()[-2000:]
        raise SystemExit(f"child failed ({status}) on {data} with {code or 'new'}:\n{tail}")
    doc = json.loads(marks.read_text())
    m = doc["marks"]
    n_train = int(doc["header"][0].split(": ", 1)[1].split(" train")[0]) if doc["header"] else None
    timed = min(n_train, BATCH * m["steps"]) if n_train else n_train  # the images the timed steps saw
    return {"t_first_step_s": round(m["first_step_end"] - t0, 2),
            "t_first_step_begin_s": round(m["first_step_begin"] - t0, 2),
            "first_epoch_images_per_s": round(timed / (m["last_step_end"] - m["first_step_begin"]), 1),
            "first_epoch_s": round(m["last_step_end"] - m["first_step_begin"], 2), "steps_timed": m["steps"],
            "steady_images_per_s": round(BATCH * (m["steps"] - 1) / (m["last_step_end"] - m["first_step_end"]), 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "total_s": round(wall, 1), "n_train": n_train,
            "images_timed": timed,
            "skipped": doc["skipped"], "header": doc["header"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/work/scratch/scale"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--old", help="a copy of the code to compare with (e.g. main's)")
    ap.add_argument("--new", help="a copy of the code under test (default: the installed checkout; a copy keeps "
                                  "edits made while the bench runs out of it)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--steps", type=int, help="time only the first STEPS training steps of every run (the same "
                    "cap for every size), then end the child: no validation, no final evaluation")
    ap.add_argument("--copies-above", type=int, help="sets larger than this are filled with byte-distinct copies "
                    "(a JPEG comment) of its generated files instead of new photos (same decode cost, quicker "
                    "to make)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--code", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--marks", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    t = time.time()
    folders = generate(args.root, sorted(args.sizes), args.workers, args.copies_above)
    gen_s = time.time() - t
    work = args.root / "work"
    work.mkdir(parents=True, exist_ok=True)
    load = [os.getloadavg()]
    runs = []
    versions = [("new", args.new)] + ([("old", args.old)] if args.old else [])
    for n in sorted(args.sizes):
        for name, code in versions:  # interleaved: each size runs new then old back to back
            row = {"version": name, "files": n, **measure(folders[n], code, work, args.image_size, args.steps)}
            runs.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        load.append(os.getloadavg())
    doc = {"bench": "bench_scale", "image": f"{WIDTH}x{HEIGHT} JPEG q90", "image_size": args.image_size,
           "model": "mobilenet_v2 a0.35, weights none, batch 32, 1 epoch", "generate_s": round(gen_s, 1),
           "steps_cap": args.steps, "timed": (f"the first {args.steps} training steps of each run (the child ends "
                                              "there: no validation, no final evaluation)" if args.steps
                                              else "the whole first epoch"),
           "folders": {n: str(f) for n, f in folders.items()},
           "copies_above": args.copies_above,
           "host": {"cores": os.cpu_count(), "loadavg_1_5_15": [[round(v, 2) for v in x] for x in load],
                    "nice": os.nice(0)}, "runs": runs}
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

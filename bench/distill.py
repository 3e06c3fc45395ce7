"""Benchmark `cvkeras distill` on real photos: does a teacher make the edge student better? Prints JSON.

From the real ImageNet weights in ``../shared/data/weights``, on the flowers:

1. teacher: MobileNetV2 a0.5. Either ``--teacher-run RUN``, a finished ``cvkeras finetune`` run used
   read-only (its data source, --val-split and --seed are taken from its ``config.yaml``, and the hash of its
   ``best.keras`` is checked before and after), or trained here by ``cvkeras finetune`` on
   ``../shared/data/flowers`` (cached in ``OUT/teacher``, reused when its ``metrics.json`` is there and its
   arguments match);
2. student alone: MobileNet a0.25 by ``cvkeras finetune``;
3. student distilled: the same student, recipe, seed and step budget by ``cvkeras distill --teacher``
   (the student alone is cached like the teacher, so another --temperature/--alpha with --name reruns only this);
4. ``cvkeras export --int8`` of the distilled student, with the default gates.

Both students train on exactly the teacher's split: the benchmark stops unless each student's ``split.json``
equals the teacher's (the teacher never saw a validation photo), and unless both students ran the same
step budget. Epochs default to ``auto`` (cvkeras' recipe: no epoch flag is passed). Every step is the real
command line (a subprocess), so the benchmark drives what users run. The 1-minute load average is sampled
every 15 s while it runs. Goal (issue #13): distilled >= alone + 1 point of validation accuracy, and the
distilled student's int8 export passes.

Usage::

    python bench/distill.py [--teacher-run RUN] [--size 224] [--teacher-epochs auto|E1,E2]
                            [--student-epochs auto|E1,E2] [--temperature 4] [--alpha 0.3]
                            [--steps-per-epoch N] [--out DIR] [--name SUBDIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
if not SHARED.is_dir():  # a git worktree sits one level deeper than the main checkout
    SHARED = Path("/work/shared/data")
FLOWERS = SHARED / "flowers"
WEIGHTS = SHARED / "weights"
TEACHER_WEIGHTS = WEIGHTS / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"
STUDENT_WEIGHTS = WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"
OUT = ROOT / "bench" / "out" / "distill"

sys.path.insert(0, str(ROOT))


class LoadSampler:
    """The 1-minute load average every ``every`` seconds in a background thread, per phase."""

    def __init__(self, every: float = 15.0) -> None:
        self.every, self.phase, self.samples = every, "start", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.setdefault(self.phase, []).append(os.getloadavg()[0])
            self._stop.wait(self.every)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, dict[str, float]]:
        every = [v for vs in self.samples.values() for v in vs]
        return {name: {"min": round(min(vs), 2), "mean": round(sum(vs) / len(vs), 2), "max": round(max(vs), 2),
                       "samples": len(vs)}
                for name, vs in {**self.samples, "all": every}.items() if vs}


def cli(*args: str, log: Path, check: bool = True) -> tuple[float, int]:
    """Run ``cvkeras ARGS`` (output appended to ``log``); (seconds taken, exit code). A failure stops the
    benchmark unless ``check`` is False (export exits 1 when a gate fails: that is a result, recorded)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ cvkeras {' '.join(args)}   # {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC\n")
        f.flush()
        code = subprocess.call([sys.executable, "-m", "cvkeras.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                               env=env, cwd=ROOT)
    if code and check:
        sys.exit(f"error: `cvkeras {' '.join(args)}` exited {code}; see {log}")
    return round(time.perf_counter() - start, 1), code


def cached(args: list[str], run: Path, log: Path) -> float | None:
    """Run ``cvkeras ARGS --output RUN`` unless RUN already holds a finished run made by the same ARGS
    (None: reused)."""
    stamp = run.parent / f"{run.name}_args.json"
    if (run / "metrics.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == args:
        return None
    run.parent.mkdir(parents=True, exist_ok=True)
    seconds, _ = cli(*args, "--output", str(run), "--force", log=log)
    stamp.write_text(json.dumps(args))
    return seconds


def accuracy(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["accuracy"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_split(run: Path, teacher: Path) -> None:
    """Stop unless ``run`` trained and validated on exactly the teacher's split (``split.json`` equal)."""
    mine, theirs = (json.loads((r / "split.json").read_text()) for r in (run, teacher))
    if mine != theirs:
        diff = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        sys.exit(f"error: {run}/split.json differs from the teacher's {teacher}/split.json in {diff}; the students "
                 "must train and validate on the teacher's split")


def recipe(run: Path) -> dict[str, object]:
    """What the run's recipe resolved to and how many epochs each stage really ran (early stopping)."""
    from cvkeras.run.rundir import RunDir

    cfg = RunDir(run).config_doc()
    train, rec = cfg["train"], (cfg.get("run") or {}).get("recipe") or {}
    ran = [0, 0]
    for line in (run / "history.csv").read_text().splitlines()[1:]:
        ran[int(line.split(",")[1]) - 1] += 1
    return {"epochs": [train["epochs"], train["fine_tune_epochs"]], "epoch_steps": train.get("epoch_steps"),
            "stage_steps": rec.get("stage_steps"), "epochs_run": ran, "auto": rec.get("auto", []),
            "learning_rates": [train["learning_rate"], train["fine_tune_learning_rate"]],
            "augment": cfg["data"].get("augment"), "batch_size": cfg["data"].get("batch_size"),
            "label_smoothing": train.get("label_smoothing"), "unfreeze": train.get("unfreeze")}


def paired(alone: Path, distilled: Path, teacher: Path) -> dict[str, object]:
    """Per-image comparison on the shared validation split: who gets which image right, and the gain in
    points with its 95 % interval (normal approximation of the paired difference). The teacher is scored
    on the same decoded images as a check of the split."""
    import numpy as np

    from cvkeras.data.pipeline import load_split_images
    from cvkeras.models.build import load_model

    right = {}
    for name, run in (("alone", alone), ("distilled", distilled), ("teacher", teacher)):
        images, labels, _ = load_split_images(run, "val")
        probs = load_model(run / "best.keras").predict(images.astype("float32"), batch_size=64, verbose=0)
        right[name] = probs.argmax(-1) == labels
    diff = right["distilled"].astype(float) - right["alone"].astype(float)
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
    return {"n": len(diff), "only_distilled_right": int((diff > 0).sum()), "only_alone_right": int((diff < 0).sum()),
            "gain_points": round(100 * diff.mean(), 2),
            "gain_ci95_points": [round(100 * (diff.mean() - half), 2), round(100 * (diff.mean() + half), 2)],
            "teacher_accuracy_same_images": round(float(right["teacher"].mean()), 4)}


def int8_rows(report: dict) -> dict[str, dict[str, object]]:
    """Per int8/dynamic artifact: verdict, agreement and drop (in points) as exported, layers the repair kept
    in float, and the fully quantized model's figures before the repair."""
    scale = 100 if "schema" in report else 1  # export_report/1 records drops as fractions, older reports points

    def points(value: float | None) -> float | None:
        return None if value is None else round(scale * value, 2)

    rows = {}
    for a in report.get("artifacts", []):
        if "int8" not in a["name"] and "dynamic" not in a["name"]:
            continue
        repair = a.get("repair") or {}
        full = repair.get("full_int8") or {}
        rows[a["name"]] = {
            "status": a["status"], "agreement": a.get("agreement"),
            "accuracy_drop_points": points(a.get("accuracy_drop")),
            "layers_kept_float": len(a.get("float_layers") or []),
            "repaired": bool(repair) and bool(repair.get("passed")),
            "repair_tried_float_layers": [t["float_layers"] for t in repair.get("attempts", [])],
            # the fully quantized model before the repair kept layers in float (None: it passed as it was)
            "full_int8_agreement": full.get("agreement"),
            "full_int8_accuracy_drop_points": points(full.get("accuracy_drop")),
            "error": a.get("error")}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-run", type=Path, default=None,
                    help="a finished finetune run to use as the teacher (read-only); its data, split and seed are used")
    ap.add_argument("--size", type=int, default=None, help="input size of both students (default: the teacher's, 224)")
    ap.add_argument("--teacher-epochs", default="auto", help="'auto' or stage 1,2 epochs of a teacher trained here")
    ap.add_argument("--student-epochs", default="auto", help="'auto' (the recipe) or stage 1,stage 2 epochs of both")
    ap.add_argument("--temperature", type=float, default=None, help="--temperature of distill (default: its own)")
    ap.add_argument("--alpha", type=float, default=None, help="hard-label weight --alpha of distill (default: its own)")
    ap.add_argument("--steps-per-epoch", type=int, default=None, help="cap on steps per epoch (all runs)")
    ap.add_argument("--batch-size", type=int, default=None, help="batch size of every run (default: cvkeras')")
    ap.add_argument("--student-flags", default="", help="more finetune flags for both students, e.g. '--unfreeze all'")
    ap.add_argument("--no-export", action="store_true", help="skip the int8 export of the distilled student")
    ap.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(ROOT)})")
    ap.add_argument("--name", default="", help="subfolder of --out for this setting's distilled run")
    args = ap.parse_args()
    from cvkeras.run.rundir import RunDir
    from cvkeras.search.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE

    needed = [STUDENT_WEIGHTS] + ([args.teacher_run / "best.keras"] if args.teacher_run else [FLOWERS, TEACHER_WEIGHTS])
    for p in needed:
        if not p.exists():
            sys.exit(f"error: {p}: not found; the benchmark needs the shared flowers and weights (and --teacher-run)")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"

    def epochs(spec: str) -> list[str]:
        if spec == "auto":
            return []
        e1, e2 = spec.split(",")
        return ["--epochs", e1, "--fine-tune-epochs", e2]

    with LoadSampler() as load:
        seconds: dict[str, float | None] = {}
        if args.teacher_run:
            teacher = args.teacher_run.resolve()
            tcfg = RunDir(teacher).config_doc()
            data, val_split, seed = tcfg["data"]["source"], tcfg["data"]["val_split"], tcfg["data"]["seed"]
            size = args.size or int(tcfg["model"]["image_size"][0])
            teacher_hash = sha256(teacher / "best.keras")
            seconds["teacher"] = None
        else:
            data, val_split, seed, size = str(FLOWERS), 0.2, 42, args.size or 224
            teacher = out / "teacher"
            common = ["--image-size", str(size), "--val-split", str(val_split), "--seed", str(seed), "--quiet"]
            if args.batch_size:
                common += ["--batch-size", str(args.batch_size)]
            if args.steps_per_epoch:
                common += ["--steps-per-epoch", str(args.steps_per_epoch)]
            load.phase = "teacher"
            seconds["teacher"] = cached(["finetune", data, "-m", "mobilenet_v2", "--alpha", "0.5", "--weights",
                                         str(TEACHER_WEIGHTS), *epochs(args.teacher_epochs), *common], teacher, log)
            teacher_hash = sha256(teacher / "best.keras")
        common = ["--image-size", str(size), "--val-split", str(val_split), "--seed", str(seed), "--quiet"]
        if args.batch_size:
            common += ["--batch-size", str(args.batch_size)]
        if args.steps_per_epoch:
            common += ["--steps-per-epoch", str(args.steps_per_epoch)]
        student = ["--weights", str(STUDENT_WEIGHTS), *epochs(args.student_epochs), *common,
                   *args.student_flags.split()]
        # the same for every --temperature/--alpha: cached like the teacher (per --student-flags)
        alone = out / ("student_alone" + "".join(f"_{f.strip('-')}" for f in args.student_flags.split()))
        distilled = out / (args.name or "") / "student_distilled"
        kd = []
        if args.temperature is not None:
            kd += ["--temperature", str(args.temperature)]
        if args.alpha is not None:
            kd += ["--alpha", str(args.alpha)]
        load.phase = "student_alone"
        seconds["student_alone"] = cached(["finetune", data, "-m", "mobilenet", "--alpha", "0.25", *student],
                                          alone, log)
        same_split(alone, teacher)
        load.phase = "student_distilled"
        seconds["student_distilled"] = cached(["distill", data, "--teacher", str(teacher), "--student", "mobilenet",
                                               "--width", "0.25", *kd, *student], distilled, log)
        same_split(distilled, teacher)
        rec_alone, rec_distilled = recipe(alone), recipe(distilled)
        if rec_alone["stage_steps"] != rec_distilled["stage_steps"] or rec_alone["epochs"] != rec_distilled["epochs"]:
            sys.exit(f"error: the students ran different budgets: alone {rec_alone}, distilled {rec_distilled}")

        report_file = distilled / "export" / "export_report.json"
        export_exit = None
        load.phase = "export_int8"
        if args.no_export:
            seconds["export_int8"] = None
        elif report_file.is_file() and report_file.stat().st_mtime > (distilled / "best.keras").stat().st_mtime:
            seconds["export_int8"] = None  # this model's export is there
        else:
            seconds["export_int8"], export_exit = cli("export", str(distilled), "--int8", log=log, check=False)
        report = json.loads(report_file.read_text()) if report_file.is_file() else {"artifacts": []}
        int8 = int8_rows(report)
        load.phase = "paired"
        pair = paired(alone, distilled, teacher)
        if sha256(teacher / "best.keras") != teacher_hash:
            sys.exit(f"error: {teacher}/best.keras changed while the benchmark ran")
    acc_t, acc_a, acc_d = accuracy(teacher), accuracy(alone), accuracy(distilled)
    dcfg = (RunDir(distilled).config_doc().get("run") or {}).get("distill") or {}
    result = {
        "data": f"{data}, val_split {val_split}, seed {seed}, {size}x{size} px",
        "teacher": {"run": str(teacher), "model": "mobilenet_v2 a0.5", "recipe": recipe(teacher),
                    "val_accuracy": acc_t, "best_keras_sha256": teacher_hash},
        "split_equals_teacher": True,  # checked above: the benchmark stops otherwise
        "student": {"model": "mobilenet a0.25", "flags": args.student_flags,
                    "steps_per_epoch_cap": args.steps_per_epoch or "none",
                    "alone": rec_alone, "distilled": rec_distilled},
        "distill": {"temperature": dcfg.get("temperature", args.temperature or DEFAULT_TEMPERATURE),
                    "alpha": dcfg.get("alpha", args.alpha if args.alpha is not None else DEFAULT_ALPHA)},
        "val_accuracy": {"student_alone": acc_a, "student_distilled": acc_d},
        "gain_points": round(100 * (acc_d - acc_a), 2),
        "paired": pair,
        "goal_gain_1_point": bool(100 * (acc_d - acc_a) >= 1.0),
        "int8_export": int8,
        # the export's own verdict (every artifact) and its exit code (None: reused or skipped), and whether
        # every int8 artifact passed without the repair keeping layers float
        "export_passed": None if args.no_export else report.get("passed"),
        "export_exit_code": export_exit,
        "int8_passed_fully_quantized": (None if args.no_export else bool(int8) and all(
            a["status"] == "passed" and not a["layers_kept_float"] for a in int8.values())),
        "seconds": seconds,
        "load_average_1min": load.summary(),
        "n_val": json.loads((distilled / "metrics.json").read_text()).get("n"),
    }
    (distilled.parent / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

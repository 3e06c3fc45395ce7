"""Benchmark `cvkeras distill` on real photos: does a teacher make the edge student better? Prints JSON.

On ``../shared/data/flowers`` (seeded 80/20 split, the same for every run since data, --val-split and --seed
are the same), from the real ImageNet weights in ``../shared/data/weights``:

1. teacher: MobileNetV2 a0.5 fine-tuned by ``cvkeras finetune`` (cached in ``bench/out/distill/teacher``,
   reused when its ``metrics.json`` is there and its config matches);
2. student alone: MobileNet a0.25 by ``cvkeras finetune``;
3. student distilled: the same student, recipe, seed and step budget by ``cvkeras distill --teacher``
   (the student alone is cached like the teacher, so another --temperature/--alpha with --name reruns only this);
4. ``cvkeras export --int8`` of the distilled student, with the default gates.

Every step is the real command line (a subprocess), so the benchmark drives what users run. Goal (issue
#13): distilled >= alone + 1 point of validation accuracy, and the distilled student's int8 export passes.

Usage::

    python bench/distill.py [--size 224] [--teacher-epochs 2,2] [--student-epochs 3,3] [--temperature 4]
                            [--alpha 0.3] [--steps-per-epoch N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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


def cli(*args: str, log: Path, check: bool = True) -> float:
    """Run ``cvkeras ARGS`` (output appended to ``log``); seconds taken. A failure stops the benchmark
    unless ``check`` is False (export exits 1 when a gate fails: that is a result, recorded)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ cvkeras {' '.join(args)}\n")
        f.flush()
        code = subprocess.call([sys.executable, "-m", "cvkeras.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                               env=env, cwd=ROOT)
    if code and check:
        sys.exit(f"error: `cvkeras {' '.join(args)}` exited {code}; see {log}")
    return round(time.perf_counter() - start, 1)


def cached(args: list[str], run: Path, log: Path) -> float | None:
    """Run ``cvkeras ARGS --output RUN`` unless RUN already holds a finished run made by the same ARGS
    (None: reused)."""
    stamp = run.parent / f"{run.name}_args.json"
    if (run / "metrics.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == args:
        return None
    seconds = cli(*args, "--output", str(run), "--force", log=log)
    stamp.write_text(json.dumps(args))
    return seconds


def accuracy(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["accuracy"]


def paired(alone: Path, distilled: Path) -> dict[str, float | int]:
    """Per-image comparison on the shared validation split: who gets which image right, and the gain in
    points with its 95 % interval (normal approximation of the paired difference)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from cvkeras.model import load_model
    from cvkeras.pipeline import load_split_images

    images, labels, _ = load_split_images(alone, "val")
    right = {}
    for name, run in (("alone", alone), ("distilled", distilled)):
        probs = load_model(run / "best.keras").predict(images.astype("float32"), batch_size=64, verbose=0)
        right[name] = probs.argmax(-1) == labels
    diff = right["distilled"].astype(float) - right["alone"].astype(float)
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
    return {"n": len(diff), "only_distilled_right": int((diff > 0).sum()), "only_alone_right": int((diff < 0).sum()),
            "gain_points": round(100 * diff.mean(), 2),
            "gain_ci95_points": [round(100 * (diff.mean() - half), 2), round(100 * (diff.mean() + half), 2)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="input size of teacher and student")
    ap.add_argument("--teacher-epochs", default="2,2", help="stage 1, stage 2 epochs of the teacher")
    ap.add_argument("--student-epochs", default="3,3", help="stage 1, stage 2 epochs of both students")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.3, help="weight of the hard-label loss")
    ap.add_argument("--steps-per-epoch", type=int, default=None, help="cap on steps per epoch (all runs)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--student-flags", default="", help="more finetune flags for both students, e.g. '--unfreeze all'")
    ap.add_argument("--no-export", action="store_true", help="skip the int8 export of the distilled student")
    ap.add_argument("--name", default="", help="subfolder of bench/out/distill for this setting's distilled run")
    args = ap.parse_args()
    for p in (FLOWERS, TEACHER_WEIGHTS, STUDENT_WEIGHTS):
        if not p.exists():
            sys.exit(f"error: {p}: not found; the benchmark needs the shared flowers and weights")
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "log.txt"
    te1, te2 = args.teacher_epochs.split(",")
    se1, se2 = args.student_epochs.split(",")
    common = ["--image-size", str(args.size), "--batch-size", str(args.batch_size), "--seed", "42", "--quiet"]
    if args.steps_per_epoch:
        common += ["--steps-per-epoch", str(args.steps_per_epoch)]
    teacher = OUT / "teacher"
    teacher_args = ["finetune", str(FLOWERS), "-m", "mobilenet_v2", "--alpha", "0.5", "--weights",
                    str(TEACHER_WEIGHTS), "--epochs", te1, "--fine-tune-epochs", te2, *common]
    seconds: dict[str, float | None] = {"teacher": cached(teacher_args, teacher, log)}
    student = ["--weights", str(STUDENT_WEIGHTS), "--epochs", se1, "--fine-tune-epochs", se2, *common,
               *args.student_flags.split()]
    # the same for every --temperature/--alpha: cached like the teacher (per --student-flags)
    alone = OUT / ("student_alone" + "".join(f"_{f.strip('-')}" for f in args.student_flags.split()))
    distilled = OUT / (args.name or "") / "student_distilled"
    seconds["student_alone"] = cached(["finetune", str(FLOWERS), "-m", "mobilenet", "--alpha", "0.25", *student],
                                      alone, log)
    seconds["student_distilled"] = cached(["distill", str(FLOWERS), "--teacher", str(teacher), "--student",
                                           "mobilenet", "--width", "0.25", "--temperature", str(args.temperature),
                                           "--alpha", str(args.alpha), *student], distilled, log)
    report_file = distilled / "export" / "export_report.json"
    if args.no_export:
        seconds["export_int8"] = None
    elif report_file.is_file() and report_file.stat().st_mtime > (distilled / "best.keras").stat().st_mtime:
        seconds["export_int8"] = None  # this model's export is there
    else:
        seconds["export_int8"] = cli("export", str(distilled), "--int8", log=log, check=False)
    report = json.loads(report_file.read_text()) if report_file.is_file() else {"artifacts": []}
    int8 = {}
    for a in report["artifacts"]:
        if "int8" not in a["name"] and "dynamic" not in a["name"]:
            continue
        full = (a.get("repair") or {}).get("full_int8") or {}
        int8[a["name"]] = {"status": a["status"], "agreement": a.get("agreement"),
                           "accuracy_drop": a.get("accuracy_drop"),
                           "layers_kept_float": len(a.get("float_layers") or []),
                           # what the fully quantized model scored before the repair kept layers in float
                           "full_int8_agreement": full.get("agreement"),
                           "full_int8_accuracy_drop": full.get("accuracy_drop")}
    acc_t, acc_a, acc_d = accuracy(teacher), accuracy(alone), accuracy(distilled)
    result = {
        "data": f"flowers, seeded 80/20 split (seed 42), {args.size}x{args.size} px, batch {args.batch_size}",
        "teacher": {"model": "mobilenet_v2 a0.5", "epochs": [int(te1), int(te2)], "val_accuracy": acc_t},
        "student": {"model": "mobilenet a0.25", "epochs": [int(se1), int(se2)], "flags": args.student_flags,
                    "steps_per_epoch": args.steps_per_epoch or "full"},
        "distill": {"temperature": args.temperature, "alpha": args.alpha},
        "val_accuracy": {"student_alone": acc_a, "student_distilled": acc_d},
        "gain_points": round(100 * (acc_d - acc_a), 2),
        "paired": paired(alone, distilled),
        "goal_gain_1_point": bool(100 * (acc_d - acc_a) >= 1.0),
        "int8_export": int8,
        # the export's own verdict (every artifact, exit 0), and whether int8 passed without keeping layers float
        "export_passed": None if args.no_export else report.get("passed"),
        "int8_passed_fully_quantized": (None if args.no_export else bool(int8) and all(
            a["status"] == "passed" and not a["layers_kept_float"] for a in int8.values())),
        "seconds": seconds,
        "n_val": json.loads((distilled / "metrics.json").read_text()).get("n"),
    }
    (distilled.parent / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

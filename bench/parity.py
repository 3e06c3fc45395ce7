"""Parity benchmark: does the device (Pillow + ONNX Runtime) see what training (TensorFlow) saw?

For each input size (96, 160, 224) it fine-tunes a head on MobileNetV2 alpha 0.35 with its real ImageNet
weights on the real photos in ``../shared/data/flowers`` (a short run: parity needs a real classifier, not
a good one), exports the float32 ONNX model, then classifies every validation photo *from its JPEG file*
twice: the Keras model through the training evaluation pipeline (``cvkeras.analysis.evaluate.predict_paths``:
TensorFlow decode + resize) and the ONNX model through ``serving.Predictor.predict`` (Pillow decode +
resize). Then the same for ``--large`` validation photos upscaled to camera sizes (4000x3000, 2000x1500,
1000x750, in turn; written to a temp dir), so large JPEGs take the DCT-scaled decode (1/2, 1/4, 1/8)
on both sides. Prints JSON: top-1 agreement and max |dp| per size, and how many photos took each scale.
Goal: agreement >= 99.5 % on both sets.
Usage: ``python bench/parity.py [--sizes 96 160 224] [--steps 40] [--large 60]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
SHARED = next((b / "shared" / "data" for b in (ROOT.parent, ROOT.parent.parent)  # checkout or worktree
               if (b / "shared" / "data").is_dir()), ROOT.parent / "shared" / "data")
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "flowers"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 160, 224])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--large", type=int, default=60, help="validation photos upscaled to camera sizes")
    args = ap.parse_args()

    import numpy as np
    from PIL import Image

    from cvkeras.analysis.evaluate import predict_paths
    from cvkeras.export import export_run
    from cvkeras.models.build import load_model
    from cvkeras.run import rundir
    from cvkeras.run.config import FinetuneConfig
    from cvkeras.serving import Predictor
    from cvkeras.serving.preprocess import jpeg_scale, load_resized
    from cvkeras.train.trainer import finetune

    out: dict[str, object] = {"benchmark": "parity", "data": args.data, "model": "mobilenet_v2 alpha 0.35"}
    work = Path(tempfile.mkdtemp(prefix="cvkeras-parity-"))
    rng = np.random.default_rng(0)

    def upscale(paths: list[str]) -> list[str]:
        made = []
        for i, src in enumerate(paths):
            size = [(4000, 3000), (2000, 1500), (1000, 750)][i % 3]
            img = Image.open(src).convert("RGB").resize(size, Image.Resampling.BICUBIC)
            arr = np.asarray(img).astype(np.int16) + rng.normal(0, 3, (size[1], size[0], 1)).astype(np.int16)
            dst = work / "large" / f"{i:03d}.jpg"
            dst.parent.mkdir(exist_ok=True)
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(dst, quality=90)
            made.append(str(dst))
        return made

    def compare(model, predictor, paths: list[str], labels: np.ndarray, size: int) -> dict[str, object]:
        keras_probs = predict_paths(model, paths, (size, size))
        t0 = time.perf_counter()
        device = predictor.predict(paths, top_k=1)
        device_s = time.perf_counter() - t0
        device_top1 = np.asarray([p.index for p in device])
        device_probs = np.concatenate([
            predictor.predict_batch(np.stack([load_resized(p, (size, size)) for p in paths[i:i + 64]])
                                    .astype(np.float32), raw=True) for i in range(0, len(paths), 64)])
        keras_top1 = keras_probs.argmax(1)
        scales = [jpeg_scale(*Image.open(p).size, (size, size)) for p in paths]
        return {
            "images": len(paths),
            "top1_agreement": round(float((device_top1 == keras_top1).mean()), 5),
            "disagreements": int((device_top1 != keras_top1).sum()),
            "keras_accuracy": round(float((keras_top1 == labels).mean()), 4),
            "device_accuracy": round(float((device_top1 == labels).mean()), 4),
            "device_images_per_s": round(len(paths) / device_s, 1),
            "max_abs_prob_diff": float(np.abs(device_probs - keras_probs).max()),
            "jpeg_scale_counts": {f"1/{m}": scales.count(m) for m in (1, 2, 4, 8) if scales.count(m)},
        }

    large_paths: list[str] = []
    for size in args.sizes:
        cfg = FinetuneConfig(data=args.data, model="mobilenet_v2", alpha=0.35, image_size=[size, size],
                             weights=str(WEIGHTS), epochs=2, fine_tune_epochs=0, steps_per_epoch=args.steps)
        run = work / f"run{size}"
        finetune(cfg, output=str(run), force=True, verbose=0)
        export_run(run, formats=("onnx",))
        val = rundir.RunDir(run).split()["val"]
        paths, labels = [p for p, _ in val], np.asarray([y for _, y in val])
        model = load_model(run / rundir.BEST)
        predictor = Predictor.load(run / "export" / "model.onnx", threads=2)
        if not predictor.jpeg_scaling:
            sys.exit("error: the export lacks the jpeg_scaling contract; run from this checkout")
        entry = compare(model, predictor, paths, labels, size)
        if args.large:
            stride = max(1, len(paths) // args.large)
            picked = list(range(0, len(paths), stride))[: args.large]
            if not large_paths:
                large_paths = upscale([paths[i] for i in picked])
            entry["large"] = compare(model, predictor, large_paths, labels[picked], size)
        out[str(size)] = entry
    out["goal"] = "top1_agreement >= 0.995 at every size, for the photos and for their upscaled copies"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Parity benchmark: does the device (Pillow + ONNX Runtime) see what training (TensorFlow) saw?

For each input size (96, 160, 224) it fine-tunes a head on MobileNetV2 alpha 0.35 with its real ImageNet
weights on the real photos in ``../shared/data/flowers`` (a short run: parity needs a real classifier, not
a good one), exports the float32 ONNX model, then classifies every validation photo *from its JPEG file*
twice: the Keras model through the training evaluation pipeline (``cvkeras.evaluate.predict_paths``:
TensorFlow decode + resize) and the ONNX model through ``serving.Predictor.predict`` (Pillow decode +
resize). Prints JSON: top-1 agreement and max |dp| per size. Goal: agreement >= 99.5 %.
Usage: ``python bench/parity.py [--sizes 96 160 224] [--steps 40]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "flowers"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 160, 224])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()

    import numpy as np

    from cvkeras import rundir
    from cvkeras.config import FinetuneConfig
    from cvkeras.evaluate import predict_paths
    from cvkeras.model import load_model
    from cvkeras.train import finetune
    from export import export_run
    from serving import Predictor
    from serving.preprocess import load_image, to_model_input

    out: dict[str, object] = {"benchmark": "parity", "data": args.data, "model": "mobilenet_v2 alpha 0.35"}
    work = Path(tempfile.mkdtemp(prefix="cvkeras-parity-"))
    for size in args.sizes:
        cfg = FinetuneConfig(data=args.data, model="mobilenet_v2", alpha=0.35, image_size=[size, size],
                             weights=str(WEIGHTS), epochs=2, fine_tune_epochs=0, steps_per_epoch=args.steps)
        run = work / f"run{size}"
        finetune(cfg, output=str(run), force=True, verbose=0)
        export_run(run, formats=("onnx",))
        val = rundir.read_split(run)["val"]
        paths, labels = [p for p, _ in val], np.asarray([y for _, y in val])
        keras_probs = predict_paths(load_model(run / rundir.BEST), paths, (size, size))
        predictor = Predictor.load(run / "export" / "model.onnx", threads=2)
        t0 = time.perf_counter()
        device = predictor.predict(paths, top_k=1)
        device_s = time.perf_counter() - t0
        device_top1 = np.asarray([p.index for p in device])
        device_probs = np.concatenate([
            predictor.predict_batch(to_model_input([load_image(p) for p in paths[i:i + 64]], (size, size)))
            for i in range(0, len(paths), 64)])
        keras_top1 = keras_probs.argmax(1)
        entry = {
            "images": len(paths),
            "top1_agreement": round(float((device_top1 == keras_top1).mean()), 5),
            "disagreements": int((device_top1 != keras_top1).sum()),
            "keras_accuracy": round(float((keras_top1 == labels).mean()), 4),
            "device_accuracy": round(float((device_top1 == labels).mean()), 4),
            "device_images_per_s": round(len(paths) / device_s, 1),
        }
        entry["max_abs_prob_diff"] = float(np.abs(device_probs - keras_probs).max())
        out[str(size)] = entry
    out["goal"] = "top1_agreement >= 0.995 at every size"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Scratch lab for issue #9, TFLite side: full-integer ``model_int8.tflite`` with and without GPTQ and bias
correction (cvkeras.export.tflite.weight_rounding, cvkeras.export.tflite.bias_correction), top-1 agreement with Keras.

    python bench/tflite_int8_lab.py RUN [OUT] [N]

Needs ``RUN/lab/data.npz`` (``python bench/int8_lab.py prep RUN``: the export's fidelity images, Keras
probabilities, calibration sample). Converts once (calibration images plus their mirror images, as the
export does), writes the variants to OUT (default /tmp/tflite_int8_lab) and reports each one's agreement
over the fidelity images, run by a plain LiteRT interpreter (default delegates, one thread), as
``serving.Predictor`` runs them. RUN is only read.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def agreement(blob: bytes, images: np.ndarray, keras_top1: np.ndarray) -> float:
    from ai_edge_litert.interpreter import Interpreter

    from cvkeras.export.tflite.bias_correction import feed

    it = Interpreter(model_content=blob, num_threads=1)
    it.allocate_tensors()
    out = it.get_output_details()[0]["index"]
    top1 = np.empty(len(images), np.int64)
    for k, image in enumerate(images):
        feed(it, image)
        it.invoke()
        top1[k] = int(np.argmax(it.get_tensor(out)[0]))
    return float((top1 == keras_top1).mean())


def main(run: Path, out: Path, n: int = 128) -> None:
    from cvkeras.export.exporter import load_float32_model
    from cvkeras.export.fidelity import with_flips
    from cvkeras.export.tflite import convert as to_tflite
    from cvkeras.export.tflite.bias_correction import correct_biases
    from cvkeras.export.tflite.weight_rounding import round_weights
    from cvkeras.run.rundir import RunDir

    out.mkdir(parents=True, exist_ok=True)
    d = np.load(run / "lab" / "data.npz")
    images, calib, top1 = d["images"], with_flips(d["calibration"]), d["keras"].argmax(1)
    model = load_float32_model(run, len(RunDir(run).labels()))
    t0 = time.perf_counter()
    with to_tflite.saved_model(model) as saved:
        ref = to_tflite.convert(saved, "float32")
        plain = to_tflite.convert(saved, "int8", calib, "uint8")
    print(f"converted in {time.perf_counter() - t0:.0f} s", flush=True)
    variants = {"plain": plain}
    t0 = time.perf_counter()
    variants["bc"], res = correct_biases(plain, ref, calib, n)
    print(f"bias correction: {res.summary()} ({time.perf_counter() - t0:.0f} s)", flush=True)
    t0 = time.perf_counter()
    variants["gptq"], done = round_weights(plain, ref, calib, n)
    print(f"gptq: {done} ({time.perf_counter() - t0:.0f} s)", flush=True)
    variants["gptq_bc"], res = correct_biases(variants["gptq"], ref, calib, n)
    print(f"gptq + bias correction: {res.summary()}", flush=True)
    for name, blob in variants.items():
        (out / f"{name}.tflite").write_bytes(blob)
        t0 = time.perf_counter()
        a = agreement(blob, images, top1)
        print(f"{name:8s} agreement {100 * a:.2f} % ({round((1 - a) * len(images))} flips of {len(images)}, "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/tflite_int8_lab"),
         int(sys.argv[3]) if len(sys.argv) > 3 else 128)

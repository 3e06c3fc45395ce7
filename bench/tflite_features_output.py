"""Two checks of the TFLite ``features`` output (docs/unknown.md), on an export with the unknown detector.

1. It does not change the classifier: each ``*.tflite`` file (and INT8_FILE) against a copy without that output, the
   same images through ``Predictor`` (max |p difference|, top-1 agreement).
2. Float or quantized: in the full-int8 file the output is the float32 DEQUANTIZE feeding the float head;
   the copy instead outputs that op's int8 input, which the runner dequantizes with the tensor's scale and
   zero point (max |score difference|, accept/reject agreement).

Usage: ``python bench/tflite_features_output.py EXPORT_DIR IMAGES_DIR [INT8_FILE]`` (INT8_FILE: a full-int8
file, e.g. one exported with ``--no-repair``; default EXPORT_DIR/model_int8.tflite). Prints JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from tensorflow.lite.tools import flatbuffer_utils

from cvkeras.serving.images import list_images
from cvkeras.serving.metadata import FailedModelWarning, sidecar_path
from cvkeras.serving.predictor import Predictor

DEQUANTIZE = 6  # BuiltinOperator code


def _rewrite(src: Path, dst: Path, change, unknown: bool = True) -> Path:
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(src.read_bytes()))
    change(model, model.subgraphs[0])
    dst.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    doc = json.loads(sidecar_path(src).read_text())
    doc["unknown"] = doc["unknown"] if unknown else None
    sidecar_path(dst).write_text(json.dumps(doc))
    return dst


def _run(path: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FailedModelWarning)
        p = Predictor.load(path, threads=1, mode="throughput")
    out = [p.predict_arrays(b.x, raw=True) for b in p.batches(files, 32)]
    scores = None if p.unknown is None else np.concatenate([s for _, s in out])
    return np.concatenate([q for q, _ in out]), scores


def _single_output(model, sub) -> None:
    sub.outputs = sub.outputs[:1]


def _quantized_output(model, sub) -> None:
    feats = int(sub.outputs[1])
    op = next(o for o in sub.operators if feats in list(o.outputs))
    if model.operatorCodes[op.opcodeIndex].builtinCode != DEQUANTIZE:
        raise SystemExit("the features output is not a DEQUANTIZE's output: not a full-int8 file")
    q = int(op.inputs[0])
    sub.outputs = [int(sub.outputs[0]), q]
    sub.tensors[q].name, sub.tensors[feats].name = b"features", None


def main() -> None:
    export, images = Path(sys.argv[1]), Path(sys.argv[2])
    int8 = Path(sys.argv[3]) if len(sys.argv) > 3 else export / "model_int8.tflite"
    files = [str(p) for p in list_images(images)]
    doc: dict = {"images": len(files), "without_features_output": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for src in sorted({*export.glob("model*.tflite"), int8}):
            a, _ = _run(src, files)
            b, _ = _run(_rewrite(src, Path(tmp) / src.name, _single_output, unknown=False), files)
            doc["without_features_output"][src.name] = {"max_abs_prob_diff": float(np.abs(a - b).max()),
                                                       "top1_same": float((a.argmax(1) == b.argmax(1)).mean())}
        _, s_float = _run(int8, files)
        _, s_q = _run(_rewrite(int8, Path(tmp) / "q.tflite", _quantized_output), files)
        thr = json.loads(sidecar_path(int8).read_text())["unknown"]["threshold"]
        doc["int8_quantized_vs_float_output"] = {
            "file": str(int8), "max_abs_score_diff": float(np.abs(s_float - s_q).max()),
            "decision_agreement": float(((s_float > thr) == (s_q > thr)).mean())}
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

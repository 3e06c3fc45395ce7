"""Helpers for the serving tests: tiny ONNX classifiers built with ``onnx.helper`` and small image sets.

The model is ``softmax(mean_hw(image) @ W + b)``: a real ONNX graph with the cvkeras input contract
(one float32 NHWC input named "image", dynamic batch) whose outputs numpy can compute exactly, so tests
check predictions against an independent reference. No TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cvkeras.serving.metadata import METADATA_KEY, ModelMetadata

LABELS = ["red", "green", "blue", "grey"]
SIZE = (12, 10)  # (height, width): not square, to catch H/W swaps
#: Class scores from mean RGB: each colour class follows its channel; "grey" likes balance.
WEIGHTS = np.array(
    [[0.09, -0.03, -0.03, 0.01],
     [-0.03, 0.09, -0.03, 0.01],
     [-0.03, -0.03, 0.09, 0.01]], dtype=np.float32)
BIAS = np.array([0.0, 0.0, 0.0, 0.5], dtype=np.float32)


def metadata(labels: list[str] = LABELS, size: tuple[int, int] = SIZE, **kw) -> ModelMetadata:
    return ModelMetadata(labels=list(labels), input_size=size, model_name="tiny_mean_rgb", **kw)


def make_onnx(path: Path, meta: ModelMetadata | None = None, weights: np.ndarray = WEIGHTS,
              bias: np.ndarray = BIAS, size: tuple[int, int] | None = SIZE, batch: int | None = None,
              output_name: str = "scores_out", with_metadata: bool = True) -> Path:
    """Write the mean-RGB classifier as ONNX (opset 17). ``size=None`` makes H and W dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w = size if size is not None else ("H", "W")
    n = batch if batch is not None else "N"
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [n, h, w, 3])
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [n, weights.shape[1]])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean4"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["mean4", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [output_name], axis=-1),
    ]
    init = [numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "b")]
    graph = helper.make_graph(nodes, "tiny", [x], [y], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    if with_metadata:
        prop = model.metadata_props.add()
        prop.key = METADATA_KEY
        prop.value = (meta or metadata(size=size or SIZE)).to_json()
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def reference_probs(x: np.ndarray, weights: np.ndarray = WEIGHTS, bias: np.ndarray = BIAS) -> np.ndarray:
    """The same classifier in float64 numpy: ``x`` float NHWC 0..255 -> probabilities (N, C)."""
    logits = x.astype(np.float64).mean(axis=(1, 2)) @ weights.astype(np.float64) + bias
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def photo(cls: int, rng: np.random.Generator, h: int = 30, w: int = 40) -> np.ndarray:
    """A smooth "photo" of class ``cls`` (0 red, 1 green, 2 blue, 3 grey): tinted gradient + noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 60 + 40 * np.sin(yy / 7.0 + rng.uniform(0, 3)) + 30 * np.cos(xx / 9.0)
    img = np.repeat(base[..., None], 3, axis=-1) + rng.normal(0, 8, (h, w, 3))
    if cls < 3:
        img[..., cls] += rng.uniform(60, 110)
    else:
        img += rng.uniform(20, 60)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_class_folder(root: Path, per_class: int = 4, seed: int = 0, labels: list[str] = LABELS,
                       wrong: int = 1) -> list[tuple[Path, int]]:
    """``root/<label>/<i>.png|jpg`` images; the last ``wrong`` of each class show the next class's colour
    (so accuracy is below 100 % by a known construction). Returns ``(path, label_index)`` items."""
    rng = np.random.default_rng(seed)
    items = []
    for c, name in enumerate(labels):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shown = (c + 1) % len(labels) if i >= per_class - wrong else c
            h, w = int(rng.integers(14, 40)), int(rng.integers(14, 40))
            path = root / name / f"{i:02d}.{'jpg' if i % 2 else 'png'}"
            Image.fromarray(photo(shown, rng, h, w)).save(path, quality=92)
            items.append((path, c))
    return items

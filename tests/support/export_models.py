"""Test helpers for export: a real, tiny, fine-tuned run directory made by hand per the run-dir contract.

The run holds three classes of coloured shapes (48x48 PNG/JPEG files on disk), a MobileNetV2 alpha 0.35
(random init) trained for a few steps so that it tells the classes apart with confidence, and the
``config.yaml`` / ``labels.txt`` / ``split.json`` / ``best.keras`` that ``cvkeras finetune`` writes.
The run is made once per test session (``make_tiny_run`` caches by folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ["red_disc", "green_bar", "blue_cross"]
SIZE = (48, 48)
SEED = 42
_CACHE: dict[str, Path] = {}


def _draw(cls: int, rng: np.random.Generator) -> np.ndarray:
    """One 64x64 image of class ``cls``: a dominant colour and a shape on a noisy background."""
    # A smooth tinted background with mild noise: colour dominates, so even random features separate it.
    img = rng.integers(30, 70) + rng.integers(0, 12, (64, 64, 3)).astype(np.int32)
    img[..., cls] += 100
    yy, xx = np.mgrid[0:64, 0:64]
    cy, cx = rng.integers(22, 42, 2)
    colour = np.zeros(3, dtype=np.int32)
    colour[cls] = int(rng.integers(190, 256))
    if cls == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(12, 20) ** 2
    elif cls == 1:
        mask = np.abs(yy - cy) < rng.integers(5, 10)
    else:
        w = rng.integers(3, 7)
        mask = (np.abs(yy - cy) < w) | (np.abs(xx - cx) < w)
    img[mask] = colour + rng.integers(-20, 20, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(root: Path, per_class: int = 20, seed: int = SEED) -> list[tuple[str, int]]:
    """Write ``per_class`` images per class under ``root/<label>/`` (PNG, every third one JPEG)."""
    rng = np.random.default_rng(seed)
    items: list[tuple[str, int]] = []
    for cls, name in enumerate(LABELS):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = "jpg" if i % 3 == 2 else "png"
            path = root / name / f"{name}_{i:03d}.{ext}"
            Image.fromarray(_draw(cls, rng)).save(path, **({"quality": 95} if ext == "jpg" else {}))
            items.append((str(path), cls))
    return items


def _split(items: list[tuple[str, int]], val_per_class: int) -> tuple[list, list]:
    train, val = [], []
    for cls in range(len(LABELS)):
        mine = [[p, c] for p, c in items if c == cls]
        val += mine[:val_per_class]
        train += mine[val_per_class:]
    return train, val


def _init_batchnorm(model, x: np.ndarray) -> None:
    """Data-dependent init of a random backbone's BatchNorm statistics (one scalar mean/variance per layer).

    A randomly initialised backbone with inference-mode BatchNorm (mean 0, variance 1) collapses every
    input to the same output; per-channel batch statistics make it chaotic instead. Pooled per-layer
    statistics keep colour information, so a few epochs of head training give a confident classifier.
    """
    import keras

    bns = [layer for layer in model.get_layer("backbone").layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model.get_layer("backbone")(model.get_layer("normalize")(x), training=True)
    for layer in bns:
        layer.momentum = 0.99
        for var in (layer.moving_mean, layer.moving_variance):
            v = np.asarray(var.numpy())
            var.assign(np.full_like(v, v.mean()))


def build_run(
    run: Path, data_root: Path, per_class: int = 20, val_per_class: int = 6, epochs: int = 20,
    model_name: str = "mobilenet_v2", alpha: float | None = 0.35,
) -> Path:
    """A finished run directory at ``run`` (images under ``data_root``), head trained ``epochs`` epochs."""
    import keras

    from cvkeras.data.decode import decoded_dataset
    from cvkeras.models.build import build_classifier
    from cvkeras.run import files as runfiles
    from cvkeras.run import rundir
    from cvkeras.run.config import FinetuneConfig
    from cvkeras.serving.formats import split_doc

    items = write_images(data_root, per_class)
    train, val = _split(items, val_per_class)
    keras.utils.set_random_seed(SEED)
    model = build_classifier(model_name, len(LABELS), SIZE, alpha=alpha, weights="none", dropout=0.0)
    x = np.concatenate([b.numpy() for b, _ in decoded_dataset([p for p, _ in train], [0] * len(train), SIZE)
                        .batch(64)])
    y = np.asarray([c for _, c in train])
    _init_batchnorm(model, x)
    model.get_layer("backbone").trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=True, verbose=0)
    run.mkdir(parents=True, exist_ok=True)
    rd = rundir.RunDir(run)  # not marked: a hand-made run, as a copied or older one would be
    runfiles.atomic_write(rd.best, lambda tmp: model.save(tmp))
    rd.write_labels(LABELS)
    rd.write_config(FinetuneConfig(data=str(data_root), model=model_name, alpha=alpha, image_size=list(SIZE),
                                   weights="none", dropout=0.0, seed=SEED, val_split=0.3))
    rd.write_split(split_doc("folder", str(data_root), SEED, LABELS, {"train": train, "val": val}))
    return run


def make_tiny_run(base: Path) -> Path:
    """The session's shared tiny run (built on first use under ``base``); treat it as read-only."""
    key = str(base)
    if key not in _CACHE:
        _CACHE[key] = build_run(base / "run", base / "data")
    return _CACHE[key]


def make_int8_hostile_run(tiny_run: Path, run: Path, factor: float = 1000.0) -> Path:
    """A copy of ``tiny_run`` whose model computes the same function but that per-tensor int8 cannot hold.

    Channel 0 of the backbone's last linear bottleneck (``block_16_project_BN``, no residual after it) is
    scaled up ``factor`` times and the input weights of the next 1x1 conv (``Conv_1``) for that channel
    scaled down as much: the float model is unchanged (to float rounding), but the bottleneck tensor's one
    per-tensor uint8 scale is set by the big channel, which rounds the other channels to a few levels, and
    ``Conv_1``'s per-output-channel weight scales round the shrunk weights to zero. Full int8 thus fails the
    gate on every CPU, whatever its int8 kernels; float layers at that spot repair it. The repair's ranking
    (each tensor's own rounding noise over its power) does not see that spot -- the big channel's power
    hides the crushed ones -- so repair ends up keeping nearly every layer float (53 of 53 measured).
    """
    import shutil

    import keras

    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("best.keras", "export"))
    model = keras.saving.load_model(tiny_run / "best.keras", safe_mode=True)
    backbone = model.get_layer("backbone")
    bn, conv = backbone.get_layer("block_16_project_BN"), backbone.get_layer("Conv_1")
    for var in (bn.gamma, bn.beta):
        v = np.asarray(var.numpy())
        v[0] *= factor
        var.assign(v)
    kernel = np.asarray(conv.kernel.numpy())
    kernel[:, :, 0, :] /= factor
    conv.kernel.assign(kernel)
    model.save(run / "best.keras")
    return run


def _register_svd():
    import keras

    @keras.saving.register_keras_serializable("cvkeras_export_tests")
    class Svd(keras.layers.Layer):
        """Singular values of the pooled colour vector: an op neither tf2onnx nor TFLite builtins support."""

        def call(self, x):
            import tensorflow as tf

            return tf.linalg.svd(tf.reshape(x, (-1, 3, 1)), compute_uv=False)

    return Svd


def __getattr__(name: str):
    if name == "Svd":  # built lazily so importing this module does not import Keras
        globals()["Svd"] = _register_svd()
        return globals()["Svd"]
    raise AttributeError(name)


def correction_effect(ref: np.ndarray, plain: np.ndarray, corrected: np.ndarray,
                      channel_axis: int) -> dict[str, float]:
    """How a bias correction changed a model's output error against ``ref``: the mean |per-channel mean
    error| (the shift it must remove) and the mean squared error, before (``plain``) and after."""
    axes = tuple(a for a in range(ref.ndim) if a != channel_axis % ref.ndim)
    err_plain, err_corr = plain - ref, corrected - ref
    return {"shift_plain": float(np.abs(err_plain.mean(axis=axes)).mean()),
            "shift_corrected": float(np.abs(err_corr.mean(axis=axes)).mean()),
            "mse_plain": float((err_plain**2).mean()), "mse_corrected": float((err_corr**2).mean())}


def float_weight_nodes(proto, head: bool = False) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes of an ONNX model whose weight is a float32 initializer, not a
    DequantizeLinear output: the layers an int8 file (or a loaded session's graph) really runs in float --
    besides the classifier feeding the output Softmax, which every int8 file keeps float by design
    (:func:`cvkeras.export.onnx.quantize.head_nodes`), unless ``head``."""
    import onnx

    from cvkeras.export.onnx.quantize import head_nodes

    inits = {t.name: t.data_type for t in proto.graph.initializer}
    classifier = set(head_nodes(proto.graph))
    return [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
            and inits.get(n.input[1]) == onnx.TensorProto.FLOAT and (head or n.name not in classifier)]


def save_onnx_net(path, name: str, nodes: list, inits: list) -> None:
    """An opset-13 ONNX model of ``nodes`` from input ``x`` (N, 3, 16, 16) to ``y`` (N, 4), saved at ``path``."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])
    graph = helper.make_graph(nodes, name, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def stem_onnx_net(path) -> None:
    """x/127.5 - 1, conv 3->16, depthwise 16, projection 16->8, expansion 8->48, pooled Gemm, Softmax (NCHW)."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Mul", ["x", "s"], ["xs"], name="norm_mul"),
        helper.make_node("Add", ["xs", "b"], ["xn"], name="norm_add"),
        helper.make_node("Conv", ["xn", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", group=16, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="project"),
        helper.make_node("Conv", ["c3", "w4", "b4"], ["c4"], name="expand"),
        helper.make_node("Relu", ["c4"], ["r4"], name="relu4"),
        helper.make_node("GlobalAveragePool", ["r4"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w5", "b5"], ["logits"], name="head", transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1),
    ]
    inits = [numpy_helper.from_array(np.array(1 / 127.5, np.float32), "s"),
             numpy_helper.from_array(np.array(-1.0, np.float32), "b"),
             init("w1", 16, 3, 3, 3), init("b1", 16), init("w2", 16, 1, 3, 3), init("b2", 16),
             init("w3", 8, 16, 1, 1), init("b3", 8), init("w4", 48, 8, 1, 1), init("b4", 48),
             init("w5", 4, 48), init("b5", 4)]
    save_onnx_net(path, "stem", nodes, inits)


def write_foreign(root: Path, n: int = 24, seed: int = 7) -> Path:
    """``n`` images of none of the tiny run's classes under ``root``: grey checkerboards, dark text-like
    dashes on light paper and colour noise (the generated foreign set of the unknown detector's tests)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if i % 3 == 0:
            yy, xx = np.mgrid[0:64, 0:64]
            step = int(rng.integers(4, 12))
            img = (((yy // step + xx // step) % 2) * 200 + 30)[..., None].repeat(3, 2)
        elif i % 3 == 1:
            img = np.full((64, 64, 3), 235)
            for r in range(4, 60, 8):
                img[r : r + 3, rng.integers(0, 20) : rng.integers(40, 64)] = 20
        else:
            img = rng.integers(0, 256, (64, 64, 3))
        Image.fromarray(img.astype(np.uint8)).save(root / f"foreign_{i:02d}.png")
    return root

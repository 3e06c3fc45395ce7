"""The seams between packages (issue #8): round trips of the files both sides read, one owner per rule,
and an import graph without cycles or arrows back up. Fast: no TensorFlow, no model."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvkeras.run.config import FinetuneConfig
from cvkeras.run.rundir import RunDir
from cvkeras.serving.errors import CvkerasError, RunDirError
from cvkeras.serving.formats import labels_text, read_labels, split_doc
from cvkeras.serving.reference import Reference

REPO = Path(__file__).resolve().parents[1]


# --- round trips -------------------------------------------------------------------------------------------

def test_finetune_config_round_trips_through_yaml():
    import yaml

    cfg = FinetuneConfig(data="demo:shapes", model="efficientnet_b0", alpha=None, image_size=[96, 128],
                         weights="none", learning_rate=3e-4, unfreeze="all", jit=True, steps_per_epoch=5, seed=7)
    doc = yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert FinetuneConfig.from_dict(doc) == cfg
    assert FinetuneConfig.from_dict(FinetuneConfig().to_dict()) == FinetuneConfig()


def test_config_refuses_a_list_where_text_belongs():
    with pytest.raises(CvkerasError, match="data.augment must be text"):
        FinetuneConfig.from_dict({"data": {"augment": ["light"]}})


def test_replayed_config_with_another_model_drops_width_and_size():
    base = FinetuneConfig(model="mobilenet_v2", alpha=0.35, image_size=[96, 96])
    assert base.merged({"model": "mobilenet_v2", "epochs": 2}).alpha == 0.35
    other = base.merged({"model": "efficientnet_b0"})
    assert (other.model, other.alpha, other.image_size) == ("efficientnet_b0", None, None)
    kept = base.merged({"model": "efficientnet_b0", "image_size": [64, 64]})
    assert kept.image_size == [64, 64]


def test_rundir_round_trip(tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = FinetuneConfig(data=str(tmp_path / "data"), model="mobilenet_v2", alpha=0.35, image_size=[48, 64],
                         seed=11, weights="none")
    split = split_doc("folder", str(tmp_path / "data"), 11, ["a", "b"],
                      {"train": [(str(tmp_path / "data/a/1.png"), 0)], "val": [(str(tmp_path / "data/b/2.png"), 1)]})
    run.write_config(cfg, {"precision": "float32", "replicas": 1})
    run.write_labels(["a", "b"])
    run.write_split(split)
    run.write_state({"stage": 2, "epoch": 1})
    assert run.config() == cfg
    assert run.run_info() == {"precision": "float32", "replicas": 1}
    assert (run.image_size(), run.seed(), run.model_name()) == ((48, 64), 11, "mobilenet_v2")
    assert run.labels() == ["a", "b"]
    assert run.split() == split
    assert run.state() == {"stage": 2, "epoch": 1}
    RunDir.open(run.path, need_model=False)  # every file a reader relies on checks out
    with pytest.raises(RunDirError, match="best.keras: missing"):
        RunDir.open(run.path)


def test_rundir_seed_defaults_to_the_config_default(tmp_path):
    """A config.yaml without data.seed: every reader gets FinetuneConfig's seed (once 42 here, 0 there)."""
    RunDir(tmp_path).write_config({"model": {"name": "mobilenet_v2", "image_size": [32, 32]}})
    assert RunDir(tmp_path).seed() == FinetuneConfig().seed == 42


def test_rundir_config_names_the_file_for_a_bad_field(tmp_path):
    RunDir(tmp_path).write_config({"model": {"name": "mobilenet_v2", "image_size": [32, 32]},
                                   "train": {"optimizer": {"adam": 1}}})
    with pytest.raises(RunDirError, match=r"config.yaml: config key train.optimizer must be text"):
        RunDir(tmp_path).config()


def test_labels_round_trip(tmp_path):
    (tmp_path / "labels.txt").write_text(labels_text(["daisy", "rose hip", "tulip"]))
    assert read_labels(tmp_path) == ["daisy", "rose hip", "tulip"]


def test_reference_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ref = Reference(rng.random((5, 3), dtype=np.float32), np.array([0, 1, 2, 1, 0]),
                    ["a/1.png", "b/2.png", "c/3.png", "b/4.png", "a/5.png"], 0.8,
                    splits=np.array(["val", "val", "train", "val", "train"]))
    (tmp_path / "reference.npz").write_bytes(ref.to_bytes())
    back = Reference.load(tmp_path)
    np.testing.assert_array_equal(back.probs, ref.probs)
    np.testing.assert_array_equal(back.labels, ref.labels)
    np.testing.assert_array_equal(back.splits, ref.splits)
    assert (back.paths, back.accuracy) == (ref.paths, 0.8)


# --- one image lister ----------------------------------------------------------------------------------------

def test_training_validation_and_prediction_see_the_same_images(tmp_path):
    from cvkeras.data.sources import scan_folder
    from cvkeras.serving.images import expand_paths
    from cvkeras.serving.validate import scan_class_folder

    root = tmp_path / "data"
    wanted = ["cat/a.png", "cat/nested/b.png", "dog/c.png", "dog/d.png"]
    for rel in [*wanted, "cat/.hidden.png", "dog/.thumbs/e.png", "__MACOSX/cat/f.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(root / rel)
    expected = sorted(str((root / rel).resolve()) for rel in wanted)
    trained = scan_folder(root, val_split=0.5, seed=0)
    assert sorted(p for p, _ in trained.train + trained.val) == expected
    assert sorted(str(p.resolve()) for p, _ in scan_class_folder(root, ["cat", "dog"])) == expected
    assert sorted(str(Path(p).resolve()) for p, e in expand_paths([root]) if e is None) == expected


# --- one error type ------------------------------------------------------------------------------------------

def test_every_expected_failure_is_a_cvkeras_error():
    from cvkeras.analysis.explain import ExplainError
    from cvkeras.data.sources import DataError
    from cvkeras.export.errors import ConversionError, ExportError
    from cvkeras.models.build import WeightsError
    from cvkeras.models.registry import UnknownModelError
    from cvkeras.run.files import RunLockedError
    from cvkeras.serving.metadata import MetadataError
    from cvkeras.serving.predictor import ModelError
    from cvkeras.serving.preprocess import ImageError
    from cvkeras.serving.validate import ValidationError
    from cvkeras.train.stages import TrainingDivergedError
    from cvkeras.train.trainer import RunExistsError

    for cls in (DataError, ExplainError, WeightsError, UnknownModelError, RunLockedError, RunExistsError,
                TrainingDivergedError, ConversionError, ExportError, MetadataError, ModelError, ImageError,
                ValidationError, RunDirError):
        assert issubclass(cls, CvkerasError), cls
    assert TrainingDivergedError.exit_code == 1 and ExportError.exit_code == 2


# --- layers ------------------------------------------------------------------------------------------------

#: The layer map (docs/architecture.md): each layer imports only from the layers below it.
LAYERS = (
    ("cvkeras.serving",),  # the device side: numpy, Pillow, onnxruntime / LiteRT
    ("cvkeras", "cvkeras.run", "cvkeras.data", "cvkeras.models", "cvkeras.train", "cvkeras.analysis",
     "cvkeras.search"),  # training, by concern
    ("cvkeras.export",),  # Keras -> ONNX / TFLite, checked
    ("cvkeras.cli",),  # the app: every command
)
#: The folders behind the one namespace (pyproject's package-dir).
FOLDERS = {"cvkeras": "cvkeras", "export": "cvkeras.export", "serving": "cvkeras.serving"}


def _layer(module: str) -> int:
    best = max((p for layer in LAYERS for p in layer if module == p or module.startswith(p + ".")), key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, pkg in FOLDERS.items():
        for f in (REPO / folder).rglob("*.py"):
            parts = [pkg, *f.relative_to(REPO / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = f
    return mods


def _import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):  # imports inside functions count too
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
                names = subs or [node.module]
            else:
                continue
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def test_every_module_has_one_layer_and_one_import_path():
    """One namespace: nothing imports the folders ``export``/``serving`` as top-level packages."""
    mods = _modules()
    assert {"cvkeras.cli", "cvkeras.export.onnx.quantize", "cvkeras.serving.predictor"} <= set(mods)
    for m in mods:
        _layer(m)
    stray = []
    for f in [*mods.values(), *(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py")]:
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            stray += [f"{f.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("export", "serving")]
    assert not stray, stray


def test_no_import_cycle_and_no_arrow_back_up():
    graph = _import_graph()
    back = [f"{m} -> {n}" for m, ns in graph.items() for n in ns if _layer(n) > _layer(m)]
    assert not back, back
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_tf_marker_follows_each_test_modules_imports():
    """``pytest -m "not tf"`` is what a device install can run: the marker comes from imports, not from a list."""
    from tests.support.markers import needs_train_extra

    tests = REPO / "tests"
    assert needs_train_extra(tests / "cvkeras" / "test_finetune.py")
    assert needs_train_extra(tests / "serving" / "test_serving_cli.py")  # builds its models with onnx
    assert not needs_train_extra(tests / "serving" / "test_serving_preprocess.py")

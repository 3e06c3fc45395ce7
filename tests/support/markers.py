"""Which tests need the ``train`` extra: found from their imports, so the ``tf`` marker cannot drift.

A test module needs it when it (or a ``tests.support`` module it uses) imports TensorFlow, Keras, tf2onnx,
onnx or PyYAML, or any part of cvkeras above the device side (``cvkeras.serving``). ``pytest -m "not tf"``
then runs what a device install (``pip install cvkeras``, no TensorFlow) can run.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
TRAIN_EXTRA = {"tensorflow", "keras", "tf2onnx", "onnx", "yaml", "tensorflow_datasets", "keras_tuner", "cleanlab"}
DEVICE_SIDE = ("cvkeras.serving",)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@cache
def needs_train_extra(path: Path) -> bool:
    """True when the test module at ``path`` cannot run without the train extra."""
    for name in _imports(path):
        top = name.split(".")[0]
        if top in TRAIN_EXTRA:
            return True
        if top == "cvkeras" and name != "cvkeras" and not name.startswith(DEVICE_SIDE):
            return True
        if name.startswith("tests.support.") or name.startswith("tests.cvkeras.") or name.startswith("tests.export."):
            dep = TESTS.joinpath(*name.split(".")[1:]).with_suffix(".py")
            if dep.is_file() and dep != path and needs_train_extra(dep):
                return True
    return False

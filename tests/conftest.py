"""Shared fixtures: tiny datasets written by the tests themselves (never ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_shapes(root: Path, per_class: int = 12, size: int = 40, classes=("circle", "square", "triangle"),
                 seed: int = 0, layout: str = "flat") -> Path:
    """Write a small class-folder dataset of the demo's shapes (``flat`` or ``split`` train/val)."""
    from cvkeras.demo import draw_shape

    rng = np.random.default_rng(seed)
    for kind in classes:
        for i in range(per_class):
            sub = (("val" if i % 4 == 0 else "train") if layout == "split" else "")
            folder = root / sub / kind
            folder.mkdir(parents=True, exist_ok=True)
            draw_shape(kind, rng, size).save(folder / f"{kind}_{i:03d}.png")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CVKERAS_CACHE", str(tmp_path_factory.getbasetemp() / "cvkeras-cache"))


@pytest.fixture
def shapes_dir(tmp_path) -> Path:
    return write_shapes(tmp_path / "shapes")

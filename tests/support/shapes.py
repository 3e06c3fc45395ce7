"""Tiny class-folder datasets of the demo's shapes, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_shapes(root: Path, per_class: int = 12, size: int = 40, classes=("circle", "square", "triangle"),
                 seed: int = 0, layout: str = "flat") -> Path:
    """Write a small class-folder dataset of the demo's shapes (``flat`` or ``split`` train/val)."""
    from cvkeras.data.demo import draw_shape

    rng = np.random.default_rng(seed)
    for kind in classes:
        for i in range(per_class):
            sub = (("val" if i % 4 == 0 else "train") if layout == "split" else "")
            folder = root / sub / kind
            folder.mkdir(parents=True, exist_ok=True)
            draw_shape(kind, rng, size).save(folder / f"{kind}_{i:03d}.png")
    return root

"""The demo's data: real flower photos and ImageNet weights shipped in the package, and ``demo:shapes``.

``FLOWERS`` is a class folder of CC BY 2.0 photos (5 classes, credited in ``ATTRIBUTION.txt`` beside them)
and ``WEIGHTS`` the official Keras MobileNetV2 alpha 0.35 no-top ImageNet file, checked against
``WEIGHTS_SHA256`` before use (``demo_weights``); both are package data, so ``cvkeras demo`` runs offline
from an installed wheel. See ``cvkeras/demo_data/README.md``.

``demo:shapes`` is a small synthetic class-folder dataset, generated on demand, for from-scratch runs.

Four classes (circle, square, triangle, cross) drawn with random colour, size, position and rotation on a
random noisy background. The set is deterministic and written once to the cache folder
(``$CVKERAS_CACHE`` or ``~/.cache/cvkeras``) as PNG files in ``train/`` and ``val/`` class folders.

Example:
    >>> root = ensure_demo("demo:shapes")   # -> ~/.cache/cvkeras/demo/shapes-v4
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cvkeras.serving.errors import OptionError

DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data"
FLOWERS = DEMO_DATA / "flowers"
WEIGHTS = DEMO_DATA / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
WEIGHTS_SHA256 = "df1c3db1d0d9193719c4c70f707c56f7021f999f825bdc57454c275cf6def19f"

CLASSES = ("circle", "square", "triangle", "cross")
DATASETS = ("shapes",)  # ``demo:NAME``
VERSION = "v4"


def cache_dir() -> Path:
    return Path(os.environ.get("CVKERAS_CACHE", Path.home() / ".cache" / "cvkeras"))


def demo_weights() -> Path:
    """The shipped weight file, after checking its checksum: a damaged install fails here with one line,
    not as a Keras error halfway through training."""
    path, sha256 = WEIGHTS, WEIGHTS_SHA256
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise OptionError(f"{path}: demo weights unreadable ({exc.strerror}); reinstall cvkeras[train]") from None
    if digest != sha256:
        raise OptionError(f"{path}: demo weights damaged (sha256 {digest[:12]}..., expected {sha256[:12]}...); "
                          "reinstall cvkeras[train]")
    return path


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
        pts = [(x * r * 0.8, y * r * 0.8) for x, y in corners]
    elif kind == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    else:  # cross: a plus sign as a 12-gon
        a, b = r, r * 0.33
        pts = [(b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b), (-b, -a), (b, -a), (b, -b), (a, -b), (a, b),
               (b, b)]
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]


def draw_shape(kind: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One image of ``kind`` with random colours, scale, position and rotation."""
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    noise = rng.integers(-12, 13, (size, size, 1))
    img = Image.fromarray(np.clip(np.array(bg)[None, None] + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    fg = rng.integers(0, 256, 3)
    while np.abs(fg - np.array(bg)).sum() < 150:  # keep the shape visible
        fg = rng.integers(0, 256, 3)
    r = float(rng.uniform(0.22, 0.42) * size)
    cx, cy = (float(rng.uniform(r, size - r)) for _ in range(2))
    fill = tuple(int(v) for v in fg)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi))), fill=fill)
    return img


def generate(root: str | os.PathLike, per_class: int = 600, val_fraction: float = 0.25, size: int = 64,
             seed: int = 0) -> Path:
    """Write the dataset to ``root/{train,val}/<class>/*.png``; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_val = int(round(per_class * val_fraction))
    for kind in CLASSES:
        for i in range(per_class):
            split = "val" if i < n_val else "train"
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            draw_shape(kind, rng, size).save(folder / f"{kind}_{i:03d}.png")
    return root


def ensure_demo(spec: str = "demo:shapes") -> Path:
    """Return the folder of a demo dataset, generating it on first use (atomically, by rename)."""
    name = spec.split(":", 1)[1] if ":" in spec else spec
    if name not in DATASETS:
        raise OptionError(f"{spec}: unknown demo dataset; the built-in one is demo:shapes")
    target = cache_dir() / "demo" / f"shapes-{VERSION}"
    if not (target / "val").is_dir():
        import shutil
        import tempfile

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".shapes-", dir=target.parent))
        try:
            generate(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return target

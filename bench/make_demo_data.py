"""Rebuild the demo's packaged photo set (``cvkeras/demo_data/flowers``) from the full flowers set.

A seeded sample of ``--per-class`` photos of each class (byte-duplicates and near copies of a photo already
picked left out, by the pHash test ``cvkeras finetune`` runs, so the demo's leak check starts clean), scaled down to
``--size`` px on the long side and re-encoded as JPEG, plus ``ATTRIBUTION.txt``: each shipped photo's author,
source and licence, copied from the set's own ``LICENSE.txt``. Run it only to change the shipped set:

    python bench/make_demo_data.py /work/shared/data/flowers cvkeras/demo_data/flowers
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from cvkeras.data.duplicates import file_signature, near_pairs

HEADER = """Demo photos of `cvkeras demo`: {n} photos, {per_class} of each class, sampled (seed {seed}) from the
TensorFlow "flower_photos" set (copies and near copies of a picked photo left out) and scaled down to at
most {size} px on the long side (JPEG quality {quality}).
Source: {source}
All images are licensed under the Creative Commons Attribution 2.0 licence,
https://creativecommons.org/licenses/by/2.0/ -- credit the photographers listed below when you use them.
Changes: scaled down and re-encoded; nothing else.

"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="flowers folder with class sub-folders and LICENSE.txt")
    ap.add_argument("target", type=Path)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", nargs="*", help="class folders to ship (default: all)")
    args = ap.parse_args()
    licence = (args.source / "LICENSE.txt").read_text(encoding="utf-8").splitlines()
    credits = {line.split(" ", 1)[0]: line for line in licence if " CC-BY " in line}
    url = next(line for line in licence if line.startswith("http"))
    if args.target.exists():
        shutil.rmtree(args.target)
    rng = random.Random(args.seed)
    seen: set[str] = set()
    hashes: list[int] = []
    layouts: list = []
    lines = []
    classes = args.classes or sorted(d.name for d in args.source.iterdir() if d.is_dir())
    for cls in classes:
        files = sorted((args.source / cls).glob("*.jpg"))
        rng.shuffle(files)
        picked = 0
        for f in files:
            key = f"{cls}/{f.name}"
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            if key not in credits or digest in seen:
                continue
            sig = file_signature(str(f))
            if hashes and near_pairs(np.array([*hashes, sig.phash], np.uint64), np.stack([*layouts, sig.layout]),
                                     rows=np.array([len(hashes)])):
                continue
            seen.add(digest)
            hashes.append(sig.phash)
            layouts.append(sig.layout)
            img = Image.open(f).convert("RGB")
            img.thumbnail((args.size, args.size), Image.Resampling.LANCZOS)
            (args.target / cls).mkdir(parents=True, exist_ok=True)
            img.save(args.target / cls / f.name, quality=args.quality, optimize=True)
            lines.append(credits[key])
            picked += 1
            if picked == args.per_class:
                break
    header = HEADER.format(n=len(lines), per_class=args.per_class, seed=args.seed, size=args.size,
                           quality=args.quality, source=url)
    (args.target / "ATTRIBUTION.txt").write_text(header + "\n".join(sorted(lines)) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""CI step: install cvkeras from a built wheel, as users do, and run both sides from it.

1. ``pip wheel --no-deps .`` builds the wheel; it must hold every file of ``cvkeras/demo_data`` (the photos,
   their credits, the weights with the recorded checksum).
2. Training side (``pip install 'cvkeras[train]'``): a fresh venv gets the wheel with ``--no-deps`` and reuses
   the main venv's packages (TensorFlow is not installed a second time); from the installed package, outside
   the repository, ``cvkeras demo`` (the shipped photos and weights, finetune, export, validate, predict)
   must exit 0.
3. Device side (``pip install cvkeras``): another fresh venv installs the wheel with its core dependencies
   only; TensorFlow must not be importable there, and ``cvkeras predict`` / ``validate`` on the model the
   demo's device steps ran must exit 0.

Usage: ``.venv/bin/python .ci/wheel_check.py [--keep DIR]`` (the interpreter is the main venv's).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def clean_env() -> dict[str, str]:
    """The environment without anything that points Python at the repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    return path / "bin"


def check_wheel(wheel: Path) -> None:
    """Every demo data file is in the wheel, byte for byte; the weights match their recorded checksum."""
    sys.path.insert(0, str(ROOT))
    from cvkeras.data.demo import WEIGHTS, WEIGHTS_SHA256

    data = ROOT / "cvkeras" / "demo_data"
    wanted = {f"cvkeras/{p.relative_to(data.parent).as_posix()}": p for p in data.rglob("*") if p.is_file()}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        missing = sorted(set(wanted) - names)
        if missing:
            sys.exit(f"wheel_check: {wheel.name} lacks {len(missing)} demo data files, e.g. {missing[:3]}")
        for name, path in wanted.items():
            if zf.read(name) != path.read_bytes():
                sys.exit(f"wheel_check: {name} in {wheel.name} differs from the repository's")
        rel = f"cvkeras/{WEIGHTS.relative_to(data.parent).as_posix()}"
        if hashlib.sha256(zf.read(rel)).hexdigest() != WEIGHTS_SHA256:
            sys.exit(f"wheel_check: {rel} in {wheel.name} does not match its recorded sha256")
    photos = sum(n.endswith(".jpg") for n in wanted)
    print(f"wheel_check: {wheel.name}: {len(wanted)} demo data files ({photos} photos), weights checksum ok")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cvkeras-wheel-"))
    work.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    try:
        src, dist = work / "src", work / "dist"  # a clean copy: no stale build/ folder, nothing written to ROOT
        for folder in (src, dist):
            shutil.rmtree(folder, ignore_errors=True)
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, src / name)
        for pkg in ("cvkeras", "export", "serving"):
            shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)], work, env)
        (wheel,) = dist.glob("cvkeras-*.whl")
        check_wheel(wheel)

        train = venv(work / "train")
        site = Path(subprocess.check_output([str(train / "python"), "-c", "import sysconfig; "
                                             "print(sysconfig.get_paths()['purelib'])"], text=True).strip())
        (site / "main_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
        sh([str(train / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)], work, env)
        where = subprocess.check_output([str(train / "python"), "-c", "import cvkeras; print(cvkeras.__file__)"],
                                        cwd=work, env=env, text=True).strip()
        if not Path(where).is_relative_to(site):
            sys.exit(f"wheel_check: the train venv imports cvkeras from {where}, not from the wheel")
        start = time.monotonic()
        run = work / "run"
        sh([str(train / "cvkeras"), "demo", "--output", str(run)], work, env)
        print(f"wheel_check: `cvkeras demo` from the wheel ok in {time.monotonic() - start:.0f} s")

        device = venv(work / "device")
        sh([str(device / "pip"), "install", "-q", str(wheel)], work, env)
        probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)"
        if subprocess.run([str(device / "python"), "-c", probe], cwd=work, env=env).returncode:
            sys.exit("wheel_check: TensorFlow is importable in the device venv; the device check proves nothing")
        model = run / "export" / "model_int8.onnx"  # the demo's device steps ran it, or model.onnx if refused
        model = model if model.is_file() else run / "export" / "model.onnx"
        photo = next((work / "device").glob("lib/python*/site-packages/cvkeras/demo_data/flowers/roses/*.jpg"))
        sh([str(device / "cvkeras"), "predict", str(model), str(photo), "--top-k", "2"], work, env)
        sh([str(device / "cvkeras"), "validate", str(model), "--run", str(run)], work, env)
        print("wheel_check: device install (no TensorFlow) ran predict and validate on the exported model")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

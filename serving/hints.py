"""The one-line messages for a model path that cannot be served: not a model file (what it is instead, and
what to pass or run), or a model that ``cvkeras export`` marked failed. Device side (the model-file names of
:mod:`cvkeras.serving.metadata`).
"""

from __future__ import annotations

from pathlib import Path

from cvkeras.serving.metadata import failed_name

#: Export flag that writes each reduced-precision file (see ``cvkeras export --help``).
_EXPORT_FLAG = {"int8": "--int8", "dynamic": "--int8", "fp16": "--fp16"}


def _models_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.glob("*") if f.suffix in (".onnx", ".tflite") and f.is_file())


def failed_model_line(p: Path, reason: str) -> str:
    """What to say about a model whose metadata marks it failed (kept by export for inspection only)."""
    return (f"{p}: this model FAILED its export check ({reason}); it is kept for inspection, not for "
            "deployment -- see export_report.json and use a model that passed")


def not_a_model_hint(p: Path) -> str:
    """The error line for a model path that is not a file: what it is instead, and what to pass or run."""
    if not p.exists() and failed_name(p).is_file():
        return (f"{p}: failed its export check and was kept as {failed_name(p).name} for inspection only "
                f"(see {p.parent / 'export_report.json'}); deploy a model that passed, or re-export")
    if p.is_dir():
        models = _models_in(p) or _models_in(p / "export")
        if models:
            return (f"{p}: a folder, not a model file; pass one of its exported models: "
                    f"{', '.join(str(m) for m in models)}")
        if (p / "best.keras").is_file():
            return f"{p}: a run folder with no exported model yet; run `cvkeras export {p}` first"
        return f"{p}: a folder, not a model file; pass an .onnx or .tflite from `cvkeras export`"
    variant = next((v for v in _EXPORT_FLAG if p.stem.endswith("_" + v)), None)
    if variant and p.parent.is_dir() and _models_in(p.parent):
        run = p.parent.parent if p.parent.name == "export" else Path("RUN")
        return (f"{p}: not exported; `cvkeras export {run} {_EXPORT_FLAG[variant]}` writes it "
                f"(this folder has {', '.join(m.name for m in _models_in(p.parent))})")
    return f"{p}: model file not found; pass an .onnx or .tflite from `cvkeras export`"

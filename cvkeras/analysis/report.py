"""``report.html``: one self-contained page a person would rather look at than read a run directory.

Sections (each an ``<section id=...>``): summary, curves, confusion, per-class, calibration (temperature, ECE
and NLL before and after, reliability diagram), mistakes (the highest-confidence wrong validation predictions,
each with its Grad-CAM overlay), skipped files, the export
table (when ``RUN/export/export_report.json`` exists) and the config. Images are embedded as base64 PNG,
there are no scripts and no external resources, so the file opens from disk, offline, anywhere.

Example:
    >>> write_report("runs/flowers")   # -> runs/flowers/report.html
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from cvkeras.data.duplicates import LEAKS
from cvkeras.serving.errors import first_line

REPORT = "report.html"
EXPORT_REPORT = Path("export") / "export_report.json"
#: Columns of the export table, in order, when the artifact rows carry them.
EXPORT_COLUMNS = ("name", "status", "paired_accuracy", "accuracy_drop", "agreement", "n_paired",
                  "held_back_agreement", "n_held_back", "ece", "size_bytes", "latency_ms_per_image")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;
color:#222;padding:0 1rem}h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f4f6f8}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.gallery{display:flex;flex-wrap:wrap;gap:1rem}.card{width:15rem;font-size:.85rem}
.card img{width:15rem;image-rendering:pixelated;border:1px solid #ccc}.muted{color:#777}
.passed{color:#1a7f37}.failed,.error{color:#cf222e}pre{background:#f6f8fa;padding:.8rem;overflow:auto}
"""


def png_b64(data: bytes) -> str:
    """PNG bytes as a ``data:`` URL, so the page needs no other file."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def img_tag(src: bytes | Path, alt: str) -> str:
    """An inline ``<img>`` of a PNG file or PNG bytes."""
    data = src.read_bytes() if isinstance(src, Path) else src
    return f'<img src="{png_b64(data)}" alt="{html.escape(alt)}">'


def array_png(arr: np.ndarray, scale: int = 1) -> bytes:
    """An RGB array as PNG bytes, enlarged ``scale`` times (nearest neighbour)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(arr, dtype=np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def html_table(header: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    """An escaped HTML table; ``classes`` gives each row a CSS class (e.g. an export status)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{html.escape(classes[i])}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def fmt_value(value: Any, key: str = "") -> str:
    """One value as the page shows it (accuracies as percentages, drops as signed points)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if key == "accuracy_drop":  # a fraction in export_report.json, shown in points as on the console
            return f"{100 * value:+.2f} points"
        if key in ("accuracy", "agreement") or key.endswith(("_accuracy", "_agreement")):
            return f"{100 * value:.2f} %"
        return f"{value:.4g}"
    if key == "size_bytes" and isinstance(value, int):
        return f"{value / 1e6:.2f} MB"
    return str(value)


def worst_mistakes(run: str | os.PathLike, model: Any, limit: int = 8) -> list[dict[str, Any]]:
    """The ``limit`` most confident wrong predictions on the run's validation split, with Grad-CAM overlays."""
    from cvkeras.analysis.explain import default_layer, gradcam, overlay
    from cvkeras.data.pipeline import load_split_images
    from cvkeras.run.rundir import RunDir

    images, labels, paths = load_split_images(run, "val")
    if not len(images):
        return []
    probs = model.predict(images.astype(np.float32), batch_size=64, verbose=0)
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:limit]
    if not len(wrong):
        return []
    rd = RunDir(run)
    names = rd.labels()
    model_name = rd.model_name()
    heat, _ = gradcam(model, images[wrong].astype(np.float32), default_layer(model, model_name))
    scale = max(1, 160 // max(images.shape[1:3]))
    return [{"path": str(paths[i]), "true": names[int(labels[i])], "predicted": names[int(pred[i])],
             "confidence": float(probs[i, pred[i]]), "png": array_png(overlay(images[i], h), scale)}
            for i, h in zip(wrong, heat, strict=True)]


def build_html(run: str | os.PathLike, mistakes: list[dict[str, Any]] | None = None) -> str:
    """The page for a run directory (reads what is there; missing parts say so instead of failing)."""
    from cvkeras.run.rundir import CONFUSION, CURVES, SKIPPED, RunDir

    rd = RunDir(run)
    run = rd.path
    cfg = rd.config_doc(checked=False)
    metrics = rd.metrics()
    model_name = (cfg.get("model") or {}).get("name", "?")
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>cvkeras report: "
             f"{html.escape(run.name)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(run.name)}</h1><p class=muted>{html.escape(str(run.resolve()))}</p>"]

    acc = metrics.get("accuracy")
    summary = [["model", model_name], ["classes", len(metrics.get("classes", []))],
               ["validation images", metrics.get("n", "-")],
               ["validation accuracy (selection: the best epoch was chosen on these images)",
                fmt_value(acc, "accuracy") if acc is not None else "-"],
               ["macro F1", fmt_value(metrics.get("macro_f1"))]]
    test = metrics.get("test")
    if test:
        summary.append([f"test accuracy (evaluated once, {test.get('n', '-')} images)", fmt_value(test.get("accuracy"),
                                                                                            "accuracy")])
    parts.append(f'<section id="summary"><h2>Summary</h2>{html_table(["", "value"], summary)}</section>')

    curves = rd / CURVES
    parts.append('<section id="curves"><h2>Training curves</h2>'
                 + (img_tag(curves, "training curves") if curves.is_file() else "<p>no curves.png yet</p>")
                 + "</section>")
    confusion = rd / CONFUSION
    parts.append('<section id="confusion"><h2>Confusion matrix</h2>'
                 + (img_tag(confusion, "confusion matrix") if confusion.is_file() else "<p>no confusion matrix</p>")
                 + "</section>")

    per_class = metrics.get("per_class") or {}
    rows = [[name, *(f"{float(v.get(k, float('nan'))):.3f}" for k in ("precision", "recall", "f1")),
             v.get("support", "-")]
            for name, v in per_class.items()]
    parts.append('<section id="per-class"><h2>Per class</h2>'
                 + (html_table(["class", "precision", "recall", "F1", "support"], rows) if rows
                    else "<p>no metrics</p>")
                 + "</section>")

    from cvkeras.analysis.calibration import report_parts

    text, header, rows, png = report_parts(metrics)
    parts.append(f'<section id="calibration"><h2>Calibration</h2><p class=muted>{text}</p>'
                 + (html_table(header, rows) + img_tag(png, "reliability diagram") if png else "") + "</section>")

    cards = []
    for m in mistakes or []:
        cards.append(f'<div class="card">{img_tag(m["png"], Path(m["path"]).name)}<br><b>{html.escape(m["predicted"])}'
                     f'</b> {m["confidence"]:.1%}, true <b>{html.escape(m["true"])}</b><br>'
                     f'<span class=muted>{html.escape(Path(m["path"]).name)}</span></div>')
    parts.append('<section id="mistakes"><h2>Worst validation mistakes</h2><p class=muted>Highest-confidence wrong '
                 "predictions, Grad-CAM of the predicted class over the image as the model saw it.</p>"
                 + (f'<div class="gallery">{"".join(cards)}</div>' if cards else "<p>no mistakes</p>")
                 + "</section>")

    skipped = rd.text_lines(SKIPPED)
    parts.append('<section id="skipped"><h2>Skipped files</h2>'
                 + (html_table(["file", "reason"], [line.split("\t", 1) + [""] * (1 - line.count("\t"))
                                                for line in skipped]) if skipped else "<p>none</p>")
                 + "</section>")

    leaks = rd.text_lines(LEAKS)
    if leaks:
        rows = [(line.split("\t") + [""] * 4)[:4] for line in leaks]
        parts.append('<section id="duplicates"><h2>Validation copies of training images</h2><p class=muted>Exact '
                     "or near copies across splits inflate validation figures; <code>--dedupe</code> drops them."
                     "</p>" + html_table(["held-out image", "copy of training image", "kind", ""], rows) + "</section>")

    export_doc = rd.json_doc(EXPORT_REPORT)
    if export_doc is not None:
        from cvkeras.serving.schema import upgrade_export_report

        doc = upgrade_export_report(export_doc)  # an older export's too
        arts = doc.get("artifacts", [])
        cols = [c for c in EXPORT_COLUMNS if any(c in a for a in arts)]
        rows = [[fmt_value(a.get(c), c) for c in cols] for a in arts]
        parts.append('<section id="export"><h2>Export</h2><p class=muted>accuracy, drop and agreement on the '
                     '<code>n_paired</code> validation images (the gates); held-back agreement on training images '
                     'the model saw, reported apart and never gated.</p>'
                     + html_table(cols, rows, [str(a.get("status", "")) for a in arts]) + "</section>")
    import yaml

    parts.append('<section id="config"><h2>Config</h2><pre>'
                 f'{html.escape(yaml.safe_dump(cfg, sort_keys=False) if cfg else "no config.yaml")}</pre></section>')

    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(run: str | os.PathLike, mistakes: int = 8) -> Path:
    """Write ``RUN/report.html`` (atomically) with the ``mistakes`` worst validation errors explained."""
    from cvkeras.models.build import load_model
    from cvkeras.run.files import atomic_write
    from cvkeras.run.rundir import RunDir

    rd = RunDir.open(run)
    gallery = worst_mistakes(rd.path, load_model(rd.best), mistakes) if mistakes else []
    return atomic_write(rd / REPORT, build_html(rd.path, gallery))


def refresh(run: str | os.PathLike, warn: Any = print) -> Path | None:
    """Rewrite the report after finetune or export; a failure is one warning line (the run itself is complete
    and intact), never a lost run."""
    try:
        return write_report(run)
    except Exception as exc:  # noqa: BLE001 -- the report is a view; its failure must not undo a finished run
        why = first_line(exc, 200)
        warn(f"warning: report.html not written ({type(exc).__name__}: {why}); retry with `cvkeras report {run}`")
        return None

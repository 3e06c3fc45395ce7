"""``check.html``: the findings of ``cvkeras check`` with a thumbnail of every photo named, one self-contained
page like ``report.html`` (its styles and image embedding; base64 PNGs, no scripts, no external resources).

Example:
    >>> write_page(doc, analysis, "check-out")   # -> check-out/check.html and check-out/check.json
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from cvkeras.analysis.report import CSS, array_png, html_table, img_tag

PAGE = "check.html"
DOCUMENT = "check.json"
MAX_CARDS = 60  # per section: the page stays a few MB on a set with thousands of findings


def _esc(value: Any) -> str:
    return html.escape(str(value))


def build_page(doc: dict[str, Any], analysis: Any) -> str:
    """The page for one ``cvkeras.check/1`` document; thumbnails come from ``analysis.thumbnail``."""
    from cvkeras.data.check import summary_rows

    index = {k: i for i, k in enumerate(analysis.keys)}
    thumbs: dict[str, str] = {}

    def thumb(key: str) -> str:
        if key not in thumbs:
            thumbs[key] = img_tag(array_png(analysis.thumbnail(index[key])), Path(key).name)
        return thumbs[key]

    def card(key: str, lines: list[str]) -> str:
        return (f'<div class="card">{thumb(key)}<br>' + "<br>".join(lines)
                + f'<br><span class=muted>{_esc(key)}</span></div>')

    def section(sid: str, title: str, note: str, cards: list[str]) -> str:
        shown = cards[:MAX_CARDS]
        more = f"<p class=muted>first {len(shown)} of {len(cards)}; all are in {DOCUMENT}</p>" if len(cards) > len(
            shown) else ""
        body = f'<div class="gallery">{"".join(shown)}</div>{more}' if cards else "<p>none found</p>"
        return f'<section id="{sid}"><h2>{_esc(title)}</h2><p class=muted>{_esc(note)}</p>{body}</section>'

    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>cvkeras check: {_esc(doc['data'])}"
             f"</title><style>{CSS}.group{{display:flex;gap:.5rem;flex-wrap:wrap;border:1px solid #ddd;"
             f"padding:.5rem;margin:.5rem 0}}.leak{{border-color:#cf222e}}.card{{overflow-wrap:anywhere}}"
             "</style></head><body>",
             f"<h1>check: {_esc(doc['data'])}</h1><p class=muted>backbone {_esc(doc['model'])} "
             f"({_esc(doc['weights'])}), {doc['seconds']:.1f} s</p>",
             f'<section id="summary"><h2>Summary</h2>{html_table(["finding", "count"], summary_rows(doc))}</section>']

    groups = []
    for g in doc["duplicates"][:MAX_CARDS]:
        tags = [g["kind"]] + (["across splits"] if g["cross_split"] else []) + (
            ["conflicting labels"] if g["conflicting_labels"] else [])
        cards = [card(p, [f"<b>{_esc(c)}</b> ({_esc(s)})"]) for p, s, c in zip(g["paths"], g["splits"], g["labels"],
                                                                             strict=True)]
        groups.append(f'<div class="group{" leak" if g["cross_split"] else ""}"><b>{_esc(", ".join(tags))}</b>'
                      f'{"".join(cards)}</div>')
    more = (f"<p class=muted>first {MAX_CARDS} of {len(doc['duplicates'])}; all are in {DOCUMENT}</p>"
            if len(doc["duplicates"]) > MAX_CARDS else "")
    parts.append('<section id="duplicates"><h2>Duplicates</h2><p class=muted>Exact and near copies; groups that '
                 "span splits (leaks into validation) are outlined red and listed first.</p>"
                 + ("".join(groups) + more if groups else "<p>none found</p>") + "</section>")
    parts.append(section("label-issues", "Likely label errors", "cleanlab on out-of-fold probabilities; most "
                         "likely first.",
                         [card(d["path"], [f"filed <b>{_esc(d['given'])}</b>, looks <b>{_esc(d['suggested'])}</b>",
                                           f"quality {d['score']:.3f}"]) for d in doc["label_issues"]]))
    parts.append(section("outliers", "Outliers", "Unlike the rest of their class (kNN score within the class).",
                         [card(d["path"], [f"<b>{_esc(d['class'])}</b> score {d['score']:.3f}"])
                          for d in doc["outliers"]]))
    parts.append(section("small-images", "Tiny or extreme-aspect images", "A square model input serves them badly.",
                         [card(d["path"], [f"{d['width']}x{d['height']} px, {_esc(d['why'])}"])
                          for d in doc["small_images"]]))
    rows = [[c, v["train"], v["val"], v["test"], v["total"]] for c, v in doc["classes"].items()]
    parts.append(f'<section id="classes"><h2>Classes</h2>{html_table(["class", "train", "val", "test", "total"], rows)}'
                 "</section>")
    skipped = [[d["path"], d["reason"]] for d in doc["skipped"]]
    parts.append('<section id="skipped"><h2>Skipped files</h2>'
                 + (html_table(["file", "reason"], skipped) if skipped else "<p>none</p>") + "</section>")
    parts.append("</body></html>\n")
    return "".join(parts)


def check_output(output: str | os.PathLike) -> Path:
    """``output`` as a Path, refused (before any work) when it exists and is not a folder."""
    from cvkeras.data.check import CheckError

    out = Path(output)
    if out.exists() and not out.is_dir():
        raise CheckError(f"{out}: not a folder; pass --output a folder for check.html")
    return out


def write_page(doc: dict[str, Any], analysis: Any, output: str | os.PathLike) -> Path:
    """Write ``OUTPUT/check.html`` and ``OUTPUT/check.json`` (each atomically); returns the page's path."""
    import json

    from cvkeras.run.files import atomic_write

    out = check_output(output)
    page = build_page(doc, analysis)
    atomic_write(out / DOCUMENT, json.dumps(doc, indent=1) + "\n")
    return atomic_write(out / PAGE, page)

"""`report.html`: written by finetune, refreshed by export, every section present, every image decodes, and a
real browser renders it offline with no console errors."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from tests.support.cli import TINY, invoke

# MobileNet alpha 0.25: traces in half the time of MobileNetV2 alpha 0.35; no test here is about the backbone
SECTIONS = {"summary", "config", "curves", "confusion", "per-class", "calibration", "mistakes", "skipped"}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.cards = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "div" and a.get("class") == "card":
            self.cards += 1


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from tests.support.shapes import write_shapes

    base = tmp_path_factory.mktemp("report")
    data = write_shapes(base / "shapes", per_class=12, size=40)
    (data / "circle" / "broken.png").write_bytes(b"\x89PNG broken")
    out = base / "run"
    done = invoke("finetune", data, *TINY, "--epochs", "1", "--fine-tune-epochs", "0", "--output", out)
    assert done.exit_code == 0, done.output[-2000:]
    return out


@pytest.mark.slow
def test_finetune_writes_a_self_contained_report(run):
    import json

    report = run / "report.html"
    assert report.is_file()
    page = _parse(report)
    assert SECTIONS <= set(page.sections)
    assert "export" not in page.sections  # nothing exported yet
    assert "script" not in page.tags and not re.search(r"(src|href)=\"?https?:", report.read_text())
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    for src in page.images:
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            assert im.width > 10 and im.height > 10
    metrics = json.loads((run / "metrics.json").read_text())
    wrong = metrics["n"] - int(round(metrics["accuracy"] * metrics["n"]))
    assert page.cards == min(8, wrong)
    assert len(page.images) == 3 + page.cards  # curves, confusion, reliability diagram, one overlay per mistake
    text = report.read_text()
    for cls in ("circle", "square", "triangle"):
        assert f"<td>{cls}</td>" in text
    assert "broken.png" in text  # the skipped file is listed


@pytest.mark.slow
def test_export_refreshes_the_report_with_its_table(run):
    before = (run / "report.html").stat().st_mtime_ns
    result = invoke("export", run, "--format", "onnx", "--threads", "1")
    assert result.exit_code == 0, result.output[-2000:]
    page = _parse(run / "report.html")
    assert (run / "report.html").stat().st_mtime_ns > before
    assert "export" in page.sections
    assert "model.onnx" in (run / "report.html").read_text()
    again = invoke("report", run, "--mistakes", "0")
    assert again.exit_code == 0 and "Report saved to" in again.stdout
    assert _parse(run / "report.html").cards == 0


def test_report_of_a_missing_run_is_one_line(tmp_path):
    result = invoke("report", tmp_path / "nope")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "run directory not found" in result.stderr


@pytest.mark.slow
def test_report_renders_in_a_real_browser(run, tmp_path):
    from tests.support.browser import render_in_browser

    render_in_browser(run / "report.html", tmp_path)

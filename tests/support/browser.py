"""Render a self-contained HTML page in a real browser (headless Chromium), for the report and check pages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def render_in_browser(page_path: Path, tmp_path: Path) -> None:
    """Assert Chromium decodes every ``<img>`` of the page, logs no console error and paints a non-blank page;
    skips when Chromium is not installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("no Chromium installed (Debian package `chromium`; .ci/run installs it)")
    page = page_path.read_text()
    n_images = page.count("<img ")
    # a copy with a probe script: the shipped page has none; this one counts images the browser decoded
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>window.addEventListener('load',()=>{const ok=[...document"
                                             ".images].filter(i=>i.complete&&i.naturalWidth>0).length;document.body"
                                             ".setAttribute('data-decoded',String(ok));});</script></body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert f'data-decoded="{n_images}"' in dom.stdout, dom.stderr[-1500:]
    shot = tmp_path / "shot.png"
    logged = subprocess.run([*flags, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                             "--window-size=1200,2400", page_path.as_uri()],
                            capture_output=True, text=True, timeout=120)
    console_errors = [line for line in logged.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert not console_errors, console_errors
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # not a blank page: text, plots and thumbnails were painted

"""finetune's own cheap check: validation copies of training images are reported (console, duplicates.txt,
report.html) and ``--dedupe`` drops them from the split (skipped.txt lists them)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.cvkeras.test_check import near_copy, write_colours
from tests.support.cli import TINY as TINY_FLAGS
from tests.support.cli import invoke

TINY = [*TINY_FLAGS, "--epochs", "1", "--fine-tune-epochs", "0"]


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    root = write_colours(tmp_path_factory.mktemp("leaky") / "data", per_class=8)
    near = near_copy(root / "train" / "green" / "green_002.png", root / "val" / "green" / "green_002_resaved.jpg")
    exact = root / "val" / "red" / "red_001_again.png"
    shutil.copyfile(root / "train" / "red" / "red_001.png", exact)
    return root, {str(near), str(exact)}


@pytest.mark.slow
def test_finetune_reports_validation_copies_of_training_images(leaky, tmp_path):
    root, copies = leaky
    result = invoke("finetune", root, *TINY, "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output[-3000:]
    assert "2 validation/test image(s) copy a training image" in result.stderr and "--dedupe" in result.stderr
    rows = [line.split("\t") for line in (tmp_path / "run" / "duplicates.txt").read_text().splitlines()]
    assert {r[0] for r in rows} == copies and {r[2] for r in rows} == {"exact", "near"}
    assert {r[3] for r in rows} == {"kept"}
    val = {p for p, _ in json.loads((tmp_path / "run" / "split.json").read_text())["val"]}
    assert copies <= val  # reported, not dropped
    page = (tmp_path / "run" / "report.html").read_text()
    assert '<section id="duplicates">' in page and "green_002_resaved.jpg" in page


@pytest.mark.slow
def test_dedupe_drops_the_validation_copies(leaky, tmp_path):
    root, copies = leaky
    result = invoke("finetune", root, *TINY, "--dedupe", "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output[-3000:]
    assert "dropped 2 validation/test copies of training images (--dedupe)" in result.stderr
    assert "skipped 2 unreadable file(s) or copies dropped by --dedupe" in result.stderr
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    val = {p for p, _ in split["val"]}
    assert not copies & val and len(val) == 3 * 2  # every 4th of 8 per class is val; the copies are gone
    skipped = (tmp_path / "run" / "skipped.txt").read_text()
    assert all(p in skipped for p in copies) and "(--dedupe)" in skipped
    assert "dedupe: true" in (tmp_path / "run" / "config.yaml").read_text()


def test_cross_split_pass_finds_nothing_in_a_set_without_copies(tmp_path):
    from cvkeras.data.duplicates import cross_split_leaks, finetune_leaks
    from cvkeras.data.sources import load_source

    split = load_source(str(write_colours(tmp_path / "data", per_class=12)))
    assert cross_split_leaks(split) == ([], [])
    before = list(split.val)
    assert finetune_leaks(split, dedupe=True) is None and split.val == before and not split.warnings

"""Start-up and memory that do not grow with the data set (issue 26): a header-only readability check, decode
failures caught by the pipeline, and ``--cache auto``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.cli import TINY, invoke
from tests.support.shapes import write_shapes


def damaged_jpeg() -> bytes:
    """A JPEG whose header Pillow opens and whose end marker is in place, but whose data TensorFlow rejects."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    good = buf.getvalue()
    return good[:600] + bytes(rng.integers(0, 255, 400, dtype=np.uint8)) + good[1000:]


def test_the_readability_check_reads_headers_not_pixels(tmp_path, monkeypatch):
    from cvkeras.data import readable

    decoded: list[str] = []
    full = readable.load_image
    monkeypatch.setattr(readable, "load_image", lambda p: decoded.append(p) or full(p))
    paths = []
    for i in range(4):
        Image.new("RGB", (80, 60), (i * 40, 90, 30)).save(tmp_path / f"{i}.jpg", quality=90)
        Image.new("RGB", (80, 60), (i * 40, 90, 30)).save(tmp_path / f"{i}.png")
        paths += [str(tmp_path / f"{i}.jpg"), str(tmp_path / f"{i}.png")]
    assert readable.check_readable(paths) == [] and decoded == []  # no file decoded
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes((tmp_path / "0.jpg").read_bytes()[:300])
    cut_png = tmp_path / "cut.png"
    noise = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(noise).save(cut_png)
    cut_png.write_bytes(cut_png.read_bytes()[:8000])
    skipped = dict(readable.check_readable([*paths, str(trunc), str(cut_png)]))
    assert set(skipped) == {str(trunc), str(cut_png)}
    assert sorted(decoded) == sorted([str(trunc), str(cut_png)])  # only files without their end marker


def test_a_file_damaged_past_its_header_is_dropped_and_named_by_the_pipeline(tmp_path):
    from cvkeras.data.decode import decoded_dataset
    from cvkeras.data.decode_log import DecodeLog
    from cvkeras.data.readable import header_problem

    Image.new("RGB", (40, 40), "red").save(tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes(damaged_jpeg())
    assert header_problem(str(tmp_path / "bad.jpg")) is None  # the header check cannot see it
    log = DecodeLog([str(tmp_path / n) for n in ("good.jpg", "bad.jpg", "good.jpg")])
    ds = decoded_dataset(log.paths, [0, 1, 2], (32, 32), log)
    it = iter(ds)
    assert int(next(it)[1]) == 0  # (prefetching may already have read the whole pass: failures are judged after it)
    assert [int(y) for _, y in it] == [2]
    assert [p for p, _ in log.failures()] == [str(tmp_path / "bad.jpg")]


def test_cache_auto_is_memory_when_it_fits_else_a_file_in_the_run_else_none(tmp_path, monkeypatch):
    from cvkeras.data import cache

    small = cache.resolve_cache("auto", 1000, (224, 224), tmp_path / "cache", memory=8 << 30)
    assert small.value == "memory" and "0.15 GB" in small.line and "a quarter" in small.line
    # the machine's own free disk must not decide the test: 100 GB free, then 1 GB
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: type("U", (), {"free": 100 << 30})())
    big = cache.resolve_cache("auto", 100_000, (224, 224), tmp_path / "cache", memory=8 << 30)
    assert big.value == str(tmp_path / "cache" / "images") and big.scratch == tmp_path / "cache"
    assert "15.05 GB" in big.line and "removed after training" in big.line
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: type("U", (), {"free": 1 << 30})())
    none = cache.resolve_cache("auto", 100_000, (224, 224), tmp_path / "cache", memory=8 << 30)
    assert none.value == "none" and "each epoch decodes again" in none.line
    assert cache.resolve_cache("memory", 10**9, (224, 224), tmp_path).value == "memory"
    assert 0 < cache.available_memory()


def test_finetune_drops_a_file_tensorflow_cannot_decode_and_lists_it(tmp_path):
    data = write_shapes(tmp_path / "shapes", per_class=6, size=32)
    (data / "circle" / "zz_bad.jpg").write_bytes(damaged_jpeg())
    run = tmp_path / "run"
    result = invoke("finetune", data, *TINY, "--epochs", "2", "--fine-tune-epochs", "0", "--output", run)
    assert result.exit_code == 0, result.output
    assert "cache      memory: " in result.output
    losses = [float(r["loss"]) for r in csv.DictReader(open(run / "history.csv"))]
    assert len(losses) == 2 and all(v > 0 for v in losses), losses  # every epoch trained (no pipeline run dry)
    assert "skipped 1 unreadable file" in result.output and "could not be decoded while training" in result.output
    assert "zz_bad.jpg" in (run / "skipped.txt").read_text()
    split = json.loads((run / "split.json").read_text())
    assert not any("zz_bad" in p for name in ("train", "val") for p, _ in split[name])


@pytest.mark.slow
def test_an_automatic_file_cache_lives_in_the_run_and_is_removed_after_training(tmp_path, monkeypatch):
    from cvkeras.data import cache

    monkeypatch.setattr(cache, "MEMORY_SHARE", 0.0)  # nothing fits in memory: the file cache is chosen
    seen: list[list[str]] = []
    rmtree = cache.shutil.rmtree

    def spy(path, *args, **kwargs):
        if Path(path) == run / "cache":
            seen.append(sorted(p.name for p in Path(path).iterdir()))
        return rmtree(path, *args, **kwargs)

    data = write_shapes(tmp_path / "shapes", per_class=6, size=32)
    run = tmp_path / "run"
    monkeypatch.setattr("cvkeras.train.datasets.shutil.rmtree", spy)
    result = invoke("finetune", data, *TINY, "--epochs", "2", "--fine-tune-epochs", "0", "--output", run)
    assert result.exit_code == 0, result.output
    assert f"cache      file in {run / 'cache'}" in result.output
    assert seen and any(name.endswith(".index") for name in seen[0]), seen  # TensorFlow wrote it there
    assert not (run / "cache").exists() or not any((run / "cache").iterdir())
    again = invoke("finetune", data, *TINY, "--epochs", "1", "--fine-tune-epochs", "0", "--output", run, "--force")
    assert again.exit_code == 0, again.output  # the cache folder is the run's own: --force clears it

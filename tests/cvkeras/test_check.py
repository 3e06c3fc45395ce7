"""``cvkeras check``: planted duplicates (exact, near, across splits, under another class) and swapped labels
are found through the CLI, on finetune's own split; the JSON matches its schema; the page renders."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvkeras.serving.schema import problems
from tests.support.cli import invoke

# MobileNetV2 alpha 0.35 at 32 px, random weights (MobileNet v1 pools to near-zero features at random init);
# colour survives random convolutions, so out-of-fold label scoring still separates the colour classes
TINY = ["--model", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32"]
COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 230)}


def _texture(rng: np.random.Generator, colour: tuple[int, int, int], size: int = 64) -> Image.Image:
    """A photo-like image: a random smooth grey structure (its own pHash) tinted with the class colour."""
    field = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    grey = np.asarray(field, dtype=np.float32).mean(axis=2, keepdims=True) / 255.0
    arr = (0.25 + 0.75 * grey) * np.asarray(colour, dtype=np.float32)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def write_colours(root: Path, per_class: int = 14, seed: int = 0, layout: str = "split") -> Path:
    """Colour classes of distinct textures; ``split``: train/ and val/ (every 4th image), else flat."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        for i in range(per_class):
            sub = ("val" if i % 4 == 0 else "train") if layout == "split" else ""
            folder = root / sub / name
            folder.mkdir(parents=True, exist_ok=True)
            _texture(rng, colour).save(folder / f"{name}_{i:03d}.png")
    return root


def near_copy(src: Path, dst: Path, scale: float = 0.8, quality: int = 75, brightness: float = 1.1,
              crop: int = 1) -> Path:
    """A re-sized, cropped, brightened JPEG copy of ``src`` (what a re-saved download looks like)."""
    with Image.open(src) as im:
        img = im.convert("RGB")
    img = img.crop((crop, crop, img.width - crop, img.height - crop))
    img = img.resize((int(img.width * scale), int(img.height * scale)), Image.BILINEAR)
    img = Image.fromarray((np.asarray(img, dtype=np.float32) * brightness).clip(0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    dst.write_bytes(buf.getvalue())
    return dst


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """A train/val colour set with every kind of problem planted; returns the data root and the truth."""
    root = write_colours(tmp_path_factory.mktemp("check") / "data")
    tr, va = root / "train", root / "val"
    exact = tr / "red" / "red_001_copy.png"
    shutil.copyfile(tr / "red" / "red_001.png", exact)  # same bytes, same split
    leak = near_copy(tr / "green" / "green_002.png", va / "green" / "green_002_resaved.jpg")  # across splits
    with Image.open(tr / "blue" / "blue_003.png") as im:  # same pixels, other bytes, filed under another class
        im.save(tr / "red" / "blue_003_as_red.png", compress_level=1)
    swapped = {tr / "green" / "red_005.png": "red", tr / "red" / "blue_006.png": "blue"}
    (tr / "red" / "red_005.png").rename(tr / "green" / "red_005.png")
    (tr / "blue" / "blue_006.png").rename(tr / "red" / "blue_006.png")
    Image.new("RGB", (5, 5), (200, 30, 30)).save(tr / "red" / "tiny.png")
    _texture(np.random.default_rng(9), COLOURS["red"]).resize((240, 24)).save(tr / "red" / "strip.png")
    (tr / "blue" / "broken.png").write_bytes(b"\x89PNG not really")
    return {"root": root, "exact": {str(tr / "red" / "red_001.png"), str(exact)},
            "leak": {str(tr / "green" / "green_002.png"), str(leak)},
            "conflict": {str(tr / "blue" / "blue_003.png"), str(tr / "red" / "blue_003_as_red.png")},
            "swapped": {**{str(p): c for p, c in swapped.items()}, str(tr / "red" / "blue_003_as_red.png"): "blue"}}


@pytest.fixture(scope="module")
def checked(planted, tmp_path_factory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("check_out") / "page"
    result = invoke("check", planted["root"], *TINY, "--output", out, "--top", "3")
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads((out / "check.json").read_text()), out, result.stdout


def _group(doc: dict, paths: set[str]) -> dict:
    found = [g for g in doc["duplicates"] if paths <= set(g["paths"])]
    assert len(found) == 1, (paths, doc["duplicates"])
    return found[0]


def test_check_finds_exact_near_cross_split_and_conflicting_copies(planted, checked):
    doc, _, _ = checked
    assert problems(doc, "check") == []
    exact = _group(doc, planted["exact"])
    assert exact["kind"] == "exact" and not exact["cross_split"] and not exact["conflicting_labels"]
    leak = _group(doc, planted["leak"])
    assert leak["kind"] == "near" and leak["cross_split"] and sorted(leak["splits"]) == ["train", "val"]
    conflict = _group(doc, planted["conflict"])
    assert conflict["kind"] == "exact" and conflict["conflicting_labels"] and sorted(conflict["labels"]) == [
        "blue", "red"]
    assert len(doc["duplicates"]) == 3  # no distinct texture is taken for a copy
    assert doc["duplicates"][0]["cross_split"]  # leaks are listed first


def test_check_ranks_swapped_labels_with_their_true_class(planted, checked):
    doc, _, _ = checked
    top = {d["path"]: d for d in doc["label_issues"][:2 * len(planted["swapped"])]}
    for path, true_class in planted["swapped"].items():
        assert path in top, (path, doc["label_issues"][:6])
        assert top[path]["suggested"] == true_class and top[path]["given"] != true_class
    scores = [d["score"] for d in doc["label_issues"]]
    assert scores == sorted(scores)  # most likely error first


def test_check_finds_the_photos_unlike_their_class(checked):
    doc, _, stdout = checked
    found = {Path(d["path"]).name: d["class"] for d in doc["outliers"]}
    # the two blue photos filed under red are unlike the red class (kNN within the class)
    assert found.get("blue_003_as_red.png") == "red" and found.get("blue_006.png") == "red"
    assert len(found) <= 0.1 * sum(doc["images"].values()) and "outlier:" in stdout
    scores = [d["score"] for d in doc["outliers"]]
    assert scores == sorted(scores)


def test_check_reports_tiny_extreme_skipped_and_finetunes_split(planted, checked):
    from cvkeras.data.sources import load_source

    doc, _, stdout = checked
    small = {Path(d["path"]).name: d["why"] for d in doc["small_images"]}
    assert small == {"tiny.png": "tiny", "strip.png": "extreme_aspect"}
    assert [Path(d["path"]).name for d in doc["skipped"]] == ["broken.png"]
    split = load_source(str(planted["root"]))  # what finetune trains on
    assert doc["images"] == {"train": len(split.train), "val": len(split.val), "test": 0}
    assert doc["classes"]["red"]["train"] == split.counts("train")[split.classes.index("red")]
    # console: the summary table and the findings with their paths
    assert "duplicate groups" in stdout and "label issue:" in stdout and "across splits" in stdout
    assert str(sorted(planted["leak"])[0]) in stdout.replace("\n", "")


def test_check_page_shows_every_finding_and_is_self_contained(planted, checked, tmp_path):
    import re

    from tests.support.browser import render_in_browser

    doc, out, _ = checked
    page = (out / "check.html").read_text()
    assert "<script" not in page and not re.search(r"(src|href)=\"?https?:", page)
    for sid in ("summary", "duplicates", "label-issues", "outliers", "small-images", "classes", "skipped"):
        assert f'<section id="{sid}">' in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    names = {p for g in doc["duplicates"] for p in g["paths"]} | {d["path"] for d in doc["label_issues"]} | {
        d["path"] for d in doc["small_images"]} | {d["path"] for d in doc["outliers"]}
    assert len(srcs) >= len(names) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "blue_003_as_red.png" in page and "broken.png" in page
    render_in_browser(out / "check.html", tmp_path)


def test_check_json_on_a_csv_manifest_uses_its_split_column(tmp_path):
    root = write_colours(tmp_path / "data", per_class=10, layout="flat")
    files = sorted(root.rglob("*.png"))
    rows = ["path,label,split"] + [f"{p.relative_to(root).as_posix()},{p.parent.name},{'train' if i % 3 else 'val'}"
                                   for i, p in enumerate(files)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    result = invoke("check", root / "labels.csv", *TINY, "--json")
    assert result.exit_code == 0, result.output[-2000:]
    doc = json.loads(result.stdout)  # stdout is the JSON document alone
    assert problems(doc, "check") == []
    assert doc["images"] == {"train": 20, "val": 10, "test": 0} and doc["duplicates"] == []


@pytest.mark.parametrize("args, words", [
    (["{data}", "--model", "nope"], "nope"),
    (["{missing}"], "data folder not found"),
    (["{data}", *TINY[:6], "--weights", "{missing}"], "weights file not found"),
    (["{data}", *TINY, "--output", "{file}"], "not a folder"),
    (["{data}", *TINY, "--val-split", "1.5"], "--val-split"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, words):
    data = write_colours(tmp_path / "data", per_class=3, layout="flat")
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    subs = {"{data}": data, "{missing}": tmp_path / "missing", "{file}": afile}
    result = invoke("check", *[subs.get(a, a) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and words in result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt", "data"]


def test_check_error_is_a_cvkeras_error():
    from cvkeras.data.check import CheckError
    from cvkeras.serving.errors import CvkerasError

    assert issubclass(CheckError, CvkerasError)


@pytest.mark.slow
def test_check_reads_a_tfds_source_as_finetune_splits_it():
    import tensorflow_datasets as tfds

    from cvkeras.data.sources import load_source
    from cvkeras.data.tfds_source import tfds_dataset

    with tfds.testing.mock_data(num_examples=40):
        result = invoke("check", "tfds:tf_flowers", *TINY, "--json")
        split = load_source("tfds:tf_flowers")  # what finetune reads: its split names, its datasets
        sizes = {name: int(tfds_dataset(split.tfds, name).cardinality().numpy()) for name in ("train", "val")}
    assert result.exit_code == 0, result.output[-2000:]
    doc = json.loads(result.stdout)
    assert problems(doc, "check") == []
    assert doc["images"] == {**sizes, "test": 0}
    assert all(d["path"].startswith("tfds:") for d in doc["label_issues"])


def test_check_help_fits_80_columns_and_names_finetunes_defaults():
    result = invoke("check", "--help", env={"COLUMNS": "80", "NO_COLOR": "1"}, terminal_width=80)
    assert result.exit_code == 0 and max(len(line) for line in result.output.splitlines()) <= 80
    flat = " ".join(result.output.replace("│", " ").split())
    assert "check [OPTIONS] DATA" in flat and "cvkeras check data/flowers" in flat
    assert "<str>" not in flat and "<int" not in flat
    assert "(default: finetune's)" in flat and "(as finetune)" in flat

"""Data sources, scanning, splits, and the tf.data pipeline's parity with the device decoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvkeras.data.sources import DataError, load_source, read_csv, scan_folder
from cvkeras.data.split import stratified_split
from tests.support.shapes import write_shapes


def test_flat_folder_gets_a_seeded_stratified_split(shapes_dir):
    a = scan_folder(shapes_dir, val_split=0.25, seed=3)
    b = scan_folder(shapes_dir, val_split=0.25, seed=3)
    c = scan_folder(shapes_dir, val_split=0.25, seed=4)
    assert a.classes == ["circle", "square", "triangle"]
    assert (a.train, a.val) == (b.train, b.val)
    assert a.val != c.val
    assert a.counts("val") == [3, 3, 3] and a.counts("train") == [9, 9, 9]
    assert not set(a.train) & set(a.val)


def test_train_val_test_folders_are_used_as_given(tmp_path):
    root = write_shapes(tmp_path / "d", per_class=8, layout="split")
    (root / "test" / "circle").mkdir(parents=True)
    Image.new("RGB", (20, 20), "red").save(root / "test" / "circle" / "t.png")
    s = scan_folder(root)
    assert all("/train/" in p for p, _ in s.train) and all("/val/" in p for p, _ in s.val)
    assert len(s.val) == 6 and len(s.test) == 1


def test_formats_decode_and_corrupt_files_are_skipped_and_reported(tmp_path):
    root = write_shapes(tmp_path / "d", per_class=6)
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(root / "circle" / "rgba.png")
    Image.new("L", (30, 30), 90).save(root / "circle" / "grey.png")
    Image.new("P", (30, 30), 3).save(root / "square" / "palette.png")
    Image.new("RGB", (30, 30), "blue").save(root / "square" / "pic.bmp")
    Image.new("RGB", (30, 30), "green").save(root / "triangle" / "anim.gif")
    (root / "triangle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0not really a jpeg")
    good = root / "triangle" / "trunc.jpg"
    Image.new("RGB", (64, 64), "white").save(good, quality=90)
    good.write_bytes(good.read_bytes()[:200])
    (root / "triangle" / "notes.txt").write_text("ignored")
    Image.new("RGB", (30, 30), "blue").convert("P").save(root / "square" / "palette.bmp")
    s = scan_folder(root)
    skipped = sorted(p.rsplit("/", 1)[-1] for p, _ in s.skipped)
    assert skipped == ["broken.jpg", "palette.bmp", "trunc.jpg"]
    assert "save it as PNG" in dict(s.skipped)[str(root / "square" / "palette.bmp")]
    names = {p.rsplit("/", 1)[-1] for p, _ in s.train + s.val}
    assert {"rgba.png", "grey.png", "palette.png", "pic.bmp", "anim.gif"} <= names


def test_structural_problems_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan_folder(tmp_path / "missing")
    one = write_shapes(tmp_path / "one", per_class=3, classes=("circle",))
    with pytest.raises(DataError, match="at least two"):
        scan_folder(one)
    two = write_shapes(tmp_path / "two", per_class=3, classes=("circle", "square"))
    (two / "empty").mkdir()
    with pytest.raises(DataError, match="'empty' has no readable training images"):
        scan_folder(two)


def test_csv_manifest_with_and_without_split_column(tmp_path, shapes_dir):
    files = sorted(shapes_dir.rglob("*.png"))
    lines = ["path,label,split"] + [
        f"{f.relative_to(tmp_path)},{f.parent.name},{'val' if i % 3 == 0 else 'train'}" for i, f in enumerate(files)
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    s = read_csv(manifest)
    assert s.classes == ["circle", "square", "triangle"] and s.source == "csv"
    assert len(s.val) == len(files[::3])
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(f"{f.relative_to(tmp_path)},{f.parent.name}" for f in files))
    assert len(load_source(str(plain)).val) > 0
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{files[0].relative_to(tmp_path)},circle\nshapes/nowhere.png,square\n")
    with pytest.raises(DataError, match=r"bad.csv:2: shapes/nowhere.png does not exist"):
        read_csv(bad)


def test_stratified_split_keeps_small_classes_in_both_splits():
    items = [(f"a{i}", 0) for i in range(10)] + [("b0", 1), ("b1", 1)]
    train, val = stratified_split(items, 0.2, 0)
    assert {y for _, y in train} == {0, 1} and {y for _, y in val} == {0, 1}


def test_tf_pipeline_matches_the_device_decoder(tmp_path):
    """The contract: TF decode+resize (training) == Pillow decode+resize (serving), to rounding."""
    from cvkeras.data.decode import decoded_dataset
    from cvkeras.serving.preprocess import load_image, resize

    rng = np.random.default_rng(0)
    paths = []
    smooth = np.clip(rng.normal(128, 60, (90, 130, 3)).cumsum(axis=1) / 8 % 255, 0, 255).astype(np.uint8)
    for ext, mode in [("jpg", "RGB"), ("png", "RGBA"), ("png", "L"), ("png", "P"), ("bmp", "RGB"), ("gif", "P")]:
        img = Image.fromarray(smooth, "RGB")
        img = img.convert(mode) if mode != "P" else img.convert("P", palette=Image.Palette.ADAPTIVE)
        path = tmp_path / f"x_{mode}.{ext}"
        img.save(path, quality=92) if ext == "jpg" else img.save(path)
        paths.append(str(path))
    tf_images = [x.numpy() for x, _ in decoded_dataset(paths, [0] * len(paths), (48, 40))]
    for path, tf_img in zip(paths, tf_images, strict=True):
        pil = resize(load_image(path), (48, 40)).astype(np.float32)
        assert tf_img.shape == pil.shape == (48, 40, 3)
        assert np.abs(tf_img - pil).max() <= 1.0, path
        assert (tf_img != pil).mean() < 0.03, path  # same two-pass rounding as Pillow, not just close


def test_pipeline_is_deterministic_with_a_seed_and_augments_in_range(shapes_dir):
    import tensorflow as tf

    from cvkeras.data.augment import Augmenter
    from cvkeras.data.pipeline import make_dataset

    s = scan_folder(shapes_dir)
    paths, labels = [p for p, _ in s.train], [y for _, y in s.train]

    def first_batch(seed, **aug):
        tf.random.set_seed(seed)
        ds = make_dataset(paths, labels, (32, 32), 8, 3, training=True, augmenter=Augmenter(seed=seed, **aug),
                          seed=seed)
        return next(iter(ds))

    x1, y1 = first_batch(1, preset="heavy")
    x2, y2 = first_batch(1, preset="heavy")
    np.testing.assert_array_equal(x1.numpy(), x2.numpy())
    assert x1.shape == (8, 32, 32, 3) and float(tf.reduce_min(x1)) >= 0 and float(tf.reduce_max(x1)) <= 255
    xm, ym = first_batch(2, preset="light", mixup=0.4, cutmix=1.0)
    np.testing.assert_allclose(ym.numpy().sum(axis=1), 1.0, atol=1e-5)
    assert (ym.numpy().max(axis=1) < 1.0).any()  # soft labels
    xr, _ = first_batch(3, preset="medium", randaugment=True)
    assert xr.shape == (8, 32, 32, 3) and xr.dtype == tf.float32
    with pytest.raises(ValueError, match="unknown --augment"):
        Augmenter("extreme")


def test_load_split_images_is_stratified_and_deterministic(tmp_path, shapes_dir):
    from cvkeras.data.pipeline import load_split_images
    from cvkeras.run.rundir import RunDir
    from cvkeras.serving.formats import SPLIT

    s = scan_folder(shapes_dir)
    run = tmp_path / "run"
    RunDir(run).write_split(s.to_json(seed=7))
    RunDir(run).write_config({"model": {"image_size": [24, 24]}, "data": {"seed": 7}})
    x1, y1, p1 = load_split_images(run, "train", max_samples=6)
    x2, y2, p2 = load_split_images(run, "train", max_samples=6)
    assert x1.shape == (6, 24, 24, 3) and x1.dtype == np.uint8
    assert p1 == p2 and sorted(np.bincount(y1).tolist()) == [2, 2, 2]
    assert json.loads((run / SPLIT).read_text())["seed"] == 7


def test_tfds_source_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        s = load_source("tfds:tf_flowers", val_split=0.25)
        assert s.source == "tfds" and len(s.classes) == 5
        assert s.tfds["splits"]["val"] == "train[:25%]"
        from cvkeras.data.tfds_source import tfds_split_arrays

        x, y = tfds_split_arrays(s.to_json(0), "val", (16, 16))
        assert x.shape[1:] == (16, 16, 3) and x.dtype == np.uint8 and len(x) == len(y) > 0


def test_file_cache_holds_decoded_images_for_data_that_does_not_fit_in_memory(tmp_path, shapes_dir):
    from cvkeras.data.pipeline import make_dataset

    s = scan_folder(shapes_dir)
    paths, labels = [p for p, _ in s.val], [y for _, y in s.val]
    prefix = tmp_path / "cache" / "val"
    prefix.parent.mkdir()
    first = [x.numpy() for x, _ in make_dataset(paths, labels, (24, 24), 4, 3, cache=str(prefix))]
    assert list(prefix.parent.iterdir()), "no cache file written"
    for p in paths:  # the second pass must come from the cache, not the files
        Path(p).unlink()
    second = [x.numpy() for x, _ in make_dataset(paths, labels, (24, 24), 4, 3, cache=str(prefix))]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(second))


def test_train_test_layout_without_val_splits_train_and_keeps_classes(tmp_path):
    root = write_shapes(tmp_path / "d" / "train", per_class=8)
    write_shapes(tmp_path / "d" / "test", per_class=2)
    s = scan_folder(tmp_path / "d", val_split=0.25)
    assert s.classes == ["circle", "square", "triangle"]
    assert len(s.test) == 6 and len(s.val) == 6 and all("/train/" in p for p, _ in s.train + s.val)
    assert root.is_dir()


def test_csv_with_byte_order_mark_and_formats_tensorflow_cannot_decode(tmp_path, shapes_dir):
    files = sorted(shapes_dir.rglob("*.png"))
    Image.new("RGB", (20, 20), "red").save(tmp_path / "scan.tif")
    rows = [f"{f.relative_to(tmp_path)},{f.parent.name}" for f in files] + ["scan.tif,circle"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "\n".join(rows), encoding="utf-8-sig")
    s = read_csv(manifest)
    assert len(s.train) + len(s.val) == len(files)
    assert [p.rsplit("/", 1)[-1] for p, _ in s.skipped] == ["scan.tif"]
    assert "convert it to PNG" in s.skipped[0][1]


def test_a_class_with_only_validation_images_is_an_error(tmp_path):
    root = write_shapes(tmp_path / "d", per_class=8, layout="split")
    (root / "val" / "hexagon").mkdir()
    Image.new("RGB", (20, 20), "red").save(root / "val" / "hexagon" / "h.png")
    with pytest.raises(DataError, match="is not in"):
        scan_folder(root)
    (root / "train" / "hexagon").mkdir()
    with pytest.raises(DataError, match="'hexagon' has no readable training images"):
        scan_folder(root)

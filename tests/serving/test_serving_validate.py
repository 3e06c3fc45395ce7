"""The validation runner: accuracy, drop, agreement and differences against an independent numpy count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvkeras.serving import Predictor
from cvkeras.serving.preprocess import load_image, to_model_input
from cvkeras.serving.reference import Reference, ValidationError
from cvkeras.serving.validate import scan_class_folder, validate
from tests.support.serving_models import LABELS, SIZE, make_onnx, metadata, reference_probs, write_class_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("val") / "data"
    items = write_class_folder(root, per_class=4, wrong=1)
    return root, items


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    path = make_onnx(tmp_path_factory.mktemp("m") / "m.onnx", meta=metadata(reference_accuracy=0.8))
    return Predictor.load(path, threads=1)


def _truth(items):
    """Independent computation: decode, resize, numpy model."""
    x = to_model_input([load_image(p) for p, _ in items], SIZE)
    labels = np.array([y for _, y in items])
    return reference_probs(x).astype(np.float32), labels, x


def _write_reference(path: Path, items, probs, labels, accuracy=None) -> Path:
    keys = np.array([f"{Path(p).parent.name}/{Path(p).name}" for p, _ in items])
    extra = {} if accuracy is None else {"accuracy": np.float64(accuracy)}
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "reference.npz", paths=keys, labels=labels, probs=probs, **extra)
    return path


def test_scan_class_folder_maps_folders_to_model_labels(data):
    root, items = data
    found = scan_class_folder(root, LABELS)
    assert sorted((str(p), y) for p, y in found) == sorted((str(p), y) for p, y in items)


def test_accuracy_and_per_class_without_reference(predictor, data):
    root, items = data
    probs, labels, _ = _truth(items)
    correct = probs.argmax(1) == labels
    report = validate(predictor, scan_class_folder(root, LABELS), max_accuracy_drop=1.0, batch_size=5)
    assert report.n == 16 and report.accuracy == pytest.approx(correct.mean())
    assert report.accuracy == pytest.approx(0.75)  # one image per class shows another colour
    expected = {name: pytest.approx(correct[labels == c].mean()) for c, name in enumerate(LABELS)}
    assert report.per_class == expected
    assert report.support == dict.fromkeys(LABELS, 4)
    # no reference outputs: the reference accuracy is the metadata's 0.8 -> 5 points drop
    assert report.reference_accuracy == 0.8 and report.reference_source == "model metadata"
    assert report.accuracy_drop == pytest.approx(5.0)
    assert report.passed is False
    assert validate(predictor, scan_class_folder(root, LABELS), max_accuracy_drop=5.5).passed is True
    assert report.agreement is None and report.max_abs_diff is None and report.latency_ms_per_image > 0
    keys = {"n", "accuracy", "reference_accuracy", "accuracy_drop", "agreement", "passed", "max_abs_diff",
            "per_class", "latency_ms_per_image", "failures"}
    assert set(report.to_dict()) >= keys


def test_reference_outputs_give_agreement_difference_and_same_image_accuracy(predictor, data, tmp_path):
    root, items = data
    probs, labels, _ = _truth(items)
    ref = probs.copy()
    ref[[0, 5, 9]] = np.roll(ref[[0, 5, 9]], 1, axis=1)  # the "Keras" model disagrees on three images
    ref[3] += np.float32(0.01) * np.arange(4, dtype=np.float32)  # and differs slightly on another
    export_dir = _write_reference(tmp_path / "export", items, ref, labels, accuracy=0.5)
    report = validate(predictor, scan_class_folder(root, LABELS), export_dir, max_accuracy_drop=1.0)
    assert report.n_reference == 16
    assert report.agreement == pytest.approx(np.mean(ref.argmax(1) == probs.argmax(1)))
    assert report.agreement == pytest.approx(13 / 16)
    assert report.max_abs_diff == pytest.approx(np.abs(ref - probs).max(), abs=1e-5)
    ref_acc = np.mean(ref.argmax(1) == labels)  # Keras accuracy on exactly these images, not the 0.5
    assert report.reference_accuracy == pytest.approx(ref_acc)
    assert report.accuracy_drop == pytest.approx(100 * (ref_acc - np.mean(probs.argmax(1) == labels)))
    assert report.passed == (report.accuracy_drop <= 1.0)


def test_partial_reference_compares_matched_images_only(predictor, data, tmp_path):
    """Issue #15.3: the drop is over the images the reference covers, never all images vs its own split."""
    root, items = data
    probs, labels, _ = _truth(items)
    half = slice(0, 16, 2)
    export_dir = _write_reference(tmp_path / "export", items[half], probs[half], labels[half], accuracy=0.76)
    report = validate(predictor, scan_class_folder(root, LABELS), Reference.load(export_dir), 1.0)
    assert report.n == 16 and report.n_reference == 8 and report.n_paired == 8 and report.agreement == 1.0
    assert report.max_abs_diff == pytest.approx(0.0, abs=1e-5)
    matched = probs[half].argmax(1) == labels[half]
    assert report.reference_accuracy == pytest.approx(matched.mean())  # not the stored 0.76 of other images
    assert report.paired_accuracy == pytest.approx(matched.mean())
    assert report.accuracy_drop == pytest.approx(0.0) and report.passed is True
    assert report.reference_source == "reference outputs on the same 8 validation images"
    other = tmp_path / "other"
    _write_reference(other, [(tmp_path / "x" / "nowhere.png", 0)], probs[:1], labels[:1])
    with pytest.raises(ValidationError, match="none of the 16 images is in the reference"):
        validate(predictor, scan_class_folder(root, LABELS), other)


def test_gates_on_validation_rows_held_back_training_rows_reported_apart(predictor, data, tmp_path):
    """Issue #22.1/#22.4: agreement, drop and the headline accuracy are over validation rows only; the
    held-back training rows (which rarely flip) give their own agreement, never pooled into the gate."""
    root, items = data
    probs, labels, _ = _truth(items)
    ref = probs.copy()
    ref[[1, 2, 9]] = np.roll(ref[[1, 2, 9]], 1, axis=1)  # the reference disagrees on 2 val, 1 training image
    export_dir = _write_reference(tmp_path / "export", items, ref, labels)
    splits = np.array(["val"] * 8 + ["train"] * 8)
    with np.load(export_dir / "reference.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(export_dir / "reference.npz", split=splits, **arrays)
    report = validate(predictor, scan_class_folder(root, LABELS), export_dir, max_accuracy_drop=100.0,
                      min_agreement=0.9)
    assert report.n_reference == 8 and report.agreement == pytest.approx(6 / 8)  # pooled would be 13/16
    assert report.n_held_back == 8 and report.held_back_agreement == pytest.approx(7 / 8)
    val = slice(0, 8)
    ref_ok, model_ok = ref[val].argmax(1) == labels[val], probs[val].argmax(1) == labels[val]
    assert report.n_paired == 8
    assert report.accuracy_drop == pytest.approx(100 * (ref_ok.mean() - model_ok.mean()))
    b, c = int((ref_ok & ~model_ok).sum()), int((~ref_ok & model_ok).sum())
    assert report.discordant == [b, c]
    lo, hi = report.accuracy_drop_ci
    assert lo < report.accuracy_drop < hi
    lo, hi = report.agreement_ci
    assert lo < 6 / 8 < hi
    # the headline accuracy is over the 8 validation images; the 8 training images are counted apart
    assert report.n == 8 and report.accuracy == pytest.approx(model_ok.mean())
    assert report.n_seen == 8 and report.seen_accuracy == pytest.approx((probs[8:].argmax(1) == labels[8:]).mean())
    assert sum(report.support.values()) == 8
    assert report.measured_on["agreement"] == {"images": "validation", "n": 8}
    assert report.measured_on["accuracy"] == {"images": "validation", "n": 8}
    assert report.measured_on["held_back_agreement"]["n"] == 8
    assert report.passed is False
    (why,) = report.gate_failures
    assert why.startswith("top-1 agreement 75.00 % (95 % CI ") and why.endswith("by 15.00 points")


def test_intervals_against_hand_computed_values():
    from cvkeras.serving.stats import paired_drop_interval, wilson_interval

    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1.959963984540054 ** 2 / (10 + 1.959963984540054 ** 2))
    lo, hi = wilson_interval(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    same = np.ones(100, bool)
    lo, hi = paired_drop_interval(same, same)  # no discordant pair: still +-1.96/102, not a zero width
    assert (lo, hi) == (pytest.approx(-1.959963984540054 / 102), pytest.approx(1.959963984540054 / 102))
    ref_ok = np.r_[np.ones(10, bool), np.zeros(90, bool)]  # 10 images only the reference gets right
    lo, hi = paired_drop_interval(ref_ok, np.zeros(100, bool))
    p10, p01 = 10.5 / 102, 0.5 / 102
    half = 1.959963984540054 * np.sqrt((p10 + p01 - (p10 - p01) ** 2) / 102)
    assert (lo, hi) == (pytest.approx(p10 - p01 - half), pytest.approx(p10 - p01 + half))
    assert lo > 0  # ten wins to none is a real drop


def test_pre_decoded_arrays_match_by_position(predictor, data):
    _, items = data
    probs, labels, x = _truth(items)
    images = x.astype(np.uint8)
    ref = Reference(probs=probs, labels=labels)
    report = validate(predictor, (images, labels), reference=ref, batch_size=6)
    assert report.n == 16 and report.agreement == 1.0 and report.accuracy_drop == pytest.approx(0.0)
    assert report.n_reference == 16 and report.n_paired == 16
    assert report.max_abs_diff < 1e-5 and report.passed
    float_report = validate(predictor, (x, labels))
    assert float_report.accuracy == report.accuracy
    with pytest.raises(ValidationError, match="16 reference outputs for 3 images"):
        validate(predictor, (images[:3], labels[:3]), reference=ref)


def test_unreadable_files_are_listed_and_skipped(predictor, data, tmp_path):
    root, items = data
    bad = tmp_path / "red" / "zz.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    report = validate(predictor, [*items, (bad, 0)])
    assert report.n == 16 and report.accuracy == pytest.approx(0.75)
    assert [f["path"] for f in report.failures] == [str(bad)] and "zz.png" in report.failures[0]["error"]


def test_class_folder_errors_and_split_subfolder(tmp_path):
    write_class_folder(tmp_path / "ds" / "val", per_class=1, wrong=0)
    (tmp_path / "ds" / "train").mkdir()
    found = scan_class_folder(tmp_path / "ds", LABELS)  # no classes at the top: val/ is used
    assert sorted((p.parent.name, y) for p, y in found) == sorted((name, i) for i, name in enumerate(LABELS))
    (tmp_path / "ds" / "val" / "purple").mkdir()
    with pytest.raises(ValidationError, match="purple are not labels of this model"):
        scan_class_folder(tmp_path / "ds", LABELS)
    with pytest.raises(ValidationError, match="data folder not found"):
        scan_class_folder(tmp_path / "missing", LABELS)
    (tmp_path / "empty" / "red").mkdir(parents=True)
    with pytest.raises(ValidationError, match="no .* images"):
        scan_class_folder(tmp_path / "empty", LABELS)


def test_reference_file_errors(tmp_path):
    with pytest.raises(ValidationError, match="reference outputs not found"):
        Reference.load(tmp_path)
    np.savez(tmp_path / "reference.npz", probs=np.zeros((3, 4), np.float32), labels=np.zeros(2, int))
    with pytest.raises(ValidationError, match="differ in length"):
        Reference.load(tmp_path)
    (tmp_path / "reference.npz").write_bytes(b"garbage")
    with pytest.raises(ValidationError, match="not a readable reference"):
        Reference.load(tmp_path)


def _device_probs(predictor, items):
    """What the exporter stores: the model's outputs on exactly these files' pixels."""
    paths = [p for p, _ in items]
    probs = np.concatenate([predictor.predict_batch(b.x) for b in predictor.batches(paths, 64)])
    return probs.astype(np.float32), np.array([y for _, y in items])


def test_train_val_layout_with_repeated_file_names_matches_each_row_exactly(predictor, tmp_path):
    """Issue #22.3: ``train/red/00.png`` and ``val/red/00.png`` are different photos; rows are matched by the
    relative path the run recorded, so the float model matches its reference exactly (it failed with a max
    probability difference near 1 when both were keyed ``red/00.png``)."""
    from cvkeras.serving.reference import relative_paths

    root = tmp_path / "data"
    train = write_class_folder(root / "train", per_class=4, seed=1, wrong=0)
    val = write_class_folder(root / "val", per_class=4, seed=2, wrong=1)
    items = train + val
    probs, labels = _device_probs(predictor, items)
    keys = relative_paths([str(p) for p, _ in items], root)
    assert keys[0] == "train/red/00.png" and "val/red/00.png" in keys
    splits = np.array(["train"] * len(train) + ["val"] * len(val))
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    (export_dir / "reference.npz").write_bytes(Reference(probs, labels, keys, 0.5, splits=splits).to_bytes())
    ref = Reference.load(export_dir)
    for data in (root, root / "val"):  # --data DATA_ROOT (val/ found inside) or the val folder itself
        report = validate(predictor, scan_class_folder(data, LABELS), ref, min_agreement=0.99)
        assert report.n_reference == len(val) and report.max_abs_diff < 1e-5 and report.agreement == 1.0
        assert report.passed
    # the whole tree, train/ included: validation rows gate, training rows are counted apart
    both = [(p, y) for p, y in items]
    report = validate(predictor, both, ref)
    assert report.n == len(val) and report.n_seen == len(train) and report.n_held_back == len(train)
    assert report.max_abs_diff < 1e-5
    # the same photos keyed "class/file" (what older exports wrote) cannot be told apart: refused in one line
    old = [f"{Path(p).parent.name}/{Path(p).name}" for p, _ in items]
    with pytest.raises(ValidationError, match="reference path 'red/00.png' occurs twice"):
        Reference(probs, labels, old, 0.5, splits=splits)
    np.savez(export_dir / "reference.npz", probs=probs, labels=labels, paths=np.array(old), split=splits)
    with pytest.raises(ValidationError, match="occurs twice.*re-run `cvkeras export`"):
        Reference.load(export_dir)


def test_nested_folders_with_the_same_names_in_two_classes_are_distinct_rows(predictor, tmp_path):
    """``red/a/00.png`` and ``green/a/00.png`` were both keyed ``a/00.png``; now each has its own row, and
    two copies of the data given at once are refused rather than paired arbitrarily."""
    from cvkeras.serving.reference import relative_paths

    root = tmp_path / "data"
    items = []
    for c, name in enumerate(LABELS):
        sub = write_class_folder(root / name / "a", per_class=2, seed=c, labels=[name], wrong=0)
        items += [(p, c) for p, _ in sub]  # root/<label>/a/<label>/<i>.png
    probs, labels = _device_probs(predictor, items)
    keys = relative_paths([str(p) for p, _ in items], root)
    ref = Reference(probs, labels, keys, 0.5)
    report = validate(predictor, items, ref)
    assert report.n_reference == len(items) and report.max_abs_diff < 1e-5
    import shutil

    shutil.copytree(root, tmp_path / "copy" / "data")
    copies = items + [(tmp_path / "copy" / "data" / k, y) for k, (_, y) in zip(keys, items, strict=True)]
    with pytest.raises(ValidationError, match="both match the reference image"):
        validate(predictor, copies, ref)

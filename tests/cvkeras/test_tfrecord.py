"""``tfrecord:PATTERN`` sources: a folder converted by ``write_tfrecords``, fine-tuned through the CLI, its records
split and recorded like files, a damaged record skipped and named; bad patterns are one-line errors."""

from __future__ import annotations

import json

import pytest

from tests.cvkeras.test_scale import damaged_jpeg
from tests.support.cli import TINY, invoke
from tests.support.shapes import write_shapes


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    import tensorflow as tf

    from cvkeras.data.tfrecord import ENCODED, LABEL, write_tfrecords

    root = tmp_path_factory.mktemp("tfr")
    names = write_tfrecords(write_shapes(root / "photos", per_class=8, size=24), str(root / "records"), shards=3)
    example = tf.train.Example(features=tf.train.Features(feature={  # decodes in no decoder: skipped and named
        ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[damaged_jpeg()])),
        LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}))
    with tf.io.TFRecordWriter(str(root / "records" / "train-extra.tfrecord")) as w:
        w.write(example.SerializeToString())
    return root / "records", names


@pytest.mark.slow
def test_finetune_and_export_on_tfrecord_shards_record_the_split_and_skip_a_damaged_record(shards, tmp_path):
    records, names = shards
    run = tmp_path / "run"
    result = invoke("finetune", f"tfrecord:{records}/train-*.tfrecord", *TINY, "--epochs", "2",
                    "--fine-tune-epochs", "0", "--output", run)
    assert result.exit_code == 0, result.output[-3000:]
    split = json.loads((run / "split.json").read_text())
    assert split["source"] == "tfrecord" and split["tfrecord"]["counts"] == [8, 8, 8, 1]
    items = split["train"] + split["val"]
    assert len(items) == 24 and all("#" in p and p.split("#")[0] in names for p, _ in items)
    assert (run / "labels.txt").read_text().split() == ["circle", "square", "triangle"]
    bad = f"{records}/train-extra.tfrecord#0"
    assert bad in (run / "skipped.txt").read_text() and "could not be decoded" in result.stderr
    assert json.loads((run / "metrics.json").read_text())["n"] == len(split["val"])
    exported = invoke("export", run, "--format", "onnx", "--int8")  # calibration and verification read records
    assert exported.exit_code == 0, exported.output[-3000:]
    assert "passed" in exported.output and (run / "export" / "model_int8.onnx").is_file()


def test_tfrecord_split_is_seeded_stratified_and_names_classes_by_text_without_labels_txt(shards, tmp_path):
    import shutil

    from cvkeras.data.sources import load_source

    records, _ = shards
    copy = tmp_path / "records"
    shutil.copytree(records, copy, ignore=shutil.ignore_patterns("labels.txt", "*extra*"))
    a = load_source(f"tfrecord:{copy}/*.tfrecord", val_split=0.25, seed=1)
    b = load_source(f"tfrecord:{copy}/*.tfrecord", val_split=0.25, seed=1)
    assert a.classes == ["circle", "square", "triangle"]  # from image/class/text
    assert a.train == b.train and a.counts("val") == [2, 2, 2] and a.source == "tfrecord"
    shutil.copyfile(copy / "train-00000-of-00003.tfrecord", copy / "validation-00000-of-00001.tfrecord")
    given = load_source(f"tfrecord:{copy}/*.tfrecord")
    assert {p.split("#")[0].rsplit("/", 1)[1] for p, _ in given.val} == {"validation-00000-of-00001.tfrecord"}


@pytest.mark.parametrize("pattern, words", [
    ("{tmp}/nothing-*.tfrecord", "no file matches"),
    ("{tmp}/not-a-record.tfrecord", "not a TFRecord of tf.train.Example"),
])
def test_a_bad_tfrecord_pattern_is_one_line_and_writes_nothing(tmp_path, pattern, words):
    (tmp_path / "not-a-record.tfrecord").write_text("not a record, just text " * 20)
    result = invoke("finetune", "tfrecord:" + pattern.format(tmp=tmp_path), *TINY, "--output", tmp_path / "run")
    assert result.exit_code != 0 and words in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()

"""Predictor on tiny ONNX graphs: numbers against numpy, inputs of every kind, batching, bad models."""

from __future__ import annotations

import builtins
import io
import json

import numpy as np
import pytest
from PIL import Image

from cvkeras.serving import Prediction, Predictor
from cvkeras.serving.metadata import MetadataError, sidecar_path
from cvkeras.serving.preprocess import ImageError, load_image, to_model_input
from cvkeras.serving.runners import ModelError
from tests.support.serving_models import LABELS, SIZE, make_onnx, metadata, photo, reference_probs


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="module")
def predictor(model_path):
    return Predictor.load(model_path, threads=1)


@pytest.fixture(scope="module")
def photos():
    rng = np.random.default_rng(3)
    return [photo(i % 4, rng, 20 + i, 31 - i) for i in range(7)]


def test_load_reads_labels_and_size_from_the_model(predictor, model_path):
    assert predictor.labels == LABELS
    assert predictor.input_size == SIZE
    assert predictor.path == model_path
    assert predictor.kind == "onnx" and predictor.providers == ["CPUExecutionProvider"]
    assert predictor.metadata.model_name == "tiny_mean_rgb"


def test_predict_batch_matches_numpy(predictor, photos):
    x = to_model_input(photos, SIZE)
    probs = predictor.predict_batch(x)
    assert probs.dtype == np.float32 and probs.shape == (7, 4)
    np.testing.assert_allclose(probs, reference_probs(x), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, 12, 10, 3\)"):
        predictor.predict_batch(np.zeros((1, 10, 12, 3), np.float32))


def test_predictions_and_top_k_follow_the_probabilities(predictor, photos):
    results = predictor.predict(photos, top_k=3, batch_size=2)
    expected = reference_probs(to_model_input(photos, SIZE))
    assert len(results) == 7
    for r, p in zip(results, expected, strict=True):
        order = np.argsort(-p)
        assert r.ok and r.index == order[0] and r.label == LABELS[order[0]]
        assert r.score == pytest.approx(p[order[0]], abs=1e-5)
        assert [name for name, _ in r.top_k] == [LABELS[i] for i in order[:3]]
        assert [s for _, s in r.top_k] == pytest.approx(p[order[:3]], abs=1e-5)
    assert [r.index for r in results] == [0, 1, 2, 3, 0, 1, 2]  # the photos' colour classes
    assert len(predictor.predict(photos[0], top_k=99).top_k) == 4  # capped at the number of classes


def test_paths_pil_bytes_and_arrays_give_the_same_answer(predictor, photos, tmp_path):
    img = photos[2]
    png = tmp_path / "x.png"
    Image.fromarray(img).save(png)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    singles = [predictor.predict(src) for src in (png, str(png), Image.fromarray(img), img, buf.getvalue())]
    assert all(isinstance(r, Prediction) for r in singles)
    assert len({(r.label, round(r.score, 6)) for r in singles}) == 1
    assert singles[0].path == str(png) and singles[2].path is None
    batch = predictor.predict(np.stack([img, img]))  # an NHWC uint8 array is a batch
    assert isinstance(batch, list) and [r.label for r in batch] == [singles[0].label] * 2


def test_batch_size_and_decode_workers_do_not_change_results(model_path, photos):
    inline = Predictor.load(model_path, decode_workers=0).predict(photos, batch_size=1)
    pooled = Predictor.load(model_path, decode_workers=3).predict(photos, batch_size=3)
    assert [(r.index, round(r.score, 6)) for r in inline] == [(r.index, round(r.score, 6)) for r in pooled]


def test_unreadable_items_get_error_entries_and_the_rest_run(predictor, photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    good = tmp_path / "good.png"
    Image.fromarray(photos[1]).save(good)
    results = predictor.predict([good, bad, tmp_path / "nope.png", photos[0]], batch_size=2)
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[1].path == str(bad) and "broken.jpg" in results[1].error
    assert results[1].label is None and results[1].to_dict() == {"path": str(bad), "error": results[1].error}
    assert results[0].label == "green" and results[3].label == "red"
    json.dumps([r.to_dict() for r in results])  # JSON-ready
    with pytest.raises(ImageError, match="broken.jpg"):  # a single input raises instead
        predictor.predict(bad)


def test_output_name_is_not_hard_coded_and_fixed_batch_models_are_looped(tmp_path, photos):
    path = make_onnx(tmp_path / "fixed.onnx", batch=1, output_name="whatever")
    p = Predictor.load(path)
    x = to_model_input(photos, SIZE)
    np.testing.assert_allclose(p.predict_batch(x), reference_probs(x), atol=1e-5)


def _spinning(runner) -> str:
    return runner.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_modes_set_the_session_options(model_path):
    latency = Predictor.load(model_path, threads=3, mode="latency")
    opts = latency._runner.session.get_session_options()
    assert opts.intra_op_num_threads == 3 and _spinning(latency._runner) == "1"
    assert latency.predict_batch(np.zeros((4, *SIZE, 3), np.float32)).shape == (4, 4)
    assert set(latency._runners) == {"latency"}  # a fixed mode never makes a second session
    throughput = Predictor.load(model_path, threads=1, mode="throughput")
    assert throughput._runner.session.get_session_options().intra_op_num_threads == 1
    assert _spinning(throughput._runner) == "0"  # idle runtime threads sleep: decoders get the cores


def test_auto_mode_uses_a_spinning_session_for_one_image_and_a_sleeping_one_for_many(model_path, photos):
    p = Predictor.load(model_path, threads=1)
    assert p.mode == "auto" and set(p._runners) == {"latency"}
    one = p.predict(photos[0])
    assert set(p._runners) == {"latency"}
    many = p.predict(photos[:3])
    assert set(p._runners) == {"latency", "throughput"}
    assert _spinning(p._runners["latency"]) == "1" and _spinning(p._runners["throughput"]) == "0"
    assert (one.label, round(one.score, 6)) == (many[0].label, round(many[0].score, 6))


def test_single_image_path_matches_the_batch_path_and_reuses_its_buffer(model_path, photos):
    p = Predictor.load(model_path, mode="latency")
    expected = reference_probs(to_model_input(photos, SIZE))
    for img, probs in zip(photos, expected, strict=True):
        r = p.predict(img, top_k=4)
        assert r.index == int(np.argmax(probs))
        assert [s for _, s in r.top_k] == pytest.approx(np.sort(probs)[::-1], abs=1e-5)
    buf = p._local.x
    p.predict(photos[1])
    assert p._local.x is buf  # preallocated once per thread, not per call
    with pytest.raises(ImageError, match="not an image"):
        p.predict(b"not an image at all")


def test_unknown_mode_is_a_value_error(model_path):
    with pytest.raises(ValueError, match="latency, throughput, auto"):
        Predictor.load(model_path, mode="fast")


@pytest.mark.parametrize("content", [b"", b"hello, I am not a model\n" * 20])
def test_garbage_model_file_is_a_one_line_model_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        Predictor.load(path)
    assert str(info.value).startswith(f"{path}: not a loadable ONNX model")
    assert "\n" not in str(info.value)


def test_truncated_model_file_is_a_model_error(tmp_path, model_path):
    data = model_path.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ModelError, match="cut.onnx: not a loadable ONNX model"):
        Predictor.load(cut)


def test_missing_file_unknown_suffix_and_provider(tmp_path, model_path):
    with pytest.raises(ModelError, match="model file not found"):
        Predictor.load(tmp_path / "absent.onnx")
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    with pytest.raises(ModelError, match="unknown model type '.pt'"):
        Predictor.load(other)
    with pytest.raises(ModelError, match="NoSuchExecutionProvider is not available"):
        Predictor.load(model_path, providers=["NoSuchExecutionProvider"])


def test_models_without_or_with_inconsistent_metadata(tmp_path):
    with pytest.raises(MetadataError, match="no cvkeras metadata"):
        Predictor.load(make_onnx(tmp_path / "plain.onnx", with_metadata=False))
    with pytest.raises(MetadataError, match="3 labels but the model outputs 4 classes"):
        Predictor.load(make_onnx(tmp_path / "labels.onnx", meta=metadata(labels=LABELS[:3])))
    with pytest.raises(MetadataError, match="metadata says input 16x16 but the model takes 12x10"):
        Predictor.load(make_onnx(tmp_path / "size.onnx", meta=metadata(size=(16, 16))))


def test_dynamic_spatial_model_uses_the_metadata_size(tmp_path, photos):
    p = Predictor.load(make_onnx(tmp_path / "dyn.onnx", meta=metadata(size=(7, 9)), size=None))
    assert p.input_size == (7, 9)
    expected = reference_probs(to_model_input(photos[:2], (7, 9)))
    assert [r.score for r in p.predict(photos[:2])] == pytest.approx(expected.max(axis=1), abs=1e-5)


def test_tflite_without_litert_gives_an_install_hint(tmp_path, monkeypatch):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"TFL3" * 10)
    sidecar_path(path).write_text(metadata().to_json())
    real_import = builtins.__import__

    def no_litert(name, *args, **kwargs):
        if name.startswith("ai_edge_litert"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_litert)
    with pytest.raises(ModelError, match="needs LiteRT; `pip install ai-edge-litert`"):
        Predictor.load(path)


def test_garbage_tflite_is_a_model_error(tmp_path):
    pytest.importorskip("ai_edge_litert")
    path = tmp_path / "m.tflite"
    path.write_bytes(b"not a flatbuffer at all" * 4)
    sidecar_path(path).write_text(metadata().to_json())
    with pytest.raises(ModelError) as info:
        Predictor.load(path)
    assert str(info.value).startswith(f"{path}: not a loadable TFLite model") and "\n" not in str(info.value)


def test_reference_photos_decode_identically_through_the_predictor(predictor, photos, tmp_path):
    path = tmp_path / "p.jpg"
    Image.fromarray(photos[4]).save(path, quality=90)
    x = to_model_input([load_image(path)], SIZE)
    assert predictor.predict(path).score == pytest.approx(float(reference_probs(x).max()), abs=1e-5)


@pytest.mark.parametrize("decode_workers,threads", [(0, 1), (2, None)])
def test_onnx_sessions_use_exact_int8_kernels_where_the_cpu_needs_them(model_path, decode_workers, threads):
    """Every session asks for exact int8 kernels on x86 CPUs without VNNI (whose default kernels saturate
    u8*s8 pair sums in int16, so predictions would depend on the CPU), and for the fast default elsewhere."""
    from cvkeras.serving.runners import X64_QUANT_PRECISION, needs_exact_int8_kernels

    p = Predictor.load(model_path, threads=threads, decode_workers=decode_workers)
    opts = p._runner.session.get_session_options()
    assert X64_QUANT_PRECISION == "session.x64quantprecision"
    assert opts.get_session_config_entry(X64_QUANT_PRECISION) == ("1" if needs_exact_int8_kernels() else "0")


@pytest.mark.parametrize("machine,flags,exact", [
    ("x86_64", frozenset({"sse4_2", "avx2", "fma"}), True),  # AVX2 only: saturating int16 pair sums
    ("x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"}), False),
    ("AMD64", frozenset({"avx2", "avx_vnni"}), False),
    ("x86_64", None, True),  # flags unknown: correct before fast
    ("aarch64", None, False),  # ARM kernels are exact; the option is x86 only
    ("arm64", frozenset({"asimddp"}), False),
])
def test_exact_int8_kernels_only_on_x86_without_vnni(machine, flags, exact):
    from cvkeras.serving.runners import exact_int8_kernels_for

    assert exact_int8_kernels_for(machine, flags) is exact

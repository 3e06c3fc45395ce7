"""The export folder holds one export (issue #16.3): through the CLI, on the int8-hostile tiny run.

An earlier export's models that this one does not make are removed (only what the run's manifest proves
cvkeras wrote), a failed artifact is kept as ``*.FAILED.*`` with the verdict in its metadata, a model file
cvkeras cannot prove it wrote is left and listed as unverified, and the device commands refuse or warn.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cvkeras.run import files as runfiles
from cvkeras.serving.schema import problems
from tests.support.cli import invoke

MODEL_SUFFIXES = (".onnx", ".tflite")


def _models(folder: Path) -> set[str]:
    return {f.name for f in folder.iterdir() if f.suffix in MODEL_SUFFIXES}


def _report(folder: Path) -> dict:
    return json.loads((folder / "export_report.json").read_text())


@pytest.fixture(scope="module")
def marked_hostile_run(int8_hostile_run, tmp_path_factory) -> Path:
    """A copy of the session's int8-hostile tiny run (tests/conftest.py), marked as `cvkeras finetune` marks its
    run folders; copied, since the test exports into it."""

    run = tmp_path_factory.mktemp("export_folder") / "hostile"
    shutil.copytree(int8_hostile_run, run, ignore=shutil.ignore_patterns("export", runfiles.LOCK))
    runfiles.mark_run(run)
    return run


@pytest.mark.slow
def test_reexport_removes_the_previous_exports_models_and_marks_failed_ones(marked_hostile_run, tmp_path):
    run = marked_hostile_run
    out = run / "export"
    first = invoke("export", run, "--int8", "--fp16", "--no-repair", "--threads", "1")
    assert first.exit_code == 1, first.output + first.stderr
    report = _report(out)
    assert problems(report, "export_report") == []
    failed = [a for a in report["artifacts"] if a["status"] == "failed"]
    assert any(a["name"] == "model_int8.onnx" for a in failed)
    # every model file is in the report, a failed one only under its FAILED name, with the mark inside
    listed = {Path(a["path"]).name for a in report["artifacts"]}
    assert _models(out) == listed and report["unverified_files"] == []
    for a in failed:
        stem, suffix = a["name"].rsplit(".", 1)
        assert Path(a["path"]).name == f"{stem}.FAILED.{suffix}" and not (out / a["name"]).exists()
        from cvkeras.serving.metadata import read_metadata

        meta = read_metadata(out / Path(a["path"]).name)
        assert meta.failed_check and "kept as" not in meta.failed_check
        assert meta.extra["verification"]["status"] == "failed"
    onnx_failed = out / "model_int8.FAILED.onnx"

    # the device side: predict refuses a failed model (and names it when the plain name is asked for),
    # validate runs it with a warning line
    image = Path(json.loads((run / "split.json").read_text())["val"][0][0])
    refused = invoke("predict", onnx_failed, image)
    assert refused.exit_code == 2 and "FAILED its export check" in refused.stderr
    assert "--allow-failed" in refused.stderr and "Traceback" not in refused.output
    allowed = invoke("predict", onnx_failed, image, "--allow-failed", "--json")
    assert allowed.exit_code == 0 and "warning:" in allowed.stderr
    missing = invoke("predict", out / "model_int8.onnx", image)
    assert missing.exit_code == 2 and "kept as model_int8.FAILED.onnx" in missing.stderr
    checked = invoke("validate", onnx_failed, "--json")
    assert "warning:" in checked.stderr and "FAILED its export check" in checked.stderr
    # on the run's val split, validate gives the export's drop for the failed file, under the same names
    got, row = json.loads(checked.stdout), next(a for a in failed if a["name"] == "model_int8.onnx")
    assert problems(got, "validation") == []
    for key in ("n_paired", "paired_accuracy", "accuracy_drop", "accuracy_drop_ci"):
        assert got[key] == row[key], key

    # a model file cvkeras did not write is never removed: listed as unverified, with a warning
    shutil.copyfile(out / "model.onnx", out / "mine.onnx")
    second = invoke("export", run, "--threads", "1")
    assert second.exit_code == 0, second.output + second.stderr
    assert "removed " in second.stderr and "model_int8.FAILED.onnx" in second.stderr
    report = _report(out)
    assert problems(report, "export_report") == []
    assert [a["name"] for a in report["artifacts"]] == ["model.onnx", "model.tflite"]
    assert report["unverified_files"] == ["mine.onnx"]
    assert _models(out) == {"model.onnx", "model.tflite", "mine.onnx"}
    assert {f.name for f in out.glob("*.tflite.json")} == {"model.tflite.json"}
    assert any(line.startswith("warning:") and "mine.onnx" in line for line in second.stderr.splitlines())


def test_remove_previous_export_needs_the_manifest(tmp_path):
    """Without a manifest entry a model file is not cvkeras's to remove; with one it goes."""
    from cvkeras.export.folder import remove_previous_export, unverified_files

    run = tmp_path / "run"
    out = run / "export"
    out.mkdir(parents=True)
    runfiles.mark_run(run)
    runfiles.atomic_write(out / "model_int8.FAILED.onnx", b"ours")
    runfiles.atomic_write(out / "model_fp16.tflite", b"ours")
    runfiles.atomic_write(out / "model_fp16.tflite.json", b"{}")
    (out / "model_dynamic.tflite").write_bytes(b"not recorded")
    (out / "notes.txt").write_text("keep")
    assert remove_previous_export(out) == ["model_fp16.tflite", "model_fp16.tflite.json", "model_int8.FAILED.onnx"]
    assert sorted(f.name for f in out.iterdir()) == ["model_dynamic.tflite", "notes.txt"]
    assert unverified_files(out, ["model.onnx"]) == ["model_dynamic.tflite"]


def test_a_file_the_user_replaced_at_a_recorded_name_is_never_removed(tmp_path):
    """The manifest proves a name was cvkeras's; the recorded size and mtime prove the file there still is.
    A user's copy over ``model_int8.onnx`` survives a re-export and makes ``--force`` refuse the run."""
    import os

    from cvkeras.export.folder import remove_previous_export, unverified_files
    from cvkeras.run import rundir

    run = tmp_path / "run"
    out = run / "export"
    out.mkdir(parents=True)
    runfiles.mark_run(run)
    runfiles.atomic_write(out / "model_int8.onnx", b"cvkeras wrote this")
    runfiles.atomic_write(out / "model.onnx", b"cvkeras wrote this too")
    user = out / "model_int8.onnx"
    user.write_bytes(b"a hand-tuned model, longer than the old one")  # same name, the user's bytes
    assert remove_previous_export(out) == ["model.onnx"]
    assert user.read_bytes().startswith(b"a hand-tuned")
    assert unverified_files(out, ["model.onnx"]) == ["model_int8.onnx"]
    assert runfiles.foreign_entries(run) == ["export/model_int8.onnx"]
    # same size, new content: the mtime tells (copied back with the old mtime and size, it would pass)
    runfiles.atomic_write(out / "model.onnx", b"0123456789")
    st = os.stat(out / "model.onnx")
    (out / "model.onnx").write_bytes(b"9876543210")
    os.utime(out / "model.onnx", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert "export/model.onnx" in runfiles.foreign_entries(run)
    try:
        runfiles.clear_run(run)
    except rundir.RunDirError as exc:
        assert "export/model" in str(exc)
    else:
        raise AssertionError("clear_run removed a file the user replaced")
    assert user.exists() and (out / "model.onnx").read_bytes() == b"9876543210"


def test_failed_mark_is_read_from_the_metadata(tmp_path):
    """serving reads the failed mark from the model metadata (TF-free) and warns on load."""
    from cvkeras.serving.metadata import ModelMetadata, failed_name

    meta = ModelMetadata(labels=["a", "b"], input_size=(8, 8))
    assert meta.failed_check is None
    meta.extra["verification"] = {"status": "failed", "reason": "agreement 0.5 < 0.99"}
    assert ModelMetadata.from_json(meta.to_json()).failed_check == "agreement 0.5 < 0.99"
    assert failed_name("export/model_int8.tflite") == Path("export/model_int8.FAILED.tflite")


def test_mark_failed_renames_marks_and_never_overwrites_a_foreign_file(tmp_path):
    """``mark_failed`` on a real (tiny) ONNX model: renamed, marked in its metadata, warned about on load."""
    from cvkeras.export.folder import mark_failed
    from cvkeras.export.verify import ArtifactResult
    from cvkeras.serving.metadata import FailedModelWarning
    from cvkeras.serving.predictor import Predictor
    from tests.support.serving_models import make_onnx, metadata

    path = make_onnx(tmp_path / "model_int8.onnx", metadata())
    res = ArtifactResult("model_int8.onnx", "onnx", "int8", str(path), status="failed",
                         error="model_int8.onnx: top-1 agreement 50.00 % < 99 % required")
    mark_failed(res)
    assert Path(res.path).name == "model_int8.FAILED.onnx" and not path.exists()
    with pytest.warns(FailedModelWarning, match="FAILED its export check"):
        predictor = Predictor.load(res.path)
    assert predictor.metadata.failed_check == "model_int8.onnx: top-1 agreement 50.00 % < 99 % required"

    mine = tmp_path / "other" / "model_int8.FAILED.onnx"  # a file of that name cvkeras cannot prove it wrote
    mine.parent.mkdir()
    mine.write_bytes(b"user file")
    again = make_onnx(mine.parent / "model_int8.onnx", metadata())
    res = ArtifactResult("model_int8.onnx", "onnx", "int8", str(again), status="failed", error="x: failed")
    mark_failed(res)
    assert mine.read_bytes() == b"user file" and not again.exists() and "not kept" in res.error

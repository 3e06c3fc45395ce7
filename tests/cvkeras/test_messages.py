"""What a newcomer reads: the finetune story (header, stage labels, summary, --quiet), tables that never cut
names or numbers at 80 columns, and helpful messages for natural mistakes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvkeras.cli import app
from cvkeras.cli.finetune import final_line, summary_lines
from cvkeras.run.config import FinetuneConfig
from cvkeras.train.stages import stage_label
from cvkeras.train.trainer import FinetuneResult, header_lines

# MobileNet alpha 0.25: traces in half the time of MobileNetV2 alpha 0.35; no test here is about the backbone
TINY = ["--model", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "32",
        "--batch-size", "8"]


def _result(run: Path, metrics: dict | None = None) -> FinetuneResult:
    return FinetuneResult(run, metrics or {}, 0.9, 6, 0, "float32", 1, best_epoch=4)


def test_stage_labels_say_what_trains() -> None:
    assert stage_label(1, True, "0.3") == "head on a frozen backbone"
    assert stage_label(2, True, "0.3") == "fine-tuning top 30 % of the backbone"
    assert stage_label(2, True, "all") == "fine-tuning the whole backbone"
    assert stage_label(1, False, "all").startswith("whole network from scratch")


def test_header_names_data_classes_model_size_precision_and_output(tmp_path: Path) -> None:
    cfg = FinetuneConfig(data="data/flowers", model="mobilenet_v2", alpha=0.35, image_size=[96, 96])
    text = "\n".join(header_lines(cfg, tmp_path / "run", [f"c{i}" for i in range(8)], 80, 20, 5, 412_000,
                                  "float32", 1))
    for part in ("data/flowers: 80 train, 20 val, 5 test images", "classes    8: c0, c1", "(2 more)",
                 "mobilenet_v2 (alpha 0.35), 0.41 M parameters", "96x96 px", "float32", str(tmp_path / "run")):
        assert part in text, part


def test_summary_and_final_line_name_best_epoch_accuracy_results_and_next_command(tmp_path: Path) -> None:
    (tmp_path / "curves.png").write_bytes(b"png")
    metrics = {"n": 20, "accuracy": 0.85, "cross_entropy": 0.4, "macro_f1": 0.8}
    lines = summary_lines(_result(tmp_path, metrics))
    assert "best epoch 4" in lines[0] and any(line.startswith("val accuracy") and "0.8500" in line for line in lines)
    assert any("curves.png" in line and str(tmp_path) in line for line in lines)
    last = final_line(_result(tmp_path, metrics))
    assert last.startswith(f"Results saved to {tmp_path}") and "85.00 %" in last and "epoch 4" in last
    assert last.endswith(f"cvkeras export {tmp_path} --int8")


@pytest.mark.slow
def test_finetune_console_tells_the_story_and_quiet_keeps_the_last_line(tmp_path: Path) -> None:
    from tests.support.shapes import write_shapes

    data = write_shapes(tmp_path / "shapes", per_class=4, size=32)
    runner = CliRunner()
    args = ["finetune", str(data), *TINY, "--epochs", "1", "--fine-tune-epochs", "1"]
    loud = runner.invoke(app, [*args, "-o", str(tmp_path / "a")], env={"COLUMNS": "80"})
    assert loud.exit_code == 0, loud.output
    out = loud.output
    assert out.index("classes    3: circle, square, triangle") < out.index("stage 1/2:") < out.index("stage 2/2:")
    assert "M parameters" in out and "32x32 px" in out and f"output     {tmp_path / 'a'}" in out
    assert "best epoch" in out and "…" not in out
    assert out.rstrip().splitlines()[-1].startswith(f"Results saved to {tmp_path / 'a'}")
    # --quiet silences the one log and verbosity both stages share (cli/finetune.py): one stage shows it
    quiet = runner.invoke(app, [*args, "--fine-tune-epochs", "0", "-o", str(tmp_path / "b"), "--quiet"],
                          env={"COLUMNS": "80"})
    assert quiet.exit_code == 0, quiet.output
    lines = [line for line in quiet.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(rf"Results saved to {re.escape(str(tmp_path / 'b'))} ", lines[0]), lines


# --- tables at 80 columns -------------------------------------------------------------------------------------

def _narrow(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80", "NO_COLOR": "1"}, terminal_width=80)


@pytest.fixture
def onnx_pair(tmp_path: Path) -> tuple[Path, Path]:
    from tests.support.serving_models import make_onnx, metadata

    export = tmp_path / "export"
    return (make_onnx(export / "model_int8_calibrated_entropy.onnx", meta=metadata()),
            make_onnx(export / "model_float32_reference_copy.onnx", meta=metadata()))


def test_benchmark_at_80_columns_cuts_no_name_or_number(onnx_pair: tuple[Path, Path]) -> None:
    result = _narrow("benchmark", *map(str, onnx_pair), "--iters", "2", "--rounds", "1", "--warmup", "0")
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout and max(map(len, result.stdout.splitlines())) <= 80
    for path in onnx_pair:
        assert path.name in result.stdout
    assert re.search(r"images/s +\d+\.\d", result.stdout)  # a whole number, its label beside it


def test_predict_at_80_columns_keeps_file_names_whole(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "holiday_photos_from_the_summer_of_2024" / "beach_and_mountains"
    folder.mkdir(parents=True)
    names = [folder / f"IMG_20240712_{i:06d}_very_descriptive_name.jpg" for i in range(2)]
    for path in names:
        Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    result = _narrow("predict", str(onnx_pair[0]), str(folder))
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    for path in names:
        assert str(path) in result.stdout  # whole, on one line (stacked layout when it must)


# --- natural mistakes -----------------------------------------------------------------------------------------

def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def test_predict_on_a_run_folder_names_its_exported_models(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "best.keras").write_bytes(b"keras")
    line = _error_line(_narrow("predict", str(tmp_path), "x.jpg"))
    assert "pass one of its exported models" in line and onnx_pair[0].name in line


def test_predict_on_a_run_folder_not_yet_exported_says_export(tmp_path: Path) -> None:
    (tmp_path / "best.keras").write_bytes(b"keras")
    line = _error_line(_narrow("predict", str(tmp_path), "x.jpg"))
    assert f"cvkeras export {tmp_path}" in line


def test_predict_on_a_keras_file_says_how_to_export(tmp_path: Path) -> None:
    (tmp_path / "best.keras").write_bytes(b"keras")
    line = _error_line(_narrow("predict", str(tmp_path / "best.keras"), "x.jpg"))
    assert f"cvkeras export {tmp_path}" in line and "model.onnx" in line


def test_validate_an_int8_file_not_exported_suggests_the_flag(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    missing = onnx_pair[0].parent / "model_int8.tflite"
    line = _error_line(_narrow("validate", str(missing), "--data", str(tmp_path)))
    assert f"cvkeras export {tmp_path} --int8" in line


def _tiny_images(root: Path) -> list[Path]:
    from PIL import Image

    paths = []
    for i, label in enumerate(["cat", "dog"] * 3):
        path = root / "img" / f"{label}{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("header,order", [("filename,class", "pl"), ("label,path", "lp"),
                                          ("Category,Image,Split", "pls"), ("path,label", "pl"), (None, "pl")])
def test_csv_manifest_columns_by_header_name(tmp_path: Path, header: str | None, order: str) -> None:
    from cvkeras.data.sources import read_csv

    rows = []
    for i, path in enumerate(_tiny_images(tmp_path)):
        cells = {"p": f"img/{path.name}", "l": path.stem.rstrip("0123456789"), "s": "val" if i < 2 else "train"}
        rows.append(",".join(cells[c] for c in ((order[1], order[0], "s") if header and header.startswith("Cat")
                                                  else order)))
    manifest = tmp_path / "data.csv"
    manifest.write_text("\n".join(([header] if header else []) + rows) + "\n")
    split = read_csv(manifest)
    assert split.classes == ["cat", "dog"] and len(split.train) + len(split.val) == 6
    if header and "Split" in header:
        assert len(split.val) == 2


def test_csv_header_without_a_label_column_is_one_clear_line(tmp_path: Path) -> None:
    from cvkeras.data.sources import DataError, read_csv

    _tiny_images(tmp_path)
    manifest = tmp_path / "data.csv"
    manifest.write_text("filename,species\nimg/cat0.png,cat\n")
    with pytest.raises(DataError, match=r"data.csv:1: .*names no label column; call it one of label, class"):
        read_csv(manifest)


# --- validate on the run's own split --------------------------------------------------------------------------

def _run_with_export(tmp_path: Path) -> tuple[Path, Path, list]:
    import json

    from tests.support.serving_models import LABELS, make_onnx, metadata, write_class_folder

    items = write_class_folder(tmp_path / "data", per_class=4)  # one folder per class, no val/
    val = [it for i, it in enumerate(items) if i % 4 == 0]
    train = [it for it in items if it not in val]
    run = tmp_path / "run"
    run.mkdir()
    (run / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (run / "split.json").write_text(json.dumps({
        "source": "folder", "root": str(tmp_path / "data"), "seed": 42, "classes": LABELS,
        "train": [[str(p), y] for p, y in train], "val": [[str(p), y] for p, y in val], "test": []}))
    model = make_onnx(run / "export" / "model.onnx", meta=metadata())
    return run, model, val


def test_validate_run_uses_exactly_the_recorded_val_split(tmp_path: Path) -> None:
    import json

    run, model, val = _run_with_export(tmp_path)
    for args in (["--run", str(run)], []):  # a model in RUN/export/ knows its run
        result = _narrow("validate", str(model), *args, "--json")
        assert result.exit_code in (0, 1), result.output
        report = json.loads(result.stdout)
        assert report["n"] == len(val) == 4, args
    whole = json.loads(_narrow("validate", str(model), "--data", str(tmp_path / "data"), "--json").stdout)
    assert whole["n"] == 16  # the data root holds the training images too


def test_validate_run_reports_missing_files_and_refuses_both_sources(tmp_path: Path) -> None:
    run, model, val = _run_with_export(tmp_path)
    val[0][0].unlink()
    result = _narrow("validate", str(model), "--run", str(run), "--json")
    assert result.exit_code in (0, 1) and "1 recorded validation file(s) are missing" in result.stderr
    line = _error_line(_narrow("validate", str(model), "--run", str(run), "--data", str(tmp_path)))
    assert "not both" in line
    elsewhere = tmp_path / "loose.onnx"
    elsewhere.write_bytes(model.read_bytes())
    assert "--run RUN" in _error_line(_narrow("validate", str(elsewhere)))

"""``--help`` at 80 columns: defaults visible and taken from FinetuneConfig, allowed values, no leaked types."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from cvkeras import __version__
from cvkeras.cli import app
from cvkeras.run.config import OPTIMIZERS, PRECISIONS, FinetuneConfig
from tests.support.cli import invoke

LEAKS = ("<list[", "{run}", "{model}", "<bool>", "<str>", "<int", "<path>", "…")


def _help(*args: str) -> str:
    result = invoke(*args, "--help", env={"COLUMNS": "80", "NO_COLOR": "1"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def _flat(text: str) -> str:
    """The help with box borders and line breaks removed, so a wrapped phrase reads as one."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("command", ["finetune", "export", "predict", "validate", "benchmark", "models",
                                     "evaluate", "explain", "report", "demo"])
def test_help_fits_80_columns_without_leaked_types(command: str) -> None:
    out = _help(command)
    for leak in LEAKS:
        assert leak not in out, (leak, out)
    assert max(len(line) for line in out.splitlines()) <= 80


def test_finetune_help_shows_config_defaults_and_choices() -> None:
    flat = _flat(_help("finetune"))
    cfg = FinetuneConfig()
    for name in ("model", "weights", "augment", "optimizer", "precision", "cache", "class_weights", "epochs",
                 "batch_size", "seed"):
        assert f"(default: {getattr(cfg, name)})" in flat, name
    assert "(default: mobilenet_v2)" in flat and "(default: auto)" in flat and "(default: adamw)" in flat
    assert f"One of: {', '.join(OPTIMIZERS)}." in flat
    assert f"One of: {', '.join(PRECISIONS)}." in flat
    assert "finetune [OPTIONS] [DATA]" in flat
    assert "Examples: cvkeras finetune data/flowers" in flat


def test_finetune_help_follows_the_dataclass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults are read from FinetuneConfig, not typed into the help strings."""
    monkeypatch.setattr(FinetuneConfig.__dataclass_fields__["model"], "default", "efficientnet_b0")
    assert "(default: efficientnet_b0)" in _flat(_help("finetune"))


def test_export_and_predict_help() -> None:
    export = _flat(_help("export"))
    assert "export [OPTIONS] RUN" in export
    assert "(default: RUN/export)" in export and "(default: minmax)" in export
    assert "--no-repair turns it off" in export and "[required]" in export
    assert "cvkeras export runs/mobilenet_v2-1 --int8" in export
    runner = CliRunner()  # help hides the off-switch's column; the parser still knows it afterwards
    after = runner.invoke(app, ["export", "/nonexistent-run", "--no-repair"])
    assert after.exit_code == 2 and "No such option" not in after.output and "run directory" in after.output
    predict = _flat(_help("predict"))
    assert "predict [OPTIONS] MODEL PATHS..." in predict
    assert "(default: 5)" in predict and "INT>=1" in predict
    assert "One of: latency, throughput, auto." in predict or "(default: auto)" in predict
    assert "cvkeras predict" in predict.split("Examples:")[1]
    validate = _flat(_help("validate"))
    assert "FLOAT 0..1" in validate and "(default: 0.99)" in validate
    assert "cvkeras validate" in validate.split("Example:")[1]


def test_main_help_and_version() -> None:
    out = _help()
    assert "--version" in out and "<bool>" not in out
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"cvkeras {__version__}"

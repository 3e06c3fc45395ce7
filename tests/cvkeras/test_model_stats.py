"""`cvkeras models` figures are computed from the real models, and the shipped table matches a rebuild."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cvkeras.cli import app
from cvkeras.models.registry import REGISTRY
from cvkeras.models.stats import count_macs, load_table, measure


def test_macs_of_each_layer_kind_by_hand():
    import keras

    x_in = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(x_in)  # 8*8 * 3*3*3*4 = 6912
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)  # 4*4 * 3*3*4 = 576
    x = keras.layers.SeparableConv2D(6, 1)(x)  # 4*4 * (1*1*4 + 4*6) = 448
    x = keras.layers.Conv2D(6, 1, groups=2)(x)  # 4*4 * 1*1*3*6 = 288
    x = keras.layers.Dense(5)(x)  # 4*4 * 6*5 = 480
    model = keras.Model(x_in, x)
    assert count_macs(model) == 6912 + 576 + 448 + 288 + 480


def test_shipped_table_covers_every_registry_row():
    table = load_table()
    assert set(table) == set(REGISTRY), "run `python -m cvkeras.models.stats` after changing the registry"
    for name, row in table.items():
        assert row["params"] > 0 and row["gmacs"] > 0, name
        assert list(row["input_size"]) == list(REGISTRY[name].input_size), name


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet"])
def test_shipped_rows_match_a_rebuild(name):
    shipped = load_table()[name]
    fresh = measure(name, latency_runs=0)
    for key in ("params", "gmacs", "float32_mb", "int8_mb", "input_size", "alpha"):
        assert fresh[key] == shipped[key], key
    # published figures (MobileNetV2 1.0: 3.5 M params / 300 M MACs with its 1.28 M-parameter head)
    if name == "mobilenet_v2":
        assert 0.28 < fresh["gmacs"] < 0.31 and 2.2e6 < fresh["params"] < 2.3e6


def test_models_command_shows_computed_figures_and_measures_on_request():
    runner = CliRunner()
    listed = runner.invoke(app, ["models"], terminal_width=120)
    assert listed.exit_code == 0, listed.output
    line = next(row for row in listed.output.splitlines() if " mobilenet_v2 " in row)
    assert "2.26" in line and "0.30" in line  # params M, GMACs
    measured = runner.invoke(app, ["models", "--measure", "mobilenet_v2", "--alpha", "0.35", "--image-size", "96"],
                             terminal_width=120)
    assert measured.exit_code == 0, measured.output
    assert "96x96" in measured.output and "0.41" in measured.output and "CPU ms" in measured.output
    bad = runner.invoke(app, ["models", "--measure", "mobilenet_v9"])
    assert bad.exit_code == 2 and "did you mean" in bad.output

"""Shared fixtures: tiny datasets written by the tests themselves (never ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.markers import needs_train_extra
from tests.support.shapes import write_shapes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# pytest-xdist's workers set COLUMNS=80, and the CLI's console then folds its tables (names, statuses) where a
# serial run, without COLUMNS, prints them whole: every worker sees what a serial run sees.
os.environ.pop("COLUMNS", None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test whose module needs the train extra ``tf`` (``-m "not tf"``: the device-side tests)."""
    for item in items:
        if needs_train_extra(Path(item.fspath)):
            item.add_marker(pytest.mark.tf)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CVKERAS_CACHE", str(tmp_path_factory.getbasetemp() / "cvkeras-cache"))


@pytest.fixture
def shapes_dir(tmp_path) -> Path:
    return write_shapes(tmp_path / "shapes")


@pytest.fixture(scope="session")
def export_tiny_run(tmp_path_factory) -> Path:
    """The session's tiny fine-tuned run (``make_tiny_run``); read-only: copy it to change it."""
    from tests.support.export_models import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("export_tiny"))


@pytest.fixture(scope="session")
def int8_hostile_run(export_tiny_run, tmp_path_factory) -> Path:
    """The tiny run's model rescaled so that full int8 fails on every CPU (``make_int8_hostile_run``);
    read-only: copy it to change it."""
    from tests.support.export_models import make_int8_hostile_run

    return make_int8_hostile_run(export_tiny_run, tmp_path_factory.mktemp("int8_hostile") / "run")


@pytest.fixture(scope="session")
def foreign(tmp_path_factory) -> Path:
    """Generated photos of none of the tiny run's classes (``write_foreign``), for the unknown detector."""
    from tests.support.export_models import write_foreign

    return write_foreign(tmp_path_factory.mktemp("foreign") / "photos")

"""Shared fixtures: tiny datasets written by the tests themselves (never ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from shapes_helpers import write_shapes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CVKERAS_CACHE", str(tmp_path_factory.getbasetemp() / "cvkeras-cache"))


@pytest.fixture
def shapes_dir(tmp_path) -> Path:
    return write_shapes(tmp_path / "shapes")


@pytest.fixture(scope="session")
def export_tiny_run(tmp_path_factory) -> Path:
    """The session's tiny fine-tuned run (``export_helpers.make_tiny_run``); read-only: copy it to change it."""
    from export_helpers import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("export_tiny"))


@pytest.fixture(scope="session")
def int8_hostile_run(export_tiny_run, tmp_path_factory) -> Path:
    """The tiny run's model rescaled so that full int8 fails on every CPU (``make_int8_hostile_run``);
    read-only: copy it to change it."""
    from export_helpers import make_int8_hostile_run

    return make_int8_hostile_run(export_tiny_run, tmp_path_factory.mktemp("int8_hostile") / "run")

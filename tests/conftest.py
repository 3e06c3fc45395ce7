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

"""Fixtures of the detection tests: the data factory (loaded by path, so its name cannot clash)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_NAME = "modelyard_tests_detection_factory"


def load_factory():
    if _NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("factory.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[_NAME]


@pytest.fixture
def factory():
    return load_factory()


@pytest.fixture
def volume(tmp_path) -> Path:
    folder = tmp_path / "volume"
    folder.mkdir()
    return folder

"""Without the `modelyard[detection]` extra: one clear error before any step runs (ultralytics hidden)."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.detection import yolo_env
from modelyard.errors import ModelyardError


@pytest.fixture
def no_ultralytics(monkeypatch):
    for name in [m for m in sys.modules if m == "ultralytics" or m.startswith("ultralytics.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # what an import of an absent package does


def test_the_module_and_the_check_name_the_extra(no_ultralytics):
    for call in (yolo_env.ultralytics_module, yolo_env.require_ultralytics):
        with pytest.raises(ModelyardError, match=r"needs ultralytics, which is not installed: pip install 'modelyard\[detection\]'"):
            call()


def test_run_detection_stops_before_downloading(no_ultralytics, tmp_path, factory):
    archive, classes = factory.make_archive(tmp_path)
    ws = tmp_path / "ws"
    result = CliRunner().invoke(app, ["run", "detection", "--source", str(archive), "--classes", str(classes),
                                      "--workspace", str(ws), "--offline"])
    assert result.exit_code == 1 and "pip install 'modelyard[detection]'" in result.output
    assert "Traceback" not in result.output
    assert not (ws / "raw").exists() and not (ws / "runs").exists()  # no step ran

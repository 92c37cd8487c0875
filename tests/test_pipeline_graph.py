"""The step graph binds arguments by name and refuses graphs that cannot run."""

from __future__ import annotations

import json

import pytest

from modelyard.pipeline.graph import Pipeline, Step
from modelyard.pipeline.local import LocalRunner


def make(x: int, scale: int = 2) -> dict:
    return {"y": x * scale, "reused": x == 0}


def add(y: int, z: int = 1) -> dict:
    return {"total": y + z}


def test_binding_edges_and_run_record(tmp_path):
    pipe = Pipeline("p", [Step("make", make), Step("add", add, inputs={"y": "make.y"})], params={"x": 3, "z": 10})
    assert pipe.edges() == {("make", "add")}
    record = LocalRunner(tmp_path).run(pipe, {"x": 4})
    assert record.outputs() == {"make": {"y": 8, "reused": False}, "add": {"total": 18}}
    saved = json.loads(open(record.path).read())
    assert saved["status"] == "succeeded" and [s["status"] for s in saved["steps"]] == ["succeeded", "succeeded"]
    assert saved["steps"][1]["inputs"] == {"y": 8, "z": 10}
    again = LocalRunner(tmp_path).run(pipe, {"x": 0})
    assert again.step("make").status == "skipped"


def test_invalid_graphs_and_params():
    with pytest.raises(ValueError, match="depends on"):
        Pipeline("p", [Step("add", add, inputs={"y": "make.y"}), Step("make", make)], params={"x": 1})
    with pytest.raises(ValueError, match="'x' is bound to nothing"):
        Pipeline("p", [Step("make", make)], params={})
    pipe = Pipeline("p", [Step("make", make)], params={"x": 1})
    with pytest.raises(ValueError, match="unknown parameter.*nope"):
        pipe.merge_params({"nope": 1})


def test_failed_step_is_recorded(tmp_path):
    def boom(x: int) -> dict:
        raise RuntimeError("bad x")

    pipe = Pipeline("p", [Step("boom", boom), Step("add", add, inputs={"y": "boom.y"})], params={"x": 1})
    with pytest.raises(RuntimeError):
        LocalRunner(tmp_path).run(pipe, {})
    saved = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    assert saved["status"] == "failed"
    assert [(s["status"], s["error"]) for s in saved["steps"]] == [("failed", "RuntimeError: bad x"), ("pending", None)]


def test_run_record_keeps_no_secrets(tmp_path):
    def step(tracking_uri: str, aws_secret_access_key: str = "") -> dict:
        return {}

    pipe = Pipeline("p", [Step("s", step)], params={"tracking_uri": "", "aws_secret_access_key": ""})
    record = LocalRunner(tmp_path).run(pipe, {"tracking_uri": "https://ann:hunter2@mlflow.example/", "aws_secret_access_key": "hunter2"})
    text = open(record.path).read()
    assert "hunter2" not in text and "https://ann:***@mlflow.example/" in text


def test_runs_lists_the_readable_records_and_names_the_others(tmp_path):
    from typer.testing import CliRunner

    from modelyard.cli import app

    pipe = Pipeline("p", [Step("make", make)], params={"x": 3})
    record = LocalRunner(tmp_path).run(pipe, {})
    (tmp_path / "runs" / "zz-broken.json").write_text("{broken")
    (tmp_path / "runs" / "zz-list.json").write_text("[1, 2]")
    (tmp_path / "runs" / "zz-steps.json").write_text('{"run_id": "x", "status": "ok", "steps": 5}')
    (tmp_path / "runs" / "zz-step.json").write_text('{"run_id": "y", "status": "ok", "steps": [{"name": "a"}]}')
    result = CliRunner().invoke(app, ["runs", "-w", str(tmp_path)], catch_exceptions=False)
    output = "".join(result.output.split())  # rich wraps long paths
    assert result.exit_code == 0 and record.run_id in output and "make:succeeded" in output
    assert "skipped" in output and "zz-broken.json:Expecting" in output and "zz-list.json:notarunrecord" in output
    assert "zz-steps.json:notarunrecord" in output and "zz-step.json:notarunrecord" in output

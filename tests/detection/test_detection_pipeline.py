"""The whole detection chain on generated shapes: download -> split -> check -> train -> validate -> promote -> detect.

One training (2 epochs at imgsz 64 on 18 tiny images) is shared by the assertions to keep the suite fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from modelyard.detection import yolo_env
from modelyard.errors import ModelyardError

pytest.importorskip("ultralytics")
mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Run the pipeline once through the LocalRunner; yields (volume, tracking_uri, run record, download digest)."""
    import importlib.util

    from modelyard.detection.pipeline import build
    from modelyard.pipeline.local import LocalRunner

    name = "modelyard_tests_detection_factory"  # as conftest.py loads it: by path, under a unique name
    factory = sys.modules.get(name)
    if factory is None:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("factory.py"))
        factory = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(factory)
    tmp = tmp_path_factory.mktemp("detection-e2e")
    volume = tmp / "volume"
    archive, classes = factory.make_archive(tmp)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    pipeline = build()
    params = dict(volume=str(volume), tracking_uri=uri, source=str(archive), classes=str(classes), weights="",
                  epochs=2, imgsz=64, batch_size=8, tags='{"suite": "tests"}')
    record = LocalRunner(volume).run(pipeline, params)
    return volume, uri, record, pipeline, params


def test_chain_outputs(chain):
    volume, uri, record, _, _ = chain
    assert record.status == "succeeded"
    out = record.outputs()
    assert (out["split"]["n_train"], out["split"]["n_val"], out["split"]["n_test"]) == (18, 4, 2)
    assert out["check"]["n_images"] == 24
    assert out["promote"]["promoted"] is True and out["promote"]["version"] == "1"
    assert "promoted to @staging" in out["promote"]["decision"]
    assert "first candidate" in out["promote"]["reason"]
    for name in ("map50", "map50_95", "precision", "recall", "test_map50", "test_map50_95"):
        assert 0.0 <= out["validate"][name] <= 1.0
    # the run record in the volume has every step's outputs
    saved = json.loads(Path(record.path).read_text())
    assert [s["status"] for s in saved["steps"]] == ["succeeded"] * 6


def test_mlflow_run(chain):
    volume, uri, record, _, _ = chain
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = record.outputs()["train"]["run_id"]
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "detection"
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["epochs"], params["imgsz"], params["batch_size"], params["model"]) == ("2", "64", "8", "yolov8n.yaml")
    assert params["n_train"] == "18" and params["classes"] == "box,disc"
    assert run.data.tags["suite"] == "tests"
    assert run.data.tags["dataset_digest"] == record.outputs()["download"]["digest"]
    # per-epoch metrics: one value per epoch, steps 1 and 2
    for key in ("train/box_loss", "train/cls_loss", "train/dfl_loss", "val/precision", "val/recall", "val/map50", "val/map50_95"):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
    # validate logged its scores to the same run
    metrics = run.data.metrics
    for key in ("map50", "map50_95", "precision", "recall", "test_map50", "test_map50_95"):
        assert metrics[key] == pytest.approx(record.outputs()["validate"][key], abs=1e-4)
    # the dataset as a run input, the model as a logged model of the run, TensorBoard event files in the volume
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["shapes"]
    model_uri = record.outputs()["train"]["model_uri"]
    assert run.data.tags["model_uri"] == model_uri
    assert list((volume / "tensorboard" / "detection" / run_id).glob("events.out.tfevents.*"))
    # staging alias on the first promotion
    version = client.get_model_version_by_alias("yolo-detector", "staging")
    assert str(version.version) == "1" and version.run_id == run_id


def test_ultralytics_stayed_offline_in_the_volume(chain):
    volume, *_ = chain
    config = volume / "ultralytics" / "config" / "Ultralytics"
    from ultralytics.utils import SETTINGS

    assert SETTINGS["mlflow"] is False and SETTINGS["sync"] is False
    if Path(SETTINGS.file).parent == config:  # the first volume of this process
        assert (config / "Arial.ttf").is_file()
    assert not list(Path.cwd().glob("yolov8n*.pt"))


def test_pyfunc_model_and_detect(chain, tmp_path):
    import pandas as pd

    from modelyard.detection.infer import detect, detect_command

    volume, uri, record, _, _ = chain
    image = next((volume / "datasets" / "detection" / "shapes" / "images" / "test").iterdir())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/yolo-detector@staging")
    frame = model.predict(pd.DataFrame({"image": [str(image)]}), params={"conf": 0.0001})
    assert list(frame.columns) == ["image", "class_id", "class_name", "confidence", "x1", "y1", "x2", "y2"]
    assert set(frame["class_name"]) <= {"box", "disc"}

    out = tmp_path / "annotated.jpg"
    boxes = detect(str(image), alias="staging", tracking_uri=uri, volume=str(volume), save=str(out), conf=0.0001)
    assert out.is_file()
    assert all(set(b) == {"class_id", "class", "confidence", "xyxy"} and len(b["xyxy"]) == 4 for b in boxes)
    assert "object(s)" in detect_command(str(image), alias="staging", workspace=str(volume), tracking_uri=uri)
    with pytest.raises(ModelyardError, match="prod"):
        detect(str(image), alias="prod", tracking_uri=uri, volume=str(volume))


def test_second_run_reuses_data_and_gates_against_staging(chain):
    from modelyard.detection import steps

    volume, uri, record, _, params = chain
    again = steps.download(volume=str(volume), source=params["source"], classes=params["classes"])
    assert again["reused"]
    assert steps.split(volume=str(volume))["reused"]
    run_id = record.outputs()["train"]["run_id"]
    same = steps.promote(tracking_uri=uri, run_id=run_id)
    assert not same["promoted"] and "already holds" in same["reason"]


def test_missing_ultralytics_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics", None)
    with pytest.raises(ModelyardError, match=r"pip install 'modelyard\[detection\]'"):
        yolo_env.ultralytics_module()


def test_choose_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("MODELYARD_OFFLINE", raising=False)
    assert yolo_env.choose_weights(tmp_path, "", False)[0] == ""
    weights, why = yolo_env.choose_weights(tmp_path, "auto", offline=True)
    assert weights == "" and "offline" in why and "yolov8n.yaml" in why
    monkeypatch.setattr(yolo_env, "network_available", lambda *a, **k: False)
    weights, why = yolo_env.choose_weights(tmp_path, "auto")
    assert weights == "" and "no network" in why
    monkeypatch.setattr(yolo_env, "network_available", lambda *a, **k: True)
    assert yolo_env.choose_weights(tmp_path, "auto")[0] == "yolov8n.pt"
    yolo_env.weights_dir(tmp_path).mkdir(parents=True)
    (yolo_env.weights_dir(tmp_path) / "yolov8n.pt").write_bytes(b"x")
    assert yolo_env.choose_weights(tmp_path, "auto", offline=True)[0] == "yolov8n.pt"


def test_pipeline_choose_weights_for_the_cli(tmp_path, monkeypatch):
    from modelyard.detection.pipeline import build, choose_weights

    monkeypatch.setattr(yolo_env, "network_available", lambda *a, **k: False)
    assert choose_weights(offline=False, volume=str(tmp_path)) == {"weights": ""}
    assert set(choose_weights(offline=True, volume=str(tmp_path))) <= set(build().params)


@pytest.mark.parametrize(("pair", "message"), [("epochs=0", "'epochs' must be >= 1"), ("imgsz=-32", "'imgsz' must be >= 1"),
                                               ("val_size=0.95", "'val_size' + 'test_size' must be between 0 and 1")])
def test_values_training_would_refuse_stop_the_run_before_any_step(tmp_path, pair, message):
    from typer.testing import CliRunner

    from modelyard.cli import app

    result = CliRunner().invoke(app, ["run", "detection", "--source", str(tmp_path / "none.tar.gz"), "-w", str(tmp_path / "ws"),
                                      "--offline", "-p", pair])
    assert result.exit_code == 1 and message in " ".join(result.output.split())
    assert not (tmp_path / "ws" / "runs").exists()  # no step ran, no run record

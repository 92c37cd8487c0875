"""The whole detection chain on generated shapes: download -> split -> check -> train -> validate -> promote -> detect.

One training (2 epochs at imgsz 64 on 18 tiny images) is shared by the assertions to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from modelyard.detection import yolo_env
from modelyard.errors import ModelyardError

if os.environ.get("MODELYARD_TESTS_NEED_DETECTION") == "1":  # scripts/test.sh: a broken install fails, not skips
    import ultralytics  # noqa: F401
else:
    pytest.importorskip("ultralytics")
import mlflow  # noqa: E402


class _Record:
    """The run record the CLI wrote, read back from the volume."""

    def __init__(self, path: Path):
        self.path, saved = str(path), json.loads(path.read_text())
        self.status, self.steps = saved["status"], saved["steps"]

    def outputs(self) -> dict[str, dict]:
        return {s["name"]: s["outputs"] for s in self.steps}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """`modelyard run detection --offline` once, with every non-loopback connection refused and counted;
    yields (volume, tracking_uri, run record, pipeline, params, CLI output, connections tried)."""
    import importlib.util
    import socket

    from typer.testing import CliRunner

    from modelyard.cli import app
    from modelyard.detection.pipeline import build

    name = "modelyard_tests_detection_factory"  # as conftest.py loads it: by path, under a unique name
    factory = sys.modules.get(name)
    if factory is None:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("factory.py"))
        factory = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(factory)
    tmp = tmp_path_factory.mktemp("detection-e2e")
    volume = tmp / "volume"
    archive, classes = factory.make_archive(tmp)
    uri = f"sqlite:///{volume / 'mlflow.db'}"  # the workspace's default store
    tried: list = []
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            tried.append(address)
            raise OSError(f"network access in a test: {address}")
        return real_connect(sock, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", guarded_connect)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = CliRunner().invoke(app, [
            "run", "detection", "--source", str(archive), "--classes", str(classes), "--workspace", str(volume),
            "--offline", "-p", "epochs=2", "-p", "imgsz=64", "-p", "batch_size=8", "--tag", "suite=tests"])
    output = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    record = _Record(sorted((volume / "runs").glob("detection-*.json"))[-1])
    params = dict(volume=str(volume), tracking_uri=uri, source=str(archive), classes=str(classes))
    return volume, uri, record, build(), params, output, tried


def test_the_cli_runs_offline_and_says_so(chain):
    volume, uri, record, *_, output, tried = chain
    assert "train: offline: training yolov8n.yaml from scratch instead of fine-tuning yolov8n.pt" in output
    assert "promotion: yolo-detector v1 promoted to @staging" in output and "map50_95" in output
    assert tried == []  # nothing tried to reach the network
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(record.outputs()["train"]["run_id"])
    assert run.data.tags["start"].startswith("offline: training yolov8n.yaml from scratch")
    # exactly one run in the whole store: ultralytics' own MLflow callback logged nothing
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [run.info.run_id]


def test_tensorboard_has_the_losses_the_map_curves_and_the_graph(chain):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    volume, _, record, *_ = chain
    run_id = record.outputs()["train"]["run_id"]
    events = EventAccumulator(str(volume / "tensorboard" / "detection" / run_id))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/box_loss", "train/cls_loss", "train/dfl_loss", "val/map50", "val/map50_95"} <= scalars
    assert [e.step for e in events.Scalars("val/map50")] == [1, 2]
    assert events.Tags()["graph"] is True
    assert not list((volume / "ultralytics" / "runs").rglob("events.out.tfevents.*"))  # logged once, not twice


def test_detect_command_prints_boxes_and_writes_an_annotated_copy(chain, tmp_path):
    from typer.testing import CliRunner

    from modelyard.cli import app

    volume, *_ = chain
    image = next((volume / "datasets" / "detection" / "shapes" / "images" / "test").iterdir())
    out = tmp_path / "annotated.jpg"
    result = CliRunner().invoke(app, ["detect", "--image", str(image), "--alias", "staging", "--workspace", str(volume),
                                      "--conf", "0.0001", "--save", str(out)])
    assert result.exit_code == 0, result.output
    assert f"annotated copy: {out}" in " ".join(result.output.split()) and out.is_file()
    assert "boxes in" in result.output and "yolo-detector@staging" in " ".join(result.output.split())
    missing = CliRunner().invoke(app, ["detect", "--image", str(image), "--workspace", str(volume)])
    assert missing.exit_code == 1 and "@prod" in missing.output and "staging" in missing.output
    assert "Traceback" not in missing.output


def test_chain_outputs(chain):
    volume, uri, record, *_ = chain
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
    volume, uri, record, *_ = chain
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

    from modelyard.detection.infer import detect

    volume, uri, record, *_ = chain
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
    with pytest.raises(ModelyardError, match="prod"):
        detect(str(image), alias="prod", tracking_uri=uri, volume=str(volume))


def test_second_run_reuses_data_and_gates_against_staging(chain):
    from modelyard.detection import steps

    volume, uri, record, _, params, *_ = chain
    again = steps.download(volume=str(volume), source=params["source"], classes=params["classes"])
    assert again["reused"]
    assert steps.split(volume=str(volume))["reused"]
    run_id = record.outputs()["train"]["run_id"]
    same = steps.promote(tracking_uri=uri, run_id=run_id)
    assert not same["promoted"] and "already holds" in same["reason"]


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


def test_a_run_without_a_source_is_refused_before_any_step(tmp_path):
    from modelyard.detection.pipeline import run

    with pytest.raises(ValueError, match="parameter 'source' is required"):
        run(workspace=str(tmp_path / "ws"), classes="c.txt")
    assert not (tmp_path / "ws" / "runs").exists()


def test_choose_start_as_users_mean_it():
    from modelyard.detection.pipeline import build, choose_start

    # an architecture alone builds it from scratch (no download), whatever --offline says
    assert choose_start({"model": "yolov8s.yaml"}) == {"model": "yolov8s.yaml", "weights": "", "offline": False}
    # --offline joins the parameters the train step sees; -p offline=true counts as well
    assert choose_start({}, offline=True) == {"offline": True}
    assert choose_start({"offline": True})["offline"] is True
    assert choose_start({"weights": "w.pt", "model": "yolov8s.yaml"})["weights"] == "w.pt"
    assert set(choose_start({"model": "m.yaml"}, True)) <= set(build().params)


def test_offline_never_downloads_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("MODELYARD_OFFLINE", raising=False)
    with pytest.raises(ModelyardError, match=r"offline: weights yolov8s.pt are not in the volume .*drop --offline"):
        yolo_env.resolve_weights(tmp_path, "yolov8s.pt", offline=True)
    monkeypatch.setenv("MODELYARD_OFFLINE", "1")
    with pytest.raises(ModelyardError, match="offline: weights yolov8s.pt"):
        yolo_env.resolve_weights(tmp_path, "yolov8s.pt")
    local = tmp_path / "mine.pt"
    local.write_bytes(b"x")
    assert yolo_env.resolve_weights(tmp_path, str(local), offline=True) == local.resolve()


def test_setup_keeps_ultralytics_in_the_volume_and_off_the_platform(tmp_path, monkeypatch):
    monkeypatch.setenv("ULTRALYTICS_API_KEY", "secret-key")
    yolo_env.setup(tmp_path)
    from ultralytics import utils

    assert "ULTRALYTICS_API_KEY" not in __import__("os").environ
    assert utils.WEIGHTS_DIR == yolo_env.weights_dir(tmp_path) and utils.RUNS_DIR == yolo_env.ultralytics_root(tmp_path) / "runs"
    assert utils.SETTINGS["tensorboard"] is False and utils.SETTINGS["mlflow"] is False


@pytest.mark.parametrize(("pair", "message"), [("epochs=0", "'epochs' must be >= 1"), ("imgsz=-32", "'imgsz' must be >= 1"),
                                               ("val_size=0.95", "'val_size' + 'test_size' must be between 0 and 1"),
                                               ("device=tpu", "'device': 'tpu' is not one of auto, cpu, cuda"),
                                               ("model=yolov99.yaml", "'yolov99.yaml' is neither a file nor an architecture"),
                                               ("model=yolov8n.pt", "pretrained weights go in weights=yolov8n.pt")])
def test_values_training_would_refuse_stop_the_run_before_any_step(tmp_path, pair, message):
    from typer.testing import CliRunner

    from modelyard.cli import app

    result = CliRunner().invoke(app, ["run", "detection", "--source", str(tmp_path / "none.tar.gz"), "-w", str(tmp_path / "ws"),
                                      "--offline", "-p", pair])
    assert result.exit_code == 1 and message in " ".join(result.output.split())
    assert not (tmp_path / "ws" / "runs").exists()  # no step ran, no run record


def test_fine_tuning_from_a_local_weights_file(chain):
    from mlflow.tracking import MlflowClient

    from modelyard.detection import steps

    volume, uri, record, *_ = chain
    client = MlflowClient(tracking_uri=uri)
    weights = Path(client.get_run(record.outputs()["train"]["run_id"]).data.tags["weights_dir"]) / "best.pt"
    out = steps.train(volume=str(volume), tracking_uri=uri, weights=str(weights), offline=True, epochs=1, imgsz=64, batch_size=8)
    run = client.get_run(out["run_id"])
    assert run.data.params["weights"] == str(weights) and run.data.params["model"] == "best.pt"
    assert run.data.tags["start"] == f"pretrained weights {weights}"
    assert [m.step for m in client.get_metric_history(out["run_id"], "val/map50")] == [1]

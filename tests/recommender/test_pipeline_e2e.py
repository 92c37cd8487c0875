"""The whole recommender pipeline through the CLI, on a generated MovieLens zip served over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from movielens_factory import make_movielens_zip

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from modelyard.cli import app  # noqa: E402

pytestmark = pytest.mark.slow
runner = CliRunner()
FAST = ["-p", "batch_size=32"]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def last_record(workspace: Path) -> dict:
    records = sorted((workspace / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(records[-1].read_text())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A generated ml-latest-small zip behind a local HTTP server, and what it holds."""
    import functools
    import http.server
    import threading

    folder = tmp_path_factory.mktemp("served")
    written = make_movielens_zip(folder / "ml-latest-small.zip", n_users=40, n_items=50, n_ratings=800)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ml-latest-small.zip", written
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def first_run(served, tmp_path_factory):
    url, written = served
    workspace = tmp_path_factory.mktemp("ws")
    result = invoke("run", "recommender", "--source", url, "-w", str(workspace), "--preset", "accurate",
                    "-p", "epochs=3", *FAST, "--tag", "team=recs")
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    return workspace, last_record(workspace), written, result.output


def test_run_logs_params_metrics_summary_model_and_tensorboard(first_run):
    workspace, record, _, output = first_run
    assert record["status"] == "succeeded"
    assert [s["status"] for s in record["steps"]] == ["succeeded"] * 6
    run_id = record["steps"][3]["outputs"]["run_id"]
    run = MlflowClient().get_run(run_id)
    params = run.data.params
    assert params["epochs"] == "3" and params["batch_size"] == "32" and params["model"] == "biased-mf"
    assert params["loss_function"] == "MSELoss" and params["optimizer_name"] == "SparseAdam"
    assert int(params["n_users"]) == 40 and 0 < int(params["n_items"]) <= 50
    assert run.data.tags["team"] == "recs"
    assert run.inputs.dataset_inputs[0].dataset.digest == record["steps"][1]["outputs"]["dataset_digest"]
    history = MlflowClient().get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert len(MlflowClient().get_metric_history(run_id, "val_loss")) == 3
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id)}
    assert "model_summary.txt" in artifacts
    assert "BiasedMF" in mlflow.artifacts.load_text(f"runs:/{run_id}/model_summary.txt")
    for name in ("rmse", "mae", "precision_at_k", "recall_at_k", "ndcg_at_k"):
        assert name in run.data.metrics
    assert "promoted to @staging" in output and "rmse" in output
    losses = [m.value for m in history]
    for epoch in (1, 3):  # one progress line per epoch, with the logged loss
        assert f"epoch {epoch}/3: train_loss {losses[epoch - 1]:.4f}" in output
    # TensorBoard: the same per-epoch scalars in event files under the workspace
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = Path(run.data.tags["tensorboard_logdir"])
    assert logdir.is_relative_to(workspace)
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2, 3]
    assert acc.Scalars("train_loss")[-1].value == pytest.approx(history[-1].value, rel=1e-5)


def test_validation_metrics_equal_an_independent_computation(first_run):
    workspace, record, written, _ = first_run
    run_id = record["steps"][3]["outputs"]["run_id"]
    lake = workspace / "lake" / "movielens" / "ml-latest-small"
    val = pd.read_parquet(lake / "val.parquet")
    train = pd.read_parquet(lake / "train.parquet")
    # the split covers every generated rating exactly once
    assert len(val) + len(train) + len(pd.read_parquet(lake / "test.parquet")) == len(written.ratings) == 800
    users = {u: k for k, u in enumerate(sorted(train.user_id.unique()))}
    items = {i: k for k, i in enumerate(sorted(train.item_id.unique()))}
    val = val[val.user_id.isin(users) & val.item_id.isin(items)]
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    import torch

    x = torch.tensor([[users[u], items[i]] for u, i in zip(val.user_id, val.item_id)])
    with torch.no_grad():
        pred = model(x).numpy().astype(np.float64)
    true = val.rating.to_numpy(np.float64)
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)), rel=1e-5)
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(pred - true)), rel=1e-5)
    # the textbook's per-user loop (Surprise FAQ), k=50, threshold 3.0
    precisions, recalls = [], []
    frame = pd.DataFrame({"u": val.user_id.to_numpy(), "t": true, "p": pred})
    for _, g in frame.groupby("u"):
        top = g.sort_values("p", ascending=False).head(50)
        n_rel = (g.t >= 3.0).sum()
        n_rec = (top.p >= 3.0).sum()
        both = ((top.t >= 3.0) & (top.p >= 3.0)).sum()
        precisions.append(both / n_rec if n_rec else 0.0)
        recalls.append(both / n_rel if n_rel else 0.0)
    assert metrics["precision_at_k"] == pytest.approx(np.mean(precisions), abs=1e-9)
    assert metrics["recall_at_k"] == pytest.approx(np.mean(recalls), abs=1e-9)
    table = mlflow.artifacts.load_text(f"runs:/{run_id}/validation/example_recommendations.json")
    assert "rated_highly_in_val" in table


def test_staging_alias_moved_and_decision_recorded(first_run):
    record = first_run[1]
    client = MlflowClient()
    mv = client.get_model_version_by_alias("movielens-recommender", "staging")
    assert str(mv.version) == "1" and mv.run_id == record["steps"][3]["outputs"]["run_id"]
    assert mv.tags["modelyard.decision.staging"].startswith("promoted")


def test_second_identical_run_reuses_download_and_lake(first_run, served):
    workspace = first_run[0]
    url = served[0]
    result = invoke("run", "recommender", "--source", url, "-w", str(workspace), "--preset", "accurate",
                    "-p", "epochs=3", *FAST, "--tag", "team=recs")
    assert result.exit_code == 0, result.output
    statuses = {s["name"]: s["status"] for s in last_record(workspace)["steps"]}
    assert statuses["download"] == "skipped" and statuses["ingest"] == "skipped"
    assert statuses["train"] == "succeeded"


def test_worse_run_is_not_promoted_and_repromotion_changes_nothing(first_run, served):
    workspace = first_run[0]
    staging_before = MlflowClient().get_model_version_by_alias("movielens-recommender", "staging")
    # an untrained MLP predicts ~0 for ratings of 0.5..5: far worse rmse than the trained model
    result = invoke("run", "recommender", "--source", served[0], "-w", str(workspace), "-p", "epochs=1",
                    "-p", "learning_rate=1e-9", *FAST)
    assert result.exit_code == 0, result.output
    assert "not promoted to @staging" in result.output and "rmse" in result.output
    record = last_record(workspace)
    assert record["steps"][5]["outputs"]["promoted"] is False
    client = MlflowClient()
    assert client.get_model_version_by_alias("movielens-recommender", "staging").version == staging_before.version
    rejected = client.get_model_version("movielens-recommender", record["steps"][5]["outputs"]["version"])
    assert rejected.tags["modelyard.decision.staging"].startswith("rejected")
    assert "FAIL" in rejected.tags["modelyard.reasons.staging"]
    # promoting the run that already holds staging changes nothing
    from modelyard.recommender.steps import promote

    again = promote(mlflow.get_tracking_uri(), staging_before.run_id, f"runs:/{staging_before.run_id}/model")
    assert again["promoted"] is False and again["version"] == str(staging_before.version)
    assert len(client.search_model_versions("name='movielens-recommender'")) == int(record["steps"][5]["outputs"]["version"])


def test_recommend_prod_by_hand_rollback(first_run):
    workspace, _, written, _ = first_run
    ws = ["-w", str(workspace)]
    staging = MlflowClient().get_model_version_by_alias("movielens-recommender", "staging").version
    missing = invoke("recommend", "--user", "3", *ws)
    assert missing.exit_code == 1 and "@prod" in missing.output and f"@staging -> v{staging}" in missing.output
    assert invoke("promote", "--alias", "prod", "--version", "1", *ws).exit_code == 0
    from modelyard.recommender import load_recommender

    rec = load_recommender("prod", tracking_uri=mlflow.get_tracking_uri())
    rated = set(written.ratings.loc[written.ratings.user_id == 3, "item_id"])
    top = rec.recommend(3, top_k=100)
    assert len(top) == len(set(rec.items_index.item_id) - rated) and not set(top.item_id) & rated
    assert list(top["rank"]) == list(range(1, len(top) + 1)) and top.score.is_monotonic_decreasing
    shown = invoke("recommend", "--user", "3", "--top-k", "5", *ws)
    assert shown.exit_code == 0 and str(top.title.iloc[0])[:20] in shown.output
    unknown = invoke("recommend", "--user", "99999", *ws)
    assert unknown.exit_code == 1 and "unknown user 99999" in unknown.output
    versions = MlflowClient().search_model_versions("name='movielens-recommender'")
    assert invoke("promote", "--alias", "prod", "--version", str(len(versions)), *ws).exit_code == 0
    assert str(MlflowClient().get_model_version_by_alias("movielens-recommender", "prod").version) == str(len(versions))
    back = invoke("rollback", "--alias", "prod", *ws)
    assert back.exit_code == 0, back.output
    assert str(MlflowClient().get_model_version_by_alias("movielens-recommender", "prod").version) == "1"


def test_warm_start_starts_from_the_earlier_model(first_run, served):
    workspace, record, _, _ = first_run
    source_run = record["steps"][3]["outputs"]["run_id"]
    result = invoke("run", "recommender", "--source", served[0], "-w", str(workspace), "--preset", "accurate",
                    "-p", "epochs=1", "-p", "learning_rate=1e-9", "-p", "weight_decay=0.0", *FAST,
                    "--warm-start", source_run)
    assert result.exit_code == 0, result.output
    new_run = last_record(workspace)["steps"][3]["outputs"]["run_id"]
    client = MlflowClient()
    assert client.get_run(new_run).data.tags["warm_start_run_id"] == source_run
    # with a negligible learning rate the warm-started weights are the source model's: same validation rmse
    assert client.get_run(new_run).data.metrics["rmse"] == pytest.approx(client.get_run(source_run).data.metrics["rmse"], rel=1e-5)
    # other factors: one clear error naming the shapes, not a load_state_dict traceback
    other = invoke("run", "recommender", "--source", served[0], "-w", str(workspace), "--preset", "accurate",
                   "-p", "epochs=1", "-p", "factors=8", *FAST, "--warm-start", source_run)
    flat = " ".join(other.output.split())
    assert other.exit_code == 1 and "its weights have other shapes, model.item.weight [" in flat, other.output
    assert ", 25] (this run: [" in flat and ", 9])" in flat and "Traceback" not in other.output


def test_python_api_runs_the_same_pipeline(served, tmp_path):
    from modelyard.recommender import load_recommender, run

    record = run(workspace=str(tmp_path / "ws"), source=served[0], epochs=1, batch_size=256)
    assert record.status == "succeeded" and record.step("promote").outputs["promoted"] is True
    assert Path(record.path).parent == tmp_path / "ws" / "runs"
    top = load_recommender("staging", workspace=tmp_path / "ws").recommend(6, top_k=3)
    assert list(top.columns) == ["rank", "item_id", "title", "genres", "score"] and len(top) == 3


def test_a_terminated_run_is_recorded_as_interrupted(tmp_path):
    """SIGTERM (kill, a Kubernetes pod being stopped) closes the run record and the MLflow run, not "running" forever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    archive = make_movielens_zip(tmp_path / "ml-latest-small.zip", n_users=30, n_items=40, n_ratings=400).path
    ws = tmp_path / "ws"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = open(tmp_path / "run.log", "w")  # noqa: SIM115 - a pipe nobody reads would block the run's output
    proc = subprocess.Popen([sys.executable, "-m", "modelyard", "run", "recommender", "--source", str(archive), "-w", str(ws),
                             "-p", "epochs=100000", "-p", "batch_size=64"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # until the MLflow run is training
            if list((ws / "tensorboard" / "recommender").glob("*/events.out.tfevents.*")):  # written once its run started
                break
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        log.close()
    assert proc.returncode != 0, (tmp_path / "run.log").read_text()[-2000:]
    record = last_record(ws)
    assert record["status"] == "interrupted"
    assert {s["name"]: s["status"] for s in record["steps"]}["train"] == "interrupted"
    client = MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("recommender").experiment_id])
    assert run.info.status == "KILLED"

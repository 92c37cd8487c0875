"""Every step against a shared `mlflow server` (artifacts proxied), and a clear error when it is not there."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from movielens_factory import make_movielens_zip
from servers import free_port, start_mlflow

mlflow = pytest.importorskip("mlflow")

from modelyard import tracking  # noqa: E402
from modelyard.cli import app  # noqa: E402
from modelyard.errors import TrackingError  # noqa: E402
from modelyard.pipeline.local import load_records  # noqa: E402

runner = CliRunner()


def flat(text: str) -> str:
    """Rich wraps long lines at spaces: compare with whitespace collapsed."""
    return " ".join(text.split())


@pytest.fixture
def env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MODELYARD_WORKSPACE", "MODELYARD_LAKE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("MODELYARD_TRACKING_RETRIES", "2")
    monkeypatch.setenv("MODELYARD_TRACKING_BACKOFF_S", "0.05")
    previous = mlflow.get_tracking_uri()
    yield monkeypatch
    mlflow.set_tracking_uri(previous)


def dead_uri() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_configure_names_the_uri_after_bounded_retries(env):
    uri = dead_uri()
    t0 = time.monotonic()
    with pytest.raises(TrackingError) as err:
        tracking.configure(uri)
    assert time.monotonic() - t0 < 10
    assert uri in str(err.value) and "after 2 attempts" in str(err.value)


def test_a_password_in_the_uri_is_not_repeated(env):
    port = free_port()
    with pytest.raises(TrackingError) as err:
        tracking.configure(f"http://alice:hunter2@127.0.0.1:{port}")
    assert "hunter2" not in str(err.value)
    assert f"http://alice:***@127.0.0.1:{port}" in str(err.value)


def test_a_database_uri_without_its_driver_is_one_clear_error(env, tmp_path):
    import importlib.util

    if importlib.util.find_spec("psycopg") or importlib.util.find_spec("psycopg2"):
        pytest.skip("a PostgreSQL driver is installed here")
    (tmp_path / "ws").mkdir()
    env.setenv("MLFLOW_TRACKING_URI", "postgresql://alice:hunter2@127.0.0.1:1/db")
    result = runner.invoke(app, ["models", "-w", str(tmp_path / "ws")])
    assert result.exit_code == 1
    assert "tracking URI postgresql://alice:***@127.0.0.1:1/db needs the Python module" in flat(result.output)
    assert "hunter2" not in result.output and "Traceback" not in result.output


def test_reading_commands_never_create_a_store(env, tmp_path):
    (tmp_path / "ws").mkdir()
    missing = tmp_path / "nowhere" / "mlflow.db"
    env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    for command in (["models"], ["recommend", "--user", "1"], ["promote", "--alias", "prod", "--version", "1"], ["rollback"]):
        result = runner.invoke(app, [*command, "-w", str(tmp_path / "ws")])
        assert result.exit_code == 1 and f"no MLflow store at {missing}" in flat(result.output), command
    assert not missing.parent.exists()


@pytest.fixture
def health_server():
    """A /health endpoint that wants Basic alice:p@ss word or Bearer t0ken; yields (port, requests seen)."""
    import base64
    import http.server
    import threading

    seen = []
    wanted = {"Basic " + base64.b64encode(b"alice:p@ss word").decode(), "Bearer t0ken"}

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200 if self.headers.get("Authorization") in wanted else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def test_credentials_in_the_uri_reach_the_health_check_as_basic_auth(env, health_server):
    import base64

    port, seen = health_server
    tracking._check_server(f"http://alice:p%40ss%20word@127.0.0.1:{port}")
    assert seen == [("/health", "Basic " + base64.b64encode(b"alice:p@ss word").decode())]


def test_mlflow_credentials_from_the_environment_reach_the_health_check(env, health_server):
    port, seen = health_server
    env.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    tracking._check_server(f"http://127.0.0.1:{port}")
    assert seen == [("/health", "Bearer t0ken")]


def test_refused_credentials_are_said_at_once_without_retrying(env, health_server):
    port, seen = health_server
    env.setenv("MODELYARD_TRACKING_RETRIES", "3")
    with pytest.raises(TrackingError, match=rf"MLflow tracking server http://alice:\*\*\*@127.0.0.1:{port} refused the "
                                            r"credentials \(GET /health: HTTP 401\); set MLFLOW_TRACKING_USERNAME"):
        tracking._check_server(f"http://alice:wrong@127.0.0.1:{port}")
    assert len(seen) == 1


@pytest.mark.parametrize(("name", "value"), [("MODELYARD_TRACKING_RETRIES", "0"), ("MODELYARD_TRACKING_RETRIES", "many"),
                                             ("MODELYARD_TRACKING_BACKOFF_S", "-1")])
def test_bad_retry_settings_are_named(env, name, value):
    env.setenv(name, value)
    with pytest.raises(TrackingError, match=name):
        tracking.configure(dead_uri())


def test_a_down_server_stops_the_run_with_one_clear_error_and_nothing_registered(env, tmp_path):
    uri = dead_uri()
    env.setenv("MLFLOW_TRACKING_URI", uri)
    written = make_movielens_zip(tmp_path / "ml-latest-small.zip", n_users=20, n_items=30, n_ratings=200)
    workspace = tmp_path / "ws"
    result = runner.invoke(app, ["run", "recommender", "--source", str(written.path), "-w", str(workspace),
                                 "-p", "epochs=1", "-p", "batch_size=1024"])
    output = flat(result.output)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"error: MLflow tracking server {uri} is unreachable after 2 attempts" in output
    assert output.count(uri) == 1, "one error, said once"
    # the server is checked before the first step: nothing downloaded, trained, logged or registered
    assert load_records(workspace) == []
    assert not (workspace / "raw").exists() and not (workspace / "mlartifacts").exists()

    # the registry commands say the same
    result = runner.invoke(app, ["models", "-w", str(workspace)])
    assert result.exit_code == 1 and uri in flat(result.output) and "Traceback" not in result.output


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = start_mlflow(tmp_path_factory.mktemp("mlflow-server"), timeout_s=90)
    yield server
    server.stop()
    assert not server.alive()


@pytest.mark.slow
def test_pipeline_runs_against_a_shared_mlflow_server(env, mlflow_server, tmp_path, http_server, http_served_dir):
    from mlflow.tracking import MlflowClient

    from modelyard.recommender.infer import Recommender
    from modelyard.recommender.steps import EXPERIMENT, MODEL_NAME

    env.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    make_movielens_zip(http_served_dir / "ml-latest-small.zip", n_users=30, n_items=40, n_ratings=300)
    workspace = tmp_path / "ws"
    result = runner.invoke(app, ["run", "recommender", "--source", f"{http_server}/ml-latest-small.zip",
                                 "-w", str(workspace), "-p", "epochs=1", "-p", "batch_size=1024"])
    assert result.exit_code == 0, result.output + mlflow_server.log_tail()

    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert {"rmse", "precision_at_k", "recall_at_k", "train_loss"} <= set(run.data.metrics)
    staging = client.get_model_version_by_alias(MODEL_NAME, "staging")
    assert staging.run_id == run.info.run_id
    # nothing of MLflow in the volume: runs in the server's store, artifacts proxied to its destination
    assert not (workspace / "mlflow.db").exists() and not (workspace / "mlartifacts").exists()
    artifacts = mlflow_server.log.parent / "artifacts"
    assert any(p.name == "MLmodel" for p in artifacts.rglob("MLmodel"))
    (record,) = load_records(workspace)
    assert record["params"]["tracking_uri"] == mlflow_server.url
    assert json.dumps(record).count("sqlite:") == 0

    recommender = Recommender.from_registry(alias="staging", tracking_uri=mlflow_server.url)
    user = int(recommender.known_users()[0])
    top = recommender.recommend(user, top_k=5)
    assert len(top) == 5 and list(top["rank"]) == [1, 2, 3, 4, 5]
    assert recommender.version == str(staging.version)

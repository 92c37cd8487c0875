"""The data lake in an S3-compatible object store (moto_server standing in for S3 / MinIO)."""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pytest
from typer.testing import CliRunner

from movielens_factory import make_movielens_zip
from servers import start_moto

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

from modelyard.errors import ModelyardError  # noqa: E402
from modelyard.lake import Lake  # noqa: E402

SECRET = f"s3cr3t-{uuid.uuid4().hex}"  # the secret access key: must never be logged or stored
ACCESS_KEY = "modelyard-test-key"


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def s3(moto, monkeypatch):
    """A fresh bucket; credentials only in the standard AWS env vars; returns (endpoint, bucket, boto3 client)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "MODELYARD_S3_ENDPOINT", "MODELYARD_LAKE",
                 "MLFLOW_TRACKING_URI", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET)
    client.create_bucket(Bucket=bucket)
    return moto.url, bucket, client


def keys(client, bucket: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_tables_round_trip_through_the_bucket(s3, monkeypatch):
    endpoint, bucket, client = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the generic AWS variable works too
    lake = Lake(f"s3://{bucket}/some/prefix/")
    assert lake.is_remote and not lake.exists("t/ratings")
    df = pd.DataFrame({"user_id": [1, 2, 3], "rating": [4.0, 3.5, 5.0]})
    digest = lake.write_table("t/ratings", df)
    assert len(digest) == 64
    assert "some/prefix/t/ratings.parquet" in keys(client, bucket)
    assert lake.exists("t/ratings")
    pd.testing.assert_frame_equal(lake.read_table("t/ratings"), df)
    lake.write_json("t/_manifest", {"tables": {"ratings": digest}})
    assert lake.read_json("t/_manifest") == {"tables": {"ratings": digest}}
    assert lake.read_json("t/missing") is None
    with pytest.raises(ModelyardError, match=f"s3://{bucket}/some/prefix/t/nope.parquet"):
        lake.read_table("t/nope")


def test_a_missing_bucket_is_a_clear_error_without_the_secret(s3):
    with pytest.raises(ModelyardError) as err:
        Lake("s3://no-such-bucket-here/x").write_table("t", pd.DataFrame({"a": [1]}))
    assert "no-such-bucket-here" in str(err.value)
    assert SECRET not in str(err.value)


def test_credentials_come_from_the_environment_only(s3, monkeypatch, tmp_path):
    from modelyard.lake import _s3_filesystem

    options = _s3_filesystem().__reduce__()[1][0]  # what pyarrow was given
    assert (options["access_key"], options["secret_key"], options["anonymous"]) == (ACCESS_KEY, SECRET, False)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-1")
    assert _s3_filesystem().__reduce__()[1][0]["session_token"] == "session-1"
    # a credentials file or profile is never read: without the variables, access is anonymous
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = FROMFILE\naws_secret_access_key = FILESECRET\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    options = _s3_filesystem().__reduce__()[1][0]
    assert options["anonymous"] is True and options["access_key"] is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    with pytest.raises(ModelyardError, match="AWS_SECRET_ACCESS_KEY is not set"):
        _s3_filesystem()


def test_a_lake_uri_with_credentials_is_refused_without_repeating_them():
    with pytest.raises(ModelyardError) as err:
        Lake(f"s3://{ACCESS_KEY}:{SECRET}@bucket/prefix")
    assert "holds credentials" in str(err.value) and SECRET not in str(err.value) and ACCESS_KEY not in str(err.value)


@pytest.mark.slow
def test_pipeline_keeps_its_tables_in_the_bucket_and_no_secret_anywhere(s3, monkeypatch, tmp_path, http_server,
                                                                       http_served_dir):
    import mlflow
    from mlflow.tracking import MlflowClient

    from modelyard.cli import app
    from modelyard.pipeline.local import load_records
    from modelyard.recommender import steps

    endpoint, bucket, client = s3
    monkeypatch.setenv("MODELYARD_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("COLUMNS", "200")
    make_movielens_zip(http_served_dir / "ml-latest-small.zip", n_users=30, n_items=40, n_ratings=300)
    workspace = tmp_path / "ws"
    lake_uri = f"s3://{bucket}/movies"
    previous = mlflow.get_tracking_uri()
    try:
        result = CliRunner().invoke(app, ["run", "recommender", "--source", f"{http_server}/ml-latest-small.zip",
                                          "-w", str(workspace), "--lake", lake_uri, "-p", "epochs=1",
                                          "-p", "batch_size=1024"])
        assert result.exit_code == 0, result.output
        assert SECRET not in result.output

        # the tables are in the bucket, nothing of the lake on local disk; the raw download stays in the volume
        stored = keys(client, bucket)
        for name in steps.TABLES:
            assert f"movies/movielens/ml-latest-small/{name}.parquet" in stored, name
        assert "movies/movielens/ml-latest-small/_manifest.json" in stored
        assert not (workspace / "lake").exists()
        assert (workspace / "raw" / "movielens" / "ml-latest-small.zip").exists()
        assert not any(k.endswith(".zip") for k in stored)

        # the run has its metrics; the secret is nowhere in its params, tags, inputs or the run record
        tracking_uri = f"sqlite:///{workspace / 'mlflow.db'}"
        mlflow_client = MlflowClient(tracking_uri=tracking_uri)
        (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(steps.EXPERIMENT).experiment_id])
        for metric in ("rmse", "mae", "precision_at_k", "recall_at_k"):
            assert metric in run.data.metrics
        assert any(lake_uri in (d.dataset.source or "") for d in run.inputs.dataset_inputs)
        stored_text = json.dumps({"params": run.data.params, "tags": run.data.tags,
                                  "inputs": [d.dataset.source for d in run.inputs.dataset_inputs]})
        assert SECRET not in stored_text
        (record,) = load_records(workspace)
        record_text = json.dumps(record)
        assert record["status"] == "succeeded" and lake_uri in record_text
        assert SECRET not in record_text

        # modelyard's reuse works against the bucket: the same archive is not ingested again
        download = record["steps"][0]["outputs"]
        again = steps.ingest(str(workspace), lake_uri, download["archive"], download["archive_sha256"])
        assert again["reused"] is True
    finally:
        mlflow.set_tracking_uri(previous)

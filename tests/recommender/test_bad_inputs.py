"""Bad input stops the pipeline with a clear message and a non-zero exit; nothing is trained or promoted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from movielens_factory import make_movielens_zip, truncate_zip, write_not_a_zip

from modelyard.cli import app

runner = CliRunner()


def run_pipeline(workspace: Path, *args: str):
    return runner.invoke(app, ["run", "recommender", "-w", str(workspace), "-p", "epochs=1", *args], catch_exceptions=False)


def assert_nothing_trained(workspace: Path, failed_step: str) -> dict:
    record = json.loads(next((workspace / "runs").glob("*.json")).read_text())
    statuses = {s["name"]: s["status"] for s in record["steps"]}
    assert record["status"] == "failed" and statuses[failed_step] == "failed"
    assert statuses["train"] == statuses["promote"] == "pending"
    assert not (workspace / "mlartifacts").exists()
    return record


def test_ratings_without_rating_column(tmp_path, http_served_dir, http_server):
    make_movielens_zip(http_served_dir / "ml-latest-small.zip", rating_column=False)
    result = run_pipeline(tmp_path / "ws", "--source", f"{http_server}/ml-latest-small.zip")
    assert result.exit_code == 1
    assert "ml-latest-small/ratings.csv" in result.output and "'rating'" in result.output
    assert_nothing_trained(tmp_path / "ws", "ingest")
    assert not (tmp_path / "ws" / "lake" / "movielens" / "ml-latest-small" / "_manifest.json").exists()


def test_rating_of_seven_fails_the_quality_check(tmp_path):
    written = make_movielens_zip(tmp_path / "ml.zip", bad_rating=7, bad_row=4)
    result = run_pipeline(tmp_path / "ws", "--source", str(written.path))
    assert result.exit_code == 1
    assert "data quality check failed" in result.output and "rating=7.0" in result.output
    record = assert_nothing_trained(tmp_path / "ws", "check")
    assert "rating" in record["steps"][2]["error"]


def test_corrupt_zip(tmp_path):
    written = make_movielens_zip(tmp_path / "ml.zip")
    truncate_zip(written.path)
    result = run_pipeline(tmp_path / "ws", "--source", str(written.path))
    assert result.exit_code == 1 and "is not the ml-latest-small zip" in " ".join(result.output.split())
    assert_nothing_trained(tmp_path / "ws", "download")
    assert not list((tmp_path / "ws" / "raw").rglob("*.zip*"))  # neither the zip nor its .source record
    bad = write_not_a_zip(tmp_path / "bad.zip")
    result = run_pipeline(tmp_path / "ws2", "--source", f"file://{bad}")
    assert result.exit_code == 1 and "zip" in result.output.lower()


def test_checksum_mismatch_leaves_no_download(tmp_path, http_served_dir, http_server):
    make_movielens_zip(http_served_dir / "ml-latest-small.zip")
    result = run_pipeline(tmp_path / "ws", "--source", f"{http_server}/ml-latest-small.zip", "--sha256", "0" * 64)
    assert result.exit_code == 1 and "checksum mismatch" in result.output and "0" * 64 in result.output
    assert_nothing_trained(tmp_path / "ws", "download")
    assert list((tmp_path / "ws" / "raw" / "movielens").iterdir()) == []


def test_unknown_dataset_name(tmp_path):
    result = run_pipeline(tmp_path / "ws", "--dataset", "ml-7b")
    assert result.exit_code == 1
    assert "ml-7b" in result.output and "ml-latest-small" in result.output and "ml-25m" in result.output


def test_unknown_parameter_and_bad_value(tmp_path):
    result = run_pipeline(tmp_path / "ws", "-p", "epoch=3")
    assert result.exit_code == 1 and "epoch" in result.output and "epochs" in result.output
    result = run_pipeline(tmp_path / "ws", "-p", "batch_size=big")
    assert result.exit_code == 1 and "batch_size" in result.output


def test_options_are_not_parameters_and_modelyard_tags_are_not_user_tags(tmp_path):
    for pair, option in (("preset=accurate", "--preset"), ("source=x.zip", "--source"), ("volume=/tmp", "--workspace"),
                         ("dataset=ml-100k", "--dataset")):
        result = run_pipeline(tmp_path / "ws", "-p", pair)
        assert result.exit_code == 1 and f"{pair.split('=')[0]} is set with {option}, not --param" in result.output
    known = run_pipeline(tmp_path / "ws", "-p", "nope=1").output.split("known:")[1]
    assert "epochs" in known and "source" not in known and "preset" not in known
    result = run_pipeline(tmp_path / "ws", "--tag", "preset=evil", "--tag", "team=recs")
    assert result.exit_code == 1 and "--tag preset: set by modelyard itself" in " ".join(result.output.split())
    assert not (tmp_path / "ws" / "runs").exists()  # refused before any step


def test_a_bad_archive_is_not_kept_and_another_source_replaces_the_cached_one(tmp_path):
    good = make_movielens_zip(tmp_path / "good" / "ml-latest-small.zip")
    bad = truncate_zip(make_movielens_zip(tmp_path / "bad" / "ml-latest-small.zip").path)
    workspace = tmp_path / "ws"
    cached = workspace / "raw" / "movielens" / "ml-latest-small.zip"
    result = run_pipeline(workspace, "--source", str(bad))
    assert result.exit_code == 1 and "the volume was left as it was" in " ".join(result.output.split())
    assert not cached.exists() and not cached.with_name(cached.name + ".source").exists()
    assert run_pipeline(workspace, "--source", str(good.path), "-p", "batch_size=256").exit_code == 0
    assert cached.read_bytes() == good.path.read_bytes()
    # a bad source never replaces a good cached zip, and the good one is still reused afterwards
    assert run_pipeline(workspace, "--source", str(bad)).exit_code == 1
    assert cached.read_bytes() == good.path.read_bytes()
    again = run_pipeline(workspace, "--source", str(good.path), "-p", "batch_size=256")
    assert again.exit_code == 0
    record = max((workspace / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    assert json.loads(record.read_text())["steps"][0]["outputs"]["reused"] is True
    # a different source is fetched again, not silently replaced by the cached copy
    other = make_movielens_zip(tmp_path / "other" / "ml-latest-small.zip", n_users=12, random_state=3)
    assert run_pipeline(workspace, "--source", str(other.path), "-p", "batch_size=256").exit_code == 0
    assert cached.read_bytes() == other.path.read_bytes()


def test_values_a_step_would_refuse_stop_the_run_before_any_step(tmp_path):
    for bad in ("top_k=0", "epochs=0", "model=foo", "device=tpu", "dropout=1.5", "val_size=0",
                "learning_rate=nan", "learning_rate=inf", "weight_decay=nan", "gamma=0", "gamma=nan",
                "threshold=nan", "rmse_threshold=nan", "threshold=10", "threshold=0.2"):
        result = run_pipeline(tmp_path / "ws", "-p", bad)
        assert result.exit_code == 1 and bad.split("=")[0] in result.output, (bad, result.output)
    assert not (tmp_path / "ws" / "runs").exists()


@pytest.mark.parametrize(("uri", "message"), [
    ("bogus://x", "tracking URI bogus://x: unsupported scheme 'bogus://'"),
    ("sqlite:////proc/no-such-dir/mlflow.db", "cannot create the MLflow store /proc/no-such-dir/mlflow.db"),
])
def test_a_tracking_uri_mlflow_cannot_use_stops_the_run_before_any_step(tmp_path, monkeypatch, uri, message):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = run_pipeline(tmp_path / "ws")
    assert result.exit_code == 1 and message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "ws" / "runs").exists() and not (tmp_path / "ws" / "raw").exists()


def test_a_relative_lake_is_recorded_as_an_absolute_path(tmp_path, monkeypatch):
    from modelyard.settings import Settings

    monkeypatch.chdir(tmp_path)
    assert Settings.resolve(workspace=tmp_path / "ws", lake="relative_lake").lake == str(tmp_path / "relative_lake")


@pytest.mark.parametrize(("lake", "message"), [("gs://bucket/x", "unsupported scheme 'gs://'"),
                                             ("S3://bucket/x", "unsupported scheme 'S3://'"),
                                             ("s3://", "no bucket"), ("s3:///prefix", "no bucket")])
def test_a_lake_uri_that_is_neither_a_folder_nor_a_bucket_is_refused(tmp_path, monkeypatch, lake, message):
    monkeypatch.chdir(tmp_path)  # such a URI once became a folder named "gs:" here
    result = run_pipeline(tmp_path / "ws", "--lake", lake)
    assert result.exit_code == 1 and f"lake {lake}: {message}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_empty_ratings_file_fails_the_check(tmp_path):
    import zipfile

    path = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\r\n")
        zf.writestr("ml-latest-small/movies.csv", "movieId,title,genres\r\n1,Toy Story (1995),Comedy\r\n")
    result = run_pipeline(tmp_path / "ws", "--source", str(path))
    assert result.exit_code == 1 and "ratings: not empty" in result.output
    assert_nothing_trained(tmp_path / "ws", "check")


def test_a_workspace_that_is_a_file_or_missing_is_one_clear_error(tmp_path):
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("x")
    result = run_pipeline(not_a_folder)
    assert result.exit_code == 1 and f"workspace {not_a_folder} is a file, not a folder" in " ".join(result.output.split())
    missing = tmp_path / "typo"
    for command in (["models"], ["recommend", "--user", "1"], ["runs"]):
        result = runner.invoke(app, [*command, "-w", str(missing)])
        assert result.exit_code in (0, 1) and not missing.exists(), command  # a read never creates the workspace
    result = runner.invoke(app, ["models", "-w", str(missing)])
    assert result.exit_code == 1 and "no workspace at" in result.output

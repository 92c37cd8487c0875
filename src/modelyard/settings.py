"""The one place for settings: the workspace volume, MLflow, the data lake. CLI flags win over env."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from modelyard.errors import ModelyardError

DEFAULT_WORKSPACE = ".modelyard"


@dataclass(frozen=True)
class Settings:
    """Where a pipeline keeps its things.

    workspace   the shared volume (a folder here, a PVC on Kubeflow): downloads, lake, MLflow, logs, run records
    tracking_uri MLflow tracking URI; `sqlite:///<workspace>/mlflow.db` unless MLFLOW_TRACKING_URI is set
    lake        folder or `s3://bucket/prefix` holding the Parquet tables; `<workspace>/lake` by default
    """

    workspace: Path
    tracking_uri: str
    lake: str

    @classmethod
    def resolve(cls, workspace: str | Path | None = None, tracking_uri: str | None = None, lake: str | None = None) -> "Settings":
        ws = Path(workspace or os.environ.get("MODELYARD_WORKSPACE") or DEFAULT_WORKSPACE).expanduser().resolve()
        if ws.exists() and not ws.is_dir():
            raise ModelyardError(f"workspace {ws} is a file, not a folder (--workspace / MODELYARD_WORKSPACE)")
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(ws)
        lake_uri = lake or os.environ.get("MODELYARD_LAKE") or str(ws / "lake")
        check_lake_uri(lake_uri)
        if "://" not in lake_uri:  # recorded as given in runs: relative to where the run started is not reproducible
            lake_uri = str(Path(lake_uri).expanduser().resolve())
        return cls(workspace=ws, tracking_uri=uri, lake=lake_uri)

    @property
    def volume(self) -> str:
        return str(self.workspace)


def check_lake_uri(uri: str) -> None:
    """ModelyardError unless ``uri`` is a folder or ``s3://bucket[/prefix]`` with a bucket."""
    if "://" not in uri:
        return
    scheme, rest = uri.split("://", 1)
    if scheme != "s3":
        raise ModelyardError(f"lake {uri}: unsupported scheme {scheme + '://'!r}; "
                             "use a folder or s3://bucket/prefix (--lake / MODELYARD_LAKE)")
    bucket = rest.split("/", 1)[0]
    if "@" in bucket:  # s3://KEY:SECRET@bucket: never repeat it, it may hold a secret
        raise ModelyardError("the lake URI holds credentials (s3://...@bucket); put them in AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY instead, and use s3://bucket/prefix (--lake / MODELYARD_LAKE)")
    if not bucket:
        raise ModelyardError(f"lake {uri}: no bucket; use s3://bucket/prefix (--lake / MODELYARD_LAKE)")


def default_tracking_uri(workspace: str | Path) -> str:
    return f"sqlite:///{Path(workspace).resolve() / 'mlflow.db'}"


def artifacts_dir(volume: str | Path) -> Path:
    return Path(volume) / "mlartifacts"


def raw_dir(volume: str | Path) -> Path:
    return Path(volume) / "raw"


def tensorboard_dir(volume: str | Path) -> Path:
    return Path(volume) / "tensorboard"


def runs_dir(volume: str | Path) -> Path:
    return Path(volume) / "runs"


def s3_endpoint() -> str | None:
    """The S3/MinIO endpoint: MODELYARD_S3_ENDPOINT, else AWS_ENDPOINT_URL (None: AWS itself)."""
    return os.environ.get("MODELYARD_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or None

"""The one place for experiment tracking: MLflow runs and TensorBoard event files, side by side."""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
import urllib.parse
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from modelyard.errors import TrackingError  # noqa: E402
from modelyard.settings import artifacts_dir, tensorboard_dir  # noqa: E402

# Known, understood MLflow notices that would otherwise drown the pipeline's own output.
warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
log = logging.getLogger(__name__)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)
# modelyard logs PyTorch models in the pickle format on purpose (the pyfunc flavor needs it); the warning
# about unpickling untrusted files applies to models from elsewhere, not to the ones this pipeline wrote.
logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)

HEALTH_RETRIES = 5  # MODELYARD_TRACKING_RETRIES overrides
HEALTH_BACKOFF_S = 1.0  # MODELYARD_TRACKING_BACKOFF_S overrides; the wait grows linearly: 1x, 2x, ...


def _env_number(name: str, default, cast, minimum):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise TrackingError(f"{name}={raw!r}: expected a {cast.__name__} >= {minimum}")
    return value


def _redacted(uri: str) -> str:
    """The URI without a password (http://user:secret@host -> http://user:***@host)."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password is None:
        return uri
    netloc = f"{parsed.username}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


def _reason(e: Exception) -> str:
    """The short cause of a failed request ("[Errno 111] Connection refused") rather than urllib3's whole story."""
    text = str(e)
    found = re.findall(r"\[Errno -?\d+\][^'\")\]]*|Read timed out|certificate verify failed[^'\")\]]*", text)
    return found[-1].strip() if found else text[-200:]


def _check_server(tracking_uri: str) -> None:
    """Fail fast, naming the URI, when a remote MLflow server is down (bounded retries, no stack trace).

    Asks GET /health the way MLflow itself talks to the server: with MLFLOW_TRACKING_USERNAME/PASSWORD or
    MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_SERVER_CERT_PATH, or user:password
    in the URI. A server that refuses the credentials is told at once (retrying will not help).
    """
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    retries = _env_number("MODELYARD_TRACKING_RETRIES", HEALTH_RETRIES, int, 1)
    backoff = _env_number("MODELYARD_TRACKING_BACKOFF_S", HEALTH_BACKOFF_S, float, 0.0)
    parsed = urllib.parse.urlsplit(tracking_uri.rstrip("/"))
    host = (parsed.hostname or "") + (f":{parsed.port}" if parsed.port else "")
    creds = get_default_host_creds(urllib.parse.urlunsplit(parsed._replace(netloc=host)))
    if parsed.username is not None and not (creds.username or creds.token):
        creds.username = urllib.parse.unquote(parsed.username)
        creds.password = urllib.parse.unquote(parsed.password or "")
    where = _redacted(tracking_uri)
    last = None
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff * attempt)
        try:
            response = http_request(creds, "/health", "GET", max_retries=0, timeout=5, raise_on_status=False)
        except Exception as e:  # noqa: BLE001 - MLflow wraps every requests error in its own exception
            last = _reason(e)
            continue
        if response.status_code == 200:
            return
        if response.status_code == 404:  # something answers, but it is not an MLflow server: retrying will not help
            raise TrackingError(f"{where} answered but is not an MLflow tracking server "
                                f"(GET /health: HTTP 404); fix the tracking URI (MLFLOW_TRACKING_URI)")
        if response.status_code in (401, 403):
            raise TrackingError(f"MLflow tracking server {where} refused the credentials (GET /health: HTTP "
                                f"{response.status_code}); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
                                "or MLFLOW_TRACKING_TOKEN")
        last = f"HTTP {response.status_code}"
    raise TrackingError(f"MLflow tracking server {where} is unreachable after {retries} "
                        f"attempt{'s' if retries != 1 else ''} ({last}); start the server or fix the tracking URI "
                        "(MLFLOW_TRACKING_URI)")


def _sqlite_path(tracking_uri: str) -> Path:
    return Path(tracking_uri[len("sqlite:///"):])


# What MLflow can track to: a server, a SQLAlchemy database, a folder (file:// or a plain path), Databricks.
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks", "databricks-uc")


def check_uri(tracking_uri: str, existing: bool = False) -> None:
    """TrackingError, before any work, for a URI MLflow cannot use: an unknown scheme, or a SQLite file
    whose folder cannot be created (the folder is made here, as MLflow would on first use)."""
    scheme = tracking_uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in tracking_uri else ""
    if scheme and scheme not in TRACKING_SCHEMES:
        raise TrackingError(f"tracking URI {_redacted(tracking_uri)}: unsupported scheme {scheme + '://'!r}; use "
                            "sqlite:///path/mlflow.db, http(s)://server, postgresql://... or a folder (MLFLOW_TRACKING_URI)")
    if scheme == "sqlite" and not existing:
        path = _sqlite_path(tracking_uri)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(path.parent, os.W_OK):
                raise PermissionError("not writable")
        except OSError as e:
            raise TrackingError(f"cannot create the MLflow store {path} (tracking URI {_redacted(tracking_uri)}): "
                                f"{getattr(e, 'strerror', None) or e}; fix --workspace / MLFLOW_TRACKING_URI") from None


def configure(tracking_uri: str, existing: bool = False) -> MlflowClient:
    """Point MLflow (tracking and registry) at `tracking_uri`; a remote server must answer /health.

    `existing`: the store must already exist (commands that only read or move aliases): a SQLite
    file that is not there is an error instead of a new, empty store.
    """
    check_uri(tracking_uri, existing)
    if tracking_uri.startswith(("http://", "https://")):
        _check_server(tracking_uri)
        # MLflow's own default (7 retries, backoff up to 2 min) turns a server lost mid-run into minutes of silence
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    elif existing and tracking_uri.startswith("sqlite:///"):
        path = _sqlite_path(tracking_uri)
        if not path.is_file():
            raise TrackingError(f"no MLflow store at {path} (tracking URI {_redacted(tracking_uri)}): "
                                "run a pipeline first, or fix --workspace / MLFLOW_TRACKING_URI")
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which Settings reads as the user's own choice:
    # a later Settings.resolve() in this process (a notebook's next run in another workspace, the next test)
    # would silently inherit this URI. Put the variable back as it was; MLflow keeps the URI in its global.
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported
    try:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    except ImportError as e:  # e.g. postgresql:// without its driver
        raise TrackingError(f"tracking URI {_redacted(tracking_uri)} needs the Python module {e.name!r}, which is "
                            "not installed: install the database driver for this URI") from None


def ensure_experiment(name: str, tracking_uri: str, volume: str | Path) -> str:
    """Return the experiment id, creating it with its artifacts in the volume when the store is local."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not tracking_uri.startswith(("http://", "https://")):
        location = artifacts_dir(volume).resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently
        return mlflow.get_experiment_by_name(name).experiment_id


def _flat(value: Any) -> str:
    return str(value)


class TrainingRun:
    """An MLflow run with a TensorBoard writer: every epoch's scalars go to both.

    with TrainingRun("recommender", tracking_uri, volume, tags={...}) as run:
        run.log_params({...}); run.log_epoch(1, {"train_loss": 0.8})
    """

    def __init__(self, experiment: str, tracking_uri: str, volume: str | Path, run_name: str | None = None, tags: dict | None = None):
        self.experiment = experiment
        self.tracking_uri = tracking_uri
        self.volume = Path(volume)
        self.run_name = run_name
        self.tags = {k: _flat(v) for k, v in (tags or {}).items()}
        self.run_id: str | None = None
        self.writer = None

    def __enter__(self) -> "TrainingRun":
        configure(self.tracking_uri)
        experiment_id = ensure_experiment(self.experiment, self.tracking_uri, self.volume)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = tensorboard_dir(self.volume) / self.experiment / (self.run_name or self.run_id)
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        mlflow.set_tag("tensorboard_logdir", str(self.logdir))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.writer is not None:
            self.writer.close()
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)  # Ctrl-C, SIGTERM
        mlflow.end_run(status="KILLED" if interrupted else "FAILED" if exc_type else "FINISHED")

    def log_params(self, params: dict) -> None:
        mlflow.log_params({k: _flat(v) for k, v in params.items()})

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """One MLflow batch per epoch (single calls are ~100x slower on SQLite) and one TB scalar each."""
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)
        for name, value in metrics.items():
            self.writer.add_scalar(name, float(value), epoch)
        self.writer.flush()

    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    def log_graph(self, model, example_input) -> bool:
        """The model's graph in TensorBoard (traced with `example_input`, in eval mode); False when it cannot be traced."""
        import torch

        training = model.training
        try:
            model.eval()
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the tracer's warnings about data-dependent control flow
                model(example_input)  # a dry run first: models that cache shapes on their first call trace the same twice
                self.writer.add_graph(torch.jit.trace(model, example_input, strict=False), [])
            return True
        except Exception as e:  # noqa: BLE001 - a graph is a nice-to-have, never a reason to fail training
            log.warning("TensorBoard: the model graph could not be traced (%s: %s)", type(e).__name__, e)
            return False
        finally:
            model.train(training)


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log metrics to an existing run (e.g. validation results back to the training run)."""
    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def run_metrics(run_id: str) -> dict[str, float]:
    return dict(MlflowClient().get_run(run_id).data.metrics)

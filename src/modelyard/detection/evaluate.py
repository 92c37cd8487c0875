"""Validate a training run's logged model on the val and test splits and log the scores back to the run.

The weights are downloaded from MLflow by run id (the run's logged model), never taken from the
training process, so what is measured is exactly what the registry will serve.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from modelyard.detection import yolo_env
from modelyard.detection.data import DATA_YAML, resolve_dataset_dir, write_data_yaml
from modelyard.errors import ModelyardError

EVAL_METRICS = ("map50", "map50_95", "precision", "recall")


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_").lower() or "class"


def box_metrics(results, names: list[str] | dict, prefix: str = "") -> dict[str, float]:
    """mAP50, mAP50-95, precision, recall (and mAP50-95 per class present) of an ultralytics DetMetrics."""
    box = results.box
    out = {
        f"{prefix}map50": float(box.map50),
        f"{prefix}map50_95": float(box.map),
        f"{prefix}precision": float(box.mp),
        f"{prefix}recall": float(box.mr),
    }
    names = dict(enumerate(names)) if isinstance(names, list) else dict(names)
    for i, cls in enumerate(getattr(box, "ap_class_index", [])):
        _, _, _, ap = box.class_result(i)
        out[f"{prefix}map50_95_{_safe(str(names.get(int(cls), cls)))}"] = float(ap)
    return out


def find_weights(model_dir: Path) -> Path:
    found = sorted(model_dir.rglob("*.pt"))
    if not found:
        raise ModelyardError(f"the logged model in {model_dir} holds no .pt weights")
    return found[0]


def download_weights(run_id: str, dst: str | Path) -> Path:
    """Download the run's logged model and return its weights file."""
    import mlflow
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(run_id)
    model_uri = run.data.tags.get("model_uri")
    if not model_uri:
        models = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
        if not models:
            raise ModelyardError(f"MLflow run {run_id} has no logged model (did its training finish?)")
        model_uri = models[0].model_uri
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst))
    return find_weights(Path(local))


def validate_run(volume: str, tracking_uri: str, run_id: str, batch_size: int = 16, device: str = "cpu", workers: int = 0) -> dict[str, float]:
    """Score the run's model on val (`map50`, `map50_95`, `precision`, `recall`, ...) and test (`test_...`)."""
    ultralytics = yolo_env.setup(volume)
    device = yolo_env.resolve_device(device)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from modelyard.tracking import configure, log_metrics

    configure(tracking_uri)
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as e:
        raise ModelyardError(f"no MLflow run {run_id} at {tracking_uri}: {e.message}") from None
    dataset = run.data.tags.get("dataset") or run.data.params.get("dataset", "")
    dataset_dir = resolve_dataset_dir(volume, dataset)
    data_yaml = write_data_yaml(dataset_dir) if not (dataset_dir / DATA_YAML).is_file() else dataset_dir / DATA_YAML
    imgsz = int(run.data.params.get("imgsz", 640))
    project = yolo_env.ultralytics_root(volume) / "runs" / "validate"
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="modelyard-weights-") as tmp:
        weights = download_weights(run_id, tmp)
        yolo = ultralytics.YOLO(str(weights), task="detect")
        import yaml

        splits = [("val", "")] + ([("test", "test_")] if "test" in yaml.safe_load(data_yaml.read_text()) else [])
        for split, prefix in splits:
            results = yolo.val(
                data=str(data_yaml), split=split, imgsz=imgsz, batch=batch_size, device=device, workers=workers,
                plots=False, verbose=False, project=str(project), name=f"{run_id}-{split}", exist_ok=True,
            )
            metrics.update(box_metrics(results, yolo.names, prefix))
    log_metrics(run_id, metrics)
    return metrics

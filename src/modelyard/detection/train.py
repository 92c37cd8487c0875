"""Train a YOLO detector with ultralytics, tracked as one MLflow run (experiment ``detection``).

Per-epoch losses, precision, recall, mAP50 and mAP50-95 go to MLflow (one ``log_metrics`` batch per
epoch) and TensorBoard through :class:`modelyard.tracking.TrainingRun`; the best weights are logged as
an MLflow pyfunc model (``pyfunc_model.py``, logged as code) that ``detect`` loads from the registry.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import warnings
from pathlib import Path

from modelyard.detection import yolo_env
from modelyard.detection.data import CLASSES_FILE, SPLIT_PLAN, parse_class_names, read_info, write_data_yaml
from modelyard.errors import ModelyardError

log = logging.getLogger(__name__)

EXPERIMENT = "detection"
MODEL_ARTIFACT = "model"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


def metric_name(key: str) -> str:
    """ultralytics' result keys as MLflow/TensorBoard names: `metrics/mAP50-95(B)` -> `val/map50_95`."""
    name = key.strip().replace("(B)", "").replace("metrics/", "val/")
    name = name.replace("mAP50-95", "map50_95").replace("mAP50", "map50")
    return re.sub(r"[^\w/.\- ]", "_", name.lower())


def epoch_metrics(values: dict) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        try:
            out[metric_name(str(key))] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def read_results_csv(path: str | Path) -> dict[int, dict[str, float]]:
    """ultralytics' results.csv as {epoch (1-based): metrics}, without the `time` column."""
    rows: dict[int, dict[str, float]] = {}
    path = Path(path)
    if not path.is_file():
        return rows
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v for k, v in row.items() if k}
            epoch = int(float(row.pop("epoch")))
            row.pop("time", None)
            rows[epoch] = epoch_metrics(row)
    return rows


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc model (given explicitly: inferring them takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("mlflow", "ultralytics", "torch", "torchvision", "pandas", "pillow"):
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def model_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    outputs = [ColSpec("long", "image"), ColSpec("long", "class_id"), ColSpec("string", "class_name"), ColSpec("double", "confidence")]
    outputs += [ColSpec("double", c) for c in ("x1", "y1", "x2", "y2")]
    return ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("conf", "double", 0.25), ParamSpec("device", "string", "cpu")]),
    )


def _log_dataset_input(info: dict, dataset_dir: Path) -> None:
    import mlflow

    mlflow.set_tags({"dataset": info["name"], "dataset_digest": info["digest"], "dataset_source": str(info.get("source", ""))})
    try:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # "can be interpreted in multiple ways": local artifact source is right
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(info.get("source") or dataset_dir))
        mlflow.log_input(MetaDataset(source=source, name=info["name"], digest=info["digest"][:32]), context="training")
    except Exception as e:  # noqa: BLE001 - the tags above already record the dataset
        log.warning("could not log the dataset as an MLflow input (%s); it is recorded in the run tags", e)


def _traceable(model, imgsz: int):
    """A copy of the YOLO model in export mode (one tensor out, as ultralytics' own TensorBoard callback
    traces it) and a zero image for it: the model being trained is left untouched."""
    import copy

    import torch

    net = copy.deepcopy(model.module if hasattr(model, "module") else model).eval()  # DDP-wrapped or not
    net = net.fuse(verbose=False) if hasattr(net, "fuse") else net
    for m in net.modules():
        if hasattr(m, "export"):  # Detect heads
            m.export, m.format = True, "torchscript"
    p = next(net.parameters())
    return net, torch.zeros((1, 3, imgsz, imgsz), device=p.device, dtype=p.dtype)


def train_detector(
    volume: str,
    tracking_uri: str,
    dataset_dir: str | Path,
    model: str = yolo_env.DEFAULT_ARCH,
    weights: str = "",
    epochs: int = 12,
    batch_size: int = 16,
    imgsz: int = 256,
    device: str = "cpu",
    random_state: int = 42,
    workers: int = 0,
    tags: dict | None = None,
    note: str = "",
    offline: bool = False,
) -> dict:
    """Train on the split dataset in `dataset_dir`; returns run_id, model_uri and the best epoch's scores."""
    ultralytics = yolo_env.setup(volume)  # before anything of ultralytics is used
    device = yolo_env.resolve_device(device)
    import mlflow

    from modelyard.tracking import TrainingRun

    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / SPLIT_PLAN).is_file():
        raise ModelyardError(f"{dataset_dir.name} is not split yet: run the split step first")
    info = read_info(dataset_dir)
    data_yaml = write_data_yaml(dataset_dir)  # refresh the absolute path (the volume may be mounted elsewhere)
    names = parse_class_names(dataset_dir / CLASSES_FILE)
    counts = json.loads((dataset_dir / SPLIT_PLAN).read_text())["counts"]
    start = str(yolo_env.resolve_weights(volume, weights, offline)) if weights else model
    project = yolo_env.ultralytics_root(volume) / "runs" / "train"

    run_tags = {"task": "object-detection", "framework": f"ultralytics {ultralytics.__version__}", **(tags or {})}
    with TrainingRun(EXPERIMENT, tracking_uri, volume, tags=run_tags) as run:
        run.log_params({
            "model": model if not weights else Path(start).name, "weights": weights or "none (from scratch)",
            "epochs": epochs, "batch_size": batch_size, "imgsz": imgsz, "device": device,
            "random_state": random_state, "workers": workers, "dataset": info["name"],
            "n_classes": len(names), "classes": ",".join(names),
            "n_train": counts["train"], "n_val": counts["val"], "n_test": counts["test"],
        })
        if note:
            mlflow.set_tag("mlflow.note.content", note)
        _log_dataset_input(info, dataset_dir)

        yolo = ultralytics.YOLO(start, task="detect")
        state = {"pending": False, "logged": set()}

        def on_train_start(trainer):
            run.log_graph(*_traceable(trainer.model, imgsz))

        def on_train_epoch_end(trainer):
            state["pending"] = True

        def on_fit_epoch_end(trainer):
            # also fired once more by final_eval (best.pt) with no training epoch before it: skipped,
            # the validate step measures the logged model itself
            if not state["pending"]:
                return
            state["pending"] = False
            values = {**trainer.label_loss_items(trainer.tloss, prefix="train"), **(trainer.metrics or {}), **(trainer.lr or {})}
            run.log_epoch(trainer.epoch + 1, epoch_metrics(values))
            state["logged"].add(trainer.epoch + 1)

        yolo.add_callback("on_train_start", on_train_start)
        yolo.add_callback("on_train_epoch_end", on_train_epoch_end)
        yolo.add_callback("on_fit_epoch_end", on_fit_epoch_end)
        try:
            yolo.train(
                data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch_size, device=device,
                workers=workers, seed=random_state, deterministic=True, project=str(project),
                name=run.run_id, exist_ok=True, plots=False, verbose=False,
                # ultralytics' AMP check (GPU only) downloads yolo26n.pt: not when offline
                **({"amp": False} if yolo_env.offline_requested(offline) else {}),
            )
        except ModelyardError:
            raise
        except (FileNotFoundError, RuntimeError, ValueError, SyntaxError) as e:  # ultralytics' own errors
            raise ModelyardError(f"YOLO training failed: {e}") from e
        save_dir = project / run.run_id
        # epochs the callback did not see (e.g. multi-GPU DDP runs train in subprocesses)
        for epoch, values in sorted(read_results_csv(save_dir / "results.csv").items()):
            if epoch not in state["logged"]:
                run.log_epoch(epoch, values)

        best = save_dir / "weights" / "best.pt"
        if not best.is_file():
            best = save_dir / "weights" / "last.pt"
        if not best.is_file():
            raise ModelyardError(f"YOLO training wrote no weights in {save_dir / 'weights'}")
        for artifact in ("results.csv", "args.yaml"):
            if (save_dir / artifact).is_file():
                mlflow.log_artifact(str(save_dir / artifact), artifact_path="training")
        mlflow.log_artifact(str(data_yaml), artifact_path="dataset")
        mlflow.log_artifact(str(dataset_dir / CLASSES_FILE), artifact_path="dataset")
        with warnings.catch_warnings():  # no type hints / input example: the explicit signature covers both
            warnings.simplefilter("ignore", UserWarning)
            model_info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(PYFUNC_CODE),
                artifacts={"weights": str(best)},
                signature=model_signature(),
                pip_requirements=pip_requirements(),
            )
        mlflow.set_tags({"model_uri": model_info.model_uri, "weights_dir": str(save_dir / "weights")})
        final = read_results_csv(save_dir / "results.csv")
        last = final[max(final)] if final else {}
        return {
            "run_id": run.run_id,
            "model_uri": model_info.model_uri,
            "epochs_trained": len(final),
            "last_map50": float(last.get("val/map50", 0.0)),
            "last_map50_95": float(last.get("val/map50_95", 0.0)),
        }

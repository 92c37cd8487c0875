"""The detection pipeline: download -> split -> check -> train -> validate -> promote (gate into @staging)."""

from __future__ import annotations

from typing import Any

from modelyard.detection import steps, yolo_env
from modelyard.params import check_split_sizes
from modelyard.pipeline.graph import Pipeline, Step

SETTINGS_PARAMS = {"volume": "", "tracking_uri": ""}  # filled from Settings at run time

PARAMS: dict[str, Any] = {
    **SETTINGS_PARAMS,
    "source": "", "classes": "", "sha256": "", "dataset": "",
    "val_size": 0.15, "test_size": 0.10, "random_state": 42,
    "model": yolo_env.DEFAULT_ARCH, "weights": "auto", "offline": False,
    "epochs": 12, "batch_size": 16, "imgsz": 256, "device": "cpu", "workers": 0, "tags": "{}",
    "model_name": "yolo-detector", "map50_95_threshold": 0.0,
}


def check_params(params: dict[str, Any]) -> None:
    """Fail before any step runs on values training would refuse (ValueError naming the parameter)."""
    if not str(params["source"]).strip():
        raise ValueError("parameter 'source' is required: a path, file:// or http(s):// URL of a .tar.gz/.zip "
                         "with YOLO images/ and labels/ (--source)")
    for name in ("epochs", "batch_size", "imgsz"):
        if int(params[name]) < 1:
            raise ValueError(f"parameter {name!r} must be >= 1, got {params[name]}")
    check_split_sizes(float(params["val_size"]), float(params["test_size"]))
    yolo_env.require_ultralytics()
    yolo_env.check_device(str(params["device"]))
    yolo_env.check_architecture(str(params["model"]))


def build() -> Pipeline:
    ds = {"dataset": "download.dataset"}
    return Pipeline(
        check_params=check_params,
        name="detection",
        description="YOLO object detector (ultralytics): a YOLO-format archive to a gated `staging` model",
        params=dict(PARAMS),
        steps=[
            Step("download", steps.download, outputs=("dataset", "dataset_dir", "digest", "n_images", "n_classes")),
            Step("split", steps.split, inputs=ds, outputs=("n_train", "n_val", "n_test", "moved")),
            Step("check", steps.check, inputs=ds, after=("split",), outputs=("n_images", "n_boxes", "n_background")),
            Step("train", steps.train, inputs=ds, after=("check",), outputs=("run_id", "model_uri")),
            Step("validate", steps.validate, inputs={"run_id": "train.run_id"},
                 outputs=("map50", "map50_95", "precision", "recall"), metrics=True),
            Step("promote", steps.promote, inputs={"run_id": "train.run_id", "model_uri": "train.model_uri"},
                 after=("validate",), outputs=("promoted", "version", "reason", "decision")),
        ],
    )


def choose_start(params: dict[str, Any], offline: bool = False) -> dict[str, Any]:
    """`params` as a user means them: `model=...` without `weights` builds that model from scratch (no
    download); `offline` (the --offline flag) joins `params["offline"]`. Without either, `weights="auto"`
    lets the train step fine-tune yolov8n.pt when it can and say why when it cannot."""
    params = dict(params)
    if "model" in params and "weights" not in params:
        params["weights"] = ""
    params["offline"] = bool(offline or params.get("offline", False))
    return params


def run(workspace: str | None = None, **params: Any):
    """Run the pipeline from Python (notebooks): `run(source="bccd.tar.gz", classes="classes.txt", epochs=2)`."""
    from modelyard.pipeline.local import LocalRunner
    from modelyard.settings import Settings

    settings = Settings.resolve(workspace=workspace)
    values = {"volume": settings.volume, "tracking_uri": settings.tracking_uri, **choose_start(params)}
    return LocalRunner(settings.workspace).run(build(), values)

"""The detection pipeline: download -> split -> check -> train -> validate -> promote (gate into @staging)."""

from __future__ import annotations

from modelyard.detection import steps
from modelyard.pipeline.graph import Pipeline, Step


PARAMS = {
    "volume": ".modelyard",
    "tracking_uri": "",
    "source": "",
    "classes": "",
    "sha256": "",
    "dataset": "",
    "val_size": 0.15,
    "test_size": 0.10,
    "random_state": 42,
    "model": "yolov8n.yaml",
    "weights": "auto",
    "offline": False,
    "epochs": 12,
    "batch_size": 16,
    "imgsz": 256,
    "device": "cpu",
    "workers": 0,
    "tags_json": "{}",
    "model_name": "yolo-detector",
    "map50_95_threshold": 0.0,
}


def build_pipeline(**overrides) -> Pipeline:
    """The step graph; `overrides` change the parameters' defaults (e.g. volume, tracking_uri, source)."""
    params = {**PARAMS, **overrides}
    ds = {"dataset": "download.dataset"}
    return Pipeline(
        name="detection",
        description=__doc__.splitlines()[0],
        params=params,
        steps=[
            Step("download", steps.download, outputs=("dataset", "dataset_dir", "digest", "n_images", "n_classes", "reused")),
            Step("split", steps.split, inputs=ds, outputs=("n_train", "n_val", "n_test", "moved", "reused")),
            Step("check", steps.check, inputs=ds, after=("split",), outputs=("n_images", "n_boxes", "n_background")),
            Step("train", steps.train, inputs=ds, after=("check",), outputs=("run_id", "model_uri")),
            Step("validate", steps.validate, inputs={"run_id": "train.run_id"}, outputs=("map50", "map50_95", "precision", "recall")),
            Step("promote", steps.promote, inputs={"run_id": "train.run_id", "model_uri": "train.model_uri"}, after=("validate",),
                 outputs=("promoted", "version", "reason")),
        ],
    )

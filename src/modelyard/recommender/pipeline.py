"""The recommender pipeline: download -> ingest -> check -> train -> validate -> promote."""

from __future__ import annotations

from typing import Any

from modelyard.pipeline.graph import Pipeline, Step
from modelyard.recommender import steps
from modelyard.recommender.train import PRESETS

SETTINGS_PARAMS = {"volume": "", "lake": "", "tracking_uri": ""}  # filled from Settings at run time


def default_params(preset: str = "textbook") -> dict[str, Any]:
    """Every pipeline parameter with its default; a preset supplies the training hyperparameters."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    return {
        **SETTINGS_PARAMS,
        "dataset": "ml-latest-small", "source": "", "sha256": "",
        "val_size": 0.15, "test_size": 0.10,
        **PRESETS[preset],
        "preset": preset, "warm_start": "", "tags": "{}", "experiment": steps.EXPERIMENT,
        "top_k": 50, "threshold": 3.0, "ranking_users": 0,
        "model_name": steps.MODEL_NAME, "rmse_threshold": 0.0, "precision_threshold": -0.3, "recall_threshold": -0.2,
    }


def check_params(params: dict[str, Any]) -> None:
    """Fail before any step runs on values a later step would refuse (ValueError naming the parameter)."""
    from modelyard.params import check_finite, check_split_sizes
    from modelyard.recommender.data import get_release
    from modelyard.recommender.train import resolve_params

    release = get_release(params["dataset"])
    check_finite(params)
    threshold = float(params["threshold"])
    if not release.rating_min <= threshold <= release.rating_max:
        raise ValueError(f"parameter 'threshold' {threshold:g} is outside {params['dataset']}'s rating scale "
                         f"{release.rating_min:g}..{release.rating_max:g}: no rating could be relevant")
    check_split_sizes(float(params["val_size"]), float(params["test_size"]))
    resolve_params(params["preset"], {k: params[k] for k in PRESETS[params["preset"]]})
    for name in ("top_k",):
        if int(params[name]) < 1:
            raise ValueError(f"parameter {name!r} must be >= 1, got {params[name]}")
    if int(params["ranking_users"]) < 0:
        raise ValueError(f"parameter 'ranking_users' must be >= 0 (0 = every validation user), got {params['ranking_users']}")


def build(preset: str = "textbook") -> Pipeline:
    return Pipeline(
        check_params=check_params,
        name="recommender",
        description="MovieLens matrix-factorisation recommender: data to a gated `staging` model",
        params=default_params(preset),
        steps=[
            Step("download", steps.download, outputs=("archive", "archive_sha256")),
            Step("ingest", steps.ingest, inputs={"archive": "download.archive", "archive_sha256": "download.archive_sha256"},
                 outputs=("dataset_digest",)),
            Step("check", steps.check, inputs={"dataset_digest": "ingest.dataset_digest"}),
            Step("train", steps.train, inputs={"dataset_digest": "ingest.dataset_digest"}, after=("check",),
                 outputs=("run_id", "model_uri")),
            Step("validate", steps.validate, inputs={"run_id": "train.run_id"},
                 outputs=("rmse", "mae", "precision_at_k", "recall_at_k"), metrics=True),
            Step("promote", steps.promote, inputs={"run_id": "train.run_id", "model_uri": "train.model_uri"},
                 after=("validate",), outputs=("promoted", "version")),
        ],
    )


def run(workspace: str | None = None, preset: str = "textbook", **params: Any):
    """Run the pipeline from Python (notebooks): `run(epochs=2, source="ml-latest-small.zip")`."""
    from modelyard.pipeline.local import LocalRunner
    from modelyard.settings import Settings

    settings = Settings.resolve(workspace=workspace, lake=params.pop("lake", None))
    pipeline = build(preset)
    values = {"volume": settings.volume, "lake": settings.lake, "tracking_uri": settings.tracking_uri, **params}
    return LocalRunner(settings.workspace).run(pipeline, values)

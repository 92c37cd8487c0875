"""The recommender's step functions: primitive arguments in, a dict of small outputs out.

Big data moves through the volume (downloads), the lake (Parquet tables) and MLflow (runs, models).
The local runner and the Kubeflow components call these same functions.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from modelyard import registry, tracking
from modelyard.download import discard, fetch, is_cached, sha256_file
from modelyard.errors import DataError, ModelyardError
from modelyard.lake import Lake
from modelyard.settings import raw_dir
from modelyard.recommender import data as mldata
from modelyard.recommender.checks import check_tables
from modelyard.recommender.infer import SERVING_TABLES

EXPERIMENT = "recommender"
MODEL_NAME = "movielens-recommender"
TABLES = ("train", "val", "test", "items", "user_index", "item_index")
INGEST_FORMAT = 1  # bump when the lake layout changes, so older lakes are rebuilt


console = Console(stderr=True, soft_wrap=True)  # progress lines (the terminal, a pod log): paths stay whole


def table(dataset: str, name: str) -> str:
    return f"movielens/{dataset}/{name}"


def download(volume: str, dataset: str = mldata.DEFAULT_RELEASE, source: str = "", sha256: str = "") -> dict:
    """Fetch the release's zip into the volume once; the official URL unless `source` is given.

    The zip is reused only when it came from the same source (recorded beside it); another `--source`
    replaces it once downloaded, checked and opened as the release's zip; until then the cached one stays.
    """
    release = mldata.get_release(dataset)
    dest = raw_dir(volume) / "movielens" / release.filename
    wanted = source or release.url
    reused = is_cached(dest, wanted)
    expected = sha256 or (release.sha256 if not source else None)

    def check_zip(path: Path) -> None:
        try:
            mldata.check_release_archive(path, dataset)
        except DataError as e:
            raise DataError(f"{wanted} is not the {dataset} zip ({e}); the volume was left as it was") from None

    fetch(wanted, dest, sha256=expected or None, verify=check_zip, track_source=True)
    return {"archive": str(dest), "archive_sha256": sha256_file(dest), "reused": reused}


def ingest(volume: str, lake: str, archive: str, archive_sha256: str, dataset: str = mldata.DEFAULT_RELEASE,
           val_size: float = 0.15, test_size: float = 0.10, random_state: int = 42) -> dict:
    """Parse the release into the lake, split it and index its ids; reused when nothing changed.

    The manifest is written last: a lake without it (an interrupted ingest) is rebuilt.
    """
    store = Lake(lake)
    key = {"archive_sha256": archive_sha256, "val_size": val_size, "test_size": test_size,
           "random_state": random_state, "format": INGEST_FORMAT}
    manifest = store.read_json(table(dataset, "_manifest"))
    if manifest and manifest.get("key") == key and all(store.exists(table(dataset, t)) for t in TABLES):
        return {**manifest["outputs"], "reused": True}
    try:
        ratings, items = mldata.read_release(archive, dataset)
    except DataError as e:
        # an archive that cannot be parsed must not be reused by the next run
        discard(archive)  # and its .source record
        raise DataError(f"{e} (removed it from the volume; fix the source and run again)") from None
    splits = mldata.split_ratings(ratings, val_size=val_size, test_size=test_size, random_state=random_state)
    users_index, items_index = mldata.index_ids(splits["train"])
    digests = {name: store.write_table(table(dataset, name), df) for name, df in
               {**splits, "items": items, "user_index": users_index, "item_index": items_index}.items()}
    outputs = {
        "dataset_digest": hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16],
        "n_ratings": len(ratings), "n_train": len(splits["train"]), "n_val": len(splits["val"]),
        "n_test": len(splits["test"]), "n_users": len(users_index), "n_items": len(items_index),
    }
    store.write_json(table(dataset, "_manifest"), {"key": key, "tables": digests, "outputs": outputs})
    return {**outputs, "reused": False}


def check(lake: str, dataset_digest: str, dataset: str = mldata.DEFAULT_RELEASE) -> dict:
    """Data quality of the lake's tables; raises QualityError (nothing trained) when a check fails."""
    release = mldata.get_release(dataset)
    store = Lake(lake)
    tables = {name: store.read_table(table(dataset, name)) for name in ("train", "val", "test", "items")}
    report = check_tables(tables, release.rating_min, release.rating_max, subject=f"{dataset} in {store.uri}")
    n_ratings = sum(len(tables[s]) for s in ("train", "val", "test"))
    report.add("ratings: not empty", 0 if len(tables["train"]) else 1, detail=f"{n_ratings} ratings, {len(tables['train'])} in train")
    store.write_json(table(dataset, "_quality"), {"dataset_digest": dataset_digest, **report.to_dict()})
    report.raise_for_failures()
    warnings = [c for c in report.checks if not c.passed]
    return {"passed": True, "n_warnings": len(warnings), "report": report.render_text()}


RATED = ["user_id", "item_id", "rating"]  # the columns training and validation read (not timestamp)


def _load_training_data(store: Lake, dataset: str, train_columns: list[str] = RATED):
    users_index = store.read_table(table(dataset, "user_index"))
    items_index = store.read_table(table(dataset, "item_index"))
    train = store.read_table(table(dataset, "train"), columns=train_columns)
    val = store.read_table(table(dataset, "val"), columns=RATED)
    return train, val, users_index, items_index


def _encoded(df, users_index, items_index):
    u, i, r, known = mldata.encode(df, users_index, items_index)
    return (u[known], i[known], r[known]), int((~known).sum())


def train(volume: str, lake: str, tracking_uri: str, dataset_digest: str, dataset: str = mldata.DEFAULT_RELEASE,
          model: str = "mlp-mf", factors: int = 20, hidden_dims: int = 256, dropout: float = 0.2, loss: str = "l1",
          optimizer: str = "sgd", learning_rate: float = 1e-3, weight_decay: float = 0.0, step_size: int = 10,
          gamma: float = 0.1, epochs: int = 30, batch_size: int = 64, shuffle: bool = True, random_state: int = 42,
          patience: int = 0, device: str = "auto", fused: bool = True, preset: str = "textbook", warm_start: str = "",
          tags: str = "{}", experiment: str = EXPERIMENT, val_size: float = 0.15, test_size: float = 0.10) -> dict:
    """Train one model in one MLflow run (and TensorBoard) and log it with its signature.

    `tags` is a JSON object of user tags; `warm_start` an earlier run id whose model to start from.
    """
    import mlflow
    import torch
    import torchinfo
    from mlflow.models import infer_signature

    from modelyard.recommender.model import build_model
    from modelyard.recommender.train import fit, resolve_params

    params = resolve_params(preset, dict(
        model=model, factors=factors, hidden_dims=hidden_dims, dropout=dropout, loss=loss, optimizer=optimizer,
        learning_rate=learning_rate, weight_decay=weight_decay, step_size=step_size, gamma=gamma, epochs=epochs,
        batch_size=batch_size, shuffle=shuffle, random_state=random_state, patience=patience, device=device,
        fused=fused))
    store = Lake(lake)
    train_df, val_df, users_index, items_index = _load_training_data(store, dataset)
    train_data, _ = _encoded(train_df, users_index, items_index)
    val_data, val_unknown = _encoded(val_df, users_index, items_index)
    n_users, n_items = len(users_index), len(items_index)
    torch.manual_seed(random_state)
    net = build_model(params, n_users, n_items, global_mean=float(train_data[2].mean()))
    user_tags = json.loads(tags or "{}")
    run_tags = {**user_tags, "dataset": dataset, "dataset_digest": dataset_digest, "preset": preset}
    if warm_start:
        tracking.configure(tracking_uri)
        try:
            start = mlflow.pytorch.load_model(f"runs:/{warm_start}/model")
        except Exception as e:  # noqa: BLE001 - MLflow raises many kinds for a bad run id
            raise ModelyardError(f"cannot warm-start from run {warm_start}: {e}") from None
        if (start.n_users, start.n_items) != (n_users, n_items) or type(start.model) is not type(net.model):
            raise ModelyardError(f"cannot warm-start from run {warm_start}: it is a {type(start.model).__name__} over "
                                 f"{start.n_users} users x {start.n_items} items, this run needs a "
                                 f"{type(net.model).__name__} over {n_users} x {n_items}")
        shapes = {name: tuple(t.shape) for name, t in start.state_dict().items()}
        wanted = {name: tuple(t.shape) for name, t in net.state_dict().items()}
        if shapes != wanted:
            differ = ", ".join(f"{n} {list(shapes.get(n, ()))} (this run: {list(wanted.get(n, ()))})"
                               for n in sorted(set(shapes) | set(wanted)) if shapes.get(n) != wanted.get(n))
            raise ModelyardError(f"cannot warm-start from run {warm_start}: its weights have other shapes, {differ}; "
                                 "use the same factors / hidden_dims as that run")
        net.load_state_dict(start.state_dict())
        run_tags["warm_start_run_id"] = warm_start

    with tracking.TrainingRun(experiment, tracking_uri, volume, tags=run_tags) as run:
        run.log_params({**params, "preset": preset, "loss_function": type(_loss_module(params["loss"])).__name__,
                        "optimizer_name": _optimizer_name(params["optimizer"]), "n_users": n_users, "n_items": n_items,
                        "n_train": len(train_data[0]), "n_val": len(val_data[0]), "n_val_unknown": val_unknown,
                        "dataset": dataset, "val_size": val_size, "test_size": test_size, "warm_start": warm_start or "none"})
        mlflow.log_input(mlflow.data.from_pandas(train_df,
                                                 source=store.uri_of(table(dataset, "train")), name=dataset,
                                                 digest=dataset_digest), context="training")
        sample = torch.tensor(np.stack([train_data[0][:4], train_data[1][:4]], axis=1))
        summary = torchinfo.summary(net.model, input_data=[sample[:, 0], sample[:, 1]], verbose=0,
                                    col_names=("input_size", "output_size", "num_params"))
        run.log_text(str(summary), "model_summary.txt")
        def on_epoch(epoch: int, metrics: dict) -> None:
            run.log_epoch(epoch, metrics)
            console.print(f"  epoch {epoch}/{params['epochs']}: train_loss {metrics['train_loss']:.4f}, val_loss "
                          f"{metrics['val_loss']:.4f} ({metrics['epoch_seconds']:.1f} s)", highlight=False)

        result = fit(net, train_data, val_data, params, on_epoch=on_epoch)
        del train_df, val_df, train_data, val_data  # peak memory at ml-25m scale: _serving_files reads every split
        mlflow.log_metrics({"best_epoch": result.best_epoch, "best_val_loss": float(result.best_val_loss)})
        net.eval()
        with torch.no_grad():
            prediction = net(sample).numpy()
        with tempfile.TemporaryDirectory() as tmp:
            extra = _serving_files(Path(tmp), store, dataset, users_index, items_index)
            info = mlflow.pytorch.log_model(
                net, name="model", serialization_format="pickle",  # a dict-free pyfunc flavor needs pickle
                signature=infer_signature(sample.numpy(), prediction), input_example=sample.numpy(),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "modelyard"],
                extra_files=extra)
    return {"run_id": run.run_id, "model_uri": info.model_uri, "val_loss": float(result.best_val_loss)}


def _loss_module(name: str):
    import torch.nn as nn

    return {"l1": nn.L1Loss(), "mse": nn.MSELoss()}[name]


def _optimizer_name(name: str) -> str:
    return {"sgd": "SGD", "adam": "Adam", "sparse_adam": "SparseAdam"}[name]


def _serving_files(folder: Path, store: Lake, dataset: str, users_index, items_index) -> list[str]:
    """What `recommend` needs beside the weights: id maps, titles, and every rated (user, item) pair."""
    rated = pd.concat([store.read_table(table(dataset, s), columns=["user_id", "item_id"]) for s in ("train", "val", "test")])
    frames = dict(zip(SERVING_TABLES, (users_index, items_index, store.read_table(table(dataset, "items")), rated)))
    paths = []
    for name, df in frames.items():
        path = folder / f"{name}.parquet"
        df.to_parquet(path, index=False)
        paths.append(str(path))
    return paths


def validate(volume: str, lake: str, tracking_uri: str, run_id: str, dataset: str = mldata.DEFAULT_RELEASE,
             top_k: int = 50, threshold: float = 3.0, ranking_users: int = 0, random_state: int = 42) -> dict:
    """Load the run's model back from MLflow and log validation metrics to that same run.

    Full-catalog ranking scores every item for every validation user; `ranking_users` > 0 ranks a seeded
    sample of that many users instead (for the MLP model on ml-25m, whose every score is an MLP pass).
    """
    import mlflow

    from modelyard.recommender.evaluate import precision_recall_at_k, predict, ranking_metrics, rmse, mae
    from modelyard.recommender.examples import example_recommendations

    tracking.configure(tracking_uri)
    net = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    store = Lake(lake)
    train_df, val_df, users_index, items_index = _load_training_data(store, dataset, train_columns=["user_id", "item_id"])
    (vu, vi, vr), unknown = _encoded(val_df, users_index, items_index)
    (tu, ti, _), _ = _encoded(train_df, users_index, items_index)
    pred = predict(net, vu, vi)
    precision, recall = precision_recall_at_k(vu, vr, pred, top_k=top_k, threshold=threshold)
    metrics = {"rmse": rmse(vr, pred), "mae": mae(vr, pred), "precision_at_k": precision, "recall_at_k": recall,
               "n_val_ratings": len(vr), "n_val_unknown": unknown}
    ru, ri, rr = vu, vi, vr
    if ranking_users and len(np.unique(vu)) > ranking_users:
        sample = np.random.default_rng(random_state).choice(np.unique(vu), size=ranking_users, replace=False)
        keep = np.isin(vu, sample)
        ru, ri, rr = vu[keep], vi[keep], vr[keep]
    ranking = ranking_metrics(net, ru, ri, rr, tu, ti, n_items=len(items_index), top_k=top_k, threshold=threshold)
    metrics.update({k: float(v) for k, v in ranking.items()})
    tracking.log_metrics(run_id, metrics)
    items = store.read_table(table(dataset, "items"))
    examples = example_recommendations(net, val_df, train_df, users_index, items_index, items, threshold=threshold)
    client = mlflow.tracking.MlflowClient()
    client.log_table(run_id, data=examples, artifact_file="validation/example_recommendations.json")
    client.log_text(run_id, examples.to_markdown(index=False) if _has_tabulate() else examples.to_string(index=False),
                    "validation/example_recommendations.md")
    logged = client.get_run(run_id).data.params
    for name, value in (("top_k", top_k), ("threshold", threshold), ("ranking_users", ranking_users)):
        if name not in logged:  # MLflow params are write-once; a re-validation keeps the first settings
            client.log_param(run_id, name, value)
    return metrics


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


# Metrics of two runs are comparable only on the same data (name and digest: same split) and evaluation settings.
COMPARABLE_ON = ("dataset", "dataset_digest", "top_k", "threshold")


def promote(tracking_uri: str, run_id: str, model_uri: str, model_name: str = MODEL_NAME, rmse_threshold: float = 0.0,
            precision_threshold: float = -0.3, recall_threshold: float = -0.2) -> dict:
    """The textbook gate into `staging` (signed thresholds against the current `staging` run)."""
    tracking.configure(tracking_uri)
    gates = [registry.Gate("rmse", "lower", rmse_threshold), registry.Gate("precision_at_k", "higher", precision_threshold),
             registry.Gate("recall_at_k", "higher", recall_threshold)]
    decision = registry.promote_if_better(model_name, run_id, model_uri, gates, alias="staging",
                                          comparable_on=COMPARABLE_ON)
    return {"promoted": decision.promoted, "version": decision.version or "", "decision": decision.summary()}

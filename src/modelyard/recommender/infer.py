"""Serve recommendations from a registered model: top-k unseen movies with titles for a user."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modelyard import registry, tracking
from modelyard.errors import ModelyardError


# Logged next to the model by steps.train, in the order of the Recommender fields they fill.
SERVING_TABLES = ("user_index", "item_index", "items", "rated")


@dataclass
class Recommender:
    """A trained model with what serving needs: id maps, titles and every rated (user, item) pair."""

    net: torch.nn.Module
    users_index: pd.DataFrame
    items_index: pd.DataFrame
    items: pd.DataFrame
    rated: pd.DataFrame
    version: str = ""

    @classmethod
    def from_dir(cls, model_dir: str | Path, version: str = "") -> "Recommender":
        import mlflow

        model_dir = Path(model_dir)
        extra = model_dir / "extra_files"
        missing = [f"extra_files/{name}.parquet" for name in SERVING_TABLES if not (extra / f"{name}.parquet").is_file()]
        if missing:
            raise ModelyardError(f"{model_dir} is not a modelyard recommender model (it has no {', '.join(missing)})")
        read = lambda name: pd.read_parquet(extra / f"{name}.parquet")  # noqa: E731
        return cls(mlflow.pytorch.load_model(str(model_dir)), *(read(name) for name in SERVING_TABLES), version)

    @classmethod
    def from_registry(cls, alias: str = "prod", model_name: str = "movielens-recommender",
                      tracking_uri: str | None = None, workspace: str | Path | None = None) -> "Recommender":
        """Load the version that holds `alias` (a clear error naming the aliases that exist otherwise).

        The registry is `tracking_uri`, else the one `run(workspace=...)` used (MLFLOW_TRACKING_URI or the
        workspace's SQLite store).
        """
        import mlflow

        from modelyard.settings import Settings

        tracking.configure(Settings.resolve(workspace=workspace, tracking_uri=tracking_uri).tracking_uri, existing=True)
        version = registry.require_alias(model_name, alias)
        model_dir = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version.version}")
        try:
            return cls.from_dir(model_dir, str(version.version))
        except ModelyardError:
            raise ModelyardError(f"{model_name} v{version.version} (@{registry.alias_name(alias)}) is not a recommender "
                                 "model: pass the recommender's --model-name") from None

    def known_users(self) -> np.ndarray:
        return self.users_index["user_id"].to_numpy()

    def recommend(self, user_id: int, top_k: int = 10) -> pd.DataFrame:
        """The `top_k` movies `user_id` has not rated, best first: item_id, title, genres, score."""
        if int(top_k) < 1:
            raise ModelyardError(f"top_k must be at least 1, got {top_k}")
        match = self.users_index.loc[self.users_index["user_id"] == int(user_id), "user_index"]
        if match.empty:
            ids = self.known_users()
            raise ModelyardError(f"unknown user {user_id}: the model knows {len(ids)} users with ids "
                                 f"{ids.min()}..{ids.max()} (e.g. {', '.join(map(str, ids[:5]))})")
        self.net.eval()
        with torch.no_grad():
            scores = self.net.score_all_items(torch.tensor([int(match.iloc[0])]))[0].numpy().astype(np.float64)
        item_ids = self.items_index["item_id"].to_numpy()
        seen = self.rated.loc[self.rated["user_id"] == int(user_id), "item_id"].to_numpy()
        scores[np.isin(item_ids, seen)] = -np.inf
        k = min(top_k, int(np.isfinite(scores).sum()))
        # stable order: best score first, lower item index on ties
        order = np.lexsort((np.arange(len(scores)), -scores))[:k]
        top = pd.DataFrame({"item_id": item_ids[order], "score": scores[order]})
        top = top.merge(self.items[["item_id", "title", "genres"]], on="item_id", how="left")
        top.insert(0, "rank", np.arange(1, len(top) + 1))
        return top[["rank", "item_id", "title", "genres", "score"]]


def load_recommender(alias: str = "prod", model_name: str = "movielens-recommender", tracking_uri: str | None = None,
                     workspace: str | Path | None = None) -> Recommender:
    """For notebooks: `load_recommender("staging", workspace=...).recommend(50, top_k=10)`."""
    return Recommender.from_registry(alias=alias, model_name=model_name, tracking_uri=tracking_uri, workspace=workspace)

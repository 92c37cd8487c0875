"""Example recommendations next to what validation users actually rated highly (for a manual look)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def example_recommendations(net, val_df: pd.DataFrame, train_df: pd.DataFrame, users_index: pd.DataFrame,
                            items_index: pd.DataFrame, items: pd.DataFrame, threshold: float = 3.0,
                            n_users: int = 5, top_k: int = 10) -> pd.DataFrame:
    """One row per (user, rank): the model's top-k unseen movie and the user's k-th best validation movie."""
    liked = val_df[val_df["rating"] >= threshold]
    counts = liked.groupby("user_id").size().sort_values(ascending=False, kind="stable")
    known = set(users_index["user_id"].tolist())
    chosen = [u for u in counts.index if u in known][:n_users]
    titles = items.set_index("item_id")["title"]
    item_ids = items_index["item_id"].to_numpy()
    rows = []
    net.eval()
    for user_id in chosen:
        uidx = int(users_index.loc[users_index["user_id"] == user_id, "user_index"].iloc[0])
        with torch.no_grad():
            scores = net.score_all_items(torch.tensor([uidx]))[0].numpy().astype(np.float64)
        scores[np.isin(item_ids, train_df.loc[train_df["user_id"] == user_id, "item_id"].to_numpy())] = -np.inf
        top = np.lexsort((np.arange(len(scores)), -scores))[:top_k]
        actual = liked[liked["user_id"] == user_id].sort_values("rating", ascending=False, kind="stable").head(top_k)
        for rank in range(top_k):
            rec = item_ids[top[rank]] if rank < len(top) else None
            act = actual.iloc[rank] if rank < len(actual) else None
            rows.append({
                "user_id": int(user_id), "rank": rank + 1,
                "recommended": titles.get(rec, str(rec)) if rec is not None else "",
                "predicted": round(float(scores[top[rank]]), 3) if rec is not None else None,
                "rated_highly_in_val": titles.get(int(act["item_id"]), "") if act is not None else "",
                "rating": float(act["rating"]) if act is not None else None,
            })
    return pd.DataFrame(rows)

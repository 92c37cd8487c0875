"""Evaluation of rating models: pure functions, vectorised (no per-row Python loops).

* :func:`predict`, :func:`rmse`, :func:`mae` - rating accuracy over every validation rating.
* :func:`precision_recall_at_k` - the textbook / Surprise-FAQ precision and recall at k, computed
  over each user's *validation ratings* only.
* :func:`ranking_metrics` - full-catalog ranking: every item the user did not rate in training is a
  candidate; NDCG, hit rate, MAP and recall at k against the user's relevant validation items.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from modelyard.recommender.model import unwrap


def _device_of(net: nn.Module) -> torch.device:
    for tensor in net.parameters():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict_tensor(model: nn.Module, users: Tensor, items: Tensor, batch_size: int = 65536) -> Tensor:
    """Predictions ``[len(users)]`` (float32, on the model's device), eval mode, no grad.

    Restores the model's train/eval mode afterwards.
    """
    net = unwrap(model)
    device = _device_of(net)
    was_training = net.training
    net.eval()
    try:
        out = torch.empty(len(users), dtype=torch.float32, device=device)
        for start in range(0, len(users), batch_size):
            u = users[start : start + batch_size].to(device, torch.long)
            i = items[start : start + batch_size].to(device, torch.long)
            out[start : start + batch_size] = net(u, i)
    finally:
        net.train(was_training)
    return out


def predict(model: nn.Module, users, items, batch_size: int = 65536) -> np.ndarray:
    """Predicted ratings (float32 ndarray) for index arrays ``users``/``items``.

    Eval mode, no grad, batches of ``batch_size``. Predictions are NOT clipped to the rating
    scale: clip them yourself (``np.clip(pred, 0.5, 5.0)``) if you want that.
    """
    users_t = torch.as_tensor(np.asarray(users), dtype=torch.long)
    items_t = torch.as_tensor(np.asarray(items), dtype=torch.long)
    return predict_tensor(model, users_t, items_t, batch_size).cpu().numpy()


def rmse(y_true, y_pred) -> float:
    """Root mean squared error over every rating (float64 accumulation)."""
    err = np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64)
    return float(np.sqrt(np.mean(err * err)))


def mae(y_true, y_pred) -> float:
    """Mean absolute error over every rating."""
    err = np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64)
    return float(np.mean(np.abs(err)))


def precision_recall_at_k(users, y_true, y_pred, top_k: int = 50, threshold: float = 3.0) -> tuple[float, float]:
    """Mean precision@k and recall@k over the users of the validation ratings (textbook definition).

    Per user: sort that user's validation ratings by prediction (descending; equal predictions keep
    their input order) and take the first ``top_k``. Relevant = ``y_true >= threshold`` (counted over
    all of the user's validation ratings); recommended = ``y_pred >= threshold`` within the top k.

    * precision@k = |relevant and recommended in top k| / |recommended in top k|, **0 for a user with
      no recommended item** in the top k;
    * recall@k = |relevant and recommended in top k| / |relevant|, **0 for a user with no relevant
      item** (as the textbook and the Surprise FAQ do).

    Both are averaged over every user that has validation ratings. Returns ``(nan, nan)`` when
    there are none.
    """
    users = np.asarray(users)
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if len(users) == 0:
        return math.nan, math.nan
    order = np.lexsort((-y_pred, users))  # by user, then prediction desc; stable
    users, y_true, y_pred = users[order], y_true[order], y_pred[order]
    first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])  # start of each user's group
    sizes = np.diff(np.r_[first, len(users)])
    group = np.repeat(np.arange(len(first)), sizes)
    rank = np.arange(len(users)) - np.repeat(first, sizes)  # 0-based rank within the user

    relevant = y_true >= threshold
    recommended = (rank < top_k) & (y_pred >= threshold)
    n_groups = len(first)
    n_rel = np.bincount(group, weights=relevant, minlength=n_groups)
    n_rec = np.bincount(group, weights=recommended, minlength=n_groups)
    n_hit = np.bincount(group, weights=relevant & recommended, minlength=n_groups)
    precision = np.divide(n_hit, n_rec, out=np.zeros(n_groups), where=n_rec > 0)
    recall = np.divide(n_hit, n_rel, out=np.zeros(n_groups), where=n_rel > 0)
    return float(precision.mean()), float(recall.mean())


def _csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr, items sorted by user)``: user u's items are ``items[indptr[u]:indptr[u+1]]``."""
    order = np.argsort(users, kind="stable")
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items[order]


def _rows_of(indptr: np.ndarray, chunk_users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the users of a chunk: (row in the chunk, position in the CSR data) of all their entries."""
    starts, ends = indptr[chunk_users], indptr[chunk_users + 1]
    counts = ends - starts
    rows = np.repeat(np.arange(len(chunk_users)), counts)
    positions = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
    return rows, positions


def _top_k_items(scores: Tensor, k: int) -> Tensor:
    """Indices ``[rows, k]`` of the k best items per row; ties: the lower item index wins.

    ``torch.topk`` gives no order among equal scores, so rows whose k-th score is tied with a score
    left out are redone with a stable full sort (equal scores keep ascending item order); the k
    chosen items are then ordered by (score desc, item asc).
    """
    values, indices = torch.topk(scores, k, dim=1, sorted=True)
    kth = values[:, -1:]
    del values
    tied = (scores >= kth).sum(1) > k  # more candidates than k places: membership is ambiguous
    if tied.any():
        rows = torch.nonzero(tied).squeeze(1)
        _, full = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        indices[rows] = full[:, :k]
    # order inside the top k: by item asc, then stably by score desc
    indices, _ = torch.sort(indices, dim=1)
    values = torch.gather(scores, 1, indices)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return torch.gather(indices, 1, order)


@torch.no_grad()
def ranking_metrics(
    model: nn.Module,
    val_users,
    val_items,
    val_ratings,
    train_users,
    train_items,
    n_items: int,
    top_k: int = 50,
    threshold: float = 3.0,
    chunk_size: int = 1024,
) -> dict:
    """Full-catalog top-k ranking metrics for every validation user with a relevant item.

    For each user, every item of the catalog (``0..n_items-1``) except those the user rated in
    training is scored (``model.score_all_items``) and the top ``k = min(top_k, n_items)`` are kept;
    equal scores are broken deterministically by the lower item index. Relevant items = the user's
    validation items rated ``>= threshold``. **Users without a relevant validation item are
    skipped** (they have nothing to find). With R relevant items and hits h_j at ranks j = 1..k:

    * ``ndcg_at_k`` = sum_j h_j / log2(j + 1) divided by the ideal value sum_{j<=min(R,k)} 1/log2(j + 1)
    * ``hit_rate_at_k`` = 1 if any relevant item is in the top k
    * ``map_at_k`` = sum_j h_j * precision@j / min(R, k)
    * ``recall_at_k_catalog`` = (number of hits) / R

    each averaged over the evaluated users (``n_ranked_users``; metrics are NaN when it is 0).
    A relevant item the user also rated in training can never be recommended (it is excluded).
    Users are scored ``chunk_size`` at a time (scores ``chunk_size x n_items`` float32 plus a
    bool mask of the same shape), so memory stays bounded for any number of users.
    """
    net = unwrap(model)
    device = _device_of(net)
    val_users = np.asarray(val_users, dtype=np.int64)
    val_items = np.asarray(val_items, dtype=np.int64)
    val_ratings = np.asarray(val_ratings)
    train_users = np.asarray(train_users, dtype=np.int64)
    train_items = np.asarray(train_items, dtype=np.int64)

    relevant = val_ratings >= threshold
    rel_users, rel_items = val_users[relevant], val_items[relevant]
    n_users = int(max(rel_users.max(initial=-1), train_users.max(initial=-1))) + 1
    eval_users = np.unique(rel_users)
    nan = {"ndcg_at_k": math.nan, "hit_rate_at_k": math.nan, "map_at_k": math.nan, "recall_at_k_catalog": math.nan}
    if len(eval_users) == 0:
        return {**nan, "n_ranked_users": 0}
    k = min(top_k, n_items)
    rel_indptr, rel_sorted = _csr(rel_users, rel_items, n_users)
    seen_indptr, seen_sorted = _csr(train_users, train_items, n_users)
    del train_users, train_items

    ranks = torch.arange(1, k + 1, dtype=torch.float64, device=device)
    discount = 1.0 / torch.log2(ranks + 1.0)  # [k]
    ideal = torch.cumsum(discount, 0)  # ideal DCG for min(R, k) = 1..k relevant items
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    was_training = net.training
    net.eval()
    try:
        for start in range(0, len(eval_users), chunk_size):
            chunk = eval_users[start : start + chunk_size]
            scores = net.score_all_items(torch.as_tensor(chunk, device=device)).float()
            rows, pos = _rows_of(seen_indptr, chunk)
            scores[torch.as_tensor(rows, device=device), torch.as_tensor(seen_sorted[pos], device=device)] = -math.inf
            rel_mask = torch.zeros(scores.shape, dtype=torch.bool, device=device)
            rows, pos = _rows_of(rel_indptr, chunk)
            rel_mask[torch.as_tensor(rows, device=device), torch.as_tensor(rel_sorted[pos], device=device)] = True
            n_rel = rel_mask.sum(1).to(torch.float64)  # R (distinct relevant items)

            top = _top_k_items(scores, k)
            hits = torch.gather(rel_mask, 1, top) & torch.isfinite(torch.gather(scores, 1, top))
            hits = hits.to(torch.float64)
            n_hits = hits.sum(1)
            cutoff = torch.clamp(n_rel, max=k).long()  # min(R, k) >= 1
            ndcg = (hits * discount).sum(1) / ideal[cutoff - 1]
            precision_at_j = torch.cumsum(hits, 1) / ranks
            ap = (precision_at_j * hits).sum(1) / cutoff
            totals += torch.stack([ndcg.sum(), (n_hits > 0).sum(), ap.sum(), (n_hits / n_rel).sum()])
            del scores, rel_mask
    finally:
        net.train(was_training)
    means = (totals / len(eval_users)).tolist()
    return {
        "ndcg_at_k": means[0],
        "hit_rate_at_k": means[1],
        "map_at_k": means[2],
        "recall_at_k_catalog": means[3],
        "n_ranked_users": int(len(eval_users)),
    }

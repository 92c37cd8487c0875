"""Benchmark data: MovieLens files read straight from their zips, and synthetic ml-25m-scale data.

Every loader returns dense int64 ``users``/``items`` (0-based) and float32 ``ratings``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

MOVIELENS = Path("/work/shared/data/movielens")
ML_100K = MOVIELENS / "ml-100k.zip"
ML_LATEST_SMALL = MOVIELENS / "ml-latest-small.zip"

# ml-25m: 25,000,095 ratings by 162,541 users on 59,047 movies
ML_25M_SHAPE = (25_000_095, 162_541, 59_047)


@dataclass
class Ratings:
    users: np.ndarray  # int64
    items: np.ndarray  # int64
    ratings: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.ratings)

    @property
    def triple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.users, self.items, self.ratings

    def take(self, index) -> "Ratings":
        return Ratings(self.users[index], self.items[index], self.ratings[index])


@dataclass
class Dataset:
    name: str
    train: Ratings
    val: Ratings
    n_users: int
    n_items: int


def movielens_small(path: Path = ML_LATEST_SMALL) -> Dataset:
    """ml-latest-small ratings.csv (100,836 ratings); ids mapped to dense indices here. val is empty."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("ratings.csv"))
        with archive.open(name) as f:
            df = pd.read_csv(f, usecols=["userId", "movieId", "rating"])
    users, user_ids = pd.factorize(df["userId"], sort=True)
    items, item_ids = pd.factorize(df["movieId"], sort=True)
    train = Ratings(users.astype(np.int64), items.astype(np.int64), df["rating"].to_numpy(np.float32))
    empty = train.take(slice(0, 0))
    return Dataset("ml-latest-small", train, empty, len(user_ids), len(item_ids))


def _read_100k(archive: zipfile.ZipFile, member: str) -> Ratings:
    with archive.open(f"ml-100k/{member}") as f:
        df = pd.read_csv(f, sep="\t", names=["user", "item", "rating", "ts"], usecols=[0, 1, 2])
    # ml-100k ids are already dense: users 1..943, items 1..1682
    return Ratings(
        df["user"].to_numpy(np.int64) - 1, df["item"].to_numpy(np.int64) - 1, df["rating"].to_numpy(np.float32)
    )


def ml100k_split(fold: int, path: Path = ML_100K) -> Dataset:
    """The official ml-100k split ``u{fold}.base`` (train) / ``u{fold}.test`` (val)."""
    with zipfile.ZipFile(path) as archive:
        train, val = _read_100k(archive, f"u{fold}.base"), _read_100k(archive, f"u{fold}.test")
    return Dataset(f"ml-100k u{fold}", train, val, 943, 1682)


def synthetic(scale: float = 1.0, val_fraction: float = 0.1, seed: int = 0, factors: int = 8,
              oversample: float = 1.0) -> Dataset:
    """MovieLens-like synthetic ratings at ``scale`` x ml-25m (25M ratings, 162k users, 59k items).

    Item popularity is Zipf (weight ~ 1/rank, so a few blockbusters get most ratings and
    the tail is long) and user activity is heavy-tailed (log-normal); ratings come from a low-rank
    model plus noise, rounded to half stars in [0.5, 5]. ``val_fraction`` of the rows (random) are
    held out as val. Built in chunks so the peak memory stays near the size of the result.
    ``oversample`` draws that many times more ratings (for callers that drop repeated pairs).
    """
    n_ratings, n_users, n_items = (max(1, int(round(v * scale))) for v in ML_25M_SHAPE)
    n_ratings = int(round(n_ratings * oversample))
    n_users, n_items = max(n_users, 10), max(n_items, 10)
    rng = np.random.default_rng(seed)
    item_weight = 1.0 / np.arange(1, n_items + 1)  # Zipf, exponent 1
    item_cdf = np.cumsum(rng.permutation(item_weight))  # popular items spread over the index range
    item_cdf /= item_cdf[-1]
    user_cdf = np.cumsum(rng.lognormal(0.0, 1.0, n_users))
    user_cdf /= user_cdf[-1]
    user_f = rng.normal(0, 0.5, (n_users, factors)).astype(np.float32)
    item_f = rng.normal(0, 0.5, (n_items, factors)).astype(np.float32)
    user_b = rng.normal(0, 0.4, n_users).astype(np.float32)
    item_b = rng.normal(0, 0.5, n_items).astype(np.float32)

    users = np.empty(n_ratings, dtype=np.int64)
    items = np.empty(n_ratings, dtype=np.int64)
    ratings = np.empty(n_ratings, dtype=np.float32)
    chunk = 1 << 21
    for start in range(0, n_ratings, chunk):
        end = min(start + chunk, n_ratings)
        u = np.minimum(np.searchsorted(user_cdf, rng.random(end - start)), n_users - 1)
        i = np.minimum(np.searchsorted(item_cdf, rng.random(end - start)), n_items - 1)
        r = 3.5 + user_b[u] + item_b[i] + np.einsum("ij,ij->i", user_f[u], item_f[i]) / np.sqrt(factors)
        r += rng.normal(0, 0.6, end - start).astype(np.float32)
        users[start:end], items[start:end] = u, i
        ratings[start:end] = np.clip(np.round(r * 2) / 2, 0.5, 5.0)
    is_val = rng.random(n_ratings) < val_fraction
    val = Ratings(users[is_val], items[is_val], ratings[is_val])
    keep = ~is_val
    del is_val
    train = Ratings(users[keep], items[keep], ratings[keep])
    return Dataset(f"synthetic x{scale:g} of ml-25m", train, val, n_users, n_items)

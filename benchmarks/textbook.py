"""A faithful re-implementation of the textbook training loop, used as the baseline.

Row-by-row ``Dataset`` + ``DataLoader(batch_size=64, shuffle=True)``, the MF + MLP model with dense
embedding gradients, ``nn.L1Loss``, plain SGD, ``loss.item()`` per batch.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modelyard.recommender.model import MLPMF


class RatingsDataset(Dataset):
    def __init__(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> None:
        self.users, self.items, self.ratings = users, items, ratings

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, idx: int) -> dict:
        return {
            "users": torch.tensor(self.users[idx], dtype=torch.long),
            "items": torch.tensor(self.items[idx], dtype=torch.long),
            "ratings": torch.tensor(self.ratings[idx], dtype=torch.float),
        }


def textbook_throughput(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    n_users: int,
    n_items: int,
    max_batches: int | None = None,
    batch_size: int = 64,
    warmup_batches: int = 5,
    seed: int = 42,
) -> dict:
    """Train the textbook way for one epoch, or ``max_batches`` batches; returns ratings/s.

    The first ``warmup_batches`` batches are not timed (sampler start, allocator warm-up); the
    figure is ratings of the timed batches / their wall time.
    """
    torch.manual_seed(seed)
    model = MLPMF(n_users, n_items, factors=20, hidden_dims=256, dropout=0.2)  # dense gradients
    loader = DataLoader(RatingsDataset(users, items, ratings), batch_size=batch_size, shuffle=True)
    loss_fn = nn.L1Loss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    running_loss, n_timed, t0 = 0.0, 0, None
    for step, batch in enumerate(loader):
        if step == warmup_batches:
            t0, n_timed = time.perf_counter(), 0
        pred = model(batch["users"], batch["items"])
        loss = loss_fn(pred, batch["ratings"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        n_timed += len(batch["ratings"])
        if max_batches is not None and step + 1 >= warmup_batches + max_batches:
            break
    seconds = time.perf_counter() - t0
    return {"ratings_per_s": n_timed / seconds, "timed_ratings": n_timed, "seconds": seconds,
            "whole_epoch": n_timed + warmup_batches * batch_size >= len(ratings)}

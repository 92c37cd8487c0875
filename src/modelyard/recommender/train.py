"""Training loop for the rating models: pure PyTorch, no tracking code.

``fit`` trains whatever model it is given (warm start = the caller loads weights first) on in-memory
tensors: each epoch draws one permutation, gathers the training triples in that order once and
slices contiguous batches out of them (no per-row ``Dataset``/``DataLoader``). The caller (the
pipeline step) logs what ``on_epoch`` reports.

Hyperparameters (the names used everywhere):

=============  ===============================================================================
model          ``"mlp-mf"`` (textbook MF + MLP) or ``"biased-mf"`` (global mean + biases + dot)
factors        embedding size
hidden_dims    hidden layer width (mlp-mf)
dropout        dropout after the hidden layer (mlp-mf)
loss           ``"l1"`` or ``"mse"``
optimizer      ``"sgd"``, ``"adam"`` or ``"sparse_adam"`` (SparseAdam's update with betas (0.5, 0.999)
               on the embeddings, with sparse gradients; Adam on every other parameter)
learning_rate  initial learning rate
weight_decay   L2 strength. mlp-mf: the optimizer's ``weight_decay``. biased-mf: added to the loss
               as ``weight_decay * mean over the batch of (|p_u|^2 / sqrt(n_u) + |q_i|^2 / sqrt(n_i))``
               with n_u, n_i the user's and item's numbers of training ratings ("frequency
               regularisation"; biases unregularised). Built from the batch's rows only, it keeps
               gradients sparse
step_size      StepLR: the learning rate is multiplied by ``gamma`` every ``step_size`` epochs
gamma          (``step_size`` 0 = constant learning rate)
epochs         maximum number of epochs
batch_size     ratings per optimisation step
shuffle        reshuffle the training ratings every epoch
random_state   seeds torch, numpy and the shuffling; same seed + data on CPU = same results
patience       early stopping: stop after ``patience`` epochs without a better val loss and
               restore the best epoch's weights; 0 = off (the last epoch's weights are kept)
device         ``"cpu"``, ``"cuda"`` or ``"auto"`` (cuda when available)
fused          biased-mf + ``sparse_adam`` on the CPU: run each epoch in the compiled loop of
               :mod:`~modelyard.recommender.fused` (3x faster; the same results up to float
               rounding); ``False`` = PyTorch ops and autograd. Ignored by other setups
=============  ===============================================================================
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelyard.params import check_finite, coerce
from modelyard.recommender import fused
from modelyard.recommender.evaluate import predict_tensor
from modelyard.recommender.model import MODELS, set_sparse_gradients, unwrap, uses_sparse_gradients

PRESETS: dict[str, dict[str, Any]] = {
    # The textbook recipe, kept as published.
    "textbook": {
        "model": "mlp-mf",
        "factors": 20,
        "hidden_dims": 256,
        "dropout": 0.2,
        "loss": "l1",
        "optimizer": "sgd",
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "step_size": 10,
        "gamma": 0.1,
        "epochs": 30,
        "batch_size": 64,
        "shuffle": True,
        "random_state": 42,
        "patience": 0,
        "device": "auto",
        "fused": True,
    },
    # Biased MF, MSE + frequency-weighted L2 on the factors, sparse Adam on 4096-rating batches,
    # StepLR. Tuned only on ml-100k's u1 split (u1.base / u1.test); benchmarks/README.md has the
    # search and the figures on u1..u5.
    "accurate": {
        "model": "biased-mf",
        "factors": 24,
        "hidden_dims": 256,  # unused by biased-mf
        "dropout": 0.2,  # unused by biased-mf
        "loss": "mse",
        "optimizer": "sparse_adam",
        "learning_rate": 0.04,
        "weight_decay": 1.1,
        "step_size": 4,
        "gamma": 0.2,
        "epochs": 8,
        "batch_size": 4096,
        "shuffle": True,
        "random_state": 42,
        "patience": 0,
        "device": "auto",
        "fused": True,
    },
}

CHOICES: dict[str, tuple[str, ...]] = {
    "model": MODELS,
    "loss": ("l1", "mse"),
    "optimizer": ("sgd", "adam", "sparse_adam"),
    "device": ("cpu", "cuda", "auto"),
}

def resolve_params(preset: str = "textbook", overrides: dict | None = None) -> dict:
    """The ``preset``'s hyperparameters with ``overrides`` applied and type-checked.

    Override values may be strings (``"64"``, ``"1e-3"``, ``"true"``): each is coerced to the type of
    the preset's value. Unknown presets, unknown names and values outside the allowed choices raise
    ``ValueError`` naming the culprit and what is known.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    params = dict(PRESETS[preset])
    for name, value in (overrides or {}).items():
        if name not in params:
            raise ValueError(f"unknown parameter {name!r}; known parameters: {', '.join(params)}")
        params[name] = coerce(name, value, params[name])
    for name, allowed in CHOICES.items():
        if params[name] not in allowed:
            raise ValueError(
                f"parameter {name!r}: unknown value {params[name]!r}; known values: {', '.join(allowed)}"
            )
    check_finite(params)
    for name in ("factors", "hidden_dims", "epochs", "batch_size"):
        if params[name] < 1:
            raise ValueError(f"parameter {name!r} must be >= 1, got {params[name]}")
    for name in ("step_size", "patience"):
        if params[name] < 0:
            raise ValueError(f"parameter {name!r} must be >= 0, got {params[name]}")
    if not 0.0 <= params["dropout"] < 1.0:
        raise ValueError(f"parameter 'dropout' must be in [0, 1), got {params['dropout']}")
    if params["learning_rate"] <= 0 or params["weight_decay"] < 0:
        raise ValueError("parameters 'learning_rate' must be > 0 and 'weight_decay' >= 0")
    if params["gamma"] <= 0:
        raise ValueError(f"parameter 'gamma' must be > 0, got {params['gamma']}")
    return params


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return torch.device(device)


def cpu_threads() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class FitResult:
    history: list[dict]  # one dict per epoch: epoch, train_loss, val_loss, learning_rate
    best_epoch: int  # 1-based; the weights the model holds after fit come from it when patience > 0
    best_val_loss: float
    train_seconds: list[float] = field(default_factory=list)  # per epoch, training loop only


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"l1": F.l1_loss, "mse": F.mse_loss}


class LazySparseAdam(torch.optim.Optimizer):
    """``torch.optim.SparseAdam``'s update, computed with fewer sparse-tensor operations.

    Only the rows present in the (coalesced) sparse gradient are touched: their Adam moments are
    gathered, updated and written back, and the parameter rows get
    ``-lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)``, exactly SparseAdam's formula
    (t counts the optimizer's steps). Markedly faster than SparseAdam on CPU.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - as torch.optim.Optimizer
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise ValueError("LazySparseAdam needs sparse gradients (nn.Embedding(sparse=True))")
                rows, values = _sum_duplicate_rows(param.grad)
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                exp_avg = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                t = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                update = exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"]))
                param.index_copy_(0, rows, param.index_select(0, rows).sub_(update, alpha=step_size))  # rows are distinct


def _sum_duplicate_rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """(distinct rows, their summed gradient rows) of an embedding's sparse gradient.

    A table not much larger than the batch is summed into a dense scratch (no sort); a large
    one is coalesced (sorted), which costs O(batch) instead of O(table).
    """
    indices, values = grad._indices()[0], grad._values()
    n_rows = grad.shape[0]
    if n_rows > 4 * len(indices):
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    summed = torch.zeros(grad.shape, dtype=values.dtype, device=values.device).index_add_(0, indices, values)
    seen = torch.zeros(n_rows, dtype=torch.bool, device=values.device).index_fill_(0, indices, True)
    rows = seen.nonzero().squeeze(1)
    return rows, summed[rows]


# Rows of a sparse table are updated only when they occur in a batch, so a long first-moment
# memory mostly carries stale gradients: beta1 = 0.5 beat 0.9 on ml-100k u1 (RMSE -0.0013, 4 seeds).
SPARSE_ADAM_BETAS = (0.5, 0.999)


def make_optimizers(net: nn.Module, params: dict) -> list[torch.optim.Optimizer]:
    """The optimizer(s) for ``params["optimizer"]``.

    ``sparse_adam``: :class:`LazySparseAdam` (SparseAdam's update, betas ``SPARSE_ADAM_BETAS``) for
    the embeddings with sparse gradients plus ``Adam`` for every other parameter (mlp-mf's MLP).
    """
    sparse = {id(p) for m in net.modules() if isinstance(m, nn.Embedding) and m.sparse for p in m.parameters()}
    sparse_params = [p for p in net.parameters() if id(p) in sparse]
    dense_params = [p for p in net.parameters() if id(p) not in sparse]
    lr = params["learning_rate"]
    # Models with forward_with_norms get L2 through the loss; the others through the optimizer.
    weight_decay = 0.0 if hasattr(net, "forward_with_norms") else params["weight_decay"]
    name = params["optimizer"]
    if name == "sgd":
        return [torch.optim.SGD(sparse_params + dense_params, lr=lr, weight_decay=weight_decay)]
    if name == "adam":
        if sparse_params:
            raise ValueError("optimizer 'adam' cannot update sparse embeddings; use 'sparse_adam' or 'sgd'")
        return [torch.optim.Adam(dense_params, lr=lr, weight_decay=weight_decay)]
    optimizers: list[torch.optim.Optimizer] = []
    if sparse_params:
        optimizers.append(LazySparseAdam(sparse_params, lr=lr, betas=SPARSE_ADAM_BETAS))
    if dense_params:
        optimizers.append(torch.optim.Adam(dense_params, lr=lr, weight_decay=weight_decay))
    return optimizers


def frequency_weights(index: Tensor, n: int) -> Tensor:
    """``1 / sqrt(number of ratings)`` per row (rows without ratings count as 1)."""
    return torch.bincount(index, minlength=n).clamp_(min=1).float().rsqrt_()


def _as_tensors(triple, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    users, items, ratings = triple
    return (
        torch.as_tensor(np.asarray(users), dtype=torch.long).to(device),
        torch.as_tensor(np.asarray(items), dtype=torch.long).to(device),
        torch.as_tensor(np.asarray(ratings), dtype=torch.float32).to(device),
    )


def _check_indices(name: str, users: Tensor, items: Tensor, net: nn.Module) -> None:
    for what, index, n in (("user", users, net.n_users), ("item", items, net.n_items)):
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= n):
            raise ValueError(
                f"{name} {what} indices must lie in 0..{n - 1} (the model's size); "
                f"got {int(index.min())}..{int(index.max())}"
            )


def _batches(batches: tuple[Tensor, Tensor, Tensor], batch_size: int):
    """Consecutive ``(users, items, ratings)`` slices of ``batch_size`` ratings (the last may be shorter)."""
    users, items, ratings = batches
    for start in range(0, len(ratings), batch_size):
        yield users[start : start + batch_size], items[start : start + batch_size], ratings[start : start + batch_size]


def _sgd_step_epoch(net: nn.Module, loss: str, batches, batch_size: int, lr: float) -> float:
    """One epoch of plain SGD for a model with a hand-written ``sgd_step`` (mlp-mf) on sparse embeddings:
    the same updates as ``torch.optim.SGD`` (tested against the textbook's DataLoader loop), ~2.3x faster
    at batch 64 than autograd and the optimizer."""
    ratings = batches[2]
    loss_sum = torch.zeros((), dtype=torch.float64, device=ratings.device)
    for u, i, r in _batches(batches, batch_size):
        loss_sum += net.sgd_step(u, i, r, lr, loss)
    return loss_sum.item() / len(ratings)


def _train_epoch(net, optimizers, loss_fn, l2, batches, batch_size, frequency) -> float:
    """One epoch of PyTorch steps over ``batches = (users, items, ratings)`` in order; the mean loss."""
    ratings = batches[2]
    loss_sum = torch.zeros((), dtype=torch.float64, device=ratings.device)
    for u, i, r in _batches(batches, batch_size):
        if l2:
            pred, user_sq, item_sq = net.forward_with_norms(u, i)
            loss = loss_fn(pred, r)
            user_weight, item_weight = frequency
            weighted = user_sq * user_weight.index_select(0, u) + item_sq * item_weight.index_select(0, i)
            objective = loss + l2 * weighted.mean()
        else:
            loss = objective = loss_fn(net(u, i), r)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        objective.backward()
        for optimizer in optimizers:
            optimizer.step()
        loss_sum += loss.detach() * len(r)
    return loss_sum.item() / len(ratings)


def fit(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    params: dict,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train ``model`` (a ``PairScorer`` or bare model) in place on ``train = (users, items, ratings)``.

    After every epoch ``on_epoch(epoch, metrics)`` gets ``train_loss`` (mean per-rating loss over
    the epoch, without the L2 term), ``val_loss`` (the same loss over all of ``val``; NaN when
    ``val`` is None or empty), ``learning_rate`` and ``epoch_seconds``. ``params`` is a full
    parameter dict (see :func:`resolve_params`). The model is trained on ``params["device"]`` and
    moved back to the CPU at the end; its embeddings' sparse-gradient flags are set from
    ``params`` (:func:`~modelyard.recommender.model.uses_sparse_gradients`). biased-mf with
    ``sparse_adam`` on the CPU trains through :mod:`~modelyard.recommender.fused` when
    ``params["fused"]`` is true.
    """
    missing = sorted(set(PRESETS["textbook"]) - set(params))
    if missing:
        raise ValueError(f"missing parameters {', '.join(missing)}; build params with resolve_params()")
    p = params
    device = resolve_device(p["device"])
    torch.set_num_threads(cpu_threads())
    torch.manual_seed(p["random_state"])  # dropout
    np.random.seed(p["random_state"] % 2**32)
    shuffler = torch.Generator(device=device).manual_seed(p["random_state"])

    net = unwrap(model).to(device)
    set_sparse_gradients(net, uses_sparse_gradients(p))
    users, items, ratings = _as_tensors(train, device)
    if len(ratings) == 0:
        raise ValueError("no training ratings")
    _check_indices("train", users, items, net)
    has_val = val is not None and len(val[2]) > 0
    if has_val:
        val_users, val_items, val_ratings = _as_tensors(val, device)
        _check_indices("val", val_users, val_items, net)
    loss_fn = LOSSES[p["loss"]]
    # Models with forward_with_norms (biased-mf) take their L2 in the loss, each factor vector
    # weighted by 1/sqrt(its number of training ratings); the others take it in the optimizer.
    l2 = p["weight_decay"] if hasattr(net, "forward_with_norms") else 0.0
    frequency = None
    if hasattr(net, "forward_with_norms"):
        frequency = (frequency_weights(users, net.n_users), frequency_weights(items, net.n_items))
    fused_trainer = None
    if fused.supports(net, p, device):
        fused_trainer = fused.FusedSparseAdam(net, l2, *frequency, p["loss"], p["batch_size"], SPARSE_ADAM_BETAS)
    # plain SGD on sparse embeddings (the textbook preset): the model's hand-written step, same updates
    sgd_step = p["optimizer"] == "sgd" and hasattr(net, "sgd_step") and uses_sparse_gradients(p)
    optimizers = [] if fused_trainer or sgd_step else make_optimizers(net, p)
    n, batch_size = len(ratings), p["batch_size"]

    history: list[dict] = []
    train_seconds: list[float] = []
    best_epoch, best_val_loss, best_state = 0, math.inf, None
    for epoch in range(1, p["epochs"] + 1):
        # StepLR, set by hand so that several optimizers follow one schedule
        lr = p["learning_rate"] * p["gamma"] ** ((epoch - 1) // p["step_size"]) if p["step_size"] else p["learning_rate"]
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr

        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(n, generator=shuffler, device=device) if p["shuffle"] else None
        if fused_trainer is not None:  # reads the ratings in `order` itself
            train_loss = fused_trainer.run_epoch(users, items, ratings, order, lr)
        else:
            batches = (users, items, ratings) if order is None else (users[order], items[order], ratings[order])
            if sgd_step:
                train_loss = _sgd_step_epoch(net, p["loss"], batches, batch_size, lr)
            else:
                train_loss = _train_epoch(net, optimizers, loss_fn, l2, batches, batch_size, frequency)
            del batches
        del order
        train_seconds.append(time.perf_counter() - t0)
        if not math.isfinite(train_loss):
            raise ValueError(
                f"training diverged: train_loss is {train_loss} in epoch {epoch} (learning_rate {lr:g}); "
                "lower learning_rate"
            )

        val_loss = math.nan
        if has_val:
            val_pred = predict_tensor(net, val_users, val_items)
            val_loss = loss_fn(val_pred, val_ratings).item()
        metrics = {"train_loss": train_loss, "val_loss": val_loss, "learning_rate": lr}
        history.append({"epoch": epoch, **metrics})
        if on_epoch is not None:
            on_epoch(epoch, {**metrics, "epoch_seconds": time.perf_counter() - t0})

        if not has_val:
            best_epoch, best_val_loss = epoch, val_loss
        elif val_loss < best_val_loss:
            best_epoch, best_val_loss = epoch, val_loss
            if p["patience"]:
                best_state = copy.deepcopy(net.state_dict())
        elif p["patience"] and epoch - best_epoch >= p["patience"]:
            break

    if p["patience"] and best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    net.cpu()
    return FitResult(history, best_epoch, best_val_loss, train_seconds)

"""A fused CPU kernel for one epoch of ``biased-mf`` with sparse Adam (the accurate preset).

``fit``'s general path runs every step as PyTorch ops: embedding lookups, autograd, coalescing
the sparse gradients (a sort), gathers and scatters of the Adam moments. At ml-25m table sizes
that chain of small kernels costs ~5 ms a 4,096-rating step, nearly all of it per-call overhead
and serial index work. Biased MF's gradient is short enough to write out, so this module does the
whole step in one compiled loop (numba, ``nogil``): predict and accumulate each batch row's
gradient into a compact per-batch buffer of distinct rows, then apply SparseAdam's update to
exactly those rows. It computes what the general path computes (same batches, loss, L2 term,
update formula, in float32 storage) up to float summation order; ``fit`` uses it when
``params["fused"]`` is true and the model, optimizer, loss and device allow
(:func:`supports`), and a test checks both paths give the same weights and losses.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

try:  # numba is a dependency; a build without it (or a platform without wheels) keeps the torch path
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

LOSS_CODES = {"mse": 0, "l1": 1}


def available() -> bool:
    return numba is not None


def supports(net: nn.Module, params: dict, device: torch.device) -> bool:
    """Whether ``fit`` may train ``net`` with :class:`FusedSparseAdam` for these ``params``."""
    from modelyard.recommender.model import BiasedMF

    return (
        available()
        and bool(params.get("fused"))
        and isinstance(net, BiasedMF)
        and params.get("optimizer") == "sparse_adam"
        and params.get("loss") in LOSS_CODES
        and device.type == "cpu"
        and net.user.weight.dtype == torch.float32
    )


def _epoch(users, items, ratings, user_w, item_w, user_m, user_v, item_m, item_v,
           user_freq, item_freq, global_mean, n_factors, batch_size, loss_code, l2,
           lr, beta1, beta2, eps, step, user_slot, item_slot, user_mark, item_mark,
           user_rows, item_rows, user_grad, item_grad):  # pragma: no cover - compiled by numba
    """Train one epoch over the (already shuffled) ratings; returns (sum of per-rating losses, step).

    ``*_w`` are the ``[rows, factors + 1]`` tables (factors, then the bias), ``*_m`` / ``*_v`` the
    Adam moments of the same shape, ``*_freq`` the L2 weights ``1 / sqrt(n)``; ``step`` counts
    optimizer steps taken so far. The remaining arguments are scratch buffers: ``*_mark[row]``
    holds the last batch that touched the row and ``*_slot[row]`` its position in the batch's
    compact gradient buffer ``*_grad`` (``*_rows`` lists the batch's distinct rows).
    """
    n = ratings.shape[0]
    width = n_factors + 1
    loss_sum = 0.0
    batch = 0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        scale = 1.0 / (stop - start)
        batch += 1
        n_u = 0
        n_i = 0
        for j in range(start, stop):
            u = users[j]
            i = items[j]
            if user_mark[u] != batch:
                user_mark[u] = batch
                user_slot[u] = n_u
                user_rows[n_u] = u
                user_grad[n_u, :] = 0.0
                n_u += 1
            if item_mark[i] != batch:
                item_mark[i] = batch
                item_slot[i] = n_i
                item_rows[n_i] = i
                item_grad[n_i, :] = 0.0
                n_i += 1
            pred = global_mean + user_w[u, n_factors] + item_w[i, n_factors]
            for f in range(n_factors):
                pred += user_w[u, f] * item_w[i, f]
            err = pred - ratings[j]
            if loss_code == 0:
                loss_sum += err * err
                g = 2.0 * err * scale
            else:
                loss_sum += abs(err)
                g = (1.0 if err > 0 else (-1.0 if err < 0 else 0.0)) * scale
            du = 2.0 * l2 * scale * user_freq[u]
            di = 2.0 * l2 * scale * item_freq[i]
            su = user_slot[u]
            si = item_slot[i]
            for f in range(n_factors):
                p = user_w[u, f]
                q = item_w[i, f]
                user_grad[su, f] += g * q + du * p
                item_grad[si, f] += g * p + di * q
            user_grad[su, n_factors] += g
            item_grad[si, n_factors] += g

        step += 1
        step_size = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
        for k in range(n_u):
            row = user_rows[k]
            for f in range(width):
                grad = user_grad[k, f]
                m = user_m[row, f] + (1.0 - beta1) * (grad - user_m[row, f])
                v = beta2 * user_v[row, f] + (1.0 - beta2) * grad * grad
                user_m[row, f] = m
                user_v[row, f] = v
                user_w[row, f] -= step_size * m / (math.sqrt(v) + eps)
        for k in range(n_i):
            row = item_rows[k]
            for f in range(width):
                grad = item_grad[k, f]
                m = item_m[row, f] + (1.0 - beta1) * (grad - item_m[row, f])
                v = beta2 * item_v[row, f] + (1.0 - beta2) * grad * grad
                item_m[row, f] = m
                item_v[row, f] = v
                item_w[row, f] -= step_size * m / (math.sqrt(v) + eps)
    return loss_sum, step


_compiled = None


def _kernel():
    """``_epoch`` compiled (once per process; numba caches the machine code under ``__pycache__``)."""
    global _compiled
    if _compiled is None:
        _compiled = numba.njit(cache=True, nogil=True)(_epoch)
    return _compiled


class FusedSparseAdam:
    """SparseAdam (betas, eps as :class:`~modelyard.recommender.train.LazySparseAdam`) on a
    :class:`~modelyard.recommender.model.BiasedMF`'s two tables, one compiled loop per epoch.

    ``user_freq`` / ``item_freq`` are the L2 weights per row (``1 / sqrt(n)``), ``l2`` the
    ``weight_decay``. The tables are updated in place through NumPy views of the weights.
    """

    def __init__(self, net: nn.Module, l2: float, user_freq: torch.Tensor, item_freq: torch.Tensor,
                 loss: str, batch_size: int, betas: tuple[float, float], eps: float = 1e-8) -> None:
        self.net, self.l2, self.loss_code, self.batch_size = net, float(l2), LOSS_CODES[loss], int(batch_size)
        self.betas, self.eps, self.step = betas, eps, 0
        self.user_w = net.user.weight.data.numpy()  # shares memory with the parameter
        self.item_w = net.item.weight.data.numpy()
        self.user_m, self.user_v = np.zeros_like(self.user_w), np.zeros_like(self.user_w)
        self.item_m, self.item_v = np.zeros_like(self.item_w), np.zeros_like(self.item_w)
        self.user_freq = user_freq.numpy().astype(np.float32)
        self.item_freq = item_freq.numpy().astype(np.float32)
        rows = self.batch_size
        width = self.user_w.shape[1]
        self.scratch = (
            np.zeros(len(self.user_w), np.int32), np.zeros(len(self.item_w), np.int32),
            np.zeros(len(self.user_w), np.int64), np.zeros(len(self.item_w), np.int64),
            np.zeros(rows, np.int64), np.zeros(rows, np.int64),
            np.zeros((rows, width), np.float32), np.zeros((rows, width), np.float32),
        )
        self._run(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0.0)  # compile now

    def _run(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, lr: float) -> float:
        global _compiled
        user_slot, item_slot, user_mark, item_mark, *rest = self.scratch
        user_mark.fill(0)  # marks hold this epoch's batch numbers (1, 2, ...)
        item_mark.fill(0)
        beta1, beta2 = self.betas
        args = (users, items, ratings, self.user_w, self.item_w,
                self.user_m, self.user_v, self.item_m, self.item_v, self.user_freq, self.item_freq,
                float(self.net.global_mean), self.net.factors, self.batch_size, self.loss_code, self.l2,
                float(lr), float(beta1), float(beta2), float(self.eps), self.step,
                user_slot, item_slot, user_mark, item_mark, *rest)
        try:
            loss_sum, self.step = _kernel()(*args)
        except RuntimeError as error:  # no writable cache location (read-only install): compile uncached
            if "cannot cache" not in str(error):
                raise
            _compiled = numba.njit(nogil=True)(_epoch)
            loss_sum, self.step = _compiled(*args)
        return loss_sum

    def run_epoch(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor, lr: float) -> float:
        """Train one epoch over ``(users, items, ratings)`` in their order; the mean per-rating loss."""
        arrays = (np.ascontiguousarray(t.numpy()) for t in (users, items, ratings))
        return self._run(*arrays, lr) / max(1, len(ratings))

"""A fused CPU kernel for one epoch of ``biased-mf`` with sparse Adam (the accurate preset).

``fit``'s general path runs every step as PyTorch ops: embedding lookups, autograd, coalescing
the sparse gradients (a sort), gathers and scatters of the Adam moments. At ml-25m table sizes
that chain of small kernels costs ~5 ms a 4,096-rating step, most of it per-call overhead and
serial index work. Biased MF's gradient is short enough to write out, so this module runs a whole
epoch in one compiled loop (numba, ``nogil``): per batch, predict each rating and accumulate its
gradient into a compact buffer of the batch's distinct rows, then apply SparseAdam's update to
exactly those rows. It computes what the general path computes (same batches, loss, L2 term,
update formula, float32 storage) up to float summation order; ``fit`` uses it when
``params["fused"]`` is true and the model, optimizer, loss and device allow (:func:`supports`),
and tests check that both paths give the same losses and weights.

At ml-25m scale the loop is bound by memory latency: every rating reads a random user row and
updates its Adam moments, in tables far larger than the CPU caches. Two things make it ~2.5x
faster there than a plain loop: each row keeps its weights and both moments side by side (one
``[rows, 3, factors + 1]`` slab per table, copied into the embedding weights after every epoch),
and the loop prefetches (``llvm.prefetch``) what the ratings a few iterations ahead will touch -
their rows, duplicate-row marks and L2 weights, and in the update the next rows - so that many
cache misses are in flight at once instead of one (benchmarks/README.md has the measurements).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

try:  # a dependency; without it (a platform with no wheels) fit keeps the PyTorch path
    import numba
    from llvmlite import binding as _llvm
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - only where numba is missing
    numba = None

LOSS_CODES = {"mse": 0, "l1": 1}
AHEAD = 16  # ratings between prefetching a row and using it


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


if numba is not None:

    @intrinsic
    def _prefetch(typingctx, address):
        """``llvm.prefetch`` (read, keep in all cache levels) of the byte at ``address``."""

        def codegen(context, builder, signature, args):
            byte_ptr = ir.PointerType(ir.IntType(8))
            i32 = ir.IntType(32)
            name = "llvm.prefetch.p0" if _llvm.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), name
            )
            builder.call(fn, [builder.inttoptr(args[0], byte_ptr), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(types.intp), codegen

    @numba.njit(inline="always")
    def _prefetch_row(base, row, row_bytes):
        """Prefetch every cache line of the ``row_bytes`` long row ``row`` of the array at ``base``."""
        start = base + row * row_bytes
        for offset in range(0, row_bytes, 64):
            _prefetch(start + offset)
        _prefetch(start + row_bytes - 1)

    @numba.njit(inline="always")
    def _slot(marks, rows, grad, row, batch, count):
        """``row``'s place in the batch's gradient buffer: its old one, or the next (zeroed) one when the
        batch has not touched it yet. Returns (slot, number of rows the batch has touched)."""
        mark = marks[row]
        if (mark >> 32) == batch:
            return mark & 0xFFFFFFFF, count
        marks[row] = (batch << 32) | count
        rows[count] = row
        grad[count, :] = 0.0
        return count, count + 1

    @numba.njit(inline="always")
    def _adam_rows(slab, rows, grad, count, step_size, beta1, beta2, eps):
        """SparseAdam's update of the ``count`` rows ``rows`` of ``slab`` from their gradients ``grad``."""
        base = np.intp(slab.ctypes.data)
        row_bytes = 3 * slab.shape[2] * 4
        for s in range(count):
            row = rows[s]
            if s + 8 < count:
                _prefetch_row(base, rows[s + 8], row_bytes)
            for f in range(slab.shape[2]):
                g = grad[s, f]
                m = slab[row, 1, f] + (1.0 - beta1) * (g - slab[row, 1, f])
                v = beta2 * slab[row, 2, f] + (1.0 - beta2) * g * g
                slab[row, 1, f] = m
                slab[row, 2, f] = v
                slab[row, 0, f] -= step_size * m / (math.sqrt(v) + eps)


def _epoch(users, items, ratings, order, user_slab, item_slab, user_freq, item_freq, global_mean,
           batch_size, loss_code, l2, lr, beta1, beta2, eps, step,
           user_mark, item_mark, user_rows, item_rows, user_grad, item_grad):  # pragma: no cover - numba
    """Train one epoch over the ratings in ``order`` (all of them in turn when ``order`` is empty).

    ``*_slab[row]`` holds ``[weights, exp_avg, exp_avg_sq]``, each ``factors + 1`` long (factors,
    then the bias); ``*_freq`` are the L2 weights ``1 / sqrt(n)``; ``step`` counts optimizer steps
    so far. Scratch: ``*_mark[row]`` = ``batch << 32 | slot`` for a row the current batch touched,
    ``slot`` its place in the compact gradient buffer ``*_grad``, ``*_rows`` the batch's rows.
    Returns (sum of per-rating losses, step).
    """
    shuffled = order.shape[0] > 0
    n = order.shape[0] if shuffled else ratings.shape[0]
    width = user_slab.shape[2]
    factors = width - 1
    # addresses as signed integers: numba turns uint64 + int64 into a float
    user_base, item_base = np.intp(user_slab.ctypes.data), np.intp(item_slab.ctypes.data)
    users_base, items_base = np.intp(users.ctypes.data), np.intp(items.ctypes.data)
    ratings_base = np.intp(ratings.ctypes.data)
    user_mark_base, item_mark_base = np.intp(user_mark.ctypes.data), np.intp(item_mark.ctypes.data)
    user_freq_base, item_freq_base = np.intp(user_freq.ctypes.data), np.intp(item_freq.ctypes.data)
    row_bytes = 3 * width * 4
    index_bytes, rating_bytes = users.itemsize, ratings.itemsize
    loss_sum = 0.0
    batch = 0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        scale = 1.0 / (stop - start)
        batch += 1
        n_u = 0
        n_i = 0
        for j in range(start, stop):
            if shuffled and j + 2 * AHEAD < n:  # the triple used 2 * AHEAD ratings from now
                k = order[j + 2 * AHEAD]
                _prefetch(users_base + k * index_bytes)
                _prefetch(items_base + k * index_bytes)
                _prefetch(ratings_base + k * rating_bytes)
            if j + AHEAD < n:  # the rows used AHEAD ratings from now
                k = order[j + AHEAD] if shuffled else j + AHEAD
                _prefetch_row(user_base, users[k], row_bytes)
                _prefetch_row(item_base, items[k], row_bytes)
                _prefetch(user_mark_base + users[k] * 8)
                _prefetch(item_mark_base + items[k] * 8)
                _prefetch(user_freq_base + users[k] * 4)
                _prefetch(item_freq_base + items[k] * 4)
            k = order[j] if shuffled else j
            u = users[k]
            i = items[k]
            su, n_u = _slot(user_mark, user_rows, user_grad, u, batch, n_u)
            si, n_i = _slot(item_mark, item_rows, item_grad, i, batch, n_i)
            pred = global_mean + user_slab[u, 0, factors] + item_slab[i, 0, factors]
            for f in range(factors):
                pred += user_slab[u, 0, f] * item_slab[i, 0, f]
            err = pred - ratings[k]
            if loss_code == 0:  # mse
                loss_sum += err * err
                g = 2.0 * err * scale
            else:  # l1
                loss_sum += abs(err)
                g = (1.0 if err > 0 else (-1.0 if err < 0 else 0.0)) * scale
            du = 2.0 * l2 * scale * user_freq[u]
            di = 2.0 * l2 * scale * item_freq[i]
            for f in range(factors):
                p = user_slab[u, 0, f]
                q = item_slab[i, 0, f]
                user_grad[su, f] += g * q + du * p
                item_grad[si, f] += g * p + di * q
            user_grad[su, factors] += g
            item_grad[si, factors] += g

        step += 1
        step_size = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
        _adam_rows(user_slab, user_rows, user_grad, n_u, step_size, beta1, beta2, eps)
        _adam_rows(item_slab, item_rows, item_grad, n_i, step_size, beta1, beta2, eps)
    return loss_sum, step


_compiled = None


def _kernel():
    """``_epoch`` compiled (once per process; numba caches the machine code under ``__pycache__``)."""
    global _compiled
    if _compiled is None:
        try:
            _compiled = numba.njit(cache=True, nogil=True)(_epoch)
        except RuntimeError as error:  # no writable cache location (a read-only install): compile uncached
            if "cannot cache" not in str(error):
                raise
            _compiled = numba.njit(nogil=True)(_epoch)
    return _compiled


class FusedSparseAdam:
    """SparseAdam (betas, eps as :class:`~modelyard.recommender.train.LazySparseAdam`) on a
    :class:`~modelyard.recommender.model.BiasedMF`'s two tables, one compiled loop per epoch.

    ``user_freq`` / ``item_freq`` are the L2 weights per row (``1 / sqrt(n)``), ``l2`` the
    ``weight_decay``. The Adam state lives beside a copy of the weights in one slab per table;
    :meth:`run_epoch` copies the weights in, trains, and copies them back into the embeddings.
    """

    def __init__(self, net: nn.Module, l2: float, user_freq: torch.Tensor, item_freq: torch.Tensor,
                 loss: str, batch_size: int, betas: tuple[float, float], eps: float = 1e-8) -> None:
        self.net, self.l2, self.loss_code, self.batch_size = net, float(l2), LOSS_CODES[loss], int(batch_size)
        self.betas, self.eps, self.step = betas, eps, 0
        self.tables = (net.user.weight, net.item.weight)
        self.slabs = tuple(np.zeros((len(t), 3, t.shape[1]), np.float32) for t in self.tables)
        self.freq = (user_freq.numpy().astype(np.float32), item_freq.numpy().astype(np.float32))
        width = self.tables[0].shape[1]
        self.scratch = (
            np.zeros(len(self.tables[0]), np.int64), np.zeros(len(self.tables[1]), np.int64),  # marks
            np.zeros(self.batch_size, np.int64), np.zeros(self.batch_size, np.int64),  # rows
            np.zeros((self.batch_size, width), np.float32), np.zeros((self.batch_size, width), np.float32),
        )
        empty = np.zeros(0, np.int64)
        self._call(empty, empty, np.zeros(0, np.float32), empty, 0.0)  # compile (or load) the kernel now

    def _call(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, order: np.ndarray, lr: float) -> float:
        """Run the kernel over the slabs; the sum of per-rating losses."""
        user_mark, item_mark, *rest = self.scratch
        user_mark.fill(0)  # marks hold this epoch's batch numbers (1, 2, ...)
        item_mark.fill(0)
        beta1, beta2 = self.betas
        loss_sum, self.step = _kernel()(
            users, items, ratings, order, *self.slabs, *self.freq, float(self.net.global_mean),
            self.batch_size, self.loss_code, self.l2, float(lr), float(beta1), float(beta2), float(self.eps),
            self.step, user_mark, item_mark, *rest,
        )
        return loss_sum

    def run_epoch(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor,
                  order: torch.Tensor | None, lr: float) -> float:
        """Train one epoch over the ratings in ``order`` (indices; None: all, as stored); the mean loss."""
        arrays = [np.ascontiguousarray(t.numpy()) for t in (users, items)]
        arrays.append(np.ascontiguousarray(ratings.numpy(), dtype=np.float32))
        arrays.append(np.zeros(0, np.int64) if order is None else np.ascontiguousarray(order.numpy(), dtype=np.int64))
        for slab, table in zip(self.slabs, self.tables):
            slab[:, 0, :] = table.detach().numpy()
        loss_sum = self._call(*arrays, lr)
        with torch.no_grad():
            for slab, table in zip(self.slabs, self.tables):
                table.copy_(torch.from_numpy(slab[:, 0, :]))
        return loss_sum / max(1, len(ratings) if order is None else len(order))

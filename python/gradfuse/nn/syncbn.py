"""SyncBatchNorm: batch normalization whose statistics are taken over the batch of every rank.

Forward (training, several ranks): each rank computes its shard's per-channel count, mean and
M2 = sum (x - mean)^2 (float64, one compiled pass: ``_backend.batch_norm_stats``); one
``all_reduce_`` of a (W, 1 + 2C) float64 table in which each rank fills only its own row (a sum
with zeros is exact) hands every rank all the rows; they are merged in rank order with Chan et
al.'s pairwise update

    n = n_a + n_b,  d = mean_b - mean_a,  mean = mean_a + d n_b / n,
    M2 = M2_a + M2_b + d^2 n_a n_b / n

so every rank holds bitwise the same mean and biased variance M2 / n, and the same running
statistics (updated with the unbiased M2 / (n - 1), as BatchNorm1d). Then
``y = (x - mean) rstd w + b`` (the compiled BatchNorm apply pass).

Backward: per channel this rank's ``sum dy`` and ``sum dy (x - mean)`` (one compiled pass),
one ``all_reduce_`` of both (2C float64), and
``dx = rstd w (dy - sum_dy / n - (x - mean) rstd^2 sum_dy_xmu / n)`` with the global sums and
count. The weight and bias gradients are this rank's (``rstd * sum_dy_xmu_local``,
``sum_dy_local``), as in PyTorch: DataParallel's gradient average then makes them the
concatenated batch's (divided by the number of ranks, like every other gradient).

In one process (MPI not initialized or a world of 1), and in eval mode, it is BatchNorm's math
and kernels exactly.
"""

from __future__ import annotations

import numpy as np

from .. import _backend
from ..functional import _as_ncl, _contig, _shaped, _vec
from ..tensor import Function
from . import functional as F
from .module import Module
from .normalization import BatchNorm1d

__all__ = ["SyncBatchNorm"]


def _dist_world():
    """The gf.distributed module when a world of more than one rank is initialized, else None."""
    from .. import distributed as _dist
    if _dist.is_initialized() and _dist.get_world_size() > 1:
        return _dist
    return None


def merge_stats(counts: np.ndarray, means: np.ndarray, m2s: np.ndarray):
    """Merge per-rank (count, mean, M2) rows in rank order (Chan et al.): returns
    ``(count, mean (C,), M2 (C,))`` in float64. Ranks with count 0 are skipped.

    Example::

        >>> merge_stats(np.array([2., 2.]), np.array([[0.], [2.]]), np.array([[2.], [2.]]))
        (4.0, array([1.]), array([8.]))
    """
    n = 0.0
    mean = np.zeros(means.shape[1], np.float64)
    m2 = np.zeros(means.shape[1], np.float64)
    for nb, mb, qb in zip(counts, means, m2s):
        nb = float(nb)
        if nb == 0:
            continue
        tot = n + nb
        d = mb - mean
        mean = mean + d * (nb / tot)
        m2 = m2 + qb + d * d * (n * nb / tot)
        n = tot
    return n, mean, m2


class _SyncBatchNormFn(Function):
    """Training-mode batch norm over all ranks' batches (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, factor, eps, dist):
        dt = x.dtype
        x3 = _as_ncl(x)
        c = x3.shape[1]
        w, b = _vec(weight, dt), _vec(bias, dt)
        mean_l, m2_l = _backend.batch_norm_stats(x3)
        world, rank = dist.get_world_size(), dist.get_rank()
        table = np.zeros((world, 1 + 2 * c), np.float64)
        table[rank, 0] = x3.shape[0] * (x3.shape[2] if x3.ndim == 3 else 1)
        table[rank, 1:1 + c] = mean_l
        table[rank, 1 + c:] = m2_l
        dist.all_reduce_(table.reshape(-1), op="sum")
        n, mean, m2 = merge_stats(table[:, 0], table[:, 1:1 + c], table[:, 1 + c:])
        if n <= 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got "
                f"{int(n)} over all ranks (input size {x.shape} on rank {rank})")
        var = m2 / n
        if running_mean is not None:
            unbiased = m2 / (n - 1)
            running_mean[...] = (1.0 - factor) * running_mean.astype(np.float64) + factor * mean
            running_var[...] = (1.0 - factor) * running_var.astype(np.float64) + factor * unbiased
        # the normalize pass is BatchNorm's eval-mode kernel given the merged statistics
        y, save_mean, save_rstd = _backend.batch_norm_forward(
            x3, w, b, mean.astype(dt), var.astype(dt), False, 0.0, eps)
        ctx.save_for_backward(x3, w, save_mean, save_rstd)
        ctx.count = n
        ctx.dist = dist
        return _shaped(y, x.shape)

    @staticmethod
    def backward(ctx, g):
        x3, w, mean, rstd = ctx.saved
        need = ctx.needs_input_grad
        g3 = _contig(g, x3.dtype).reshape(x3.shape)
        sdy, sdyx = _backend.batch_norm_grad_sums(x3, g3, mean)
        dt = x3.dtype
        dw = (rstd.astype(np.float64) * sdyx).astype(dt) if need[1] else None
        db = sdy.astype(dt) if need[2] else None
        dx = None
        # every rank runs the all-reduce (the collective must not depend on what a rank needs)
        sums = np.concatenate([sdy, sdyx])
        ctx.dist.all_reduce_(sums, op="sum")
        if need[0]:
            c = x3.shape[1]
            dx = _backend.batch_norm_grad_input(x3, g3, w, mean, rstd, sums[:c], sums[c:],
                                                ctx.count)
            dx = _shaped(dx, ctx.inputs[0].shape)
        return (dx, dw, db, None, None, None, None, None)


class SyncBatchNorm(BatchNorm1d):
    """Batch normalization with statistics over the batches of all MPI ranks, as
    ``torch.nn.SyncBatchNorm``: under ``gf.distributed`` with several ranks, training-mode
    statistics are those of the concatenation of every rank's batch (bitwise the same on every
    rank; see the module docstring for the merge and the backward). In one process and in eval
    mode it is :class:`BatchNorm1d` exactly. The state_dict keys are BatchNorm's, so a
    checkpoint moves between the two.

    Shapes: input (N, C, *) with C = num_features (any number of trailing dimensions); output
    the same. N may differ between ranks (0 too, as long as the total is > 1).

    Gradients: ``dx`` uses the all-reduced sums (it is the concatenated batch's); the weight
    and bias gradients are this rank's share, so that DataParallel's gradient average gives the
    concatenated batch's gradient of the mean loss, as for any other parameter.

    Example::

        >>> model = gf.nn.Sequential(gf.nn.Linear(8, 16), gf.nn.BatchNorm1d(16), gf.nn.ReLU())
        >>> model = gf.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        >>> type(model[1]).__name__
        'SyncBatchNorm'
    """

    def forward(self, input):
        x = F._norm_input(input)
        if x.ndim < 2:
            raise ValueError(f"input: expected (N, C, *) input (got {x.ndim}D input)")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"input: expected {self.num_features} features (num_features) in dimension 1, "
                f"got input of shape {x.shape}")
        dist = _dist_world() if self.training else None
        if dist is None:
            return self._normalize(input)  # BatchNorm1d's, any (N, C, *)
        if type(x) is not np.ndarray:
            raise TypeError("input: SyncBatchNorm across ranks needs CPU tensors, got one on "
                            f"{getattr(input, 'device', 'a device')}")
        dt = x.dtype
        w = F._norm_param(self.weight, "weight", (self.num_features,), dt)
        b = F._norm_param(self.bias, "bias", (self.num_features,), dt)
        update = self.track_running_stats
        factor, count = self._running_factor(update)
        rm = rv = None
        if update:
            rm = F._norm_param(self.running_mean, "running_mean", (self.num_features,), dt)
            rv = F._norm_param(self.running_var, "running_var", (self.num_features,), dt)
            rm, rv = rm.data, rv.data
        out = _SyncBatchNormFn.apply(input, w, b, rm, rv, float(factor), self.eps, dist)
        if count is not None:
            self.num_batches_tracked.data[...] = count
        return out

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """``module`` with every :class:`BatchNorm1d` (and subclass other than SyncBatchNorm)
        replaced by a SyncBatchNorm that shares its parameters and buffers (the same Tensor
        objects: an optimizer built before the conversion still updates them). Returns the
        new root when ``module`` itself is a BatchNorm1d, else ``module`` (changed in place).

        ``process_group`` must be None (the whole world; gradfuse has no process groups).

        Example::

            >>> net = gf.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        """
        if process_group is not None:
            raise ValueError("process_group: gradfuse has no process groups; pass None (the "
                             "whole MPI world)")
        if not isinstance(module, Module):
            raise TypeError(f"module: expected a gf.nn.Module, got {type(module).__name__}")
        if isinstance(module, BatchNorm1d) and not isinstance(module, SyncBatchNorm):
            new = cls.__new__(cls)
            Module.__init__(new)
            for k in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
                setattr(new, k, getattr(module, k))
            for name, p in module._parameters.items():
                new.register_parameter(name, p)
            for name, t in module._buffers.items():
                new.register_buffer(name, t)
            new.train(module.training)
            return new
        for name, child in list(module._modules.items()):
            if child is not None:
                conv = cls.convert_sync_batchnorm(child)
                if conv is not child:
                    module._modules[name] = conv
        return module


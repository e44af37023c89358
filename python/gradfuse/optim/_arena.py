"""The flat arena: one param group's parameters of one dtype in one contiguous buffer, with
its gradient and state buffers of the same layout and its segment table (DESIGN.md, decision
3). See gradfuse.optim.optimizer for the semantics a user sees."""

from __future__ import annotations

import numpy as np

from .. import _backend
from ..cuda.array import DeviceArray
from ..tensor import Tensor

_ALIGN = 16  # elements: every segment starts on a 64-byte (cache line) boundary for float32


def _arena_empty(n: int, dtype: np.dtype, device: bool = False) -> np.ndarray:
    """A zero-filled 1-D pool buffer (2 MiB aligned + MADV_HUGEPAGE from 2 MiB up), or a
    zeroed DeviceArray when the parameters are on the GPU (``device``)."""
    if device:
        return DeviceArray.zeros((n,), dtype)
    a = _backend.pool_empty([max(n, 1)], dtype)[:n] if n else np.zeros(0, dtype)
    a.fill(0)
    return a


def _copy(dst, src) -> None:
    """``dst[...] = src`` across devices: the arena lives where its parameters do (CUDA: the
    arena, gradients and state are DeviceArrays and every kernel call dispatches to
    gradfuse.cuda.ops); a host value is uploaded, a device one copied on the GPU."""
    if type(dst) is DeviceArray:
        dst[...] = src
    elif type(src) is DeviceArray:
        np.copyto(dst, src.numpy(), casting="same_kind")
    else:
        np.copyto(dst, src, casting="same_kind")


class _ArenaGrad(Tensor):
    """A parameter's ``.grad`` while it lives in the gradient arena. ``.data`` is the arena view
    and stays one: assigning ``p.grad.data = array`` copies the values into the arena (the
    bound step checks only that ``p.grad`` is this tensor, so a rebound ``.data`` would be
    silently ignored). ``t.data += g`` reassigns the same array: no copy then."""

    @property
    def data(self):
        return self._view

    @data.setter
    def data(self, value):
        v = self.__dict__.get("_view")
        if v is None:  # Tensor.__init__
            self.__dict__["_view"] = value
            return
        a = self.__dict__.get("_gf_arena")
        if a is not None and a.grad_sync is not None:
            # a backward accumulating (``t.grad.data += g``) or a hand-written gradient:
            # DataParallel must average again before the next step
            a.grad_sync.grads_written()
        if value is v:
            return
        arr = value.data if isinstance(value, Tensor) else value
        if type(arr) is not DeviceArray:
            arr = np.asarray(arr)
        if arr.shape != v.shape:
            raise ValueError(
                f"grad.data: expected shape {v.shape} (the optimizer's gradient arena), got "
                f"{arr.shape}")
        _copy(v, arr)

    def __reduce__(self):  # a copy or pickle is an ordinary tensor holding the values
        return (Tensor, (self._view.copy(),))

    def _rebind(self, view) -> None:
        """Point at ``view`` (the moved gradient arena's slice) without copying."""
        self.__dict__["_view"] = view


class _Arena:
    """The parameters of one param group with one dtype, laid out contiguously.

    ``offsets``/``sizes`` are the segment table; ``steps`` counts each segment's updates
    (PyTorch keeps a step per parameter, and a parameter without a gradient is skipped)."""

    def __init__(self, params: list, dtype: np.dtype, device: bool = False):
        self.dtype = np.dtype(dtype)
        self.device = device  # on the GPU: every buffer is a DeviceArray
        self.params = params
        self.shapes = [p.data.shape for p in params]
        self.sizes = [int(p.data.size) for p in params]
        offs, n = [], 0
        for s in self.sizes:
            offs.append(n)
            n += -(-s // _ALIGN) * _ALIGN if s else 0
        self.offsets = offs
        self.n = n
        # Padding elements stay 0 in every buffer: every update rule maps (p, g, state) = 0 to 0.
        self.param = _arena_empty(n, self.dtype, device)
        self.grad = _arena_empty(n, self.dtype, device)
        self.views = []
        self.grad_tensors = []
        for p, o, s, shape in zip(params, offs, self.sizes, self.shapes):
            v = self.param[o : o + s].reshape(shape)
            _copy(v, p.data)
            gv = _ArenaGrad(self.grad[o : o + s].reshape(shape))
            gv._gf_arena = self  # lets clip_grad_norm_ find the whole buffer (one pass)
            self.views.append(v)
            self.grad_tensors.append(gv)
        for p, v, gt in zip(params, self.views, self.grad_tensors):
            old = p.grad
            p.data = v
            p._grad_slot = gt
            if old is not None:
                _copy(gt.data, old.data)
                p.grad = gt
        self.state: dict[str, np.ndarray] = {}
        # Step count per segment. While every segment has the same count it is kept in the
        # Python int `count` (the fast path touches no numpy scalar); `_steps` is then stale.
        self.count: int | None = 0
        self._steps = np.zeros(len(params), dtype=np.int64)
        # (state keys, [state0, state1, state2], group version, bound ArenaStep or None,
        #  (scalars, flags) of every later step when they do not depend on it, or None)
        self.slot_cache = None
        self.seg_table = None  # (offsets, sizes) as int64 arrays, for kernels that need them
        self.extra: dict[str, np.ndarray] = {}  # per-segment scalars (NAdam's mu_product)
        # ZeRO-1 (gradfuse.distributed.DataParallel): this rank's [lo, hi) of the arena; the
        # state buffers then hold only that range (length hi - lo). None: the whole arena.
        self.shard: tuple[int, int] | None = None
        self.grad_sync = None  # DataParallel's synchronizer (gf.nn.utils.clip_grad_norm_ syncs)

    # ------------------------------------------------------------ device moves
    def prepare_move(self, to_device: bool):
        """The first half of moving this arena to the GPU (``to_device``) or to the host, for
        ``Module.to``: copies the parameter arena, the gradient arena and every state buffer,
        one transfer per buffer, and changes nothing, so a failed copy (no device, out of
        memory) leaves the arena as it was. Returns ``commit()``, which cannot fail: it swaps
        the buffers in, makes each parameter's ``.data`` (where it is still the arena view)
        and each ``.grad`` tensor a view into them, and drops the bound ArenaStep (the next
        step binds one to the new buffers). Host buffers come back as fresh numpy arrays
        (from gradfuse's pool when large), not the 2 MiB aligned ones of a host-built arena.

        Per-segment step counts, the segment table and ``extra`` are host values and stay."""

        def conv(x):
            return DeviceArray.from_numpy(x) if to_device else x.numpy()

        param, grad = conv(self.param), conv(self.grad)
        state = {k: conv(v) for k, v in self.state.items()}

        def commit() -> None:
            old = self.views
            self.param, self.grad, self.state, self.device = param, grad, state, to_device
            self.views = []
            for p, v, gt, o, s, shape in zip(self.params, old, self.grad_tensors, self.offsets,
                                             self.sizes, self.shapes):
                nv = param[o : o + s].reshape(shape)
                self.views.append(nv)
                if p.data is v:  # a rebound .data is moved by Module.to, adopted at step()
                    p.data = nv
                gt._rebind(grad[o : o + s].reshape(shape))
            self.slot_cache = None

        return commit

    def rebind_buffers(self, param=None, grad=None) -> None:
        """Move the parameter arena into ``param`` and/or the gradient arena into ``grad`` (1-D
        host arrays of ``n`` elements and the arena's dtype, e.g. the buffers a
        ``gradfuse.distributed`` reducer reduces in place): the values are copied once, each
        parameter's ``.data`` (where it is still the arena view) and each ``.grad`` tensor
        become views into the new buffers, as ``prepare_move``'s commit does, and the bound
        ArenaStep is dropped (the next step binds one to the new buffers)."""
        for name, buf in (("param", param), ("grad", grad)):
            if buf is not None and (not isinstance(buf, np.ndarray) or buf.shape != (self.n,)
                                    or buf.dtype != self.dtype or self.device):
                raise ValueError(
                    f"{name}: expected a host array of shape ({self.n},) and dtype {self.dtype}")
        if param is not None:
            np.copyto(param, self.param)
            old = self.views
            self.param = param
            self.views = []
            for p, v, o, s, shape in zip(self.params, old, self.offsets, self.sizes,
                                         self.shapes):
                nv = param[o : o + s].reshape(shape)
                self.views.append(nv)
                if p.data is v:  # a rebound .data is adopted by the next sync()
                    p.data = nv
        if grad is not None:
            np.copyto(grad, self.grad)
            self.grad = grad
            for gt, o, s, shape in zip(self.grad_tensors, self.offsets, self.sizes, self.shapes):
                gt._rebind(grad[o : o + s].reshape(shape))
        self.slot_cache = None

    # ------------------------------------------------------------ step counts
    @property
    def steps(self) -> np.ndarray:
        """Per-segment step counts, writable; call settle() after writing."""
        if self.count is not None:
            self._steps[:] = self.count
            self.count = None
        return self._steps

    def settle(self) -> None:
        st = self._steps
        if self.count is None and (len(st) == 0 or (st == st[0]).all()):
            self.count = int(st[0]) if len(st) else 0

    def step_of(self, seg: int) -> int:
        return self.count if self.count is not None else int(self._steps[seg])

    # ------------------------------------------------------------ per-step bookkeeping
    def sync(self):
        """Which segments take part in this step. Returns None when all do (the fast path),
        else a bool list. Re-adopts rebound ``.data`` and hand-assigned ``.grad``."""
        ps = self.params
        if _backend.arena_intact(ps, self.grad_tensors, self.views):
            return None
        active = []
        for i, p in enumerate(ps):
            v = self.views[i]
            if p.data is not v:
                d = p.data
                if type(d) is not type(v) and hasattr(d, "shape"):
                    raise RuntimeError(
                        f"parameter {i} of this optimizer's flat arena is on another device "
                        "now: Module.to moved it with the arena of the optimizer that holds its "
                        "gradient (the last one built over it), and a parameter shared by two "
                        "optimizers cannot take this one's arena along; build this optimizer "
                        "again after moving the model")
                if type(d) is not type(v) or d.shape != v.shape or d.dtype != v.dtype:
                    raise RuntimeError(
                        f"parameter {i} of shape {v.shape} and dtype {v.dtype} in the optimizer "
                        f"arena was replaced by an array of shape {getattr(d, 'shape', '?')} "
                        f"and dtype {getattr(d, 'dtype', '?')}; build a new optimizer after "
                        "changing a parameter's shape or dtype")
                _copy(v, d)
                p.data = v
            g = p.grad
            gt = self.grad_tensors[i]
            if g is None:
                active.append(False)
                continue
            if g is not gt:
                gd = g.data if isinstance(g, Tensor) else g
                if type(gd) is not DeviceArray:
                    gd = np.asarray(gd)
                if gd.shape != v.shape:
                    raise RuntimeError(
                        f"parameter {i}: .grad has shape {gd.shape}, expected {v.shape}")
                _copy(gt.data, gd)
                p.grad = gt
                p._grad_slot = gt
            active.append(True)
        return active

    def runs(self, active):
        """Contiguous ranges [lo, hi) of active segments with equal step counts:
        ``(lo, hi, step, first_index, last_index_exclusive)``."""
        out = []
        start = None
        steps = self.steps
        for i in range(len(self.params) + 1):
            ok = i < len(self.params) and (active is None or active[i])
            if start is not None and (not ok or steps[i] != steps[start]):
                out.append((start, i))
                start = None
            if ok and start is None:
                start = i
        res = []
        for a, b in out:
            lo = self.offsets[a]
            hi = self.offsets[b] if b < len(self.params) else self.n
            res.append((lo, hi, int(steps[a]), a, b))
        return res

    def ensure_state(self, name: str, init: float = 0.0) -> np.ndarray:
        a = self.state.get(name)
        if a is None:
            lo, hi = (0, self.n) if self.shard is None else self.shard
            a = _arena_empty(hi - lo, self.dtype, self.device)
            if init:
                for o, s in zip(self.offsets, self.sizes):
                    b, e = max(o, lo), min(o + s, hi)
                    if b < e:
                        a[b - lo : e - lo] = init
            self.state[name] = a
        return a

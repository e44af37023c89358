"""Optimizer base: parameters in a flat arena, one fused kernel call per group and dtype.

When an optimizer is built, the parameters of each param group are copied into one contiguous
buffer per dtype (the *arena*, 2 MiB aligned with transparent huge pages when it is that large,
from gradfuse's pool) and every parameter's ``.data`` becomes a view into it; gradients get a
second arena of the same layout, and each state tensor (``exp_avg``, ``momentum_buffer``, ...)
one more. A step is then one compiled call per group and dtype over whole buffers
(DESIGN.md, decision 3): the Python work per step is a handful of operations per group (the
hyperparameter scalars; a group counts its changes, so those derived from it are cached). Each
arena's buffers are bound once to a compiled ``ArenaStep``; one call of it checks that every
parameter's ``.data`` and ``.grad`` are still the arena views (a pointer compare per parameter,
~10 ns each, in C++) and runs the update (the non-finite guard first asks every bound arena
whether its gradients are finite). Anything else (a rebound ``.data``, a ``.grad`` set by hand
or None, a folded clip scale) takes the general path below.

Arena semantics (read this if you hold on to arrays):

* ``p.data`` is a view into the arena. In-place writes (``p.data[...] = x``,
  ``model.load_state_dict``) update the arena. Rebinding ``p.data = other_array`` of the same
  shape and dtype is noticed at the next ``step()``: the values are copied into the arena and
  ``p.data`` is made a view again.
* ``p.grad`` is, once backward has run, a Tensor whose ``.data`` is a view into the gradient
  arena; autograd *copies* the first gradient of a backward into it and adds later ones (see
  ``_accumulate_leaf`` in gradfuse/tensor.py), so nothing has to be zeroed beforehand.
* ``zero_grad(set_to_none=True)`` (the default) sets every ``p.grad`` to ``None``, as PyTorch:
  a user reading ``.grad`` sees ``None``; the arena memory is kept, and the next backward writes
  into it again. A parameter whose ``.grad`` is ``None`` at ``step()`` is skipped (no update,
  no state change), as in PyTorch. ``zero_grad(set_to_none=False)`` zeroes the gradient arena
  in one call and leaves ``.grad`` as zero-filled views (a ``.grad`` that was None stays None,
  as PyTorch, so a parameter that gets no gradient still takes no step).
* A gradient assigned by hand (``p.grad = gf.Tensor(g)``) is copied into the arena at the next
  ``step()``; ``p.grad.data = array`` on an arena gradient copies into the arena at once
  (``p.grad.data`` stays the arena view).
* A parameter given to a second optimizer moves into the second one's arena; the first
  optimizer copies it back into its own at its next ``step()``, so both keep updating the same
  values (PyTorch's behaviour, at the price of a copy per step). A parameter listed twice in
  one optimizer is a ``ValueError``, as in PyTorch for two groups.
* ``model.to(device)`` after the optimizer is built moves each arena the model's parameters
  live in as whole buffers (:meth:`_Arena.prepare_move`): the parameter arena, the gradient
  arena and every state buffer are copied to the device once each (not per parameter), the
  parameters' ``.data`` and the ``.grad`` tensors become views into the moved buffers, and the
  bound ``ArenaStep`` is dropped, to be bound again to the new buffers by the next step. The
  parameters and their ``.grad`` tensors stay the same objects (PyTorch moves them in place),
  so the optimizer, its state_dict and a held ``p.grad`` keep working.
* ``gradfuse.distributed.DataParallel`` moves the gradient arena (under ZeRO-1 the parameter
  arena too) into a reducer's buffer in the same way (:meth:`_Arena.rebind_buffers`) and
  hooks itself on ``_grad_sync``; under ZeRO-1 ``_Arena.shard`` limits the state buffers to
  this rank's range.

Example::

    >>> model = gf.nn.Linear(4, 2)
    >>> opt = gf.optim.Adam(model.parameters(), lr=1e-3)
    >>> loss = (model(gf.ones(8, 4)) ** 2).mean()
    >>> loss.backward()
    >>> opt.step()
    True
    >>> opt.zero_grad()
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _backend
from .._grad_norm import total_norm
from ..cuda.array import DeviceArray
from ..tensor import Tensor, enable_grad
from . import _validate
from ._arena import _Arena

__all__ = ["Optimizer", "required", "total_norm"]


class _Required:
    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()

# flag bits of _C.optim_step
F_MAXIMIZE, F_NESTEROV, F_FIRST, F_AMSGRAD, F_DECOUPLED, F_CENTERED, F_RECTIFY = (
    1, 2, 4, 8, 16, 32, 64)


_PLAIN = (float, int, bool)


class _Group(dict):
    """A param group: a plain dict that counts its changes (``version``), so the scalars a step
    derives from the hyperparameters are recomputed only after a scheduler or the user changes
    one (``group["lr"] = ...``). Reads cost what a dict's do."""

    __slots__ = ("version", "base")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.version = 0
        self.base = None  # (version, base scalars) cached by Optimizer._base_scalars

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, value)
        self.version += 1

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        self.version += 1

    def update(self, *args, **kwargs):
        dict.update(self, *args, **kwargs)
        self.version += 1

    def setdefault(self, key, default=None):
        self.version += 1
        return dict.setdefault(self, key, default)

    def pop(self, *args):
        self.version += 1
        return dict.pop(self, *args)

    def popitem(self):
        self.version += 1
        return dict.popitem(self)

    def clear(self):
        dict.clear(self)
        self.version += 1

    def __ior__(self, other):
        dict.update(self, other)
        self.version += 1
        return self

    def __reduce__(self):  # copies and pickles are plain dicts (no cache to carry)
        return (dict, (dict(self),))


class Optimizer:
    """Base class of gradfuse's optimizers (PyTorch's ``torch.optim.Optimizer`` interface).

    Args:
        params: an iterable of Tensors, or of dicts (param groups) with a ``"params"`` entry
            and per-group hyperparameters.
        defaults: default hyperparameters of every group.
        skip_nonfinite: when True, ``step()`` first checks all gradients taking part for
            NaN/inf (one read pass over the gradient arena, or none when
            :meth:`clip_grad_norm_` already computed the norm); a step with a non-finite
            gradient changes no parameter and no state, increments ``skipped_steps`` and
            returns False.

    Subclasses set ``_kind`` (the kernel), ``_state_keys(group)`` (PyTorch's state names, in
    kernel slot order), and ``_scalars(group, step, arena, lo_index, hi_index)``.
    """

    _kind = -1
    _has_step = True  # whether PyTorch's state carries 'step'
    _eager_state = False  # PyTorch creates the state at construction (Adagrad), not at step 1
    # Whether step() may use the bound ArenaStep: needs the base _update and a _scalars without
    # side effects (it runs before the ArenaStep finds out whether the fast path applies).
    _fast_step = True
    # Whether _scalars gives the same values for every step after the first (for one group
    # version): the bound path then reuses them.
    _fixed_scalars = False
    # gradfuse.distributed.DataParallel's gradient synchronizer, None in a single process.
    # step() and clip_grad_norm_() call its sync() first (one in-place all-reduce per gradient
    # arena per backward, so the guard and the clipping see the averaged gradients), zero_grad()
    # its reset(); with ZeRO-1 (``.sharded``) it also runs the update, the gradient norm and
    # the state gathering (see gradfuse/distributed/parallel.py).
    _grad_sync = None

    def __init__(self, params, defaults: dict, *, skip_nonfinite: bool = False):
        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or "
                "dicts, but got a Tensor")
        if not isinstance(skip_nonfinite, bool):
            raise TypeError(f"skip_nonfinite: expected a bool, got {skip_nonfinite!r}")
        self.defaults = dict(defaults)
        self._check_group(self.defaults)
        self.param_groups: list[dict] = []
        self._arenas: list[list[tuple[list[int], _Arena]]] = []
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        self.last_step_skipped = False
        self._clip_scale = None  # folded into the next step by clip_grad_norm_
        self._clip_norm = None
        groups = list(params)
        if len(groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        # every group is checked before any parameter moves into an arena: a bad later group
        # must not leave the earlier groups' parameters rebound to an orphaned arena
        prepared: list = []
        for g in groups:
            prepared.append(self._prepare_group(g, prepared))
        for group, params in prepared:
            self._install_group(group, params)

    # ------------------------------------------------------------ groups
    def _check_group(self, group: dict) -> None:
        """Validate hyperparameters (PyTorch's errors); subclasses extend."""

    def add_param_group(self, param_group: dict) -> None:
        """Add a group (dict with ``"params"`` and optional hyperparameters); its parameters
        move into a new arena. Everything is checked before any parameter is touched.
        Refused while ``gradfuse.distributed.DataParallel`` is attached (its arenas were
        checked, broadcast and moved into the reducer's buffers at construction)."""
        if self._grad_sync is not None:
            raise RuntimeError(
                "add_param_group: this optimizer is attached to gradfuse.distributed."
                "DataParallel, whose gradient synchronization covers the groups it was built "
                "with; dp.close(), add the group, then build DataParallel again")
        self._install_group(*self._prepare_group(param_group, []))

    def _prepare_group(self, param_group, pending: list):
        """Validate a group (against the existing and the `pending` prepared groups); returns
        (group, params) without touching any parameter."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group: expected a dict, got {type(param_group).__name__}")
        group = _Group(param_group)
        params = group.get("params")
        if params is None:
            raise ValueError("param_group: missing 'params'")
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the "
                "ordering of tensors in sets will change between runs. Please use a list instead.")
        else:
            params = list(params)
        if len(params) == 0:
            raise ValueError("optimizer got an empty parameter list")
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(
                    "optimizer can only optimize Tensors, but one of the params is "
                    f"{type(p).__name__}")
            if p._ctx is not None:
                raise ValueError("can't optimize a non-leaf Tensor")
            if p.data.dtype.kind != "f" or p.data.dtype.itemsize not in (4, 8):
                raise TypeError(
                    "params: only float32 and float64 parameters are supported, got "
                    f"{p.data.dtype}")
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids):
            raise ValueError("param_group: a parameter appears more than once in the group")
        for qs in [g["params"] for g in self.param_groups] + [pp for _, pp in pending]:
            if not set(ids).isdisjoint(id(q) for q in qs):
                raise ValueError("some parameters appear in more than one parameter group")
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(
                    "parameter group didn't specify a value of required optimization "
                    f"parameter {name}")
            group.setdefault(name, default)
        self._check_group(group)
        return group, params

    def _install_group(self, group, params) -> None:
        group["params"] = params
        by_dtype: dict[tuple, list[int]] = {}  # one arena per (dtype, device)
        for i, p in enumerate(params):
            by_dtype.setdefault((p.data.dtype, type(p.data) is DeviceArray), []).append(i)
        arenas = [(idx, _Arena([params[i] for i in idx], dt, dev))
                  for (dt, dev), idx in by_dtype.items()]
        self.param_groups.append(group)
        self._arenas.append(arenas)

    # ------------------------------------------------------------ gradients
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop gradients (``set_to_none=True``, PyTorch's default: ``p.grad`` reads None and
        the parameter is skipped by ``step()`` until a backward writes it again) or zero the
        gradient arenas in one call each (``set_to_none=False``: a ``p.grad`` that is not None
        reads zeros; one that is None stays None, as PyTorch). A clip scale folded by
        :meth:`clip_grad_norm_` belonged to the dropped gradients: it is dropped too."""
        self._clip_scale = self._clip_norm = None
        if self._grad_sync is not None:
            self._grad_sync.reset()
        for arenas in self._arenas:
            for _, a in arenas:
                if set_to_none:
                    for p in a.params:
                        p.grad = None
                else:
                    a.grad.fill(0)
                    for p, gt in zip(a.params, a.grad_tensors):
                        g = p.grad
                        # A None .grad stays None, as PyTorch: a zero gradient would make a
                        # parameter that gets no gradient (frozen, unused) take part in step()
                        # (weight decay, momentum would move it).
                        if g is not None and g is not gt:
                            g.data[...] = 0  # a foreign gradient: zero it too, as PyTorch

    def _plans(self):
        """Sync every arena; returns [(group, arena, active)] for the step."""
        plans = []
        for group, arenas in zip(self.param_groups, self._arenas):
            for _, a in arenas:
                plans.append((group, a, a.sync()))
        return plans

    @staticmethod
    def _grad_ranges(plans):
        for _, a, active in plans:
            if active is None:
                yield a.grad
            else:
                for i, on in enumerate(active):
                    if on:
                        o = a.offsets[i]
                        yield a.grad[o : o + a.sizes[i]]

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False) -> float:
        """Total gradient norm over this optimizer's parameters, like
        ``gf.nn.utils.clip_grad_norm_``, but the scale ``min(1, max_norm / (norm + 1e-6))`` is
        folded into the next ``step()`` instead of being written into the gradients: one read
        pass instead of a read and a write. ``.grad`` is left unscaled.

        Returns the total norm (a float). Example::

            loss.backward()
            opt.clip_grad_norm_(1.0)
            opt.step()
        """
        max_norm = _validate.number("max_norm", max_norm)
        try:
            norm_type = float(norm_type)
        except (TypeError, ValueError):
            raise TypeError(
                f"norm_type: expected a number, got {type(norm_type).__name__}") from None
        if math.isnan(norm_type) or norm_type <= 0:
            raise ValueError(f"norm_type: expected a positive number or inf, got {norm_type}")
        sync = self._grad_sync
        if sync is not None:
            sync.sync()
        plans = self._plans()
        if sync is not None and sync.sharded:
            total = sync.grad_norm(plans, norm_type)
        else:
            total = total_norm(self._grad_ranges(plans), norm_type)
        if error_if_nonfinite and not math.isfinite(total):
            raise RuntimeError(
                f"The total norm of order {norm_type} for gradients from `parameters` is "
                "non-finite, so it cannot be clipped. To disable this error and scale the "
                "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`")
        self._clip_norm = total
        self._clip_scale = min(1.0, max_norm / (total + 1e-6))
        return total

    # ------------------------------------------------------------ step
    def step(self, closure=None):
        """One update of every parameter that has a gradient.

        Returns the closure's loss when a closure is given (PyTorch), otherwise True when the
        update was applied and False when the non-finite guard skipped it (also readable as
        ``last_step_skipped``; the running count is ``skipped_steps``)."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        sync = self._grad_sync
        if sync is not None:
            sync.sync(consume=True)
            if sync.sharded:
                return sync.step(loss, closure)
        if self._clip_scale is None and self.skip_nonfinite and self._fast_step:
            # the guard through the bound steps: all gradients are checked before any update
            bound = self._bound_steps()
            if bound is not None:
                finite = [b.grads_finite() for b in bound]
                if -1 not in finite:
                    if 0 in finite:
                        self.skipped_steps += 1
                        self.last_step_skipped = True
                        return loss if closure is not None else False
                    return self._step_bound(loss, closure)
        if self._clip_scale is None and not self.skip_nonfinite:
            return self._step_bound(loss, closure)
        plans = self._plans()
        return self._guarded_update(
            plans, loss, closure,
            lambda: all(_backend.arena_all_finite(g) for g in self._grad_ranges(plans)),
            self._update)

    def _guarded_update(self, plans, loss, closure, all_finite, update):
        """The general step over ``plans``: the non-finite guard (the clip norm when
        clip_grad_norm_ computed one, else ``all_finite()``), then ``update(group, arena,
        active, grad_scale)`` per plan with the folded clip scale. DataParallel's ZeRO-1 step
        passes its shard-wise check and update."""
        scale, norm = self._clip_scale, self._clip_norm
        self._clip_scale = self._clip_norm = None
        if self.skip_nonfinite:
            finite = math.isfinite(norm) if norm is not None else all_finite()
            if not finite:
                self.skipped_steps += 1
                self.last_step_skipped = True
                return loss if closure is not None else False
        self.last_step_skipped = False
        gs = 1.0 if scale is None else float(scale)
        for group, a, active in plans:
            update(group, a, active, gs)
        return loss if closure is not None else True

    def _bound_steps(self):
        """The bound ArenaStep of every arena when all of them have one that is current, else
        None (then the general path syncs and checks)."""
        out = []
        for group, arenas in zip(self.param_groups, self._arenas):
            version = getattr(group, "version", None)
            for _, a in arenas:
                cache = a.slot_cache
                if a.count is None or cache is None or cache[3] is None or cache[2] != version:
                    return None
                out.append(cache[3])
        return out

    def _step_bound(self, loss, closure):
        """The common step: per arena one call of its bound ArenaStep, which checks that every
        parameter still has its arena views and updates; any other arena takes _update."""
        fast = self._fast_step
        for group, arenas in zip(self.param_groups, self._arenas):
            version = getattr(group, "version", None)
            for _, a in arenas:
                cache = a.slot_cache
                if fast and a.count is not None and cache is not None and \
                        cache[3] is not None and cache[2] == version:
                    step = a.count + 1
                    fixed = cache[4]
                    sc, flags = fixed if fixed is not None else \
                        self._scalars(group, step, a, 0, len(a.params))
                    if cache[3](sc, flags):
                        a.count = step
                        continue
                self._update(group, a, a.sync(), 1.0)
        self.last_step_skipped = False
        return loss if closure is not None else True

    def _update(self, group, a: _Arena, active, grad_scale: float) -> None:
        slots = self._slots(group, a)
        if a.shard is not None:  # ZeRO-1 (DataParallel): this rank's elements only, unbound
            self._update_window(group, a, active, grad_scale, slots, *a.shard)
            return
        if active is None and a.count is not None:
            kind = self._kind
            step = a.count + 1
            sc, flags = self._scalars(group, step, a, 0, len(a.params))
            sc[12] = grad_scale
            _backend.optim_step(kind, a.param, a.grad, slots[0], slots[1], slots[2], sc, flags)
            a.count = step
            version = getattr(group, "version", None)
            if self._fast_step and version is not None and a.slot_cache[3] is None:
                # bind this arena's buffers once; valid while the group and the state slots are
                # (a new group version or load_state_dict drops it with the slot cache)
                # reusable only if the group holds plain numbers (an array-valued lr could
                # change in place unseen): exactly when _base_scalars could cache them
                base = getattr(group, "base", None)
                fixed = self._scalars(group, step + 1, a, 0, len(a.params)) \
                    if self._fixed_scalars and base is not None and base[0] == version else None
                a.slot_cache = a.slot_cache[:3] + (_backend.ArenaStep(
                    kind, a.param, a.grad, slots[0], slots[1], slots[2], sc, flags, a.params,
                    a.grad_tensors, a.views), fixed)
            return
        self._update_window(group, a, active, grad_scale, slots, 0, a.n)

    def _slots(self, group, a: _Arena) -> list:
        """The arena's three kernel state slots (None where unused), created on first use and
        cached in ``a.slot_cache`` while the group's version (or its state keys) is unchanged."""
        cache = a.slot_cache
        version = getattr(group, "version", None)
        if cache is not None and version is not None and cache[2] == version:
            return cache[1]  # the group is unchanged since: so are its state keys
        keys = self._state_keys(group)
        if cache is not None and cache[0] == keys:
            slots = cache[1]
        else:
            slots = [a.ensure_state(k, self._state_init(group, k)) if k else None
                     for k in keys]
            slots += [None] * (3 - len(slots))
        a.slot_cache = (keys, slots, version, None, None)
        return slots

    def _update_window(self, group, a: _Arena, active, grad_scale: float, slots, lo: int,
                       hi: int) -> None:
        """The update of the elements ``[lo, hi)`` of the arena, whose state ``slots`` hold
        exactly those (the whole arena, or a ZeRO-1 shard): one kernel call per run of active
        segments with equal step counts. Every active segment's step count and per-segment
        scalars (``_scalars``' side effects, NAdam's mu_product) advance, also where none of
        its elements lie in the window, so every rank's counts stay the same."""
        kind = self._kind
        if active is None and a.count is not None:
            step = a.count + 1
            sc, flags = self._scalars(group, step, a, 0, len(a.params))
            sc[12] = grad_scale
            if hi > lo:
                _backend.optim_step(kind, a.param[lo:hi], a.grad[lo:hi], slots[0], slots[1],
                                    slots[2], sc, flags)
            a.count = step
            return
        for rlo, rhi, step0, i0, i1 in a.runs(active):
            sc, flags = self._scalars(group, step0 + 1, a, i0, i1)
            sc[12] = grad_scale
            b, e = max(rlo, lo), min(rhi, hi)
            if b < e:
                s = [None if x is None else x[b - lo : e - lo] for x in slots]
                _backend.optim_step(kind, a.param[b:e], a.grad[b:e], s[0], s[1], s[2], sc,
                                    flags)
            a.steps[i0:i1] += 1
        a.settle()

    # hooks for subclasses
    def _state_keys(self, group) -> list:
        """PyTorch state names in kernel slot order (state0..2); None for an unused slot."""
        return []

    def _keys(self, group) -> list[str]:
        return [k for k in self._state_keys(group) if k]

    def _state_init(self, group, key) -> float:
        return 0.0

    def _scalars(self, group, step, arena, i0, i1):
        raise NotImplementedError

    @staticmethod
    def _base_scalars(group) -> list[float]:
        # lr, weight_decay, eps, beta1, beta2, momentum, dampening, alpha, step_size,
        # bc2_sqrt, c1, c2, grad_scale, reserved (order of bindings.cpp, optim section)
        base = getattr(group, "base", None)
        if base is not None and base[0] == group.version:
            return base[1][:]  # a copy: the caller fills in the per-step entries
        betas = group.get("betas", (0.0, 0.0))
        vals = (group["lr"], group.get("weight_decay", 0.0), group.get("eps", 0.0), betas[0],
                betas[1], group.get("momentum", 0.0), group.get("dampening", 0.0),
                group.get("alpha", 0.0))
        sc = [float(v) for v in vals] + [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
        # cache only immutable values: an array-valued lr could change in place unseen
        if isinstance(group, _Group) and all(type(v) in _PLAIN for v in vals):
            group.base = (group.version, sc[:])
        return sc

    # ------------------------------------------------------------ state
    def _param_index(self):
        """(group index, arena, segment) for each parameter in PyTorch's index order."""
        out = []
        for gi, arenas in enumerate(self._arenas):
            pos = {}
            for idx, a in arenas:
                for seg, i in enumerate(idx):
                    pos[i] = (a, seg)
            for i in range(len(self.param_groups[gi]["params"])):
                out.append((gi,) + pos[i])
        return out

    def _segment_state(self, group, a: _Arena, seg: int) -> dict:
        """PyTorch-layout state of one parameter (copies), {} before its first step."""
        step = a.step_of(seg)
        if step == 0 and not self._eager_state:
            return {}
        o, s, shape = a.offsets[seg], a.sizes[seg], a.shapes[seg]
        st = {}
        if self._has_step:
            st["step"] = np.array(float(step), dtype=np.float32)
        for k in self._keys(group):
            v = a.state[k][o : o + s].reshape(shape)
            # a copy on the host in either case (a GPU arena's state comes down here)
            st[k] = v.numpy() if type(v) is DeviceArray else v.copy()
        for k, arr in a.extra.items():
            st[k] = np.array(arr[seg], dtype=np.float32)
        return st

    @property
    def state(self) -> dict:
        """param -> its state dict (PyTorch's ``optimizer.state``), built on each access; the
        arrays are copies: write state through :meth:`load_state_dict`. Collective under
        ZeRO-1 (DataParallel with ``shard_optimizer_state=True``): every rank gets it whole."""
        sync = self._grad_sync
        if sync is not None and sync.sharded:
            with sync.full_state():
                return self._local_state()
        return self._local_state()

    def _local_state(self) -> dict:
        out = {}
        for gi, a, seg in self._param_index():
            st = self._segment_state(self.param_groups[gi], a, seg)
            if st:
                out[a.params[seg]] = st
        return out

    def state_dict(self) -> dict:
        """``{"state": {index: {"step", "exp_avg", ...}}, "param_groups": [...]}`` in PyTorch's
        layout with numpy arrays (``step`` a 0-d float32 array, as ``tensor.numpy()`` gives).
        Parameters are numbered across groups in order, as PyTorch does.

        Unlike PyTorch (which returns references to the live state tensors), the arrays are
        copies: a snapshot that later steps do not change and whose mutation does not reach the
        optimizer. :meth:`load_state_dict` copies in the same way.

        Under ZeRO-1 (DataParallel with ``shard_optimizer_state=True``) it is collective (every
        rank calls it) and every rank gets the full state, the dict one process would have."""
        sync = self._grad_sync
        if sync is not None and sync.sharded:
            with sync.full_state():
                return self._local_state_dict()
        return self._local_state_dict()

    def _local_state_dict(self) -> dict:
        state = {}
        for i, (gi, a, seg) in enumerate(self._param_index()):
            st = self._segment_state(self.param_groups[gi], a, seg)
            if st:
                state[i] = st
        groups = []
        start = 0
        for g in self.param_groups:
            d = {k: v for k, v in g.items() if k != "params"}
            d["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict from gradfuse or from PyTorch (tensors converted with
        ``.numpy()``, or left as tensors). Everything is checked first; on any error the
        optimizer is left untouched. Under ZeRO-1 each rank takes the full dict and keeps its
        shard of the state (no communication)."""
        sync = self._grad_sync
        if sync is not None and sync.sharded:
            with sync.full_state(load=True):
                return self._load_local_state_dict(state_dict)
        return self._load_local_state_dict(state_dict)

    def _load_local_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or "state" not in state_dict or \
                "param_groups" not in state_dict:
            raise ValueError("state_dict: expected a dict with 'state' and 'param_groups'")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for g, sg in zip(self.param_groups, groups):
            if "params" not in sg or len(sg["params"]) != len(g["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size "
                    "of optimizer's group")
        index = self._param_index()
        id_to_pos = {}
        for sg in groups:
            for pid in sg["params"]:
                id_to_pos[pid] = len(id_to_pos)
        plan = []  # (arena, seg, step, {key: array}, extra)
        for pid, st in state_dict["state"].items():
            if pid not in id_to_pos:
                raise ValueError(f"state_dict: state for unknown parameter id {pid!r}")
            gi, a, seg = index[id_to_pos[pid]]
            group = dict(self.param_groups[gi])
            group.update({k: v for k, v in groups[gi].items() if k != "params"})
            if not isinstance(st, dict):
                raise ValueError(f"state_dict: state of parameter {pid!r} is not a dict")
            keys = self._keys(group)
            extra_keys = self._extra_keys()
            allowed = set(keys) | set(extra_keys) | ({"step"} if self._has_step else set())
            unknown = set(st) - allowed
            if unknown:
                raise ValueError(
                    f"state_dict: parameter {pid!r} has state {sorted(unknown)} that "
                    f"{type(self).__name__} does not use (state of another optimizer?)")
            missing = [k for k in keys + extra_keys if k not in st]
            if self._has_step and "step" not in st:
                missing.insert(0, "step")
            if missing:
                raise ValueError(f"state_dict: parameter {pid!r} is missing state {missing}")
            step = 1
            if self._has_step:
                sv = float(np.asarray(_to_numpy(st["step"])))
                if not (sv >= 0 and sv == int(sv)):
                    raise ValueError(f"state_dict: parameter {pid!r} has step {sv}")
                step = int(sv)
            arrays = {}
            for k in keys:
                arr = np.asarray(_to_numpy(st[k]))
                if arr.dtype.kind not in "fiub":  # checked here: a failed write would come
                    raise ValueError(             # after the state was already reset
                        f"state_dict: state '{k}' of parameter {pid!r} has dtype {arr.dtype}, "
                        "expected a real number array")
                if arr.shape != a.shapes[seg]:
                    raise ValueError(
                        f"state_dict: state '{k}' of parameter {pid!r} has shape {arr.shape}, "
                        f"expected {a.shapes[seg]}")
                arrays[k] = arr
            extra = {k: float(np.asarray(_to_numpy(st[k]))) for k in extra_keys}
            plan.append((a, seg, step, arrays, extra))
        hyper = []
        for g, sg in zip(self.param_groups, groups):
            ng = dict(g)
            ng.update({k: v for k, v in sg.items() if k != "params"})
            self._check_group(ng)
            hyper.append(ng)
        # ---- all checked: write
        for g, ng in zip(self.param_groups, hyper):
            params = g["params"]
            g.clear()
            g.update(ng)
            g["params"] = params
        for arenas in self._arenas:
            for _, a in arenas:
                a.steps[:] = 0
                a.slot_cache = None
                for arr in a.state.values():
                    arr.fill(0)
                for k in list(a.state):
                    del a.state[k]  # re-created (with init values) on demand
                for k in a.extra:
                    a.extra[k][:] = 1.0
        for a, seg, step, arrays, extra in plan:
            o, s = a.offsets[seg], a.sizes[seg]
            a.steps[seg] = step
            for k, arr in arrays.items():
                buf = a.ensure_state(k, 0.0)
                buf[o : o + s] = arr.reshape(-1)
            for k, v in extra.items():
                a.extra[k][seg] = v
        for gi, arenas in enumerate(self._arenas):
            for _, a in arenas:
                # parameters without saved state start fresh: their buffers get init values
                for k in self._keys(self.param_groups[gi]):
                    init = self._state_init(self.param_groups[gi], k)
                    buf = a.ensure_state(k, init)
                    if init:
                        for seg in range(len(a.params)):
                            if a.steps[seg] == 0:
                                o = a.offsets[seg]
                                buf[o : o + a.sizes[seg]] = init
                a.settle()

    def _extra_keys(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        s = type(self).__name__ + " ("
        for i, g in enumerate(self.param_groups):
            s += f"\nParameter Group {i}"
            for k in sorted(g):
                if k != "params":
                    s += f"\n    {k}: {g[k]}"
        return s + "\n)"

    def __getstate__(self) -> Any:
        raise TypeError("gradfuse optimizers are not picklable: save optimizer.state_dict()")


def _to_numpy(x):
    if isinstance(x, Tensor):  # first: a gf Tensor has detach() and numpy() too, not cpu()
        return x.data
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
        return x.detach().cpu().numpy()
    return x

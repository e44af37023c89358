"""Module: the base class of layers, with parameters, buffers, children and state_dict."""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict, namedtuple

import numpy as np

from ..tensor import Tensor, check_device, device_of, to_args, to_device
from .parameter import Parameter

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])

_hook_ids = itertools.count()


def _next_hook_id() -> int:
    return next(_hook_ids)


class RemovableHandle:
    """Returned by :meth:`Module.register_forward_hook`; ``remove()`` unregisters the hook
    (a second call does nothing). Also a context manager that removes on exit."""

    __slots__ = ("_module", "id")

    def __init__(self, module, key: int):
        self._module = weakref.ref(module)
        self.id = key

    def remove(self) -> None:
        m = self._module()
        hooks = None if m is None else m.__dict__.get("_forward_hooks")
        if hooks is None:
            return
        hooks.pop(self.id, None)
        if not hooks:  # back to the hook-free fast path of __call__
            del m.__dict__["_forward_hooks"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class Module:
    """Base class for layers and models, with PyTorch's API.

    Assigning a :class:`Parameter` or a Module to an attribute registers it; ``parameters()``,
    ``state_dict()``, ``train()``/``eval()`` and ``zero_grad()`` then walk the tree.

    Example::

        class MLP(gf.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = gf.nn.Linear(4, 8)
                self.fc2 = gf.nn.Linear(8, 2)

            def forward(self, x):
                return self.fc2(self.fc1(x))
    """

    def __init__(self):
        d = self.__dict__
        d["training"] = True
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent"] = set()
        d["_modules"] = OrderedDict()

    # ------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(
                f"cannot assign {name!r} before Module.__init__() call (call super().__init__())"
            )
        params, bufs, mods = d["_parameters"], d["_buffers"], d["_modules"]
        if isinstance(value, Parameter):
            bufs.pop(name, None)
            mods.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            bufs.pop(name, None)
            mods[name] = value
        elif name in bufs:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(
                    f"cannot assign {type(value).__name__} as buffer {name!r} "
                    "(gf.Tensor or None expected)"
                )
            bufs[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as parameter {name!r} "
                    "(gf.nn.Parameter or None expected)"
                )
            params[name] = None
        elif name in mods:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as child module {name!r} "
                    "(Module or None expected)"
                )
            mods[name] = None
        # Attributes also live in __dict__: forward() reads self.weight at plain-attribute speed.
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for reg in ("_parameters", "_buffers", "_modules"):
            self.__dict__[reg].pop(name, None)
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param) -> None:
        """Register ``param`` (a Parameter or None) under ``name``."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"param: expected a Parameter or None, got {type(param).__name__}")
        if param is None:
            self.__dict__["_parameters"][name] = None
            object.__setattr__(self, name, None)
        else:
            setattr(self, name, param)

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """Register a non-trainable Tensor (e.g. running statistics) saved in state_dict."""
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(np.asarray(tensor))
        self.__dict__["_buffers"][name] = tensor
        if not persistent:
            self.__dict__["_non_persistent"].add(name)
        object.__setattr__(self, name, tensor)

    def add_module(self, name: str, module) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"module: expected a Module, got {type(module).__name__}")
        self.__dict__["_modules"][name] = module
        object.__setattr__(self, name, module)

    # ------------------------------------------------------------ calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        if self._forward_hooks is None:  # the common case costs one attribute read
            return self.forward(*args, **kwargs)
        return self._call_with_hooks(args, kwargs)

    # ------------------------------------------------------------ forward hooks
    # None (the class attribute) until a hook is registered; then a per-instance dict.
    _forward_hooks = None

    def _call_with_hooks(self, args, kwargs):
        output = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            result = hook(self, args, output)
            if result is not None:
                output = result
        return output

    def register_forward_hook(self, hook):
        """Call ``hook(module, inputs, output)`` after every ``forward`` of this module (PyTorch's
        semantics): ``inputs`` is the tuple of positional arguments; a hook that returns a value
        other than None replaces the output. Hooks run in registration order.

        Returns a handle whose ``remove()`` unregisters the hook.

        Example::

            >>> fc = gf.nn.Linear(3, 2)
            >>> seen = []
            >>> h = fc.register_forward_hook(lambda m, inp, out: seen.append(out.shape))
            >>> _ = fc(gf.ones(4, 3)); h.remove(); _ = fc(gf.ones(1, 3))
            >>> seen
            [(4, 2)]
        """
        if not callable(hook):
            raise TypeError(f"hook: expected a callable, got {type(hook).__name__}")
        hooks = self.__dict__.get("_forward_hooks")
        if hooks is None:
            hooks = self.__dict__["_forward_hooks"] = OrderedDict()
        key = _next_hook_id()
        hooks[key] = hook
        return RemovableHandle(self, key)

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = "", memo=None):
        memo = set() if memo is None else memo
        stack = [(prefix, self)]
        while stack:
            name, mod = stack.pop()
            if id(mod) in memo:
                continue
            memo.add(id(mod))
            yield name, mod
            children = [
                (f"{name}.{n}" if name else n, m) for n, m in mod._modules.items() if m is not None
            ]
            stack.extend(reversed(children))

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for n, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield n, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_members(self, registry: str, prefix: str, recurse: bool):
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mname, mod in mods:
            for n, v in mod.__dict__[registry].items():
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                yield (f"{mname}.{n}" if mname else n), v

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """(name, Parameter) pairs, each parameter once even when shared."""
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        """Call ``fn(module)`` on every submodule (children first) and on self; returns self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------ modes
    def train(self, mode: bool = True):
        if not isinstance(mode, bool):
            raise ValueError(f"mode: expected a bool, got {mode!r}")
        for m in self.modules():
            m.__dict__["training"] = mode
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients: drop them (default, as PyTorch) or zero them in place."""
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.data[...] = 0

    def _cast(self, dtype):
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"dtype: modules can only be cast to floating types, got {dtype}")
        for p in self.parameters():
            if p.data.dtype.kind == "f":
                p.data = p.data.astype(dtype)
                if p.grad is not None:
                    p.grad = Tensor(p.grad.data.astype(dtype))
        for b in self.buffers():
            if b.data.dtype.kind == "f":
                b.data = b.data.astype(dtype)
        return self

    def float(self):
        """Cast floating parameters and buffers to float32 (in place; returns self)."""
        return self._cast(np.float32)

    def double(self):
        """Cast floating parameters and buffers to float64 (in place; returns self)."""
        return self._cast(np.float64)

    def to(self, *args, dtype=None, device=None):
        """Cast floating parameters and buffers (``model.to(gf.float64)``) and/or move every
        parameter, gradient and buffer to a device (``model.to("cuda")``), in place; returns
        self. Parameters stay the same Tensor objects (leaves), so an optimizer built before
        the move keeps working, as in PyTorch: each of its flat arenas the model's parameters
        live in moves as whole buffers (parameters, gradients, optimizer state; see
        :meth:`_move`). A dtype cast after the optimizer is built is caught at its next step;
        build the optimizer after casting.

        Example::

            >>> model = gf.nn.Linear(4, 2)
            >>> opt = gf.optim.Adam(model.parameters())
            >>> model.to("cuda") if gf.cuda.is_available() else model  # doctest: +SKIP
        """
        dtype, device = to_args(args, dtype, device)
        if device is not None:
            self._move(check_device(device))
        if dtype is not None:
            self._cast(dtype)
        return self

    def cuda(self):
        """``self.to("cuda")``."""
        return self.to("cuda")

    def cpu(self):
        """``self.to("cpu")``."""
        return self.to("cpu")

    def _move(self, dev):
        """Move parameters, gradients and buffers to ``dev``, all or nothing.

        A parameter in an optimizer's flat arena (its ``_grad_slot`` links the arena) does not
        move alone: the arena moves as a whole (``_Arena.prepare_move`` in
        gradfuse/optim/optimizer.py: one copy each of the parameter, gradient and state
        buffers), so every parameter of that arena must be in this module. Everything else
        moves tensor by tensor. All copies are made first and swapped in only when every one
        of them succeeded: a move that fails (out of device memory, say) changes nothing.
        """
        on_dev = dev.type == "cuda"
        tensors = list({id(t): t for t in itertools.chain(self.parameters(),
                                                           self.buffers())}.values())
        mine = {id(t) for t in tensors}
        arenas = {}
        for t in tensors:
            a = getattr(t._grad_slot, "_gf_arena", None)
            if a is not None and a.device != on_dev:
                arenas[id(a)] = a
        for a in arenas.values():  # checked before anything moves
            if not all(id(q) in mine for q in a.params):
                raise RuntimeError(
                    "to: a parameter of this module shares an optimizer's flat arena (one param "
                    "group and dtype) with parameters outside it, and the arena moves as one "
                    "buffer; move the module that holds all of them, or build the optimizer "
                    "over this module's parameters only")
        in_arena = {}  # id(param) -> (arena view, arena grad tensor) of a moving arena
        for a in arenas.values():
            for p, v, gt in zip(a.params, a.views, a.grad_tensors):
                in_arena[id(p)] = (v, gt)
        commits = [a.prepare_move(on_dev) for a in arenas.values()]
        loose = []  # (tensor, new data or None, new grad or None)
        for t in tensors:
            v, gt = in_arena.get(id(t), (None, None))
            data = None
            if t.data is not v and device_of(t.data) != dev:
                data = to_device(t.data, dev)
            grad = None
            g = t.grad
            if g is not None and g is not gt and device_of(g.data) != dev:
                grad = Tensor(to_device(g.data, dev))
            if data is not None or grad is not None:
                loose.append((t, data, grad))
        # ---- every copy exists: swap in (nothing below can fail)
        for commit in commits:
            commit()
        for t, data, grad in loose:
            if data is not None:
                t.data = data
            if grad is not None:
                t.grad = grad

    # ------------------------------------------------------------ state
    def _state_items(self):
        for mname, mod in self.named_modules():
            pre = f"{mname}." if mname else ""
            for n, p in mod._parameters.items():
                if p is not None:
                    yield pre + n, p
            for n, b in mod._buffers.items():
                if b is not None and n not in mod._non_persistent:
                    yield pre + n, b

    def state_dict(self) -> OrderedDict:
        """Name -> numpy array copy of every parameter and persistent buffer.

        Keys follow PyTorch (``fc1.weight``, ``bn.running_mean``), so a gradfuse state_dict
        loads into the same PyTorch model after ``torch.from_numpy``. The arrays are copies:
        a snapshot that later training steps do not change.
        """
        return OrderedDict((k, t.data.copy()) for k, t in self._state_items())

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays into the parameters and buffers, in place.

        Everything is checked before anything is written: with ``strict`` (default) missing or
        unexpected keys raise, and a shape mismatch always raises (ValueError naming the keys);
        the module is then unchanged. Values may be numpy arrays, Tensors, or anything
        ``np.asarray`` accepts (PyTorch CPU tensors included). Returns (missing, unexpected).
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"state_dict: expected a mapping, got {type(state_dict).__name__}")
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        staged = []
        for k, t in own.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            arr = v.data if isinstance(v, Tensor) else np.asarray(v)
            if arr.shape != t.data.shape:
                problems.append(
                    f"size mismatch for {k}: checkpoint shape {arr.shape}, "
                    f"model shape {t.data.shape}"
                )
                continue
            if not np.can_cast(arr.dtype, t.data.dtype, casting="same_kind"):
                problems.append(
                    f"dtype mismatch for {k}: checkpoint {arr.dtype}, model {t.data.dtype}"
                )
                continue
            staged.append((t, arr))
        if problems:
            raise ValueError(
                f"Error(s) in loading state_dict for {type(self).__name__}: " + "; ".join(problems)
            )
        for t, arr in staged:
            # in place, so views of the data (an optimizer's flat arena) stay valid
            np.copyto(t.data, arr, casting="same_kind")
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ repr
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = []
        extra = self.extra_repr()
        if extra:
            lines.extend(extra.split("\n"))
        for n, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"({n}): {sub}")
        main = type(self).__name__ + "("
        if not lines:
            return main + ")"
        if len(lines) == 1 and not self._modules:
            return main + lines[0] + ")"
        return main + "\n  " + "\n  ".join(lines) + "\n)"

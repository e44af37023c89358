"""Diagnostic callbacks: NonFiniteGuard (NaN/inf loss or gradients) and GradientMonitor
(per-layer gradient norms, update ratios, activation statistics, dead ReLUs).

A *layer* is a module that owns parameters (Linear, a norm layer), named by its qualified name
in ``model.named_modules()`` (``"0"``, ``"encoder.fc1"``; the model itself is ``"model"``).
"""

from __future__ import annotations

import math
import numbers
import sys

import numpy as np

from ..nn.activation import ReLU
from ..random import get_rng_state, set_rng_state
from ..tensor import Tensor, no_grad
from ._device import host
from .callbacks import Callback

__all__ = ["NonFiniteGuard", "GradientMonitor", "layers"]


def layers(model) -> list:
    """``[(name, module, [parameters])]`` of the modules that own parameters, in
    ``named_modules()`` order (forward order for a Sequential)."""
    out = []
    for name, m in model.named_modules():
        ps = [p for p in m._parameters.values() if p is not None]
        if ps:
            out.append((name or "model", m, ps))
    return out


def _finite(a: np.ndarray) -> bool:
    return bool(np.isfinite(a).all())


class NonFiniteGuard(Callback):
    """Watch every step's loss and total gradient norm (already computed by the trainer: no
    extra pass) for NaN/inf. When one is found, skip the update (``action="skip"``) or skip it
    and end the run (``action="stop"``: ``history.diverged`` becomes True), and say where: the
    first layer with a non-finite gradient, or for a non-finite loss the first layer with
    non-finite parameters, else ``"input"`` when the batch holds a NaN/inf, else the first
    module whose output is non-finite (found by running
    the batch's forward once more with hooks, only then; random and running-statistics state
    are put back), else ``"loss_fn"``.

    Args:
        action: ``"skip"`` or ``"stop"``.
        max_skips: with ``"skip"``, end the run (diverged) after this many consecutive skipped
            steps; None never.

    Attributes:
        events: one dict per non-finite step: ``step``, ``epoch``, ``what`` (``"loss"`` or
            ``"grad"``), ``layer`` (a name, see the module docstring), ``message``.

    The message is also printed to stderr unless the trainer's ``verbose`` is 0.

    Example::

        >>> guard = NonFiniteGuard(action="stop")
        >>> Trainer(model, gf.optim.SGD(model.parameters(), lr=1e9), loss_fn,
        ...         callbacks=[guard]).fit(train, epochs=5).diverged
        True
        >>> guard.events[0]["what"], guard.events[0]["layer"]
        ('grad', '0')
    """

    def __init__(self, action: str = "skip", max_skips=None):
        if action not in ("skip", "stop"):
            raise ValueError(f"action: expected 'skip' or 'stop', got {action!r}")
        if max_skips is not None and (isinstance(max_skips, bool) or
                                      not isinstance(max_skips, numbers.Integral) or
                                      max_skips < 1):
            raise ValueError(f"max_skips: expected an int >= 1 or None, got {max_skips!r}")
        self.action = action
        self.max_skips = max_skips
        self.events: list[dict] = []
        self._run = 0
        self._loaded = False

    def on_fit_start(self, trainer) -> None:
        # a new fit counts consecutive skips afresh; a resumed one goes on with the count of
        # the checkpoint (else max_skips would end the resumed run later than the original)
        if not self._loaded:
            self._run = 0
        self._loaded = False

    def on_after_backward(self, trainer, logs: dict) -> None:
        loss_ok = math.isfinite(logs["loss"])
        if loss_ok and math.isfinite(logs["grad_norm"]):
            self._run = 0
            return
        what = "loss" if not loss_ok else "grad"
        model = trainer.model
        layer = self._grad_layer(model) if what == "grad" else self._loss_layer(trainer)
        self._run += 1
        stop = self.action == "stop" or (self.max_skips is not None and
                                         self._run >= self.max_skips)
        msg = (f"NonFiniteGuard: non-finite {what} at step {logs['step']} (epoch "
               f"{logs['epoch']}), layer {layer!r}: "
               + ("update skipped, stopping the run" if stop else "update skipped"))
        self.events.append({"step": logs["step"], "epoch": logs["epoch"], "what": what,
                            "layer": layer, "message": msg})
        trainer.skip_step = True
        if stop:
            trainer.stop_training = True
            trainer.history.diverged = True
        if trainer.verbose and getattr(trainer, "is_main", True):
            print(msg, file=sys.stderr, flush=True)

    @staticmethod
    def _grad_layer(model):
        for name, _, ps in layers(model):
            for p in ps:
                if p.grad is not None and not _finite(host(p.grad)):
                    return name
        return None

    @staticmethod
    def _loss_layer(trainer):
        model = trainer.model
        for name, _, ps in layers(model):
            if not all(_finite(host(p)) for p in ps):
                return name
        if trainer.batch is None:
            return None
        bad_input = not _finite(host(trainer.batch[0]))
        dist = getattr(trainer, "_dist", None)
        if dist is not None:
            # data-parallel: the forward below is collective for SyncBatchNorm, so every rank
            # takes the same branch (a NaN in one rank's batch used to send that rank one way
            # and the others into a forward whose all-reduce never found its partner)
            flag = np.array([1.0 if bad_input else 0.0])
            dist.all_reduce_(flag, op="max")
            bad_input = bool(flag[0])
        if bad_input:
            return "input"
        # Run the forward again with a hook on every module; the first (innermost-first, in
        # call order) non-finite output names the culprit. Dropout's random state and the
        # norm layers' running statistics are restored, so the run continues unchanged.
        found = []

        def hook(m, inputs, out):
            if not found and isinstance(out, Tensor) and not _finite(host(out)):
                found.append(names[id(m)])

        names = {id(m): (n or "model") for n, m in model.named_modules()}
        handles = [m.register_forward_hook(hook) for m in model.modules()]
        rng = get_rng_state()
        buffers = [(b, b.data.copy()) for b in model.buffers()]  # (device arrays copy too)
        try:
            with no_grad():
                model(trainer.batch[0])
        finally:
            for h in handles:
                h.remove()
            set_rng_state(rng)
            for b, saved in buffers:
                np.copyto(b.data, saved)
        return found[0] if found else "loss_fn"

    def state_dict(self) -> dict:
        return {"run": self._run}

    def load_state_dict(self, state: dict) -> None:
        self._run = int(state.get("run", 0))
        self._loaded = True


class GradientMonitor(Callback):
    """Per-layer training diagnostics every ``every`` steps (steps 1, 1 + every, ...).

    For each layer (module owning parameters): the 2-norm of its parameters' gradients, the
    update-to-weight ratio ``||W_after - W_before|| / ||W_before||`` over its parameters (0
    when the step was skipped), the mean and std of its output, and, when a ReLU module runs
    after it (before the next layer), the fraction of that ReLU's units that are 0 for every
    sample of the batch ("dead"; None otherwise). A gradient norm below ``vanishing`` or above
    ``exploding`` (or NaN) is flagged (not "vanishing" for a frozen layer, whose parameters
    all have ``requires_grad=False``). The per-layer work (a Python loop over parameters, a
    copy of the weights for the update ratio, forward hooks) is done only on monitored steps.

    Args:
        every: monitor one step in this many (>= 1).
        vanishing: flag a layer whose gradient norm is below this (>= 0).
        exploding: flag a layer whose gradient norm is above this (> vanishing).

    Attributes:
        records: dicts ``{step, epoch, layer, grad_norm, update_ratio, act_mean, act_std,
            dead_frac}``.
        flags: dicts ``{step, layer, kind ("vanishing" or "exploding"), value}``.

    Example::

        >>> mon = GradientMonitor(every=10)
        >>> Trainer(model, opt, loss_fn, callbacks=[mon]).fit(train, epochs=1)
        >>> {f["layer"] for f in mon.flags if f["kind"] == "vanishing"}
        {'0', '2'}
    """

    def __init__(self, every: int = 1, vanishing: float = 1e-6, exploding: float = 1e3):
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"every: expected an int >= 1, got {every!r}")
        for name, v in (("vanishing", vanishing), ("exploding", exploding)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v) or v < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
        if not exploding > vanishing:
            raise ValueError(
                f"exploding: expected a threshold above vanishing ({vanishing}), got "
                f"{exploding}")
        self.every = int(every)
        self.vanishing = float(vanishing)
        self.exploding = float(exploding)
        self.records: list[dict] = []
        self.flags: list[dict] = []
        self._handles = []
        self._active = False

    # forward hooks: statistics of each layer's output, dead units of the ReLU after it
    def _layer_hook(self, name):
        def hook(m, inputs, out):
            if self._active and isinstance(out, Tensor):
                a = host(out)
                self._act[name] = (float(a.mean()), float(a.std())) if a.size else (0.0, 0.0)
                self._last = name
        return hook

    def _relu_hook(self, m, inputs, out):
        if self._active and self._last is not None and isinstance(out, Tensor):
            a = host(out)
            if a.ndim >= 1 and a.shape[0] > 0:
                units = a.reshape(a.shape[0], -1)
                self._dead[self._last] = float((units == 0).all(axis=0).mean())
            self._last = None  # one ReLU per layer: the first after it

    def on_fit_start(self, trainer) -> None:
        self._layers = layers(trainer.model)
        for name, m, _ in self._layers:
            self._handles.append(m.register_forward_hook(self._layer_hook(name)))
        for m in trainer.model.modules():
            if isinstance(m, ReLU):
                self._handles.append(m.register_forward_hook(self._relu_hook))

    def on_batch_start(self, trainer, step: int) -> None:
        self._active = (step - 1) % self.every == 0
        if self._active:
            self._act, self._dead, self._last = {}, {}, None

    def on_after_backward(self, trainer, logs: dict) -> None:
        if not self._active:
            return
        self._grads = {}
        self._before = {}
        for name, _, ps in self._layers:
            sq = 0.0
            for p in ps:
                if p.grad is not None:
                    g = host(p.grad)
                    sq += float(np.vdot(g, g).real) if g.size else 0.0
            self._grads[name] = math.sqrt(sq)
            self._before[name] = [host(p).copy() for p in ps]

    def on_batch_end(self, trainer, logs: dict) -> None:
        if not self._active:
            return
        self._active = False
        step, epoch = logs["step"], logs["epoch"]
        for name, _, ps in self._layers:
            before = self._before[name]
            w2 = sum(float(np.vdot(b, b)) for b in before)
            d2 = 0.0 if logs["skipped"] else sum(
                float(np.vdot(host(p) - b, host(p) - b)) for p, b in zip(ps, before))
            ratio = math.sqrt(d2) / math.sqrt(w2) if w2 > 0 else (0.0 if d2 == 0 else math.inf)
            gnorm = self._grads[name]
            mean, std = self._act.get(name, (None, None))
            self.records.append({"step": step, "epoch": epoch, "layer": name, "grad_norm": gnorm,
                                 "update_ratio": ratio, "act_mean": mean, "act_std": std,
                                 "dead_frac": self._dead.get(name)})
            if gnorm < self.vanishing:
                if not any(p.requires_grad for p in ps):
                    continue  # frozen: no gradient is expected, none is not "vanishing"
                self.flags.append({"step": step, "layer": name, "kind": "vanishing",
                                   "value": gnorm})
            elif not gnorm <= self.exploding:  # NaN counts as exploded
                self.flags.append({"step": step, "layer": name, "kind": "exploding",
                                   "value": gnorm})
        self._before = self._grads = None

    def on_fit_end(self, trainer) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._active = False

    def summary(self) -> dict:
        """Per layer: the mean gradient norm and update ratio over the records, and how many
        times it was flagged vanishing / exploding."""
        out: dict[str, dict] = {}
        for r in self.records:
            s = out.setdefault(r["layer"], {"grad_norm": 0.0, "update_ratio": 0.0, "n": 0,
                                            "vanishing": 0, "exploding": 0})
            s["grad_norm"] += r["grad_norm"]
            s["update_ratio"] += r["update_ratio"]
            s["n"] += 1
        for f in self.flags:
            out[f["layer"]][f["kind"]] += 1
        for s in out.values():
            s["grad_norm"] /= s["n"]
            s["update_ratio"] /= s["n"]
        return out

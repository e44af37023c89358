"""Build the model, optimizer and lr schedule of a :class:`~gradfuse.study.RunConfig`.

Example::

    >>> from gradfuse.study import RunConfig, build_model, build_optimizer, build_scheduler
    >>> cfg = RunConfig(optimizer="momentum", init="he", norm="batch", activation="relu",
    ...                 schedule="cosine", lr=0.01)
    >>> model = build_model(cfg, n_in=64, hidden=(128, 64), n_out=10, seed=0)
    >>> opt = build_optimizer(cfg, model.parameters())
    >>> sched = build_scheduler(cfg, opt, epochs=20, steps_per_epoch=23)   # stepped per batch
"""

from __future__ import annotations

import math

import gradfuse as gf

from .config import OPTIMIZERS, RunConfig, init_spec

__all__ = ["build_model", "build_optimizer", "build_scheduler", "linear_layer_names"]

_ACTIVATIONS = {
    "relu": gf.nn.ReLU, "leaky_relu": gf.nn.LeakyReLU, "tanh": gf.nn.Tanh,
    "sigmoid": gf.nn.Sigmoid, "elu": gf.nn.ELU, "gelu": gf.nn.GELU, "silu": gf.nn.SiLU,
    "softplus": gf.nn.Softplus,
}
_NORMS = {"none": None, "batch": gf.nn.BatchNorm1d, "layer": gf.nn.LayerNorm,
          "rms": gf.nn.RMSNorm}


def build_model(cfg: RunConfig, n_in: int, hidden=(128, 64), n_out: int = 10, seed: int = 0,
                dropout: float = 0.0):
    """An MLP ``n_in -> hidden... -> n_out``: ``[Linear, norm, activation(, Dropout)]`` per hidden
    layer, then a Linear; every Linear weight drawn by ``cfg.init`` (biases zero) from a
    generator seeded with ``seed``, so the same seed gives the same weights for every config.

    Shapes: input (batch, n_in) -> logits (batch, n_out).

    Example::

        >>> cfg = RunConfig(init="he", norm="layer", activation="tanh")
        >>> model = build_model(cfg, 64, (32,), 10)
        >>> [type(m).__name__ for m in model]
        ['Linear', 'LayerNorm', 'Tanh', 'Linear']
    """
    scheme, kwargs = init_spec(cfg.init)
    init = gf.nn.init.get(scheme, **kwargs)
    gen = gf.Generator(seed)
    gf.manual_seed(seed)  # dropout masks
    layers, width = [], n_in
    for h in hidden:
        layers.append(_linear(width, h, init, gen))
        if _NORMS[cfg.norm] is not None:
            layers.append(_NORMS[cfg.norm](h))
        layers.append(_ACTIVATIONS[cfg.activation]())
        if dropout:
            layers.append(gf.nn.Dropout(dropout))
        width = h
    layers.append(_linear(width, n_out, init, gen))
    return gf.nn.Sequential(*layers)


def _linear(n_in, n_out, init, gen):
    fc = gf.nn.Linear(n_in, n_out, init=init)
    fc.reset_parameters(generator=gen)  # this run's own stream, not the global generator's
    return fc


def linear_layer_names(model) -> list:
    """Names of the Linear modules of ``model`` in order.

    Example::

        >>> linear_layer_names(build_model(RunConfig(norm="batch"), 64, (32,), 10))
        ['0', '3']
    """
    return [name for name, m in model.named_modules() if isinstance(m, gf.nn.Linear)]


def build_optimizer(cfg: RunConfig, params):
    """The ``gf.optim`` optimizer named by ``cfg.optimizer`` with lr ``cfg.lr``.

    Example::

        >>> opt = build_optimizer(RunConfig(optimizer="nesterov", lr=0.01), model.parameters())
        >>> type(opt).__name__, opt.param_groups[0]["nesterov"]
        ('SGD', True)
    """
    cls_name, kwargs, _ = OPTIMIZERS[cfg.optimizer]
    return getattr(gf.optim, cls_name)(params, lr=cfg.lr, **kwargs)


def build_scheduler(cfg: RunConfig, optimizer, epochs: int, steps_per_epoch: int):
    """The lr schedule of ``cfg.schedule``, to be stepped once per batch (None for "none").

    Example::

        >>> sched = build_scheduler(RunConfig(schedule="onecycle", lr=0.1), opt, 20, 23)
        >>> type(sched).__name__
        'OneCycleLR'
    """
    total = epochs * steps_per_epoch
    sched = gf.optim.lr_scheduler
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.schedule == "step":
        return sched.MultiStepLR(optimizer, milestones=[total // 2, (3 * total) // 4], gamma=0.1)
    if cfg.schedule == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                cycle_momentum=_has_momentum(optimizer))
    if cfg.schedule == "warmup":
        warm = max(1, min(steps_per_epoch, total - 1))

        def factor(step):  # linear warm-up from lr/warm, then cosine decay to 0
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        return sched.LambdaLR(optimizer, factor)
    raise ValueError(f"schedule: unknown lr schedule {cfg.schedule!r}")


def _has_momentum(optimizer) -> bool:
    group = optimizer.param_groups[0]
    return "betas" in group or group.get("momentum", 0) > 0

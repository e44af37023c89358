"""What a study run is made of: the names the CLI accepts and the grid they expand into.

A *configuration* is one choice per axis (optimizer, init, norm, activation, lr schedule, lr);
a *run* is a configuration trained from one seed. :func:`expand_grid` turns comma-separated
choices into the list of configurations, in the order the axes are given, and
:func:`check_choices` rejects an unknown name with the flag that carried it, before anything
is trained.

Example::

    >>> from gradfuse.study import expand_grid
    >>> grid = expand_grid(optimizers=["sgd", "adam"], inits=["he"], norms=["none", "batch"])
    >>> [c.key for c in grid]
    ['sgd/he/none/relu/none/lr=0.1', 'sgd/he/batch/relu/none/lr=0.1',
     'adam/he/none/relu/none/lr=0.001', 'adam/he/batch/relu/none/lr=0.001']
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

__all__ = [
    "AXES",
    "OPTIMIZERS",
    "INITS",
    "NORMS",
    "ACTIVATIONS",
    "SCHEDULES",
    "RunConfig",
    "expand_grid",
    "check_choices",
    "default_lr",
    "init_spec",
]

# optimizer name -> (gf.optim class name, constructor kwargs, default lr). The default lrs are
# the usual starting points for a small MLP on standardized inputs (batch 64): plain SGD needs
# a large step, momentum methods a smaller one (the velocity multiplies it by ~1/(1-0.9)),
# adaptive methods ~1e-3 because they divide by the gradient's RMS.
OPTIMIZERS = {
    "sgd": ("SGD", {}, 0.1),
    "momentum": ("SGD", {"momentum": 0.9}, 0.01),
    "nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}, 0.01),
    "rmsprop": ("RMSprop", {}, 1e-3),
    "adagrad": ("Adagrad", {}, 0.03),
    "adam": ("Adam", {}, 1e-3),
    "adamw": ("AdamW", {"weight_decay": 1e-2}, 1e-3),
    "nadam": ("NAdam", {}, 2e-3),
    "radam": ("RAdam", {}, 1e-3),
    "lion": ("Lion", {}, 3e-4),
    "lamb": ("LAMB", {}, 1e-2),
}

# init name -> (gf.nn.init scheme, keyword arguments). "normal" is N(0, 1) whatever the fan:
# the classic bad initialization (its activations grow by ~sqrt(fan_in) per layer), and
# "small" is N(0, 0.01^2), whose signal and gradients shrink by the same factor per layer.
# Any other gf.nn.init name is accepted too (see init_spec).
INITS = {
    "xavier": ("xavier_uniform", {}),
    "he": ("he_normal", {}),
    "lecun": ("lecun_normal", {}),
    "orthogonal": ("orthogonal", {}),
    "normal": ("normal", {"std": 1.0}),
    "small": ("normal", {"std": 0.01}),
    "default": ("default", {}),
}

NORMS = ("none", "batch", "layer", "rms")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "elu", "gelu", "silu", "softplus")
# none: constant lr; cosine: cosine decay to 0 over the run (per step); step: x0.1 at 1/2 and
# 3/4 of the epochs; onecycle: the 1cycle policy with max_lr = lr (per step); warmup: linear
# warm-up over the first epoch, then cosine decay (per step)
SCHEDULES = ("none", "cosine", "step", "onecycle", "warmup")

AXES = ("optimizer", "init", "norm", "activation", "schedule", "lr")


def default_lr(optimizer: str) -> float:
    """The lr a configuration uses for ``optimizer`` when none is given.

    Example::

        >>> default_lr("momentum")
        0.01
    """
    return OPTIMIZERS[optimizer][2]


def init_spec(name: str) -> tuple:
    """``(gf.nn.init scheme name, kwargs)`` for an ``--init`` value (study alias or gf name).

    Example::

        >>> init_spec("normal"), init_spec("orthogonal"), init_spec("kaiming_uniform")
        (('normal', {'std': 1.0}), ('orthogonal', {}), ('kaiming_uniform', {}))
    """
    if name in INITS:
        return INITS[name]
    return name, {}


@dataclass(frozen=True)
class RunConfig:
    """One point of the grid: the techniques a model is trained with (not the seed)."""

    optimizer: str = "adam"
    init: str = "he"
    norm: str = "none"
    activation: str = "relu"
    schedule: str = "none"
    lr: float = 1e-3

    @property
    def key(self) -> str:
        """A readable unique name, e.g. ``adam/he/batch/relu/cosine/lr=0.001``."""
        return (f"{self.optimizer}/{self.init}/{self.norm}/{self.activation}/{self.schedule}/"
                f"lr={self.lr:g}")

    def as_dict(self) -> dict:
        return asdict(self)


def expand_grid(optimizers=("adam",), inits=("he",), norms=("none",), activations=("relu",),
                schedules=("none",), lrs=None) -> list:
    """Every combination of the given choices as :class:`RunConfig` s (optimizer outermost).

    ``lrs``: ``None`` (each optimizer's :func:`default_lr`) or a list of learning rates, which
    becomes one more axis. Names must already be valid (see :func:`check_choices`).

    Example::

        >>> len(expand_grid(["sgd", "adam"], ["he", "xavier"], lrs=[0.1, 0.01]))
        8
    """
    out = []
    for opt, init, norm, act, sched in itertools.product(optimizers, inits, norms, activations,
                                                         schedules):
        for lr in (lrs if lrs else [default_lr(opt)]):
            out.append(RunConfig(opt, init, norm, act, sched, float(lr)))
    return out


def check_choices(flag: str, values, known) -> list:
    """``values`` as a list of names if each is one of ``known``; else ``ValueError`` naming
    ``flag``, the bad value and the choices. Empty lists and duplicates are refused too.

    Example::

        >>> check_choices("--norm", ["batch"], NORMS)
        ['batch']
        >>> check_choices("--norm", ["bacth"], NORMS)
        ValueError: --norm: unknown value 'bacth'; choose from none, batch, layer, rms
    """
    values = list(values)
    if not values:
        raise ValueError(f"{flag}: expected at least one value")
    for v in values:
        if v not in known:
            raise ValueError(f"{flag}: unknown value {v!r}; choose from {', '.join(known)}")
    dup = sorted({v for v in values if values.count(v) > 1})
    if dup:
        raise ValueError(f"{flag}: {', '.join(dup)} given twice")
    return values

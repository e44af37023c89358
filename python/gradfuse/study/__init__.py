"""The optimization study (``gradfuse compare`` / ``gradfuse train``) as a library.

Expand a grid of techniques (optimizer x init x norm x activation x lr schedule [x lr]),
train every configuration from several seeds with ``gf.train.Trainer`` (a
``GradientMonitor`` records the per-layer gradient norms, a ``NonFiniteGuard`` stops a
diverging run), aggregate over the seeds, rank, and write the table, CSV/JSON and plots.

Example::

    >>> from gradfuse import study
    >>> data = study.load_dataset("digits", train_size=300)
    >>> grid = study.expand_grid(optimizers=["sgd", "adam"], inits=["he", "normal"])
    >>> results = study.run_grid(grid, data, seeds=[0, 1], epochs=3, log=lambda s: None)
    >>> rows = study.rank(study.aggregate(results))
    >>> print(study.format_table(rows))
"""

from .config import (
    ACTIVATIONS,
    AXES,
    INITS,
    NORMS,
    OPTIMIZERS,
    SCHEDULES,
    RunConfig,
    check_choices,
    default_lr,
    expand_grid,
    init_spec,
)
from .datasets import DATASETS, Dataset, load_dataset
from .models import build_model, build_optimizer, build_scheduler
from .report import (
    aggregate,
    effects,
    format_effects,
    format_table,
    rank,
    varying_axes,
    write_json,
    write_results_csv,
    write_runs_csv,
)
from .runner import make_loaders, run_grid, run_one

__all__ = [
    "ACTIVATIONS", "AXES", "INITS", "NORMS", "OPTIMIZERS", "SCHEDULES", "DATASETS",
    "RunConfig", "check_choices", "default_lr", "expand_grid", "init_spec",
    "Dataset", "load_dataset",
    "build_model", "build_optimizer", "build_scheduler",
    "aggregate", "effects", "format_effects", "rank", "format_table", "varying_axes",
    "write_json", "write_results_csv", "write_runs_csv",
    "make_loaders", "run_grid", "run_one",
]

"""Aggregate runs over seeds, rank the configurations, and write the table, CSV and JSON.

Ranking (best first): configurations none of whose seeds diverged come first, ordered by
mean final validation accuracy (higher first), then by mean epochs to reach the threshold
(fewer first; a configuration that never reached it counts as slower than any that did), then
by mean final validation loss. Configurations with diverged runs come last, the fewest
divergences first, then by the same keys over their finite runs.

Example::

    >>> rows = rank(aggregate(results))          # results: a list of run_one() dicts
    >>> print(format_table(rows, threshold=0.9))
    >>> write_results_csv(rows, "results/results.csv")
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile

import numpy as np

from .config import AXES

__all__ = [
    "aggregate",
    "rank",
    "format_table",
    "write_results_csv",
    "write_runs_csv",
    "write_json",
    "varying_axes",
    "effects",
    "format_effects",
]


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _mean_std(values):
    """Mean and population std of the finite values; the std is None for fewer than two
    (the spread of one seed is unknown, not 0)."""
    v = [x for x in values if _finite(x)]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v)) if len(v) > 1 else None)


def aggregate(results) -> list:
    """One row per configuration (in first-seen order) from the per-run result dicts:
    ``key``, the axes, ``n_runs``, ``seeds``, ``val_acc_mean``/``val_acc_std`` (over the runs
    with a finite accuracy; the std is None when fewer than two have one),
    ``epochs_to_threshold_mean`` (over the runs that reached it) and ``n_reached``,
    ``val_loss_mean``, ``train_loss_mean``, ``n_diverged``, ``wall_time_mean``,
    and ``val_acc_curve`` / ``train_loss_curve`` / ``val_loss_curve`` (per-epoch means over
    the runs that got that far).

    Example::

        >>> rows = aggregate(run_grid(grid, data, seeds=[0, 1, 2]))
        >>> rows[0]["val_acc_mean"], rows[0]["val_acc_std"], rows[0]["n_diverged"]
    """
    groups = {}
    for r in results:
        groups.setdefault(r["key"], []).append(r)
    rows = []
    for key, runs in groups.items():
        acc_m, acc_s = _mean_std([r["final_val_acc"] for r in runs])
        reached = [r["epochs_to_threshold"] for r in runs if r["epochs_to_threshold"] is not None]
        row = {"key": key, **runs[0]["config"], "n_runs": len(runs),
               "seeds": [r["seed"] for r in runs],
               "val_acc_mean": acc_m, "val_acc_std": acc_s,
               "epochs_to_threshold_mean": float(np.mean(reached)) if reached else None,
               "n_reached": len(reached),
               "val_loss_mean": _mean_std([r["final_val_loss"] for r in runs])[0],
               "train_loss_mean": _mean_std([r["final_train_loss"] for r in runs])[0],
               "n_diverged": sum(bool(r["diverged"]) for r in runs),
               "wall_time_mean": float(np.mean([r["wall_time"] for r in runs]))}
        for name in ("val_acc", "train_loss", "val_loss"):
            row[f"{name}_curve"] = _curve(runs, name)
        rows.append(row)
    return rows


def _curve(runs, name):
    n = max((len(r["history"]) for r in runs), default=0)
    out = []
    for i in range(n):
        vals = [r["history"][i][name] for r in runs if i < len(r["history"])]
        m, _ = _mean_std(vals)
        out.append(m)
    return out


def _sort_key(row):
    acc = row["val_acc_mean"]
    ett = row["epochs_to_threshold_mean"]
    loss = row["val_loss_mean"]
    return (row["n_diverged"] > 0, row["n_diverged"],
            -(acc if acc is not None else -1.0),
            ett if ett is not None else math.inf,
            loss if loss is not None else math.inf)


def rank(rows) -> list:
    """``rows`` sorted best first (see the module docstring), each given its 1-based ``rank``.

    Example::

        >>> [r["key"] for r in rank(aggregate(results))][:3]   # the three best configurations
    """
    out = sorted(rows, key=_sort_key)
    for i, row in enumerate(out, 1):
        row["rank"] = i
    return out


def varying_axes(rows) -> list:
    """The axes (of :data:`AXES`) on which the rows differ, in AXES order. The lr counts only
    when it varies for one optimizer (not when each optimizer just has its default)."""
    out = [a for a in AXES if a != "lr" and len({r[a] for r in rows}) > 1]
    by_opt = {}
    for r in rows:
        by_opt.setdefault(r["optimizer"], set()).add(r["lr"])
    if any(len(v) > 1 for v in by_opt.values()):
        out.append("lr")
    return out


def _fmt(x, spec, none="-"):
    return none if x is None else format(x, spec)


def format_table(rows, threshold: float = 0.9, top=None, axes=None) -> str:
    """The ranked rows as an aligned plain-text table.

    Columns: rank, the axes (all of them unless ``axes`` is given), final validation accuracy
    mean +- std over seeds, mean epochs to reach ``threshold`` (with how many seeds did),
    final validation loss, diverged runs, mean wall time per run. ``top``: only the first
    ``top`` rows, then a ``...`` line and the last three (all rows when that leaves none out).
    """
    axes = list(AXES) if axes is None else list(axes)
    head = ["#", *axes, "val acc", f"ep>={threshold:g}", "val loss", "diverged", "time/run"]
    body = []
    for r in rows:
        acc = _fmt(r["val_acc_mean"], ".3f")
        if r["val_acc_std"] is not None:
            acc += f" +- {r['val_acc_std']:.3f}"
        ett = _fmt(r["epochs_to_threshold_mean"], ".1f")
        if r["n_reached"] < r["n_runs"]:
            ett = f"{ett} ({r['n_reached']}/{r['n_runs']})"
        body.append([str(r["rank"]), *(f"{r[a]:g}" if a == "lr" else str(r[a]) for a in axes),
                     acc, ett, _fmt(r["val_loss_mean"], ".3f", "nan"),
                     f"{r['n_diverged']}/{r['n_runs']}", f"{r['wall_time_mean']:.2f} s"])
    shown = body
    if top is not None and len(body) > top + 3:
        shown = body[:top] + [["..."] + [""] * (len(head) - 1)] + body[-3:]
    widths = [max(len(row[i]) for row in [head] + shown) for i in range(len(head))]
    right = {0, len(head) - 1, len(head) - 2, len(head) - 3, len(head) - 4}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *(line(r) for r in shown)])


def _atomic_write(path, write):
    """Write through a temporary file in the same folder and rename: no half-written file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a plain open() would not
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


_RESULT_COLS = ["rank", "key", *AXES, "n_runs", "val_acc_mean", "val_acc_std",
                "epochs_to_threshold_mean", "n_reached", "val_loss_mean", "train_loss_mean",
                "n_diverged", "wall_time_mean"]


def write_results_csv(rows, path) -> None:
    """One line per configuration, ranked (the table's numbers at full precision)."""
    def write(f):
        w = csv.writer(f)
        w.writerow(_RESULT_COLS)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in _RESULT_COLS])

    _atomic_write(path, write)


_RUN_COLS = ["key", *AXES, "seed", "final_val_acc", "final_val_loss", "final_train_loss",
             "best_val_acc", "epochs_to_threshold", "diverged", "stopped_epoch", "wall_time",
             "vanishing_flags", "exploding_flags", "val_acc_history", "train_loss_history"]


def write_runs_csv(results, path) -> None:
    """One line per run; the per-epoch validation accuracy and train loss as ``;``-separated
    lists (runs.json has the whole history and the gradient norms)."""
    def write(f):
        w = csv.writer(f)
        w.writerow(_RUN_COLS)
        for r in results:
            hist = r["history"]
            w.writerow([r["key"], *(r["config"][a] for a in AXES), r["seed"],
                        *("" if r[c] is None else r[c] for c in _RUN_COLS[8:16]),
                        r["grad_flags"]["vanishing"], r["grad_flags"]["exploding"],
                        ";".join(f"{h['val_acc']:.4f}" for h in hist if h["val_acc"] is not None),
                        ";".join(f"{h['train_loss']:.5g}" for h in hist
                                 if h["train_loss"] is not None)])

    _atomic_write(path, write)


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


def write_json(obj, path) -> None:
    """``obj`` as JSON (NaN as null, infinities as "inf"/"-inf": strict JSON)."""
    _atomic_write(path, lambda f: json.dump(_json_safe(obj), f, indent=1, allow_nan=False))


def effects(rows) -> dict:
    """``{axis: [(value, mean final val acc, mean epochs to threshold, diverged runs), ...]}``
    for each varying axis: every value averaged over the rest of the grid (its main effect),
    best value first."""
    out = {}
    for axis in varying_axes(rows):
        items = []
        for value in dict.fromkeys(r[axis] for r in rows):
            mine = [r for r in rows if r[axis] == value]
            acc, _ = _mean_std([r["val_acc_mean"] for r in mine])
            ett = [r["epochs_to_threshold_mean"] for r in mine
                   if r["epochs_to_threshold_mean"] is not None]
            items.append((value, acc, float(np.mean(ett)) if ett else None,
                          sum(r["n_diverged"] for r in mine)))
        out[axis] = sorted(items, key=lambda t: -(t[1] if t[1] is not None else -1.0))
    return out


def format_effects(rows, threshold: float = 0.9) -> str:
    """:func:`effects` as text, one line per axis::

        init        he 0.975 (3.1 ep) | xavier 0.969 (4.0 ep) | normal 0.902 (11.2 ep)
    """
    eff = effects(rows)
    if not eff:
        return ""
    width = max(len(a) for a in eff)
    lines = [f"Main effects (mean final val acc over the rest of the grid; mean epochs to "
             f">= {threshold:g}; diverged runs):"]
    for axis, items in eff.items():
        parts = []
        for value, acc, ett, div in items:
            v = f"{value:g}" if axis == "lr" else str(value)
            s = f"{v} {_fmt(acc, '.3f')} ({_fmt(ett, '.1f')} ep)"
            if div:
                s += f" {div} diverged"
            parts.append(s)
        lines.append(f"  {axis:<{width}s}  " + " | ".join(parts))
    return "\n".join(lines)

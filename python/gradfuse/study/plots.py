"""The study's PNG figures (matplotlib, the optional ``plots`` extra, Agg backend).

* ``loss_curves.png``: training loss per epoch, one panel per optimizer, one line per
  configuration (mean over seeds), the panel's best configuration drawn bold; log scale.
* ``accuracy.png``: validation accuracy per epoch; one panel per varying axis (optimizer,
  init, norm, ...), one line per value of that axis averaged over everything else (the main
  effect of each choice; a configuration that diverged leaves the mean after its last epoch),
  plus a panel with the three best and the worst configurations.
* ``grad_norms.png``: per-layer gradient norms (each Linear layer's weight and bias) over the
  training steps (log scale) for a few contrasting configurations (best, most vanishing,
  largest gradients, worst, or the one-choice fix of a bad one; first seed): the
  vanishing/exploding picture.

Example::

    >>> from gradfuse.study import plots
    >>> written = plots.write_all(rows, results, "results/")   # [] when matplotlib is missing
"""

from __future__ import annotations

import math
import os

import numpy as np

from .report import varying_axes

__all__ = ["available", "write_all", "loss_curves", "accuracy", "grad_norms", "FILES"]

FILES = ("loss_curves.png", "accuracy.png", "grad_norms.png")  # what write_all may write


def available():
    """``(True, "")`` when matplotlib imports, else ``(False, why)``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError as e:
        return False, (f"matplotlib is not installed ({e}); pip install 'gradfuse[plots]'")
    return True, ""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n):
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _save(fig, path):
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp-" + os.path.basename(path))
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)


def _xs(curve):
    return np.arange(1, len(curve) + 1)


def _arr(curve):
    return np.array([np.nan if v is None else v for v in curve], dtype=float)


def _short(row, axes):
    return "/".join(f"{row[a]:g}" if a == "lr" else str(row[a]) for a in axes) or row["key"]


def loss_curves(rows, path) -> None:
    """Training loss per epoch, one panel per optimizer (see the module docstring)."""
    plt = _plt()
    axes_named = [a for a in varying_axes(rows) if a != "optimizer"]
    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    nr, nc = _grid(len(optimizers))
    fig, axs = plt.subplots(nr, nc, figsize=(5 * nc, 3.6 * nr), squeeze=False, sharey=True)
    for ax, opt in zip(axs.flat, optimizers):
        mine = [r for r in rows if r["optimizer"] == opt]  # rows are ranked: mine[0] is best
        for r in mine[1:]:
            ax.plot(_xs(r["train_loss_curve"]), _arr(r["train_loss_curve"]), lw=0.8, alpha=0.45)
        best = mine[0]
        ax.plot(_xs(best["train_loss_curve"]), _arr(best["train_loss_curve"]), lw=2.4,
                color="black", label=f"best: {_short(best, axes_named)}")
        ax.set_yscale("log")
        ax.set_title(f"{opt} ({len(mine)} configs)")
        _int_epochs(ax)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    for ax in list(axs.flat)[len(optimizers):]:
        ax.axis("off")
    axs[0, 0].set_ylabel("train loss (mean over seeds)")
    fig.suptitle("Training loss per optimizer: each line a configuration, bold the best")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def accuracy(rows, path, threshold=None) -> None:
    """Validation accuracy per epoch: main effect of each varying axis, and best/worst."""
    plt = _plt()
    axes = varying_axes(rows)
    n = len(axes) + 1
    nr, nc = _grid(n)
    fig, axs = plt.subplots(nr, nc, figsize=(5 * nc, 3.6 * nr), squeeze=False, sharey=True)
    flat = list(axs.flat)
    for ax, axis in zip(flat, axes):
        for value in dict.fromkeys(r[axis] for r in rows):
            curves = [_arr(r["val_acc_curve"]) for r in rows if r[axis] == value]
            m = max(len(c) for c in curves)
            stack = np.full((len(curves), m), np.nan)
            for i, c in enumerate(curves):
                stack[i, : len(c)] = c
            with np.errstate(all="ignore"):
                mean = np.nanmean(np.where(np.isfinite(stack), stack, np.nan), axis=0)
            label = f"{value:g}" if axis == "lr" else str(value)
            ax.plot(np.arange(1, m + 1), mean, lw=1.8, label=label)
        ax.set_title(f"by {axis} (mean over the other axes)")
        _acc_axes(ax, threshold)
    ax = flat[len(axes)]
    named = axes or ["optimizer"]
    picks = rows[:3] + ([rows[-1]] if len(rows) > 3 else [])
    for r in picks:
        curve = r["val_acc_curve"]
        tag = f", {r['n_diverged']}/{r['n_runs']} diverged" if r["n_diverged"] else ""
        ax.plot(_xs(curve), _arr(curve), lw=1.8, marker="o" if len(curve) < 3 else None,
                label=f"#{r['rank']} {_short(r, named)}{tag}")
    ax.set_title("best three and worst configurations")
    _acc_axes(ax, threshold)
    for ax in flat[n:]:
        ax.axis("off")
    flat[0].set_ylabel("validation accuracy")
    fig.suptitle("Validation accuracy per epoch")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _int_epochs(ax):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _acc_axes(ax, threshold):
    _int_epochs(ax)
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls=":", lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)


def _norms(series) -> np.ndarray:
    """The norms of a ``[[step, norm], ...]`` series as floats (None, as JSON has NaN, -> nan)."""
    return np.array([np.nan if v is None else v for _, v in series], dtype=float)


def _depth_ratio(run):
    """log10 of (first layer's / last layer's) median grad norm: < 0 when gradients shrink on
    the way back to the input (vanishing), > 0 when they grow."""
    series = list(run["grad_norms"].values())
    if len(series) < 2 or not series[0] or not series[-1]:
        return 0.0
    # finite norms only: a diverging run records inf before the guard stops it (inf / inf)
    first, last = _norms(series[0]), _norms(series[-1])
    first, last = first[np.isfinite(first)], last[np.isfinite(last)]
    if not (first.size and last.size):
        return 0.0
    first, last = np.median(first), np.median(last)
    if not (first > 0 and last > 0):
        return 0.0
    return float(np.log10(first / last))


def _peak(run):
    vals = np.concatenate([_norms(s) for s in run["grad_norms"].values()] or [np.zeros(0)])
    vals = vals[np.isfinite(vals)]
    return float(vals.max()) if vals.size else 0.0


def _differs_in_one(a, b):
    diff = [k for k in a["config"] if a["config"][k] != b["config"][k]]
    return diff[0] if len(diff) == 1 else None


def pick_contrasting(rows, results, k=6) -> list:
    """Up to ``k`` ``(why, run)`` pairs (the first seed of a configuration) for grad_norms.png,
    in pairs: the configuration whose gradients shrink most towards the input (vanishing) and
    the best one that differs from it in a single choice (what fixes it); the one with the
    largest gradient norms (exploding) and its fix; the best and the worst. Each configuration
    appears once."""
    first = {}
    for r in results:
        if r["grad_norms"]:
            first.setdefault(r["key"], r)
    if not first:
        return []
    ranked = [first[row["key"]] for row in rows if row["key"] in first]
    candidates = []
    for why, bad in (("most vanishing", min(ranked, key=_depth_ratio)),
                     ("largest gradients", max(ranked, key=_peak))):
        candidates.append((why, bad))
        for run in ranked:  # best first
            axis = _differs_in_one(bad, run)
            if axis is not None:
                candidates.append((f"{why}, one change: {axis} {bad['config'][axis]} -> "
                                   f"{run['config'][axis]}", run))
                break
    candidates += [("best", ranked[0]), ("worst", ranked[-1])]
    out, seen = [], set()
    for why, run in candidates:
        if run["key"] not in seen:
            seen.add(run["key"])
            out.append((why, run))
    return out[:k]


def grad_norms(rows, results, path) -> None:
    """Per-layer gradient norms over training for a few contrasting configurations."""
    plt = _plt()
    picks = pick_contrasting(rows, results)
    if not picks:
        raise ValueError("results: no run has gradient norms to plot")
    nc = min(len(picks), 2)
    nr = math.ceil(len(picks) / nc)
    # own y range per panel: a vanishing run spans 1e-4..1, an exploding one 1e3..1e20
    fig, axs = plt.subplots(nr, nc, figsize=(6 * nc, 3.8 * nr), squeeze=False)
    rank = {row["key"]: row["rank"] for row in rows}
    for ax, (why, run) in zip(axs.flat, picks):
        cmap = plt.get_cmap("viridis")
        layers = list(run["grad_norms"].items())
        for i, (layer, pts) in enumerate(layers):
            if not pts:
                continue
            steps, vals = [s for s, _ in pts], _norms(pts)
            vals[~(vals > 0)] = np.nan  # log scale: a zero or NaN norm leaves a gap
            ax.plot(steps, vals, lw=1.0, color=cmap(i / max(1, len(layers) - 1)), label=layer)
        ax.set_yscale("log")
        tag = " DIVERGED" if run["diverged"] else ""
        ax.set_title(f"{why} (#{rank.get(run['key'], '?')}){tag}\n{run['key']}, seed "
                     f"{run['seed']}", fontsize=9)
        ax.set_xlabel("step")
        _int_epochs(ax)
        ax.legend(fontsize=7, loc="best", title="input -> output", title_fontsize=7)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axs.flat)[len(picks):]:
        ax.axis("off")
    for row_axes in axs:
        row_axes[0].set_ylabel("layer gradient norm")
    fig.suptitle("Per-layer gradient norms over training (log scale)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_all(rows, results, out_dir, threshold=None) -> list:
    """Write the three figures into ``out_dir``; returns the paths written ([] without
    matplotlib: check :func:`available` for the reason)."""
    ok, _ = available()
    if not ok:
        return []
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    p = os.path.join(out_dir, "loss_curves.png")
    loss_curves(rows, p)
    paths.append(p)
    p = os.path.join(out_dir, "accuracy.png")
    accuracy(rows, p, threshold)
    paths.append(p)
    if any(r["grad_norms"] for r in results):
        p = os.path.join(out_dir, "grad_norms.png")
        grad_norms(rows, results, p)
        paths.append(p)
    return paths

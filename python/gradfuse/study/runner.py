"""Train one configuration from one seed, or a whole grid, with ``gf.train.Trainer``.

Each run gets a fresh model, optimizer and schedule, a ``GradientMonitor`` (the per-layer
gradient norms: the vanishing/exploding picture) and a ``NonFiniteGuard(action="stop")``: a run
whose loss turns NaN/inf stops there and is marked diverged, and the study goes on. Gradients
are not clipped unless asked (``grad_clip``), so an exploding configuration shows as one.

A run's result is a plain, JSON-ready dict::

    {"key", "config": {optimizer, init, norm, activation, schedule, lr}, "seed",
     "history": [{epoch, train_loss, train_acc, val_loss, val_acc, lr, grad_norm, time}, ...],
     "final_val_acc", "final_val_loss", "final_train_loss", "best_val_acc",
     "epochs_to_threshold" (first epoch with val_acc >= threshold, or None), "diverged",
     "stopped_epoch", "wall_time", "samples_per_s",
     "grad_norms": {layer: [[step, norm], ...]} (the Linear layers, input to output),
     "grad_flags": {"vanishing": n, "exploding": n}}

Example::

    >>> from gradfuse.study import RunConfig, load_dataset, run_one
    >>> r = run_one(RunConfig("adam", "he", "batch", "relu", "none", 1e-3), load_dataset(),
    ...             epochs=5, seed=0)
    >>> r["final_val_acc"] > 0.9
    True
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np

import gradfuse as gf

from .config import RunConfig
from .models import build_model, build_optimizer, build_scheduler, linear_layer_names

__all__ = ["run_one", "run_grid", "make_loaders", "blas_threads"]


def make_loaders(data, batch_size: int, seed: int, norm: str = "none", world: int = 1):
    """(train, validation) ``gf.data.DataLoader`` s; the train order is drawn from ``seed``.

    A last training batch of one sample is dropped when ``norm == "batch"`` (BatchNorm cannot
    normalize a single sample). ``world``: the number of data-parallel ranks the train loader
    will be sharded over (each rank's share of ``ceil(N / world)`` samples is what its last
    batch is cut from).

    Example::

        >>> train, val = make_loaders(load_dataset("digits"), batch_size=64, seed=0)
        >>> len(train), len(val)
        (23, 1)
    """
    n = len(data.x_train)
    drop_last = norm == "batch" and math.ceil(n / world) % batch_size == 1
    train = gf.data.DataLoader(gf.data.TensorDataset(data.x_train, data.y_train),
                               batch_size=batch_size, shuffle=True, drop_last=drop_last,
                               generator=seed)
    val = gf.data.DataLoader(gf.data.TensorDataset(data.x_val, data.y_val),
                             batch_size=max(len(data.x_val), 1), shuffle=False)
    return train, val


def blas_threads(n: int | None = 1):
    """A context that limits numpy's BLAS to ``n`` threads (threadpoolctl, when installed; it
    comes with scikit-learn), or does nothing (``n=None`` or no threadpoolctl).

    Why: the MLPs of a study multiply matrices of 64 x 128 or so, too small for BLAS threads to
    pay. Measured here (OpenBLAS 0.3.31, 2 cores): a 20-epoch digits run took 0.35-0.5 s with
    1 BLAS thread, the same with 2 on an idle machine, and 5-18 s with 2 while other processes
    kept the cores busy (the BLAS threads wait for each other).

    Example::

        >>> with blas_threads(1):
        ...     r = run_one(cfg, data, blas=None)   # run_one limits the threads by itself
    """
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _finite(x):
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _linear_weight_series(records, model) -> dict:
    """``{"fc1 (0)": [[step, grad_norm], ...], ...}``: the gradient norm of each Linear
    layer (its weight and bias together, as GradientMonitor measures a module), in layer
    order; the normalization layers' own parameters are left out."""
    names = linear_layer_names(model)
    out = {name: [] for name in names}
    for rec in records:
        layer = str(rec["layer"])
        if layer.endswith(".weight"):
            layer = layer[: -len(".weight")]
        if layer in out:
            g = rec.get("grad_norm")
            out[layer].append([int(rec["step"]), float(g) if g is not None else float("nan")])
    return {f"fc{i + 1} ({name})": out[name] for i, name in enumerate(names) if out[name]}


def run_one(cfg: RunConfig, data, *, epochs: int = 20, seed: int = 0, batch_size: int = 64,
            hidden=(128, 64), threshold: float = 0.9, grad_clip=None, monitor_every: int = 1,
            verbose: int = 0, model_out: list | None = None, blas: int | None = 1,
            device: str = "cpu", distributed: bool = False, sync_bn: bool = False) -> dict:
    """Train ``cfg`` on ``data`` (a :class:`~gradfuse.study.Dataset`) for ``epochs`` from
    ``seed``; returns the run's result dict (see the module docstring).

    ``model_out``: a list the trained model is appended to (for ``gradfuse train --save``).
    ``blas``: BLAS threads during the run (see :func:`blas_threads`; None leaves them).
    ``device``: where the model trains ("cpu" or "cuda"); batches move there as they come.
    ``distributed``: data-parallel over the initialized ``gf.distributed`` ranks (call it on
    every rank; ``batch_size`` is per rank; the history is the same on every rank).
    ``sync_bn``: BatchNorm layers become :class:`gf.nn.SyncBatchNorm`.
    """
    with blas_threads(blas):
        return _run_one(cfg, data, epochs, seed, batch_size, hidden, threshold, grad_clip,
                        monitor_every, verbose, model_out, device, distributed, sync_bn)


def _run_one(cfg, data, epochs, seed, batch_size, hidden, threshold, grad_clip, monitor_every,
             verbose, model_out, device="cpu", distributed=False, sync_bn=False):
    from gradfuse.train import GradientMonitor, NonFiniteGuard, Trainer

    # initialized on the host from the seed, then moved: the same weights on every device
    model = build_model(cfg, data.n_features, hidden, data.n_classes, seed=seed).to(device)
    if sync_bn:
        model = gf.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = build_optimizer(cfg, model.parameters())
    world, rank = 1, 0
    if distributed:
        if not gf.distributed.is_initialized():
            gf.distributed.init()
        world, rank = gf.distributed.get_world_size(), gf.distributed.get_rank()
    train, val = make_loaders(data, batch_size, seed, cfg.norm, world=world)
    steps = len(train)
    if world > 1:  # the trainer shards the loader: each rank takes ~1/world of its steps
        from gradfuse.train._distributed import ShardedLoader

        steps = len(ShardedLoader(train, world, rank))
    sched = build_scheduler(cfg, opt, epochs, steps)
    monitor = GradientMonitor(every=monitor_every)
    trainer = Trainer(model, opt, gf.nn.CrossEntropyLoss(), scheduler=sched,
                      callbacks=[monitor, NonFiniteGuard(action="stop")], grad_clip=grad_clip,
                      metric="accuracy", scheduler_interval="step", verbose=verbose,
                      distributed=True if distributed else False)
    t0 = time.perf_counter()
    # a diverging configuration overflows on its way to NaN: that is a result here (the guard
    # stops the run and it is reported as diverged), not something to warn about
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        hist = trainer.fit(train, val=val, epochs=epochs)
    wall = time.perf_counter() - t0
    if model_out is not None:
        model_out.append(model)

    history = []
    for e in hist.epochs:
        history.append({
            "epoch": int(e["epoch"]), "train_loss": _num(e.get("train_loss")),
            "train_acc": _num(e.get("train_metric")), "val_loss": _num(e.get("val_loss")),
            "val_acc": _num(e.get("val_metric")), "lr": _num(e.get("lr")),
            "grad_norm": _num(e.get("grad_norm")), "time": _num(e.get("time")),
        })
    diverged = bool(hist.diverged) or any(
        not _finite(h["train_loss"]) or not _finite(h["val_loss"]) for h in history)
    last = history[-1] if history else {}
    reached = [h["epoch"] for h in history
               if _finite(h["val_acc"]) and h["val_acc"] >= threshold]
    accs = [h["val_acc"] for h in history if _finite(h["val_acc"])]
    flags = {"vanishing": 0, "exploding": 0}
    for f in monitor.flags:
        if f.get("kind") in flags:
            flags[f["kind"]] += 1
    n_seen = len(data.x_train) * len(history)
    return {
        "key": cfg.key,
        "config": cfg.as_dict(),
        "seed": int(seed),
        "history": history,
        # a diverged run's accuracy is what its (NaN) weights predict: counted as it is
        "final_val_acc": _num(last.get("val_acc")),
        "final_val_loss": _num(last.get("val_loss")),
        "final_train_loss": _num(last.get("train_loss")),
        "best_val_acc": max(accs) if accs else None,
        "epochs_to_threshold": reached[0] if reached else None,
        "diverged": diverged,
        "stopped_epoch": int(last.get("epoch", 0)),
        "wall_time": wall,
        "samples_per_s": n_seen / wall if wall > 0 else None,
        "grad_norms": _linear_weight_series(monitor.records, model),
        "grad_flags": flags,
    }


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else (float("nan") if math.isnan(x) else x)


_WORKER_DATA = None


def _init_worker(data):
    global _WORKER_DATA
    _WORKER_DATA = data  # sent once per worker process, not once per run


def _run_task(args):
    cfg, data, seed, kwargs = args
    return run_one(cfg, _WORKER_DATA if data is None else data, seed=seed, **kwargs)


def run_grid(configs, data, *, seeds=(0, 1, 2), jobs: int = 1, log=print, **kwargs) -> list:
    """:func:`run_one` for every configuration and seed; returns the results in grid order
    (configuration outermost), whatever ``jobs`` is: each run is seeded on its own, so the
    numbers do not depend on the number of worker processes either.

    ``jobs`` > 1 trains that many runs at once in worker processes (spawned, so no OpenMP
    state is forked); one run is small and keeps about one core busy. Logs one progress line
    per finished run with the elapsed time and an ETA.
    """
    tasks = [(cfg, data, seed, kwargs) for cfg in configs for seed in seeds]
    total = len(tasks)
    results = [None] * total
    t0 = time.perf_counter()
    width = len(str(total))

    def report(i, r, done):
        results[i] = r
        elapsed = time.perf_counter() - t0
        eta = elapsed / done * (total - done)
        acc = r["final_val_acc"]
        acc = "  nan" if acc is None or not np.isfinite(acc) else f"{acc:.3f}"
        log(f"[{done:{width}d}/{total}] {r['key']:<44s} seed {r['seed']}  val acc {acc}"
            f"{'  DIVERGED' if r['diverged'] else ''}  {r['wall_time']:.2f} s  "
            f"elapsed {_hms(elapsed)}  ETA {_hms(eta)}")

    if jobs <= 1 or total <= 1:
        for i, task in enumerate(tasks):
            report(i, _run_task(task), i + 1)
        return results
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(max_workers=min(jobs, total), mp_context=mp.get_context("spawn"),
                                initializer=_init_worker, initargs=(data,)) as pool:
        futures = {pool.submit(_run_task, (cfg, None, seed, kw)): i
                   for i, (cfg, _, seed, kw) in enumerate(tasks)}
        try:
            for done, fut in enumerate(cf.as_completed(futures), 1):
                report(futures[fut], fut.result(), done)
        except BaseException:
            # leaving the with-block waits for the pool: without this, for every queued run
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"

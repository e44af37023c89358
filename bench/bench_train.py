"""Training-step throughput: zero_grad, forward, cross entropy, backward and an Adam step.

Two MLPs at batch 128, float32, with the same initial weights, data and optimizer in both
libraries (PyTorch: ``Adam(fused=True)``):

* ``64-128-64-10`` with LayerNorm + ReLU after each hidden Linear (17.6K parameters): the
  arrays are tiny, so the per-op Python overhead of the autograd decides;
* ``784-1024-1024-1024-10`` with ReLU (2.9M parameters): the seven matrix products of forward
  and backward (2.2 GFLOP) are most of the step. The ``matmuls`` case times those products
  alone (numpy's BLAS for gradfuse, PyTorch's MKL), which is the floor of a step.

``bytes_moved`` counts parameters, gradients and the two Adam moments read and written once
(for the matmuls case: operands read and products written once): GB/s is not the point of
these cases (look at the time per step and ``vs PyTorch``).

Two ways to run it:

* ``python -m bench --filter train`` times everything in one process, as every bench case.
  Both libraries then share one libgomp with one wait policy (bench/__main__.py sets
  ``GRADFUSE_OMP_PASSIVE=0``: spinning workers), which is not what either library's user gets.
* ``python -m bench.bench_train`` runs each (case, library) in a fresh subprocess with the
  environment a user's ``python train.py`` has: gradfuse with its sleeping (PASSIVE) OpenMP
  workers and without torch loaded, PyTorch with its own defaults and without gradfuse loaded.
  This is the comparison the table of docs/benchmarks.md reports.

Threads: gradfuse's kernels and numpy's BLAS both get ``threads``, as PyTorch does
(``torch.set_num_threads``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import os
import subprocess
import sys

import numpy as np

from .harness import GRADFUSE, NUMPY, PYTORCH, Case, measure

BATCH = 128
# name -> (layer widths, LayerNorm after each hidden Linear)
MODELS = {
    "64-128-64-10 LN+ReLU": ((64, 128, 64, 10), True),
    "784-1024-1024-1024-10 ReLU": ((784, 1024, 1024, 1024, 10), False),
}
LR = 1e-3
# Steps cycle through this many distinct batches of random inputs and labels. On one fixed batch
# the model overfits within ~50 steps, its gradients turn subnormal and every matrix product
# slows down 5-8x (in numpy's and PyTorch's BLAS alike), which made the median times meaningless.
N_BATCHES = 64


def _init(widths, seed: int = 0):
    """Weights as PyTorch's Linear draws them (U(+-1/sqrt(fan_in))), the data and targets."""
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        bound = 1.0 / np.sqrt(fan_in)
        w = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        b = rng.uniform(-bound, bound, fan_out).astype(np.float32)
        layers.append((w, b))
    x = rng.standard_normal((N_BATCHES, BATCH, widths[0]), dtype=np.float32)
    t = rng.integers(0, widths[-1], (N_BATCHES, BATCH), dtype=np.int64)
    return layers, x, t


def _n_params(widths, norm: bool) -> int:
    n = sum(a * b + b for a, b in zip(widths, widths[1:]))
    return n + (2 * sum(widths[1:-1]) if norm else 0)


@contextlib.contextmanager
def _blas_threads(n: int):
    """numpy's BLAS on ``n`` threads while the case runs (PyTorch gets the same via
    torch.set_num_threads), when threadpoolctl is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(n, user_api="blas"):
        yield


def _gradfuse(model: str):
    import gradfuse as gf

    widths, norm = MODELS[model]
    layers, x, t = _init(widths)
    mods = []
    for i, (w, b) in enumerate(layers):
        fc = gf.nn.Linear(w.shape[1], w.shape[0])
        fc.weight.data[...] = w
        fc.bias.data[...] = b
        mods.append(fc)
        if i < len(layers) - 1:
            if norm:
                mods.append(gf.nn.LayerNorm(w.shape[0]))
            mods.append(gf.nn.ReLU())
    net = gf.nn.Sequential(*mods)
    opt = gf.optim.Adam(net.parameters(), lr=LR)
    loss_fn = gf.nn.CrossEntropyLoss()
    batches = itertools.cycle([(gf.tensor(xb), gf.tensor(tb)) for xb, tb in zip(x, t)])

    def step():
        xt, tt = next(batches)
        opt.zero_grad()
        loss = loss_fn(net(xt), tt)
        loss.backward()
        opt.step()

    return _with_blas_threads(step, gf.get_num_threads())


def _with_blas_threads(fn, n):
    @contextlib.contextmanager
    def ctx():
        with _blas_threads(n):
            yield fn

    return ctx()


def _pytorch(model: str):
    import torch

    widths, norm = MODELS[model]
    layers, x, t = _init(widths)
    mods = []
    for i, (w, b) in enumerate(layers):
        fc = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            fc.weight.copy_(torch.from_numpy(w))
            fc.bias.copy_(torch.from_numpy(b))
        mods.append(fc)
        if i < len(layers) - 1:
            if norm:
                mods.append(torch.nn.LayerNorm(w.shape[0]))
            mods.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*mods)
    try:
        opt = torch.optim.Adam(net.parameters(), lr=LR, fused=True)
    except (RuntimeError, TypeError):  # no fused CPU Adam in this build
        opt = torch.optim.Adam(net.parameters(), lr=LR, foreach=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = itertools.cycle([(torch.from_numpy(xb), torch.from_numpy(tb))
                               for xb, tb in zip(x, t)])

    def step():
        xt, tt = next(batches)
        opt.zero_grad()
        loss = loss_fn(net(xt), tt)
        loss.backward()
        opt.step()

    return step


def _matmul_operands(widths):
    """Per layer: x (B, in), W (out, in), the output gradient g (B, out)."""
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((BATCH, a), dtype=np.float32),
             rng.standard_normal((b, a), dtype=np.float32),
             rng.standard_normal((BATCH, b), dtype=np.float32))
            for a, b in zip(widths, widths[1:])]


def _numpy_matmuls(model: str):
    """The step's products in numpy: forward x W^T, backward g^T x, and g W for every layer
    but the first (its input needs no gradient)."""
    ops = _matmul_operands(MODELS[model][0])

    def run():
        for i, (x, w, g) in enumerate(ops):
            np.matmul(x, w.T)
            np.matmul(g.T, x)
            if i:
                np.matmul(g, w)

    import gradfuse as gf

    return _with_blas_threads(run, gf.get_num_threads())


def _pytorch_matmuls(model: str):
    import torch

    ops = [tuple(torch.from_numpy(a) for a in op) for op in _matmul_operands(MODELS[model][0])]

    def run():
        for i, (x, w, g) in enumerate(ops):
            torch.matmul(x, w.T)
            torch.matmul(g.T, x)
            if i:
                torch.matmul(g, w)

    return run


def _step_bytes(model: str) -> int:
    n = _n_params(*MODELS[model])
    return n * 4 * 4 + n * 4 * 3  # read p, g, m, v; write p, m, v


def _matmul_bytes(widths) -> int:
    """Operands read and products written once by the step's matrix products (float32)."""
    n = 0
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        x, w, g = BATCH * a, a * b, BATCH * b
        n += (x + w + g) + (g + x + w)  # forward x W^T -> y; g^T x -> dW
        if i:
            n += g + w + x  # g W -> dx
    return 4 * n


def _has_torch() -> bool:
    # find_spec, not import: a worker process must not load PyTorch (and its libgomp) before
    # gradfuse, or gradfuse would run on PyTorch's OpenMP runtime and wait policy
    return importlib.util.find_spec("torch") is not None


def _cases():
    out = []
    for model in MODELS:
        impls = {GRADFUSE: lambda m=model: _gradfuse(m)}
        if _has_torch():
            impls[PYTORCH] = lambda m=model: _pytorch(m)
        out.append(Case(name=f"train step {model} batch {BATCH}", bytes_moved=_step_bytes(model),
                        impls=impls, unit="ms"))
    big = "784-1024-1024-1024-10 ReLU"
    flops = 2 * BATCH * sum(a * b * (3 if i else 2) for i, (a, b) in
                            enumerate(zip(MODELS[big][0], MODELS[big][0][1:])))
    impls = {NUMPY: lambda: _numpy_matmuls(big)}
    if _has_torch():
        impls[PYTORCH] = lambda: _pytorch_matmuls(big)
    out.append(Case(name=f"train step matmuls only {big} batch {BATCH} ({flops / 1e9:.2f} GFLOP)",
                    bytes_moved=_matmul_bytes(MODELS[big][0]), impls=impls, unit="ms"))
    return out


CASES = _cases()

# --------------------------------------------------------------------------- one process each
# (case index, implementation) -> factory name, run by `python -m bench.bench_train --worker`.

_WORKERS = {
    GRADFUSE: _gradfuse,
    PYTORCH: _pytorch,
    "numpy matmuls": _numpy_matmuls,
    "pytorch matmuls": _pytorch_matmuls,
}


def _worker(impl: str, model: str, threads: int, budget_s: float, min_samples: int) -> dict:
    if impl in (PYTORCH, "pytorch matmuls"):
        import torch

        torch.set_num_threads(threads)
    else:
        import gradfuse as gf

        gf.set_num_threads(threads)
        if "torch" in sys.modules:
            raise RuntimeError("the gradfuse worker must not load torch (shared libgomp)")
    made = _WORKERS[impl](model)
    ctx = made if hasattr(made, "__enter__") else contextlib.nullcontext(made)
    with ctx as fn:
        return measure(fn, budget_s, min_samples)


def _spawn(impl: str, model: str, threads: int, budget_s: float, min_samples: int) -> dict:
    env = dict(os.environ)
    # what a user's `python train.py` gets: gradfuse's own wait policy choice (PASSIVE),
    # PyTorch's defaults; numpy's BLAS on `threads` threads from its start
    for k in ("GRADFUSE_OMP_PASSIVE", "OMP_WAIT_POLICY"):
        env.pop(k, None)
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "bench.bench_train", "--worker", impl, model, str(threads),
           str(budget_s), str(min_samples)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


_PEER = {GRADFUSE: PYTORCH, "numpy matmuls": "pytorch matmuls"}


def run_separate(threads_list, budget_s: float, min_samples: int, with_torch: bool) -> list:
    """Each (model, implementation, threads) in its own process; returns table rows."""
    rows = []
    big = "784-1024-1024-1024-10 ReLU"
    jobs = []
    for threads in threads_list:
        for model in MODELS:
            jobs.append((model, GRADFUSE, threads))
            if with_torch:
                jobs.append((model, PYTORCH, threads))
        jobs.append((big, "numpy matmuls", threads))
        if with_torch:
            jobs.append((big, "pytorch matmuls", threads))
    results = {}
    for model, impl, threads in jobs:
        r = _spawn(impl, model, threads, budget_s, min_samples)
        results[(model, impl, threads)] = r
        rows.append({"model": model, "impl": impl, "threads": threads, **r})
    for row in rows:
        ref = results.get((row["model"], _PEER.get(row["impl"], row["impl"]), row["threads"]))
        if ref is not None:
            row["vs_pytorch"] = ref["min_s"] / row["min_s"]
    return rows


def format_rows(rows) -> str:
    lines = ["| model (batch 128) | threads | implementation | min / step | median / step "
             "| samples/s (min) | vs PyTorch |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['vs_pytorch']:.2f}x" if "vs_pytorch" in r else "n/a"
        lines.append(f"| {r['model']} | {r['threads']} | {r['impl']} | {r['min_s'] * 1e3:.3f} ms "
                     f"| {r['median_s'] * 1e3:.3f} ms | {BATCH / r['min_s']:,.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_train",
        description="Training-step throughput, gradfuse vs PyTorch, each library in its own "
        "process with a user's default environment.")
    parser.add_argument("--threads", metavar="N", type=int, nargs="+", default=None,
                        help="thread counts to run (default: gradfuse's default)")
    parser.add_argument("--quick", action="store_true", help="about 10x shorter timing")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        impl, model, threads, budget_s, min_samples = args.worker
        r = _worker(impl, model, int(threads), float(budget_s), int(min_samples))
        print(json.dumps(r))
        return 0
    threads = args.threads or [os.cpu_count() or 1]
    budget_s, min_samples = (0.1, 3) if args.quick else (1.0, 5)
    rows = run_separate(threads, budget_s, min_samples, _has_torch())
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

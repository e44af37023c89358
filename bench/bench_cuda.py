"""GPU benchmark of the CUDA kernels (csrc/cuda/*.cu) side by side with PyTorch CUDA.

Run on a machine with a GPU, a GRADFUSE_CUDA=ON build and torch with CUDA::

    python -m bench.bench_cuda [--quick] [--json out.json]

Each case runs gradfuse's kernel and PyTorch's equivalent (its fused path where one exists:
``torch.optim.Adam/AdamW/SGD(fused=True)``, RMSprop's foreach path; ``aten.native_layer_norm``
/ ``native_batch_norm`` and their backwards) on the same data in one process, timed over
repeated calls between two device synchronizations (median of 5 repeats). Reported: time per
call, GB/s over the minimum necessary traffic (``bytes``), that as a % of the measured
device-to-device copy bandwidth (read + write), and PyTorch's time / gradfuse's (> 1: gradfuse
faster). Without a GPU it prints why and exits 0. Not in ``bench/__main__``'s MODULES: those
are the CPU harness's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _setup():
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if not torch.cuda.is_available():
        return None, "no CUDA device visible to torch"
    from gradfuse import _backend as B

    if not hasattr(getattr(B._C, "cuda", None), "optim_step"):
        return None, "gradfuse was built without its CUDA kernels (GRADFUSE_CUDA=OFF)"
    return torch, None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    args = ap.parse_args(argv)
    torch, why = _setup()
    if torch is None:
        print(f"bench_cuda: skipped ({why})")
        return 0
    from gradfuse import _backend as B
    from gradfuse.cuda import ops

    sys.path.insert(0, "tests")
    from test_cuda_kernels import _torch_class, scalars_for  # the tests' torch-backed arrays

    D = _torch_class(torch)
    sync_gf = B._C.cuda.stream_synchronize

    def sync():
        sync_gf()
        torch.cuda.synchronize()

    def timeit(fn, reps):
        sync()  # inputs made on torch's stream are ready (gradfuse's stream does not wait)
        fn()
        sync()
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            sync()
            ts.append((time.perf_counter() - t0) / reps)
        return statistics.median(ts)

    big = 1 << 24 if args.quick else 1 << 28
    rows = []

    # reference: device-to-device copy (bytes read + written)
    src = torch.empty(big, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    t_copy = timeit(lambda: dst.copy_(src), 10)
    copy_bw = 2 * src.numel() * 4 / t_copy / 1e9
    print(f"device: {torch.cuda.get_device_name()}  D2D copy {copy_bw:.0f} GB/s "
          f"({src.numel() * 4 / 2**30:.2f} GiB copied in {t_copy * 1e3:.3f} ms)")
    src = dst = None

    def add(name, t_gf, t_pt, nbytes):
        gbs = nbytes / t_gf / 1e9
        rows.append(dict(case=name, gradfuse_ms=t_gf * 1e3, torch_ms=t_pt * 1e3, gbs=gbs,
                         pct_copy=100 * gbs / copy_bw, speedup=t_pt / t_gf))
        r = rows[-1]
        print(f"{name:34s} {r['gradfuse_ms']:9.3f} ms  torch {r['torch_ms']:9.3f} ms  "
              f"{gbs:7.0f} GB/s  {r['pct_copy']:5.1f}% of copy  x{r['speedup']:.2f} vs torch",
              flush=True)

    def want(name):
        return args.filter in name

    # ---- optimizers
    sizes = [1 << 20, 1 << 24] if args.quick else [1 << 24, 1 << 28]
    hp_adam = dict(lr=1e-3, eps=1e-8, beta1=0.9, beta2=0.999)
    for n in sizes:
        label = f"{n >> 20}M"
        for name, kind, hp, flags, nstate, mk in [
            ("adam", 1, hp_adam, 0, 2,
             lambda p: torch.optim.Adam([p], lr=1e-3, fused=True)),
            ("adamw", 1, dict(hp_adam, wd=0.01), 16, 2,
             lambda p: torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01, fused=True)),
            ("rmsprop", 2, dict(lr=1e-2, eps=1e-8, alpha=0.99), 0, 1,
             lambda p: torch.optim.RMSprop([p], lr=1e-2, foreach=True)),
            ("sgd_momentum", 0, dict(lr=0.1, momentum=0.9), 0, 1,
             lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=True)),
        ]:
            case = f"{name} step {label}"
            if not want(case):
                continue
            p = D(torch.randn(n, device="cuda"))
            g = D(torch.randn(n, device="cuda"))
            st = [D(torch.zeros(n, device="cuda")) for _ in range(nstate)] + [None] * (3 - nstate)
            sc, fl = scalars_for(kind, hp, 2, flags)
            t_gf = timeit(lambda k=kind, p=p, g=g, st=st, sc=sc, fl=fl:
                          ops.optim_step(k, p, g, *st, sc, fl), 20)
            p = g = st = None
            pt = torch.nn.Parameter(torch.randn(n, device="cuda"))
            pt.grad = torch.randn(n, device="cuda")
            opt = mk(pt)
            opt.step()  # state allocated
            t_pt = timeit(opt.step, 20)
            pt = opt = None
            torch.cuda.empty_cache()
            # traffic: param, grad and each state read; param and each state written
            add(case, t_gf, t_pt, 4 * n * (2 + nstate + 1 + nstate))

    # ---- norms at 8192 x 4096, forward + backward
    M, N = (2048, 1024) if args.quick else (8192, 4096)
    x = torch.randn(M, N, device="cuda")
    dy = torch.randn(M, N, device="cuda")
    w = torch.randn(N, device="cuda")
    b = torch.randn(N, device="cuda")
    X, DY, W, Bb = D(x), D(dy), D(w), D(b)
    if want("layer_norm"):
        def gf_ln():
            y, mean, rstd = ops.row_norm_forward(X, W, Bb, 1e-5, False)
            ops.row_norm_backward(X, DY, W, mean, rstd, False, True, True, True)

        def pt_ln():
            y, mean, rstd = torch.ops.aten.native_layer_norm(x, [N], w, b, 1e-5)
            torch.ops.aten.native_layer_norm_backward(dy, x, [N], mean, rstd, w, b,
                                                      [True, True, True])

        add(f"layer_norm fwd+bwd {M}x{N}", timeit(gf_ln, 10), timeit(pt_ln, 10), 4 * M * N * 5)
    if want("batch_norm"):
        def gf_bn():
            y, mean, rstd = ops.batch_norm_forward(X, W, Bb, None, None, True, 0.1, 1e-5)
            ops.batch_norm_backward(X, DY, W, mean, rstd, True, True, True, True)

        def pt_bn():
            y, mean, rstd = torch.ops.aten.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5)
            torch.ops.aten.native_batch_norm_backward(dy, x, w, None, None, mean, rstd, True, 1e-5,
                                                      [True, True, True])

        add(f"batch_norm fwd+bwd {M}x{N}", timeit(gf_bn, 10), timeit(pt_bn, 10), 4 * M * N * 5)
    x = dy = X = DY = None
    torch.cuda.empty_cache()

    # ---- activations at 256M elements (forward: read + write; backward: 2 reads + write)
    F = torch.nn.functional
    xa = torch.randn(big, device="cuda")
    ga = torch.randn(big, device="cuda")
    XA, GA = D(xa), D(ga)
    yt = torch.empty_like(xa)
    YT = D(yt)
    for name, op, a, bb_, fpt, bpt in [
        ("relu", 2, 0.0, 0.0, lambda: torch.relu(xa),
         lambda: torch.ops.aten.threshold_backward(ga, xa, 0)),
        ("gelu", 5, 0.0, 0.0, lambda: F.gelu(xa), lambda: torch.ops.aten.gelu_backward(ga, xa)),
        ("silu", 7, 0.0, 0.0, lambda: F.silu(xa), lambda: torch.ops.aten.silu_backward(ga, xa)),
        ("tanh", 1, 0.0, 0.0, lambda: torch.tanh(xa, out=yt),
         lambda: torch.ops.aten.tanh_backward(ga, xa)),
    ]:
        if want(f"{name} fwd"):
            t_gf = timeit(lambda op=op, a=a, b=bb_: ops.activation_forward(op, XA, a, b, YT), 10)
            add(f"{name} fwd {big >> 20}M", t_gf, timeit(fpt, 10), 8 * big)
        if want(f"{name} bwd"):
            t_gf = timeit(lambda op=op, a=a, b=bb_: ops.activation_backward(op, GA, XA, a, b), 10)
            add(f"{name} bwd {big >> 20}M", t_gf, timeit(bpt, 10), 12 * big)
    ga = GA = None
    torch.cuda.empty_cache()
    if want("normal fill"):
        t_gf = timeit(lambda: ops.normal_fill(YT, 1, 0, 0.0, 1.0), 10)
        add(f"philox normal fill {big >> 20}M", t_gf, timeit(lambda: yt.normal_(), 10), 4 * big)
    if want("dropout"):
        add(f"dropout fwd p=0.1 {big >> 20}M",
            timeit(lambda: ops.dropout_forward(XA, 1, 0, 0.1, True), 10),
            timeit(lambda: torch.ops.aten.native_dropout(xa, 0.1, True), 10), 9 * big)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), copy_gbs=copy_bw, rows=rows), f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

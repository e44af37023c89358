"""GPU array ops side by side with PyTorch CUDA: copy, element-wise, reductions, matmul.

``python -m bench.bench_cuda_array`` (needs a GPU, a GRADFUSE_CUDA=ON build and, for the
comparison, torch with CUDA). Each timing queues ``reps`` calls back to back on the device
and synchronizes once, so the host's per-call Python cost overlaps the kernels as it does in
a training step; the best of several such batches is reported. Bandwidth is the minimum
necessary traffic (inputs read once + output written once) over the time, and is also shown
as a fraction of the device's peak DRAM bandwidth (memory clock x bus width) and of the
bandwidth of PyTorch's device-to-device copy measured in the same run.

Kept out of ``python -m bench`` (its roofline is the host's copy bandwidth).
"""

from __future__ import annotations

import sys
import time

import numpy as np


def _timer(fn, sync, min_total_s=0.05, batches=5):
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = max(time.perf_counter() - t0, 1e-6)
    reps = max(3, min(2000, int(min_total_s / one)))
    best = float("inf")
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def run(n_elem: int = 1 << 26, mm: tuple = (4096, 8192)) -> list:
    import gradfuse as gf
    from gradfuse.cuda import DeviceArray

    if not gf.cuda.is_available():
        print(f"skipped: {gf.cuda.unavailable_reason()}")
        return []
    try:
        import torch

        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    torch_sync = torch.cuda.synchronize if torch else None
    if torch:
        torch.backends.cuda.matmul.allow_tf32 = False  # full fp32, as gradfuse's cuBLAS calls

    props = gf.cuda.get_device_properties()
    peak = props["peak_bandwidth_gbs"]
    sync = gf.cuda.synchronize
    rng = np.random.default_rng(0)
    host = rng.standard_normal(n_elem, dtype=np.float32)
    a, b = DeviceArray.from_numpy(host), DeviceArray.from_numpy(host[::-1].copy())
    c = gf.cuda.empty(n_elem, np.float32)
    a2 = a.reshape(8192, -1)
    rows = []
    ta = tb = tc = ta2 = None
    if torch:
        ta = torch.from_numpy(host).cuda()
        tb = torch.from_numpy(host[::-1].copy()).cuda()
        tc = torch.empty_like(ta)
        ta2 = ta.view(8192, -1)
    nb = n_elem * 4
    cases = [
        ("copy (d2d, 64M f32)", 2 * nb, lambda: np.copyto(c, a), lambda: tc.copy_(ta)),
        ("add a + b (64M f32)", 3 * nb, lambda: a + b, lambda: ta + tb),
        ("scale a * 0.5 (64M f32)", 2 * nb, lambda: a * 0.5, lambda: ta * 0.5),
        ("where(a > 0, a, 0) (64M f32)", 2 * nb, lambda: np.where(a > 0, a, 0.0),
         lambda: torch.where(ta > 0, ta, 0.0)),
        ("exp (64M f32)", 2 * nb, lambda: np.exp(a), lambda: torch.exp(ta)),
        ("transpose copy (8192 x 8192 f32)", 2 * nb, lambda: a2.T.copy(),
         lambda: ta2.t().contiguous()),
        ("cast f32 -> f64 (64M)", 3 * nb, lambda: a.astype(np.float64),
         lambda: ta.to(torch.float64)),
        ("sum all (64M f32)", nb, lambda: a.sum(), lambda: ta.sum()),
        ("sum rows (8192 x 8192 f32, axis=1)", nb, lambda: a2.sum(axis=1),
         lambda: ta2.sum(dim=1)),
        ("sum cols (8192 x 8192 f32, axis=0)", nb, lambda: a2.sum(axis=0),
         lambda: ta2.sum(dim=0)),
        ("argmax rows (8192 x 8192 f32)", nb, lambda: a2.argmax(axis=1),
         lambda: ta2.argmax(dim=1)),
    ]
    copy_gbs = None
    for name, nbytes, fg, ft in cases:
        tg = _timer(fg, sync)
        tt = _timer(ft, torch_sync) if torch else None
        if name.startswith("copy") and tt:
            copy_gbs = 2 * nb / tt / 1e9
        rows.append({"name": name, "gradfuse_s": tg, "torch_s": tt,
                     "gradfuse_gbs": nbytes / tg / 1e9,
                     "torch_gbs": nbytes / tt / 1e9 if tt else None})
    for n in mm:
        for dt, tdt in ((np.float32, "float32"), (np.float64, "float64")):
            if dt == np.float64 and n > 4096:
                continue
            x = DeviceArray.from_numpy(rng.standard_normal((n, n)).astype(dt))
            y = DeviceArray.from_numpy(rng.standard_normal((n, n)).astype(dt))
            flops = 2.0 * n**3
            for label, fg, mk in (
                ("A @ B", lambda x=x, y=y: x @ y, lambda tx, ty: (lambda: tx @ ty)),
                ("A.T @ B", lambda x=x, y=y: x.T @ y, lambda tx, ty: (lambda: tx.t() @ ty)),
            ):
                tg = _timer(fg, sync)
                tt = None
                if torch:
                    tx = torch.from_numpy(x.numpy()).cuda()
                    ty = torch.from_numpy(y.numpy()).cuda()
                    tt = _timer(mk(tx, ty), torch_sync)
                    del tx, ty
                rows.append({"name": f"matmul {label} {n}^3 {tdt}", "gradfuse_s": tg,
                             "torch_s": tt, "gradfuse_tflops": flops / tg / 1e12,
                             "torch_tflops": flops / tt / 1e12 if tt else None})
            del x, y
    print(f"# gradfuse CUDA array ops: {props['name']}, peak DRAM {peak:.0f} GB/s"
          f"{f', torch copy {copy_gbs:.0f} GB/s' if copy_gbs else ''}, torch "
          f"{torch.__version__ if torch else 'not available'}\n")
    print("| case | gradfuse | PyTorch | gradfuse rate | PyTorch rate | % of peak BW "
          "| vs PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        tt = r["torch_s"]
        if "gradfuse_gbs" in r:
            rate = f"{r['gradfuse_gbs']:.0f} GB/s"
            trate = f"{r['torch_gbs']:.0f} GB/s" if tt else "n/a"
            pct = f"{100 * r['gradfuse_gbs'] / peak:.0f}%" if peak else "n/a"
        else:
            rate = f"{r['gradfuse_tflops']:.1f} TFLOP/s"
            trate = f"{r['torch_tflops']:.1f} TFLOP/s" if tt else "n/a"
            pct = "-"
        ratio = f"{tt / r['gradfuse_s']:.2f}x" if tt else "n/a"
        print(f"| {r['name']} | {r['gradfuse_s'] * 1e3:.3f} ms | "
              f"{(tt or 0) * 1e3:.3f} ms | {rate} | {trate} | {pct} | {ratio} |")
    return rows


if __name__ == "__main__":
    run()
    sys.exit(0)

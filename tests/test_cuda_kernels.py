"""CUDA kernels (csrc/cuda/*.cu) against the CPU kernels they mirror, on the GPU.

Every test here needs a GPU and a build with the CUDA kernels (GRADFUSE_CUDA=ON) and skips
elsewhere, except ``test_nvcc_compiles_each_kernel_file``, which only needs nvcc. Device arrays
are gradfuse's DeviceArray when it is importable, else thin wrappers over torch (or CuPy) CUDA
tensors with the same interface (``.ptr .shape .dtype .strides``, ``empty``, ``zeros``,
``from_numpy``, ``numpy``), so the kernels are tested through the public ops of
``gradfuse.cuda.ops``. The CPU reference is the CPU kernel itself (``gradfuse._backend``);
PyTorch CUDA parity where torch sees a GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from gradfuse import _backend as B

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_SOURCES = ["activations", "loss", "norms", "init", "scale", "optim"]
NO_FMAD = {"init", "optim"}  # bitwise parity with the CPU needs no FMA contraction there


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_nvcc_compiles_each_kernel_file(tmp_path):
    """Each csrc/cuda/<family>.cu compiles for sm_90 (CI without a GPU catches CUDA errors)."""
    procs = []
    for name in CUDA_SOURCES:
        # --ptx: the whole front end and NVVM (every C++ and CUDA error) without ptxas, 3x faster
        cmd = ["nvcc", "-std=c++17", "-arch=sm_90", "-I", os.path.join(ROOT, "csrc"), "--ptx",
               os.path.join(ROOT, "csrc", "cuda", name + ".cu"), "-o", str(tmp_path / (name + ".ptx"))]
        if name in NO_FMAD:
            cmd.insert(1, "--fmad=false")
        procs.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    for name, p in procs:
        out = p.communicate()[0].decode(errors="replace")
        assert p.returncode == 0, f"{name}.cu failed to compile:\n{out}"


# ---------------------------------------------------------------- device arrays for the tests

def _kernels_built():
    cu = getattr(B._C, "cuda", None)
    return cu is not None and hasattr(cu, "optim_step")


def _device_class():
    try:
        from gradfuse.cuda.array import DeviceArray  # cudacore's class, once merged

        return DeviceArray
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return _torch_class(torch)
    except Exception:
        pass
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return _cupy_class(cupy)
    except Exception:
        return None


def _sync():
    B._C.cuda.stream_synchronize()


def _torch_class(torch):
    tdt = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
           np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32,
           np.dtype(np.uint8): torch.uint8}

    class TorchArr:
        def __init__(self, t):
            self.t = t

        ptr = property(lambda s: s.t.data_ptr())
        shape = property(lambda s: tuple(s.t.shape))
        dtype = property(lambda s: np.dtype(str(s.t.dtype).replace("torch.", "")))
        strides = property(lambda s: tuple(st * s.t.element_size() for st in s.t.stride()))

        @classmethod
        def empty(cls, shape, dtype):
            return cls(torch.empty(tuple(shape), dtype=tdt[np.dtype(dtype)], device="cuda"))

        @classmethod
        def zeros(cls, shape, dtype):
            t = torch.zeros(tuple(shape), dtype=tdt[np.dtype(dtype)], device="cuda")
            torch.cuda.synchronize()
            return cls(t)

        @classmethod
        def from_numpy(cls, a):
            t = torch.from_numpy(np.ascontiguousarray(a)).to("cuda")
            torch.cuda.synchronize()
            return cls(t)

        def numpy(self):
            _sync()
            return self.t.cpu().numpy()

        def fill(self, v):
            _sync()
            self.t.fill_(v)
            torch.cuda.synchronize()

        def __getitem__(self, k):
            return TorchArr(self.t[k])

    return TorchArr


def _cupy_class(cp):
    class CupyArr:
        def __init__(self, a):
            self.a = a

        ptr = property(lambda s: s.a.data.ptr)
        shape = property(lambda s: tuple(s.a.shape))
        dtype = property(lambda s: s.a.dtype)
        strides = property(lambda s: tuple(s.a.strides))

        @classmethod
        def empty(cls, shape, dtype):
            return cls(cp.empty(tuple(shape), dtype))

        @classmethod
        def zeros(cls, shape, dtype):
            a = cp.zeros(tuple(shape), dtype)
            cp.cuda.runtime.deviceSynchronize()
            return cls(a)

        @classmethod
        def from_numpy(cls, a):
            d = cp.asarray(np.ascontiguousarray(a))
            cp.cuda.runtime.deviceSynchronize()
            return cls(d)

        def numpy(self):
            _sync()
            return cp.asnumpy(self.a)

        def fill(self, v):
            _sync()
            self.a.fill(v)
            cp.cuda.runtime.deviceSynchronize()

        def __getitem__(self, k):
            return CupyArr(self.a[k])

    return CupyArr


DEV = _device_class() if _kernels_built() else None
gpu = pytest.mark.skipif(DEV is None, reason="needs a GPU and a GRADFUSE_CUDA=ON build")

if DEV is not None:
    from gradfuse.cuda import ops
else:
    ops = None


def up(a):
    return DEV.from_numpy(np.ascontiguousarray(a))


def down(d):
    return None if d is None else d.numpy()


def tol(dtype, f32=2e-5, f64=1e-12):
    return dict(rtol=f32, atol=f32) if np.dtype(dtype) == np.float32 else dict(rtol=f64, atol=f64)


DTYPES = [np.float32, np.float64]

# ---------------------------------------------------------------- activations

ACTS = [(0, 0.0, 0.0), (1, 0.0, 0.0), (2, 0.0, 0.0), (3, 0.01, 0.0), (3, -0.2, 0.0),
        (4, 1.0, 0.0), (4, -0.5, 0.0), (5, 0.0, 0.0), (6, 0.0, 0.0), (7, 0.0, 0.0),
        (8, 1.0, 20.0), (8, 2.0, 5.0)]


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,a,b", ACTS)
def test_activation_parity(dtype, op, a, b, rng):
    for n in (1, 7, 1029):
        x = (rng.standard_normal(n + 1) * 4).astype(dtype)
        x[0] = 0.0
        for view in (slice(0, n), slice(1, n + 1)):  # aligned (vector path) and offset by one
            xd = up(x)[view]
            y = ops.activation_forward(op, xd, a, b, None)
            y_cpu = B._C.activation_forward(op, x[view].copy(), a, b, None)
            np.testing.assert_allclose(down(y), y_cpu, **tol(dtype))
            g = rng.standard_normal(n).astype(dtype)
            saved_cpu = y_cpu if B.activation_backward_uses_output(op, a, b) else x[view].copy()
            saved = up(saved_cpu)
            dx = ops.activation_backward(op, up(g), saved, a, b)
            dx_cpu = B._C.activation_backward(op, g, saved_cpu, a, b)
            np.testing.assert_allclose(down(dx), dx_cpu, **tol(dtype, 5e-5))


@pytest.mark.cuda
@gpu
def test_activation_in_place_and_errors(rng):
    x = rng.standard_normal(100).astype(np.float32)
    xd = up(x)
    out = ops.activation_forward(2, xd, 0.0, 0.0, xd)
    assert out is xd
    np.testing.assert_array_equal(down(xd), np.maximum(x, 0))
    with pytest.raises(TypeError, match="input"):
        ops.activation_forward(2, up(x.astype(np.int32)), 0.0, 0.0, None)
    with pytest.raises(ValueError, match="grad_output"):
        ops.activation_backward(2, up(x[:5]), xd, 0.0, 0.0)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((5, 10), -1), ((3, 2000), 1), ((1, 1), 0),
                                       ((4, 7, 5), 1), ((2, 3, 33), 0)])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_parity(dtype, shape, dim, log, rng):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    y = ops.softmax_forward(up(x), dim, log)
    y_cpu = B._C.softmax_forward(x, dim, log)
    np.testing.assert_allclose(down(y), y_cpu, **tol(dtype, 1e-5))
    g = rng.standard_normal(shape).astype(dtype)
    dx = ops.softmax_backward(up(g), up(y_cpu), dim, log)
    np.testing.assert_allclose(down(dx), B._C.softmax_backward(g, y_cpu, dim, log),
                               **tol(dtype, 1e-5))


# ---------------------------------------------------------------- cross entropy

@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", [(1, 1), (37, 10), (5, 1500)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_parity(dtype, n, c, weighted, eps, rng):
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    t = rng.integers(0, c, n).astype(np.int64)
    if n > 2:
        t[1] = -100
    w = rng.uniform(0.5, 2, c).astype(dtype) if weighted else None
    rl, lse, ls, ws = ops.cross_entropy_forward(up(x), up(t), None if w is None else up(w), -100,
                                                eps)
    rl_c, lse_c, ls_c, ws_c = B._C.cross_entropy_forward(x, t, w, -100, eps)
    np.testing.assert_allclose(down(rl), rl_c, **tol(dtype, 1e-5))
    np.testing.assert_allclose(down(lse), lse_c, **tol(dtype, 1e-5))
    np.testing.assert_allclose(ls, ls_c, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert ws == pytest.approx(ws_c, rel=1e-12)
    g = rng.standard_normal(n).astype(dtype)
    for rows, scale in ((None, 0.5), (g, 2.0)):
        dx = ops.cross_entropy_backward(up(x), up(t), None if w is None else up(w), up(lse_c),
                                        None if rows is None else up(rows), scale, -100, eps)
        dx_c = B._C.cross_entropy_backward(x, t, w, lse_c, rows, scale, -100, eps)
        np.testing.assert_allclose(down(dx), dx_c, **tol(dtype, 1e-5))


@pytest.mark.cuda
@gpu
def test_cross_entropy_bad_target_names_position():
    x = np.zeros((4, 3), np.float32)
    t = np.array([0, 1, 7, 2], np.int64)
    with pytest.raises(ValueError, match="position 2"):
        ops.cross_entropy_forward(up(x), up(t), None, -100, 0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.cross_entropy_forward(up(x), up(np.zeros(4, np.int64)), None, -100, 1.5)


# ---------------------------------------------------------------- normalization

@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 1), (33, 7), (9, 100), (5, 2000), (2, 1031),
                                       (3, 4100), (300, 1500)])
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_row_norm_parity(dtype, rows, cols, rms, affine, rng):
    x = (rng.standard_normal((rows, cols)) * 2 + 3).astype(dtype)
    w = rng.standard_normal(cols).astype(dtype) if affine else None
    b = rng.standard_normal(cols).astype(dtype) if affine else None
    y, mean, rstd = ops.row_norm_forward(up(x), w if w is None else up(w),
                                         b if b is None else up(b), 1e-5, rms)
    y_c, mean_c, rstd_c = B._C.row_norm_forward(x, w, b, 1e-5, rms)
    t = tol(dtype, 5e-5, 1e-10)
    np.testing.assert_allclose(down(y), y_c, **t)
    np.testing.assert_allclose(down(rstd), rstd_c, **t)
    if not rms:
        np.testing.assert_allclose(down(mean), mean_c, **t)
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    got = ops.row_norm_backward(up(x), up(dy), w if w is None else up(w),
                                None if rms else up(mean_c), up(rstd_c), rms, True, affine, affine)
    want = B._C.row_norm_backward(x, dy, w, mean_c, rstd_c, rms, True, affine, affine)
    for g_, w_ in zip(got, want):
        if w_ is None:
            assert g_ is None
        else:
            np.testing.assert_allclose(down(g_), w_, **tol(dtype, 2e-4, 1e-9))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 1), (300, 5), (7, 3, 11), (1, 4, 9)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_parity(dtype, shape, training, rng):
    x = (rng.standard_normal(shape) + 5).astype(dtype)
    c = shape[1]
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    rm_d, rv_d = up(rm), up(rv)
    rm_c, rv_c = rm.copy(), rv.copy()
    y, m, r = ops.batch_norm_forward(up(x), up(w), up(b), rm_d, rv_d, training, 0.1, 1e-5)
    y_c, m_c, r_c = B._C.batch_norm_forward(x, w, b, rm_c, rv_c, training, 0.1, 1e-5)
    t = tol(dtype, 5e-5, 1e-10)
    for got, want in ((y, y_c), (m, m_c), (r, r_c), (rm_d, rm_c), (rv_d, rv_c)):
        np.testing.assert_allclose(down(got), want, **t)
    dy = rng.standard_normal(shape).astype(dtype)
    got = ops.batch_norm_backward(up(x), up(dy), up(w), up(m_c), up(r_c), training, True, True,
                                  True)
    want = B._C.batch_norm_backward(x, dy, w, m_c, r_c, training, True, True, True)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(down(g_), w_, **tol(dtype, 2e-4, 1e-9))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,groups", [((2, 6, 5), 3), ((1, 4, 1), 4), ((3, 8, 300), 2),
                                          ((2, 3, 7), 1)])
def test_group_norm_parity(dtype, shape, groups, rng):
    x = (rng.standard_normal(shape) * 2 - 1).astype(dtype)
    c = shape[1]
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    y, m, r = ops.group_norm_forward(up(x), up(w), up(b), groups, 1e-5)
    y_c, m_c, r_c = B._C.group_norm_forward(x, w, b, groups, 1e-5)
    t = tol(dtype, 5e-5, 1e-10)
    for got, want in ((y, y_c), (m, m_c), (r, r_c)):
        np.testing.assert_allclose(down(got), want, **t)
    dy = rng.standard_normal(shape).astype(dtype)
    got = ops.group_norm_backward(up(x), up(dy), up(w), up(m_c), up(r_c), groups, True, True,
                                  True)
    want = B._C.group_norm_backward(x, dy, w, m_c, r_c, groups, True, True, True)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(down(g_), w_, **tol(dtype, 2e-4, 1e-9))


@pytest.mark.cuda
@gpu
def test_norm_errors_name_argument():
    x = up(np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="weight"):
        ops.row_norm_forward(x, up(np.ones(5, np.float32)), None, 1e-5, False)
    with pytest.raises(ValueError, match="eps"):
        ops.row_norm_forward(x, None, None, -1.0, False)
    with pytest.raises(ValueError, match="num_groups"):
        ops.group_norm_forward(up(np.ones((2, 6, 3), np.float32)), None, None, 4, 1e-5)
    with pytest.raises(ValueError, match="more than 1 value"):
        ops.batch_norm_forward(up(np.ones((1, 3), np.float32)), None, None, None, None, True,
                               0.1, 1e-5)


# ---------------------------------------------------------------- random fills: the CPU's bits

def bits(a):
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 31, 64, 65, 1000, 100003])
@pytest.mark.parametrize("kind", ["uniform", "normal", "bernoulli"])
def test_fill_bitwise_equal_to_cpu(dtype, n, kind):
    seed, offset = 0x1234_5678_9ABC, (1 << 32) - 48  # the counter's carry into the high word
    args = {"uniform": (-0.3, 1.7), "normal": (0.5, 2.0), "bernoulli": (0.3,)}[kind]
    cpu = np.empty(n, dtype)
    nb_c = getattr(B._C, kind + "_fill")(cpu, seed, offset, *args)
    dev = DEV.empty((n,), dtype)
    nb = getattr(ops, kind + "_fill")(dev, seed, offset, *args)
    assert nb == nb_c
    np.testing.assert_array_equal(bits(down(dev)), bits(cpu))


@pytest.mark.cuda
@gpu
def test_fill_errors_match_cpu():
    d = DEV.empty((4,), np.float32)
    with pytest.raises(ValueError, match="std"):
        ops.normal_fill(d, 0, 0, 0.0, -1.0)
    with pytest.raises(ValueError, match="from=2"):
        ops.uniform_fill(d, 0, 0, 2.0, 1.0)
    with pytest.raises(ValueError, match="p"):
        ops.bernoulli_fill(d, 0, 0, 1.5)


@pytest.mark.cuda
@gpu
def test_philox_words_match_cpu():
    out = DEV.empty((1000, 4), np.int32)  # the words' bits (torch has no uint32 numpy path)
    B._C.cuda.philox_words(7, (1 << 32) - 3, 1000, out.ptr)
    np.testing.assert_array_equal(down(out).view(np.uint32),
                                  B._C.philox_words(7, (1 << 32) - 3, 1000))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("n", [1, 77, 4096, 10001])
def test_dropout_bitwise_equal_to_cpu(dtype, p, n, rng):
    x = rng.standard_normal(n).astype(dtype)
    out, mask, nb = ops.dropout_forward(up(x), 99, 640, p, True)
    out_c, mask_c, nb_c = B._C.dropout_forward(x, 99, 640, p, True)
    assert nb == nb_c
    np.testing.assert_array_equal(down(mask), mask_c)
    np.testing.assert_array_equal(bits(down(out)), bits(out_c))
    scale = 0.0 if p >= 1 else 1 / (1 - p)
    g = rng.standard_normal(n).astype(dtype)
    dx = ops.dropout_backward(up(g), up(mask_c), scale)
    np.testing.assert_array_equal(bits(down(dx)), bits(B._C.dropout_backward(g, mask_c, scale)))
    out2, mask2, _ = ops.dropout_forward(up(x), 99, 640, p, False)
    assert mask2 is None
    np.testing.assert_array_equal(bits(down(out2)), bits(out_c))


def _device_tensors():
    import gradfuse as gf

    if not gf.cuda.is_available():
        pytest.skip(f"cuda: {gf.cuda.unavailable_reason()}")
    return gf


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_init_of_a_device_tensor_has_the_cpu_bits(dtype):
    """gf.nn.init / gf.random fills of a Tensor on the GPU: same generator state, same bits as
    the same fill of a CPU tensor (and the generator advances alike)."""
    gf = _device_tensors()
    init = gf.nn.init
    cases = [(init.normal_, dict(std=0.02)), (init.uniform_, dict(a=-1.0, b=1.0)),
             (init.trunc_normal_, dict(std=0.5)), (init.kaiming_uniform_, {}),
             (init.xavier_normal_, {}), (gf.random.bernoulli_, dict(p=0.3))]
    for fn, kw in cases:
        c = gf.zeros(37, 19, dtype=dtype)
        d = gf.zeros(37, 19, dtype=dtype, device="cuda")
        gc, gd = gf.Generator(5), gf.Generator(5)
        fn(c, generator=gc, **kw)
        fn(d, generator=gd, **kw)
        assert d.device == "cuda:0"
        np.testing.assert_array_equal(bits(d.data.numpy()), bits(c.data), err_msg=fn.__name__)
        assert gc.offset == gd.offset
    # a strided (transposed) device tensor is filled in C order through a temporary
    c = gf.zeros(8, 6, dtype=dtype)
    d = gf.zeros(6, 8, dtype=dtype, device="cuda")
    init.normal_(c, generator=gf.Generator(9))
    init.normal_(d.T, generator=gf.Generator(9))
    np.testing.assert_array_equal(bits(d.data.numpy().T.copy()), bits(c.data))


@pytest.mark.cuda
@gpu
def test_dropout_of_a_device_tensor_has_the_cpu_mask(rng):
    gf = _device_tensors()
    x = rng.standard_normal((64, 33)).astype(np.float32)
    c = gf.tensor(x, requires_grad=True)
    d = gf.tensor(x, requires_grad=True, device="cuda")
    yc = gf.nn.functional.dropout(c, 0.25, generator=gf.Generator(3))
    yd = gf.nn.functional.dropout(d, 0.25, generator=gf.Generator(3))
    np.testing.assert_array_equal(bits(yd.data.numpy()), bits(yc.data))
    yc.sum().backward()
    yd.sum().backward()
    np.testing.assert_array_equal(bits(d.grad.data.numpy()), bits(c.grad.data))


# ---------------------------------------------------------------- optimizers

# scalars: lr, wd, eps, beta1, beta2, momentum, dampening, alpha, step_size, bc2_sqrt, c1, c2,
# grad_scale, reserved; flags: maximize 1, nesterov 2, first 4, amsgrad 8, decoupled 16,
# centered 32, rectify 64
SGD, ADAM, RMSPROP, ADAGRAD, NADAM, RADAM, LION = range(7)

CONFIGS = [
    ("sgd", SGD, dict(lr=0.1), 0),
    ("sgd_wd_momentum_nesterov", SGD, dict(lr=0.05, wd=0.01, momentum=0.9), 2),
    ("sgd_dampening_maximize", SGD, dict(lr=0.05, momentum=0.8, dampening=0.3), 1),
    ("adam", ADAM, dict(lr=1e-3, eps=1e-8, beta1=0.9, beta2=0.999), 0),
    ("adamw_amsgrad", ADAM, dict(lr=1e-3, wd=0.01, eps=1e-8, beta1=0.9, beta2=0.999), 8 | 16),
    ("adam_l2", ADAM, dict(lr=1e-3, wd=0.1, eps=1e-8, beta1=0.6, beta2=0.99), 0),
    ("rmsprop", RMSPROP, dict(lr=1e-2, eps=1e-8, alpha=0.99), 0),
    ("rmsprop_centered_momentum", RMSPROP, dict(lr=1e-2, eps=1e-8, alpha=0.9, momentum=0.5,
                                                wd=0.01), 32),
    ("adagrad", ADAGRAD, dict(lr=0.1, eps=1e-10, wd=0.001), 0),
    ("nadam", NADAM, dict(lr=2e-3, eps=1e-8, beta1=0.9, beta2=0.999), 0),
    ("nadamw", NADAM, dict(lr=2e-3, eps=1e-8, beta1=0.9, beta2=0.999, wd=0.01), 16),
    ("radam", RADAM, dict(lr=1e-3, eps=1e-8, beta1=0.9, beta2=0.999), 0),
    ("radam_l2", RADAM, dict(lr=1e-3, eps=1e-8, beta1=0.9, beta2=0.999, wd=0.01), 0),
    ("lion", LION, dict(lr=1e-4, beta1=0.9, beta2=0.99, wd=0.1), 0),
]


def scalars_for(kind, hp, t, flags, grad_scale=1.0):
    lr, b1, b2 = hp.get("lr", 0.0), hp.get("beta1", 0.0), hp.get("beta2", 0.0)
    step_size, bc2, c1, c2 = 0.0, 1.0, 0.0, 0.0
    if kind == ADAM:
        step_size, bc2 = lr / (1 - b1**t), (1 - b2**t) ** 0.5
    elif kind == ADAGRAD:
        step_size = lr
    elif kind == NADAM:
        mu, mu1 = b1 * (1 - 0.5 * 0.96 ** (t * 0.004)), b1 * (1 - 0.5 * 0.96 ** ((t + 1) * 0.004))
        prod = mu ** t  # a plausible running product (both devices get the same scalars)
        bc2, c1, c2 = 1 - b2**t, -lr * (1 - mu) / (1 - prod), -lr * mu1 / (1 - prod * mu1)
    elif kind == RADAM:
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        c1, bc2 = 1 - b1**t, (1 - b2**t) ** 0.5
        if rho > 5:
            flags |= 64
            c2 = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5
    if kind == SGD and t == 1:
        flags |= 4
    sc = [lr, hp.get("wd", 0.0), hp.get("eps", 0.0), b1, b2, hp.get("momentum", 0.0),
          hp.get("dampening", 0.0), hp.get("alpha", 0.0), step_size, bc2, c1, c2, grad_scale, 0.0]
    return sc, flags


def states_for(kind, hp, flags):
    if kind == SGD:
        return 1 if hp.get("momentum", 0) else 0
    if kind in (ADAM,):
        return 3 if flags & 8 else 2
    if kind == RMSPROP:
        return 1 + (1 if hp.get("momentum", 0) else 0) + (1 if flags & 32 else 0)
    return {ADAGRAD: 1, NADAM: 2, RADAM: 2, LION: 1}[kind]


def ulps(a, b):
    ia = bits(a).astype(np.int64) if a.dtype == np.float32 else bits(a).view(np.int64)
    ib = bits(b).astype(np.int64) if b.dtype == np.float32 else bits(b).view(np.int64)
    return int(np.max(np.abs(ia - ib))) if a.size else 0


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,kind,hp,flags", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_optimizer_trajectory_100_steps(dtype, name, kind, hp, flags, rng):
    """100 steps of the same gradients on both devices give the same bits: the update rounds
    operation for operation as the CPU's (explicit FMAs, optim.cu built with --fmad=false,
    IEEE division and sqrt; measured 0 ulp for every config on an H100)."""
    n = 1003  # a vector body and a scalar tail
    p = rng.standard_normal(n).astype(dtype)
    ns = states_for(kind, hp, flags)
    # RMSprop's momentum buffer lives in state1 and grad_avg in state2 whether or not the other
    # is present; Adagrad's sum starts at its initial accumulator value (0 here)
    cpu_states = [np.zeros(n, dtype) for _ in range(3)]
    if kind == RMSPROP:
        used = [True, bool(hp.get("momentum", 0)), bool(flags & 32)]
    else:
        used = [i < ns for i in range(3)]
    cpu_states = [s if u else None for s, u in zip(cpu_states, used)]
    dev_states = [None if s is None else up(s) for s in cpu_states]
    pd = up(p)
    pc = p.copy()
    gd = DEV.empty((n,), dtype)
    for t in range(1, 101):
        g = (rng.standard_normal(n) * (1 + t % 3)).astype(dtype)
        sc, fl = scalars_for(kind, hp, t, flags, grad_scale=0.5 if t % 10 == 0 else 1.0)
        B._C.optim_step(kind, pc, g, *cpu_states, sc, fl)
        gd = up(g)
        ops.optim_step(kind, pd, gd, *dev_states, sc, fl)
    got = down(pd)
    assert np.all(np.isfinite(got))
    assert ulps(got, pc) == 0, f"{name}: {ulps(got, pc)} ulp apart after 100 steps"
    for s_d, s_c in zip(dev_states, cpu_states):
        if s_c is not None:
            assert ulps(down(s_d), s_c) == 0


@pytest.mark.cuda
@gpu
def test_arena_step_guard_and_clip(rng):
    n = 517
    p = rng.standard_normal(n).astype(np.float32)
    pd, gd = up(p), up(rng.standard_normal(n).astype(np.float32))
    m, v = DEV.zeros((n,), np.float32), DEV.zeros((n,), np.float32)
    params = [SimpleNamespace(grad=gd, data=pd)]
    sc, fl = scalars_for(ADAM, dict(lr=1e-2, eps=1e-8, beta1=0.9, beta2=0.999), 1, 0)
    step = ops.ArenaStep(ADAM, pd, gd, m, v, None, sc, fl, params, [gd], [pd])
    assert step.grads_finite() == 1
    assert step(sc, fl) is True
    p1 = down(pd)
    assert not np.array_equal(p1, p)
    # non-finite gradient: the fused guard skips the whole update, on the device
    g_bad = rng.standard_normal(n).astype(np.float32)
    g_bad[100] = np.inf
    gd2 = up(g_bad)
    params2 = [SimpleNamespace(grad=gd2, data=pd)]
    step2 = ops.ArenaStep(ADAM, pd, gd2, m, v, None, sc, fl, params2, [gd2], [pd])
    assert step2.grads_finite() == 0
    flag = step2.step_if_finite(sc, fl)
    assert int(down(flag)[0]) == 1
    np.testing.assert_array_equal(down(pd), p1)
    # a rebound view: no update, False
    params2[0].data = up(p)
    assert step2(sc, fl) is False and step2.grads_finite() == -1
    # clip coefficient on the device equals the CPU's formula
    g = rng.standard_normal(n).astype(np.float32) * 10
    norm, coef = ops.clip_coef([up(g[:300]), up(g[300:])], 1.0, 2.0)
    want = float(np.sqrt(np.sum(g.astype(np.float64) ** 2)))
    assert down(norm)[0] == pytest.approx(want, rel=1e-12)
    assert down(coef)[0] == pytest.approx(min(1.0 / (want + 1e-6), 1.0), rel=1e-12)
    with pytest.raises(ValueError, match="state"):
        ops.ArenaStep(ADAM, pd, gd, m, None, None, sc, fl, params, [gd], [pd])


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_arena_reductions(dtype, rng):
    x = (rng.standard_normal(200_001) * 3).astype(dtype)
    xd = up(x)
    for p in (2.0, 1.0, float("inf"), 3.0):
        assert ops.arena_norm_reduce(xd, p) == pytest.approx(B._C.arena_norm_reduce(x, p),
                                                             rel=1e-12)
    assert ops.arena_all_finite(xd)
    y = x.copy()
    y[150_000] = np.nan
    yd = up(y)
    assert not ops.arena_all_finite(yd)
    for p in (2.0, float("inf")):
        assert np.isnan(ops.arena_norm_reduce(yd, p))
    ops.arena_scale(xd, 0.25)
    np.testing.assert_array_equal(down(xd), x * dtype(0.25))
    ops.arena_clamp(yd, -1.0, 1.0)
    want = np.clip(y, -1, 1)
    np.testing.assert_array_equal(down(yd), want)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_lamb_step_parity(dtype, rng):
    sizes = np.array([5, 70_000, 1, 300], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes + 3)[:-1]]).astype(np.int64)
    n = int(offsets[-1] + sizes[-1] + 2)
    p = rng.standard_normal(n).astype(dtype)
    pc, mc, vc = p.copy(), np.zeros(n, dtype), np.zeros(n, dtype)
    pd, md, vd = up(p), DEV.zeros((n,), dtype), DEV.zeros((n,), dtype)
    for t in range(1, 11):
        g = rng.standard_normal(n).astype(dtype)
        sc = [1e-3, 0.01, 1e-6, 0.9, 0.999, 0, 0, 0, 0, 1, 1 / (1 - 0.9**t), 1 / (1 - 0.999**t),
              1.0, 0]
        B._C.lamb_step(pc, g, mc, vc, offsets, sizes, sc, 0)
        ops.lamb_step(pd, up(g), md, vd, offsets, sizes, sc, 0)
    # m and v round as the CPU's; the trust ratio's sums differ in their order (last bits)
    np.testing.assert_array_equal(bits(down(md)), bits(mc))
    np.testing.assert_allclose(down(pd), pc, **tol(dtype, 1e-5, 1e-12))


OPTIMIZERS = [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
    ("RMSprop", dict(lr=1e-2, centered=True, momentum=0.5)),
    ("Adagrad", dict(lr=0.1)),
    ("NAdam", dict(lr=1e-2)),
    ("RAdam", dict(lr=1e-2)),
    ("Lion", dict(lr=1e-3, weight_decay=0.1)),
    ("LAMB", dict(lr=1e-2, weight_decay=0.01)),
]


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("name,kw", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_optimizer_on_device_params_matches_cpu(name, kw, rng):
    """gf.optim over parameters on the GPU: the arena, gradients and state live on the device
    and every step is the CUDA kernel; 30 steps equal the CPU optimizer's (bitwise, except
    LAMB's trust ratio sums), state_dict() is the CPU's (host arrays) and load_state_dict
    continues identically."""
    gf = _device_tensors()
    shapes = [(7, 5), (5,), (3, 3, 2), (1,)]
    init = [rng.standard_normal(sh).astype(np.float32) for sh in shapes]
    pc = [gf.tensor(a, requires_grad=True) for a in init]
    pd = [gf.tensor(a, requires_grad=True, device="cuda") for a in init]
    oc = getattr(gf.optim, name)(pc, **kw)
    od = getattr(gf.optim, name)(pd, **kw)
    exact = name != "LAMB"

    def same(c, d):
        if exact:
            np.testing.assert_array_equal(bits(np.asarray(d)), bits(np.asarray(c)))
        else:
            np.testing.assert_allclose(np.asarray(d), np.asarray(c), rtol=1e-5, atol=1e-7)

    def run(steps):
        for _ in range(steps):
            grads = [rng.standard_normal(sh).astype(np.float32) for sh in shapes]
            for p, g in zip(pc, grads):
                p.grad = gf.tensor(g)
            for p, g in zip(pd, grads):
                p.grad = gf.tensor(g, device="cuda")
            oc.step()
            od.step()

    run(30)
    for c, d in zip(pc, pd):
        assert type(d.data).__name__ == "DeviceArray"
        same(c.data, d.data.numpy())
    sc, sd = oc.state_dict(), od.state_dict()
    assert sc["state"].keys() == sd["state"].keys()
    for i, st in sc["state"].items():
        for k, v in st.items():
            assert isinstance(sd["state"][i][k], np.ndarray)  # on the host, PyTorch's layout
            same(v, sd["state"][i][k])
    pd2 = [gf.tensor(d.data.numpy(), requires_grad=True, device="cuda") for d in pd]
    od2 = getattr(gf.optim, name)(pd2, **kw)
    od2.load_state_dict(sd)
    pd, od = pd2, od2
    run(5)
    for c, d in zip(pc, pd):
        same(c.data, d.data.numpy())


@pytest.mark.cuda
@gpu
def test_training_on_device_with_clip_and_guard(rng):
    """backward writes the gradients into the device arena; clip_grad_norm_ and the non-finite
    guard work on device parameters (a poisoned gradient skips the step, as on the CPU)."""
    gf = _device_tensors()
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    models = []
    for dev in ("cpu", "cuda"):
        gf.manual_seed(0)
        m = gf.nn.Linear(8, 3)
        models.append(m.to(dev) if dev == "cuda" else m)
    opts = [gf.optim.Adam(m.parameters(), lr=1e-2, skip_nonfinite=True) for m in models]
    for _ in range(5):
        norms = []
        for m, o, dev in zip(models, opts, ("cpu", "cuda")):
            o.zero_grad()
            xx = gf.tensor(x) if dev == "cpu" else gf.tensor(x, device="cuda")
            yy = gf.tensor(y) if dev == "cpu" else gf.tensor(y, device="cuda")
            loss = gf.nn.functional.cross_entropy(m(xx), yy)
            loss.backward()
            norms.append(o.clip_grad_norm_(0.5))
            assert o.step() is True
        assert norms[1] == pytest.approx(norms[0], rel=1e-5)
    for pc_, pd_ in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(pd_.data.numpy(), pc_.data, rtol=1e-4, atol=1e-5)
    # a non-finite gradient: the device step is skipped and the parameters stay
    o, m = opts[1], models[1]
    before = [p.data.numpy() for p in m.parameters()]
    for p in m.parameters():
        g = np.zeros(p.shape, np.float32)
        g.flat[0] = np.nan
        p.grad = gf.tensor(g, device="cuda")
    assert o.step() is False and o.last_step_skipped
    for p, b in zip(m.parameters(), before):
        np.testing.assert_array_equal(p.data.numpy(), b)


# ---------------------------------------------------------------- scalers

@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clip", [False, True])
def test_affine_columns_parity(dtype, clip, rng):
    X = rng.standard_normal((301, 7)).astype(dtype)
    shift, mul, add = rng.standard_normal(7), rng.uniform(0.5, 2, 7), rng.standard_normal(7)
    out, nan, inf = ops.affine_columns(up(X), shift, mul, add, clip, -0.5, 0.5)
    out_c, nan_c, inf_c = B._C.affine_columns(X, shift, mul, add, clip, -0.5, 0.5)
    np.testing.assert_allclose(down(out), out_c, **tol(dtype, 1e-6, 1e-14))
    assert (nan, inf) == (nan_c, inf_c) == (False, False)
    X[3, 2], X[5, 1] = np.nan, -np.inf
    _, nan, inf = ops.affine_columns(up(X), shift, mul, add, clip, -0.5, 0.5)
    assert (nan, inf) == (True, True)


@pytest.mark.cuda
@gpu
def test_image_affine_parity(rng):
    x = rng.integers(0, 256, (3, 4, 5 * 6), dtype=np.uint8)
    shift, mul, add = rng.uniform(0, 255, 4), rng.uniform(0.001, 0.01, 4), rng.standard_normal(4)
    out = ops.image_affine(up(x), 3, 4, 30, shift, mul, add)
    np.testing.assert_allclose(down(out), B._C.image_affine(x, 3, 4, 30, shift, mul, add),
                               rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- PyTorch CUDA parity

def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


@pytest.mark.cuda
@gpu
def test_torch_cuda_parity_activations_norms(rng):
    torch = _torch_cuda()
    F = torch.nn.functional
    x = (rng.standard_normal((64, 257)) * 3).astype(np.float32)
    xt = torch.from_numpy(x).cuda()
    cases = [(0, 0, 0, torch.sigmoid), (1, 0, 0, torch.tanh), (2, 0, 0, F.relu),
             (3, 0.01, 0, lambda t: F.leaky_relu(t, 0.01)), (4, 1.0, 0, F.elu),
             (5, 0, 0, F.gelu), (6, 0, 0, lambda t: F.gelu(t, approximate="tanh")),
             (7, 0, 0, F.silu), (8, 1.0, 20.0, F.softplus)]
    for op, a, b, f in cases:
        y = ops.activation_forward(op, up(x), a, b, None)
        np.testing.assert_allclose(down(y), f(xt).cpu().numpy(), rtol=2e-5, atol=2e-6)
    w, bb = rng.standard_normal(257).astype(np.float32), rng.standard_normal(257).astype(np.float32)
    y, _, _ = ops.row_norm_forward(up(x), up(w), up(bb), 1e-5, False)
    ref = F.layer_norm(xt, (257,), torch.from_numpy(w).cuda(), torch.from_numpy(bb).cuda(), 1e-5)
    np.testing.assert_allclose(down(y), ref.cpu().numpy(), rtol=1e-4, atol=1e-4)
    y, _, _ = ops.batch_norm_forward(up(x), up(w), up(bb), None, None, True, 0.1, 1e-5)
    ref = F.batch_norm(xt, None, None, torch.from_numpy(w).cuda(), torch.from_numpy(bb).cuda(),
                       True, 0.1, 1e-5)
    np.testing.assert_allclose(down(y), ref.cpu().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@gpu
def test_torch_cuda_parity_adam(rng):
    torch = _torch_cuda()
    n = 4099
    p0 = rng.standard_normal(n).astype(np.float32)
    pt = torch.nn.Parameter(torch.from_numpy(p0.copy()).cuda())
    opt = torch.optim.Adam([pt], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, fused=True)
    pd, m, v = up(p0), DEV.zeros((n,), np.float32), DEV.zeros((n,), np.float32)
    hp = dict(lr=1e-3, eps=1e-8, beta1=0.9, beta2=0.999)
    for t in range(1, 101):
        g = rng.standard_normal(n).astype(np.float32)
        pt.grad = torch.from_numpy(g).cuda()
        opt.step()
        sc, fl = scalars_for(ADAM, hp, t, 0)
        ops.optim_step(ADAM, pd, up(g), m, v, None, sc, fl)
    np.testing.assert_allclose(down(pd), pt.detach().cpu().numpy(), rtol=1e-5, atol=1e-6)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))

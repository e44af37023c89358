"""The CUDA backend's core: DeviceArray, device tensors, Module.to, the allocator, the build.

Tests taking the ``dev`` fixture run twice: against ``fake_cuda`` (a numpy stand-in for the
compiled ``_C.cuda``, so the CPU-only CI checks every Python-side path: strides,
broadcasting, dtype promotion, reductions, cuBLAS operand layouts, autograd, device errors)
and, marked ``cuda``, against the real kernels where a GPU is present (skipped elsewhere).
Tests marked ``cuda`` alone need the GPU.
"""

import importlib
import pathlib
import shutil
import subprocess

import fake_cuda
import numpy as np
import pytest

import gradfuse as gf
from gradfuse import _backend
from gradfuse.cuda import DeviceArray

tensor_mod = importlib.import_module("gradfuse.tensor")

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(params=["fake", pytest.param("cuda", marks=pytest.mark.cuda)])
def dev(request, monkeypatch):
    if request.param == "fake":
        monkeypatch.setattr(_backend._C, "cuda", fake_cuda, raising=False)
        monkeypatch.setattr(gf.cuda, "_state", {})
        monkeypatch.setattr(tensor_mod, "_CHECK_DEVICES", True)
    return request.param


def up(a):
    return DeviceArray.from_numpy(np.asarray(a))


def close(d, want, rtol=1e-6, atol=1e-6):
    assert isinstance(d, DeviceArray), type(d)
    got = d.numpy()
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- without a GPU


def test_unavailable_reason_and_clear_errors():
    if gf.cuda.is_available():
        assert gf.cuda.unavailable_reason() == ""
        return
    why = gf.cuda.unavailable_reason()
    assert why and gf.cuda.device_count() == 0
    x = gf.ones(2, 3)
    with pytest.raises(ValueError, match="'cuda' is not available") as e:
        x.to("cuda")
    assert why in str(e.value)
    with pytest.raises(ValueError, match="not available"):
        gf.zeros(3, device="cuda:0")
    state = gf.get_rng_state()
    with pytest.raises(ValueError, match="not available"):
        gf.randn(3, device="cuda")
    assert np.array_equal(gf.get_rng_state(), state)  # refused before drawing
    with pytest.raises(ValueError, match="not available"):
        gf.nn.Linear(2, 2).cuda()
    with pytest.raises(RuntimeError, match="cuda"):
        gf.cuda.synchronize()
    # the cpu is unchanged
    assert x.to("cpu") is x and x.cpu() is x and x.device == "cpu"


def test_device_objects():
    d = gf.device("cuda:0")
    assert (d.type, d.index) == ("cuda", 0) and str(d) == "cuda:0"
    assert d == "cuda" and d == gf.device("cuda", 0) and d != "cpu"
    assert gf.device("cpu") == "cpu" and repr(gf.device("cpu")) == "device(type='cpu')"
    assert gf.ones(1).device == gf.device("cpu")
    with pytest.raises(ValueError, match="device"):
        gf.device("tpu")
    with pytest.raises(ValueError, match="index"):
        gf.device("cuda:x")
    with pytest.raises(TypeError, match="device"):
        gf.device(3)


def test_cuda_sources_compile_with_nvcc(tmp_path):
    """The runtime and array kernels go through nvcc's CUDA front end (no GPU needed): a CUDA
    syntax, type or API error cannot land. ``-cuda`` stops before code generation, the slow
    part. The kernel families' .cu files take about 30 s more of front end on this machine, so
    they are left to .ci/run, which builds the whole extension with GRADFUSE_CUDA=ON before the
    tests. cuBLAS headers come from the nvidia-cublas wheel when the toolkit has none."""
    import importlib.util
    import os
    from concurrent.futures import ThreadPoolExecutor

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed")
    inc = []
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else []:
        for sub in ("cu13", "cublas", "cu12"):
            p = pathlib.Path(root, sub, "include")
            if (p / "cublas_v2.h").exists():
                inc += ["-I", str(p)]
    sources = [ROOT / "csrc" / "cuda" / name for name in ("runtime.cu", "array.cu")]
    needs_cublas = [s for s in sources if "cublas" in s.read_text()]
    if needs_cublas and not inc and not pathlib.Path("/usr/local/cuda/include/cublas_v2.h").exists():
        pytest.skip("no cuBLAS headers (pip install nvidia-cublas)")

    def compile_one(src):
        return src, subprocess.run(
            [nvcc, "-std=c++17", "-arch=sm_90", "-fmad=false", "--extended-lambda", "-cuda",
             "-I", str(ROOT / "csrc"), *inc, str(src), "-o", str(tmp_path / (src.stem + ".ii"))],
            capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for src, r in pool.map(compile_one, sources):
            assert r.returncode == 0, f"{src.name}:\n{r.stderr}"


# --------------------------------------------------------------------------- DeviceArray


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5, 2)])
def test_round_trip(dev, dtype, shape):
    a = (np.arange(int(np.prod(shape))) % 5).reshape(shape).astype(dtype)
    d = up(a)
    assert d.shape == shape and d.dtype == dtype and d.device == "cuda:0" and d.ndim == len(shape)
    assert d.nbytes == a.nbytes and (d.strides == a.strides or a.size == 0)
    np.testing.assert_array_equal(d.numpy(), a)
    np.testing.assert_array_equal(d.copy().numpy(), a)


def test_uint32_is_held_and_copied_but_not_computed_on(dev):
    a = np.array([[0, 1, 2**32 - 1], [7, 2**31, 5]], np.uint32)
    d = up(a)
    np.testing.assert_array_equal(d.numpy(), a)
    np.testing.assert_array_equal(d.T.copy().numpy(), a.T)
    np.testing.assert_array_equal(d[:, ::2].astype(np.uint32).numpy(), a[:, ::2])
    with pytest.raises(TypeError, match="uint32 is not supported"):
        d + 1
    with pytest.raises(TypeError, match="uint32 is not supported"):
        d.astype(np.float32)


def test_array_protocol_is_explicit(dev):
    d = up(np.ones(3, np.float32))
    with pytest.raises(TypeError, match=r"\.numpy\(\)"):
        np.asarray(d)
    with pytest.raises(TypeError, match="numpy.linalg.qr|qr"):
        np.linalg.qr(up(np.eye(3)))
    with pytest.raises(TypeError, match="cumsum.*not supported on cuda"):
        np.cumsum(d)
    with pytest.raises(TypeError, match="float16"):
        up(np.ones(2, np.float16))


def test_views_share_memory_like_numpy(dev, rng):
    a = rng.standard_normal((4, 6, 5)).astype(np.float32)
    d = up(a)
    for idx in [(1,), (slice(None), 2), (Ellipsis, -1), (slice(1, 4), slice(None, None, 2)),
                (slice(None, None, -1),), (None, 2, slice(None), None), (slice(3, 1),),
                (-1, slice(None, None, -2), 3)]:
        close(d[idx], a[idx], 0, 0)
    close(d.T, a.T, 0, 0)
    close(d.transpose(1, 0, 2), a.transpose(1, 0, 2), 0, 0)
    close(d.swapaxes(0, 2)[1:, ::2], a.swapaxes(0, 2)[1:, ::2], 0, 0)
    close(d.reshape(-1, 5), a.reshape(-1, 5), 0, 0)
    close(d.transpose(1, 0, 2).reshape(6, 20), a.transpose(1, 0, 2).reshape(6, 20), 0, 0)
    close(d[:, ::2].reshape(4, 15), a[:, ::2].reshape(4, 15), 0, 0)  # strided: no-copy view
    close(np.moveaxis(d, 0, -1), np.moveaxis(a, 0, -1), 0, 0)
    m = rng.standard_normal((70, 45))  # the tiled transpose: edges off the 32 x 32 tiles
    close(up(m).T.copy(), m.T.copy(), 0, 0)
    close(up(m)[3:, 1:40].T.astype(np.float32), m[3:, 1:40].T.astype(np.float32), 0, 0)
    close((up(m) > 0).T.copy(), (m > 0).T.copy(), 0, 0)
    close(up(m).T.astype(np.bool_), m.T.astype(np.bool_), 0, 0)
    close(np.expand_dims(d, 1), np.expand_dims(a, 1), 0, 0)
    close(np.squeeze(d[:1], 0), a[0], 0, 0)
    v = d[1]
    v[...] = 7.0  # a view writes through to its base
    a[1] = 7.0
    close(d, a, 0, 0)
    d[:, 0] = up(np.arange(5, dtype=np.float32))  # broadcast assignment into a strided view
    a[:, 0] = np.arange(5)
    close(d, a, 0, 0)
    with pytest.raises(IndexError, match="out of bounds"):
        d[4]
    with pytest.raises(IndexError, match="too many indices"):
        d[0, 0, 0, 0]
    with pytest.raises(ValueError, match="reshape"):
        d.reshape(7, -1)


BINARY = [np.add, np.subtract, np.multiply, np.true_divide, np.maximum, np.minimum, np.power,
          np.equal, np.not_equal, np.less, np.less_equal, np.greater, np.greater_equal]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", BINARY, ids=lambda f: f.__name__)
def test_binary_broadcasting(dev, rng, op, dtype):
    a = rng.uniform(0.5, 2, (3, 1, 5)).astype(dtype)
    b = rng.uniform(0.5, 2, (4, 5)).astype(dtype)
    b[0, 0] = a[0, 0, 0]
    tol = 1e-6 if dtype == np.float32 else 1e-12
    close(op(up(a), up(b)), op(a, b), tol, tol)
    close(op(up(a), 1.5), op(a, 1.5), tol, tol)  # a Python scalar keeps the array's dtype
    c = np.broadcast_to(b, (3, 4, 5)).copy()
    close(op(up(c), up(c[::-1].copy())), op(c, c[::-1]), tol, tol)  # same shape and dtype
    close(op(2, up(b)), op(2, b), tol, tol)
    close(op(up(a)[:, :, ::2], up(b).T[::2].T[:, ::1]), op(a[:, :, ::2], b.T[::2].T), tol, tol)


def test_dtype_promotion_and_in_place(dev):
    i = np.arange(6, dtype=np.int64).reshape(2, 3)
    f = np.linspace(0, 1, 3).astype(np.float32)
    close(up(i) + up(f), i + f)  # int64 + float32 -> float64, as numpy
    close(up(i) * 2, i * 2, 0, 0)
    close(up(i) / 2, i / 2)  # true division of ints: float64
    close(up(i) + 0.5, i + 0.5)
    close(np.true_divide(up(i), 4, dtype=np.float32), np.true_divide(i, 4, dtype=np.float32))
    close(up(f).astype(np.float64) + up(f), f.astype(np.float64) + f)
    close(up(i) ** 2, i**2, 0, 0)
    d, a = up(f), f.copy()
    d += 1
    a += 1
    d *= up(f)
    a *= f
    close(d, a)
    with pytest.raises(TypeError, match="Cannot cast"):
        np.add(up(f), 1.5, out=up(i), casting="same_kind")
    m = up(np.array([True, False, True]))
    close(m & up(np.array([True, True, False])), np.array([True, False, False]), 0, 0)
    close(~m, np.array([False, True, False]), 0, 0)
    close(m.astype(np.float32) * 3, np.array([3.0, 0, 3], np.float32))


UNARY = [np.negative, np.exp, np.log, np.sqrt, np.abs, np.sign, np.tanh, np.trunc, np.floor,
         np.ceil, np.reciprocal, np.square, np.log1p, np.expm1, np.sin, np.cos, np.isfinite,
         np.isnan, np.isinf]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", UNARY, ids=lambda f: f.__name__)
def test_unary(dev, op, dtype):
    a = np.array([[-2.5, -1.0, -0.0, 0.0], [0.3, 1.7, np.inf, np.nan]], dtype)
    with np.errstate(all="ignore"):
        want, want_t = op(a), op(a.T)
    tol = 2e-6 if dtype == np.float32 else 1e-14
    close(op(up(a)), want, tol, tol)
    close(op(up(a).T), want_t, tol, tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2), (1, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(dev, rng, dtype, axis, keepdims):
    a = (rng.standard_normal((3, 17, 5)) * 10).astype(dtype)
    d = up(a)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    close(d.sum(axis=axis, keepdims=keepdims), a.sum(axis=axis, keepdims=keepdims), tol, tol)
    close(np.sum(d, axis=axis, keepdims=keepdims), np.sum(a, axis=axis, keepdims=keepdims), tol,
          tol)
    close(np.mean(d, axis=axis, keepdims=keepdims), np.mean(a, axis=axis, keepdims=keepdims),
          tol, tol)
    close(np.max(d, axis=axis, keepdims=keepdims), np.max(a, axis=axis, keepdims=keepdims), 0, 0)
    close(d.min(axis=axis, keepdims=keepdims), a.min(axis=axis, keepdims=keepdims), 0, 0)
    if axis is None or isinstance(axis, int):
        close(np.argmax(d, axis=axis, keepdims=keepdims), np.argmax(a, axis=axis, keepdims=keepdims),
              0, 0)
        close(d.argmin(axis=axis), a.argmin(axis=axis), 0, 0)
        # a transposed (strided) input goes through a contiguous copy
        close(d.T.argmax(axis=axis), a.T.argmax(axis=axis), 0, 0)
    close(d.T.sum(axis=axis), a.T.sum(axis=axis), tol, tol)


def test_reduction_edge_cases(dev, rng):
    a = np.array([[1.0, np.nan, 3.0], [2.0, 5.0, 5.0]], np.float32)
    close(np.max(up(a), axis=1), np.max(a, axis=1), 0, 0)  # nan propagates
    close(np.argmax(up(a), axis=1), np.argmax(a, axis=1), 0, 0)  # first nan / first max
    close(up(a).argmin(axis=1), a.argmin(axis=1), 0, 0)
    close(up(np.array([True, False, True])).sum(), np.int64(2), 0, 0)
    close(up(np.zeros((0, 3), np.float32)).sum(axis=0), np.zeros(3, np.float32), 0, 0)
    with pytest.raises(ValueError, match="identity"):
        up(np.zeros((0, 3), np.float32)).max(axis=0)
    # long rows and columns: the split-and-combine path on a GPU (fixed chunks)
    big = rng.standard_normal((2, 300_001)).astype(np.float32)
    close(up(big).sum(axis=1), big.astype(np.float64).sum(axis=1).astype(np.float32), 1e-5, 1e-3)
    close(up(big).T.argmax(axis=0), big.argmax(axis=1), 0, 0)
    col = rng.standard_normal((200_003, 3))
    close(up(col).sum(axis=0), col.sum(axis=0), 1e-10, 1e-9)
    close(up(col).max(axis=0), col.max(axis=0), 0, 0)
    # bitwise reproducible: the same reduction twice gives the same bits
    assert up(big).sum().numpy().tobytes() == up(big).sum().numpy().tobytes()


MATMUL_SHAPES = [
    ((5, 7), (7, 3)), ((1, 7), (7, 1)), ((2, 5, 7), (7, 3)), ((1, 5, 7), (4, 7, 3)),
    ((3, 1, 5, 7), (2, 7, 6)), ((7,), (7, 3)), ((5, 7), (7,)), ((7,), (7,)), ((5, 0), (0, 3)),
    ((17, 33), (33, 9)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul(dev, rng, sa, sb, dtype):
    a = rng.standard_normal(sa).astype(dtype)
    b = rng.standard_normal(sb).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    close(up(a) @ up(b), a @ b, tol, tol)
    close(np.matmul(up(a), up(b)), np.matmul(a, b), tol, tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_transposed_and_strided_operands(dev, rng, dtype):
    a = rng.standard_normal((9, 6)).astype(dtype)
    b = rng.standard_normal((9, 4)).astype(dtype)
    c = rng.standard_normal((4, 6)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    A, B, C = up(a), up(b), up(c)
    close(A.T @ B, a.T @ b, tol, tol)  # transposed view: cuBLAS op T, no copy
    close(B @ C, b @ c, tol, tol)
    close(A @ C.T, a @ c.T, tol, tol)
    close(C.T.T @ A.T, c @ a.T, tol, tol)
    close(A[::2] @ C.T, a[::2] @ c.T, tol, tol)  # row stride 2: lda = 12
    close(A[:, ::2] @ C[:, ::2].T, a[:, ::2] @ c[:, ::2].T, tol, tol)  # needs a copy
    x = rng.standard_normal((3, 6, 5)).astype(dtype)
    close(up(x).transpose(0, 2, 1) @ A.T, x.transpose(0, 2, 1) @ a.T, tol, tol)
    close(up(x)[:, 1:4] @ up(x)[0].T[:5, :2], x[:, 1:4] @ x[0].T[:5, :2], tol, tol)
    close(np.dot(A[:, 0], A[:, 1]), np.dot(a[:, 0], a[:, 1]), tol, tol)
    with pytest.raises(ValueError, match="not aligned"):
        A @ B
    with pytest.raises(TypeError, match="float32 or float64"):
        up(np.ones((2, 2), np.int64)) @ up(np.ones((2, 2), np.int64))


def test_where_fill_copyto_astype(dev, rng):
    a = rng.standard_normal((4, 5)).astype(np.float32)
    d = up(a)
    close(np.where(d > 0, d, 0.0), np.where(a > 0, a, 0.0), 0, 0)
    close(np.where(up(a[:, :1]) > 0, 1.0, up(a)), np.where(a[:, :1] > 0, 1.0, a), 0, 0)
    close(np.zeros_like(d), np.zeros_like(a), 0, 0)
    close(np.ones_like(d, dtype=np.float64), np.ones_like(a, dtype=np.float64), 0, 0)
    close(np.full_like(d, 3.5), np.full_like(a, 3.5), 0, 0)
    e = gf.cuda.empty((4, 5), np.float64)
    np.copyto(e, d)
    close(e, a.astype(np.float64), 0, 0)
    np.copyto(e, a[0])  # from the host: an explicit upload, broadcast
    close(e, np.broadcast_to(a[0], (4, 5)).astype(np.float64), 0, 0)
    e.fill(2)
    close(e, np.full((4, 5), 2.0), 0, 0)
    close(d.astype(np.int32), a.astype(np.int32), 0, 0)
    close(d.astype(np.bool_), a.astype(np.bool_), 0, 0)
    close(np.broadcast_to(up(a[0]), (3, 5)).copy(), np.broadcast_to(a[0], (3, 5)).copy(), 0, 0)
    with pytest.raises(ValueError, match="same device.*cpu"):
        np.copyto(a, d)


def test_integer_indexing_and_gathers(dev, rng):
    a = rng.standard_normal((6, 4)).astype(np.float32)
    d = up(a)
    idx = np.array([5, 0, -1, 2, 2])
    close(d[idx], a[idx], 0, 0)
    close(d[:, np.array([3, 1])], a[:, [3, 1]], 0, 0)
    close(d[up(idx)], a[idx], 0, 0)
    close(d[[1, 2]], a[[1, 2]], 0, 0)
    close(np.take(d, idx, axis=0), np.take(a, idx, axis=0), 0, 0)
    with pytest.raises(IndexError, match="out of bounds"):
        d[np.array([6])]
    with pytest.raises(TypeError, match="boolean-mask"):
        d[a > 0]
    z, zz = gf.cuda.zeros((6, 4)), np.zeros((6, 4), np.float32)
    np.add.at(z, idx, up(a[:5]))
    np.add.at(zz, idx, a[:5])
    close(z, zz, 1e-6, 1e-6)
    t = np.argmax(a, axis=1)[:, None]
    close(np.take_along_axis(d, up(t), axis=1), np.take_along_axis(a, t, axis=1), 0, 0)
    p, pp = gf.cuda.zeros((6, 4)), np.zeros((6, 4), np.float32)
    np.put_along_axis(p, up(t), up(a[:, :1]), axis=1)
    np.put_along_axis(pp, t, a[:, :1], axis=1)
    close(p, pp, 0, 0)
    parts = np.split(d, [1, 4], axis=0)
    for got, want in zip(parts, np.split(a, [1, 4], axis=0)):
        close(got, want, 0, 0)
    close(np.concatenate([d, d[:2]], axis=0), np.concatenate([a, a[:2]], axis=0), 0, 0)
    close(np.stack([d, d], axis=1), np.stack([a, a], axis=1), 0, 0)


# --------------------------------------------------------------------------- tensors on device


def test_tensor_to_and_back_with_gradients(dev, rng):
    a = rng.standard_normal((3, 4)).astype(np.float32)
    x = gf.tensor(a, requires_grad=True)
    y = x.to("cuda")
    assert y.device == "cuda:0" and y.is_cuda and not y.is_leaf and y.to("cuda") is y
    z = (y * y + 1.0).sum()
    assert z.device == "cuda:0"
    z.backward()
    assert x.grad.device == "cpu"  # the gradient came back through ToDevice
    np.testing.assert_allclose(x.grad.numpy(), 2 * a, rtol=1e-6)
    assert abs(z.item() - float((a * a + 1).sum())) < 1e-3
    c = y.detach().cpu()
    assert c.device == "cpu" and isinstance(c.data, np.ndarray)
    np.testing.assert_array_equal(c.numpy(), a)
    np.testing.assert_array_equal(y.detach().numpy(), a)  # a host copy, after a sync
    assert "device='cuda:0'" in repr(y.detach())
    with pytest.raises(TypeError, match=r"\.cpu\(\)"):
        np.asarray(y.detach())
    w = x.detach().cuda().to(dtype=gf.float64)
    assert w.dtype == np.float64 and w.device == "cuda:0"


def test_creation_functions_take_a_device(dev):
    for t in [gf.zeros(2, 3, device="cuda"), gf.ones((2, 3), device="cuda:0"),
              gf.full((2, 3), 7.0, device=gf.device("cuda")), gf.empty(2, 3, device="cuda"),
              gf.tensor([[1.0, 2, 3], [4, 5, 6]], device="cuda"),
              gf.arange(6, device="cuda").reshape(2, 3)]:
        assert t.device == "cuda:0" and t.shape == (2, 3)
    assert gf.ones(2, 3, device="cuda").numpy().tolist() == [[1, 1, 1], [1, 1, 1]]
    assert gf.arange(4, device="cuda").numpy().tolist() == [0, 1, 2, 3]
    z = gf.zeros_like(gf.ones(2, device="cuda"))
    assert z.device == "cuda:0" and gf.ones_like(z, device="cpu").device == "cpu"
    assert gf.tensor(gf.ones(2, device="cuda"), device="cpu").device == "cpu"
    r = gf.randn(3, 4, generator=gf.Generator(7), device="cuda")
    u = gf.rand(5, generator=gf.Generator(7), dtype=gf.float64, device="cuda")
    assert r.device == "cuda:0" and u.device == "cuda:0" and u.dtype == np.float64
    # the same seed gives the same bits as on the CPU
    assert r.numpy().tobytes() == gf.randn(3, 4, generator=gf.Generator(7)).numpy().tobytes()
    assert u.numpy().tobytes() == gf.rand(5, generator=gf.Generator(7), dtype=gf.float64).numpy().tobytes()


def test_mixed_devices_raise_naming_both(dev):
    g, c = gf.ones(3, device="cuda"), gf.ones(3)
    for fn in (lambda: g + c, lambda: c * g, lambda: gf.cat([g, c])):
        with pytest.raises(ValueError, match="cuda:0 and cpu"):
            fn()
    lin = gf.nn.Linear(3, 2).to("cuda")
    with pytest.raises(ValueError, match="same device.*cuda:0.*cpu"):
        lin(gf.ones(4, 3))
    with pytest.raises(ValueError, match="cuda:0 and cpu|cpu and cuda:0"):
        g.backward(gf.ones(3)) if g.requires_grad else (g.requires_grad_() * 2).backward(
            gf.ones(3))


class _Net(gf.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = gf.nn.Linear(5, 8)
        self.fc2 = gf.nn.Linear(8, 3)
        self.register_buffer("scale", gf.full((3,), 0.5))

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * h) * self.scale


def _step_grads(model, x, y):
    out = model(x)
    loss = ((out - y) ** 2).mean() + out.max(dim=1).values.sum() * 0.1 + gf.amax(out) * 0.01
    model.zero_grad()
    loss.backward()
    return loss


def test_module_to_moves_parameters_buffers_and_trains_like_the_cpu(dev, rng):
    gf.manual_seed(0)
    cpu = _Net()
    gpu = _Net()
    gpu.load_state_dict(cpu.state_dict())
    assert gpu.to("cuda") is gpu
    assert all(p.device == "cuda:0" and p.is_leaf for p in gpu.parameters())
    assert gpu.scale.device == "cuda:0"
    x = rng.standard_normal((6, 5)).astype(np.float32)
    y = rng.standard_normal((6, 3)).astype(np.float32)
    for _ in range(3):
        lc = _step_grads(cpu, gf.tensor(x), gf.tensor(y))
        lg = _step_grads(gpu, gf.tensor(x, device="cuda"), gf.tensor(y).cuda())
        assert abs(lc.item() - lg.item()) < 1e-4
        with gf.no_grad():
            for pc, pg in zip(cpu.parameters(), gpu.parameters()):
                assert pg.grad.device == "cuda:0"
                np.testing.assert_allclose(pg.grad.numpy(), pc.grad.numpy(), rtol=1e-4,
                                           atol=1e-5)
                pc -= 0.1 * pc.grad
                pg -= 0.1 * pg.grad
    sd = gpu.state_dict()
    assert all(isinstance(v, DeviceArray) for v in sd.values())
    back = gpu.to("cpu")
    assert all(isinstance(p.data, np.ndarray) for p in back.parameters())
    for pc, pg in zip(cpu.parameters(), back.parameters()):
        np.testing.assert_allclose(pg.data, pc.data, rtol=1e-4, atol=1e-5)


def test_parameter_of_a_device_tensor_stays_on_the_device(dev):
    p = gf.nn.Parameter(gf.zeros(2, 3, device="cuda"))
    assert p.device == "cuda:0" and p.is_leaf and p.requires_grad
    (p * 2.0).sum().backward()
    assert p.grad.device == "cuda:0" and p.grad.numpy().tolist() == [[2.0] * 3] * 2


def test_module_to_moves_parameters_in_an_optimizer_arena(dev):
    # the arena moves as one buffer (the whole behaviour: tests/test_cuda_arena.py)
    m = gf.nn.Linear(3, 2)
    opt = gf.optim.SGD(m.parameters(), lr=0.1)
    m.to("cuda")
    a = opt._arenas[0][0][1]
    assert type(a.param) is DeviceArray and type(a.grad) is DeviceArray
    assert all(p.data is v for p, v in zip(m.parameters(), a.views))


def test_autograd_ops_on_device_match_the_cpu(dev, rng):
    a = rng.uniform(0.5, 2, (3, 4)).astype(np.float64)
    b = rng.uniform(0.5, 2, (4,)).astype(np.float64)

    def f(x, w):
        y = (x / w).exp().log().sqrt() ** 1.5 - abs(x - 1.0) + x.permute(1, 0).T * 2
        z = gf.cat([y, y[:1]], dim=0).reshape(2, 8).transpose(0, 1)
        s = gf.stack([z, z * 0.5], dim=0)
        return s.sum(dim=(0, 2)).mean() + y[[0, 2, 2]].sum() + gf.max(y).sum() + \
            (x ** w).mean() + y.unsqueeze(0).squeeze().flatten()[3]

    grads = []
    for device in ("cpu", "cuda"):
        x = gf.tensor(a, device=device, requires_grad=True)
        w = gf.tensor(b, device=device, requires_grad=True)
        out = f(x, w)
        out.backward()
        grads.append((out.item(), x.grad.numpy(), w.grad.numpy()))
        assert x.grad.device == device
    np.testing.assert_allclose(grads[1][0], grads[0][0], rtol=1e-12)
    np.testing.assert_allclose(grads[1][1], grads[0][1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads[1][2], grads[0][2], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- GPU only


@pytest.mark.cuda
def test_device_properties_and_stream():
    props = gf.cuda.get_device_properties()
    assert props["major"] >= 8 and props["total_memory"] > 0
    assert gf.cuda.get_device_name() == props["name"]
    assert gf.cuda.device_count() >= 1


@pytest.mark.cuda
def test_allocator_serves_a_training_step_from_its_cache(rng):
    gf.manual_seed(0)
    model = _Net().to("cuda")
    x = gf.tensor(rng.standard_normal((64, 5)).astype(np.float32), device="cuda")
    y = gf.tensor(rng.standard_normal((64, 3)).astype(np.float32), device="cuda")

    def step():
        _step_grads(model, x, y)
        with gf.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad

    step()
    gf.cuda.synchronize()
    gf.cuda.reset_alloc_counters()
    step()
    step()
    stats = gf.cuda.memory_stats()
    assert stats["alloc_calls"] > 10  # the step does allocate (temporaries, outputs) ...
    assert stats["malloc_calls"] == 0, stats  # ... all from freed blocks of the first step
    assert stats["cache_hits"] == stats["alloc_calls"]
    gf.cuda.empty_cache()
    assert gf.cuda.memory_stats()["reserved_bytes"] == gf.cuda.memory_stats()["allocated_bytes"]


@pytest.mark.cuda
def test_matmul_matches_torch_cuda(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    a = rng.standard_normal((96, 80)).astype(np.float32)
    b = rng.standard_normal((80, 72)).astype(np.float32)
    got = (up(a).T.T @ up(b)).numpy()
    want = (torch.from_numpy(a).cuda() @ torch.from_numpy(b).cuda()).cpu().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _digits_ready():
    """'' when the kernel families and the optimizer's device arena are in this build, else
    what is missing (the GPU training run needs every layer of the stack)."""
    needed = {"activation_forward", "cross_entropy_forward", "batch_norm_forward",
              "dropout_forward", "optim_step"}
    missing = needed - set(getattr(_backend, "CUDA_DISPATCHED", ()))
    if missing:
        return f"gradfuse.cuda.ops lacks {sorted(missing)}"
    try:
        gf.optim.Adam([gf.nn.Parameter(gf.zeros(3, device="cuda"))], lr=0.1)
    except (ValueError, TypeError, RuntimeError) as e:
        return f"the optimizer's flat arena has no device path in this build ({e})"
    return ""


@pytest.mark.cuda
def test_digits_training_on_the_gpu_reaches_the_cpu_accuracy_band():
    pytest.importorskip("sklearn")
    missing = _digits_ready()
    if missing:
        pytest.skip(missing)
    from gradfuse.examples import digits_mlp

    logs = []
    gpu = digits_mlp.train(epochs=8, device="cuda", log=logs.append)
    cpu = digits_mlp.train(epochs=8, device="cpu", log=lambda *a: None)
    assert gpu["val_accuracy"] > 0.9, logs
    assert abs(gpu["val_accuracy"] - cpu["val_accuracy"]) < 0.03
    assert gpu["train_loss"][-1] < gpu["train_loss"][0]


def test_checkpoint_of_a_device_model_loads_on_either_device(dev, tmp_path):
    # gf.save copies device state to the host; a host checkpoint loads into a device model
    gf.manual_seed(0)
    gpu = _Net().to("cuda")
    path = tmp_path / "m.safetensors"
    gf.save({"model": gpu, "epoch": 3}, path)
    ck = gf.load(path)
    assert ck["epoch"] == 3
    cpu = _Net()
    cpu.load_state_dict(ck["model"])
    for k, v in gpu.state_dict().items():
        np.testing.assert_array_equal(cpu.state_dict()[k], v.numpy(), err_msg=k)
    other = _Net().to("cuda")
    other.load_state_dict(ck["model"])
    for k, v in gpu.state_dict().items():
        assert isinstance(other.state_dict()[k], DeviceArray)
        np.testing.assert_array_equal(other.state_dict()[k].numpy(), v.numpy(), err_msg=k)


@pytest.mark.cuda  # the kernel families (batch norm, cross entropy, Adam) need the real GPU
def test_study_run_trains_on_the_device_like_on_the_cpu():
    # gradfuse train/compare --device cuda: same seed, same weights, same curve within float
    from gradfuse.study.config import RunConfig
    from gradfuse.study.datasets import load_dataset
    from gradfuse.study.runner import run_one

    data = load_dataset("digits", train_size=200)
    cfg = RunConfig(optimizer="adam", norm="batch")
    kw = dict(epochs=2, seed=1, hidden=(32,), monitor_every=5)
    a = run_one(cfg, data, device="cpu", **kw)
    b = run_one(cfg, data, device="cuda", **kw)
    assert not a["diverged"] and not b["diverged"]
    for ha, hb in zip(a["history"], b["history"]):
        assert abs(ha["train_loss"] - hb["train_loss"]) < 1e-4
        assert abs(ha["val_acc"] - hb["val_acc"]) <= 0.02

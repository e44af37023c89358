"""Bad input that reaches the compiled core raises a clear error, never crashes."""

import numpy as np
import pytest

import gradfuse as gf
from gradfuse import _backend


def ce(x, t, w=None, ignore=-100, ls=0.0):
    return _backend.cross_entropy_forward(x, t, w, ignore, ls)


def test_kernel_rejects_non_contiguous_and_wrong_dtypes():
    x = np.zeros((4, 6), np.float32)
    t = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="input: expected a C-contiguous"):
        ce(x[:, ::2], t)
    with pytest.raises(TypeError, match="target: expected dtype int64, got int32"):
        ce(x, t.astype(np.int32))
    with pytest.raises(ValueError, match="target: expected a C-contiguous"):
        ce(x, np.zeros(8, np.int64)[::2])
    with pytest.raises(TypeError, match="input: expected dtype float32 or float64, got int64"):
        ce(x.astype(np.int64), t)
    with pytest.raises(TypeError, match="weight: expected dtype float32, got float64"):
        ce(x, t, np.ones(6))
    with pytest.raises(ValueError, match=r"target: expected shape \(4,\)"):
        ce(x, np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="shape \\(N, C\\)"):
        ce(np.zeros(4, np.float32), t)
    with pytest.raises(ValueError, match="class index 9"):
        ce(x, np.array([0, 9, 0, 0]))
    with pytest.raises(ValueError, match="label_smoothing"):
        ce(x, t, ls=float("nan"))


def test_backward_kernel_checks_its_arguments():
    x = np.zeros((4, 6), np.float32)
    t = np.zeros(4, np.int64)
    _, lse, _, _ = ce(x, t)
    with pytest.raises(ValueError, match="lse"):
        _backend.cross_entropy_backward(x, t, None, lse[:2].copy(), None, 1.0, -100, 0.0)
    with pytest.raises(ValueError, match="grad_output"):
        _backend.cross_entropy_backward(x, t, None, lse, np.ones(3, np.float32), 1.0, -100, 0.0)
    with pytest.raises(ValueError, match="class index -5"):
        _backend.cross_entropy_backward(x, np.full(4, -5), None, lse, None, 1.0, -100, 0.0)


def test_cross_entropy_independent_of_thread_count(rng):
    x = gf.tensor((rng.standard_normal((3001, 257)) * 3).astype(np.float32), requires_grad=True)
    t = gf.tensor(rng.integers(0, 257, 3001))
    n = gf.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            gf.set_num_threads(threads)
            x.grad = None
            loss = gf.nn.functional.cross_entropy(x, t, label_smoothing=0.1)
            loss.backward()
            results.append((loss.item(), x.grad.data.copy()))
    finally:
        gf.set_num_threads(n)
    for loss, grad in results[1:]:
        assert loss == results[0][0]
        assert np.array_equal(grad, results[0][1])


def test_set_num_threads_validates():
    with pytest.raises(ValueError, match="n:"):
        gf.set_num_threads(0)


def test_exp_kernel_accuracy_over_the_float_range():
    # The gradient of cross entropy over logits [0, x] with target 0 is softmax(.)[1] =
    # exp(x - lse): it runs the vectorized exp over its whole range, down into the denormals
    # (x < -87.3) and up to the largest finite values.
    x = np.concatenate([np.linspace(-103, 88, 40001), [-1e30, 88.72, 1e30]]).astype(np.float32)
    logits = gf.tensor(np.stack([np.zeros_like(x), x], axis=1), requires_grad=True)
    loss = gf.nn.functional.cross_entropy(logits, gf.tensor(np.zeros(len(x), np.int64)),
                                          reduction="sum")
    loss.backward()
    got = logits.grad.numpy()[:, 1].astype(np.float64)
    want = np.exp(-np.logaddexp(0.0, -x.astype(np.float64)))  # sigmoid without overflow
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=3e-45)


def test_optional_arrays_must_be_arrays_and_equal_dtypes_are_accepted():
    import pickle

    x = np.zeros((4, 6), np.float32)
    t = np.zeros(4, np.int64)
    with pytest.raises(TypeError, match="weight: expected a numpy array or None, got list"):
        ce(x, t, [1.0] * 6)
    # equal but not identical dtype objects: unpickled arrays, np.longlong labels
    xs, ts = pickle.loads(pickle.dumps(x)), pickle.loads(pickle.dumps(t))
    assert ce(xs, ts)[2] == ce(x, t)[2]
    assert ce(x, t.astype(np.longlong))[2] == ce(x, t)[2]


def test_forked_child_runs_parallel_kernels_after_the_parent_did(rng):
    import multiprocessing as mp

    x = gf.tensor(rng.standard_normal((512, 512)).astype(np.float32))  # parallel-sized
    t = gf.tensor(rng.integers(0, 512, 512))
    parent = gf.nn.functional.cross_entropy(x, t).item()
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        res = pool.apply_async(_child_loss, (x.data, t.data))
        child, child_threads = res.get(timeout=60)  # libgomp without the at-fork hook: hangs
    assert child == parent and child_threads == 1


def _child_loss(x, t):
    loss = gf.nn.functional.cross_entropy(gf.tensor(x), gf.tensor(t)).item()
    return loss, gf.get_num_threads()


def test_thread_count_is_process_wide():
    import threading

    n = gf.get_num_threads()
    seen = []
    try:
        gf.set_num_threads(1)
        th = threading.Thread(target=lambda: seen.append(gf.get_num_threads()))
        th.start()
        th.join()
    finally:
        gf.set_num_threads(n)
    assert seen == [1]

"""The caching pool behind large arrays: reuse, no fresh page faults, numpy hook safety."""

import resource

import numpy as np
import pytest

import gradfuse as gf

MB = 1 << 20


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def alloc_fill_loop(n=8, nbytes=64 * MB):
    for _ in range(n):
        a = np.empty(nbytes // 4, np.float32)
        a.fill(1.0)
        del a


def test_large_arrays_come_from_the_pool_and_are_reused():
    before = gf.memory.stats()
    a = np.empty(8 * MB // 4, np.float32)
    mid = gf.memory.stats()
    assert mid["bytes_in_use"] >= before["bytes_in_use"] + 8 * MB
    del a
    b = np.empty(8 * MB // 4, np.float32)
    after = gf.memory.stats()
    assert after["reuses"] > mid["reuses"]  # the freed block came back
    del b


def test_small_arrays_bypass_the_pool():
    before = gf.memory.stats()["allocs"]
    _ = [np.empty(100) for _ in range(50)]
    assert gf.memory.stats()["allocs"] == before


def test_steady_state_allocations_make_no_page_faults():
    alloc_fill_loop(2)  # warm the pool
    f0 = minor_faults()
    alloc_fill_loop()
    pooled = minor_faults() - f0
    assert gf.memory.use_pool_for_numpy(False)
    try:
        f0 = minor_faults()
        alloc_fill_loop()
        plain = minor_faults() - f0
    finally:
        assert gf.memory.use_pool_for_numpy(True)
    # 8 x 64 MiB of fresh pages is >= 1024 faults even with 2 MiB huge pages
    assert plain >= 1000, plain
    assert pooled < max(100, plain // 20), (pooled, plain)


def test_training_step_is_fault_free_after_warmup(rng):
    fc = gf.nn.Linear(1024, 1024)
    head = gf.nn.Linear(1024, 1000)
    x = gf.tensor(rng.standard_normal((512, 1024)).astype(np.float32))
    y = gf.tensor(rng.integers(0, 1000, 512))

    def step():
        loss = gf.nn.functional.cross_entropy(head(fc(x)), y)
        fc.zero_grad()
        head.zero_grad()
        loss.backward()
        with gf.no_grad():
            for p in list(fc.parameters()) + list(head.parameters()):
                p -= 0.01 * p.grad

    for _ in range(3):
        step()
    f0 = minor_faults()
    for _ in range(5):
        step()
    # each step allocates ~8 MiB of outputs and gradients; fresh pages would be ~10^4 faults
    assert minor_faults() - f0 < 200


def test_realloc_paths_keep_data():
    a = np.arange(100_000, dtype=np.float64)  # 800 KB: pooled
    a.resize(300_000, refcheck=False)  # grow: moves to a larger block
    assert a[99_999] == 99_999 and a[-1] == 0
    a.resize(1000, refcheck=False)  # shrink below the pool threshold: back to malloc
    assert a[999] == 999
    b = np.arange(10, dtype=np.float64)
    b.resize(100_000, refcheck=False)  # malloc'd block grows into the pool
    assert b[9] == 9


def test_arrays_outlive_a_handler_switch():
    a = np.ones(1 * MB, np.float32)
    gf.memory.use_pool_for_numpy(False)
    try:
        b = np.ones(1 * MB, np.float32)
    finally:
        gf.memory.use_pool_for_numpy(True)
    del a, b  # each freed by the allocator that made it (no crash)


def test_zeros_from_a_reused_block_are_zero():
    a = np.full(2 * MB, 7.0, np.float32)
    del a
    z = np.zeros(2 * MB, np.float32)
    assert not z.any()


def test_pool_empty_and_cache_controls():
    a = gf.memory.empty((3, 100_000), "float64")
    assert a.shape == (3, 100_000) and a.dtype == np.float64
    a[:] = 1
    del a
    gf.memory.empty_cache()
    assert gf.memory.stats()["bytes_cached"] == 0
    limit = gf.memory.stats()["cache_limit"]
    gf.memory.set_cache_limit(0)
    try:
        c = np.empty(MB, np.float32)
        del c
        assert gf.memory.stats()["bytes_cached"] == 0
    finally:
        gf.memory.set_cache_limit(limit)
    with pytest.raises(ValueError, match="nbytes"):
        gf.memory.set_cache_limit(-1)
    with pytest.raises(TypeError, match="plain data"):
        gf.memory.empty(10, object)  # reused memory would be garbage pointers


def test_a_miss_gives_back_sizes_that_went_idle():
    gf.memory.empty_cache()
    small = [np.ones(MB // 4, np.float32) for _ in range(64)]  # 64 x 1 MiB
    del small
    assert gf.memory.stats()["bytes_cached"] >= 64 * MB
    for _ in range(5000):  # another phase of the program: 1 MiB is not asked for any more
        np.empty(300_000, np.float32)
    big = np.ones(64 * MB // 4, np.float32)  # a miss: idle sizes go back to the OS first
    assert gf.memory.stats()["bytes_cached"] < 8 * MB
    del big


def test_steady_state_steps_are_served_from_the_cache_without_evictions(rng):
    # forward, backward and update allocate and free in a different order in the first step
    # than in later ones; after two steps every request must be a reuse
    fc1, fc2 = gf.nn.Linear(512, 1024), gf.nn.Linear(1024, 256)
    x = gf.tensor(rng.standard_normal((256, 512)).astype(np.float32))
    y = gf.tensor(rng.integers(0, 256, 256))
    params = list(fc1.parameters()) + list(fc2.parameters())

    def step():
        for p in params:
            p.grad = None
        gf.nn.functional.cross_entropy(fc2(fc1(x)), y).backward()
        with gf.no_grad():
            for p in params:
                p -= 0.01 * p.grad

    for _ in range(3):
        step()
    before = gf.memory.stats()
    for _ in range(10):
        step()
    after = gf.memory.stats()
    assert after["fresh"] == before["fresh"] and after["reuses"] > before["reuses"]


def test_pool_switch_is_per_thread_context():
    import threading

    out = {}

    def worker():
        out["off_again"] = gf.memory.use_pool_for_numpy(False)  # already numpy's default here
        out["on"] = gf.memory.use_pool_for_numpy(True)
        before = gf.memory.stats()["allocs"]
        a = np.empty(MB, np.float32)
        out["pooled"] = gf.memory.stats()["allocs"] > before
        del a

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert out == {"off_again": False, "on": True, "pooled": True}
    assert not gf.memory.use_pool_for_numpy(True)  # still on in the main thread


def test_memory_entry_points_reject_bad_arguments():
    with pytest.raises(ValueError, match="shape: dimensions must be >= 0"):
        gf.memory.empty(-1)
    with pytest.raises(TypeError, match="enabled: expected a bool"):
        gf.memory.use_pool_for_numpy("no")

"""Philox4x32-10 generator: known-answer vectors, the stream layout against a numpy reference,
statistics with tolerances from the sample size, thread independence, splitting, state."""

import math
import os
import pickle
import time
from statistics import NormalDist

import numpy as np
import pytest

import gradfuse as gf
import reference as ref
from gradfuse import _backend as B

# Random123's published known-answer vectors for Philox4x32-10: counter (4 words), key (2 words),
# expected output (4 words). The first three are tests/kat_vectors of DEShawResearch/random123;
# the rest are the philox4x32 10 lines of its examples/kat_vectors.
KAT = """
00000000 00000000 00000000 00000000   00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
ffffffff ffffffff ffffffff ffffffff   ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
243f6a88 85a308d3 13198a2e 03707344   a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
00000001 00000000 00000000 00000000   00000001 00000000   ac08141b dfc5ccbe 79c07a47 a7f66093
00000000 00000001 00000000 00000000   00000001 00000000   833ff8dc 225c963c 232b88b3 0b334b07
00000000 00000000 00000001 00000000   00000001 00000000   07071c12 428264b6 3909104b 6da2bda2
00000000 00000000 00000000 00000001   00000001 00000000   127bee41 1e047488 48842b20 0a393496
00000000 ffffffff 00000000 00000000   00000001 00000000   04e2eae1 463cc999 e7786310 65b3dc49
00000000 80000000 00000000 00000000   00000001 00000000   34a4d61d 340e4017 f6945830 e9f52b96
00000000 00000000 ffffffff 00000000   00000001 00000000   fb0905e2 78378790 ca37926b cdf58cfa
00000000 00000000 80000000 00000000   00000001 00000000   f2e15c7d 3fedcd99 90046f6c 6657f0ca
00000000 00000000 00000000 ffffffff   00000001 00000000   f50c9398 b36cdab2 436bdc89 cc49431b
00000000 00000000 00000000 80000000   00000001 00000000   dde26e4e 17666f3b fc1f5b3a 83ac805d
243f6a88 85a308d3 13198a2e 03707344   00000001 00000000   38527b8f fad9a48c 20e675c0 f2fea26a
a4093822 299f31d0 082efa98 ec4e6c89   00000001 00000000   fb9877f8 482895e2 60b01453 198ea67b
452821e6 38d01377 be5466cf 34e90c6c   00000001 00000000   f7b7fa0a 8d970e2c 205c9c76 83b16ce5
00000001 00000000 00000000 00000000   00000000 00000001   ccf3076a 6306f434 bea71965 d96fe48a
00000000 00000001 00000000 00000000   00000000 00000001   532f1322 36c890fb 6504b937 07bbfef7
00000000 00000000 00000001 00000000   00000000 00000001   7f6c13ff 114b2447 0550eced ea1fc805
00000000 00000000 00000000 00000001   00000000 00000001   96b27e8c 28826d0f 66d958ef 081509dc
00000000 ffffffff 00000000 00000000   00000000 00000001   00e94a67 3524f44e 22995230 bb54df1e
00000000 80000000 00000000 00000000   00000000 00000001   ce1afc4e 4fbf97a1 6110bee9 a559be2f
00000000 00000000 ffffffff 00000000   00000000 00000001   576241af d3b45bee 619bd94d 15dd8793
00000000 00000000 80000000 00000000   00000000 00000001   d9da65af eced57ba c34d2661 91fe931f
00000000 00000000 00000000 ffffffff   00000000 00000001   36241728 4d42c858 fea737d6 49f40347
00000000 00000000 00000000 80000000   00000000 00000001   0436a39b 31be9efa 6abd0c76 e7a68f83
243f6a88 85a308d3 13198a2e 03707344   00000000 00000001   126514c3 d1898b69 da2707b3 6e6fb436
a4093822 299f31d0 082efa98 ec4e6c89   00000000 00000001   1c28fa3f 8c5bf977 bb989783 0c1a3737
452821e6 38d01377 be5466cf 34e90c6c   00000000 00000001   ac87a8c1 f240abdb add6c012 68a32a78
00000001 00000000 00000000 00000000   00000000 ffffffff   473ab778 330bacc0 acd5fc9a 5ede76b3
00000000 00000001 00000000 00000000   00000000 ffffffff   cdfbd51c caae5f2e 10739cfc 79e95162
00000000 00000000 00000001 00000000   00000000 ffffffff   6c4b0e80 357e5a94 3255445d 6f433f0b
00000000 00000000 00000000 00000001   00000000 ffffffff   5c4ecd0c 64c12cf9 8f9fb4c8 40c4a01f
00000000 ffffffff 00000000 00000000   00000000 ffffffff   5f9c47aa 19861d86 ff2be81d 4c7db17e
00000000 80000000 00000000 00000000   00000000 ffffffff   715a87cf f966a7f0 3e6dd95f e884e2fd
00000000 00000000 ffffffff 00000000   00000000 ffffffff   07678411 9e524307 ba634e67 94ee8cb7
00000000 00000000 80000000 00000000   00000000 ffffffff   b6f48e28 f2fa9414 00b64f66 4810cdb4
00000000 00000000 00000000 ffffffff   00000000 ffffffff   9f18bb20 62161056 7ea8c028 4c01fc6e
00000000 00000000 00000000 80000000   00000000 ffffffff   2a460458 0a2709e5 47bc9115 0f96d8af
243f6a88 85a308d3 13198a2e 03707344   00000000 ffffffff   08f7720c 845ee9e0 502ccd3d a9a00e27
a4093822 299f31d0 082efa98 ec4e6c89   00000000 ffffffff   9fcce05d 837d3f3c 5cdf3e61 db2544c0
452821e6 38d01377 be5466cf 34e90c6c   00000000 ffffffff   72ce44b3 b44f9b78 49af0267 726813ac
00000001 00000000 00000000 00000000   00000000 80000000   e29b9f84 2903d316 42a1f56f 1ad02eab
00000000 00000001 00000000 00000000   00000000 80000000   94f419f8 1116c316 99f2fa30 bc048ad6
00000000 00000000 00000001 00000000   00000000 80000000   488b0258 9eea6420 afe7062e 768f5637
00000000 00000000 00000000 00000001   00000000 80000000   dbec6d70 69cea528 f7e22262 2e9f3e8f
00000000 ffffffff 00000000 00000000   00000000 80000000   905ee550 c7520e9a 9af9d0ad 69b97e98
00000000 80000000 00000000 00000000   00000000 80000000   1b89d963 0defe9af 60c9d3fb 3cfae97d
00000000 00000000 ffffffff 00000000   00000000 80000000   601b5460 fe29678b 54510a02 c72ed094
00000000 00000000 80000000 00000000   00000000 80000000   ae56ca02 7609ba67 25abd7df 46ce39a3
00000000 00000000 00000000 ffffffff   00000000 80000000   09812238 47b8470d 3e0d0a26 92d96c9a
00000000 00000000 00000000 80000000   00000000 80000000   f7a0b371 e51dc93d 56ce135d 1d4b5580
243f6a88 85a308d3 13198a2e 03707344   00000000 80000000   63675d2c 422d7c4d 3145d30d 3bce33a4
a4093822 299f31d0 082efa98 ec4e6c89   00000000 80000000   aa74e81c c9ddb97b 2c2cd881 9390c78d
452821e6 38d01377 be5466cf 34e90c6c   00000000 80000000   94ca5566 14924b2f 28214292 59faeaee
"""
KAT_ROWS = [[int(w, 16) for w in line.split()] for line in KAT.strip().splitlines()]


@pytest.mark.parametrize("row", KAT_ROWS, ids=lambda r: "-".join(f"{w:x}" for w in r[:6]))
def test_philox_known_answer_vectors(row):
    ctr, key, want = row[:4], row[4:6], tuple(row[6:])
    assert B.philox4x32_10(ctr, key) == want


def test_numpy_reference_passes_the_known_answers():
    rows = np.array(KAT_ROWS, dtype=np.uint64)
    got = ref.philox4x32_10(rows[:, :4], rows[:, 4:6])
    np.testing.assert_array_equal(got, rows[:, 6:].astype(np.uint32))


@pytest.mark.parametrize("seed,offset", [(0, 0), (123456789012345, 7), (2**64 - 1, 2**32 - 5),
                                         (5, 2**64 - 3)])  # counter carry into the high word, wrap
def test_stream_counter_layout(seed, offset):
    np.testing.assert_array_equal(B.philox_words(seed, offset, 21),
                                  ref.philox_blocks(seed, offset, 21))


@pytest.mark.parametrize("isa", ["auto", "generic", "avx2", "avx512"])
def test_every_philox_implementation_gives_the_same_words(isa):
    # the AVX2/AVX-512 paths hand-code the 32x32->64 multiplies; all must equal the reference
    got = B.philox_tile_words(2**63 + 12345, 2**32 - 40, 11, isa)
    if got is None:
        pytest.skip(f"this CPU has no {isa}")
    want = ref.philox_tiles(2**63 + 12345, 2**32 - 40, 11).reshape(11, 64)
    np.testing.assert_array_equal(got, want)


def test_tile_words_bad_isa():
    with pytest.raises(ValueError, match="isa: expected"):
        B.philox_tile_words(0, 0, 1, "neon")


# ---------------------------------------------------------------- exact maps


@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 4097])
@pytest.mark.parametrize("a,b", [(0.0, 1.0), (-3.0, 5.0)])
def test_uniform_float32_is_the_documented_map(n, a, b):
    out = np.empty(n, np.float32)
    blocks = B.uniform_fill(out, 9, 1234, a, b)
    assert blocks == 16 * math.ceil(n / 64)
    u = ref.philox_u01_f32(ref.philox_fill_words(9, 1234, n))
    want = np.float32(a) + np.float32(b - a) * u
    want = np.minimum(want, np.nextafter(np.float32(b), np.float32(-np.inf)))
    np.testing.assert_array_equal(out, want)
    assert out.min() >= a and out.max() < b


@pytest.mark.parametrize("n", [1, 31, 32, 33, 1001])
def test_uniform_float64_is_the_documented_map(n):
    out = np.empty(n, np.float64)
    blocks = B.uniform_fill(out, 3, 77, -2.0, 2.0)
    assert blocks == 16 * math.ceil(n / 32)
    hi, lo = ref.philox_fill_pairs_f64(3, 77, n)
    want = np.minimum(-2.0 + 4.0 * ref.philox_u01_f64(hi, lo), np.nextafter(2.0, -np.inf))
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_bernoulli_is_a_threshold_on_the_words(dtype, p):
    n = 5003
    out = np.empty(n, dtype)
    assert B.bernoulli_fill(out, 11, 5, p) == 16 * math.ceil(n / 64)  # masks: 64 per tile always
    words = ref.philox_fill_words(11, 5, n).astype(np.uint64)
    want = (words < np.uint64(round(p * 2**32))).astype(dtype)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("n", [1, 17, 64, 1000, 3001])
def test_normal_matches_float64_box_muller(n):
    out32 = np.empty(n, np.float32)
    assert B.normal_fill(out32, 21, 3, 0.0, 1.0) == 16 * math.ceil(n / 64)
    # gradfuse's own log/sin/cos polynomials: a few float32 ulp of the exact Box-Muller value
    np.testing.assert_allclose(out32, ref.box_muller_f32_reference(21, 3, n), rtol=0, atol=2e-6)
    out64 = np.empty(n, np.float64)
    assert B.normal_fill(out64, 21, 3, 0.0, 1.0) == 16 * math.ceil(n / 32)
    np.testing.assert_allclose(out64, ref.box_muller_f64_reference(21, 3, n), rtol=0, atol=1e-13)


def test_normal_mean_and_std_are_applied_in_the_dtype():
    z = np.empty(999, np.float32)
    x = np.empty(999, np.float32)
    B.normal_fill(z, 4, 0, 0.0, 1.0)
    B.normal_fill(x, 4, 0, 0.5, 3.0)
    np.testing.assert_array_equal(x, np.float32(0.5) + np.float32(3.0) * z)


def test_trunc_normal_is_the_inverse_cdf_of_the_documented_uniform():
    n = 3000
    inv = NormalDist().inv_cdf
    out32 = np.empty(n, np.float32)
    B.trunc_normal_fill(out32, 8, 2, 0.0, 1.0, -np.inf, np.inf)  # mass 1: p = u
    u = (ref.philox_fill_words(8, 2, n).astype(np.float64) + 0.5) * 2.0**-32
    want = np.array([inv(v) for v in u])
    # float32 quantile (Giles's erfinv, Acklam's tail in float32): within 6 float32 ulp
    ulps = np.abs(out32 - want) / np.spacing(np.abs(want).astype(np.float32))
    assert ulps.max() <= 6.0, ulps.max()
    out64 = np.empty(n, np.float64)
    B.trunc_normal_fill(out64, 8, 2, 0.0, 1.0, -np.inf, np.inf)
    hi, lo = ref.philox_fill_pairs_f64(8, 2, n)
    m = (hi.astype(np.uint64) << np.uint64(21)) | (lo.astype(np.uint64) >> np.uint64(11))
    want = np.array([inv(v) for v in (m.astype(np.float64) + 0.5) * 2.0**-53])
    np.testing.assert_allclose(out64, want, rtol=1e-14, atol=1e-14)  # refined by a Halley step


# ---------------------------------------------------------------- statistics
# Fixed seeds make these deterministic; the tolerances are what the sample size allows
# (5 standard errors; KS at the 1% critical value 1.63 / sqrt(n)).


def _ks(sample, cdf):
    x = np.sort(sample.astype(np.float64))
    n = len(x)
    f = cdf(x)
    return max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max())


_erf = np.vectorize(math.erf)


def _phi(x):
    return 0.5 * (1 + _erf(x / math.sqrt(2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_statistics(dtype):
    n = 400_000
    x = gf.rand(n, generator=gf.Generator(2024), dtype=dtype).numpy().astype(np.float64)
    assert abs(x.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(x.var() - 1 / 12) < 5 * math.sqrt((1 / 80 - 1 / 144) / n)  # mu4 = 1/80
    assert _ks(x, lambda t: t) < 1.63 / math.sqrt(n)
    assert x.min() >= 0.0 and x.max() < 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normal_statistics(dtype):
    n = 200_000
    z = gf.randn(n, generator=gf.Generator(7), dtype=dtype).numpy().astype(np.float64)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)  # var of the sample variance: (mu4 - 1) / n
    assert _ks(z, _phi) < 1.63 / math.sqrt(n)
    tail = np.mean(np.abs(z) > 3)  # 0.0027 outside 3 sigma
    assert abs(tail - 0.0026998) < 5 * math.sqrt(0.0027 / n)
    # the cos and sin halves of each Box-Muller pair are uncorrelated
    t = z[: n // 64 * 64].reshape(-1, 4, 16)
    assert abs(np.corrcoef(t[:, 0].ravel(), t[:, 1].ravel())[0, 1]) < 5 / math.sqrt(t[:, 0].size)


def _truncnorm_moments(mean, std, a, b):
    al, be = (a - mean) / std, (b - mean) / std
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    z = _phi(be) - _phi(al)
    m = mean + std * (pdf(al) - pdf(be)) / z
    v = std**2 * (1 + (al * pdf(al) - be * pdf(be)) / z - ((pdf(al) - pdf(be)) / z) ** 2)
    return m, v, z


def test_trunc_normal_float32_std_beyond_float32_range():
    # std 1e39 does not fit float32: the affine step must stay in double (in float32, inf * x
    # would put every value on a bound, or give nan for x = 0)
    out = np.empty(10_000, np.float32)
    B.trunc_normal_fill(out, 5, 0, 0.0, 1e39, -1e38, 1e38)
    assert np.isfinite(out).all() and out.min() >= -1e38 and out.max() <= 1e38
    # [-1e38, 1e38] is +-0.1 std: close to uniform on it (std 2e38 / sqrt(12))
    assert abs(float(out.astype(np.float64).std()) / (2e38 / math.sqrt(12)) - 1) < 0.05
    assert len(np.unique(out)) > 9000


def test_trunc_normal_float32_far_tail_uses_the_double_quantile():
    # [-20, -14] std: tail masses below float32's normal range, so the float32 fill takes the
    # quantile in double (Acklam), rounded once: within an ulp of the exact quantile
    n = 2000
    out = np.empty(n, np.float32)
    B.trunc_normal_fill(out, 3, 0, 0.0, 1.0, -20.0, -14.0)
    assert out.min() >= -20.0 and out.max() <= -14.0
    pa, pb = (0.5 * math.erfc(v / math.sqrt(2)) for v in (20.0, 14.0))
    u = (ref.philox_fill_words(3, 0, n).astype(np.float64) + 0.5) * 2.0**-32
    want = np.array([NormalDist().inv_cdf(pa + (pb - pa) * v) for v in u])
    np.testing.assert_allclose(out, want, rtol=2e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mean,std,a,b", [(0.0, 1.0, -2.0, 2.0), (0.3, 0.5, -0.1, 0.45),
                                          (0.0, 1.0, 2.5, 3.5), (1.0, 2.0, -30.0, -5.0)])
def test_trunc_normal_statistics_and_exact_bounds(dtype, mean, std, a, b):
    n = 100_000
    x = gf.nn.init.trunc_normal_(gf.empty(n, dtype=dtype), mean, std, a, b,
                                 generator=gf.Generator(99)).numpy()
    assert x.min() >= a and x.max() <= b  # in the dtype, compared exactly
    m, v, z = _truncnorm_moments(mean, std, a, b)
    x = x.astype(np.float64)
    assert abs(x.mean() - m) < 5 * math.sqrt(v / n)
    # 5 standard errors of the sample variance, sqrt((mu4 - v^2) / n), with the truncated
    # normal's fourth central moment by quadrature
    t = np.linspace(a, b, 200_001)
    dens = np.exp(-0.5 * ((t - mean) / std) ** 2)
    dens /= np.trapezoid(dens, t)
    mu4 = np.trapezoid((t - m) ** 4 * dens, t)
    assert abs(x.var() - v) < 5 * math.sqrt((mu4 - v * v) / n)
    al = (a - mean) / std
    cdf = lambda t: (_phi((t - mean) / std) - _phi(al)) / z  # noqa: E731
    assert _ks(x, cdf) < 1.63 / math.sqrt(n) + (4e-7 if dtype == np.float32 else 0)


def test_trunc_normal_bounds_not_representable_in_float32():
    # float32(0.1) > 0.1 and float32(-0.1) < -0.1: a rounded value must not leave [a, b]
    x = gf.nn.init.trunc_normal_(gf.empty(50_000), 0.0, 1.0, a=-0.1, b=0.1,
                                 generator=gf.Generator(1)).numpy()
    assert x.min() >= -0.1 and x.max() <= 0.1
    # an interval two float32 values wide: every rounded result is clamped into it
    a, b = 0.1, 0.1 + 1e-8
    y = gf.nn.init.trunc_normal_(gf.empty(1000), 0.0, 1.0, a, b, generator=gf.Generator(1)).numpy()
    inside = np.float32(0.1), np.nextafter(np.float32(0.1), np.float32(1))
    assert inside[0] >= a and inside[1] <= b
    assert set(np.unique(y).tolist()) <= {float(v) for v in inside}
    assert y.min() >= a and y.max() <= b
    # no float32 in [a, b] at all: a clear error instead of values outside it
    with pytest.raises(ValueError, match="no float32 value"):
        B.trunc_normal_fill(np.empty(4, np.float32), 0, 0, 0.0, 1.0, 0.1 + 1e-12, 0.1 + 2e-12)


# ---------------------------------------------------------------- threads, splits, offsets

FILLS = {
    "uniform": lambda out, s, o: B.uniform_fill(out, s, o, -1.0, 3.0),
    "normal": lambda out, s, o: B.normal_fill(out, s, o, 0.5, 2.0),
    "trunc_normal": lambda out, s, o: B.trunc_normal_fill(out, s, o, 0.0, 1.0, -1.0, 2.0),
    # beyond ~13 std: float32 takes the double quantile (another code path)
    "trunc_normal_far": lambda out, s, o: B.trunc_normal_fill(out, s, o, 0.0, 1.0, 14.0, 20.0),
    "bernoulli": lambda out, s, o: B.bernoulli_fill(out, s, o, 0.3),
}


def _values_per_tile(name, dtype):
    return 64 if dtype == np.float32 or name == "bernoulli" else 32


@pytest.mark.parametrize("name", sorted(FILLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fill_is_bitwise_independent_of_thread_count(name, dtype):
    n = 200_003  # odd: a partial last tile; large enough for parallel_for to split it
    before = gf.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            gf.set_num_threads(threads)
            out = np.empty(n, dtype)
            FILLS[name](out, 1, 2)
            outs.append(out)
    finally:
        gf.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@pytest.mark.parametrize("name", sorted(FILLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fill_split_in_two_calls_equals_one_fill(name, dtype):
    v = _values_per_tile(name, dtype)
    n, first = 10 * v + 7, 3 * v
    whole = np.empty(n, dtype)
    assert FILLS[name](whole, 5, 40) == 16 * math.ceil(n / v)
    part1, part2 = np.empty(first, dtype), np.empty(n - first, dtype)
    used = FILLS[name](part1, 5, 40)
    assert used == 16 * first // v
    FILLS[name](part2, 5, 40 + used)
    np.testing.assert_array_equal(np.concatenate([part1, part2]), whole)


@pytest.mark.parametrize("name", sorted(FILLS))
def test_value_i_depends_only_on_seed_offset_and_i(name):
    whole = np.empty(1000, np.float32)
    FILLS[name](whole, 77, 1000)
    tail = np.empty(1000 - 128, np.float32)
    FILLS[name](tail, 77, 1000 + 32)  # two tiles of 16 blocks later
    np.testing.assert_array_equal(tail, whole[128:])
    other = np.empty(1000, np.float32)
    FILLS[name](other, 78, 1000)
    assert not np.array_equal(other, whole)


def test_generator_split_fill_through_the_public_api():
    g1, g2 = gf.Generator(3), gf.Generator(3)
    whole = gf.nn.init.normal_(gf.empty(200), generator=g1).numpy()
    a = gf.nn.init.normal_(gf.empty(128), generator=g2).numpy()
    b = gf.nn.init.normal_(gf.empty(72), generator=g2).numpy()
    np.testing.assert_array_equal(np.concatenate([a, b]), whole)
    assert g1.offset == g2.offset == 16 * 4


# ---------------------------------------------------------------- Generator


def test_get_state_set_state_replays():
    g = gf.Generator(11)
    gf.rand(100, generator=g)
    state = g.get_state()
    assert state.dtype == np.uint8 and state.shape == (16,)
    a = gf.randn(3, 5, generator=g).numpy()
    b = gf.rand(7, generator=g, dtype=gf.float64).numpy()
    g.set_state(state)
    np.testing.assert_array_equal(gf.randn(3, 5, generator=g).numpy(), a)
    np.testing.assert_array_equal(gf.rand(7, generator=g, dtype=gf.float64).numpy(), b)
    # bytes and numpy arrays are accepted too; another generator takes the stream over
    h = gf.Generator().set_state(bytes(state.numpy()))
    assert (h.initial_seed(), h.offset) == (11, 32)
    np.testing.assert_array_equal(gf.randn(3, 5, generator=h).numpy(), a)
    h.set_state(state.numpy())
    np.testing.assert_array_equal(gf.randn(3, 5, generator=h).numpy(), a)


def test_state_layout_is_seed_then_offset():
    g = gf.Generator(2**40 + 3)
    gf.rand(65, generator=g)  # two tiles
    seed, offset = g.get_state().numpy().view("<u8")
    assert (int(seed), int(offset)) == (2**40 + 3, 32)
    assert g.offset == 32 and g.initial_seed() == 2**40 + 3


def test_manual_seed_and_default_generator():
    gf.manual_seed(5)
    a = gf.rand(10).numpy()
    assert gf.initial_seed() == 5
    gf.manual_seed(5)
    np.testing.assert_array_equal(gf.rand(10).numpy(), a)
    np.testing.assert_array_equal(gf.rand(10, generator=gf.Generator(5)).numpy(), a)
    state = gf.get_rng_state()
    b = gf.randn(4).numpy()
    gf.set_rng_state(state)
    np.testing.assert_array_equal(gf.randn(4).numpy(), b)
    assert gf.manual_seed(1) is gf.default_generator


def test_seed_from_entropy_is_reproducible_afterwards():
    g = gf.Generator()
    assert g.initial_seed() == 67280421310721  # PyTorch's default seed
    s = g.seed()
    assert 0 <= s < 2**64 and g.initial_seed() == s
    a = gf.rand(5, generator=g).numpy()
    np.testing.assert_array_equal(gf.rand(5, generator=gf.Generator(s)).numpy(), a)


def test_generator_pickles():
    g = gf.Generator(9)
    gf.rand(3, generator=g)
    h = pickle.loads(pickle.dumps(g))
    np.testing.assert_array_equal(gf.rand(5, generator=h).numpy(), gf.rand(5, generator=g).numpy())


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, "3", True, None])
def test_bad_seed(bad):
    g = gf.Generator(4)
    gf.rand(1, generator=g)
    before = g.get_state().numpy().copy()
    with pytest.raises(ValueError, match="seed: expected a non-negative int"):
        gf.manual_seed(bad)
    with pytest.raises(ValueError, match="seed: expected a non-negative int"):
        g.manual_seed(bad)
    if bad is not None:  # Generator(None) is PyTorch's default seed
        with pytest.raises(ValueError, match="seed"):
            gf.Generator(bad)
    np.testing.assert_array_equal(g.get_state().numpy(), before)


def test_bad_state():
    g = gf.Generator(4)
    before = g.get_state().numpy().copy()
    with pytest.raises(ValueError, match="new_state: expected 16 uint8"):
        g.set_state(np.zeros(8, np.uint8))
    with pytest.raises(ValueError, match="new_state"):
        g.set_state(np.zeros(16, np.int64))
    with pytest.raises(TypeError, match="new_state"):
        g.set_state([0] * 16)
    np.testing.assert_array_equal(g.get_state().numpy(), before)


def test_rejected_fill_leaves_the_stream_unchanged():
    g = gf.Generator(4)
    w = gf.zeros(3, 4)
    with pytest.raises(ValueError, match="std"):
        gf.nn.init.normal_(w, std=-1.0, generator=g)
    with pytest.raises(ValueError, match="b - a: .* overflows float32"):
        gf.nn.init.uniform_(w, -3e38, 3e38, generator=g)
    assert g.offset == 0 and not w.numpy().any()
    with pytest.raises(TypeError, match="generator: expected a gf.Generator"):
        gf.nn.init.normal_(w, generator=np.random.default_rng(0))


def test_rand_randn_shapes_dtypes_and_errors():
    assert gf.rand(2, 3).shape == (2, 3) and gf.rand((4,)).dtype == np.float32
    assert gf.randn(2, dtype=gf.float64).dtype == np.float64
    assert gf.randn(3, requires_grad=True).requires_grad
    assert gf.rand(0).shape == (0,)
    with pytest.raises(TypeError, match="dtype"):
        gf.rand(3, dtype=gf.int64)
    with pytest.raises(ValueError, match="size"):
        gf.randn(-1)


def test_fill_into_non_contiguous_tensor_uses_c_order():
    g1, g2 = gf.Generator(6), gf.Generator(6)
    base = np.zeros((5, 7), np.float32)
    view = base.T  # (7, 5), not C-contiguous
    gf.nn.init.uniform_(view, generator=g1)
    want = gf.nn.init.uniform_(np.empty((7, 5), np.float32), generator=g2)
    np.testing.assert_array_equal(view, want)


def test_backend_rejects_bad_arrays():
    with pytest.raises(TypeError, match="out: expected dtype float32 or float64"):
        B.uniform_fill(np.empty(3, np.int32), 0, 0, 0.0, 1.0)
    with pytest.raises(ValueError, match="out: expected a C-contiguous array"):
        B.normal_fill(np.empty((4, 4), np.float32).T, 0, 0, 0.0, 1.0)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        B.uniform_fill(ro, 0, 0, 0.0, 1.0)
    with pytest.raises(ValueError, match="a, b: expected a <= b"):
        B.trunc_normal_fill(np.empty(3), 0, 0, 0.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="more than ~37 std"):
        B.trunc_normal_fill(np.empty(3), 0, 0, 0.0, 1.0, 50.0, 60.0)
    with pytest.raises(ValueError, match="p: expected a probability"):
        B.bernoulli_fill(np.empty(3), 0, 0, 1.5)
    with pytest.raises(ValueError, match="n_blocks"):
        B.philox_words(0, 0, -1)
    with pytest.raises(TypeError):  # a list would become a temporary, filled and lost
        B.uniform_fill([0.0, 0.0], 0, 0, 0.0, 1.0)
    with pytest.raises(ValueError, match="out: expected an aligned array"):
        B.uniform_fill(_unaligned_f32(9), 0, 0, 0.0, 1.0)
    with pytest.raises(ValueError, match="input: expected an aligned array"):
        B.dropout_forward(_unaligned_f32(9), 0, 0, 0.5, True)
    with pytest.raises(ValueError, match="grad_output: expected an aligned array"):
        B.dropout_backward(_unaligned_f32(9), np.ones(9, np.uint8), 2.0)


def _unaligned_f32(n):
    # a float32 view one byte into a buffer: writable, C-contiguous, not aligned
    return np.frombuffer(bytearray(4 * n + 1), dtype=np.uint8)[1:].view(np.float32)


def test_public_fills_and_dropout_accept_unaligned_arrays():
    a = _unaligned_f32(100)
    assert not a.flags.aligned
    gf.nn.init.normal_(a, generator=gf.Generator(4))
    np.testing.assert_array_equal(a, gf.randn(100, generator=gf.Generator(4)).numpy())
    u = _unaligned_f32(100)
    u[...] = 1.0
    x = gf.Tensor(u, requires_grad=True)
    assert not x.data.flags.aligned
    y = gf.nn.functional.dropout(x, 0.5, generator=gf.Generator(2))
    want = gf.nn.functional.dropout(gf.ones(100), 0.5, generator=gf.Generator(2))
    np.testing.assert_array_equal(y.data, want.data)
    g = _unaligned_f32(100)
    g[...] = 1.0
    y.backward(gf.Tensor(g))  # backward's grad_output path too
    np.testing.assert_array_equal(x.grad.data, want.data)  # x = 1: grad = mask * scale


def test_bernoulli_public_fill():
    m = gf.random.bernoulli_(gf.empty(100_000), 0.25, generator=gf.Generator(0)).numpy()
    assert set(np.unique(m).tolist()) <= {0.0, 1.0}
    assert abs(m.mean() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / m.size)
    with pytest.raises(ValueError, match="p: expected a probability"):
        gf.random.bernoulli_(gf.empty(3), -0.5)


@pytest.mark.parametrize("name", sorted(FILLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_fill_with_streaming_stores_equals_small_fills(name, dtype):
    # fills of >= 4 MiB write with non-temporal stores; halves below that size do not
    v = _values_per_tile(name, dtype)
    n = (4 << 20) // np.dtype(dtype).itemsize + 77
    whole = np.empty(n, dtype)
    FILLS[name](whole, 12, 3)
    first = (n // 2) // v * v
    a, b = np.empty(first, dtype), np.empty(n - first, dtype)
    used = FILLS[name](a, 12, 3)
    FILLS[name](b, 12, 3 + used)
    np.testing.assert_array_equal(whole[:first], a)
    np.testing.assert_array_equal(whole[first:], b)


# ---------------------------------------------------------------- the header under nvcc

_CUDA_PROBE = r"""
#include <cstdint>
#include "rng/philox.h"
using namespace gradfuse::philox;
__global__ void probe(float* out, double* out64, uint64_t seed) {
  uint32_t w0, w1, w2, w3;
  block_words(seed, threadIdx.x, w0, w1, w2, w3);
  float z0, z1;
  box_muller_f32(w0, w1, z0, z1);
  double d0, d1;
  box_muller_f64(w0, w1, w2, w3, d0, d1);
  out[threadIdx.x] = u01_f32(w2) + z0 + z1 + inv_normal_cdf_f32(u01_open_f64(w1, w2) * 0.5);
  out64[threadIdx.x] = d0 + d1 + inv_normal_cdf(u01_open_f64(w3, w0));
}
"""


def test_philox_header_compiles_for_cuda_devices(tmp_path):
    """philox.h is meant for CPU and GPU alike: nvcc must compile its device path (no GPU is
    needed to compile; issue 7 checks the bits on a GPU)."""
    import pathlib
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed")
    src = tmp_path / "probe.cu"
    src.write_text(_CUDA_PROBE)
    csrc = pathlib.Path(__file__).resolve().parent.parent / "csrc"
    r = subprocess.run([nvcc, "-std=c++17", "-arch=sm_80", "--fmad=false", "-I", str(csrc),
                        "-c", str(src), "-o", str(tmp_path / "probe.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_generator_locks_are_renewed_in_a_forked_child():
    # a lock held by another thread of the parent at the fork would never be released in the
    # child; every live generator (not only the default one) gets a fresh lock there
    g = gf.Generator(3)
    want = gf.rand(5, generator=gf.Generator(3)).numpy()
    with g._lock, gf.random.default_generator._lock:
        pid = os.fork()
        if pid == 0:  # child: both draws would block forever on the inherited locks
            ok = np.array_equal(gf.rand(5, generator=g).numpy(), want)
            gf.rand(5)
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child blocked on an inherited generator lock")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0


def test_unpickling_validates_the_state():
    g = gf.Generator(0)
    state = g.__getstate__()
    with pytest.raises(ValueError, match="offset"):
        gf.Generator.__new__(gf.Generator).__setstate__({**state, "offset": -1})
    with pytest.raises(ValueError, match="seed"):
        gf.Generator.__new__(gf.Generator).__setstate__({**state, "seed": 2**64})

"""ops.matmul(..., precision="bfloat16") (src/cpp/gemm/bf16.h): each operand value rounded to
bfloat16, products accumulated in float32, a float32 result.

Legend: M, N rows and columns of the product, K its reduction length; u = 2⁻²⁴, float32's unit
roundoff. Shapes are written (M, K, N).

The oracle rounds the same operands to bfloat16 in NumPy (bf16_round below: round to nearest
even through the uint32 bits; NaN quieted; zeros and float32 subnormals to a signed zero, as
the x86 instructions do) and multiplies them in float64. The products of two bfloat16 values
are exact in float32, so a path differs from the oracle only by its float32 additions: at most
about K·u·Σ_p |a_ip||b_pj| (tolerance below). Every path this CPU runs is forced in turn
(fastmlp._testing.bf16_path), the portable one under every SIMD flavour (its products run on
that flavour's float32 kernel). The rounding itself is checked bit for bit.
"""

import numpy as np
import pytest

import fastmlp
from fastmlp import _testing, ops
from _helpers import LAYOUTS, assert_unchanged, freeze, laid_out, run_python

BF16_PATHS = ops.supported_bf16_paths()


def bf16_round(x):
    """x (float32) rounded to bfloat16, as float32: the GEMM's rounding in NumPy."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    exponent = bits & np.uint32(0x7F800000)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    # Round to nearest, ties to even: add 0x7FFF plus the lowest kept bit, then truncate.
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    rounded &= np.uint32(0xFFFF0000)
    rounded = np.where(nan, (bits & np.uint32(0xFFFF0000)) | np.uint32(0x00400000), rounded)
    rounded = np.where(exponent == 0, bits & np.uint32(0x80000000), rounded)
    return rounded.astype(np.uint32).view(np.float32)


def ref_matmul_bf16(a, b, trans_a, trans_b):
    """(the product of the rounded operands in float64, Σ_p |a_ip||b_pj|)."""
    a64 = bf16_round(a).astype(np.float64)
    b64 = bf16_round(b).astype(np.float64)
    a64 = a64.T if trans_a else a64
    b64 = b64.T if trans_b else b64
    with np.errstate(invalid="ignore", over="ignore"):
        return a64 @ b64, np.abs(a64) @ np.abs(b64)


def assert_close_to_reference(got, a, b, trans_a=False, trans_b=False):
    ref, scale = ref_matmul_bf16(a, b, trans_a, trans_b)
    k = a.shape[0] if trans_a else a.shape[1]
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got) & (got > 0), np.isinf(ref) & (ref > 0))
    np.testing.assert_array_equal(np.isinf(got) & (got < 0), np.isinf(ref) & (ref < 0))
    finite = np.isfinite(ref)
    # 1e-36: VDPBF16PS flushes a subnormal float32 sum to zero.
    tol = (k + 2) * 2.0**-24 * scale[finite] + 1e-36
    err = np.abs(got[finite].astype(np.float64) - ref[finite])
    worst = np.argmax(err - tol) if err.size else 0
    assert np.all(err <= tol), (f"error {err.flat[worst]:.3g} > tolerance {tol.flat[worst]:.3g}"
                                f" (K={k})")


@pytest.fixture(params=BF16_PATHS)
def bf16_path(request):
    """Every bfloat16 product through this path."""
    with _testing.bf16_path(request.param):
        yield request.param


# ---- the rounding ----------------------------------------------------------------------------

def as_bits(values):
    return np.array(values, dtype=np.uint32).view(np.float32)


@pytest.mark.parametrize("x_bits, rounded_bits", [
    (0x3F800000, 0x3F800000),  # 1 exactly
    (0x3F808000, 0x3F800000),  # 1 + 2⁻⁸: the tie between 1 and 1 + 2⁻⁷ goes to even (1)
    (0x3F818000, 0x3F820000),  # 1 + 3·2⁻⁸: the tie goes to even (1 + 2⁻⁶), upwards
    (0x3F808001, 0x3F810000),  # just past the tie: up
    (0x3F807FFF, 0x3F800000),  # just below the tie: down
    (0xBF818000, 0xBF820000),  # negative ties as positive ones
    (0x7F7F0000, 0x7F7F0000),  # bfloat16's largest finite value
    (0x7F7F7FFF, 0x7F7F0000),  # below the tie with inf: stays finite
    (0x7F7F8000, 0x7F800000),  # the tie between the largest finite and inf: inf (even)
    (0x7F7FFFFF, 0x7F800000),  # float32's largest finite value: inf
    (0xFF7FFFFF, 0xFF800000),
    (0x7F800000, 0x7F800000),  # +inf
    (0xFF800000, 0xFF800000),  # -inf
    (0x7FC00000, 0x7FC00000),  # the quiet NaN
    (0x7F800001, 0x7FC00000),  # a signalling NaN, payload below bf16's bits: quieted
    (0x7FA12345, 0x7FE10000),  # a signalling NaN keeps its high payload bits, quieted
    (0xFFC00001, 0xFFC00000),  # a negative NaN stays negative (no carry into the sign)
    (0x7FFFFFFF, 0x7FFF0000),  # the NaN that a carry would turn into 0x80000000
    (0x00800000, 0x00800000),  # the smallest normal float32
    (0x00000001, 0x00000000),  # subnormals: zero (as VCVTNE2PS2BF16 / VDPBF16PS)
    (0x007FFFFF, 0x00000000),
    (0x807FFFFF, 0x80000000),  # ... keeping the sign
    (0x80000000, 0x80000000),  # -0
    (0x00000000, 0x00000000),
])
def test_rounding_of_special_values(x_bits, rounded_bits):
    x = as_bits([x_bits])
    assert bf16_round(x).view(np.uint32)[0] == rounded_bits
    assert _testing.round_bf16(x).view(np.uint32)[0] == rounded_bits


def test_rounding_matches_numpy_on_random_bit_patterns():
    """Every class of float32 (normal, subnormal, inf, NaN of any payload), bit for bit."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**32, 200_000, dtype=np.uint32).view(np.float32)
    got = _testing.round_bf16(x).view(np.uint32)
    np.testing.assert_array_equal(got, bf16_round(x).view(np.uint32))
    assert np.all(got & 0xFFFF == 0)


# ---- matmul ----------------------------------------------------------------------------------

# (M, K, N). Tiles: avx512bf16 12×32, k in pairs (odd K: a zero pad); the portable path takes
# the float32 tile of each flavour (generic 4×8, avx2 6×16, avx512 12×32). Blocks derive from
# the caches; on a Zen 5 (48K L1d, 1M L2): float32 AVX-512 MC 240, KC 768, NC 4096, and the
# bf16 kernel's KC twice that, 1536.
SHAPES = [
    (1, 1, 1), (1, 2, 1), (1, 3, 17), (2, 3, 5), (3, 1, 7), (7, 13, 31), (12, 2, 32),
    (13, 3, 33), (11, 31, 31), (31, 67, 13), (25, 64, 65), (64, 9, 10), (97, 127, 129),
    (241, 33, 17),                                 # M over MC
    (5, 769, 9), (9, 1537, 33), (3, 3073, 5),      # K over the KCs (odd: the pair straddles)
    (2, 5, 4099),                                  # N over NC
    (300, 257, 513),                               # several blocks of every size
]


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True),
                                              (True, True)], ids=["NN", "TN", "NT", "TT"])
@pytest.mark.parametrize("m, k, n", SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in SHAPES])
def test_matches_reference(bf16_path, m, k, n, trans_a, trans_b):
    rng = np.random.default_rng([m, k, n, trans_a, trans_b])
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    got = ops.matmul(a, b, trans_a, trans_b, precision="bfloat16")
    assert_close_to_reference(got, a, b, trans_a, trans_b)


@pytest.mark.parametrize("m, k, n", [(13, 31, 33), (97, 301, 65), (1, 7, 3), (1, 301, 65),
                                     (250, 800, 40)])
def test_portable_path_on_every_flavour(isa, m, k, n):
    """The portable path runs the active flavour's float32 tile, blocking and packers (AVX-512's
    for row-major op(A) and op(B) = Wᵀ, the rounding copy for the rest)."""
    rng = np.random.default_rng([m, k, n])
    for trans_a, trans_b in [(False, False), (True, False), (False, True), (True, True)]:
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
        with _testing.bf16_path("portable"):
            got = ops.matmul(a, b, trans_a, trans_b, precision="bfloat16")
        assert_close_to_reference(got, a, b, trans_a, trans_b)


@pytest.mark.parametrize("k", [1, 2, 15, 16, 31, 32, 33, 64, 301, 1537])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 65])
def test_batch_of_one_against_rows_of_w(bf16_path, k, n):
    """x (1,K) · Wᵀ with W (N,K) row-major: the GEMV (W read in place, rounded in registers
    by the avx512bf16 path, block by block by the portable one); K around the 32-value pairs of
    the kernel and its masked tail, N around its 8 rows per pass; x contiguous and strided, W's
    rows further apart than K (NaN between them: never read)."""
    rng = np.random.default_rng([k, n])
    x_values = rng.standard_normal((1, k)).astype(np.float32)
    w_values = rng.standard_normal((n, k)).astype(np.float32)
    wide = np.full((n, k + 3), np.nan, np.float32)
    wide[:, :k] = w_values
    strided_x = np.full((1, 2 * k), np.nan, np.float32)
    strided_x[:, ::2] = x_values
    for x in (x_values, strided_x[:, ::2]):
        for w in (w_values, wide[:, :k]):
            got = ops.matmul(x, w, trans_b=True, precision="bfloat16")
            assert_close_to_reference(got, x_values, w_values, trans_b=True)
    # Special values on the GEMV's own rounding: 1 + 2⁻¹⁰ rounds to 1, a subnormal to 0, NaN
    # and inf propagate, and the masked tail adds nothing.
    x = np.full((1, k), 1 + 2.0**-10, np.float32)
    w = np.ones((n, k), np.float32)
    np.testing.assert_array_equal(ops.matmul(x, w, trans_b=True, precision="bfloat16"),
                                  np.full((1, n), k, np.float32))
    w[0] = 1e30
    x[0, -1] = 1e-39
    got = ops.matmul(x, w, trans_b=True, precision="bfloat16")
    assert_close_to_reference(got, x, w, trans_b=True)
    if n > 1:
        w[-1, 0] = np.nan
        got = ops.matmul(x, w, trans_b=True, precision="bfloat16")
        assert np.isnan(got[0, -1]) and not np.isnan(got[0, :-1]).any()


@pytest.mark.parametrize("layout_b", LAYOUTS)
@pytest.mark.parametrize("layout_a", LAYOUTS)
def test_every_layout(bf16_path, layout_a, layout_b):
    """Transposed, Fortran, strided (NaN in the skipped elements), negative-stride, read-only
    and unaligned operands, each packer (k contiguous, lanes contiguous, neither) reached."""
    rng = np.random.default_rng([LAYOUTS.index(layout_a), LAYOUTS.index(layout_b)])
    a_values = rng.standard_normal((37, 29)).astype(np.float32)
    b_values = rng.standard_normal((29, 45)).astype(np.float32)
    for trans_a, trans_b in [(False, False), (True, True)]:
        a = laid_out(a_values.T if trans_a else a_values, layout_a)
        b = laid_out(b_values.T if trans_b else b_values, layout_b)
        frozen = freeze(a, b)
        got = ops.matmul(a, b, trans_a, trans_b, precision="bfloat16")
        assert_unchanged(frozen)
        assert_close_to_reference(got, a_values, b_values)


def test_rounds_the_operands(bf16_path):
    """1 + 2⁻¹⁰ is 1 in bfloat16: the product is exactly 1 (and 1 + 2⁻¹⁰ in float32)."""
    a = np.full((3, 5), 1 + 2.0**-10, np.float32)
    b = np.zeros((5, 4), np.float32)
    b[0] = 1
    np.testing.assert_array_equal(ops.matmul(a, b, precision="bfloat16"), np.ones((3, 4)))
    np.testing.assert_array_equal(ops.matmul(a, b), np.full((3, 4), 1 + 2.0**-10))


def test_nan_and_inf_propagate(bf16_path):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((29, 41)).astype(np.float32)
    b = np.abs(rng.standard_normal((41, 35))).astype(np.float32) + 0.5
    a[3, 7] = np.nan            # row 3 of the product: NaN
    a[5, 8] = np.inf            # row 5: +inf (b > 0)
    a[6, 9] = -np.inf           # row 6: -inf
    a[8, 1] = a[8, 2] = np.inf
    b[2, 4] = -b[2, 4]          # row 8, column 4: inf - inf = NaN
    a[10, 0] = np.finfo(np.float32).max  # rounds to inf in bfloat16: row 10 is +inf
    a[11, 40] = np.nan          # the last k, odd K: the pad pairs it with zeros
    got = ops.matmul(a, b, precision="bfloat16")
    assert np.isnan(got[3]).all() and np.isnan(got[11]).all()
    assert np.isposinf(got[5]).all() and np.isneginf(got[6]).all()
    assert np.isposinf(got[10]).all() and np.isnan(got[8, 4])
    assert_close_to_reference(got, a, b)
    # The NaN of b's column, with trans_b (another packer).
    bt = np.ascontiguousarray(b.T)
    bt[2, 0] = np.nan
    got = ops.matmul(a[:, :40], bt[:, :40], trans_b=True, precision="bfloat16")
    assert np.isnan(got[:, 2]).all()
    assert_close_to_reference(got, a[:, :40], bt[:, :40], trans_b=True)


def test_subnormal_operands_count_as_zero(bf16_path):
    """Every path multiplies zero for a float32 subnormal, as VDPBF16PS does."""
    a = np.full((13, 33), 1e-39, np.float32)  # subnormal
    b = np.full((33, 17), 1e30, np.float32)   # 1e-39 · 1e30 would be a normal 1e-9
    np.testing.assert_array_equal(ops.matmul(a, b, precision="bfloat16"), np.zeros((13, 17)))
    a[:, 0] = np.finfo(np.float32).tiny        # the smallest normal stays
    got = ops.matmul(a, b, precision="bfloat16")
    assert_close_to_reference(got, a, b)
    assert np.all(got > 0)


@pytest.mark.parametrize("m, k, n", [(0, 3, 4), (3, 0, 4), (3, 4, 0), (0, 0, 0)])
def test_empty(bf16_path, m, k, n):
    got = ops.matmul(np.ones((m, k), np.float32), np.ones((k, n), np.float32),
                     precision="bfloat16")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.zeros((m, n)))


def test_paths_agree(bf16_path):
    """Each path against the other: the same rounded operands, only the float32 additions
    ordered differently."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((200, 515)).astype(np.float32)
    b = rng.standard_normal((515, 77)).astype(np.float32)
    got = ops.matmul(a, b, precision="bfloat16")
    with _testing.bf16_path("portable"):
        portable = ops.matmul(a, b, precision="bfloat16")
    _, scale = ref_matmul_bf16(a, b, False, False)
    assert np.all(np.abs(got - portable.astype(np.float64)) <= 2 * 517 * 2.0**-24 * scale)


@pytest.mark.parametrize("m, k, n", [(97, 301, 65), (25, 3, 200), (300, 257, 513)])
def test_bitwise_identical_for_any_thread_count(bf16_path, m, k, n):
    """Every product split over 2 threads (as the pool splits large ones) gives the very bits
    of one thread: no task splits the K reduction."""
    rng = np.random.default_rng([m, k, n])
    a = rng.standard_normal((k, m)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    previous = fastmlp.get_num_threads()
    try:
        fastmlp.set_num_threads(1)
        one = ops.matmul(a, b, trans_a=True, precision="bfloat16")
        fastmlp.set_num_threads(2)
        with _testing.split_every_product():
            two = ops.matmul(a, b, trans_a=True, precision="bfloat16")
    finally:
        fastmlp.set_num_threads(previous)
    np.testing.assert_array_equal(one.view(np.uint32), two.view(np.uint32))
    assert_close_to_reference(two, a, b, trans_a=True)


# ---- refusals --------------------------------------------------------------------------------

def test_float64_refuses_bfloat16():
    a = np.ones((2, 3))
    with pytest.raises(TypeError, match="float64 refuses bfloat16"):
        ops.matmul(a, np.ones((3, 4)), precision="bfloat16")
    with pytest.raises(TypeError, match="share one dtype"):
        ops.matmul(a, np.ones((3, 4), np.float32), precision="bfloat16")


def test_bad_precision_and_shapes():
    a = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="precision must be one of"):
        ops.matmul(a, a.T, precision="bf16")
    with pytest.raises(ValueError, match="op\\(a\\) has 3 columns but op\\(b\\) has 2 rows"):
        ops.matmul(a, a, precision="bfloat16")
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.matmul(a.astype(np.int32), a.T, precision="bfloat16")


def test_forcing_an_unknown_path_fails():
    with pytest.raises(ValueError, match="unknown bf16 path"):
        _testing.force_bf16_path("amx")
    if "avx512bf16" not in BF16_PATHS:
        with pytest.raises(ValueError, match="lacks AVX512_BF16"):
            _testing.force_bf16_path("avx512bf16")


# ---- the choice of path ----------------------------------------------------------------------

def test_path_follows_the_flavour(isa):
    expected = "avx512bf16" if isa == "avx512" and "avx512bf16" in BF16_PATHS else "portable"
    assert ops.bf16_path() == expected
    f32, bf16 = ops.gemm_config("float32"), ops.gemm_config("bfloat16")
    if expected == "portable":
        assert all(bf16[key] == f32[key] for key in ("MR", "NR", "MC", "KC", "NC"))
    else:
        assert (bf16["MR"], bf16["NR"], bf16["KC"]) == (12, 32, 2 * f32["KC"])
    with _testing.bf16_path("portable"):
        assert ops.bf16_path() == "portable"
    assert ops.bf16_path() == expected


@pytest.mark.parametrize("isa_name", ["generic", "avx2", "avx512"])
def test_fastmlp_isa_chooses_the_path(isa_name):
    """FASTMLP_ISA in a fresh process: generic and avx2 run the portable path, avx512 the
    AVX512-BF16 kernel where the CPU has it."""
    if isa_name not in ops.supported_isas():
        pytest.skip(f"this CPU does not run {isa_name}")
    expected = ("avx512bf16" if isa_name == "avx512" and "avx512bf16" in BF16_PATHS
                else "portable")
    proc = run_python("from fastmlp import ops; print(ops.bf16_path())",
                      {"FASTMLP_ISA": isa_name})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == expected


_OTHER_CACHES_SCRIPT = r"""
import numpy as np
from fastmlp import _testing, ops
cfg = ops.gemm_config()
assert (cfg["MC"], cfg["KC"], cfg["NC"]) == (360, 512, 1536), cfg
bf16 = ops.gemm_config("bfloat16")
expected = (360, 1024, 1536) if ops.bf16_path() == "avx512bf16" else (360, 512, 1536)
assert (bf16["MC"], bf16["KC"], bf16["NC"]) == expected, bf16
rng = np.random.default_rng(0)
# One past each block: MC 360; KC 1024 (avx512bf16) and 512 (portable); NC 1536.
a = rng.standard_normal((1027, 361)).astype(np.float32)
b = rng.standard_normal((1027, 1537)).astype(np.float32)
r = lambda x: _testing.round_bf16(x).astype(np.float64)
ref = r(a).T @ r(b)
scale = np.abs(r(a)).T @ np.abs(r(b))
for path in ops.supported_bf16_paths():
    with _testing.bf16_path(path):
        got = ops.matmul(a, b, trans_a=True, precision="bfloat16")
    assert np.all(np.abs(got - ref) <= 1029 * 2.0**-24 * scale), path
print("ok")
"""


def test_blocks_follow_the_detected_caches():
    """The bf16 blocks come from the float32 ones, which come from the caches: Zen 4's, forced
    with FASTMLP_CACHE_SIZES, give other MC/KC/NC, and products across them stay right."""
    if "avx512" not in ops.supported_isas():
        pytest.skip("the blocks checked are AVX-512's")
    proc = run_python(_OTHER_CACHES_SCRIPT, {
        "FASTMLP_ISA": "avx512",
        "FASTMLP_CACHE_SIZES": "l1d=32K,l1d_ways=8,l2=1M,l2_ways=8,l3=32M,l3_ways=16,"
                               "l3_sharing=8"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"

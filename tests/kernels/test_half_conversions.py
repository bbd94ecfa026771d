"""The 16-bit formats' conversions (src/cbn_half.h) at every SIMD level, vector and scalar
forms (the single vectors and the pairs of the element-wise passes): widening every one of the
65,536 bit patterns of binary16 and bfloat16, and narrowing
float32 bit patterns at and beside every rounding boundary of each format, against NumPy's
float16 cast and ml_dtypes' bfloat16 cast, bit for bit (NaN: stays NaN with its sign)."""

import numpy as np
import pytest

from cbn import _core

F16_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def _bf16():
    return pytest.importorskip("ml_dtypes").bfloat16


def _same(got_bits, want_bits, is_nan_got, is_nan_want, sign_bit):
    """Bit-identical where want is not NaN; NaN (with want's sign) where it is."""
    got_bits, want_bits = np.asarray(got_bits), np.asarray(want_bits)
    nan = is_nan_want
    assert np.array_equal(is_nan_got, nan)
    assert np.array_equal(got_bits[~nan], want_bits[~nan]), np.flatnonzero(
        got_bits[~nan] != want_bits[~nan])[:5]
    assert np.array_equal(got_bits[nan] & sign_bit, want_bits[nan] & sign_bit)


def _f32(bits):
    return np.ascontiguousarray(bits, dtype=np.uint32).view(np.float32)


def _boundaries(values32):
    """float32 values at, just below and just above each midpoint of adjacent finite values of
    a 16-bit format (given as float32, ascending, positive), at the top of the range (the
    overflow to infinity), and both signs."""
    v = values32[np.isfinite(values32)].astype(np.float64)
    v = np.unique(v[v >= 0])
    mid = ((v[:-1] + v[1:]) / 2).astype(np.float32)  # exact: 12 bits at most
    top = v[-1] + (v[-1] - v[-2]) / 2                   # ties above the largest round to inf
    mid = np.concatenate([mid, np.float32([top])])
    near = np.concatenate([mid, np.nextafter(mid, np.float32(np.inf)),
                           np.nextafter(mid, np.float32(0)), values32[np.isfinite(values32)]])
    specials = _f32([0x7F800000, 0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x7F7FFFFF, 0x00000001,
                     0x00800000, 0x007FFFFF, 0x33000000, 0x33000001, 0x387FC000, 0x38800000])
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32).view(np.float32)
    pos = np.concatenate([near, specials, noise])
    return np.ascontiguousarray(np.concatenate([pos, -pos]), dtype=np.float32)


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pairs"])
def test_float16_widening_exact_for_all_65536(level, pairs):
    got = _core.half_convert(F16_BITS, "float16", False, pairs)
    want = F16_BITS.view(np.float16).astype(np.float32)
    _same(got.view(np.uint32), want.view(np.uint32), np.isnan(got), np.isnan(want), 0x80000000)


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pairs"])
def test_bfloat16_widening_exact_for_all_65536(level, pairs):
    bf16 = _bf16()
    got = _core.half_convert(F16_BITS, "bfloat16", False, pairs)
    want = F16_BITS.view(bf16).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # NaN payloads too


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pairs"])
def test_float16_narrowing_rounds_as_numpy(level, pairs):
    x = _boundaries(F16_BITS.view(np.float16).astype(np.float32))
    got = _core.half_convert(x, "float16", True, pairs)
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    _same(got, want, np.isnan(got.view(np.float16)), np.isnan(x), 0x8000)


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pairs"])
def test_bfloat16_narrowing_rounds_as_ml_dtypes(level, pairs):
    bf16 = _bf16()
    x = _boundaries(F16_BITS.view(bf16).astype(np.float32))
    got = _core.half_convert(x, "bfloat16", True, pairs)
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(bf16).view(np.uint16)
    # ml_dtypes gives the canonical quiet NaN with the sign, as the kernels do
    assert np.array_equal(got, want)


def test_conversion_hook_checks_its_arguments():
    with pytest.raises(ValueError, match="fmt"):
        _core.half_convert(F16_BITS, "float8", False)
    with pytest.raises(TypeError, match="uint16"):
        _core.half_convert(F16_BITS.astype(np.int32), "float16", False)

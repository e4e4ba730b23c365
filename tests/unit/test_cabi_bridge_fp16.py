"""aclFloatToFloat16 / aclFloat16ToFloat: IEEE round-to-nearest-even against NumPy for every
finite value that fits a half, and CANN's saturation where IEEE would give inf or NaN."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from cabi.bridge.fp16 import HALF_MAX_BITS, float_to_half, half_to_float


def _numpy_half_bits(value: np.float32) -> int:
    return int(np.array([value], dtype=np.float32).astype(np.float16).view(np.uint16)[0])


def test_every_finite_half_converts_exactly_both_ways() -> None:
    bits = np.arange(0x10000, dtype=np.uint32).astype(np.uint16)
    finite = bits[(bits & 0x7C00) != 0x7C00]
    expected = finite.view(np.float16).astype(np.float32)
    for raw, value in zip(finite.tolist(), expected.tolist()):
        assert half_to_float(raw) == value
        assert float_to_half(value) == raw or (value == 0.0 and raw in (0, 0x8000))


def test_negative_zero_keeps_its_sign() -> None:
    assert float_to_half(-0.0) == 0x8000
    assert math.copysign(1.0, half_to_float(0x8000)) == -1.0


def test_rounding_matches_numpy_on_random_float32s() -> None:
    rng = np.random.default_rng(7)
    # all float32 bit patterns whose magnitude stays below the rounding edge of 65504
    raw = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    values = raw.view(np.float32)
    values = values[np.isfinite(values) & (np.abs(values) < 65520.0)]
    for value in values.tolist():
        assert float_to_half(value) == _numpy_half_bits(np.float32(value)), value


@pytest.mark.parametrize(
    ("value", "bits"),
    [
        (1.0 + 2.0**-11, 0x3C00),  # a tie rounds to the even mantissa (down)
        (1.0 + 3 * 2.0**-11, 0x3C02),  # a tie rounds to the even mantissa (up)
        (2.0**-24, 0x0001),  # the smallest subnormal
        (2.0**-25, 0x0000),  # half of it: a tie, to even (zero)
        (2.0**-25 * 1.5, 0x0001),
        (65504.0, 0x7BFF),
        (65519.0, 0x7BFF),  # still rounds down to the largest half
    ],
)
def test_rounding_edges(value: float, bits: int) -> None:
    value = struct.unpack("f", struct.pack("f", value))[0]  # a C float
    assert float_to_half(value) == bits


@pytest.mark.parametrize(
    ("value", "bits"),
    [
        (65520.0, HALF_MAX_BITS),  # IEEE: +inf
        (1e10, HALF_MAX_BITS),
        (-1e10, 0x8000 | HALF_MAX_BITS),
        (math.inf, HALF_MAX_BITS),
        (-math.inf, 0x8000 | HALF_MAX_BITS),
        (math.nan, HALF_MAX_BITS),
    ],
)
def test_float_to_half_saturates_like_cann(value: float, bits: int) -> None:
    assert float_to_half(value) == bits


@pytest.mark.parametrize(
    ("bits", "value"),
    [(0x7C00, 65536.0), (0xFC00, -65536.0), (0x7E00, 98304.0), (0x7FFF, 131008.0)],
)
def test_half_to_float_reads_exponent_31_as_a_number_like_cann(bits: int, value: float) -> None:
    assert half_to_float(bits) == value

"""``aclFloatToFloat16`` / ``aclFloat16ToFloat`` as CANN computes them (pure functions).

Finite values that fit a half are IEEE conversions with round-to-nearest-even, subnormals
included. Where IEEE would give an infinity or a NaN, CANN's converter does not (its fp16 code
in hicann/runtime ``src/acl/aclrt_impl/types/fp16_impl.cpp`` says so): float → half
*saturates*: an infinity, a NaN, and anything that rounds past 65504 become ±65504
(``0x7BFF`` / ``0xFBFF``, the sign kept); half → float reads the exponent 31 as an ordinary
exponent: ``0x7C00`` (+inf) is 65536.0, ``0x7E00`` (a NaN) 98304.0 (``(1 + m/1024) * 2**16``).
"""

from __future__ import annotations

import math
import struct

__all__ = ["HALF_MAX_BITS", "float_to_half", "half_to_float"]

HALF_MAX_BITS = 0x7BFF
"""65504.0, the largest finite half: where CANN's conversion saturates."""

_SIGN = 0x8000
_EXPONENT_31 = 0x7C00
_MANTISSA = 0x03FF


def float_to_half(value: float) -> int:
    """The half bits of the C float ``value`` (RNE; saturating like CANN instead of inf/NaN)."""
    sign = _SIGN if math.copysign(1.0, value) < 0 else 0
    if math.isnan(value) or math.isinf(value):
        return sign | HALF_MAX_BITS
    try:
        bits = struct.unpack("<H", struct.pack("<e", value))[0]
    except OverflowError:  # rounds past the largest half
        return sign | HALF_MAX_BITS
    if bits & _EXPONENT_31 == _EXPONENT_31:  # struct rounded up to inf
        return sign | HALF_MAX_BITS
    return bits


def half_to_float(bits: int) -> float:
    """The float of the half ``bits`` (exact; exponent 31 read as a number, as CANN does)."""
    bits &= 0xFFFF
    if bits & _EXPONENT_31 != _EXPONENT_31:
        return struct.unpack("<e", struct.pack("<H", bits))[0]
    magnitude = (1.0 + (bits & _MANTISSA) / 1024.0) * 65536.0
    return -magnitude if bits & _SIGN else magnitude

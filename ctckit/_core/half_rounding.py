"""float32 values rounded to IEEE half floats (float16), for the NumPy frontend's results.

NumPy rounds float32 to float16 in about 2 ns a value, but in about 65 ns when the result
is subnormal (below 2^-14 = 6.1e-5 in magnitude). A float16 gradient is mostly such values
(a softmax's mass spread over thousands of classes, times the reduction's 1 / (N L)):
NumPy's rounding of bpe1k's 2M-value gradient took 130 ms, against 2 ms for the loss and
gradient themselves. This kernel rounds the same way (to nearest, ties to even;
subnormals, infinities and NaN included; bit for bit NumPy's result, NaN payloads aside)
at the same cost for every value.

The rounding, on the float32 bits ``f`` of ``|x|`` (after F. Giesen's ``float_to_half``):

- ``|x| >= 2^16``: infinity, or a quiet NaN for a NaN;
- ``|x| < 2^-14`` (a subnormal or zero half): ``|x| + 0.5`` in float32 rounds ``|x|`` to a
  multiple of 2^-24, the half's quantum there, by the hardware's own rounding; the low
  bits of the sum are then the half's bits;
- otherwise: rebias the exponent (127 -> 15) and drop 13 mantissa bits, adding
  ``0xfff + (the kept mantissa's lowest bit)`` first, which rounds to nearest, ties to
  even (a carry into the exponent gives the next power of two, or infinity).
"""

import numpy as np

from .config import NJIT
from .disk_cache import njit
from .intrinsics import bits_from_float32, float32_from_bits

_INFINITY = 255 << 23  # float32 bits of inf
_OVERFLOW = (127 + 16) << 23  # 2^16: from here on, infinity
_NORMAL = (127 - 14) << 23  # 2^-14: the smallest normal half
_HALF = 126 << 23  # float32 bits of 0.5: its quantum is 2^-24


@njit(**NJIT)  # no reassociation or nsz: the float32 add must round as IEEE says (``contract`` fuses nothing here)
def _half_bits(value):
    f = np.int64(bits_from_float32(value)) & 0xFFFFFFFF
    sign = (f >> 16) & 0x8000
    f &= 0x7FFFFFFF
    if f >= _OVERFLOW:
        bits = 0x7E00 if f > _INFINITY else 0x7C00
    elif f < _NORMAL:
        total = float32_from_bits(np.int32(f)) + float32_from_bits(np.int32(_HALF))
        bits = (np.int64(bits_from_float32(total)) & 0xFFFFFFFF) - _HALF
    else:
        f += ((15 - 127) << 23) + 0xFFF + ((f >> 13) & 1)
        bits = f >> 13
    return np.uint16(bits | sign)


@njit(**NJIT)
def _round_into(values, out):
    for i in range(values.shape[0]):
        out[i] = _half_bits(values[i])


def float16_from_float32(values: np.ndarray) -> np.ndarray:
    """``values.astype(np.float16)`` (float32 values, any layout), rounded here."""
    source = np.ascontiguousarray(values, dtype=np.float32)
    out = np.empty(source.shape, dtype=np.uint16)
    _round_into(source.reshape(-1), out.reshape(-1))
    return out.view(np.float16)

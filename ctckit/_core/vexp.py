"""A vectorisable ``exp`` for rows of non-positive float64 values.

Numba calls libm's scalar ``exp`` (about 20 cycles); the emissions ``exp(log y - m)`` are
the hot transcendental of the CTC kernels. This one is plain arithmetic that LLVM turns
into SIMD code: Cody-Waite range reduction ``x = n ln2 + r``, ``|r| <= ln2 / 2``, a
degree-12 Taylor polynomial for ``exp(r)`` (truncation error below 2e-16), evaluated by
Estrin's scheme (a dependency chain of 5 multiply-adds instead of Horner's 12), and
``2^n`` made by writing ``n + 1023`` into the exponent bits. Relative error below 5e-16
(within 3 ulp of NumPy's ``exp`` on 8e5 points of [-708, 0]).

Inputs are expected to be ``<= 0`` (log-probs shifted by a maximum). Positive inputs are
clamped to 0; inputs below ``-708`` (results below the normal range) give 0; ``-inf``
gives 0; NaN gives NaN.
"""

import math

import numpy as np

from .config import NJIT
from .disk_cache import njit
from .intrinsics import bits_from_float, bits_from_float32, float32_from_bits, float_from_bits

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # ln 2 split so that n * _LN2_HI is exact for |n| < 2^11
_LN2_LO = 1.4286068203094173e-06
_LOWEST = -708.0
_SHIFTER = 6755399441055744.0
"""1.5 * 2^52: ``v + _SHIFTER`` rounds ``v`` to an integer and leaves it in the low bits of
the result's mantissa (for ``|v| < 2^51``), so ``2^n`` is made by integer adds and shifts."""
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12 = (1.0 / math.factorial(i) for i in range(13))


@njit(**NJIT)  # not inlined: reassociation (the callers' flags) would undo the Cody-Waite split
def vexp_shifted(src, shift, dst):
    """``dst[i] = exp(src[i] - shift)`` for ``i < dst.shape[0]``, in one branch-free loop
    that vectorises: no float-to-integer conversion (AVX2 has none for float64 lanes)."""
    for i in range(dst.shape[0]):
        x0 = np.float64(src[i]) - shift
        x = x0 if x0 == x0 else 0.0
        x = _LOWEST if x < _LOWEST else x
        x = 0.0 if x > 0.0 else x
        shifted = x * _LOG2E + _SHIFTER  # n = round(x / ln 2) in the low mantissa bits
        n = shifted - _SHIFTER
        r = x - n * _LN2_HI - n * _LN2_LO
        r2 = r * r
        r4 = r2 * r2
        low = (_C0 + _C1 * r) + (_C2 + _C3 * r) * r2
        mid = (_C4 + _C5 * r) + (_C6 + _C7 * r) * r2
        high = (_C8 + _C9 * r) + (_C10 + _C11 * r) * r2
        p = (low + mid * r4) + (high + _C12 * r4) * (r4 * r4)
        y = p * float_from_bits((bits_from_float(shifted) + 1023) << 52)
        y = 0.0 if x0 < _LOWEST else y
        dst[i] = x0 if x0 != x0 else y


_F32 = np.float32
_LOG2E_32, _LN2_HI_32, _LN2_LO_32 = _F32(_LOG2E), _F32(0.693359375), _F32(-2.12194440e-4)
_LOWEST_32, _HIGHEST_32, _SHIFTER_32 = _F32(-87.0), _F32(80.0), _F32(12582912.0)  # 1.5 * 2^23
_D0, _D1, _D2, _D3, _D4, _D5, _D6 = (_F32(1.0 / math.factorial(i)) for i in range(7))


@njit(**NJIT)  # not inlined, as vexp_shifted
def vexp32_shifted(src, shift, dst, factor):
    """``dst[i] = factor * exp(src[i] - shift)`` in float32 (``src``, ``dst`` and ``factor``
    float32; the product in the same loop costs nothing more), as
    :func:`vexp_shifted` with a float32 Cody-Waite split and a degree-6 polynomial, on
    twice the SIMD lanes: relative error below 3e-7 plus about ``|src[i] - shift| * 2^-23``
    (the difference is rounded to float32: ``shift`` is split in two float32 parts, which
    costs that rounding and no conversion of each element; 0.32 ns an element against 0.51
    through float64). Differences below -87 give 0 (float32's normal range ends at -87.3);
    above 80 they are clamped to 80, and their count is returned (0: every value exact)."""
    high = _F32(shift)
    low = _F32(shift - np.float64(high))
    over = 0
    for i in range(dst.shape[0]):
        x0 = (src[i] - high) - low
        over += 1 if x0 > _HIGHEST_32 else 0
        x = x0 if x0 == x0 else _F32(0.0)
        x = _LOWEST_32 if x < _LOWEST_32 else x
        x = _HIGHEST_32 if x > _HIGHEST_32 else x
        shifted = x * _LOG2E_32 + _SHIFTER_32
        n = shifted - _SHIFTER_32
        r = x - n * _LN2_HI_32 - n * _LN2_LO_32
        r2 = r * r
        p = (_D0 + _D1 * r) + (_D2 + _D3 * r) * r2 + ((_D4 + _D5 * r) + _D6 * r2) * (r2 * r2)
        y = p * float32_from_bits((np.int32(bits_from_float32(shifted)) + np.int32(127)) << np.int32(23))
        y = _F32(0.0) if x0 < _LOWEST_32 else y
        dst[i] = (x0 if x0 != x0 else y) * factor
    return over

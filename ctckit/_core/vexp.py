"""A vectorisable ``exp`` for rows of non-positive float64 values.

Numba calls libm's scalar ``exp`` (about 20 cycles); the emissions ``exp(log y - m)`` are
the hot transcendental of the CTC kernels. This one is plain arithmetic that LLVM turns
into SIMD code: Cody-Waite range reduction ``x = n ln2 + r``, ``|r| <= ln2 / 2``, a
degree-12 Taylor polynomial for ``exp(r)`` (truncation error below 2e-16), and ``2^n``
made by writing ``n + 1023`` into the exponent bits.

Inputs are expected to be ``<= 0`` (log-probs shifted by a maximum). Positive inputs are
clamped to 0; inputs below ``-708`` (results below the normal range) give 0; ``-inf``
gives 0; NaN gives NaN.
"""

import numpy as np
from numba import njit

from .config import NJIT
from .intrinsics import float_from_bits

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # ln 2 split so that n * _LN2_HI is exact for |n| < 2^11
_LN2_LO = 1.4286068203094173e-06
_LOWEST = -708.0


@njit(**NJIT)  # not inlined: reassociation (the callers' flags) would undo the Cody-Waite split
def vexp_shifted(src, shift, dst):
    """``dst[i] = exp(src[i] - shift)`` for ``i < dst.shape[0]``, in one branch-free loop
    that vectorises (``2^n`` is written into the exponent bits by a bit cast)."""
    for i in range(dst.shape[0]):
        x0 = np.float64(src[i]) - shift
        x = x0 if x0 == x0 else 0.0
        x = _LOWEST if x < _LOWEST else x
        x = 0.0 if x > 0.0 else x
        n = np.floor(x * _LOG2E + 0.5)
        r = x - n * _LN2_HI - n * _LN2_LO
        p = 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        y = (p * r + 1.0) * float_from_bits((np.int64(n) + 1023) << 52)
        y = 0.0 if x0 < _LOWEST else y
        dst[i] = x0 if x0 != x0 else y

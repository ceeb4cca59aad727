"""The floating-point environment the kernels run in: IEEE's default, whoever calls them.

XLA runs a computation (and so ctckit's FFI handler and host callbacks, see
:mod:`ctckit.jax`) with subnormal numbers flushed to zero: FTZ and DAZ set in the calling
thread's MXCSR. Measured here: 0x1fa0 in the main thread, 0x9fe2 inside the handler. The
kernels then flush a gradient of -3e-41 to -0.0, and a thread created meanwhile (Numba's
OpenMP workers, ctckit's own: a new thread copies its creator's environment) keeps that
mode for good, so that later results of any frontend depended on which thread computed an
item. :func:`ieee_floats` puts the default environment in place for the duration of a
call, as NumPy and torch callers have it, and restores the caller's after.

glibc only (``fesetenv(FE_DFL_ENV)``, where ``FE_DFL_ENV`` is ``(fenv_t *) -1``); on other
C libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import contextmanager

_ENV_BYTES = 64
"""At least ``sizeof(fenv_t)``: 32 bytes on x86-64, 8 on AArch64."""


def _load():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        get, put = libm.fegetenv, libm.fesetenv
    except (OSError, AttributeError):
        return None
    get.argtypes = put.argtypes = [ctypes.c_void_p]
    get.restype = put.restype = ctypes.c_int
    return get, put


_CALLS = _load()
_DEFAULT = ctypes.c_void_p(-1)  # glibc's FE_DFL_ENV, (const fenv_t *) -1


@contextmanager
def ieee_floats():
    """Within: the calling thread has the C library's default floating-point environment
    (round to nearest, no flush to zero, exceptions masked); the caller's afterwards."""
    if _CALLS is None:
        yield
        return
    get, put = _CALLS
    saved = ctypes.create_string_buffer(_ENV_BYTES)
    get(saved)
    put(_DEFAULT)
    try:
        yield
    finally:
        put(saved)

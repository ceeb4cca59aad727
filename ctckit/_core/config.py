"""Every Numba flag ctckit uses, in one place.

``fastmath`` stays off: the kernels rely on IEEE ``inf`` and ``NaN`` (masked
classes, infeasible targets) and on a fixed order of float operations, which is
what makes results bitwise identical whatever the thread count.
"""

NJIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
"""Options for the serial per-item kernels."""

PARALLEL = dict(NJIT, parallel=True)
"""Options for the batch drivers: ``prange`` over items, each writing its own slice."""

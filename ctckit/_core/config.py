"""Every Numba flag ctckit uses, in one place.

No ``nnan``/``ninf`` anywhere: the kernels rely on IEEE ``inf`` and ``NaN`` (masked
classes, infeasible targets). ``contract`` (fused multiply-add) is on everywhere;
``reassoc`` only in the loss's per-item passes and the helpers inlined or linked into them,
so that sums over a row vectorise. Both fix the order of operations at compile time:
results stay bitwise identical whatever the thread count.

The batch drivers are serial kernels over a chunk of items (see :mod:`ctckit._core.pool`),
which ctckit's own threads run, or for short calls outside forked children one
:data:`PARALLEL` loop on Numba's OpenMP threads that calls them item by item
(:mod:`ctckit._core.addresses`).
"""

_VECTORISE = {"contract", "reassoc", "nsz"}

NJIT = dict(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
"""Options for the serial per-item kernels."""

HOT = dict(NJIT, fastmath=_VECTORISE)
"""Options for the per-item passes (forward, backward, gradient), into which the small
per-block and per-frame helpers are inlined (by Numba, or by LLVM for :data:`LINKED`):
they then vectorise, row sums included."""

INLINE = dict(nogil=True, fastmath=_VECTORISE, error_model="numpy", inline="always")
"""Options for those helpers: inlined at Numba's IR level, so calling them costs no
function call and no reference counting of their array arguments (measured: about 100 ns
per call, more than the work of a 64-state block). Inlined code takes its caller's flags."""

LINKED = dict(HOT, no_cpython_wrapper=True, no_cfunc_wrapper=True)
"""Options for the block-scaled passes' small per-block helpers (``_block``,
``_finish_block``, ``_carry``, ...): ordinary calls, each compiled once, linked into its
callers and inlined there by LLVM, which gives the same machine code and speed as
:data:`INLINE` (checked bit for bit and by timing). Inlined at Numba's IR level, they were
typed and lowered again at every call site: about 3.5 s of a first call with long targets.
The one-scale passes' helpers stay IR-inlined: as separate functions their fixed cost of
0.05-0.3 s each would add about 1 s to a first call with short targets. Called from
compiled code only, they need no wrapper for Python callers (about 0.3 s less)."""


PARALLEL = dict(NJIT, parallel=True)
"""Options for the OpenMP loop over a batch's items (:func:`.addresses.each_openmp`)."""

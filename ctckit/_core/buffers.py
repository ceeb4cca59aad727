"""Large output arrays (gradients) made from memory that earlier calls have given back.

A gradient of 32 MB or more (bpe1k's is 33 MB, bpe5k's 80 MB) is past glibc's largest
``mmap`` threshold: ``np.empty`` maps fresh pages for it at every call and the first
write to each page is a fault that zeroes it (NumPy asks for 2 MiB pages where the kernel
allows it: fewer faults, the same zeroing). The fused training step on bpe5k took 72 ms
with a fresh 80 MB gradient and 21 ms with a reused one (``benchmarks/NOTES.md``,
section 37). Here an array
of at least :data:`MIN_BYTES` is carved from a buffer that an earlier array, now
unreferenced, gave back: :func:`empty` ties the buffer's return to the life of the array
it hands out (``weakref.finalize``), so a buffer is never handed out twice while any
array, view or tensor built on it (``torch.from_numpy``) is alive. At most
:data:`KEEP` buffers wait unused (``CTCKIT_KEEP_BUFFERS``; 0 turns reuse off), which is
memory the process keeps instead of returning it to the system.

The free buffers are a dict by ``id``, changed only by single calls that CPython runs
atomically (an item set, ``pop``, a copy of its items): a buffer may come back from any
thread, or from the garbage collector in the middle of :func:`empty`, without a lock.
"""

import math
import os
import weakref

import numpy as np

MIN_BYTES = 8 << 20
"""Smaller arrays come from ``np.empty``: the C library reuses their memory itself."""
MAX_BYTES = 1 << 30
"""Larger arrays' buffers are not kept: a one-off huge call does not hold its memory."""


def _keep_setting(default: int = 2) -> int:
    """``CTCKIT_KEEP_BUFFERS`` as a count from 0 to 64; anything else: ``default`` (as
    ``CTCKIT_NUM_THREADS`` is read)."""
    try:
        return max(0, min(64, int(os.environ.get("CTCKIT_KEEP_BUFFERS", default))))
    except ValueError:
        return default


KEEP = _keep_setting()
"""How many freed buffers wait for a later call at most."""
_ALIGN = 64
_free = {}  # id(buffer) -> buffer


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, as ``np.empty(shape, dtype)``, 64-byte aligned;
    from a freed buffer of at most twice its size when one is there."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow; np.prod took 5 us
    if nbytes < MIN_BYTES or KEEP == 0:
        return np.empty(shape, dtype)
    buffer = None
    for key, candidate in sorted(list(_free.items()), key=lambda item: len(item[1])):
        if nbytes + _ALIGN <= len(candidate) <= 2 * (nbytes + _ALIGN) and _free.pop(key, None) is not None:
            buffer = candidate  # (None: another thread took it first)
            break
    if buffer is None:
        buffer = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    lease = _Lease(buffer, -buffer.ctypes.data % _ALIGN, tuple(int(n) for n in shape), dtype)
    weakref.finalize(lease, _give_back, buffer).atexit = False
    return np.asarray(lease)


class _Lease:
    """The owner of one array's memory, as NumPy sees it: every view of the array, however
    derived (NumPy points views at the first owner that is not an array), keeps it alive,
    so the buffer goes back only when the last of them is gone."""

    __slots__ = ("__array_interface__", "buffer", "__weakref__")

    def __init__(self, buffer: np.ndarray, start: int, shape: tuple, dtype: np.dtype):
        self.buffer = buffer
        self.__array_interface__ = {"data": (buffer.ctypes.data + start, False), "shape": shape, "typestr": dtype.str,
                                    "version": 3}


def _give_back(buffer: np.ndarray) -> None:
    """Keep ``buffer`` for a later :func:`empty`, the :data:`KEEP` largest at most."""
    if len(buffer) > MAX_BYTES + _ALIGN:
        return
    _free[id(buffer)] = buffer
    while len(_free) > KEEP:
        items = list(_free.items())
        if items:
            _free.pop(min(items, key=lambda item: len(item[1]))[0], None)


def forget() -> None:
    """Drop every buffer that waits (their memory goes back to the system)."""
    _free.clear()

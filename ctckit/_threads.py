"""How many threads ctckit's kernels use: ``set_num_threads`` and ``get_num_threads``.

A leaf module (NumPy only): :mod:`ctckit` exports these without importing the kernels,
and :mod:`ctckit._core.pool` reads the setting on each call.
"""

from __future__ import annotations

import operator
import os

import numpy as np

MAX_THREADS = 256


def _default_threads() -> int:
    setting = os.environ.get("CTCKIT_NUM_THREADS")
    if setting:
        try:
            return max(1, min(MAX_THREADS, int(setting)))
        except ValueError:
            pass
    try:
        return max(1, min(MAX_THREADS, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return max(1, min(MAX_THREADS, os.cpu_count() or 1))


_threads = _default_threads()


def get_num_threads() -> int:
    """How many threads ctckit's kernels use (the calling thread included)."""
    return _threads


def set_num_threads(threads: int) -> None:
    """Use ``threads`` threads for ctckit's kernels (default: the CPUs this process may run
    on, or the ``CTCKIT_NUM_THREADS`` environment variable). Results do not depend on it."""
    global _threads
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int, got {type(threads).__name__}")
    threads = operator.index(threads)
    if not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be in [1, {MAX_THREADS}], got {threads}")
    _threads = threads

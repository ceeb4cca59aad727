"""How :mod:`ctckit._pool` cuts a batch into chunks for its threads (compiled: in Python
this took about 60 us a call, more than a small batch's kernel)."""

import numpy as np
from numba import njit

from .config import NJIT


@njit(**NJIT)
def plan_chunks(costs, threads, serial_cost, chunk_cost):
    """How :mod:`ctckit._pool` runs items of estimated ``costs`` (ns) on ``threads`` threads.

    Returns ``(order, bounds, chunk_costs)``. ``order`` is empty when the work is too small
    to share (at most ``serial_cost``). Otherwise ``order`` holds the item indices sorted
    by cost, largest first (ties in index order), and chunk ``i`` is ``order[bounds[i]:
    bounds[i + 1]]``, of estimated cost ``chunk_costs[i]``: one chunk per thread when the
    work is under ``threads * chunk_cost``; else chunks that shrink as the work left does
    (a chunk takes about a ``2 threads``-th of what is left, and at least ``chunk_cost``),
    so that the threads, taking them in order, finish together."""
    size = costs.shape[0]
    total = 0.0
    for i in range(size):
        total += costs[i]
    if total <= serial_cost:
        return np.empty(0, dtype=np.int64), np.zeros(1, dtype=np.int64), np.empty(0)
    order = np.argsort(-costs, kind="mergesort")
    bounds = np.empty(size + 1, dtype=np.int64)
    chunk_costs = np.empty(size)
    guided = total >= threads * chunk_cost
    chunks = 0
    bounds[0] = 0
    left, chunk_total = total, 0.0
    target = total / threads if not guided else max(left / (2 * threads), chunk_cost)
    for i in range(size):
        cost = costs[order[i]]
        chunk_total += cost
        if i == size - 1 or (chunk_total >= target * (1.0 - 1e-9) and (guided or chunks + 1 < threads)):
            chunk_costs[chunks] = chunk_total
            chunks += 1
            bounds[chunks] = i + 1
            left -= chunk_total
            chunk_total = 0.0
            if guided:
                target = max(left / (2 * threads), chunk_cost)
    return order, bounds[:chunks + 1], chunk_costs[:chunks]

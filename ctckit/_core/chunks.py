"""How :mod:`ctckit._core.pool` cuts a batch into chunks for its threads (compiled: in NumPy
operations this took about 60 us a call, more than a small batch's kernel)."""

import numpy as np

from .config import NJIT
from .disk_cache import njit


@njit(**NJIT)
def plan_chunks(costs, threads, chunk_cost):
    """How :mod:`ctckit._core.pool` cuts items of estimated ``costs`` (ns) into chunks of
    consecutive items for ``threads`` threads.

    Consecutive, not sorted by cost: items write neighbouring parts of the outputs (the
    columns of the compact posteriors, the rows of a gradient), which then stay on one
    thread but at a chunk's ends; the shrinking chunks balance unequal items instead.

    Returns ``(bounds, chunk_costs)``: chunk ``i`` is items ``bounds[i]`` to ``bounds[i + 1]``
    (exclusive), of estimated cost ``chunk_costs[i]``; one chunk per thread when the work is under ``threads
    * chunk_cost``, else chunks that shrink as the work left does (each about a ``2
    threads``-th of what is left, and at least ``chunk_cost``), so that the threads, taking
    them in order, finish together. Every chunk is nonempty."""
    size = costs.shape[0]
    total = 0.0
    for i in range(size):
        total += costs[i]
    bounds = np.empty(size + 1, dtype=np.int64)
    chunk_costs = np.empty(size)
    guided = total >= threads * chunk_cost
    chunks = 0
    bounds[0] = 0
    left, chunk_total = total, 0.0
    target = max(left / (2 * threads), chunk_cost) if guided else total / threads
    for i in range(size):
        chunk_total += costs[i]
        if i == size - 1 or (chunk_total >= target * (1.0 - 1e-9) and (guided or chunks + 1 < threads)):
            chunk_costs[chunks] = chunk_total
            chunks += 1
            bounds[chunks] = i + 1
            left -= chunk_total
            chunk_total = 0.0
            if guided:
                target = max(left / (2 * threads), chunk_cost)
    return bounds[:chunks + 1], chunk_costs[:chunks]


r"""Forced alignment: the single most probable CTC path that collapses to a given target.

Viterbi over the trellis of the CTC loss (Graves et al., 2006, eqs. 6-7 with the sum
replaced by a maximum):

.. math::
    \delta_t(s) = \log y^t_{l'_s} + \max\big(\delta_{t-1}(s), \delta_{t-1}(s-1),
                  [\delta_{t-1}(s-2)]\big)

in float64 log space (additions and comparisons only), with one int8 back-pointer per
frame and state (0: stay, 1: from s-1, 2: from s-2), as torchaudio's ``forced_align``.

Ties are broken towards the smallest jump: staying beats coming from s-1, which beats
coming from s-2; at the last frame the final blank beats the final label. Traced back
from the end, the path stays in each state as long as it can, so among equally probable
paths the chosen one enters each state as *early* as possible.
"""

import numpy as np
from numba import njit, prange

from . import pool
from .config import NJIT, PARALLEL
from .intrinsics import is_set

_NEG_INF = -np.inf
CANCEL_FRAMES = 64
"""The Viterbi pass checks its cancel flag every this many frames."""


@njit(**NJIT)
def _viterbi_item(log_probs, n, frames, blank, labels, alignment, scores, cancel):
    """Fill ``alignment[:frames]`` and ``scores[:frames]`` for item n; returns the best
    path's log-probability (-inf when every path has a zero probability), or NaN when
    ``cancel[0]`` was set before it finished."""
    length = labels.shape[0]
    width = 2 * length + 1
    back = np.empty((frames, width), dtype=np.int8)
    prev = np.full(width, _NEG_INF)
    cur = np.full(width, _NEG_INF)
    prev[0] = np.float64(log_probs[0, n, blank])
    if length > 0:
        prev[1] = np.float64(log_probs[0, n, labels[0]])
    back[0, :] = 0
    for t in range(1, frames):
        if t % CANCEL_FRAMES == 0 and is_set(cancel):
            return np.nan
        for s in range(width):
            best = prev[s]
            step = 0
            if s >= 1 and prev[s - 1] > best:
                best = prev[s - 1]
                step = 1
            if s >= 3 and s % 2 == 1 and labels[(s - 1) // 2] != labels[(s - 3) // 2] and prev[s - 2] > best:
                best = prev[s - 2]
                step = 2
            cls = blank if s % 2 == 0 else labels[(s - 1) // 2]
            cur[s] = best + np.float64(log_probs[t, n, cls])
            back[t, s] = step
        prev, cur = cur, prev
    s = width - 1
    if length > 0 and prev[width - 2] > prev[width - 1]:
        s = width - 2
    best = prev[s]
    if not best > _NEG_INF:
        return _NEG_INF
    for t in range(frames - 1, -1, -1):
        cls = blank if s % 2 == 0 else labels[(s - 1) // 2]
        alignment[t] = cls
        scores[t] = log_probs[t, n, cls]
        s -= back[t, s]
    return best


VITERBI_NS = 3.0
"""Estimated ns per cell (frame times state) of the Viterbi pass and its trace-back."""


def viterbi_batch(log_probs, targets, offsets, input_lengths, target_lengths, blank, alignments, scores, best):
    """Forced alignment of every item, in parallel (:mod:`.pool`). ``alignments``
    (N, T) int64 filled with -1 and ``scores`` (N, T) zeros on entry; ``best[n]`` receives
    the path's log-probability. Inputs must be validated and every item feasible
    (T_n >= L_n + repeats)."""
    arguments = (log_probs, targets, offsets, input_lengths, target_lengths, blank, alignments, scores, best)
    task = lambda chunk, cancel: _viterbi_items(chunk, cancel, *arguments)
    together = lambda: _viterbi_items_openmp(*arguments)
    pool.run(task, VITERBI_NS * input_lengths * (2.0 * target_lengths + 1.0), together)


@njit(**NJIT)
def _viterbi_items(items, cancel, log_probs, targets, offsets, input_lengths, target_lengths, blank, alignments, scores, best):
    """:func:`viterbi_batch` over the item indices ``items``, until ``cancel[0]`` is set."""
    for i in range(items.shape[0]):
        if is_set(cancel):
            return
        n = items[i]
        frames = input_lengths[n]
        labels = targets[offsets[n]:offsets[n] + target_lengths[n]]
        if frames == 0:
            best[n] = 0.0 if labels.shape[0] == 0 else _NEG_INF
            continue
        best[n] = _viterbi_item(log_probs, n, frames, blank, labels, alignments[n], scores[n], cancel)


@njit(**PARALLEL)
def _viterbi_items_openmp(log_probs, targets, offsets, input_lengths, target_lengths, blank, alignments, scores, best):
    """:func:`_viterbi_items` over every item at once, on Numba's OpenMP threads."""
    never = np.zeros(1, dtype=np.int64)
    for n in prange(best.shape[0]):
        _viterbi_items(np.arange(np.int64(n), np.int64(n) + 1), never, log_probs, targets, offsets, input_lengths, target_lengths, blank, alignments,
                       scores, best)

r"""Forced alignment: the single most probable CTC path that collapses to a given target.

Viterbi over the trellis of the CTC loss (Graves et al., 2006, eqs. 6-7 with the sum
replaced by a maximum), over the extended target :math:`l'` (blanks around and between
the labels, :math:`L' = 2S + 1` states):

.. math::
    \delta_t(s) = \log y^t_{l'_s} + \max\big(\delta_{t-1}(s), \delta_{t-1}(s-1),
                  [\delta_{t-1}(s-2)]\big)

in float64 log space (additions and comparisons only), with one int8 back-pointer per
frame and state (0: stay, 1: from s-1, 2: from s-2), as torchaudio's ``forced_align``.
An item whose back-pointers would pass a budget (:data:`MAX_BACK_POINTER_BYTES`) is
aligned in bounded memory instead (checkpointed Viterbi, :func:`_viterbi_item_bounded`),
with the same row update (:func:`viterbi_row`) and so the same result, bit for bit.

Ties are broken towards the smallest jump: staying beats coming from s-1, which beats
coming from s-2; at the last frame the final blank beats the final label. Traced back
from the end, the path stays in each state as long as it can, so among equally probable
paths the chosen one enters each state as *early* as possible.

Each frame updates only the states of its band (:func:`band`): those that a path can
reach from the first frame and from which it can still reach the end. The others cannot
lie on a path; they are skipped, which leaves every value in the band as it is. A frame
first gathers its log-probs along the extended target (:func:`emissions`), then updates
its row in a loop that vectorises (:func:`viterbi_row`): 0.6-0.8 ns a state and frame.

A target may hold a wildcard label, ``C`` (one past the classes), whose log-prob is a
constant ``score`` on every frame (:func:`emission`): as if ``log_probs`` had one more
class, filled with ``score``.
"""

import numpy as np

from . import pool
from .config import INLINE, NJIT
from .disk_cache import njit
from .intrinsics import is_set

_NEG_INF = -np.inf
CANCEL_FRAMES = 64
"""The Viterbi pass checks its cancel flag every this many frames."""
MAX_BACK_POINTER_BYTES = 256 << 20
"""An item whose back-pointers (``T * L'`` bytes) would take more than this is aligned in
bounded memory (:func:`_viterbi_item_bounded`): the same result, from twice the arithmetic
but in about the same time (measured: the other way pays as much for first touching its
back-pointers' pages). Read at each call (lower it to send small items that way)."""


@njit(**NJIT)
def extended_target(labels, blank):
    """``(classes, skip)`` of the extended target: ``classes[s]`` the class of state s
    (the blank at even s), ``skip[s]`` whether state s may be entered from s-2 (a label
    that differs from the label before it)."""
    width = 2 * labels.shape[0] + 1
    classes = np.full(width, blank, dtype=np.int64)
    skip = np.zeros(width, dtype=np.bool_)
    for k in range(labels.shape[0]):
        classes[2 * k + 1] = labels[k]
        skip[2 * k + 1] = k >= 1 and labels[k] != labels[k - 1]
    return classes, skip


@njit(**NJIT)
def band(t, frames, width):
    """``(lo, hi)``: the states of frame t that can lie on a path, ``lo <= s <= hi``. A
    path moves up at most two states a frame: it reaches at most state 2t+1 by frame t, and
    from frame t it reaches the final label (state L'-2) only from s >= L'-2-2(T-1-t).
    Every predecessor of a state in the band lies in the previous frame's band or above
    it (where every value is -inf), so skipping the rest changes no value in the band."""
    return max(0, width - 2 - 2 * (frames - 1 - t)), min(width - 1, 2 * t + 1)


@njit(**INLINE)
def emission(frame, cls, wildcard, score):
    """log y^t_cls in float64: ``score`` for the wildcard's label ``wildcard`` (C, one past
    the classes of ``frame``; -1 when there is none), ``frame[cls]`` otherwise. Never reads
    past the frame's C classes, even speculatively."""
    value = np.float64(frame[cls if cls != wildcard else 0])
    return score if cls == wildcard else value


@njit(**NJIT)
def first_row(frame, classes, wildcard, score, row):
    """``row`` := delta_0: the first blank and the first label, -inf elsewhere."""
    row[:] = _NEG_INF
    row[0] = emission(frame, classes[0], wildcard, score)
    if row.shape[0] > 1:
        row[1] = emission(frame, classes[1], wildcard, score)


@njit(**NJIT)
def emissions(frame, labels, blank, wildcard, score, emit, lo, hi):
    """``emit[s]`` := log y^t_{l'_s} in float64 for ``lo <= s <= hi`` (and perhaps lo-1),
    from ``frame``, the frame's (C,) log-probs: one gather per label, apart from the row
    update, which then vectorises."""
    value = np.float64(frame[blank])
    if wildcard < 0:  # without the test for the wildcard: the whole pass about 20% faster
        for k in range(np.uint64(lo // 2), np.uint64((hi + 1) // 2)):
            emit[np.uint64(2) * k] = value
            emit[np.uint64(2) * k + np.uint64(1)] = np.float64(frame[labels[k]])
    else:
        for k in range(np.uint64(lo // 2), np.uint64((hi + 1) // 2)):
            emit[np.uint64(2) * k] = value
            emit[np.uint64(2) * k + np.uint64(1)] = emission(frame, labels[k], wildcard, score)
    if hi % 2 == 0:
        emit[hi] = value


@njit(**INLINE)
def _best(prev, skip, s):
    """``(max, step)`` over the predecessors of state ``s >= 2`` (an unsigned index, which
    needs no wrap-around check), ties to the smallest step."""
    best = prev[s]
    one = prev[s - np.uint64(1)]
    two = prev[s - np.uint64(2)]
    stay = not one > best
    best = best if stay else one
    jump = skip[s] & (two > best)
    best = two if jump else best
    return best, np.int8(2) if jump else (np.int8(0) if stay else np.int8(1))


@njit(**NJIT)
def viterbi_row(emit, skip, prev, cur, back, lo, hi):
    """One frame of the recursion (eq. 7 with max): ``cur[s]`` and, unless ``back`` is
    empty, ``back[s]`` for ``lo <= s <= hi``, from ``prev`` (the previous frame) and
    ``emit`` (:func:`emissions`); sets ``cur[hi+1], cur[hi+2]`` to -inf, which the next
    frame's band may read. Every Viterbi pass goes through here (and :func:`_best`): one
    arithmetic, one tie-breaking, so every pass computes the same bits."""
    for s in range(lo, min(hi + 1, 2)):  # states 0 and 1: no s-2
        best = prev[s]
        step = 0
        if s == 1 and prev[0] > best:
            best = prev[0]
            step = 1
        cur[s] = best + emit[s]
        if back.shape[0]:
            back[s] = step
    start = np.uint64(max(lo, 2))
    if back.shape[0]:
        for s in range(start, np.uint64(hi + 1)):
            best, step = _best(prev, skip, s)
            cur[s] = best + emit[s]
            back[s] = step
    else:  # a pass that keeps no back-pointers: the same values
        for s in range(start, np.uint64(hi + 1)):
            best, _ = _best(prev, skip, s)
            cur[s] = best + emit[s]
    for s in range(hi + 1, min(hi + 3, cur.shape[0])):
        cur[s] = _NEG_INF


@njit(**NJIT)
def advance(frame, labels, blank, wildcard, score, skip, emit, prev, cur, back, t, frames):
    """Frame t of the recursion over its band: :func:`emissions`, then :func:`viterbi_row`."""
    lo, hi = band(t, frames, cur.shape[0])
    emissions(frame, labels, blank, wildcard, score, emit, lo, hi)
    viterbi_row(emit, skip, prev, cur, back, lo, hi)


@njit(**NJIT)
def final_state(row):
    """The state the best path ends in: the final blank, or the final label when it is
    strictly better."""
    width = row.shape[0]
    if width > 1 and row[width - 2] > row[width - 1]:
        return width - 2
    return width - 1


@njit(**NJIT)
def trace(log_probs, n, classes, wildcard, score, back, first, last, s, alignment, scores):
    """Follow ``back`` (rows for frames ``first..last``, ``back[0]`` frame ``first``)
    from state s at frame ``last`` down to frame ``first``, filling ``alignment`` and
    ``scores`` there; returns the state at frame ``first - 1``."""
    for t in range(last, first - 1, -1):
        cls = classes[s]
        alignment[t] = cls
        scores[t] = emission(log_probs[t, n], cls, wildcard, score)
        s -= back[t - first, s]
    return s


@njit(**NJIT)
def _viterbi_item(log_probs, n, frames, blank, labels, wildcard, score, alignment, scores, cancel):
    """Fill ``alignment[:frames]`` and ``scores[:frames]`` for item n; returns the best
    path's log-probability (-inf when every path has a zero probability), or NaN when
    ``cancel[0]`` was set before it finished. Keeps all ``frames * L'`` back-pointers."""
    classes, skip = extended_target(labels, blank)
    width = classes.shape[0]
    back = np.empty((frames, width), dtype=np.int8)
    prev = np.empty(width)
    cur = np.empty(width)
    emit = np.empty(width)
    first_row(log_probs[0, n], classes, wildcard, score, prev)
    back[0, :] = 0
    for t in range(1, frames):
        if t % CANCEL_FRAMES == 0 and is_set(cancel):
            return np.nan
        advance(log_probs[t, n], labels, blank, wildcard, score, skip, emit, prev, cur, back[t], t, frames)
        prev, cur = cur, prev
    s = final_state(prev)
    best = prev[s]
    if not best > _NEG_INF:
        return _NEG_INF
    trace(log_probs, n, classes, wildcard, score, back, 0, frames - 1, s, alignment, scores)
    return best


@njit(**NJIT)
def segment_frames(frames):
    """Frames per segment of :func:`_viterbi_item_bounded`: about sqrt(8T), which makes its
    checkpoints (T/K rows of 8 bytes a state) and one segment's back-pointers (K rows of
    one byte) about equal, and their sum, ``2 L' sqrt(8T)`` bytes, the least."""
    return max(1, int(np.sqrt(8.0 * frames)))


@njit(**NJIT)
def _viterbi_item_bounded(log_probs, n, frames, blank, labels, wildcard, score, alignment, scores, cancel, segment):
    """:func:`_viterbi_item` in bounded memory (checkpointed Viterbi), same result bit for
    bit. The forward pass keeps delta_t at t = 0, K, 2K, ... (K = ``segment``) and no
    back-pointers; then, from the last segment to the first, each segment's back-pointers
    (frames ``jK+1 .. (j+1)K``) are computed again from its checkpoint by the same
    :func:`viterbi_row`, and the path is traced through them from the state the later
    segment arrived at. Memory: ``ceil((T-1)/K) + 3`` rows of float64 and ``K`` rows of
    int8 back-pointers, of L' states each; time: two forward passes."""
    classes, skip = extended_target(labels, blank)
    width = classes.shape[0]
    count = max(1, (frames - 2) // segment + 1)  # segments of frames 1..T-1
    checkpoints = np.empty((count, width))
    prev = np.empty(width)
    cur = np.empty(width)
    emit = np.empty(width)
    back = np.empty((min(segment, frames), width), dtype=np.int8)
    nothing = np.empty(0, dtype=np.int8)
    first_row(log_probs[0, n], classes, wildcard, score, prev)
    checkpoints[0] = prev
    for t in range(1, frames):
        if t % CANCEL_FRAMES == 0 and is_set(cancel):
            return np.nan
        advance(log_probs[t, n], labels, blank, wildcard, score, skip, emit, prev, cur, nothing, t, frames)
        prev, cur = cur, prev
        if t % segment == 0 and t // segment < count:
            checkpoints[t // segment] = prev
    s = final_state(prev)
    best = prev[s]
    if not best > _NEG_INF:
        return _NEG_INF
    for j in range(count - 1, -1, -1):
        if is_set(cancel):
            return np.nan
        first, last = j * segment + 1, min((j + 1) * segment, frames - 1)
        prev[:] = checkpoints[j]
        for t in range(first, last + 1):
            if t % CANCEL_FRAMES == 0 and is_set(cancel):
                return np.nan
            advance(log_probs[t, n], labels, blank, wildcard, score, skip, emit, prev, cur, back[t - first], t, frames)
            prev, cur = cur, prev
        s = trace(log_probs, n, classes, wildcard, score, back, first, last, s, alignment, scores)
    alignment[0] = classes[s]
    scores[0] = emission(log_probs[0, n], classes[s], wildcard, score)
    return best


VITERBI_NS = 1.0
"""Estimated ns per cell (frame times state) of the Viterbi pass and its trace-back
(measured: 0.7-0.9); twice that for an item aligned in bounded memory."""


def viterbi_batch(log_probs, targets, offsets, input_lengths, target_lengths, blank, alignments, scores, best, wildcard=-1, score=0.0):
    """Forced alignment of every item, in parallel (:mod:`.pool`). ``alignments``
    (N, T) int64 filled with -1 and ``scores`` (N, T) zeros on entry; ``best[n]`` receives
    the path's log-probability. Inputs must be validated and every item feasible
    (T_n >= L_n + repeats). Items whose back-pointers pass :data:`MAX_BACK_POINTER_BYTES`
    are aligned in bounded memory."""
    budget = int(MAX_BACK_POINTER_BYTES)
    arguments = (log_probs, targets, offsets, input_lengths, target_lengths, blank, int(wildcard), float(score), alignments, scores,
                 best, budget)
    cells = input_lengths * (2.0 * target_lengths + 1.0)
    pool.run_kernel(_viterbi_items, np.arange(best.shape[0]), arguments, VITERBI_NS * np.where(cells > budget, 2.0, 1.0) * cells)


@njit(**NJIT)
def _viterbi_items(items, cancel, log_probs, targets, offsets, input_lengths, target_lengths, blank, wildcard, score, alignments, scores, best,
                   budget):
    """:func:`viterbi_batch` over the item indices ``items``, until ``cancel[0]`` is set."""
    for i in range(items.shape[0]):
        if is_set(cancel):
            return
        n = items[i]
        frames = input_lengths[n]
        labels = targets[offsets[n]:offsets[n] + target_lengths[n]]
        if frames == 0:
            best[n] = 0.0 if labels.shape[0] == 0 else _NEG_INF
        elif frames * (2 * labels.shape[0] + 1) > budget:
            best[n] = _viterbi_item_bounded(log_probs, n, frames, blank, labels, wildcard, score, alignments[n], scores[n], cancel,
                                            segment_frames(frames))
        else:
            best[n] = _viterbi_item(log_probs, n, frames, blank, labels, wildcard, score, alignments[n], scores[n], cancel)

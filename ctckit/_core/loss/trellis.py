r"""The extended target, its emissions, and the row primitives every pass shares.

Graves et al. (2006), section 3.1: the extended target ``l'`` puts blanks around and between
the ``L`` labels (``2L + 1`` states); state ``s`` may be entered from ``s``, ``s - 1`` and,
when ``l'_s`` is a label different from ``l'_{s-2}``, from ``s - 2`` (:func:`_skip_weights`).
Only the states reachable from the start that can still reach the end at frame ``t`` matter
(:func:`_path_band`); :func:`min_frames_needed` is the fewest frames that hold the target.

:func:`_emissions` turns a frame's log-probs into the rescaled emissions
``exp(log y[t, k] - m_t)`` the passes multiply by (eq. 9's rescaling, one shift per
frame). The rest are the unsigned-index row loops (see the note above ``_U1``), exponent
arithmetic on float bits, and the constants and status codes of the whole package. Every
other file of the package builds on this one; it imports none of them.
"""

import math

import numpy as np

from ..config import INLINE, LINKED, NJIT
from ..disk_cache import njit
from ..intrinsics import bits_from_float, float_from_bits, prefetch
from ..vexp import vexp_shifted


_NEG_INF = -np.inf
_PREFETCH_FRAMES = 4  # how many frames ahead the gathered log-probs are prefetched
CANCEL_FRAMES = 16
"""The long passes (block-scaled, log space) check their cancel flag every this many frames."""
_LN2 = math.log(2.0)
BLOCK = 64
"""Labels per block of states sharing one log-scale (2 * BLOCK states)."""
_UNDERFLOW = 1e-280
"""A block whose normalising sum falls below this is recomputed in log space."""
_TINY = 1e-290
"""A state of a normalised block below this may have lost precision to underflow (a flushed
neighbour contributes at most 1e-308 / _TINY of it)."""
_SMALLEST_NORMAL = 2.2250738585072014e-308
"""The smallest normal float64: below it a product of two rows has lost precision."""
_LOG_P_TOLERANCE = 1e-7
"""Largest |log P_t - log P| (nats) accepted from the rescaled pass; above it the item is
recomputed in log space. Float64 rounding over T = 10^4 frames stays below 1e-9."""

STATUS_OK = 0
STATUS_RECOMPUTED = 1
STATUS_ONE_SCALE = 2
STATUS_PENDING = 3
"""Per-item status codes returned by the drivers (for tests and diagnostics): computed by
the block-scaled passes, recomputed in log space, or computed by the one-scale passes
(one scale per row, for short items: see ``ONE_SCALE_LABELS``). ``STATUS_PENDING`` is
internal: an item the first round of a batch leaves to the second."""

GRAD_NONE = 0
GRAD_DENSE = 1
GRAD_COMPACT = 2
"""What a loss call writes besides the losses: nothing, the dense gradient, or the compact
posteriors (one value per item, frame and extended-label class) for a later scatter."""


@njit(**NJIT)
def min_frames_needed(labels, length):
    """Frames the shortest alignment needs: one per label plus a blank between repeats."""
    needed = length
    for k in range(1, length):
        if labels[k] == labels[k - 1]:
            needed += 1
    return needed


@njit(**NJIT)
def _skip_weights(labels, length, skip):
    """skip[k] = 1 when state 2k+1 may be entered from 2k-1 (eq. 7's third term)."""
    for k in range(length):
        skip[k] = 1.0 if (k > 0 and labels[k] != labels[k - 1]) else 0.0


@njit(**NJIT)
def _log_emission(log_probs, t, n, blank, labels, s):
    """log y[t, l'_s] for state s of the interleaved extended target."""
    if s % 2 == 0:
        return np.float64(log_probs[t, n, blank])
    return np.float64(log_probs[t, n, labels[(s - 1) // 2]])


@njit(**INLINE)
def _emissions(log_probs, t, n, blank, labels, y_label, exp_row, gathered, ahead, k0, k1):
    """Frame ``t``'s emissions of the blank and of labels ``k0 <= k < k1``, shifted by ``m``;
    the labels' log-probs of frame ``ahead`` (when in ``[0, T)``) are prefetched for a later
    call (the whole row when it spans fewer cache lines than there are labels).

    Writes ``y_label[k] = exp(log y[t, l_k] - m)`` for those labels (the others are left
    as they are); returns ``(m, exp(log y[t, blank] - m), wide)``. ``m`` is the largest
    needed log-prob. With fewer classes than labels, the whole row is exponentiated once
    (``exp_row[:C]``) and gathered: ``min(C, L + 1)`` exps per frame, vectorised
    (:mod:`.vexp`); ``m`` is then the largest over the classes the item uses, which
    ``exp_row[C:]`` marks with 0 (the others with ``-inf``, see :func:`_common_work`): a
    class no target uses never shifts the others, whatever value it holds. ``wide`` says
    that finite log-probs lie more than 700 below ``m`` (their emission may underflow to
    zero). ``m`` is ``-inf`` when every needed class is masked, NaN when the blank is NaN
    (a NaN label gives a NaN emission).
    """
    length = y_label.shape[0]
    log_blank = np.float64(log_probs[t, n, blank])
    classes = log_probs.shape[2]
    m = log_blank
    if classes < length + 1:
        low = log_blank if log_blank > _NEG_INF else np.inf
        row = log_probs[t, n]
        unused = exp_row[classes:]
        for c in range(classes):
            v = np.float64(row[c]) + unused[c]  # -inf (or NaN, which no comparison takes) for an unused class
            m = v if v > m else m
            low = v if (v < low and v > _NEG_INF) else low
        if m == _NEG_INF:
            return m, 0.0, False
        vexp_shifted(row, m, exp_row[:classes])
        for k in range(k0, k1):
            y_label[k] = exp_row[labels[k]]
        return m, exp_row[blank], low < m - 700.0
    if 0 <= ahead < log_probs.shape[0]:
        lines = (classes * log_probs.itemsize + 63) // 64
        if lines <= k1 - k0 + 1:  # a short row: every cache line of it
            step = 64 // log_probs.itemsize
            for c in range(0, classes, step):
                prefetch(log_probs, ahead, n, c)
            prefetch(log_probs, ahead, n, classes - 1)
        else:  # a long row: the needed elements only (the band moves by one label a frame)
            prefetch(log_probs, ahead, n, blank)
            shift = ahead - t
            for k in range(max(0, k0 + min(shift, 0)), min(length, k1 + max(shift, 0))):
                prefetch(log_probs, ahead, n, labels[k])
    for k in range(k0, k1):
        v = np.float64(log_probs[t, n, labels[k]])
        gathered[k] = v
        m = v if v > m else m
    if m == _NEG_INF:
        return m, 0.0, False
    floor = m - 700.0
    wide = 1 if (log_blank < floor and log_blank > _NEG_INF) else 0
    for k in range(k0, k1):  # a count, not a minimum: it vectorises
        g = gathered[k]
        wide += (g < floor) & (g > _NEG_INF)
    vexp_shifted(gathered[k0:k1], m, y_label[k0:k1])
    return m, np.exp(log_blank - m), wide > 0


@njit(**INLINE)
def _path_band(t, frames, width):
    """States ``lo <= s <= hi`` of frame t that lie on some complete path: reachable from
    the start (``s <= 2t + 1``) and able to reach the end by frame ``T - 1`` (``s >= L' -
    2 (T - t)``). Elsewhere alpha or beta is 0, so those states add nothing to eqs. 8, 14
    and 16: the block-scaled passes skip the blocks outside it, the one-scale passes compute
    the band only (a fraction of about ``L' / 2T`` of the cells fewer: 30% for T = 100,
    L' = 61)."""
    return max(0, width - 2 * (frames - t)), min(width - 1, 2 * t + 1)


# The per-block loops below index whole rows with unsigned integers: Numba then needs no
# negative-index wraparound (which blocks vectorisation, about 10x here) and no views
# (each view costs two atomic reference-count updates). A split row keeps blank k at
# ``k`` and label k at ``L + 1 + k``.
_U1 = np.uint64(1)


@njit(**LINKED)
def _range_sum(row, start, end):
    total = 0.0
    for i in range(np.uint64(start), np.uint64(end)):
        total += row[i]
    return total


@njit(**INLINE)
def _range_dot(a, b, start, end):
    total = 0.0
    for i in range(np.uint64(start), np.uint64(end)):
        total += a[i] * b[i]
    return total


@njit(**LINKED)
def _range_scale(row, start, end, factor):
    for i in range(np.uint64(start), np.uint64(end)):
        row[i] *= factor


@njit(**LINKED)
def _range_fill(row, start, end, value):
    for i in range(np.uint64(start), np.uint64(end)):
        row[i] = value


@njit(**INLINE)
def _first_row(row, log_probs, n, blank, labels):
    """Eq. 7's initial row (split layout), unnormalised, relative to ``exp(shift)``.
    Returns ``(sum, shift)``; the sum is 0 when no state is reachable, NaN for a NaN
    log-prob."""
    length = labels.shape[0]
    for s in range(2 * length + 1):
        row[s] = 0.0
    log_blank = np.float64(log_probs[0, n, blank])
    log_label = np.float64(log_probs[0, n, labels[0]]) if length > 0 else _NEG_INF
    if log_blank != log_blank or log_label != log_label:
        return np.nan, 0.0
    top = max(log_blank, log_label)
    if top == _NEG_INF:
        return 0.0, 0.0
    row[0] = np.exp(log_blank - top)
    if length > 0:
        row[length + 1] = np.exp(log_label - top)
    return row[0] + (row[length + 1] if length > 0 else 0.0), top


@njit(**INLINE)
def _copy(source, target):
    """``target[:] = source`` as a loop: the slice assignment compiles to far more (a shape
    check that raises with a formatted message: about 3 s of a first call)."""
    for s in range(np.uint64(source.shape[0])):
        target[s] = source[s]


@njit(**INLINE)
def _exponent(total):
    """``e`` with ``total = mantissa * 2^e``, mantissa in [0.5, 1), for a positive normal
    ``total`` (``math.frexp``'s exponent, read from the bits: no library call)."""
    return ((bits_from_float(total) >> 52) & 0x7FF) - 1022


@njit(**INLINE)
def _power_of_two(e):
    """``2.0 ** e``, exactly, for integer ``e`` in [-1022, 1023]."""
    return float_from_bits(np.int64(e + 1023) << 52)


@njit(**INLINE)
def _band_blanks(lo, hi):
    """Blanks ``k0 <= k < k1`` whose states (``2k``) lie in ``[lo, hi]``."""
    return (lo + 1) // 2, hi // 2 + 1


@njit(**INLINE)
def _band_labels(lo, hi):
    """Labels ``k0 <= k < k1`` whose states (``2k + 1``) lie in ``[lo, hi]``."""
    return lo // 2, (hi + 1) // 2


@njit(**NJIT)
def _logaddexp(a, b):
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    if a > b:
        return a + np.log1p(np.exp(b - a))
    return b + np.log1p(np.exp(a - b))

r"""CTC loss and its gradient w.r.t. the log-probabilities (Graves et al., 2006).

Symbols as in the paper, with shape letters as in the rest of ctckit:

* ``y[t, k]``: probability of class ``k`` at frame ``t`` (``log_probs`` holds ``log y``);
* ``l``: the target, ``L`` labels; ``l'``: the extended target, blanks around and between
  the labels, ``L' = 2L + 1`` states; state ``s`` is the blank when even, label
  ``(s - 1) / 2`` when odd;
* ``alpha[t, s]`` (eqs. 6-7): total probability of the path prefixes ending in state ``s``
  at frame ``t``, emissions up to and including ``t``;
* ``b[t, s]``: total probability of the path suffixes from state ``s`` at frame ``t`` to the
  end, emissions *after* ``t`` (the paper's beta divided by ``y[t, l'_s]``, eqs. 10-11,
  which avoids the division of eq. 14 where ``y`` is zero);
* ``P = p(l | x)`` (eq. 8); for every frame ``t``, ``P = sum_s alpha[t, s] b[t, s]`` (eq. 14);
* ``gamma[t, s] = alpha[t, s] b[t, s] / P``, the posterior occupation of state ``s``.

The loss is ``-log P``. Its exact gradient w.r.t. ``log y[t, k]`` is minus the posterior
occupation of class ``k`` at frame ``t`` (eq. 16 before the softmax is folded in):
``-sum_{s: l'_s = k} gamma[t, s]``, nonzero only at the blank and the target's labels.
PyTorch's kernel returns ``y[t, k]`` minus that instead, the gradient w.r.t. the logits
of a softmax; the ``torch_grad`` flag reproduces it.

Numerics. Each item is computed in *rescaled probability space* with float64
accumulators (Graves 2006, section 4.1 and eq. 9): frame ``t``'s emissions are divided by
their largest value among the states, ``exp(log y - m_t)`` (the shifts add up in one
log-shift per row), and the states are cut into blocks of ``BLOCK`` labels, each block
normalised by a power of two (exactly) with its own exponent.
That is a few multiply-adds per cell instead of a log-sum-exp. One scale per row is not
enough: over long inputs the forward mass runs far ahead of where the complete paths are
(at T = 10^4, S = 2000, the states that matter sit 1e-308 below the row's largest); per
block, neighbouring states never differ by that much. Only the states that are reachable
from the start and can still reach the end (a band) are computed. Three guards keep the
result exact:

1. a block whose normalising sum underflows (peaky inputs: log-probs of -1e4) is
   recomputed in log space from the previous, normalised row;
2. a state that can still matter but fell below 1e-300 of its block may have lost
   precision: the loss-only pass then checks its likelihood against the backward one;
3. the gradient pass checks eq. 14, that ``log sum_s alpha b`` plus the scales equals
   ``log P`` at every frame.

An item that fails a check is recomputed by the plain log-space kernels,
:func:`_log_space_alpha` (the loss) and :func:`_log_space_item` (with the gradient), in a
round of its own.

The gradient needs every forward row in the backward pass. A long item's rows (past
``STORED_ROWS_LIMIT``) are kept for one segment of about sqrt(T) / 2 frames at a time: the
forward pass keeps each segment's first row (a checkpoint), and the backward pass
recomputes a segment's rows from it just before it needs them, the same rows bit for bit.

Short items (fewer than ``ONE_SCALE_LABELS`` labels, ``ONE_SCALE_CELLS`` frames times
labels at most) first go to leaner passes with one scale per row, folded into the next
frame's emissions (section "one scale per row" below), under the same guards; an item
that fails one goes to the block-scaled passes.

A batch runs in up to three rounds (:func:`ctc_loss_batch`): the one-scale passes over
every item, the block-scaled passes over the items the first round left, and log space
over the items the second rejected. Each round's per-item kernel compiles (or loads from
Numba's cache) when a batch first needs it, and the parallel drivers call it through its
address, so its code is compiled once and not again inside each driver: a first call with
short targets compiles the first round alone (about 10 s), one with long targets the
second alone.

Reference: A. Graves, S. Fernandez, F. Gomez, J. Schmidhuber. Connectionist Temporal
Classification: Labelling Unsegmented Sequence Data with Recurrent Neural Networks.
ICML 2006.
"""

import math

import numpy as np
from numba import njit, prange, typeof, types
from numba import config as numba_config

from .. import _pool
from .config import HOT, INLINE, LINKED, NJIT, PARALLEL
from .intrinsics import bits_from_float, call_compiled, float_from_bits, is_set, keep_alive, prefetch, unmanaged
from .vexp import vexp_shifted

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


@njit(**LINKED)
def _label_posteriors(out, a, b, k0, kl, off, factor):
    """out[k] = a[off + k] b[off + k] factor for labels k in [k0, kl)."""
    uoff = np.uint64(off)
    for k in range(np.uint64(k0), np.uint64(kl)):
        out[k] = a[uoff + k] * b[uoff + k] * factor


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
def _num_blocks(length):
    return length // BLOCK + 1


@njit(**LINKED)
def _block(j, length):
    """(k0, blank end, label end) of block j; the ends are exclusive."""
    k0 = j * BLOCK
    return k0, min(k0 + BLOCK, length + 1), min(k0 + BLOCK, length)


@njit(**INLINE)
def _path_band(t, frames, width):
    """States ``lo <= s <= hi`` of frame t that lie on some complete path: reachable from
    the start (``s <= 2t + 1``) and able to reach the end by frame ``T - 1`` (``s >= L' -
    2 (T - t)``). Elsewhere alpha or beta is 0, so those states add nothing to eqs. 8, 14
    and 16: the block-scaled passes skip the blocks outside it, the one-scale passes compute
    the band only (a fraction of about ``L' / 2T`` of the cells fewer: 30% for T = 100,
    L' = 61)."""
    return max(0, width - 2 * (frames - t)), min(width - 1, 2 * t + 1)


@njit(**LINKED)
def _band(t, frames, length):
    """First and last block holding a state of frame t's :func:`_path_band`."""
    lo, hi = _path_band(t, frames, 2 * length + 1)
    return (lo // 2) // BLOCK, (hi // 2) // BLOCK


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


@njit(**LINKED)
def _block_sum(row, j, length):
    k0, kb, kl = _block(j, length)
    return _range_sum(row, k0, kb) + _range_sum(row, length + 1 + k0, length + 1 + kl)


@njit(**LINKED)
def _clear_block(row, scales, j, length):
    k0, kb, kl = _block(j, length)
    _range_fill(row, k0, kb, 0.0)  # (not a scaling by 0: the buffer may hold NaN garbage)
    _range_fill(row, length + 1 + k0, length + 1 + kl, 0.0)
    scales[j] = _NEG_INF


@njit(**LINKED)
def _finish_block(row, scales, j, length, base, total):
    """Normalise block j by the power of two nearest its sum (exact); its exponent becomes
    ``base`` plus that power."""
    k0, kb, kl = _block(j, length)
    _, power = math.frexp(total)
    factor = math.ldexp(1.0, -power)
    _range_scale(row, k0, kb, factor)
    _range_scale(row, length + 1 + k0, length + 1 + kl, factor)
    scales[j] = base + power


@njit(**LINKED)
def _carry(prev, prev_scales, j, k0, length):
    """``(exponent, value)`` of what block j reads from block j - 1 (its last label state):
    the value is ``v * 2^exponent`` relative to the row, -inf exponent when zero."""
    if j == 0:
        return _NEG_INF, 0.0
    v = prev[length + k0]  # label k0 - 1
    if not v > 0.0:
        return _NEG_INF, 0.0
    _, power = math.frexp(v)
    return prev_scales[j - 1] + power, v


@njit(**LINKED)
def _relative(value, exponent, base):
    """``value * 2^(exponent - base)``, 0 for a -inf exponent."""
    if exponent == _NEG_INF:
        return 0.0
    return math.ldexp(value, int(exponent - base))


@njit(**INLINE)
def _alpha_block(prev, prev_scales, new, j, y_blank, y_label, skip):
    """Eq. 6 for block j: alpha[t, s] = (alpha[t-1, s] + alpha[t-1, s-1] [+ alpha[t-1, s-2]]) y.

    Values are relative to ``2^base``, the larger of the block's own exponent and that of
    the one value read across the boundary (the previous block's last label). Returns
    ``(base, sum of the block)``; ``base`` is -inf when both were zero.
    """
    length = y_label.shape[0]
    k0, kb, kl = _block(j, length)
    own = prev_scales[j]
    carry_exponent, carry_value = _carry(prev, prev_scales, j, k0, length)
    base = max(own, carry_exponent)
    if base == _NEG_INF:
        return base, 0.0
    f_own = _relative(1.0, own, base)
    carry = _relative(carry_value, prev_scales[j - 1], base) if j > 0 else 0.0
    yb = y_blank * f_own
    off = np.uint64(length + 1)
    u0, ub, ul = np.uint64(k0), np.uint64(kb), np.uint64(kl)
    new[u0] = prev[u0] * yb + carry * y_blank
    for k in range(u0 + _U1, ub):  # blank k from blank k and label k - 1
        new[k] = (prev[k] + prev[off + k - _U1]) * yb
    if k0 < length:
        new[off + u0] = ((prev[off + u0] + prev[u0]) * f_own + skip[u0] * carry) * y_label[u0]
        for k in range(u0 + _U1, ul):  # label k from label k, blank k, and label k - 1 (eq. 7)
            new[off + k] = (prev[off + k] + prev[k] + skip[k] * prev[off + k - _U1]) * (y_label[k] * f_own)
    return base, _block_sum(new, j, length)


@njit(**NJIT)
def _alpha_block_log(prev, prev_scales, new, j, log_probs, t, n, blank, labels, skip, m):
    """:func:`_alpha_block` in log space, for a block whose rescaled sum underflowed.

    Returns ``(exponent, sum of the block)``, the first -inf when no state is reachable.
    """
    length = labels.shape[0]
    k0, kb, kl = _block(j, length)
    prev_b, prev_l = prev[:length + 1], prev[length + 1:]
    new_b, new_l = new[:length + 1], new[length + 1:]
    own = prev_scales[j]
    carry_exponent, carry_value = _carry(prev, prev_scales, j, k0, length)
    base = max(own, carry_exponent)
    f_own = _relative(1.0, own, base)
    carry = _relative(carry_value, prev_scales[j - 1], base) if j > 0 else 0.0
    log_blank = np.float64(log_probs[t, n, blank]) - m
    top = _NEG_INF
    for k in range(k0, kb):
        v = prev_b[k] * f_own + (prev_l[k - 1] * f_own if k > k0 else carry)
        new_b[k] = np.log(v) + log_blank if v > 0.0 else _NEG_INF
        top = max(top, new_b[k])
    for k in range(k0, kl):
        left_label = prev_l[k - 1] * f_own if k > k0 else carry
        v = (prev_l[k] + prev_b[k]) * f_own + skip[k] * left_label
        new_l[k] = np.log(v) + (np.float64(log_probs[t, n, labels[k]]) - m) if v > 0.0 else _NEG_INF
        top = max(top, new_l[k])
    if top == _NEG_INF:
        return top, 0.0
    power = np.floor(top / _LN2)
    for k in range(k0, kb):
        new_b[k] = np.exp(new_b[k] - power * _LN2)
    for k in range(k0, kl):
        new_l[k] = np.exp(new_l[k] - power * _LN2)
    return base + power, _block_sum(new, j, length)


@njit(**INLINE)
def _alpha_row(prev, prev_scales, new, new_scales, t, frames, y_blank, y_label, m, skip, log_probs, n, blank, labels):
    """One frame of the forward recursion over the band's blocks; the others are cleared.

    Returns 1 when some state survives, 0 when none does, -1 for a NaN.
    """
    length = labels.shape[0]
    first, last = _band(t, frames, length)
    alive = 0
    for j in range(_num_blocks(length)):
        if j < first or j > last:
            _clear_block(new, new_scales, j, length)
            continue
        base, total = _alpha_block(prev, prev_scales, new, j, y_blank, y_label, skip)
        if total != total:
            return -1
        if total < _UNDERFLOW and base > _NEG_INF:
            base, total = _alpha_block_log(prev, prev_scales, new, j, log_probs, t, n, blank, labels, skip, m)
        if total > 0.0:
            _finish_block(new, new_scales, j, length, base, total)
            alive = 1
        else:
            _clear_block(new, new_scales, j, length)
    return alive


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


@njit(**NJIT)
def _alpha_first_row(row, scales, log_probs, n, blank, labels):
    """Eq. 7's initial row (block 0 only). Returns ``(state, shift)``: state 1, 0 (no
    state) or -1 (NaN); the row's values are relative to ``exp(shift)``."""
    scales[:] = _NEG_INF
    total, top = _first_row(row, log_probs, n, blank, labels)
    if total != total:
        return -1, 0.0
    if total == 0.0:
        return 0, 0.0
    _finish_block(row, scales, np.int64(0), labels.shape[0], 0.0, total)  # not a literal 0: that would compile it again
    return 1, top


@njit(**NJIT)
def _end_log_likelihood(row, scales, length, shift):
    """Eq. 8: log(alpha[T-1, L'-1] + alpha[T-1, L'-2])."""
    log_p = np.log(row[length]) + scales[length // BLOCK] * _LN2 if row[length] > 0.0 else _NEG_INF
    if length > 0 and row[2 * length] > 0.0:
        log_p = _logaddexp(log_p, np.log(row[2 * length]) + scales[(length - 1) // BLOCK] * _LN2)
    return log_p + shift


@njit(**INLINE)
def _row_at_risk(prev, row, t, frames, y_blank, y_label, skip):
    """Whether a state that may still reach the end lost precision at frame t: it holds less
    than ``_TINY`` of its block although its true value is positive (a positive predecessor
    and a positive emission). Exact zeros (unreachable states, masked classes) are no risk.
    (Emissions themselves never underflow unnoticed: :func:`_emissions` reports ``wide``.)"""
    length = y_label.shape[0]
    lo, hi = _path_band(t, frames, 2 * length + 1)
    off = np.uint64(length + 1)
    count = 0
    # blank states s = 2k with lo <= s <= hi: predecessors blank k and label k - 1
    k_lo, k_hi = _band_blanks(lo, hi)
    if y_blank > 0.0 and k_lo < k_hi:
        if k_lo == 0:
            count += (row[0] < _TINY) & (prev[0] > 0.0)
            k_lo = 1
        for k in range(np.uint64(k_lo), np.uint64(k_hi)):
            count += (row[k] < _TINY) & (prev[k] + prev[off + k - _U1] > 0.0)
    # label states s = 2k + 1: predecessors label k, blank k, label k - 1 when skipping
    k_lo, k_hi = _band_labels(lo, hi)
    if k_lo < k_hi:
        if k_lo == 0:
            count += (row[off] < _TINY) & (prev[off] + prev[0] > 0.0) & (y_label[0] > 0.0)
            k_lo = 1
        for k in range(np.uint64(k_lo), np.uint64(k_hi)):
            pred = prev[off + k] + prev[k] + skip[k] * prev[off + k - _U1]
            count += (row[off + k] < _TINY) & (pred > 0.0) & (y_label[k] > 0.0)
    return count > 0


@njit(**INLINE)
def _copy(source, target):
    """``target[:] = source`` as a loop: the slice assignment compiles to far more (a shape
    check that raises with a formatted message: about 3 s of a first call)."""
    for s in range(np.uint64(source.shape[0])):
        target[s] = source[s]


@njit(**LINKED)
def _copy_row(source, source_scales, target, target_scales):
    """A block-scaled row and its exponents."""
    _copy(source, target)
    _copy(source_scales, target_scales)


@njit(**HOT)
def _alpha_segment(log_probs, n, t0, t1, frames, blank, labels, skip, alpha, scales, shifts, emit_blank, emit_label, emit_shift,
                   exp_row, gathered, start_row, start_scales, start_shift, keep_next, cancel):
    """The forward recursion (eqs. 6-7) over frames ``[t0, t1)``, keeping every row:
    ``alpha[t - t0]`` block-normalised, ``scales[t - t0]`` its blocks' power-of-two
    exponents, ``shifts[t - t0]`` the row's log-shift: alpha = value * 2^scale * exp(shift).

    Row ``t0`` is eq. 7's first row when ``t0 = 0``, else a copy of ``start_*`` (a
    checkpoint). The emissions of frames ``t0 + 1`` to ``t1`` (when ``t1 < frames``) go to
    ``emit_*[t - t0]`` for the backward pass; with ``keep_next``, row ``t1`` (the next
    segment's first) goes to ``alpha[t1 - t0]`` too. Returns 1, 0 when no path survives,
    -1 for a NaN (and when ``cancel[0]`` is set).
    """
    shift = start_shift
    if t0 > 0:
        _copy_row(start_row, start_scales, alpha[0], scales[0])
        shifts[0] = shift
    for t in range(t0 if t0 == 0 else t0 + 1, min(t1 + 1, frames)):  # one call site of the inlined _emissions
        i = t - t0
        if t % CANCEL_FRAMES == 0 and is_set(cancel):
            return -1
        m, y_blank, wide = _emissions(log_probs, t, n, blank, labels, emit_label[i], exp_row, gathered, t + _PREFETCH_FRAMES,
                                      0, labels.shape[0])
        emit_blank[i], emit_shift[i] = y_blank, m
        if m != m:
            return -1
        if m == _NEG_INF:
            return 0
        if t == 0:
            state, shift = _alpha_first_row(alpha[0], scales[0], log_probs, n, blank, labels)
            shifts[0] = shift
            if state <= 0:
                return state
            continue
        if t == t1 and not keep_next:  # the next segment's first frame: its emissions only
            break
        state = _alpha_row(alpha[i - 1], scales[i - 1], alpha[i], scales[i], t, frames, y_blank, emit_label[i], m, skip, log_probs,
                           n, blank, labels)
        shift += m
        shifts[i] = shift
        if state <= 0:
            return state
    return 1


@njit(**INLINE)
def _alpha_checkpoints(log_probs, n, frames, span, blank, labels, skip, alpha, scales, shifts, emit_blank, emit_label, emit_shift,
                       exp_row, gathered, kept_rows, kept_scales, kept_shifts, cancel):
    """The forward recursion (eqs. 6-7) in segments of ``span`` frames, for the gradient:
    segment ``j``'s first row (frame ``j * span``) is kept in ``kept_*[j]``, and the last
    segment's rows stay in ``alpha`` (see :func:`_alpha_segment`), so that the backward pass
    recomputes the others from their first row. Returns ``log P`` (eq. 8): -inf when no
    path survives, NaN for NaN."""
    length = labels.shape[0]
    segments = (frames + span - 1) // span
    for j in range(segments):
        t0, t1 = j * span, min(frames, (j + 1) * span)
        state = _alpha_segment(log_probs, n, t0, t1, frames, blank, labels, skip, alpha, scales, shifts, emit_blank, emit_label,
                               emit_shift, exp_row, gathered, kept_rows[j], kept_scales[j], kept_shifts[j], t1 < frames, cancel)
        if state < 0:
            return np.nan
        if state == 0:
            return _NEG_INF
        if t1 < frames:
            _copy_row(alpha[t1 - t0], scales[t1 - t0], kept_rows[j + 1], kept_scales[j + 1])
            kept_shifts[j + 1] = shifts[t1 - t0]
    last = frames - 1 - (segments - 1) * span
    return _end_log_likelihood(alpha[last], scales[last], length, shifts[last])


@njit(**HOT)
def _alpha_pass_rolling(log_probs, n, frames, blank, labels, skip, rows, scales, exp_row, y_label, gathered,
                        kept_row, kept_scales, cancel):
    """The forward recursion of :func:`_alpha_segment` on two rolling rows, for the loss alone. Returns
    ``(log P, check_frame, check_shift)``: ``check_frame`` is -1 when no state that may
    reach the end ever lost precision (see :func:`_row_at_risk`); otherwise the last frame
    before the first loss, whose exact row is copied to ``kept_row``/``kept_scales``
    (values ``* exp(check_shift)``) for :func:`_backward_log_likelihood`'s check. ``log P``
    is NaN when ``cancel[0]`` was set."""
    length = labels.shape[0]
    check_frame = -1
    check_shift = 0.0
    shift = 0.0
    for t in range(frames):
        if t % CANCEL_FRAMES == 0 and is_set(cancel):
            return np.nan, check_frame, check_shift
        m, y_blank, wide = _emissions(log_probs, t, n, blank, labels, y_label, exp_row, gathered, t + _PREFETCH_FRAMES,
                                      0, labels.shape[0])
        if m != m:
            return np.nan, check_frame, check_shift
        if m == _NEG_INF:
            return _NEG_INF, check_frame, check_shift
        row, row_scales = rows[t % 2], scales[t % 2]
        previous_shift = shift
        if t == 0:
            state, shift = _alpha_first_row(row, row_scales, log_probs, n, blank, labels)
        else:
            state = _alpha_row(rows[(t - 1) % 2], scales[(t - 1) % 2], row, row_scales, t, frames, y_blank, y_label, m, skip, log_probs, n, blank, labels)
            shift += m
        if state < 0:
            return np.nan, check_frame, check_shift
        if state == 0:
            return _NEG_INF, check_frame, check_shift
        if t > 0 and check_frame < 0:
            if wide or _row_at_risk(rows[(t - 1) % 2], row, t, frames, y_blank, y_label, skip):
                check_frame, check_shift = t - 1, previous_shift
                _copy_row(rows[(t - 1) % 2], scales[(t - 1) % 2], kept_row, kept_scales)
    return _end_log_likelihood(rows[(frames - 1) % 2], scales[(frames - 1) % 2], length, shift), check_frame, check_shift


@njit(**INLINE)
def _beta_block(next_b, next_scales, cur, j, y_blank, y_label, skip):
    """Eqs. 10-11 without frame t's own emission, for block j:
    b[t, s] = w(s) + w(s+1) [+ w(s+2)],  w(s') = y[t+1, l'_s'] b[t+1, s'].

    ``y_*`` are frame t+1's emissions. Values are relative to ``2^base``, the larger of the
    block's own exponent and that of what its last label reads from block j + 1 (that
    block's first blank and label). Returns ``(base, sum of the block)``.
    """
    length = y_label.shape[0]
    k0, kb, kl = _block(j, length)
    off = length + 1
    cross, cross_exponent = 0.0, _NEG_INF
    if kl == kb and kl <= length and j + 1 < next_scales.shape[0]:
        cross = y_blank * next_b[kl] + (skip[kl] * y_label[kl] * next_b[off + kl] if kl < length else 0.0)
        if cross > 0.0:
            cross_exponent = next_scales[j + 1] + math.frexp(cross)[1]
    own = next_scales[j]
    base = max(own, cross_exponent)
    if base == _NEG_INF:
        return base, 0.0
    f_own = _relative(1.0, own, base)
    uoff = np.uint64(off)
    u0 = np.uint64(k0)
    for k in range(u0, np.uint64(min(kb, length))):  # blank k: itself and label k
        cur[k] = (y_blank * next_b[k] + y_label[k] * next_b[uoff + k]) * f_own
    if kb == length + 1:
        cur[length] = y_blank * next_b[length] * f_own
    if kl - 1 > k0:
        for k in range(u0, np.uint64(kl - 1)):  # label k: itself, blank k + 1, label k + 1 (eq. 11)
            cur[uoff + k] = (y_label[k] * next_b[uoff + k] + y_blank * next_b[k + _U1]
                             + skip[k + _U1] * y_label[k + _U1] * next_b[uoff + k + _U1]) * f_own
    if kl > k0:
        k = kl - 1
        if kl < kb:  # the next state is the final blank, in this block
            cur[off + k] = (y_label[k] * next_b[off + k] + y_blank * next_b[k + 1]) * f_own
        else:  # the next states open block j + 1
            cur[off + k] = y_label[k] * next_b[off + k] * f_own + _relative(cross, next_scales[j + 1] if cross > 0.0 else _NEG_INF, base)
    return base, _block_sum(cur, j, length)


@njit(**NJIT)
def _beta_block_log(next_b, next_scales, cur, j, log_probs, t_next, n, blank, labels, skip, m, work):
    """:func:`_beta_block` in log space for a block whose rescaled sum underflowed.
    Returns ``(exponent, sum of the block)``."""
    length = labels.shape[0]
    k0, kb, kl = _block(j, length)
    own = next_scales[j]
    right = next_scales[j + 1] if j + 1 < next_scales.shape[0] else _NEG_INF
    base = max(own, right)
    log_own = (own - base) * _LN2 if own > _NEG_INF else _NEG_INF
    log_right = (right - base) * _LN2 if right > _NEG_INF else _NEG_INF
    log_blank = np.float64(log_probs[t_next, n, blank]) - m
    # work holds log w(s') for the block's states and the next block's first two, split
    # as in the rows; blank kb and label kl, when they exist, open block j + 1.
    top = _NEG_INF
    hi_b = min(kb + 1, length + 1)
    hi_l = min(kl + 1, length)
    for k in range(k0, hi_b):
        b = next_b[k]
        work[k] = np.log(b) + log_blank + (log_own if k < kb else log_right) if b > 0.0 else _NEG_INF
        top = max(top, work[k])
    for k in range(k0, hi_l):
        b = next_b[length + 1 + k]
        log_label = np.float64(log_probs[t_next, n, labels[k]]) - m
        work[length + 1 + k] = np.log(b) + log_label + (log_own if k < kl else log_right) if b > 0.0 else _NEG_INF
        top = max(top, work[length + 1 + k])
    if top == _NEG_INF:
        return top, 0.0
    power = np.floor(top / _LN2)
    for k in range(k0, hi_b):
        work[k] = np.exp(work[k] - power * _LN2)
    for k in range(k0, hi_l):
        work[length + 1 + k] = np.exp(work[length + 1 + k] - power * _LN2)
    wb, wl = work[:length + 1], work[length + 1:]
    cb, cl = cur[:length + 1], cur[length + 1:]
    for k in range(k0, kb):
        cb[k] = wb[k] + (wl[k] if k < length else 0.0)
    for k in range(k0, kl):
        v = wl[k] + (wb[k + 1] if k + 1 <= length else 0.0)
        if k + 1 < length:
            v += skip[k + 1] * wl[k + 1]
        cl[k] = v
    return base + power, _block_sum(cur, j, length)


@njit(**INLINE)
def _beta_row(next_b, next_scales, cur, cur_scales, t, frames, y_blank, y_label, m, skip, log_probs, n, blank, labels, work):
    """b[t] from b[t+1] and frame t+1's emissions over the band's blocks.
    Returns 1 when some state survives, 0 when none does, -1 for a NaN."""
    length = labels.shape[0]
    first, last = _band(t, frames, length)
    alive = 0
    for j in range(_num_blocks(length)):
        if j < first or j > last:
            _clear_block(cur, cur_scales, j, length)
            continue
        base, total = _beta_block(next_b, next_scales, cur, j, y_blank, y_label, skip)
        if total != total:
            return -1
        if total < _UNDERFLOW and base > _NEG_INF:
            base, total = _beta_block_log(next_b, next_scales, cur, j, log_probs, t + 1, n, blank, labels, skip, m, work)
        if total > 0.0:
            _finish_block(cur, cur_scales, j, length, base, total)
            alive = 1
        else:
            _clear_block(cur, cur_scales, j, length)
    return alive


@njit(**NJIT)
def _beta_init(row, scales, length):
    """b[T-1]: one at the two final states, blocks normalised."""
    row[:] = 0.0
    scales[:] = _NEG_INF
    row[length] = 1.0  # blank state s = L' - 1
    if length > 0:
        row[2 * length] = 1.0  # label state s = L' - 2
    last_blank_block = length // BLOCK
    _finish_block(row, scales, last_blank_block, length, 0.0, _block_sum(row, last_blank_block, length))
    if length > 0 and (length - 1) // BLOCK != last_blank_block:
        j = (length - 1) // BLOCK
        _finish_block(row, scales, j, length, 0.0, _block_sum(row, j, length))


@njit(**NJIT)
def _row_product_log(a, a_scales, b, b_scales, length):
    """log sum_s a(s) b(s) of two block-scaled rows (eq. 14 at one frame); -inf when zero."""
    top = _NEG_INF
    for j in range(_num_blocks(length)):
        if a_scales[j] > _NEG_INF and b_scales[j] > _NEG_INF:
            top = max(top, a_scales[j] + b_scales[j])
    if top == _NEG_INF:
        return _NEG_INF
    total = 0.0
    for j in range(_num_blocks(length)):
        if a_scales[j] > _NEG_INF and b_scales[j] > _NEG_INF:
            k0, kb, kl = _block(j, length)
            dot = _range_dot(a, b, k0, kb) + _range_dot(a, b, length + 1 + k0, length + 1 + kl)
            total += math.ldexp(dot, int(a_scales[j] + b_scales[j] - top))
    if not total > 0.0:
        return _NEG_INF
    return np.log(total) + top * _LN2


@njit(**HOT)
def _backward_log_likelihood(log_probs, n, frames, blank, labels, skip, rows, scales, exp_row, y_label, gathered, work,
                             check_frame, alpha_row, alpha_scales, alpha_shift, cancel):
    """log P from the backward recursion down to ``check_frame`` (eqs. 10-11) and that
    frame's forward row (eq. 14: P = sum_s alpha_t(s) beta_t(s)), to check the forward pass:
    the backward rows are computed independently of the forward rows after that frame."""
    length = labels.shape[0]
    _beta_init(rows[(frames - 1) % 2], scales[(frames - 1) % 2], length)
    shift = 0.0
    for t in range(frames - 2, check_frame - 1, -1):
        if t % CANCEL_FRAMES == 0 and is_set(cancel):
            return np.nan
        m, y_blank, wide = _emissions(log_probs, t + 1, n, blank, labels, y_label, exp_row, gathered, t + 1 - _PREFETCH_FRAMES,
                                      0, labels.shape[0])
        if not m > _NEG_INF:
            return m if m != m else _NEG_INF
        state = _beta_row(rows[(t + 1) % 2], scales[(t + 1) % 2], rows[t % 2], scales[t % 2], t, frames, y_blank, y_label, m, skip, log_probs, n, blank, labels, work)
        if state < 0:
            return np.nan
        if state == 0:
            return _NEG_INF
        shift += m
    slot = check_frame % 2
    return _row_product_log(alpha_row, alpha_scales, rows[slot], scales[slot], length) + alpha_shift + shift


@njit(**INLINE)
def _store_frame(mode, grad, post, slot, scale, log_probs, t, n, blank, labels, k0, k1, blank_post, label_post, factor,
                 torch_grad):
    """Write frame t's class posteriors (eq. 16) for item n: the blank's is ``blank_post``,
    label k's is ``label_post[k] * factor`` for ``k0 <= k < k1`` (the others' are 0, as
    the output already holds).

    ``GRAD_DENSE``: ``grad[t, n, k] = scale * (-sum_{s: l'_s = k} gamma[t, s])`` (plus
    ``scale * y[t, k]`` for torch's convention) into a row of zeros. ``GRAD_COMPACT``:
    ``post[t, slot]`` = the blank's posterior, ``post[t, slot + 1 + k]`` = label k's.
    """
    if mode == GRAD_COMPACT:
        post[t, slot] = blank_post
        for k in range(k0, k1):
            post[t, slot + 1 + k] = label_post[k] * factor
        return
    if torch_grad:
        for c in range(log_probs.shape[2]):
            grad[t, n, c] = scale * np.exp(np.float64(log_probs[t, n, c]))
    grad[t, n, blank] -= scale * blank_post
    label_scale = scale * factor
    for k in range(k0, k1):
        grad[t, n, labels[k]] -= label_scale * label_post[k]


@njit(**HOT)
def _gradient_segment(log_probs, n, t0, t1, frames, blank, labels, skip, alpha, scales, shifts, log_p, emit_blank, emit_label,
                      emit_shift, b_shift, mode, grad, post, slot, scale, torch_grad, work, label_post, rows, b_scales, block_mass,
                      block_exponent):
    """Backward recursion with the posterior scatter (eqs. 14-16) over frames ``t1 - 1``
    down to ``t0``, from :func:`_alpha_segment`'s rows and emissions of that segment.

    ``rows`` and ``b_scales`` (two rolling rows each, by ``t % 2``) hold ``b[t1]``, and
    ``b_shift`` its log-shift, from the segment after this one (the last segment starts
    them). Returns ``(ok, b_shift)`` for the segment before; not ok when eq. 14 fails at a
    frame (then the caller recomputes the item in log space). ``block_mass`` and
    ``block_exponent`` are work arrays."""
    length = labels.shape[0]
    blocks = _num_blocks(length)
    if t1 == frames:
        _beta_init(rows[(frames - 1) % 2], b_scales[(frames - 1) % 2], length)
        b_shift = 0.0
    for t in range(t1 - 1, t0 - 1, -1):
        i = t - t0
        b_row, b_sc = rows[t % 2], b_scales[t % 2]
        if t < frames - 1:
            state = _beta_row(rows[(t + 1) % 2], b_scales[(t + 1) % 2], b_row, b_sc, t, frames,
                              emit_blank[i + 1], emit_label[i + 1], emit_shift[i + 1], skip, log_probs, n, blank, labels, work)
            if state <= 0:
                return False, b_shift
            b_shift += emit_shift[i + 1]
        a_row, a_sc = alpha[i], scales[i]
        # eq. 14: sum_s alpha b, block by block, each block 2^(exponents) apart. ``top`` is
        # the largest block's exponent with its mass's own, so z >= 1/2 and no factor below
        # overflows. Where even that block's mass is subnormal, alpha and b barely overlap
        # and the posteriors would have lost precision: the item goes to log space.
        top, top_mass = _NEG_INF, 0.0
        for j in range(blocks):
            k0, kb, kl = _block(j, length)
            mass = _range_dot(a_row, b_row, k0, kb) + _range_dot(a_row, b_row, length + 1 + k0, length + 1 + kl)
            block_mass[j] = mass
            block_exponent[j] = a_sc[j] + b_sc[j] if mass > 0.0 else _NEG_INF
            if mass > 0.0 and block_exponent[j] + _exponent(mass) > top:
                top, top_mass = block_exponent[j] + _exponent(mass), mass
        if not top_mass >= _SMALLEST_NORMAL:
            return False, b_shift
        z = 0.0
        for j in range(blocks):
            z += _relative(block_mass[j], block_exponent[j], top)
        if abs(np.log(z) + top * _LN2 + shifts[i] + b_shift - log_p) > _LOG_P_TOLERANCE:
            return False, b_shift
        blank_post = 0.0
        for j in range(blocks):
            k0, kb, kl = _block(j, length)
            factor = _relative(1.0 / z, block_exponent[j], top)
            blank_post += _range_dot(a_row, b_row, k0, kb) * factor
            _label_posteriors(label_post, a_row, b_row, k0, kl, length + 1, factor)
        _store_frame(mode, grad, post, slot, scale, log_probs, t, n, blank, labels, 0, length, blank_post, label_post, 1.0,
                     torch_grad)
    return True, b_shift


# ----------------------------------------------------------------- one scale per row
# Blocks exist for long inputs with long targets, where a row's states that matter lie
# further below its largest than float64 reaches. For shorter items one scale per row is
# enough, and the block machinery (band of blocks, carries across block boundaries,
# log-space blocks, normalising passes) is most of their time. These passes keep each row
# as computed, without normalising it: row t-1's normalisation, ``2^-e`` with ``e`` the
# exponent of its sum (read from the bits: exact, no library call), is folded into frame
# t's emissions, so a frame costs one pass over its states. The same guards hold: a NaN,
# no surviving state, a row sum below ``_UNDERFLOW``, a failed check of eq. 14 make them
# give up, and the item goes to the block-scaled passes, which handle it.

ONE_SCALE_LABELS = 256
ONE_SCALE_CELLS = 1 << 19
"""Items with fewer than ``ONE_SCALE_LABELS`` labels and at most ``ONE_SCALE_CELLS`` frames
times labels go to the one-scale passes first. Around that size the checks start to fail on
ordinary inputs (log_softmax of normal logits, C = 32, with the gradient: T = 2000, L = 250
and T = 4000, L = 100 pass for every item; T = 8000, L = 50 fails for 1 item in 4, T = 3000,
L = 200 for 1 in 8, T = 4000, L = 250 for all), and a failed attempt costs up to one more
pass over the item."""


@njit(**INLINE)
def _exponent(total):
    """``e`` with ``total = mantissa * 2^e``, mantissa in [0.5, 1), for a positive normal
    ``total`` (``math.frexp``'s exponent, read from the bits: no library call)."""
    return ((bits_from_float(total) >> 52) & 0x7FF) - 1022


@njit(**INLINE)
def _power_of_two(e):
    """``2.0 ** e``, exactly, for integer ``e`` in [-1022, 1023]."""
    return float_from_bits(np.int64(e + 1023) << 52)


_RISK = 4.0 * _TINY
"""A state of a one-scale row below this may have lost precision: rows are kept relative to
the previous row's sum normalised to [0.5, 1) and sum to less than 3 of that (each state
feeds at most three, emissions are at most 1), so every state below ``_TINY`` of its row's
sum is below this."""


@njit(**INLINE)
def _band_blanks(lo, hi):
    """Blanks ``k0 <= k < k1`` whose states (``2k``) lie in ``[lo, hi]``."""
    return (lo + 1) // 2, hi // 2 + 1


@njit(**INLINE)
def _band_labels(lo, hi):
    """Labels ``k0 <= k < k1`` whose states (``2k + 1``) lie in ``[lo, hi]``."""
    return lo // 2, (hi + 1) // 2


@njit(**INLINE)
def _clear_states(row, s0, s1, width, length):
    """Zero the states ``s0 <= s < s1`` (clipped to the row) of a split row: around a band,
    what the next row's recursion reads but the band did not write."""
    for s in range(max(0, s0), min(width, s1)):
        row[s // 2 if s % 2 == 0 else length + 1 + s // 2] = 0.0


@njit(**INLINE)
def _band_dot(a, b, lo, hi, length):
    """``sum_s a[s] b[s]`` over the states ``lo..hi`` of two split rows."""
    kb0, kb1 = _band_blanks(lo, hi)
    kl0, kl1 = _band_labels(lo, hi)
    off = length + 1
    return _range_dot(a, b, kb0, kb1) + _range_dot(a, b, off + kl0, off + kl1)


@njit(**INLINE)
def _one_scale_alpha_row(prev, cur, y_blank, y_label, factor, skip, lo, hi, count_from):
    """Eqs. 6-7 over the states ``lo..hi`` of a one-scale row (split layout), the emissions
    times ``factor``; ``prev`` holds row t - 1 on ``lo - 2 .. hi`` (zeros where it is 0).

    Returns ``(sum of those states, number of states s >= count_from at risk)``: a state is
    at risk when its value is below ``_RISK`` although its predecessors and its emission
    are positive (``count_from`` past the row counts none).
    """
    length = y_label.shape[0]
    off = np.uint64(length + 1)
    yb = y_blank * factor
    kb0, kb1 = _band_blanks(lo, hi)  # blank k is state 2k
    kl0, kl1 = _band_labels(lo, hi)  # label k is state 2k + 1
    blank_from = np.uint64(max(0, (count_from + 1) // 2))
    label_from = np.uint64(max(0, count_from // 2))
    total = 0.0
    blank_risk = 0
    start = np.uint64(kb0)
    if kb0 == 0:
        v = prev[0] * yb
        cur[0] = v
        total = v
        blank_risk = 1 if (v < _RISK and prev[0] > 0.0 and count_from <= 0) else 0
        start = _U1
    for k in range(start, np.uint64(kb1)):  # blank k from blank k and label k - 1
        pred = prev[k] + prev[off + k - _U1]
        v = pred * yb
        cur[k] = v
        total += v
        blank_risk += (v < _RISK) & (pred > 0.0) & (k >= blank_from)
    risk = blank_risk if y_blank > 0.0 else 0  # an exact zero emission loses nothing
    start = np.uint64(kl0)
    if kl0 == 0 and kl1 > 0:
        pred = prev[off] + prev[0]
        v = pred * (y_label[0] * factor)
        cur[off] = v
        total += v
        risk += (v < _RISK) & (pred > 0.0) & (y_label[0] > 0.0) & (count_from <= 1)
        start = _U1
    for k in range(start, np.uint64(kl1)):  # label k from label k, blank k, label k - 1 (eq. 7)
        pred = prev[off + k] + prev[k] + skip[k] * prev[off + k - _U1]
        yk = y_label[k]
        v = pred * (yk * factor)
        cur[off + k] = v
        total += v
        risk += (v < _RISK) & (pred > 0.0) & (yk > 0.0) & (k >= label_from)
    return total, risk


@njit(**INLINE)
def _end_of_row(row, length):
    """alpha[T-1, L'-1] + alpha[T-1, L'-2] of a one-scale row (eq. 8, before the scales)."""
    return row[length] + (row[2 * length] if length > 0 else 0.0)


@njit(**HOT)
def _one_scale_loss(log_probs, n, frames, blank, labels, skip, rows, exp_row, y_label, gathered, kept_row):
    """The forward recursion of a one-scale item on two rolling rows, for the loss alone.

    Returns ``(ok, log P)``; not ok when the item needs the general passes (a NaN, no
    surviving state, a row sum below ``_UNDERFLOW``, or a failed check). As in
    :func:`_alpha_pass_rolling`, the first frame where a state that may reach the end is
    at risk of lost precision (or emissions may underflow, ``wide``) keeps the previous,
    exact row in ``kept_row``, and a backward pass down to that frame checks ``log P``.
    Each row is computed on its :func:`_path_band` only.
    """
    length = labels.shape[0]
    width = 2 * length + 1
    total, shift = _first_row(rows[0], log_probs, n, blank, labels)
    if not total > 0.0:
        return False, 0.0
    exponents = 0.0  # sum of the exponents folded into the rows so far
    check_frame, check_scale = np.int64(-1), 0.0  # not a literal -1: the check pass would compile twice
    for t in range(1, frames):
        lo, hi = _path_band(t, frames, width)
        k0, k1 = _band_labels(lo, hi)
        m, y_blank, wide = _emissions(log_probs, t, n, blank, labels, y_label, exp_row, gathered, t + _PREFETCH_FRAMES, k0, k1)
        if not m > _NEG_INF:
            return False, 0.0
        e = _exponent(total)
        count_from = lo if check_frame < 0 else width
        row = rows[t % 2]
        total, risk = _one_scale_alpha_row(rows[(t - 1) % 2], row, y_blank, y_label, _power_of_two(-e), skip, lo, hi,
                                           count_from)
        _clear_states(row, hi + 1, hi + 3, width, length)
        if not total >= _UNDERFLOW:
            return False, 0.0
        if (risk > 0 or wide) and check_frame < 0:
            check_frame, check_scale = t - 1, shift + exponents * _LN2
            _copy(rows[(t - 1) % 2], kept_row)
        shift += m
        exponents += e
    end = _end_of_row(rows[(frames - 1) % 2], length)
    if not end > 0.0:
        return False, 0.0
    log_p = np.log(end) + shift + exponents * _LN2
    if check_frame < 0:
        return True, log_p
    check = _one_scale_backward_log_likelihood(log_probs, n, frames, blank, labels, skip, rows, exp_row, y_label, gathered,
                                               check_frame, kept_row, check_scale)
    return abs(check - log_p) <= _LOG_P_TOLERANCE, log_p


@njit(**HOT)
def _one_scale_backward_log_likelihood(log_probs, n, frames, blank, labels, skip, rows, exp_row, y_label, gathered,
                                       check_frame, alpha_row, alpha_scale):
    """:func:`_backward_log_likelihood` for a one-scale item: log P from the backward
    recursion down to ``check_frame`` and that frame's forward row ``alpha_row *
    exp(alpha_scale)`` (eq. 14); NaN when a row sum falls below ``_UNDERFLOW``."""
    length = labels.shape[0]
    width = 2 * length + 1
    b_row = rows[(frames - 1) % 2]
    _one_scale_last_beta_row(b_row, length)
    total = _end_of_row(b_row, length)
    b_shift = 0.0
    for t in range(frames - 2, check_frame - 1, -1):
        lo, hi = _path_band(t, frames, width)
        next_lo, next_hi = _path_band(t + 1, frames, width)
        k0, k1 = _band_labels(lo, next_hi)  # frame t + 1's emissions that row t reads
        m, y_blank, wide = _emissions(log_probs, t + 1, n, blank, labels, y_label, exp_row, gathered, t + 1 - _PREFETCH_FRAMES,
                                      k0, k1)
        if not m > _NEG_INF:
            return np.nan
        e = _exponent(total)
        row = rows[t % 2]
        total = _one_scale_beta_row(rows[(t + 1) % 2], row, y_blank, y_label, _power_of_two(-e), skip, lo, hi)
        _clear_states(row, lo - 2, lo, width, length)
        if not total >= _UNDERFLOW:
            return np.nan
        b_shift += m + e * _LN2
    lo, hi = _path_band(check_frame, frames, width)
    product = _band_dot(alpha_row, rows[check_frame % 2], lo, hi, length)
    return np.log(product) + alpha_scale + b_shift if product > 0.0 else np.nan


@njit(**INLINE)
def _one_scale_last_beta_row(row, length):
    """b[T-1] of a one-scale item: one at the two final states."""
    for s in range(2 * length + 1):
        row[s] = 0.0
    row[length] = 1.0
    if length > 0:
        row[2 * length] = 1.0


@njit(**HOT)
def _one_scale_alpha_pass(log_probs, n, frames, blank, labels, skip, alpha, shifts, emit_blank, emit_label, emit_shift, exp_row, gathered):
    """:func:`_one_scale_loss` keeping every row: ``alpha[t] * exp(shifts[t])`` is row t (on
    its :func:`_path_band`, and the two states above it), and frame t's emissions go to
    ``emit_*`` for the backward pass (those of the labels in the band and the two states
    below it, which the backward row t - 1 reads). Returns ``(ok, log P)``. (No risk check:
    the gradient pass checks eq. 14 at every frame.)"""
    length = labels.shape[0]
    width = 2 * length + 1
    total, shift = _first_row(alpha[0], log_probs, n, blank, labels)
    if not total > 0.0:
        return False, 0.0
    shifts[0] = shift
    exponents = 0.0
    for t in range(1, frames):
        lo, hi = _path_band(t, frames, width)
        k0, k1 = _band_labels(max(0, lo - 2), hi)
        m, y_blank, wide = _emissions(log_probs, t, n, blank, labels, emit_label[t], exp_row, gathered, t + _PREFETCH_FRAMES,
                                      k0, k1)
        emit_blank[t], emit_shift[t] = y_blank, m
        if not m > _NEG_INF:
            return False, 0.0
        e = _exponent(total)
        total, _ = _one_scale_alpha_row(alpha[t - 1], alpha[t], y_blank, emit_label[t], _power_of_two(-e), skip, lo, hi, width)
        _clear_states(alpha[t], hi + 1, hi + 3, width, length)
        if not total >= _UNDERFLOW:
            return False, 0.0
        shift += m
        exponents += e
        shifts[t] = shift + exponents * _LN2
    end = _end_of_row(alpha[frames - 1], length)
    if not end > 0.0:
        return False, 0.0
    return True, np.log(end) + shifts[frames - 1]


@njit(**INLINE)
def _one_scale_beta_row(next_b, cur, y_blank, y_label, factor, skip, lo, hi):
    """Eqs. 10-11 over the states ``lo..hi`` of a one-scale row: ``b[t]`` from ``b[t+1]``
    (on ``lo .. hi + 2``, zeros where it is 0) and frame t+1's emissions times ``factor``.
    Returns the sum of those states."""
    length = y_label.shape[0]
    off = np.uint64(length + 1)
    ul = np.uint64(length)
    yb = y_blank * factor
    kb0, kb1 = _band_blanks(lo, hi)
    kl0, kl1 = _band_labels(lo, hi)
    total = 0.0
    for k in range(np.uint64(kb0), np.uint64(min(kb1, length))):  # blank k: itself and label k
        v = yb * next_b[k] + (y_label[k] * factor) * next_b[off + k]
        cur[k] = v
        total += v
    if kb1 == length + 1:  # the final blank: itself only
        cur[ul] = yb * next_b[ul]
        total += cur[ul]
    inner_end = max(kl0, min(kl1, length - 1))  # (not below kl0: length - 1 is -1 for an empty target)
    for k in range(np.uint64(kl0), np.uint64(inner_end)):  # label k: itself, blank k + 1, label k + 1 (eq. 11)
        v = ((y_label[k] * factor) * next_b[off + k] + yb * next_b[k + _U1]
             + skip[k + _U1] * (y_label[k + _U1] * factor) * next_b[off + k + _U1])
        cur[off + k] = v
        total += v
    if length > 0 and kl1 == length:  # the last label: itself and the final blank
        last = ul - _U1
        cur[off + last] = (y_label[last] * factor) * next_b[off + last] + yb * next_b[ul]
        total += cur[off + last]
    return total


@njit(**HOT)
def _one_scale_gradient_pass(log_probs, n, frames, blank, labels, skip, alpha, shifts, log_p, emit_blank, emit_label, emit_shift,
                             mode, grad, post, slot, scale, torch_grad, label_post, rows):
    """The backward recursion of a one-scale item with the posterior scatter (eqs. 14-16),
    on two rolling rows, each on its :func:`_path_band` (item n's output arrives zeroed:
    only the band's labels are written). False when the item needs the general passes (a
    row sum below ``_UNDERFLOW``, or eq. 14 off by more than ``_LOG_P_TOLERANCE`` at some
    frame)."""
    length = labels.shape[0]
    width = 2 * length + 1
    off = np.uint64(length + 1)
    b_row = rows[(frames - 1) % 2]
    _one_scale_last_beta_row(b_row, length)
    total = _end_of_row(b_row, length)
    b_shift = 0.0  # b[t] = b_row * exp(b_shift)
    for t in range(frames - 1, -1, -1):
        lo, hi = _path_band(t, frames, width)
        b_row = rows[t % 2]
        if t < frames - 1:
            e = _exponent(total)
            total = _one_scale_beta_row(rows[(t + 1) % 2], b_row, emit_blank[t + 1], emit_label[t + 1], _power_of_two(-e), skip,
                                        lo, hi)
            _clear_states(b_row, lo - 2, lo, width, length)
            if not total >= _UNDERFLOW:
                return False
            b_shift += emit_shift[t + 1] + e * _LN2
        a_row = alpha[t]
        kb0, kb1 = _band_blanks(lo, hi)
        k0, k1 = _band_labels(lo, hi)
        blank_mass = _range_dot(a_row, b_row, kb0, kb1)
        z = blank_mass
        for k in range(np.uint64(k0), np.uint64(k1)):
            mass = a_row[off + k] * b_row[off + k]
            label_post[k] = mass
            z += mass
        if not z >= _SMALLEST_NORMAL or abs(np.log(z) + shifts[t] + b_shift - log_p) > _LOG_P_TOLERANCE:  # eq. 14
            return False  # (a subnormal z: alpha and b barely overlap, 1/z may overflow)
        inverse = 1.0 / z
        _store_frame(mode, grad, post, slot, scale, log_probs, t, n, blank, labels, k0, k1, blank_mass * inverse, label_post,
                     inverse, torch_grad)
    return True


@njit(**NJIT)
def _logaddexp(a, b):
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    if a > b:
        return a + np.log1p(np.exp(b - a))
    return b + np.log1p(np.exp(a - b))


@njit(**NJIT)
def _log_space_alpha(log_probs, n, frames, blank, labels, length, skip, cancel):
    """The plain log-space forward pass (eqs. 6-8 with log-sum-exp), float64: ``(log_alpha,
    log P)``. Slower, never loses a path to underflow: used for items the rescaled passes
    reject. ``log P`` is NaN when ``cancel[0]`` was set."""
    width = 2 * length + 1
    log_alpha = np.full((frames, width), _NEG_INF)
    log_alpha[0, 0] = np.float64(log_probs[0, n, blank])
    if length > 0:
        log_alpha[0, 1] = np.float64(log_probs[0, n, labels[0]])
    for t in range(1, frames):
        if t % CANCEL_FRAMES == 0 and is_set(cancel):
            return log_alpha, np.nan
        for s in range(width):
            v = _logaddexp(log_alpha[t - 1, s], log_alpha[t - 1, s - 1] if s >= 1 else _NEG_INF)
            if s >= 3 and s % 2 == 1 and skip[(s - 1) // 2] > 0.0:
                v = _logaddexp(v, log_alpha[t - 1, s - 2])
            log_alpha[t, s] = v + _log_emission(log_probs, t, n, blank, labels, s)
    log_p = log_alpha[frames - 1, width - 1]
    if length > 0:
        log_p = _logaddexp(log_p, log_alpha[frames - 1, width - 2])
    return log_alpha, log_p


@njit(**NJIT)
def _log_space_item(log_probs, n, frames, blank, labels, length, skip, mode, grad, post, slot, scale, torch_grad, label_post,
                    cancel):
    """The plain log-space forward-backward (eqs. 6-16 with log-sum-exp), float64: writes
    the gradient or posteriors per ``mode`` and returns ``log P``."""
    width = 2 * length + 1
    log_alpha, log_p = _log_space_alpha(log_probs, n, frames, blank, labels, length, skip, cancel)
    if not (log_p > _NEG_INF and log_p < np.inf):
        return log_p
    next_b = np.full(width, _NEG_INF)
    cur_b = np.full(width, _NEG_INF)
    next_b[width - 1] = 0.0
    if length > 0:
        next_b[width - 2] = 0.0
    gamma = np.empty(width)
    for t in range(frames - 1, -1, -1):
        if t % CANCEL_FRAMES == 0 and is_set(cancel):
            return np.nan
        if t < frames - 1:
            for s in range(width):
                v = next_b[s] + _log_emission(log_probs, t + 1, n, blank, labels, s)
                if s + 1 < width:
                    v = _logaddexp(v, next_b[s + 1] + _log_emission(log_probs, t + 1, n, blank, labels, s + 1))
                if s % 2 == 1 and s + 2 < width and skip[(s + 1) // 2] > 0.0:
                    v = _logaddexp(v, next_b[s + 2] + _log_emission(log_probs, t + 1, n, blank, labels, s + 2))
                cur_b[s] = v
            next_b, cur_b = cur_b, next_b
        log_z = _NEG_INF
        for s in range(width):
            gamma[s] = log_alpha[t, s] + next_b[s]
            log_z = _logaddexp(log_z, gamma[s])
        blank_post = 0.0
        for k in range(length + 1):
            blank_post += np.exp(gamma[2 * k] - log_z)
        for k in range(length):
            label_post[k] = np.exp(gamma[2 * k + 1] - log_z)
        _store_frame(mode, grad, post, slot, scale, log_probs, t, n, blank, labels, 0, length, blank_post, label_post, 1.0,
                     torch_grad)
    return log_p


@njit(**NJIT)
def _fill_item(mode, grad, post, n, slot, frames, length, value):
    """Set item n's gradient (or posteriors) to ``value`` on its frames."""
    for t in range(frames):
        if mode == GRAD_COMPACT:
            for k in range(length + 1):
                post[t, slot + k] = value
        else:
            for c in range(grad.shape[2]):
                grad[t, n, c] = value


@njit(**NJIT)
def _clear_item(mode, grad, post, offsets, n):
    """Zero item n's part of the output, which arrives uninitialised: its rows
    ``grad[:, n, :]``, or all its columns of ``post`` (with padded targets these run past
    its labels, up to the next item's first slot)."""
    if mode == GRAD_COMPACT:
        start = offsets[n] + n
        end = offsets[n + 1] + n + 1 if n + 1 < offsets.shape[0] else post.shape[1]
        for t in range(post.shape[0]):
            for j in range(start, end):
                post[t, j] = 0.0
    else:
        for t in range(grad.shape[0]):
            for c in range(grad.shape[2]):
                grad[t, n, c] = 0.0


@njit(**INLINE)
def _carve(workspace, start, size):
    """``(workspace[start:start + size], start + size)``."""
    return workspace[start:start + size], start + size


STORED_ROWS_LIMIT = 1 << 18
"""float64 elements (2 MiB) up to which the gradient's forward pass keeps every row of an
item. Past it, the rows are kept for one segment of about sqrt(T) / 2 frames at a time and
recomputed from one checkpoint row per segment (:func:`_alpha_checkpoints`): computing
most rows twice costs less than storing them all. At T = 10^4 and L = 2000 every row is
480 MB per item, a fresh mapping each call, and page faults took over half the time of
the forward and backward; at T = 2000 and L = 500 (24 MB per item, no page faults) the
segments, which stay in cache, were still 1.05-1.13x faster. (One-scale items keep all
their rows, which their passes need: about T (3 L + 8) elements, 12 MB at L = 255 with
T L at ``ONE_SCALE_CELLS``.)"""


@njit(**INLINE)
def _one_scale_item(frames, length):
    """Whether an item goes to the one-scale passes first (see ``ONE_SCALE_LABELS``)."""
    return length < ONE_SCALE_LABELS and frames * length <= ONE_SCALE_CELLS


@njit(**NJIT)
def _segment_frames(frames, length):
    """Frames per segment of the gradient's forward rows: all of them for a one-scale item
    or within ``STORED_ROWS_LIMIT``, else ceil(sqrt(frames) / 2)."""
    per_frame = 2 * length + 1 + _num_blocks(length) + 3 + length  # a row, its scales, shift, emissions
    if _one_scale_item(frames, length) or frames * per_frame <= STORED_ROWS_LIMIT:
        return frames
    return int(math.ceil(math.sqrt(frames) / 2))


@njit(**NJIT)
def _workspace_size(frames, length, classes, mode):
    """float64 elements the per-item kernels (``_item_*``) carve their work arrays from."""
    width, blocks = 2 * length + 1, _num_blocks(length)
    common = 4 * length + width + 2 * classes
    if mode == GRAD_NONE:
        return common + 3 * width + 3 * blocks
    span = _segment_frames(frames, length)
    segments = (frames + span - 1) // span
    return common + (span + 1) * (width + blocks + 3 + length) + segments * (width + blocks + 1) + 2 * width + 4 * blocks


@njit(**INLINE)
def _item_extent(targets, offsets, input_lengths, target_lengths, n):
    """Item n's ``(frames, length, labels)``, and whether it needs the passes at all:
    ``(False, nll)`` for an infeasible target (``+inf``) or an empty input (``0``: the empty
    path, P = 1)."""
    frames = input_lengths[n]
    length = target_lengths[n]
    labels = targets[offsets[n]:offsets[n] + length]
    if min_frames_needed(labels, length) > frames:
        return frames, length, labels, False, np.inf
    if frames == 0:
        return frames, length, labels, False, 0.0
    return frames, length, labels, True, 0.0


@njit(**NJIT)
def _item_loss_one_scale(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, cancel):
    """First round of a batch's loss, item n: ``(nll, status)``, ``+inf`` for an infeasible
    target, or ``STATUS_PENDING`` for an item the one-scale pass does not take or rejects.

    Every array the passes touch is an :func:`.unmanaged` view (the inputs, and the work
    arrays carved from one allocation): passed to the inlined per-frame helpers, managed
    arrays cost about 50 atomic reference-count updates per frame, half the time of a
    short item. ``keep_alive`` holds the one allocation until the passes are done.
    """
    frames, length, labels, feasible, nll = _item_extent(targets, offsets, input_lengths, target_lengths, n)
    if not feasible:
        return nll, STATUS_OK
    if not _one_scale_item(frames, length):
        return np.nan, STATUS_PENDING
    workspace = np.empty(_workspace_size(frames, length, log_probs.shape[2], GRAD_NONE))
    result = _one_scale_loss_passes(unmanaged(log_probs), unmanaged(labels), n, frames, length, blank, unmanaged(workspace))
    keep_alive(workspace)
    return result


@njit(**NJIT)
def _item_loss_blocks(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, cancel):
    """Second round of a batch's loss, for an item the first left pending (or every item,
    when the first round was skipped): the block-scaled pass, checked by a backward pass
    where a state may have lost precision. ``(nll, status)``, NaN when a used log-prob is
    NaN, ``STATUS_PENDING`` for an item the checks reject or with no surviving path."""
    frames, length, labels, feasible, nll = _item_extent(targets, offsets, input_lengths, target_lengths, n)
    if not feasible:
        return nll, STATUS_OK
    workspace = np.empty(_workspace_size(frames, length, log_probs.shape[2], GRAD_NONE))
    result = _block_loss_passes(unmanaged(log_probs), unmanaged(labels), n, frames, length, blank, unmanaged(workspace),
                                cancel)
    keep_alive(workspace)
    return result


@njit(**NJIT)
def _item_gradient_one_scale(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, mode, torch_grad, scale,
                             grad, post, cancel):
    """:func:`_item_loss_one_scale`, writing item n's gradient times ``scale[n]`` (``mode``
    ``GRAD_DENSE``) or its posteriors (``GRAD_COMPACT``) too: zero for an infeasible item.
    A pending item's output is left to the second round, which clears it first."""
    frames, length, labels, feasible, nll = _item_extent(targets, offsets, input_lengths, target_lengths, n)
    if feasible and not _one_scale_item(frames, length):
        return np.nan, STATUS_PENDING
    _clear_item(mode, grad, post, offsets, n)
    if not feasible:
        return nll, STATUS_OK
    workspace = np.empty(_workspace_size(frames, length, log_probs.shape[2], mode))
    result = _one_scale_gradient_passes(unmanaged(log_probs), unmanaged(labels), n, frames, length, blank, mode, torch_grad,
                                        scale[n], unmanaged(grad), unmanaged(post), offsets[n] + n, unmanaged(workspace))
    keep_alive(workspace)
    return result


@njit(**NJIT)
def _item_gradient_blocks(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, mode, torch_grad, scale,
                          grad, post, cancel):
    """:func:`_item_loss_blocks` with the gradient or posteriors of
    :func:`_item_gradient_one_scale`: NaN rows for a NaN loss. A pending item's output is
    left to the third round, which clears it again."""
    _clear_item(mode, grad, post, offsets, n)
    frames, length, labels, feasible, nll = _item_extent(targets, offsets, input_lengths, target_lengths, n)
    if not feasible:
        return nll, STATUS_OK
    workspace = np.empty(_workspace_size(frames, length, log_probs.shape[2], mode))
    result = _block_gradient_passes(unmanaged(log_probs), unmanaged(labels), n, frames, length, blank, mode, torch_grad,
                                    scale[n], unmanaged(grad), unmanaged(post), offsets[n] + n, unmanaged(workspace), cancel)
    keep_alive(workspace)
    return result


@njit(**NJIT)
def _item_loss_log_space(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, cancel):
    """Third round of a batch's loss, for an item the block-scaled pass left pending: the
    plain log-space pass. ``(nll, STATUS_RECOMPUTED)``."""
    frames, length, labels, _, _ = _item_extent(targets, offsets, input_lengths, target_lengths, n)
    skip = np.empty(length)
    _skip_weights(labels, length, skip)
    _, log_p = _log_space_alpha(log_probs, n, frames, blank, labels, length, skip, cancel)
    return -log_p, np.int64(STATUS_RECOMPUTED)  # not a literal: the round's result type


@njit(**NJIT)
def _item_gradient_log_space(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, mode, torch_grad, scale,
                             grad, post, cancel):
    """:func:`_item_loss_log_space` with the gradient or posteriors: item n's output is
    cleared (the second round may have written some frames) and stays zero when no path
    survives even in log space."""
    _clear_item(mode, grad, post, offsets, n)
    frames, length, labels, _, _ = _item_extent(targets, offsets, input_lengths, target_lengths, n)
    skip = np.empty(length)
    _skip_weights(labels, length, skip)
    label_post = np.empty(length)
    slot = offsets[n] + n
    log_p = _log_space_item(log_probs, n, frames, blank, labels, length, skip, mode, grad, post, slot, scale[n], torch_grad,
                            label_post, cancel)
    if not log_p > _NEG_INF:
        _fill_item(mode, grad, post, n, slot, frames, length, 0.0)
    return -log_p, np.int64(STATUS_RECOMPUTED)


@njit(**INLINE)
def _common_work(workspace, labels, length, classes, blank):
    """The work arrays every kind of pass carves first: ``skip`` (filled), ``y_label``,
    ``label_post``, ``gathered``, ``work``, ``exp_row`` (2 C: a row's emissions, then 0 for
    each class the item uses and ``-inf`` for the others, filled when :func:`_emissions`
    reads whole rows), and where the rest starts."""
    width = 2 * length + 1
    at = 0
    skip, at = _carve(workspace, at, length)
    y_label, at = _carve(workspace, at, length)
    label_post, at = _carve(workspace, at, length)
    gathered, at = _carve(workspace, at, length)
    work, at = _carve(workspace, at, width)
    exp_row, at = _carve(workspace, at, 2 * classes)
    _skip_weights(labels, length, skip)
    if classes < length + 1:
        unused = exp_row[classes:]
        for c in range(classes):
            unused[c] = _NEG_INF
        unused[blank] = 0.0
        for k in range(length):
            unused[labels[k]] = 0.0
    return skip, y_label, label_post, gathered, work, exp_row, at


@njit(**INLINE)
def _one_scale_loss_passes(log_probs, labels, n, frames, length, blank, workspace):
    """:func:`_item_loss_one_scale`'s computation on unmanaged views."""
    width = 2 * length + 1
    skip, y_label, label_post, gathered, work, exp_row, at = _common_work(workspace, labels, length, log_probs.shape[2], blank)
    rows, at = _carve(workspace, at, 2 * width)
    kept_row, at = _carve(workspace, at, width)
    ok, log_p = _one_scale_loss(log_probs, n, frames, blank, labels, skip, rows.reshape((2, width)), exp_row, y_label,
                                gathered, kept_row)
    if ok:
        return -log_p, STATUS_ONE_SCALE
    return np.nan, STATUS_PENDING


@njit(**INLINE)
def _block_loss_passes(log_probs, labels, n, frames, length, blank, workspace, cancel):
    """:func:`_item_loss_blocks`'s computation on unmanaged views."""
    width = 2 * length + 1
    blocks = _num_blocks(length)
    skip, y_label, label_post, gathered, work, exp_row, at = _common_work(workspace, labels, length, log_probs.shape[2], blank)
    rows, at = _carve(workspace, at, 2 * width)
    scales, at = _carve(workspace, at, 2 * blocks)
    kept_row, at = _carve(workspace, at, width)
    kept_scales, at = _carve(workspace, at, blocks)
    rows, scales = rows.reshape((2, width)), scales.reshape((2, blocks))
    log_p, check_frame, check_shift = _alpha_pass_rolling(log_probs, n, frames, blank, labels, skip, rows, scales, exp_row,
                                                          y_label, gathered, kept_row, kept_scales, cancel)
    if log_p != log_p:
        return np.nan, STATUS_OK
    if log_p > _NEG_INF:
        if check_frame < 0:
            return -log_p, STATUS_OK
        check = _backward_log_likelihood(log_probs, n, frames, blank, labels, skip, rows, scales, exp_row, y_label, gathered,
                                         work, check_frame, kept_row, kept_scales, check_shift, cancel)
        if abs(check - log_p) <= _LOG_P_TOLERANCE:
            return -log_p, STATUS_OK
    # A -inf from the rescaled pass (no surviving path) is confirmed in log space too
    # (the third round): underflow must never fake an infinite loss.
    return np.nan, STATUS_PENDING


@njit(**INLINE)
def _gradient_work(workspace, labels, frames, length, classes, blank):
    """The gradient passes' work arrays, for rows kept in segments of ``span`` frames
    (:func:`_segment_frames`): :func:`_common_work`'s, then ``alpha``, ``scales``,
    ``shifts``, ``emit_blank``, ``emit_shift``, ``emit_label`` (``span + 1`` rows each: the
    last for the next segment's first row), ``kept_rows``, ``kept_scales``, ``kept_shifts``
    (one per segment), ``beta_rows``, ``beta_scales`` (two rows), ``block_mass``,
    ``block_exponent``."""
    width = 2 * length + 1
    blocks = _num_blocks(length)
    span = _segment_frames(frames, length)
    segments = (frames + span - 1) // span
    skip, y_label, label_post, gathered, work, exp_row, at = _common_work(workspace, labels, length, classes, blank)
    alpha, at = _carve(workspace, at, (span + 1) * width)
    scales, at = _carve(workspace, at, (span + 1) * blocks)
    shifts, at = _carve(workspace, at, span + 1)
    emit_blank, at = _carve(workspace, at, span + 1)
    emit_shift, at = _carve(workspace, at, span + 1)
    emit_label, at = _carve(workspace, at, (span + 1) * length)
    kept_rows, at = _carve(workspace, at, segments * width)
    kept_scales, at = _carve(workspace, at, segments * blocks)
    kept_shifts, at = _carve(workspace, at, segments)
    beta_rows, at = _carve(workspace, at, 2 * width)
    beta_scales, at = _carve(workspace, at, 2 * blocks)
    block_mass, at = _carve(workspace, at, blocks)
    block_exponent, at = _carve(workspace, at, blocks)
    return (span, segments, skip, y_label, label_post, gathered, work, exp_row, alpha.reshape((span + 1, width)),
            scales.reshape((span + 1, blocks)), shifts, emit_blank, emit_shift, emit_label.reshape((span + 1, length)),
            kept_rows.reshape((segments, width)), kept_scales.reshape((segments, blocks)), kept_shifts,
            beta_rows.reshape((2, width)), beta_scales.reshape((2, blocks)), block_mass, block_exponent)


@njit(**INLINE)
def _one_scale_gradient_passes(log_probs, labels, n, frames, length, blank, mode, torch_grad, scale, grad, post, slot,
                               workspace):
    """:func:`_item_gradient_one_scale`'s computation on unmanaged views (``slot``: item
    n's first column of ``post``)."""
    (span, segments, skip, y_label, label_post, gathered, work, exp_row, alpha, scales, shifts, emit_blank, emit_shift,
     emit_label, kept_rows, kept_scales, kept_shifts, beta_rows, beta_scales, block_mass,
     block_exponent) = _gradient_work(workspace, labels, frames, length, log_probs.shape[2], blank)
    ok, log_p = _one_scale_alpha_pass(log_probs, n, frames, blank, labels, skip, alpha, shifts, emit_blank, emit_label,
                                      emit_shift, exp_row, gathered)
    if ok and _one_scale_gradient_pass(log_probs, n, frames, blank, labels, skip, alpha, shifts, log_p, emit_blank,
                                       emit_label, emit_shift, mode, grad, post, slot, scale, torch_grad, label_post,
                                       beta_rows):
        return -log_p, STATUS_ONE_SCALE
    return np.nan, STATUS_PENDING


@njit(**INLINE)
def _block_gradient_passes(log_probs, labels, n, frames, length, blank, mode, torch_grad, scale, grad, post, slot,
                           workspace, cancel):
    """:func:`_item_gradient_blocks`'s computation on unmanaged views (``slot``: item n's
    first column of ``post``)."""
    (span, segments, skip, y_label, label_post, gathered, work, exp_row, alpha, scales, shifts, emit_blank, emit_shift,
     emit_label, kept_rows, kept_scales, kept_shifts, beta_rows, beta_scales, block_mass,
     block_exponent) = _gradient_work(workspace, labels, frames, length, log_probs.shape[2], blank)
    ok = False
    log_p = _alpha_checkpoints(log_probs, n, frames, span, blank, labels, skip, alpha, scales, shifts, emit_blank, emit_label,
                               emit_shift, exp_row, gathered, kept_rows, kept_scales, kept_shifts, cancel)
    if log_p != log_p:
        _fill_item(mode, grad, post, n, slot, frames, length, np.nan)
        return np.nan, STATUS_OK
    if log_p > _NEG_INF:
        ok = True
        b_shift = 0.0
        for j in range(segments - 1, -1, -1):  # the last segment's rows are still in alpha
            t0, t1 = j * span, min(frames, (j + 1) * span)
            if j < segments - 1:  # recompute its rows (keep_next is a run-time False: a literal one
                # would compile _alpha_segment a second time, for 30 s)
                _alpha_segment(log_probs, n, t0, t1, frames, blank, labels, skip, alpha, scales, shifts, emit_blank, emit_label,
                               emit_shift, exp_row, gathered, kept_rows[j], kept_scales[j], kept_shifts[j], frames < 0, cancel)
            ok, b_shift = _gradient_segment(log_probs, n, t0, t1, frames, blank, labels, skip, alpha, scales, shifts, log_p,
                                            emit_blank, emit_label, emit_shift, b_shift, mode, grad, post, slot, scale,
                                            torch_grad, work, label_post, beta_rows, beta_scales, block_mass, block_exponent)
            if not ok or is_set(cancel):
                ok = False
                break
    # A -inf from the rescaled pass (no surviving path) is confirmed in log space too
    # (the third round): underflow must never fake an infinite loss.
    if ok:
        return -log_p, STATUS_OK
    return np.nan, STATUS_PENDING


# ------------------------------------------------------------------------------ batches
# Up to three rounds per batch, each a serial driver over a chunk of items calling a
# per-item kernel through its address (see the module docstring and :func:`_item_address`),
# run in parallel by :mod:`ctckit._pool`.

FRAME_NS = 150.0
LABEL_NS = 4.0
"""Estimated ns of one frame of an item (one core, loss alone): ``FRAME_NS + LABEL_NS *
L`` (measured on ocr- and char-like items: 150-190 ns at L = 40, about 2 ns a state). The
gradient doubles it. Used only to split a batch between threads."""


def ctc_loss_batch(log_probs, targets, offsets, input_lengths, target_lengths, blank, mode, torch_grad, scale, nll, grad, post, status):
    """Fill ``nll[n]``, ``status[n]`` and item n's gradient output for every item, in parallel.

    Inputs must be validated: ``log_probs`` (T, N, C) float, ``targets`` 1-D int64 with
    item ``n``'s labels at ``offsets[n] : offsets[n] + target_lengths[n]``, lengths int64.
    ``mode``: ``GRAD_NONE``; ``GRAD_DENSE``, the gradient times ``scale[n]`` into ``grad``
    (T, N, C); ``GRAD_COMPACT``, posteriors into ``post`` (T, len(targets) + N), item n's
    slots starting at ``offsets[n] + n`` (see :func:`scatter_posteriors`). The output may
    arrive uninitialised: each item first zeroes its own part (all T frames), in parallel
    and while those rows are about to be written, instead of a serial memset beforehand.
    Each item writes only its own slices, and goes through the same passes whatever the
    thread count, so the result does not depend on scheduling.

    The first round takes the items short enough for the one-scale passes
    (:func:`_one_scale_item`), the second the others and those the first left pending, the
    third those the second left pending. Each round's kernel compiles when a batch first
    needs it: a batch of long targets never compiles the first.
    """
    items, later, costs = _plan_items(input_lengths, target_lengths, mode != GRAD_NONE)
    inputs = (log_probs, targets, offsets, input_lengths, target_lengths)
    if mode == GRAD_NONE:
        rounds, item_arguments = _LOSS_ROUNDS, (*inputs, np.int64(0), blank, _A_FLAG)
    else:
        rounds, item_arguments = _GRADIENT_ROUNDS, (*inputs, np.int64(0), blank, mode, torch_grad, scale, grad, post, _A_FLAG)
    for function in rounds:
        if items.shape[0]:
            item = _item_address(_item_key(function, item_arguments), function, item_arguments)
            round_items = items
            if mode == GRAD_NONE:
                task = lambda chunk, cancel: loss_items(item, round_items[chunk], cancel, *inputs, blank, nll, status)
                together = lambda: loss_items_openmp(item, round_items, *inputs, blank, nll, status)
            else:
                task = lambda chunk, cancel: gradient_items(item, round_items[chunk], cancel, *inputs, blank, mode, torch_grad,
                                                            scale, nll, grad, post, status)
                together = lambda: gradient_items_openmp(item, round_items, *inputs, blank, mode, torch_grad, scale, nll, grad,
                                                         post, status)
            _pool.run(task, costs[items], together)
            items = items[status[items] == STATUS_PENDING]
        if later.shape[0]:  # the items too long for the first round join those it left
            items = np.union1d(items, later) if items.shape[0] else later
            later = later[:0]
        if items.shape[0] == 0:
            return
        if function is rounds[1]:
            costs[items] *= 4.0  # log space costs more per cell
    raise AssertionError("the log-space round left an item pending")


_A_FLAG = np.zeros(1, dtype=np.int64)
"""A cancel flag's type, for looking up the per-item kernels (each job has its own flag)."""
_LOSS_ROUNDS = (_item_loss_one_scale, _item_loss_blocks, _item_loss_log_space)
_GRADIENT_ROUNDS = (_item_gradient_one_scale, _item_gradient_blocks, _item_gradient_log_space)
"""Per-item kernels of a batch's rounds: one-scale passes, block-scaled passes, log space."""


@njit(**NJIT)
def _plan_items(input_lengths, target_lengths, gradient):
    """``(first, later, costs)``: the items short enough for the first round
    (:func:`_one_scale_item`), the others, and each item's estimated cost in ns
    (``FRAME_NS``)."""
    size = input_lengths.shape[0]
    costs = np.empty(size)
    order = np.empty(size, dtype=np.int64)
    first, last = 0, size
    for n in range(size):
        frames, length = input_lengths[n], target_lengths[n]
        costs[n] = frames * (FRAME_NS + LABEL_NS * length) * (2.0 if gradient else 1.0)
        if _one_scale_item(frames, length):
            order[first] = n
            first += 1
        else:
            last -= 1
            order[last] = n
    return order[:first], order[first:][::-1].copy(), costs


_ITEM_RESULT = types.Tuple((types.float64, types.int64))
_item_addresses = {}


try:  # what Numba's dispatchers look their compiled code up by: about 0.1 us an argument
    from numba._dispatcher import compute_fingerprint as _argument_kind
except ImportError:  # numba.typeof takes about 8 us an argument
    def _argument_kind(value):
        """What decides an argument's Numba type."""
        if isinstance(value, np.ndarray):
            return value.dtype.char, value.ndim, value.flags.num
        return type(value)


def _item_key(function, arguments):
    """What :func:`_item_address` looks ``function``'s compiled code up by."""
    return function, tuple(map(_argument_kind, arguments))


def _item_address(key, function, arguments):
    """The native entry point of ``function`` (one of the ``_item_*`` kernels) compiled for
    the types of ``arguments`` (or loaded from Numba's cache), for a batch driver to call
    through a pointer (:func:`.call_compiled`). ``key``: :func:`_item_key`'s.

    Numba links a called function's code into its caller's, then optimises it and makes
    machine code of the whole again. Called through a pointer, the per-item code compiles
    once and each driver on its own, in about a second; linked in, the parallel driver
    took 15 s more (it is two levels: the loop's body and the function around it).
    """
    address = _item_addresses.get(key)
    if address is None:
        if numba_config.DISABLE_JIT:
            address = function
        else:
            argument_types = tuple(typeof(value) for value in arguments)
            function.compile(argument_types)
            compiled = function.overloads[argument_types]
            if compiled.signature.return_type != _ITEM_RESULT:
                raise TypeError(f"{function.__name__} returns {compiled.signature.return_type}, not {_ITEM_RESULT}")
            address = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
        _item_addresses[key] = address
    return address


@njit(**NJIT)
def loss_items(item, items, cancel, log_probs, targets, offsets, input_lengths, target_lengths, blank, nll, status):
    """One round of :func:`ctc_loss_batch` without a gradient, over the item indices
    ``items`` (one chunk of a batch), stopping when ``cancel[0]`` is set; ``item``: the
    address of the round's per-item kernel (:func:`_item_address`)."""
    for i in range(items.shape[0]):
        if is_set(cancel):
            return
        n = items[i]
        nll[n], status[n] = call_compiled((0.0, 0), item, (unmanaged(log_probs), unmanaged(targets), unmanaged(offsets),
                                                           unmanaged(input_lengths), unmanaged(target_lengths), n, blank,
                                                           unmanaged(cancel)))


@njit(**NJIT)
def gradient_items(item, items, cancel, log_probs, targets, offsets, input_lengths, target_lengths, blank, mode, torch_grad, scale,
                   nll, grad, post, status):
    """:func:`loss_items` with ``mode`` ``GRAD_DENSE`` or ``GRAD_COMPACT``."""
    for i in range(items.shape[0]):
        if is_set(cancel):
            return
        n = items[i]
        nll[n], status[n] = call_compiled((0.0, 0), item, (unmanaged(log_probs), unmanaged(targets), unmanaged(offsets),
                                                           unmanaged(input_lengths), unmanaged(target_lengths), n, blank,
                                                           mode, torch_grad, unmanaged(scale), unmanaged(grad),
                                                           unmanaged(post), unmanaged(cancel)))


@njit(**PARALLEL)
def loss_items_openmp(item, items, log_probs, targets, offsets, input_lengths, target_lengths, blank, nll, status):
    """:func:`loss_items` over all ``items`` at once, on Numba's OpenMP threads (short
    calls only: see :mod:`ctckit._pool`)."""
    never = np.zeros(1, dtype=np.int64)  # the cancel flag: a short call is not cancelled
    for i in prange(items.shape[0]):
        n = items[i]
        nll[n], status[n] = call_compiled((0.0, 0), item, (unmanaged(log_probs), unmanaged(targets), unmanaged(offsets),
                                                           unmanaged(input_lengths), unmanaged(target_lengths), n, blank,
                                                           unmanaged(never)))


@njit(**PARALLEL)
def gradient_items_openmp(item, items, log_probs, targets, offsets, input_lengths, target_lengths, blank, mode, torch_grad,
                          scale, nll, grad, post, status):
    """:func:`gradient_items` over all ``items`` at once, on Numba's OpenMP threads."""
    never = np.zeros(1, dtype=np.int64)
    for i in prange(items.shape[0]):
        n = items[i]
        nll[n], status[n] = call_compiled((0.0, 0), item, (unmanaged(log_probs), unmanaged(targets), unmanaged(offsets),
                                                           unmanaged(input_lengths), unmanaged(target_lengths), n, blank,
                                                           mode, torch_grad, unmanaged(scale), unmanaged(grad),
                                                           unmanaged(post), unmanaged(never)))


SCATTER_NS = 0.5
"""Estimated ns per element of a frame of the dense gradient (written once, zero or not)."""


def scatter_posteriors(post, targets, offsets, input_lengths, target_lengths, blank, scale, grad):
    """Dense gradient from compact posteriors: ``grad[t, n, k] = -scale[n] * posterior``.

    ``grad`` is (T, N, C), any contents: each row is zeroed right before its posteriors
    are scattered into it (one pass over memory). The threads split the frames
    (:func:`_scatter_frames`)."""
    frames, batch, classes = grad.shape
    label_index = targets.astype(np.uint64)  # unsigned: no negative-index wraparound per element
    arguments = (post, label_index, offsets, input_lengths, target_lengths, blank, scale, grad)
    task = lambda chunk, cancel: _scatter_frames(chunk, cancel, *arguments)
    together = lambda: _scatter_frames_openmp(np.arange(frames, dtype=np.int64), *arguments)
    _pool.run(task, np.full(frames, SCATTER_NS * batch * classes), together)


@njit(**NJIT)
def _scatter_frames(frames, cancel, post, label_index, offsets, input_lengths, target_lengths, blank, scale, grad):
    """:func:`scatter_posteriors` over the frame indices ``frames``. Each frame is whole
    (N, C) rows written in memory order from one row of ``post`` (frame-major as well),
    streams the hardware prefetchers follow. Split by items, a thread wrote C values every
    N * C and read ``post`` at a stride too: 2.5x slower on an ocr-like batch right after
    its forward, when the cache holds other data. The arrays are read through unmanaged
    views."""
    batch, classes = grad.shape[1], grad.shape[2]
    out, index = unmanaged(grad), unmanaged(label_index)
    for i in range(frames.shape[0]):
        if is_set(cancel):
            return
        t = frames[i]
        frame_post = unmanaged(post)[t]
        for n in range(batch):
            row = out[t, n]
            for c in range(classes):
                row[c] = 0.0
            if t < input_lengths[n]:
                factor = scale[n]
                start = np.uint64(offsets[n])
                slot = start + np.uint64(n)  # the blank's posterior, then the labels'
                row[blank] = -factor * frame_post[slot]
                for k in range(np.uint64(target_lengths[n])):
                    row[index[start + k]] -= factor * frame_post[slot + k + _U1]


@njit(**PARALLEL)
def _scatter_frames_openmp(frames, post, label_index, offsets, input_lengths, target_lengths, blank, scale, grad):
    """:func:`_scatter_frames` over all ``frames`` at once, on Numba's OpenMP threads."""
    never = np.zeros(1, dtype=np.int64)
    for i in prange(frames.shape[0]):
        _scatter_frames(frames[i:i + 1], never, post, label_index, offsets, input_lengths, target_lengths, blank, scale, grad)

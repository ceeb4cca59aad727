r"""Rows cut in blocks of states, each with its own power-of-two scale.

Over long inputs with long targets the forward mass runs far ahead of where the complete
paths are (at T = 10^4, S = 2000 the states that matter sit 1e-308 below a row's largest),
so one scale per row is not enough. Here a row's states are cut into blocks of ``BLOCK``
labels (``2 * BLOCK`` states), each normalised by a power of two (exact) with its own
exponent; the recursions of eqs. 6-7 (:func:`_alpha_block`, :func:`_alpha_row`) and 10-11
(:func:`_beta_block`, :func:`_beta_row`) carry values across block boundaries at the
neighbour's scale (:func:`_carry`). Only the band of blocks on complete paths is computed
(:func:`_band`).

Guards: a block whose normalising sum underflows (peaky inputs) is recomputed in log space
from the previous row (:func:`_alpha_block_log`, :func:`_beta_block_log`); a row whose
states fell near the underflow (:func:`_row_at_risk`) makes the loss pass check its
likelihood against the backward one. The passes over whole items live in
:mod:`.block_passes`.
"""

import math

import numpy as np

from ..config import INLINE, LINKED, NJIT
from ..disk_cache import njit
from .trellis import (
    _band_blanks, _band_labels, _copy, _first_row, _LN2, _logaddexp, _NEG_INF, _path_band, _range_dot, _range_fill,
    _range_scale, _range_sum, _TINY, _U1, _UNDERFLOW, BLOCK,
)


@njit(**INLINE)
def _num_blocks(length):
    return length // BLOCK + 1


@njit(**LINKED)
def _block(j, length):
    """(k0, blank end, label end) of block j; the ends are exclusive."""
    k0 = j * BLOCK
    return k0, min(k0 + BLOCK, length + 1), min(k0 + BLOCK, length)


@njit(**LINKED)
def _band(t, frames, length):
    """First and last block holding a state of frame t's :func:`_path_band`."""
    lo, hi = _path_band(t, frames, 2 * length + 1)
    return (lo // 2) // BLOCK, (hi // 2) // BLOCK


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


@njit(**LINKED)
def _copy_row(source, source_scales, target, target_scales):
    """A block-scaled row and its exponents."""
    _copy(source, target)
    _copy(source_scales, target_scales)


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

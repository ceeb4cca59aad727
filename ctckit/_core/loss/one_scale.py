r"""The one-scale passes: short items, one scale per row, folded into the next frame.

Blocks exist for long inputs with long targets, where a row's states that matter lie
further below its largest than float64 reaches. For shorter items (``ONE_SCALE_LABELS``,
``ONE_SCALE_CELLS``) one scale per row is enough, and the block machinery (band of blocks,
carries across block boundaries, log-space blocks, normalising passes) is most of their
time. These passes keep each row as computed, without normalising it: row t-1's
normalisation, ``2^-e`` with ``e`` the exponent of its sum (read from the bits: exact, no
library call), is folded into frame t's emissions, so a frame costs one pass over its
states (eqs. 6-7 forward, 10-11 backward, 14-16 for the posteriors). The same guards hold
as in :mod:`.block_passes`: a NaN, no surviving state, a row sum below ``_UNDERFLOW``, a
failed check of eq. 14 make them give up, and the item goes to the block-scaled passes,
which handle it.
"""

import numpy as np

from ..config import HOT, INLINE
from ..disk_cache import njit
from .posteriors import _store_frame
from .trellis import (
    _band_blanks, _band_labels, _copy, _emissions, _exponent, _first_row, _LN2, _LOG_P_TOLERANCE, _NEG_INF, _path_band,
    _power_of_two, _PREFETCH_FRAMES, _range_dot, _SMALLEST_NORMAL, _TINY, _U1, _UNDERFLOW,
)


ONE_SCALE_LABELS = 256
ONE_SCALE_CELLS = 1 << 19
"""Items with fewer than ``ONE_SCALE_LABELS`` labels and at most ``ONE_SCALE_CELLS`` frames
times labels go to the one-scale passes first. Around that size the checks start to fail on
ordinary inputs (log_softmax of normal logits, C = 32, with the gradient: T = 2000, L = 250
and T = 4000, L = 100 pass for every item; T = 8000, L = 50 fails for 1 item in 4, T = 3000,
L = 200 for 1 in 8, T = 4000, L = 250 for all), and a failed attempt costs up to one more
pass over the item."""


_RISK = 4.0 * _TINY
"""A state of a one-scale row below this may have lost precision: rows are kept relative to
the previous row's sum normalised to [0.5, 1) and sum to less than 3 of that (each state
feeds at most three, emissions are at most 1), so every state below ``_TINY`` of its row's
sum is below this."""


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

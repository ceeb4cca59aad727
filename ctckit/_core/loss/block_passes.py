r"""The block-scaled passes over one item: forward, backward, and the gradient.

Built on the rows of :mod:`.blocks`. :func:`_alpha_pass_rolling` is the loss alone: the
forward recursion (eqs. 6-7) keeping two rows, ``log P`` from the last (eq. 8), and, when a
row was at risk of underflow, the row to check from. :func:`_backward_log_likelihood`
computes ``log P`` again from the backward recursion (eqs. 10-11) down to that row: the
check of guard 2.

With the gradient every forward row is needed in the backward pass.
:func:`_alpha_segment` keeps every row of a segment of frames; a long item keeps only each
segment's first row (:func:`_alpha_checkpoints`) and recomputes a segment's rows, the same
bits, just before the backward pass needs them. :func:`_gradient_segment` runs the
backward recursion over a segment, checks eq. 14 (``sum_s alpha b = P`` at every frame)
and writes each frame's posteriors through :func:`.posteriors._store_frame`.
"""

import numpy as np

from ..config import HOT, INLINE
from ..disk_cache import njit
from ..intrinsics import is_set
from .blocks import (
    _alpha_first_row, _alpha_row, _beta_init, _beta_row, _block, _copy_row, _end_log_likelihood, _num_blocks,
    _relative, _row_at_risk, _row_product_log,
)
from .posteriors import _label_posteriors, _store_frame
from .trellis import (
    _emissions, _exponent, _LN2, _LOG_P_TOLERANCE, _NEG_INF, _PREFETCH_FRAMES, _range_dot, _SMALLEST_NORMAL,
    CANCEL_FRAMES,
)


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

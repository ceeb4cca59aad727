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
accumulators: frame ``t``'s emissions are divided by their largest value among the
states, ``exp(log y - m_t)``, and each alpha (and b) row is normalised to sum to one,
its log-scale accumulated separately (Graves 2006, section 4.1 and eq. 9). That is a few
multiply-adds per cell instead of a log-sum-exp. Two guards keep it exact:

1. a frame whose normalising sum underflows (peaky inputs: log-probs of -1e4) is
   recomputed in log space from the previous, normalised row;
2. rescaling flushes states far below a row's largest (relative 1e-308) to zero; that is
   harmless unless the *future* later favours them. Eq. 14 detects it: the gradient
   pass checks that ``log sum_s alpha b`` plus the scales equals ``log P`` at every frame,
   the loss-only pass that the forward and the backward likelihoods agree. An item
   that fails is recomputed by the plain log-space kernel, :func:`_log_space_item`.

Reference: A. Graves, S. Fernandez, F. Gomez, J. Schmidhuber. Connectionist Temporal
Classification: Labelling Unsegmented Sequence Data with Recurrent Neural Networks.
ICML 2006.
"""

import numpy as np
from numba import njit, prange

from .config import NJIT, PARALLEL

_NEG_INF = -np.inf
_UNDERFLOW = 1e-280
"""A frame whose normalising sum falls below this is recomputed in log space."""
_LOG_P_TOLERANCE = 1e-7
"""Largest |log P_t - log P| (nats) accepted from the rescaled pass; above it the item is
recomputed in log space. Float64 rounding over T=10^4 frames stays below 1e-9."""

STATUS_OK = 0
STATUS_RECOMPUTED = 1
"""Per-item status codes returned by the drivers (for tests and diagnostics)."""

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
def _emissions(log_probs, t, n, blank, labels, length, y_label):
    """Frame ``t``'s emissions of the blank and of each label, shifted by their max ``m``.

    Writes ``y_label[k] = exp(log y[t, l_k] - m)`` and returns ``(m, exp(log y[t, blank] - m))``.
    ``m`` is ``-inf`` when every needed class is masked, NaN when one is NaN.
    """
    log_blank = np.float64(log_probs[t, n, blank])
    m = log_blank
    for k in range(length):
        v = np.float64(log_probs[t, n, labels[k]])
        y_label[k] = v
        if v > m:
            m = v
    if m == _NEG_INF:
        return m, 0.0
    for k in range(length):
        y_label[k] = np.exp(y_label[k] - m)
    return m, np.exp(log_blank - m)


@njit(**NJIT)
def _log_emission(log_probs, t, n, blank, labels, s):
    if s % 2 == 0:
        return np.float64(log_probs[t, n, blank])
    return np.float64(log_probs[t, n, labels[(s - 1) // 2]])


@njit(**NJIT)
def _alpha_step(prev, new, y_blank, y_label, skip, length):
    """Eq. 6: alpha[t, s] = (alpha[t-1, s] + alpha[t-1, s-1] [+ alpha[t-1, s-2]]) y[t, l'_s].

    ``prev`` and ``new`` are rows of ``L'`` states; returns the sum of ``new``.
    """
    new[0] = prev[0] * y_blank
    total = new[0]
    for k in range(length):
        s = 2 * k + 1
        v = prev[s] + prev[s - 1]
        if k > 0:
            v += skip[k] * prev[s - 2]
        new[s] = v * y_label[k]
        new[s + 1] = (prev[s + 1] + prev[s]) * y_blank
        total += new[s] + new[s + 1]
    return total


@njit(**NJIT)
def _alpha_step_log(prev, new, log_probs, t, n, blank, labels, skip, length, m):
    """Eq. 6 in log space, for a frame whose rescaled sum underflowed.

    ``prev`` is a normalised probability row; ``new`` receives ``exp(log alpha - M)``.
    Returns ``(M, sum of new)``; ``M`` is ``-inf`` when no state is reachable.
    """
    width = 2 * length + 1
    top = _NEG_INF
    for s in range(width):
        v = prev[s]
        if s >= 1:
            v += prev[s - 1]
        if s >= 3 and s % 2 == 1:
            v += skip[(s - 1) // 2] * prev[s - 2]
        lv = np.log(v) + (_log_emission(log_probs, t, n, blank, labels, s) - m) if v > 0.0 else _NEG_INF
        new[s] = lv
        if lv > top:
            top = lv
    if top == _NEG_INF:
        return top, 0.0
    total = 0.0
    for s in range(width):
        new[s] = np.exp(new[s] - top)
        total += new[s]
    return top, total


@njit(**NJIT)
def _beta_step(next_b, cur_b, y_blank, y_label, skip, length):
    """Eqs. 10-11 without frame t's own emission:

    b[t, s] = w(s) + w(s+1) [+ w(s+2)],  w(s') = y[t+1, l'_s'] b[t+1, s'].

    ``y_*`` are frame t+1's emissions. Returns the sum of ``cur_b``.
    """
    total = 0.0
    for k in range(length + 1):
        s = 2 * k
        w_blank = y_blank * next_b[s]
        if k < length:
            w_label = y_label[k] * next_b[s + 1]
            cur_b[s] = w_blank + w_label
            v = w_label + y_blank * next_b[s + 2]
            if k + 1 < length:
                v += skip[k + 1] * y_label[k + 1] * next_b[s + 3]
            cur_b[s + 1] = v
            total += cur_b[s] + v
        else:
            cur_b[s] = w_blank
            total += w_blank
    return total


@njit(**NJIT)
def _beta_step_log(next_b, cur_b, log_probs, t_next, n, blank, labels, skip, length, m, work):
    """:func:`_beta_step` in log space for a frame whose rescaled sum underflowed.

    Returns ``(M, sum of cur_b)`` with ``cur_b`` holding ``b / exp(M)``.
    """
    width = 2 * length + 1
    top = _NEG_INF
    for s in range(width):
        b = next_b[s]
        lw = np.log(b) + (_log_emission(log_probs, t_next, n, blank, labels, s) - m) if b > 0.0 else _NEG_INF
        work[s] = lw
        if lw > top:
            top = lw
    if top == _NEG_INF:
        return top, 0.0
    for s in range(width):
        work[s] = np.exp(work[s] - top)
    total = 0.0
    for s in range(width):
        v = work[s]
        if s + 1 < width:
            v += work[s + 1]
        if s % 2 == 1 and s + 2 < width:
            v += skip[(s + 1) // 2] * work[s + 2]
        cur_b[s] = v
        total += v
    return top, total


@njit(**NJIT)
def _scale_row(row, width, factor):
    for s in range(width):
        row[s] *= factor


@njit(**NJIT)
def _alpha_pass(log_probs, n, frames, blank, labels, length, skip, alpha, log_scale, y_label):
    """Rescaled forward recursion (eqs. 6-7). Row ``t`` of ``alpha`` is normalised to sum 1,
    ``log_scale[t]`` is the log of what was divided out so far.

    ``alpha`` has ``frames`` rows when the gradient is wanted, else 2 (rolling rows);
    ``log_scale`` likewise. Returns ``log P`` (eq. 8), ``-inf`` when no path survives,
    NaN when a used log-prob is NaN.
    """
    width = 2 * length + 1
    rolling = alpha.shape[0] == 2
    m, y_blank = _emissions(log_probs, 0, n, blank, labels, length, y_label)
    if m == _NEG_INF:
        return _NEG_INF
    row = alpha[0]
    for s in range(width):
        row[s] = 0.0
    row[0] = y_blank
    total = y_blank
    if length > 0:
        row[1] = y_label[0]
        total += y_label[0]
    if not total > 0.0:
        return _NEG_INF if total == 0.0 else np.nan
    _scale_row(row, width, 1.0 / total)
    scale = m + np.log(total)
    log_scale[0] = scale
    for t in range(1, frames):
        prev = alpha[(t - 1) % 2] if rolling else alpha[t - 1]
        new = alpha[t % 2] if rolling else alpha[t]
        m, y_blank = _emissions(log_probs, t, n, blank, labels, length, y_label)
        if m == _NEG_INF:
            return _NEG_INF
        total = _alpha_step(prev, new, y_blank, y_label, skip, length)
        if total != total:
            return np.nan
        if total < _UNDERFLOW:
            top, total = _alpha_step_log(prev, new, log_probs, t, n, blank, labels, skip, length, m)
            if top == _NEG_INF:
                return _NEG_INF
            m += top
        _scale_row(new, width, 1.0 / total)
        scale += m + np.log(total)
        log_scale[t if not rolling else t % 2] = scale
    last = alpha[(frames - 1) % 2] if rolling else alpha[frames - 1]
    end = last[width - 1]
    if length > 0:
        end += last[width - 2]
    if not end > 0.0:
        return _NEG_INF
    return scale + np.log(end)


@njit(**NJIT)
def _beta_init(b, width, length):
    for s in range(width):
        b[s] = 0.0
    b[width - 1] = 1.0
    if length > 0:
        b[width - 2] = 1.0


@njit(**NJIT)
def _beta_advance(log_probs, n, t, blank, labels, length, skip, next_b, cur_b, y_label, work):
    """b[t] from b[t+1], normalised; returns the log of the factor divided out (``-inf``:
    nothing survives, NaN: a NaN log-prob)."""
    width = 2 * length + 1
    m, y_blank = _emissions(log_probs, t + 1, n, blank, labels, length, y_label)
    if m == _NEG_INF:
        return _NEG_INF
    total = _beta_step(next_b, cur_b, y_blank, y_label, skip, length)
    if total != total:
        return np.nan
    if total < _UNDERFLOW:
        top, total = _beta_step_log(next_b, cur_b, log_probs, t + 1, n, blank, labels, skip, length, m, work)
        if top == _NEG_INF:
            return _NEG_INF
        m += top
    _scale_row(cur_b, width, 1.0 / total)
    return m + np.log(total)


@njit(**NJIT)
def _backward_log_likelihood(log_probs, n, frames, blank, labels, length, skip, rows, y_label, work):
    """log P from the backward recursion alone (eqs. 10-11, 13); checks the forward one."""
    width = 2 * length + 1
    _beta_init(rows[(frames - 1) % 2], width, length)
    scale = 0.0
    for t in range(frames - 2, -1, -1):
        step = _beta_advance(log_probs, n, t, blank, labels, length, skip, rows[(t + 1) % 2], rows[t % 2], y_label, work)
        if not step > _NEG_INF:
            return step if step != step else _NEG_INF
        scale += step
    b0 = rows[0]
    m, y_blank = _emissions(log_probs, 0, n, blank, labels, length, y_label)
    start = y_blank * b0[0]
    if length > 0:
        start += y_label[0] * b0[1]
    if not start > 0.0:
        return _NEG_INF
    return scale + m + np.log(start)


@njit(**NJIT)
def _store_frame(mode, grad, post, slot, scale, log_probs, t, n, blank, labels, length, blank_post, label_post, torch_grad):
    """Write frame t's class posteriors (eq. 16) for item n.

    ``GRAD_DENSE``: ``grad[t, n, k] = scale * (-sum_{s: l'_s = k} gamma[t, s])`` (plus
    ``scale * y[t, k]`` for torch's convention) into a row of zeros. ``GRAD_COMPACT``:
    ``post[t, slot]`` = the blank's posterior, ``post[t, slot + 1 + k]`` = label k's.
    """
    if mode == GRAD_COMPACT:
        post[t, slot] = blank_post
        for k in range(length):
            post[t, slot + 1 + k] = label_post[k]
        return
    if torch_grad:
        for c in range(log_probs.shape[2]):
            grad[t, n, c] = scale * np.exp(np.float64(log_probs[t, n, c]))
    grad[t, n, blank] -= scale * blank_post
    for k in range(length):
        grad[t, n, labels[k]] -= scale * label_post[k]


@njit(**NJIT)
def _gradient_pass(log_probs, n, frames, blank, labels, length, skip, alpha, log_scale, log_p,
                   mode, grad, post, slot, scale, torch_grad, y_label, work, label_post):
    """Backward recursion with the posterior scatter; False when eq. 14 fails at a frame."""
    width = 2 * length + 1
    rows = np.empty((2, width))
    _beta_init(rows[(frames - 1) % 2], width, length)
    log_b_scale = 0.0
    for t in range(frames - 1, -1, -1):
        b_row = rows[t % 2]
        if t < frames - 1:
            step = _beta_advance(log_probs, n, t, blank, labels, length, skip, rows[(t + 1) % 2], b_row, y_label, work)
            if not step > _NEG_INF:
                return False
            log_b_scale += step
        a_row = alpha[t]
        blank_mass = 0.0
        for k in range(length + 1):
            blank_mass += a_row[2 * k] * b_row[2 * k]
        z = blank_mass
        for k in range(length):
            v = a_row[2 * k + 1] * b_row[2 * k + 1]
            label_post[k] = v
            z += v
        if not z > 0.0:
            return False
        if abs(np.log(z) + log_scale[t] + log_b_scale - log_p) > _LOG_P_TOLERANCE:  # eq. 14
            return False
        inv_z = 1.0 / z
        for k in range(length):
            label_post[k] *= inv_z
        _store_frame(mode, grad, post, slot, scale, log_probs, t, n, blank, labels, length, blank_mass * inv_z, label_post, torch_grad)
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
def _log_space_item(log_probs, n, frames, blank, labels, length, skip, mode, grad, post, slot, scale, torch_grad, label_post):
    """The plain log-space forward-backward (eqs. 6-16 with log-sum-exp), float64.

    Slower, never loses a path to underflow: used for items the rescaled pass rejects.
    Returns ``log P``.
    """
    width = 2 * length + 1
    log_alpha = np.full((frames, width), _NEG_INF)
    log_alpha[0, 0] = np.float64(log_probs[0, n, blank])
    if length > 0:
        log_alpha[0, 1] = np.float64(log_probs[0, n, labels[0]])
    for t in range(1, frames):
        for s in range(width):
            v = _logaddexp(log_alpha[t - 1, s], log_alpha[t - 1, s - 1] if s >= 1 else _NEG_INF)
            if s >= 3 and s % 2 == 1 and skip[(s - 1) // 2] > 0.0:
                v = _logaddexp(v, log_alpha[t - 1, s - 2])
            log_alpha[t, s] = v + _log_emission(log_probs, t, n, blank, labels, s)
    log_p = log_alpha[frames - 1, width - 1]
    if length > 0:
        log_p = _logaddexp(log_p, log_alpha[frames - 1, width - 2])
    if mode == GRAD_NONE or not (log_p > _NEG_INF and log_p < np.inf):
        return log_p
    next_b = np.full(width, _NEG_INF)
    cur_b = np.full(width, _NEG_INF)
    next_b[width - 1] = 0.0
    if length > 0:
        next_b[width - 2] = 0.0
    gamma = np.empty(width)
    for t in range(frames - 1, -1, -1):
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
        _store_frame(mode, grad, post, slot, scale, log_probs, t, n, blank, labels, length, blank_post, label_post, torch_grad)
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
def _loss_item(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, mode, torch_grad, scale, grad, post):
    """Negative log-likelihood of item ``n``, writing its gradient or posteriors per ``mode``.

    Returns ``(nll, status)``. Infeasible items give ``+inf`` and a zero gradient; a NaN
    among the used log-probs gives a NaN loss and NaN gradient rows.
    """
    frames = input_lengths[n]
    length = target_lengths[n]
    labels = targets[offsets[n]:offsets[n] + length]
    slot = offsets[n] + n
    if min_frames_needed(labels, length) > frames:
        return np.inf, STATUS_OK
    if frames == 0:
        return 0.0, STATUS_OK  # empty input, empty target: the empty path, P = 1
    width = 2 * length + 1
    skip = np.empty(max(length, 1))
    _skip_weights(labels, length, skip)
    y_label = np.empty(max(length, 1))
    label_post = np.empty(max(length, 1))
    work = np.empty(width)
    rows = frames if mode != GRAD_NONE else 2
    alpha = np.empty((rows, width))
    log_scale = np.empty(rows)
    log_p = _alpha_pass(log_probs, n, frames, blank, labels, length, skip, alpha, log_scale, y_label)
    if log_p != log_p:
        if mode != GRAD_NONE:
            _fill_item(mode, grad, post, n, slot, frames, length, np.nan)
        return np.nan, STATUS_OK
    ok = False
    if log_p > _NEG_INF:
        if mode != GRAD_NONE:
            ok = _gradient_pass(log_probs, n, frames, blank, labels, length, skip, alpha, log_scale, log_p,
                                mode, grad, post, slot, scale, torch_grad, y_label, work, label_post)
        else:
            check = _backward_log_likelihood(log_probs, n, frames, blank, labels, length, skip, alpha, y_label, work)
            ok = abs(check - log_p) <= _LOG_P_TOLERANCE
    # else: the rescaled pass found no surviving path; confirm in log space before calling
    # the target infeasible (underflow must never fake an infinite loss).
    if ok:
        return -log_p, STATUS_OK
    if mode == GRAD_DENSE:
        _fill_item(mode, grad, post, n, slot, frames, length, 0.0)
    log_p = _log_space_item(log_probs, n, frames, blank, labels, length, skip, mode, grad, post, slot, scale, torch_grad, label_post)
    if not log_p > _NEG_INF and mode != GRAD_NONE:
        _fill_item(mode, grad, post, n, slot, frames, length, 0.0)
    return -log_p, STATUS_RECOMPUTED


@njit(**PARALLEL)
def ctc_loss_batch(log_probs, targets, offsets, input_lengths, target_lengths, blank, mode, torch_grad, scale, nll, grad, post, status):
    """Fill ``nll[n]``, ``status[n]`` and item n's gradient output for every item, in parallel.

    Inputs must be validated: ``log_probs`` (T, N, C) float, ``targets`` 1-D int64 with
    item ``n``'s labels at ``offsets[n] : offsets[n] + target_lengths[n]``, lengths int64.
    ``mode``: ``GRAD_NONE``; ``GRAD_DENSE``, the gradient times ``scale[n]`` into ``grad``
    (T, N, C) zeros; ``GRAD_COMPACT``, posteriors into ``post`` (T, len(targets) + N) zeros,
    item n's slots starting at ``offsets[n] + n`` (see :func:`scatter_posteriors`).
    Each item writes only its own slices, so the result does not depend on scheduling.
    """
    for n in prange(nll.shape[0]):
        nll[n], status[n] = _loss_item(log_probs, targets, offsets, input_lengths, target_lengths, n, blank,
                                       mode, torch_grad, scale[n], grad, post)


@njit(**PARALLEL)
def scatter_posteriors(post, targets, offsets, input_lengths, target_lengths, blank, scale, grad):
    """Dense gradient from compact posteriors: ``grad[t, n, k] = -scale[n] * posterior``.

    ``grad`` is (T, N, C) zeros; the layout of ``post`` is :func:`ctc_loss_batch`'s.
    """
    for n in prange(grad.shape[1]):
        length = target_lengths[n]
        labels = targets[offsets[n]:offsets[n] + length]
        slot = offsets[n] + n
        factor = scale[n]
        for t in range(input_lengths[n]):
            grad[t, n, blank] = -factor * post[t, slot]
            for k in range(length):
                grad[t, n, labels[k]] -= factor * post[t, slot + 1 + k]

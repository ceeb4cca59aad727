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

from .config import NJIT, PARALLEL, REDUCE

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
def _log_emission(log_probs, t, n, blank, labels, s):
    """log y[t, l'_s] for state s of the interleaved extended target."""
    if s % 2 == 0:
        return np.float64(log_probs[t, n, blank])
    return np.float64(log_probs[t, n, labels[(s - 1) // 2]])


# ---------------------------------------------------------------------------------------
# Rescaled probability space. A row of L' states is kept *split*: ``row[:L+1]`` holds the
# blank states s = 2k, ``row[L+1:]`` the label states s = 2k + 1, so that every
# recursion below is a unit-stride loop that vectorises.
# ---------------------------------------------------------------------------------------


@njit(**REDUCE)
def _sum(row):
    total = 0.0
    for v in row:
        total += v
    return total


@njit(**REDUCE)
def _dot(a, b):
    total = 0.0
    for i in range(a.shape[0]):
        total += a[i] * b[i]
    return total


@njit(**REDUCE)
def _count_below(row, lo, hi, threshold):
    count = 0
    for i in range(lo, hi):
        count += row[i] < threshold
    return count


@njit(**NJIT)
def _scale(row, factor):
    for i in range(row.shape[0]):
        row[i] *= factor


@njit(**NJIT)
def _emissions(log_probs, t, n, blank, labels, y_label, exp_row):
    """Frame ``t``'s emissions of the blank and of each label, shifted by their max ``m``.

    Writes ``y_label[k] = exp(log y[t, l_k] - m)``; returns ``(m, exp(log y[t, blank] - m))``.
    With fewer classes than labels, the class row is exponentiated once (``exp_row``) and
    gathered: ``min(C, L + 1)`` exps per frame. ``m`` is ``-inf`` when every needed class
    is masked, NaN when one is NaN.
    """
    length = y_label.shape[0]
    log_blank = np.float64(log_probs[t, n, blank])
    m = log_blank
    for k in range(length):
        v = np.float64(log_probs[t, n, labels[k]])
        if v > m:
            m = v
    if m == _NEG_INF:
        return m, 0.0
    classes = exp_row.shape[0]
    if classes < length + 1:
        for c in range(classes):
            exp_row[c] = np.exp(np.float64(log_probs[t, n, c]) - m)  # may be inf for unused c
        for k in range(length):
            y_label[k] = exp_row[labels[k]]
        return m, exp_row[blank]
    for k in range(length):
        y_label[k] = np.exp(np.float64(log_probs[t, n, labels[k]]) - m)
    return m, np.exp(log_blank - m)


@njit(**NJIT)
def _alpha_step(prev, new, y_blank, y_label, skip):
    """Eq. 6: alpha[t, s] = (alpha[t-1, s] + alpha[t-1, s-1] [+ alpha[t-1, s-2]]) y[t, l'_s].

    Split rows; the third term only for a label state whose label differs from the
    previous one (eq. 7). Returns the sum of ``new``.
    """
    length = y_label.shape[0]
    prev_b, prev_l = prev[:length + 1], prev[length + 1:]
    new_b, new_l = new[:length + 1], new[length + 1:]
    new_b[0] = prev_b[0] * y_blank
    for k in range(1, length + 1):
        new_b[k] = (prev_b[k] + prev_l[k - 1]) * y_blank
    if length > 0:
        new_l[0] = (prev_l[0] + prev_b[0]) * y_label[0]
    for k in range(1, length):
        new_l[k] = (prev_l[k] + prev_b[k] + skip[k] * prev_l[k - 1]) * y_label[k]
    return _sum(new)


@njit(**NJIT)
def _alpha_step_log(prev, new, log_probs, t, n, blank, labels, skip, m):
    """Eq. 6 in log space, for a frame whose rescaled sum underflowed.

    ``prev`` is a normalised probability row; ``new`` receives ``exp(log alpha - M)``.
    Returns ``(M, sum of new)``; ``M`` is ``-inf`` when no state is reachable.
    """
    length = labels.shape[0]
    prev_b, prev_l = prev[:length + 1], prev[length + 1:]
    log_blank = np.float64(log_probs[t, n, blank]) - m
    for k in range(length + 1):
        v = prev_b[k] + (prev_l[k - 1] if k > 0 else 0.0)
        new[k] = np.log(v) + log_blank if v > 0.0 else _NEG_INF
    for k in range(length):
        v = prev_l[k] + prev_b[k] + (skip[k] * prev_l[k - 1] if k > 0 else 0.0)
        new[length + 1 + k] = np.log(v) + (np.float64(log_probs[t, n, labels[k]]) - m) if v > 0.0 else _NEG_INF
    top = new.max()
    if top == _NEG_INF:
        return top, 0.0
    for i in range(new.shape[0]):
        new[i] = np.exp(new[i] - top)
    return top, _sum(new)


@njit(**NJIT)
def _beta_step(next_b, cur, y_blank, y_label, skip):
    """Eqs. 10-11 without frame t's own emission, on split rows:

    b[t, s] = w(s) + w(s+1) [+ w(s+2)],  w(s') = y[t+1, l'_s'] b[t+1, s'].

    ``y_*`` are frame t+1's emissions. Returns the sum of ``cur``.
    """
    length = y_label.shape[0]
    nb, nl = next_b[:length + 1], next_b[length + 1:]
    cb, cl = cur[:length + 1], cur[length + 1:]
    for k in range(length):
        cb[k] = y_blank * nb[k] + y_label[k] * nl[k]
    cb[length] = y_blank * nb[length]
    for k in range(length - 1):
        cl[k] = y_label[k] * nl[k] + y_blank * nb[k + 1] + skip[k + 1] * y_label[k + 1] * nl[k + 1]
    if length > 0:
        cl[length - 1] = y_label[length - 1] * nl[length - 1] + y_blank * nb[length]
    return _sum(cur)


@njit(**NJIT)
def _beta_step_log(next_b, cur, log_probs, t_next, n, blank, labels, skip, m, work):
    """:func:`_beta_step` in log space for a frame whose rescaled sum underflowed.

    Returns ``(M, sum of cur)`` with ``cur`` holding ``b / exp(M)``.
    """
    length = labels.shape[0]
    log_blank = np.float64(log_probs[t_next, n, blank]) - m
    for i in range(length + 1):
        work[i] = np.log(next_b[i]) + log_blank if next_b[i] > 0.0 else _NEG_INF
    for k in range(length):
        b = next_b[length + 1 + k]
        work[length + 1 + k] = np.log(b) + (np.float64(log_probs[t_next, n, labels[k]]) - m) if b > 0.0 else _NEG_INF
    top = work.max()
    if top == _NEG_INF:
        return top, 0.0
    for i in range(work.shape[0]):
        work[i] = np.exp(work[i] - top)
    # work now holds w(s) / exp(M) in split layout; combine as in _beta_step with y = 1.
    wb, wl = work[:length + 1], work[length + 1:]
    cb, cl = cur[:length + 1], cur[length + 1:]
    for k in range(length):
        cb[k] = wb[k] + wl[k]
    cb[length] = wb[length]
    for k in range(length - 1):
        cl[k] = wl[k] + wb[k + 1] + skip[k + 1] * wl[k + 1]
    if length > 0:
        cl[length - 1] = wl[length - 1] + wb[length]
    return top, _sum(cur)


_TINY = 1e-300
"""A state of a normalised row below this may have lost precision to underflow."""


@njit(**NJIT)
def _states_at_risk(row, length, t, frames):
    """How many states that can still reach the end at frame ``frames - 1`` hold less than
    ``_TINY``: zero means no relevant path lost precision at frame ``t`` (checked from
    states s in [L' - 2 - 2 (frames - 1 - t), 2t + 1])."""
    width = 2 * length + 1
    lo = max(0, width - 2 - 2 * (frames - 1 - t))
    hi = min(width - 1, 2 * t + 1)
    if lo > hi:
        return 0
    # blank states s = 2k with lo <= s <= hi; label states s = 2k + 1 likewise
    at_risk = _count_below(row, (lo + 1) // 2, hi // 2 + 1, _TINY)
    return at_risk + _count_below(row, length + 1 + lo // 2, length + 1 + (hi - 1) // 2 + 1, _TINY)


@njit(**NJIT)
def _alpha_first_row(row, log_probs, n, blank, labels):
    """Eq. 7's initial row, shifted by its own max. Returns ``(shift, sum of row)``."""
    length = labels.shape[0]
    log_blank = np.float64(log_probs[0, n, blank])
    log_label = np.float64(log_probs[0, n, labels[0]]) if length > 0 else _NEG_INF
    top = max(log_blank, log_label)
    row[:] = 0.0
    if top == _NEG_INF or top != top:
        return top, 0.0
    row[0] = np.exp(log_blank - top)
    if length > 0:
        row[length + 1] = np.exp(log_label - top)
    return top, _sum(row)


@njit(**NJIT)
def _alpha_pass(log_probs, n, frames, blank, labels, skip, alpha, log_scale, emit_blank, emit_label, emit_shift, exp_row, y_label):
    """Rescaled forward recursion (eqs. 6-7), every row kept: row ``t`` of ``alpha`` sums to
    one, ``log_scale[t]`` is the log of what was divided out up to ``t``. Frame t's
    emissions are kept in ``emit_*`` for the backward pass.

    Returns ``log P`` (eq. 8): ``-inf`` when no path survives, NaN for a NaN log-prob.
    """
    length = labels.shape[0]
    width = 2 * length + 1
    scale = 0.0
    for t in range(frames):
        m, y_blank = _emissions(log_probs, t, n, blank, labels, emit_label[t], exp_row)
        emit_blank[t], emit_shift[t] = y_blank, m
        if m == _NEG_INF:
            return _NEG_INF
        if t == 0:
            m, total = _alpha_first_row(alpha[0], log_probs, n, blank, labels)
            if m != m:
                return np.nan
            if m == _NEG_INF:
                return _NEG_INF
        else:
            total = _alpha_step(alpha[t - 1], alpha[t], y_blank, emit_label[t], skip)
        if total != total:
            return np.nan
        if total < _UNDERFLOW:
            top, total = _alpha_step_log(alpha[t - 1], alpha[t], log_probs, t, n, blank, labels, skip, m)
            if top == _NEG_INF:
                return _NEG_INF
            m += top
        _scale(alpha[t], 1.0 / total)
        scale += m + np.log(total)
        log_scale[t] = scale
    last = alpha[frames - 1]
    end = last[length] + (last[width - 1] if length > 0 else 0.0)
    if not end > 0.0:
        return _NEG_INF
    return scale + np.log(end)


@njit(**NJIT)
def _alpha_pass_rolling(log_probs, n, frames, blank, labels, skip, rows, exp_row, y_label):
    """:func:`_alpha_pass` with two rolling rows and emissions computed on the fly, for the
    loss alone. Returns ``(log P, at_risk)``: ``at_risk`` is False when no state that can
    still reach the end ever fell below ``_TINY`` (then no relevant path was lost)."""
    length = labels.shape[0]
    width = 2 * length + 1
    scale = 0.0
    at_risk = False
    for t in range(frames):
        m, y_blank = _emissions(log_probs, t, n, blank, labels, y_label, exp_row)
        if m == _NEG_INF:
            return _NEG_INF, True
        row = rows[t % 2]
        if t == 0:
            m, total = _alpha_first_row(row, log_probs, n, blank, labels)
            if m != m:
                return np.nan, False
            if m == _NEG_INF:
                return _NEG_INF, True
        else:
            total = _alpha_step(rows[(t - 1) % 2], row, y_blank, y_label, skip)
        if total != total:
            return np.nan, False
        if total < _UNDERFLOW:
            top, total = _alpha_step_log(rows[(t - 1) % 2], row, log_probs, t, n, blank, labels, skip, m)
            if top == _NEG_INF:
                return _NEG_INF, True
            m += top
            at_risk = True
        _scale(row, 1.0 / total)
        scale += m + np.log(total)
        if not at_risk and _states_at_risk(row, length, t, frames) > 0:
            at_risk = True
    last = rows[(frames - 1) % 2]
    end = last[length] + (last[width - 1] if length > 0 else 0.0)
    if not end > 0.0:
        return _NEG_INF, True
    return scale + np.log(end), at_risk


@njit(**NJIT)
def _beta_init(row, length):
    row[:] = 0.0
    row[length] = 1.0  # blank state s = L' - 1
    if length > 0:
        row[2 * length] = 1.0  # label state s = L' - 2


@njit(**NJIT)
def _beta_advance(log_probs, n, t, blank, labels, skip, next_b, cur, y_blank, y_label, m, work):
    """b[t] from b[t+1] and frame t+1's emissions, normalised; returns the log of the factor
    divided out (``-inf``: nothing survives, NaN: a NaN log-prob)."""
    if m == _NEG_INF:
        return _NEG_INF
    total = _beta_step(next_b, cur, y_blank, y_label, skip)
    if total != total:
        return np.nan
    if total < _UNDERFLOW:
        top, total = _beta_step_log(next_b, cur, log_probs, t + 1, n, blank, labels, skip, m, work)
        if top == _NEG_INF:
            return _NEG_INF
        m += top
    _scale(cur, 1.0 / total)
    return m + np.log(total)


@njit(**NJIT)
def _backward_log_likelihood(log_probs, n, frames, blank, labels, skip, rows, exp_row, y_label, work):
    """log P from the backward recursion alone (eqs. 10-11, 13), to check the forward one."""
    length = labels.shape[0]
    _beta_init(rows[(frames - 1) % 2], length)
    scale = 0.0
    for t in range(frames - 2, -1, -1):
        m, y_blank = _emissions(log_probs, t + 1, n, blank, labels, y_label, exp_row)
        step = _beta_advance(log_probs, n, t, blank, labels, skip, rows[(t + 1) % 2], rows[t % 2], y_blank, y_label, m, work)
        if not step > _NEG_INF:
            return step if step != step else _NEG_INF
        scale += step
    b0 = rows[0]
    m, y_blank = _emissions(log_probs, 0, n, blank, labels, y_label, exp_row)
    start = y_blank * b0[0] + (y_label[0] * b0[length + 1] if length > 0 else 0.0)
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
def _gradient_pass(log_probs, n, frames, blank, labels, skip, alpha, log_scale, log_p, emit_blank, emit_label, emit_shift,
                   mode, grad, post, slot, scale, torch_grad, work, label_post):
    """Backward recursion with the posterior scatter; False when eq. 14 fails at a frame."""
    length = labels.shape[0]
    rows = np.empty((2, 2 * length + 1))
    _beta_init(rows[(frames - 1) % 2], length)
    log_b_scale = 0.0
    for t in range(frames - 1, -1, -1):
        b_row = rows[t % 2]
        if t < frames - 1:
            step = _beta_advance(log_probs, n, t, blank, labels, skip, rows[(t + 1) % 2], b_row,
                                 emit_blank[t + 1], emit_label[t + 1], emit_shift[t + 1], work)
            if not step > _NEG_INF:
                return False
            log_b_scale += step
        a_row = alpha[t]
        blank_mass = _dot(a_row[:length + 1], b_row[:length + 1])
        a_label, b_label = a_row[length + 1:], b_row[length + 1:]
        for k in range(length):
            label_post[k] = a_label[k] * b_label[k]
        z = blank_mass + _sum(label_post)
        if not z > 0.0:
            return False
        if abs(np.log(z) + log_scale[t] + log_b_scale - log_p) > _LOG_P_TOLERANCE:  # eq. 14
            return False
        inv_z = 1.0 / z
        _scale(label_post, inv_z)
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
    skip = np.empty(length)
    _skip_weights(labels, length, skip)
    y_label = np.empty(length)
    label_post = np.empty(length)
    work = np.empty(width)
    exp_row = np.empty(log_probs.shape[2])
    ok = False
    if mode == GRAD_NONE:
        rows = np.empty((2, width))
        log_p, at_risk = _alpha_pass_rolling(log_probs, n, frames, blank, labels, skip, rows, exp_row, y_label)
        if log_p != log_p:
            return np.nan, STATUS_OK
        if log_p > _NEG_INF:
            if not at_risk:
                return -log_p, STATUS_OK
            check = _backward_log_likelihood(log_probs, n, frames, blank, labels, skip, rows, exp_row, y_label, work)
            ok = abs(check - log_p) <= _LOG_P_TOLERANCE
    else:
        alpha = np.empty((frames, width))
        log_scale = np.empty(frames)
        emit_blank = np.empty(frames)
        emit_shift = np.empty(frames)
        emit_label = np.empty((frames, length))
        log_p = _alpha_pass(log_probs, n, frames, blank, labels, skip, alpha, log_scale, emit_blank, emit_label, emit_shift, exp_row, y_label)
        if log_p != log_p:
            _fill_item(mode, grad, post, n, slot, frames, length, np.nan)
            return np.nan, STATUS_OK
        if log_p > _NEG_INF:
            ok = _gradient_pass(log_probs, n, frames, blank, labels, skip, alpha, log_scale, log_p, emit_blank, emit_label, emit_shift,
                                mode, grad, post, slot, scale, torch_grad, work, label_post)
    # A -inf from the rescaled pass (no surviving path) is confirmed in log space too:
    # underflow must never fake an infinite loss.
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

r"""The plain log-space passes: the last resort for an item the others reject.

Eqs. 6-11 with log-sum-exp over float64 log-probabilities, and the posteriors of eq. 14
from them: slow (a log and an exp per cell), allocating ``T x (2L + 1)`` float64 for the
forward rows, but never underflowing. An item reaches them only when the block-scaled
passes of :mod:`.block_passes` fail a check (the third round of :mod:`.batch`).
"""

import numpy as np

from ..config import NJIT
from ..disk_cache import njit
from ..intrinsics import is_set
from .posteriors import _store_frame
from .trellis import _log_emission, _logaddexp, _NEG_INF, CANCEL_FRAMES


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

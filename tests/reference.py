"""Obviously correct float64 oracles for the tests: the paper's recursions in log space,
and brute-force enumeration of every path for tiny T and C."""

import itertools

import numpy as np


def extend(labels, blank):
    """l' of Graves 2006: blanks around and between the labels."""
    out = [blank]
    for label in labels:
        out += [int(label), blank]
    return out


def _logsumexp(values):
    values = np.asarray(values, dtype=np.float64)
    top = values.max(initial=-np.inf)
    if top == -np.inf:
        return -np.inf
    return top + np.log(np.exp(values - top).sum())


def _shift(row, by):
    """row moved right by ``by`` states (left when negative), -inf shifted in."""
    out = np.full(len(row), -np.inf)
    if by > 0:
        out[by:] = row[:-by]
    else:
        out[:by] = row[-by:]
    return out


def log_alpha_beta(log_probs, labels, blank):
    """log alpha and log beta (T, L'), both including frame t's emission (eqs. 6-11)."""
    lp = np.asarray(log_probs, dtype=np.float64)
    ext = extend(labels, blank)
    frames, width = lp.shape[0], len(ext)
    emit = lp[:, ext]  # (T, L')
    can_skip = np.array([s >= 2 and ext[s] != blank and ext[s] != ext[s - 2] for s in range(width)])
    alpha = np.full((frames, width), -np.inf)
    alpha[0, 0] = emit[0, 0]
    if width > 1:
        alpha[0, 1] = emit[0, 1]
    for t in range(1, frames):
        prev = alpha[t - 1]
        shifted1, shifted2 = _shift(prev, 1), np.where(can_skip, _shift(prev, 2), -np.inf)
        alpha[t] = np.logaddexp(np.logaddexp(prev, shifted1), shifted2) + emit[t]
    beta = np.full((frames, width), -np.inf)
    beta[-1, -1] = emit[-1, -1]
    if width > 1:
        beta[-1, -2] = emit[-1, -2]
    skip_from = _shift(can_skip.astype(float), -2) > 0  # s -> s+2 allowed
    for t in range(frames - 2, -1, -1):
        nxt = beta[t + 1]
        shifted1, shifted2 = _shift(nxt, -1), np.where(skip_from, _shift(nxt, -2), -np.inf)
        beta[t] = np.logaddexp(np.logaddexp(nxt, shifted1), shifted2) + emit[t]
    return alpha, beta, ext


def ctc_nll(log_probs, labels, blank=0):
    """-log p(labels | x) for one unbatched (T, C) item, float64."""
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.shape[0] == 0:
        return 0.0 if len(labels) == 0 else np.inf
    alpha, _, ext = log_alpha_beta(lp, labels, blank)
    return -_logsumexp(alpha[-1, -2:] if len(ext) > 1 else alpha[-1, -1:])


def ctc_grad(log_probs, labels, blank=0):
    """Exact d(-log p) / d(log_probs) for one (T, C) item: minus the class posteriors (eq. 16)."""
    lp = np.asarray(log_probs, dtype=np.float64)
    grad = np.zeros_like(lp)
    nll = ctc_nll(lp, labels, blank)
    if not np.isfinite(nll):
        return grad
    alpha, beta, ext = log_alpha_beta(lp, labels, blank)
    emit = lp[:, ext]
    with np.errstate(invalid="ignore"):
        log_gamma = alpha + beta - emit + nll  # eq. 14 divided by P
    gamma = np.where(np.isfinite(log_gamma), np.exp(log_gamma), 0.0)
    for s, cls in enumerate(ext):
        grad[:, cls] -= gamma[:, s]
    return grad


def collapse(path, blank):
    """B of Graves 2006: merge repeats, then drop blanks."""
    out = []
    previous = None
    for label in path:
        if label != previous and label != blank:
            out.append(int(label))
        previous = label
    return out


def brute_force_nll(log_probs, labels, blank=0):
    """-log of the sum over all C^T paths that collapse to ``labels`` (tiny T, C only)."""
    lp = np.asarray(log_probs, dtype=np.float64)
    frames, classes = lp.shape
    scores = [
        lp[np.arange(frames), list(path)].sum()
        for path in itertools.product(range(classes), repeat=frames)
        if collapse(path, blank) == list(labels)
    ]
    return -_logsumexp(scores) if scores else np.inf


def batch_nll(log_probs, targets_per_item, input_lengths, blank=0):
    """Reference losses for a (T, N, C) batch with a list of label lists."""
    lp = np.asarray(log_probs, dtype=np.float64)
    return np.array([
        ctc_nll(lp[: input_lengths[n], n], targets_per_item[n], blank) for n in range(lp.shape[1])
    ])


def batch_grad(log_probs, targets_per_item, input_lengths, blank=0):
    """Reference gradient of the summed losses for a (T, N, C) batch."""
    lp = np.asarray(log_probs, dtype=np.float64)
    grad = np.zeros_like(lp)
    for n in range(lp.shape[1]):
        frames = input_lengths[n]
        if frames:
            grad[:frames, n] = ctc_grad(lp[:frames, n], targets_per_item[n], blank)
    return grad

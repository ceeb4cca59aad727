r"""What a pass writes besides the loss: the gradient or the compact posteriors.

The exact gradient of ``-log P`` w.r.t. ``log y[t, k]`` is minus the posterior occupation
of class ``k`` at frame ``t`` (eq. 16 before the softmax is folded in):
``-sum_{s: l'_s = k} gamma[t, s]``, nonzero only at the blank and the target's labels.
With ``torch_grad``, ``y[t, k]`` minus that (PyTorch's convention: the gradient w.r.t. the
logits of a softmax). :func:`_store_frame` writes one frame of it, either dense into
``grad`` (T, N, C) or compact into ``post`` (one value per frame, item and extended-label
class: the blank, then each label), which :func:`scatter_posteriors` later spreads into a
dense gradient. The block-scaled, one-scale and log-space passes all end here.
"""

import numpy as np

from .. import pool
from ..config import INLINE, LINKED, NJIT
from ..disk_cache import njit
from ..intrinsics import is_set, unmanaged
from .trellis import _U1, GRAD_COMPACT


@njit(**LINKED)
def _label_posteriors(out, a, b, k0, kl, off, factor):
    """out[k] = a[off + k] b[off + k] factor for labels k in [k0, kl)."""
    uoff = np.uint64(off)
    for k in range(np.uint64(k0), np.uint64(kl)):
        out[k] = a[uoff + k] * b[uoff + k] * factor


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
    pool.run_kernel(_scatter_frames, np.arange(frames), arguments, np.full(frames, SCATTER_NS * batch * classes))


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

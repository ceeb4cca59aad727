"""ctckit's numeric core: Numba kernels over NumPy arrays, knowing nothing of any framework.

Frontends validate with :mod:`ctckit._inputs` first; the functions here assume
validated, kernel-ready arguments.
"""

from __future__ import annotations

import numpy as np

from .. import _compile_notice  # noqa: F401  (a notice on stderr while a kernel compiles)
from . import buffers, logits_step
from .indices import Batch
from .logits import FORMAT_BFLOAT16, FORMAT_FLOAT, FORMAT_FLOAT16, compact_columns, gather_log_probs, logit_gradient
from .loss import GRAD_COMPACT, GRAD_DENSE, GRAD_NONE, ctc_loss_batch, scatter_posteriors

KERNEL_DTYPES = (np.float32, np.float64)
"""The float types the kernels compute in."""

_MODES = {"none": GRAD_NONE, "dense": GRAD_DENSE, "compact": GRAD_COMPACT}


def compact_is_smaller(num_targets: int, batch: int, classes: int) -> bool:
    """Whether posteriors (T, len(targets) + N) take less room than a dense (T, N, C) gradient."""
    return num_targets + batch < batch * classes


def compact_shape(frames: int, num_targets: int, batch: int) -> tuple[int, int]:
    return frames, num_targets + batch


def negative_log_likelihood(log_probs: np.ndarray, batch: Batch, blank: int, *, grad: str = "none",
                            torch_grad: bool = False, scale: np.ndarray | None = None):
    """Per-item CTC loss ``-log p(l_n | x_n)`` and what the gradient needs.

    Returns ``(nll, out)``: ``nll`` float64 (N,), ``+inf`` for infeasible items. ``out`` by
    ``grad``: ``"none"``: ``None``; ``"dense"``: the gradient of ``sum_n scale[n] * nll[n]``
    w.r.t. ``log_probs`` (same shape and dtype; ``scale`` defaults to ones); ``"compact"``:
    the posteriors, (T, len(targets) + N) in the dtype of ``log_probs``, for
    :func:`scatter_gradient`. ``log_probs`` is (T, N, C) float32 or float64, any strides.
    """
    if log_probs.dtype not in KERNEL_DTYPES:
        raise TypeError(f"the core computes in float32 or float64, got {log_probs.dtype}")
    frames, size, classes = log_probs.shape
    mode = _MODES[grad]
    nll = np.empty(size, dtype=np.float64)
    status = np.empty(size, dtype=np.int8)
    if scale is None:  # the loss alone reads no scale
        scale = np.ones(size if mode != GRAD_NONE else 0)
    else:
        scale = np.ascontiguousarray(scale, dtype=np.float64)
    # Uninitialised: the kernel zeroes each item's part in parallel (see ctc_loss_batch).
    dense = buffers.empty(log_probs.shape if mode == GRAD_DENSE else (1, 1, 1), log_probs.dtype)
    post_shape = compact_shape(frames, batch.targets.shape[0], size) if mode == GRAD_COMPACT else (1, 1)
    post = np.empty(post_shape, dtype=log_probs.dtype)
    ctc_loss_batch(log_probs, batch.targets, batch.offsets, batch.input_lengths, batch.target_lengths,
                   blank, mode, torch_grad, scale, nll, dense, post, status)
    out = {GRAD_NONE: None, GRAD_DENSE: dense, GRAD_COMPACT: post}[mode]
    return nll, out


def scatter_gradient(post: np.ndarray, batch: Batch, blank: int, scale: np.ndarray, classes: int) -> np.ndarray:
    """The dense gradient of ``sum_n scale[n] * nll[n]`` from compact posteriors."""
    frames = post.shape[0]
    grad = buffers.empty((frames, scale.shape[0], classes), post.dtype)  # zeroed row by row by the kernel
    scatter_posteriors(post, batch.targets, batch.offsets, batch.input_lengths, batch.target_lengths,
                       blank, np.ascontiguousarray(scale, dtype=np.float64), grad)
    return grad


def gradient_dtype(logits_dtype, fmt: int) -> np.dtype:
    """The dtype the logit gradient is computed in: float64 for float64 logits, else float32."""
    return np.dtype(np.float64 if fmt == FORMAT_FLOAT and logits_dtype == np.float64 else np.float32)


def _never_negative(nll: np.ndarray) -> np.ndarray:
    """``nll`` with values below 0 set to 0, in place (NaN and inf stay): on logits
    ``-log P`` cannot be negative (the log-softmax makes ``P <= 1``), but for a target
    that is certain (``P = 1 - 1e-16``) float64 rounding of the log-sum-exps and the
    recursion, and float32 rounding of an exp, leave up to a few ``1e-8`` either side of 0."""
    return np.maximum(nll, 0.0, out=nll)


def negative_log_likelihood_from_logits(logits: np.ndarray, fmt: int, batch: Batch, blank: int, want_grad: bool,
                                        width: int | None = None):
    """:func:`negative_log_likelihood` of ``log_softmax(logits)`` (classes last), without
    making it (see :mod:`.logits`): ``(nll, saved)``, ``saved`` what
    :func:`gradient_from_logits` needs, ``(lse, posteriors, class_of_column)``: float64
    (T, N), (T, N, K) in :func:`gradient_dtype` (minus the posteriors of each item's
    distinct classes), int64 (N, K); ``None`` without ``want_grad``. ``width``: K, at least
    the most distinct classes (blank included) of an item (default: exactly that).
    ``logits``: float32, float64, or the uint16 bits of float16/bfloat16 (``fmt``), any
    strides."""
    if want_grad:  # one item at a time when every item is for the first round (see .logits_step)
        stepped = logits_step.loss_and_gradient(logits, fmt, batch, blank, width, None, gradient_dtype(logits.dtype, fmt),
                                                False)
        if stepped is not None:
            return _never_negative(stepped[0]), stepped[1]
    else:
        stepped = logits_step.loss_only(logits, fmt, batch, blank, width)
        if stepped is not None:
            return _never_negative(stepped[0]), None
    columns, class_of_column = compact_columns(batch.targets, batch.offsets, batch.target_lengths, logits.shape[2], blank,
                                               -1 if width is None else width)
    lse, compact = gather_log_probs(logits, fmt, batch.input_lengths, class_of_column)
    by_column = Batch(columns, batch.offsets, batch.input_lengths, batch.target_lengths)
    nll, posteriors = negative_log_likelihood(compact, by_column, 0, grad="dense" if want_grad else "none")
    nll = _never_negative(nll)
    if not want_grad:
        return nll, None
    return nll, (lse, posteriors.astype(gradient_dtype(logits.dtype, fmt), copy=False), class_of_column)


def gradient_from_logits(logits: np.ndarray, fmt: int, saved, input_lengths: np.ndarray, nll: np.ndarray,
                         scale: np.ndarray, time_major: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """The gradient of ``sum_n scale[n] * nll[n]`` w.r.t. the logits (same shape, in
    :func:`gradient_dtype`): the exact derivative, zero for an infeasible item (``nll``
    infinite, as the loss on log-probs gives) and NaN on the frames of an item whose loss
    is NaN. Laid out as the logits when they are batch-first (see
    :func:`.logits.frame_rows`), unless ``time_major`` asks for a C-contiguous one; written
    into ``out`` when given (that C-contiguous array: (N, T, C) for batch-first logits
    without ``time_major``, else (T, N, C))."""
    lse, posteriors, class_of_column = saved
    scale = np.where(np.isinf(nll), 0.0, np.where(np.isnan(nll), np.nan, np.asarray(scale, dtype=np.float64)))
    return logit_gradient(logits, fmt, lse, posteriors, class_of_column, input_lengths, scale, posteriors.dtype, time_major,
                          out)


def loss_and_gradient_from_logits(logits: np.ndarray, fmt: int, batch: Batch, blank: int, scale: np.ndarray,
                                  width: int | None = None, time_major: bool = False, out: np.ndarray | None = None):
    """``(nll, saved, grad)``: :func:`negative_log_likelihood_from_logits` and
    :func:`gradient_from_logits` (of ``sum_n scale[n] * nll[n]``) in one call, one item
    at a time where every item is for the first round (:mod:`.logits_step`: two hand-overs
    to the threads fewer; the same bits), else as the two calls."""
    stepped = logits_step.loss_and_gradient(logits, fmt, batch, blank, width, scale, gradient_dtype(logits.dtype, fmt),
                                            True, time_major, out)
    if stepped is not None:
        return _never_negative(stepped[0]), stepped[1], stepped[2]
    nll, saved = negative_log_likelihood_from_logits(logits, fmt, batch, blank, True, width)
    return nll, saved, gradient_from_logits(logits, fmt, saved, batch.input_lengths, nll, scale, time_major, out)

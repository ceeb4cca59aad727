"""ctckit's numeric core: Numba kernels over NumPy arrays, knowing nothing of any framework.

Frontends validate with :mod:`ctckit._inputs` first; the functions here assume
validated, kernel-ready arguments.
"""

from __future__ import annotations

import numpy as np

from .._inputs import Batch
from .loss import ctc_loss_batch

KERNEL_DTYPES = (np.float32, np.float64)


def negative_log_likelihood(log_probs: np.ndarray, batch: Batch, blank: int, *, want_grad: bool, torch_grad: bool = False):
    """Per-item CTC loss ``-log p(l_n | x_n)`` (float64, shape (N,)) and, when ``want_grad``,
    the gradient of each item's loss w.r.t. ``log_probs`` (same shape and dtype, rows at
    ``t >= input_lengths[n]`` zero); otherwise ``None``.

    ``log_probs`` is (T, N, C) float32 or float64, any strides. Infeasible items have a
    loss of ``+inf`` and a zero gradient.
    """
    if log_probs.dtype not in KERNEL_DTYPES:
        raise TypeError(f"the core computes in float32 or float64, got {log_probs.dtype}")
    frames, size, classes = log_probs.shape
    nll = np.empty(size, dtype=np.float64)
    status = np.empty(size, dtype=np.int8)
    grad = np.zeros(log_probs.shape if want_grad else (1, 1, 1), dtype=log_probs.dtype)
    ctc_loss_batch(
        log_probs, batch.targets, batch.offsets, batch.input_lengths, batch.target_lengths,
        blank, want_grad, torch_grad, nll, grad, status,
    )
    return nll, (grad if want_grad else None)

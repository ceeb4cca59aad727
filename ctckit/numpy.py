"""The NumPy frontend: ctckit's CTC functions on NumPy arrays (or lists).

Same names and arguments as :mod:`ctckit.torch`; importing this module does not
import torch.
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._inputs import check_gradient, prepare, reduction_weights

__all__ = ["ctc_loss", "ctc_loss_and_grad"]


def _as_log_probs(log_probs) -> tuple[np.ndarray, np.dtype]:
    """(T, N, C) or (T, C) array in a kernel dtype, without copying when possible."""
    array = np.asarray(log_probs)
    if array.dtype.kind != "f":
        raise TypeError(f"log_probs must be a floating-point array, got dtype {array.dtype}")
    if array.dtype == np.float16:
        return array.astype(np.float32), array.dtype
    if array.dtype not in _core.KERNEL_DTYPES:
        return array.astype(np.float64), array.dtype
    return array, array.dtype


def _losses_and_grad(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, want_grad, gradient):
    torch_grad = check_gradient(gradient)
    array, out_dtype = _as_log_probs(log_probs)
    shapes, batch = prepare(array.shape, targets, input_lengths, target_lengths, blank, reduction)
    batched_view = array if shapes.batched else array[:, None, :]
    weights = reduction_weights(batch.target_lengths, reduction)
    nll, grad = _core.negative_log_likelihood(batched_view, batch, int(blank), grad="dense" if want_grad else "none",
                                              torch_grad=torch_grad, scale=weights)
    if zero_infinity:
        nll[nll == np.inf] = 0.0
    if reduction == "none":
        loss = nll if shapes.batched else nll.reshape(())
    else:
        loss = np.asarray(np.dot(weights, nll))
    loss = loss.astype(out_dtype)
    if grad is not None:
        grad = (grad if shapes.batched else grad[:, 0, :]).astype(out_dtype, copy=False)
    return loss, grad


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean", zero_infinity=False):
    r"""The CTC loss of each item, reduced as torch does.

    Args:
        log_probs: (T, N, C) or unbatched (T, C) log-probabilities (e.g. a log-softmax),
            float16, float32 or float64.
        targets: padded (N, S), concatenated (sum(target_lengths),), or unbatched (S,)
            integer labels in [0, C), never ``blank``; padding is ignored.
        input_lengths, target_lengths: (N,) integers (lists or arrays), or a single int
            when unbatched.
        blank: index of the blank class.
        reduction: ``"none"`` (losses (N,), or 0-d unbatched), ``"sum"``, or ``"mean"``
            (batch mean of ``loss_n / max(target_length_n, 1)``).
        zero_infinity: replace infinite losses (targets too long for their input) and
            their gradients by zero.

    Returns:
        An array in the dtype of ``log_probs``.

    .. math::  \mathrm{loss}_n = -\log \sum_{\pi \in \mathcal{B}^{-1}(l_n)} \prod_{t} y^t_{\pi_t}
    """
    loss, _ = _losses_and_grad(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, False, "exact")
    return loss


def ctc_loss_and_grad(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean", zero_infinity=False, *, gradient="exact"):
    """``(loss, grad)``: :func:`ctc_loss` and its gradient w.r.t. ``log_probs``.

    ``grad`` has the shape and dtype of ``log_probs``; for ``reduction="none"`` it is the
    gradient of the *sum* of the losses. ``gradient="exact"`` (default) is the true
    derivative, minus the posterior occupation of each class, nonzero only at the blank
    and the target's labels; ``gradient="torch"`` adds ``exp(log_probs)`` as PyTorch's
    kernel does (right only when ``log_probs`` comes from a log-softmax, whose backward
    then yields the same logit gradient).
    """
    return _losses_and_grad(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, True, gradient)

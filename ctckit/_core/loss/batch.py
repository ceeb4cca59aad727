r"""A batch: its rounds, the drivers over items, and the per-item kernels' addresses.

A batch runs in up to three rounds (:func:`ctc_loss_batch`): the one-scale passes over the
items short enough for them, the block-scaled passes over the others and those the first
round left, and log space over the items the second rejected. Each round's per-item kernel
(:mod:`.items`) compiles (or loads from Numba's cache) when a batch first needs it, and the
drivers call it through its address (:mod:`..addresses`): its code is compiled once and
not again inside each driver, so a first call with short targets compiles the first round
alone (about 10 s), one with long targets the second alone.

The drivers are serial ``nogil`` kernels over a chunk of items
(:func:`loss_items`, :func:`gradient_items`), which :mod:`..pool` runs on its own
threads, and for short calls on Numba's OpenMP threads too, one item at a time
(:func:`..pool.run_kernel`). Each item writes only its own slices of the outputs, through the same
passes whatever the thread, so results do not depend on scheduling.
"""

import numpy as np
from numba import types

from .. import pool
from ..addresses import CANCEL_FLAG, address_of
from ..config import NJIT
from ..disk_cache import njit
from ..intrinsics import call_compiled, is_set, unmanaged
from .items import (
    _item_gradient_blocks, _item_gradient_log_space, _item_gradient_one_scale, _item_loss_blocks, _item_loss_log_space,
    _item_loss_one_scale, _one_scale_item,
)
from .trellis import GRAD_NONE, STATUS_PENDING


FRAME_NS = 150.0
LABEL_NS = 4.0
"""Estimated ns of one frame of an item (one core, loss alone): ``FRAME_NS + LABEL_NS *
L`` (measured on ocr- and char-like items: 150-190 ns at L = 40, about 2 ns a state). The
gradient doubles it. Used only to split a batch between threads."""


def ctc_loss_batch(log_probs, targets, offsets, input_lengths, target_lengths, blank, mode, torch_grad, scale, nll, grad, post, status):
    """Fill ``nll[n]``, ``status[n]`` and item n's gradient output for every item, in parallel.

    Inputs must be validated: ``log_probs`` (T, N, C) float, ``targets`` 1-D int64 with
    item ``n``'s labels at ``offsets[n] : offsets[n] + target_lengths[n]``, lengths int64.
    ``mode``: ``GRAD_NONE``; ``GRAD_DENSE``, the gradient times ``scale[n]`` into ``grad``
    (T, N, C); ``GRAD_COMPACT``, posteriors into ``post`` (T, len(targets) + N), item n's
    slots starting at ``offsets[n] + n`` (see :func:`scatter_posteriors`). The output may
    arrive uninitialised: each item first zeroes its own part (all T frames), in parallel
    and while those rows are about to be written, instead of a serial memset beforehand.
    Each item writes only its own slices, and goes through the same passes whatever the
    thread count, so the result does not depend on scheduling.

    The first round takes the items short enough for the one-scale passes
    (:func:`_one_scale_item`), the second the others and those the first left pending, the
    third those the second left pending. Each round's kernel compiles when a batch first
    needs it: a batch of long targets never compiles the first.
    """
    items, later, costs = _plan_items(input_lengths, target_lengths, mode != GRAD_NONE)
    inputs = (log_probs, targets, offsets, input_lengths, target_lengths)
    if mode == GRAD_NONE:
        rounds, item_arguments = _LOSS_ROUNDS, (*inputs, np.int64(0), blank, CANCEL_FLAG)
    else:
        rounds, item_arguments = _GRADIENT_ROUNDS, (*inputs, np.int64(0), blank, mode, torch_grad, scale, grad, post, CANCEL_FLAG)
    for function in rounds:
        if items.shape[0]:
            item = address_of(function, item_arguments, _ITEM_RESULT)
            if mode == GRAD_NONE:
                pool.run_kernel(loss_items, items, (item, *inputs, blank, nll, status), costs[items])
            else:
                pool.run_kernel(gradient_items, items, (item, *inputs, blank, mode, torch_grad, scale, nll, grad, post, status),
                                costs[items])
            items = items[status[items] == STATUS_PENDING]
        if later.shape[0]:  # the items too long for the first round join those it left
            items = np.union1d(items, later) if items.shape[0] else later
            later = later[:0]
        if items.shape[0] == 0:
            return
        if function is rounds[1]:
            costs[items] *= 4.0  # log space costs more per cell
    raise AssertionError("the log-space round left an item pending")


_LOSS_ROUNDS = (_item_loss_one_scale, _item_loss_blocks, _item_loss_log_space)
_GRADIENT_ROUNDS = (_item_gradient_one_scale, _item_gradient_blocks, _item_gradient_log_space)
"""Per-item kernels of a batch's rounds: one-scale passes, block-scaled passes, log space."""


@njit(**NJIT)
def _plan_items(input_lengths, target_lengths, gradient):
    """``(first, later, costs)``: the items short enough for the first round
    (:func:`_one_scale_item`), the others, and each item's estimated cost in ns
    (``FRAME_NS``)."""
    size = input_lengths.shape[0]
    costs = np.empty(size)
    order = np.empty(size, dtype=np.int64)
    first, last = 0, size
    for n in range(size):
        frames, length = input_lengths[n], target_lengths[n]
        costs[n] = frames * (FRAME_NS + LABEL_NS * length) * (2.0 if gradient else 1.0)
        if _one_scale_item(frames, length):
            order[first] = n
            first += 1
        else:
            last -= 1
            order[last] = n
    return order[:first], order[first:][::-1].copy(), costs


_ITEM_RESULT = types.Tuple((types.float64, types.int64))
"""What every per-item kernel returns: ``(nll, status)``."""


@njit(**NJIT)
def loss_items(items, cancel, item, log_probs, targets, offsets, input_lengths, target_lengths, blank, nll, status):
    """One round of :func:`ctc_loss_batch` without a gradient, over the item indices
    ``items`` (one chunk of a batch), stopping when ``cancel[0]`` is set; ``item``: the
    address of the round's per-item kernel (:func:`.addresses.address_of`)."""
    for i in range(items.shape[0]):
        if is_set(cancel):
            return
        n = items[i]
        nll[n], status[n] = call_compiled((0.0, 0), item, (unmanaged(log_probs), unmanaged(targets), unmanaged(offsets),
                                                           unmanaged(input_lengths), unmanaged(target_lengths), n, blank,
                                                           unmanaged(cancel)))


@njit(**NJIT)
def gradient_items(items, cancel, item, log_probs, targets, offsets, input_lengths, target_lengths, blank, mode, torch_grad, scale,
                   nll, grad, post, status):
    """:func:`loss_items` with ``mode`` ``GRAD_DENSE`` or ``GRAD_COMPACT``."""
    for i in range(items.shape[0]):
        if is_set(cancel):
            return
        n = items[i]
        nll[n], status[n] = call_compiled((0.0, 0), item, (unmanaged(log_probs), unmanaged(targets), unmanaged(offsets),
                                                           unmanaged(input_lengths), unmanaged(target_lengths), n, blank,
                                                           mode, torch_grad, unmanaged(scale), unmanaged(grad),
                                                           unmanaged(post), unmanaged(cancel)))

r"""A batch: its rounds, the drivers over items, and the per-item kernels' addresses.

A batch runs in up to three rounds (:func:`ctc_loss_batch`): the one-scale passes over the
items short enough for them, the block-scaled passes over the others and those the first
round left, and log space over the items the second rejected. Each round's per-item kernel
(:mod:`.items`) compiles (or loads from Numba's cache) when a batch first needs it, and the
drivers call it through its address (:func:`_item_address`): its code is compiled once and
not again inside each driver, so a first call with short targets compiles the first round
alone (about 10 s), one with long targets the second alone.

The drivers come in two kinds: serial ``nogil`` ones over a chunk of items
(:func:`loss_items`, :func:`gradient_items`), which :mod:`..pool` runs on its own
threads, and ``parallel=True`` twins over every item at once for short calls on Numba's
OpenMP threads. Each item writes only its own slices of the outputs, through the same
passes whatever the thread, so results do not depend on scheduling.
"""

import numpy as np
from numba import njit, prange, typeof, types
from numba import config as numba_config

from .. import pool
from ..config import NJIT, PARALLEL
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
        rounds, item_arguments = _LOSS_ROUNDS, (*inputs, np.int64(0), blank, _A_FLAG)
    else:
        rounds, item_arguments = _GRADIENT_ROUNDS, (*inputs, np.int64(0), blank, mode, torch_grad, scale, grad, post, _A_FLAG)
    for function in rounds:
        if items.shape[0]:
            item = _item_address(_item_key(function, item_arguments), function, item_arguments)
            round_items = items
            if mode == GRAD_NONE:
                task = lambda chunk, cancel: loss_items(item, round_items[chunk], cancel, *inputs, blank, nll, status)
                together = lambda: loss_items_openmp(item, round_items, *inputs, blank, nll, status)
            else:
                task = lambda chunk, cancel: gradient_items(item, round_items[chunk], cancel, *inputs, blank, mode, torch_grad,
                                                            scale, nll, grad, post, status)
                together = lambda: gradient_items_openmp(item, round_items, *inputs, blank, mode, torch_grad, scale, nll, grad,
                                                         post, status)
            pool.run(task, costs[items], together)
            items = items[status[items] == STATUS_PENDING]
        if later.shape[0]:  # the items too long for the first round join those it left
            items = np.union1d(items, later) if items.shape[0] else later
            later = later[:0]
        if items.shape[0] == 0:
            return
        if function is rounds[1]:
            costs[items] *= 4.0  # log space costs more per cell
    raise AssertionError("the log-space round left an item pending")


_A_FLAG = np.zeros(1, dtype=np.int64)
"""A cancel flag's type, for looking up the per-item kernels (each job has its own flag)."""
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
_item_addresses = {}


try:  # what Numba's dispatchers look their compiled code up by: about 0.1 us an argument
    from numba._dispatcher import compute_fingerprint as _argument_kind
except ImportError:  # numba.typeof takes about 8 us an argument
    def _argument_kind(value):
        """What decides an argument's Numba type."""
        if isinstance(value, np.ndarray):
            return value.dtype.char, value.ndim, value.flags.num
        return type(value)


def _item_key(function, arguments):
    """What :func:`_item_address` looks ``function``'s compiled code up by."""
    return function, tuple(map(_argument_kind, arguments))


def _item_address(key, function, arguments):
    """The native entry point of ``function`` (one of the ``_item_*`` kernels) compiled for
    the types of ``arguments`` (or loaded from Numba's cache), for a batch driver to call
    through a pointer (:func:`.call_compiled`). ``key``: :func:`_item_key`'s.

    Numba links a called function's code into its caller's, then optimises it and makes
    machine code of the whole again. Called through a pointer, the per-item code compiles
    once and each driver on its own, in about a second; linked in, the parallel driver
    took 15 s more (it is two levels: the loop's body and the function around it).
    """
    address = _item_addresses.get(key)
    if address is None:
        if numba_config.DISABLE_JIT:
            address = function
        else:
            argument_types = tuple(typeof(value) for value in arguments)
            function.compile(argument_types)
            compiled = function.overloads[argument_types]
            if compiled.signature.return_type != _ITEM_RESULT:
                raise TypeError(f"{function.__name__} returns {compiled.signature.return_type}, not {_ITEM_RESULT}")
            address = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
        _item_addresses[key] = address
    return address


@njit(**NJIT)
def loss_items(item, items, cancel, log_probs, targets, offsets, input_lengths, target_lengths, blank, nll, status):
    """One round of :func:`ctc_loss_batch` without a gradient, over the item indices
    ``items`` (one chunk of a batch), stopping when ``cancel[0]`` is set; ``item``: the
    address of the round's per-item kernel (:func:`_item_address`)."""
    for i in range(items.shape[0]):
        if is_set(cancel):
            return
        n = items[i]
        nll[n], status[n] = call_compiled((0.0, 0), item, (unmanaged(log_probs), unmanaged(targets), unmanaged(offsets),
                                                           unmanaged(input_lengths), unmanaged(target_lengths), n, blank,
                                                           unmanaged(cancel)))


@njit(**NJIT)
def gradient_items(item, items, cancel, log_probs, targets, offsets, input_lengths, target_lengths, blank, mode, torch_grad, scale,
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


@njit(**PARALLEL)
def loss_items_openmp(item, items, log_probs, targets, offsets, input_lengths, target_lengths, blank, nll, status):
    """:func:`loss_items` over all ``items`` at once, on Numba's OpenMP threads (short
    calls only: see :mod:`..pool`)."""
    never = np.zeros(1, dtype=np.int64)  # the cancel flag: a short call is not cancelled
    for i in prange(items.shape[0]):
        loss_items(item, items[i:i + 1], never, log_probs, targets, offsets, input_lengths, target_lengths, blank, nll, status)


@njit(**PARALLEL)
def gradient_items_openmp(item, items, log_probs, targets, offsets, input_lengths, target_lengths, blank, mode, torch_grad,
                          scale, nll, grad, post, status):
    """:func:`gradient_items` over all ``items`` at once, on Numba's OpenMP threads."""
    never = np.zeros(1, dtype=np.int64)
    for i in prange(items.shape[0]):
        gradient_items(item, items[i:i + 1], never, log_probs, targets, offsets, input_lengths, target_lengths, blank, mode,
                       torch_grad, scale, nll, grad, post, status)

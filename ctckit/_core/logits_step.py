"""The loss on logits one item at a time: an item's gather, recursions and gradient on one thread.

:mod:`.logits` makes three passes over a batch: the gather of every frame
(:func:`.gather_log_probs`), the core's rounds over every item
(:func:`.loss.ctc_loss_batch`), and the gradient of every frame
(:func:`.logit_gradient`). Here one kernel, :func:`step_items`, does all three for one
item before it takes the next: the same row functions (:func:`._gather_row`,
:func:`._gradient_row`) and the same first-round item kernel, called through its address
(:mod:`.addresses`), so the results are bitwise those of the three
passes. What it saves is fixed cost, which dominates small batches: two of the three
hand-overs to the threads, with their Python, and the two passes over frames that were
too short to share between threads (docs, 50 x 16 x 20: 50 and 35 us on one thread).
:func:`loss_items` does the same for the loss alone (the gather, then the first-round
loss kernel): one hand-over instead of two, and an item's gathered frames still in cache
when its recursion reads them.

It takes a batch whose items all go to the first round (the one-scale passes,
:func:`.loss.items._one_scale_item`), of at most :data:`MAX_CLASSES` classes (any, for
the loss alone on batch-first logits); :func:`loss_and_gradient` and :func:`loss_only`
return None otherwise, or when the first round leaves an item pending, and the caller
makes the passes over the whole batch.
"""

import numpy as np

from . import pool
from .addresses import CANCEL_FLAG, address_of
from .config import HOT
from .disk_cache import njit
from .intrinsics import call_compiled, is_set, keep_alive, unmanaged
from .logits import ROW_NS, _gather_row, _gradient_row, compact_columns, frame_rows, gradient_output
from .loss.batch import _ITEM_RESULT, _plan_items
from .loss.items import _item_gradient_one_scale, _item_loss_one_scale
from .loss.trellis import GRAD_DENSE, STATUS_PENDING


MAX_CLASSES = 256
"""Wider rows take the three passes: an item's rows lie a whole frame of the batch apart,
which the frame passes read in order; measured on one quiet machine, one item at a time
against the three passes: docs (C = 20) 0.23 / 0.28 ms, ocr (100) 2.03 / 2.24, char (32)
6.84 / 7.44, but bpe1k (1024) 9.16 / 8.41 and bpe5k (5000) 34.4 / 26.8. The loss alone
(:func:`loss_only`) takes any width when the logits are batch-first, where an item's
frames are one block of memory: bpe1k 0.88x and bpe5k 0.96x the time of the two passes
(time-first: 1.11x and 1.06x)."""


@njit(**HOT)
def step_items(items, cancel, item, logits, batch_major, fmt, columns, offsets, input_lengths, target_lengths, blank, mode,
               torch_grad, unit, class_of_column, scale, lse, compact, core_grad, no_post, posteriors, nll, status, grad,
               grad_batch_major, want_grad):
    """For each item n of ``items``: its frames' ``lse`` and ``compact`` log-softmax (the
    gather), ``nll[n]`` and ``status[n]`` from the first-round kernel at address ``item``
    (its gradient w.r.t. ``compact`` into ``core_grad``, copied into ``posteriors`` in their
    dtype), and with ``want_grad`` its gradient w.r.t. the logits times ``scale[n]`` into
    ``grad`` (zero for an infeasible item, NaN rows for a NaN loss). A pending item is
    left as it is (the caller makes the three passes then)."""
    frames, classes, width = lse.shape[0], logits.shape[2], compact.shape[2]
    scratch = np.empty(classes)
    scratch32 = np.empty((2, classes), dtype=np.float32)
    row, row32, half = unmanaged(scratch), unmanaged(scratch32)[0], unmanaged(scratch32)[1]
    out = unmanaged(grad)
    for i in range(items.shape[0]):
        if is_set(cancel):
            break
        n = items[i]
        used = input_lengths[n]
        for t in range(frames):
            _gather_row(logits, batch_major, fmt, t, n, t < used, class_of_column, lse, compact, row, row32, half)
        nll[n], status[n] = call_compiled((0.0, 0), item, (unmanaged(compact), unmanaged(columns), unmanaged(offsets),
                                                           unmanaged(input_lengths), unmanaged(target_lengths), n, blank,
                                                           mode, torch_grad, unmanaged(unit), unmanaged(core_grad),
                                                           unmanaged(no_post), unmanaged(cancel)))
        if status[n] == STATUS_PENDING:
            continue
        for t in range(frames):
            for j in range(width):
                posteriors[t, n, j] = core_grad[t, n, j]  # rounded to their dtype, as the three passes keep them
        if want_grad:
            value = nll[n]
            factor = 0.0 if np.isinf(value) else (np.nan if np.isnan(value) else scale[n])
            for t in range(frames):
                target = out[n, t] if grad_batch_major else out[t, n]
                _gradient_row(logits, batch_major, fmt, t, n, t < used, factor, lse, posteriors, class_of_column, target,
                              half)
    keep_alive(scratch, scratch32)


@njit(**HOT)
def loss_items(items, cancel, item, logits, batch_major, fmt, columns, offsets, input_lengths, target_lengths,
               class_of_column, lse, compact, nll, status):
    """:func:`step_items` without a gradient: for each item n of ``items``, the gather of its
    used frames, then ``nll[n]`` and ``status[n]`` from the first-round loss kernel at
    address ``item`` (:func:`.loss.items._item_loss_one_scale`)."""
    classes = logits.shape[2]
    scratch = np.empty(classes)
    scratch32 = np.empty((2, classes), dtype=np.float32)
    row, row32, half = unmanaged(scratch), unmanaged(scratch32)[0], unmanaged(scratch32)[1]
    for i in range(items.shape[0]):
        if is_set(cancel):
            return
        n = items[i]
        for t in range(input_lengths[n]):  # the loss reads no frame past the item's length
            if is_set(cancel):  # an item of many frames and wide rows (an empty target, any T) takes long
                return
            _gather_row(logits, batch_major, fmt, t, n, True, class_of_column, lse, compact, row, row32, half)
        nll[n], status[n] = call_compiled((0.0, 0), item, (unmanaged(compact), unmanaged(columns), unmanaged(offsets),
                                                           unmanaged(input_lengths), unmanaged(target_lengths), n,
                                                           np.int64(0), unmanaged(cancel)))
    keep_alive(scratch, scratch32)


_first_round_address = {}


def _first_round_item(function, arguments) -> int:
    """The address of a first-round item kernel for :func:`step_items` or
    :func:`loss_items`: its arguments' types never change here (fresh float64 and int64
    arrays, the same scalars), so it is looked up once per process, not by their
    fingerprints at every call."""
    if function not in _first_round_address:
        _first_round_address[function] = address_of(function, arguments, _ITEM_RESULT)
    return _first_round_address[function]


def loss_only(logits, fmt, batch, blank, width):
    """``(nll, class_of_column)`` as :func:`ctckit._core.negative_log_likelihood_from_logits`
    gives the losses without a gradient, one item at a time (one hand-over to the threads,
    an item's gathered frames still in cache for its recursion), or None when an item is not
    for the first round alone (see :func:`loss_and_gradient`)."""
    frames, size, classes = logits.shape
    rows, batch_major = frame_rows(logits)
    if classes > MAX_CLASSES and not batch_major:  # batch-first, an item's frames are one block: any width
        return None
    _, later, costs = _plan_items(batch.input_lengths, batch.target_lengths, False)
    if later.shape[0]:
        return None
    columns, class_of_column = compact_columns(batch.targets, batch.offsets, batch.target_lengths, classes, blank,
                                               -1 if width is None else width)
    lse = np.empty((frames, size))
    compact = np.empty((frames, size, class_of_column.shape[1]))  # frames past an item's length stay unwritten, unread
    nll, status = np.empty(size), np.empty(size, dtype=np.int8)
    inputs = (compact, columns, batch.offsets, batch.input_lengths, batch.target_lengths)
    item = _first_round_item(_item_loss_one_scale, (*inputs, np.int64(0), np.int64(0), CANCEL_FLAG))
    arguments = (rows, batch_major, fmt, columns, batch.offsets, batch.input_lengths, batch.target_lengths,
                 class_of_column, lse, compact, nll, status)
    pool.run_kernel(loss_items, np.arange(size), (item, *arguments), costs + ROW_NS * classes * batch.input_lengths)
    if bytes((STATUS_PENDING,)) in status.tobytes():
        return None
    return nll, class_of_column


def loss_and_gradient(logits, fmt, batch, blank, width, scale, gradient_dtype, want_grad, time_major=False, out=None):
    """``(nll, (lse, posteriors, class_of_column), grad)`` as the three passes give them
    (:func:`ctckit._core.negative_log_likelihood_from_logits`, then
    :func:`ctckit._core.gradient_from_logits` with ``scale`` when ``want_grad``, else
    ``grad`` None), or None when an item is not for the first round alone. ``width``: K
    (None: the most distinct classes of an item); ``out``: as for
    :func:`.logits.logit_gradient`."""
    frames, size, classes = logits.shape
    if classes > MAX_CLASSES:
        return None
    _, later, costs = _plan_items(batch.input_lengths, batch.target_lengths, True)
    if later.shape[0]:
        return None
    columns, class_of_column = compact_columns(batch.targets, batch.offsets, batch.target_lengths, classes, blank,
                                               -1 if width is None else width)
    width = class_of_column.shape[1]
    rows, batch_major = frame_rows(logits)
    lse = np.empty((frames, size))
    compact = np.empty((frames, size, width))
    core_grad = np.empty((frames, size, width))  # each item zeroes its own part first
    posteriors = np.empty((frames, size, width), dtype=gradient_dtype)
    nll, status = np.empty(size), np.empty(size, dtype=np.int8)
    unit, no_post = np.ones(size), np.empty((1, 1))
    grad_batch_major = batch_major and not time_major
    if want_grad:
        grad = gradient_output(logits.shape, grad_batch_major, gradient_dtype, out)
    else:
        grad, scale = np.empty((1, 1, 1), dtype=gradient_dtype), unit
    scale = np.ascontiguousarray(scale, dtype=np.float64)
    inputs = (compact, columns, batch.offsets, batch.input_lengths, batch.target_lengths)
    item = _first_round_item(_item_gradient_one_scale,
                             (*inputs, np.int64(0), 0, GRAD_DENSE, False, unit, core_grad, no_post, CANCEL_FLAG))
    arguments = (rows, batch_major, fmt, columns, batch.offsets, batch.input_lengths, batch.target_lengths, np.int64(0),
                 GRAD_DENSE, False, unit, class_of_column, scale, lse, compact, core_grad, no_post, posteriors, nll, status,
                 grad, grad_batch_major, want_grad)
    costs = costs + ROW_NS * frames * classes * (2.0 if want_grad else 1.0)
    pool.run_kernel(step_items, np.arange(size), (item, *arguments), costs)
    if bytes((STATUS_PENDING,)) in status.tobytes():  # int8 codes; 0.2 us, where (status == ...).any() took 2-20
        return None
    saved = (lse, posteriors, class_of_column)
    if not want_grad:
        return nll, saved, None
    return nll, saved, (grad.transpose(1, 0, 2) if grad_batch_major else grad)

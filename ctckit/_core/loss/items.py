r"""One item of a batch, from its slice of the inputs to its loss and gradient.

Each per-item kernel (``_item_loss_*``, ``_item_gradient_*``; one per round: one scale,
blocks, log space) reads item ``n``'s frames and labels (:func:`_item_extent`), handles an
infeasible target (``+inf``, eq. 8 has no path), carves its work arrays out of one
allocation (:func:`_workspace_size`, :func:`_carve`), and runs the passes of
:mod:`.one_scale`, :mod:`.block_passes` or :mod:`.log_space` on unmanaged views (managed
arrays cost about 50 atomic reference-count updates per frame). It returns ``(nll,
status)``; ``STATUS_PENDING`` sends the item to the next round. Long items with a gradient
keep checkpoints instead of every row (``STORED_ROWS_LIMIT``, :func:`_segment_frames`).
The batch drivers of :mod:`.batch` call these kernels through their address.
"""

import math

import numpy as np

from ..config import INLINE, NJIT
from ..disk_cache import njit
from ..intrinsics import is_set, keep_alive, unmanaged
from .block_passes import (
    _alpha_checkpoints, _alpha_pass_rolling, _alpha_segment, _backward_log_likelihood, _gradient_segment,
)
from .blocks import _num_blocks
from .log_space import _log_space_alpha, _log_space_item
from .one_scale import (
    _one_scale_alpha_pass, _one_scale_gradient_pass, _one_scale_loss, ONE_SCALE_CELLS, ONE_SCALE_LABELS,
)
from .posteriors import _clear_item, _fill_item
from .trellis import (
    _LOG_P_TOLERANCE, _NEG_INF, _skip_weights, GRAD_NONE, min_frames_needed, STATUS_OK, STATUS_ONE_SCALE,
    STATUS_PENDING, STATUS_RECOMPUTED,
)


@njit(**INLINE)
def _carve(workspace, start, size):
    """``(workspace[start:start + size], start + size)``."""
    return workspace[start:start + size], start + size


STORED_ROWS_LIMIT = 1 << 18
"""float64 elements (2 MiB) up to which the gradient's forward pass keeps every row of an
item. Past it, the rows are kept for one segment of about sqrt(T) / 2 frames at a time and
recomputed from one checkpoint row per segment (:func:`_alpha_checkpoints`): computing
most rows twice costs less than storing them all. At T = 10^4 and L = 2000 every row is
480 MB per item, a fresh mapping each call, and page faults took over half the time of
the forward and backward; at T = 2000 and L = 500 (24 MB per item, no page faults) the
segments, which stay in cache, were still 1.05-1.13x faster. (One-scale items keep all
their rows, which their passes need: about T (3 L + 8) elements, 12 MB at L = 255 with
T L at ``ONE_SCALE_CELLS``.)"""


@njit(**INLINE)
def _one_scale_item(frames, length):
    """Whether an item goes to the one-scale passes first (see ``ONE_SCALE_LABELS``)."""
    return length < ONE_SCALE_LABELS and frames * length <= ONE_SCALE_CELLS


@njit(**NJIT)
def _segment_frames(frames, length):
    """Frames per segment of the gradient's forward rows: all of them for a one-scale item
    or within ``STORED_ROWS_LIMIT``, else ceil(sqrt(frames) / 2)."""
    per_frame = 2 * length + 1 + _num_blocks(length) + 3 + length  # a row, its scales, shift, emissions
    if _one_scale_item(frames, length) or frames * per_frame <= STORED_ROWS_LIMIT:
        return frames
    return int(math.ceil(math.sqrt(frames) / 2))


@njit(**NJIT)
def _workspace_size(frames, length, classes, mode):
    """float64 elements the per-item kernels (``_item_*``) carve their work arrays from."""
    width, blocks = 2 * length + 1, _num_blocks(length)
    common = 4 * length + width + 2 * classes
    if mode == GRAD_NONE:
        return common + 3 * width + 3 * blocks
    span = _segment_frames(frames, length)
    segments = (frames + span - 1) // span
    return common + (span + 1) * (width + blocks + 3 + length) + segments * (width + blocks + 1) + 2 * width + 4 * blocks


@njit(**INLINE)
def _item_extent(targets, offsets, input_lengths, target_lengths, n):
    """Item n's ``(frames, length, labels)``, and whether it needs the passes at all:
    ``(False, nll)`` for an infeasible target (``+inf``) or an empty input (``0``: the empty
    path, P = 1)."""
    frames = input_lengths[n]
    length = target_lengths[n]
    labels = targets[offsets[n]:offsets[n] + length]
    if min_frames_needed(labels, length) > frames:
        return frames, length, labels, False, np.inf
    if frames == 0:
        return frames, length, labels, False, 0.0
    return frames, length, labels, True, 0.0


@njit(**NJIT)
def _item_loss_one_scale(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, cancel):
    """First round of a batch's loss, item n: ``(nll, status)``, ``+inf`` for an infeasible
    target, or ``STATUS_PENDING`` for an item the one-scale pass does not take or rejects.

    Every array the passes touch is an :func:`.unmanaged` view (the inputs, and the work
    arrays carved from one allocation): passed to the inlined per-frame helpers, managed
    arrays cost about 50 atomic reference-count updates per frame, half the time of a
    short item. ``keep_alive`` holds the one allocation until the passes are done.
    """
    frames, length, labels, feasible, nll = _item_extent(targets, offsets, input_lengths, target_lengths, n)
    if not feasible:
        return nll, STATUS_OK
    if not _one_scale_item(frames, length):
        return np.nan, STATUS_PENDING
    workspace = np.empty(_workspace_size(frames, length, log_probs.shape[2], GRAD_NONE))
    result = _one_scale_loss_passes(unmanaged(log_probs), unmanaged(labels), n, frames, length, blank, unmanaged(workspace))
    keep_alive(workspace)
    return result


@njit(**NJIT)
def _item_loss_blocks(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, cancel):
    """Second round of a batch's loss, for an item the first left pending (or every item,
    when the first round was skipped): the block-scaled pass, checked by a backward pass
    where a state may have lost precision. ``(nll, status)``, NaN when a used log-prob is
    NaN, ``STATUS_PENDING`` for an item the checks reject or with no surviving path."""
    frames, length, labels, feasible, nll = _item_extent(targets, offsets, input_lengths, target_lengths, n)
    if not feasible:
        return nll, STATUS_OK
    workspace = np.empty(_workspace_size(frames, length, log_probs.shape[2], GRAD_NONE))
    result = _block_loss_passes(unmanaged(log_probs), unmanaged(labels), n, frames, length, blank, unmanaged(workspace),
                                cancel)
    keep_alive(workspace)
    return result


@njit(**NJIT)
def _item_gradient_one_scale(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, mode, torch_grad, scale,
                             grad, post, cancel):
    """:func:`_item_loss_one_scale`, writing item n's gradient times ``scale[n]`` (``mode``
    ``GRAD_DENSE``) or its posteriors (``GRAD_COMPACT``) too: zero for an infeasible item.
    A pending item's output is left to the second round, which clears it first."""
    frames, length, labels, feasible, nll = _item_extent(targets, offsets, input_lengths, target_lengths, n)
    if feasible and not _one_scale_item(frames, length):
        return np.nan, STATUS_PENDING
    _clear_item(mode, grad, post, offsets, n)
    if not feasible:
        return nll, STATUS_OK
    workspace = np.empty(_workspace_size(frames, length, log_probs.shape[2], mode))
    result = _one_scale_gradient_passes(unmanaged(log_probs), unmanaged(labels), n, frames, length, blank, mode, torch_grad,
                                        scale[n], unmanaged(grad), unmanaged(post), offsets[n] + n, unmanaged(workspace))
    keep_alive(workspace)
    return result


@njit(**NJIT)
def _item_gradient_blocks(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, mode, torch_grad, scale,
                          grad, post, cancel):
    """:func:`_item_loss_blocks` with the gradient or posteriors of
    :func:`_item_gradient_one_scale`: NaN rows for a NaN loss. A pending item's output is
    left to the third round, which clears it again."""
    _clear_item(mode, grad, post, offsets, n)
    frames, length, labels, feasible, nll = _item_extent(targets, offsets, input_lengths, target_lengths, n)
    if not feasible:
        return nll, STATUS_OK
    workspace = np.empty(_workspace_size(frames, length, log_probs.shape[2], mode))
    result = _block_gradient_passes(unmanaged(log_probs), unmanaged(labels), n, frames, length, blank, mode, torch_grad,
                                    scale[n], unmanaged(grad), unmanaged(post), offsets[n] + n, unmanaged(workspace), cancel)
    keep_alive(workspace)
    return result


@njit(**NJIT)
def _item_loss_log_space(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, cancel):
    """Third round of a batch's loss, for an item the block-scaled pass left pending: the
    plain log-space pass. ``(nll, STATUS_RECOMPUTED)``."""
    frames, length, labels, _, _ = _item_extent(targets, offsets, input_lengths, target_lengths, n)
    skip = np.empty(length)
    _skip_weights(labels, length, skip)
    _, log_p = _log_space_alpha(log_probs, n, frames, blank, labels, length, skip, cancel)
    return -log_p, np.int64(STATUS_RECOMPUTED)  # not a literal: the round's result type


@njit(**NJIT)
def _item_gradient_log_space(log_probs, targets, offsets, input_lengths, target_lengths, n, blank, mode, torch_grad, scale,
                             grad, post, cancel):
    """:func:`_item_loss_log_space` with the gradient or posteriors: item n's output is
    cleared (the second round may have written some frames) and stays zero when no path
    survives even in log space."""
    _clear_item(mode, grad, post, offsets, n)
    frames, length, labels, _, _ = _item_extent(targets, offsets, input_lengths, target_lengths, n)
    skip = np.empty(length)
    _skip_weights(labels, length, skip)
    label_post = np.empty(length)
    slot = offsets[n] + n
    log_p = _log_space_item(log_probs, n, frames, blank, labels, length, skip, mode, grad, post, slot, scale[n], torch_grad,
                            label_post, cancel)
    if log_p != log_p:  # a NaN log-prob on the item's path (the rescaled rounds sent every NaN here)
        _fill_item(mode, grad, post, n, slot, frames, length, np.nan)
    elif not log_p > _NEG_INF:
        _fill_item(mode, grad, post, n, slot, frames, length, 0.0)
    return -log_p, np.int64(STATUS_RECOMPUTED)


@njit(**INLINE)
def _common_work(workspace, labels, length, classes, blank):
    """The work arrays every kind of pass carves first: ``skip`` (filled), ``y_label``,
    ``label_post``, ``gathered``, ``work``, ``exp_row`` (2 C: a row's emissions, then 0 for
    each class the item uses and ``-inf`` for the others, filled when :func:`_emissions`
    reads whole rows), and where the rest starts."""
    width = 2 * length + 1
    at = 0
    skip, at = _carve(workspace, at, length)
    y_label, at = _carve(workspace, at, length)
    label_post, at = _carve(workspace, at, length)
    gathered, at = _carve(workspace, at, length)
    work, at = _carve(workspace, at, width)
    exp_row, at = _carve(workspace, at, 2 * classes)
    _skip_weights(labels, length, skip)
    if classes < length + 1:
        unused = exp_row[classes:]
        for c in range(classes):
            unused[c] = _NEG_INF
        unused[blank] = 0.0
        for k in range(length):
            unused[labels[k]] = 0.0
    return skip, y_label, label_post, gathered, work, exp_row, at


@njit(**INLINE)
def _one_scale_loss_passes(log_probs, labels, n, frames, length, blank, workspace):
    """:func:`_item_loss_one_scale`'s computation on unmanaged views."""
    width = 2 * length + 1
    skip, y_label, label_post, gathered, work, exp_row, at = _common_work(workspace, labels, length, log_probs.shape[2], blank)
    rows, at = _carve(workspace, at, 2 * width)
    kept_row, at = _carve(workspace, at, width)
    ok, log_p = _one_scale_loss(log_probs, n, frames, blank, labels, skip, rows.reshape((2, width)), exp_row, y_label,
                                gathered, kept_row)
    if ok:
        return -log_p, STATUS_ONE_SCALE
    return np.nan, STATUS_PENDING


@njit(**INLINE)
def _block_loss_passes(log_probs, labels, n, frames, length, blank, workspace, cancel):
    """:func:`_item_loss_blocks`'s computation on unmanaged views."""
    width = 2 * length + 1
    blocks = _num_blocks(length)
    skip, y_label, label_post, gathered, work, exp_row, at = _common_work(workspace, labels, length, log_probs.shape[2], blank)
    rows, at = _carve(workspace, at, 2 * width)
    scales, at = _carve(workspace, at, 2 * blocks)
    kept_row, at = _carve(workspace, at, width)
    kept_scales, at = _carve(workspace, at, blocks)
    rows, scales = rows.reshape((2, width)), scales.reshape((2, blocks))
    log_p, check_frame, check_shift = _alpha_pass_rolling(log_probs, n, frames, blank, labels, skip, rows, scales, exp_row,
                                                          y_label, gathered, kept_row, kept_scales, cancel)
    if log_p != log_p:  # a NaN input, or log-probs past about 1e18, where the scales' arithmetic fails: log space decides
        return np.nan, STATUS_PENDING
    if log_p > _NEG_INF:
        if check_frame < 0:
            return -log_p, STATUS_OK
        check = _backward_log_likelihood(log_probs, n, frames, blank, labels, skip, rows, scales, exp_row, y_label, gathered,
                                         work, check_frame, kept_row, kept_scales, check_shift, cancel)
        if abs(check - log_p) <= _LOG_P_TOLERANCE:
            return -log_p, STATUS_OK
    # A -inf from the rescaled pass (no surviving path) is confirmed in log space too
    # (the third round): underflow must never fake an infinite loss.
    return np.nan, STATUS_PENDING


@njit(**INLINE)
def _gradient_work(workspace, labels, frames, length, classes, blank):
    """The gradient passes' work arrays, for rows kept in segments of ``span`` frames
    (:func:`_segment_frames`): :func:`_common_work`'s, then ``alpha``, ``scales``,
    ``shifts``, ``emit_blank``, ``emit_shift``, ``emit_label`` (``span + 1`` rows each: the
    last for the next segment's first row), ``kept_rows``, ``kept_scales``, ``kept_shifts``
    (one per segment), ``beta_rows``, ``beta_scales`` (two rows), ``block_mass``,
    ``block_exponent``."""
    width = 2 * length + 1
    blocks = _num_blocks(length)
    span = _segment_frames(frames, length)
    segments = (frames + span - 1) // span
    skip, y_label, label_post, gathered, work, exp_row, at = _common_work(workspace, labels, length, classes, blank)
    alpha, at = _carve(workspace, at, (span + 1) * width)
    scales, at = _carve(workspace, at, (span + 1) * blocks)
    shifts, at = _carve(workspace, at, span + 1)
    emit_blank, at = _carve(workspace, at, span + 1)
    emit_shift, at = _carve(workspace, at, span + 1)
    emit_label, at = _carve(workspace, at, (span + 1) * length)
    kept_rows, at = _carve(workspace, at, segments * width)
    kept_scales, at = _carve(workspace, at, segments * blocks)
    kept_shifts, at = _carve(workspace, at, segments)
    beta_rows, at = _carve(workspace, at, 2 * width)
    beta_scales, at = _carve(workspace, at, 2 * blocks)
    block_mass, at = _carve(workspace, at, blocks)
    block_exponent, at = _carve(workspace, at, blocks)
    return (span, segments, skip, y_label, label_post, gathered, work, exp_row, alpha.reshape((span + 1, width)),
            scales.reshape((span + 1, blocks)), shifts, emit_blank, emit_shift, emit_label.reshape((span + 1, length)),
            kept_rows.reshape((segments, width)), kept_scales.reshape((segments, blocks)), kept_shifts,
            beta_rows.reshape((2, width)), beta_scales.reshape((2, blocks)), block_mass, block_exponent)


@njit(**INLINE)
def _one_scale_gradient_passes(log_probs, labels, n, frames, length, blank, mode, torch_grad, scale, grad, post, slot,
                               workspace):
    """:func:`_item_gradient_one_scale`'s computation on unmanaged views (``slot``: item
    n's first column of ``post``)."""
    (span, segments, skip, y_label, label_post, gathered, work, exp_row, alpha, scales, shifts, emit_blank, emit_shift,
     emit_label, kept_rows, kept_scales, kept_shifts, beta_rows, beta_scales, block_mass,
     block_exponent) = _gradient_work(workspace, labels, frames, length, log_probs.shape[2], blank)
    ok, log_p = _one_scale_alpha_pass(log_probs, n, frames, blank, labels, skip, alpha, shifts, emit_blank, emit_label,
                                      emit_shift, exp_row, gathered)
    if ok and _one_scale_gradient_pass(log_probs, n, frames, blank, labels, skip, alpha, shifts, log_p, emit_blank,
                                       emit_label, emit_shift, mode, grad, post, slot, scale, torch_grad, label_post,
                                       beta_rows):
        return -log_p, STATUS_ONE_SCALE
    return np.nan, STATUS_PENDING


@njit(**INLINE)
def _block_gradient_passes(log_probs, labels, n, frames, length, blank, mode, torch_grad, scale, grad, post, slot,
                           workspace, cancel):
    """:func:`_item_gradient_blocks`'s computation on unmanaged views (``slot``: item n's
    first column of ``post``)."""
    (span, segments, skip, y_label, label_post, gathered, work, exp_row, alpha, scales, shifts, emit_blank, emit_shift,
     emit_label, kept_rows, kept_scales, kept_shifts, beta_rows, beta_scales, block_mass,
     block_exponent) = _gradient_work(workspace, labels, frames, length, log_probs.shape[2], blank)
    ok = False
    log_p = _alpha_checkpoints(log_probs, n, frames, span, blank, labels, skip, alpha, scales, shifts, emit_blank, emit_label,
                               emit_shift, exp_row, gathered, kept_rows, kept_scales, kept_shifts, cancel)
    if log_p != log_p:  # as in _block_loss_passes: log space decides
        return np.nan, STATUS_PENDING
    if log_p > _NEG_INF:
        ok = True
        b_shift = 0.0
        for j in range(segments - 1, -1, -1):  # the last segment's rows are still in alpha
            t0, t1 = j * span, min(frames, (j + 1) * span)
            if j < segments - 1:  # recompute its rows (keep_next is a run-time False: a literal one
                # would compile _alpha_segment a second time, for 30 s)
                _alpha_segment(log_probs, n, t0, t1, frames, blank, labels, skip, alpha, scales, shifts, emit_blank, emit_label,
                               emit_shift, exp_row, gathered, kept_rows[j], kept_scales[j], kept_shifts[j], frames < 0, cancel)
            ok, b_shift = _gradient_segment(log_probs, n, t0, t1, frames, blank, labels, skip, alpha, scales, shifts, log_p,
                                            emit_blank, emit_label, emit_shift, b_shift, mode, grad, post, slot, scale,
                                            torch_grad, work, label_post, beta_rows, beta_scales, block_mass, block_exponent)
            if not ok or is_set(cancel):
                ok = False
                break
    # A -inf from the rescaled pass (no surviving path) is confirmed in log space too
    # (the third round): underflow must never fake an infinite loss.
    if ok:
        return -log_p, STATUS_OK
    return np.nan, STATUS_PENDING

r"""The kernels of the loss and its gradient: the alpha pass, the beta pass, the scatter.

:func:`_alpha_kernel` runs the forward recursion (eqs. 6-7, :func:`.trellis.alpha_step`)
over an item's frames and stores ``log p(l | x)`` (eq. 8); for a gradient it also stores
the alpha row of every ``K``-th frame (``K = ceil(sqrt(T))``), the checkpoints.

:func:`_beta_kernel` runs the backward recursion (eqs. 10-11) from the last frame down,
segment by segment: each segment's alpha rows are recomputed from its checkpoint, and
per frame the state posteriors ``alpha * beta / p`` (eq. 14) are summed per class into
the class posteriors (eq. 16), written as the dense gradient or in the compact layout.

:func:`_scatter_kernel` turns compact posteriors into the dense gradient in the backward,
scaled per item. Both gradient writers add a repeated label in ordered passes
(:func:`_subtract_by_rank`): no atomics, the same bits on every run.

The lanes and the recursion step come from :mod:`.trellis`; :mod:`.launch` allocates the
ring, checkpoints and rows these kernels use and launches them, one program per item.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .trellis import alpha_step, cast, end_states, first_states, item, lse2, lse3


@triton.jit
def _alpha_kernel(lp_ptr, stride_t, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr,
                  blank, ring_ptr, checkpoint_ptr, segment, checkpoints, log_p_ptr,
                  BLOCK: tl.constexpr, STORE: tl.constexpr):
    """log p(l_n | x_n) into ``log_p[n]`` (-inf when infeasible, NaN when a used log-prob
    is NaN); with ``STORE``, the alpha row of every ``segment``-th frame into
    ``checkpoint[n, t // segment]`` for the backward pass to recompute the others."""
    n = tl.program_id(0).to(tl.int64)
    frames, length, off, s, valid, label_state, k, cls, skip_in, skip_out, repeats, row = item(
        n, lp_ptr, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr, blank, BLOCK)
    ring = ring_ptr + n * (2 * BLOCK)
    checkpoint = checkpoint_ptr + n * checkpoints * BLOCK
    first = first_states(s, valid, frames)
    alpha = tl.load(row, mask=first, other=float("-inf")).to(tl.float64)
    nans = tl.sum(tl.where(first & (alpha != alpha), 1, 0))
    if STORE:
        tl.store(checkpoint + s, alpha)
    for t in range(1, frames):
        slot = ring + (t % 2) * BLOCK
        tl.store(slot + s, alpha)
        emit = tl.load(row + t * stride_t, mask=valid, other=float("-inf")).to(tl.float64)
        nans += tl.sum(tl.where(valid & (emit != emit), 1, 0))
        alpha = alpha_step(alpha, slot, s, skip_in, emit)
        if STORE:
            if t % segment == 0:
                tl.store(checkpoint + (t // segment) * BLOCK + s, alpha)
    last_blank, last_label = end_states(alpha, s, length)
    log_p = lse2(last_blank, last_label)
    log_p = tl.where(frames == 0, tl.where(length == 0, 0.0, float("-inf")), log_p)
    log_p = tl.where(nans > 0, float("nan"), log_p)
    log_p = tl.where(length + repeats > frames, float("-inf"), log_p)
    tl.store(log_p_ptr + n, log_p)


@triton.jit
def _beta_kernel(lp_ptr, stride_t, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr,
                 blank, ring_ptr, checkpoint_ptr, segment, checkpoints, rows_ptr, log_p_ptr, rank_ptr, passes, classes,
                 out_ptr, out_stride_t, out_stride_n, out_stride_c,
                 BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, COMPACT: tl.constexpr, TORCH_GRAD: tl.constexpr):
    """The backward recursion and, per frame, the class posteriors (eq. 16).

    Frames go by segments of ``segment``, last first: each segment's alpha rows are
    recomputed from its checkpoint into ``rows[n]`` (the same float64 operations as the
    forward pass), then consumed in reverse by the beta recursion.

    ``COMPACT``: ``out[t, slot]`` = the blank's posterior, ``out[t, slot + 1 + k]`` = label
    k's, with ``slot = offsets[n] + n`` (the Numba core's layout). Otherwise ``out`` is the
    dense gradient of the item's loss, (T, N, C) zeros on entry: minus the posteriors,
    plus ``exp(log_probs)`` with ``TORCH_GRAD``. Infeasible items keep zeros; an item
    whose loss is NaN gets NaN on its frames."""
    n = tl.program_id(0).to(tl.int64)
    frames, length, off, s, valid, label_state, k, cls, skip_in, skip_out, repeats, row = item(
        n, lp_ptr, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr, blank, BLOCK)
    log_p = tl.load(log_p_ptr + n)
    ring = ring_ptr + n * (2 * BLOCK)
    checkpoint = checkpoint_ptr + n * checkpoints * BLOCK
    rows = rows_ptr + n * segment * BLOCK
    slot = off + n
    out_type = out_ptr.dtype.element_ty
    if log_p != log_p:
        for t in range(0, frames):
            if COMPACT:
                tl.store(out_ptr + t * out_stride_t + (slot + s) * out_stride_c,
                         tl.full([BLOCK], float("nan"), out_type), mask=s < length + 1)
            else:
                for c0 in range(0, classes, BLOCK_C):
                    c = c0 + tl.arange(0, BLOCK_C)
                    tl.store(out_ptr + t * out_stride_t + n * out_stride_n + c * out_stride_c,
                             tl.full([BLOCK_C], float("nan"), out_type), mask=c < classes)
    elif log_p > float("-inf"):
        rank = tl.load(rank_ptr + off + k, mask=label_state, other=0)
        after = tl.where((s == 2 * length) | (s == 2 * length - 1), 0.0, float("-inf")).to(tl.float64)
        beta = after
        segments = (frames + segment - 1) // segment
        for j in range(0, segments):
            start = (segments - 1 - j) * segment
            stop = tl.minimum(start + segment, frames)
            alpha = tl.load(checkpoint + (start // segment) * BLOCK + s)
            tl.store(rows + s, alpha)
            for t in range(start + 1, stop):
                emit = tl.load(row + t * stride_t, mask=valid, other=float("-inf")).to(tl.float64)
                alpha = alpha_step(alpha, rows + (t - 1 - start) * BLOCK, s, skip_in, emit)
                tl.store(rows + (t - start) * BLOCK + s, alpha)
            for i in range(0, stop - start):
                t = stop - 1 - i
                if t < frames - 1:
                    slot_ring = ring + (t % 2) * BLOCK
                    tl.store(slot_ring + s, beta)
                    tl.debug_barrier()
                    one = tl.load(slot_ring + s + 1, mask=s + 1 < BLOCK, other=float("-inf"))
                    two = tl.load(slot_ring + s + 2, mask=skip_out, other=float("-inf"))
                    after = lse3(beta, one, two)
                emit = tl.load(row + t * stride_t, mask=valid, other=float("-inf")).to(tl.float64)
                alpha = tl.load(rows + (t - start) * BLOCK + s)  # this lane's own store: no barrier needed
                post = tl.where(valid, tl.exp(alpha + after - log_p), 0.0)
                blank_post = tl.sum(tl.where(label_state, 0.0, post))
                if COMPACT:
                    base = out_ptr + t * out_stride_t
                    tl.store(base + slot * out_stride_c, cast(blank_post, out_type))
                    tl.store(base + (slot + 1 + k) * out_stride_c, cast(post, out_type), mask=label_state)
                else:
                    grad_row = out_ptr + t * out_stride_t + n * out_stride_n
                    blank_base = 0.0
                    if TORCH_GRAD:
                        for c0 in range(0, classes, BLOCK_C):
                            c = c0 + tl.arange(0, BLOCK_C)
                            y = tl.load(lp_ptr + t * stride_t + n * stride_n + c * stride_c, mask=c < classes,
                                        other=float("-inf"))
                            tl.store(grad_row + c * out_stride_c, cast(tl.exp(y.to(tl.float64)), out_type), mask=c < classes)
                        blank_base = tl.exp(tl.load(lp_ptr + t * stride_t + n * stride_n + blank * stride_c).to(tl.float64))
                    tl.debug_barrier()
                    tl.store(grad_row + blank * out_stride_c, cast(blank_base - blank_post, out_type))
                    _subtract_by_rank(grad_row + cls * out_stride_c, post, label_state, rank, passes)
                beta = after + emit
            tl.debug_barrier()  # every lane is done with this segment's rows before the next overwrites them


@triton.jit
def _subtract_by_rank(pointers, values, mask, rank, passes):
    """``*pointers -= values`` where labels may repeat: pass ``r`` updates the lanes of
    rank ``r`` (distinct classes), so no two lanes write one entry at once."""
    for r in range(0, passes):
        tl.debug_barrier()
        selected = mask & (rank == r)
        current = tl.load(pointers, mask=selected, other=0.0).to(tl.float64)
        tl.store(pointers, cast(current - values, pointers.dtype.element_ty), mask=selected)


@triton.jit
def _scatter_kernel(post_ptr, post_stride_t, post_stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr,
                    rank_ptr, passes, blank, scale_ptr, grad_ptr, grad_stride_t, grad_stride_n, grad_stride_c,
                    BLOCK_L: tl.constexpr):
    """Dense gradient (T, N, C) zeros on entry: ``grad[t, n, c] -= scale[n] * posterior``."""
    n = tl.program_id(0).to(tl.int64)
    frames = tl.load(input_lengths_ptr + n)
    length = tl.load(target_lengths_ptr + n)
    off = tl.load(offsets_ptr + n)
    j = tl.arange(0, BLOCK_L)
    used = j < length
    labels = tl.load(targets_ptr + off + j, mask=used, other=0)
    rank = tl.load(rank_ptr + off + j, mask=used, other=0)
    factor = tl.load(scale_ptr + n).to(tl.float64)
    slot = off + n
    for t in range(0, frames):
        grad_row = grad_ptr + t * grad_stride_t + n * grad_stride_n
        blank_post = tl.load(post_ptr + t * post_stride_t + slot * post_stride_c).to(tl.float64)
        tl.store(grad_row + blank * grad_stride_c, cast(-factor * blank_post, grad_ptr.dtype.element_ty))
        post = tl.load(post_ptr + t * post_stride_t + (slot + 1 + j) * post_stride_c, mask=used, other=0.0).to(tl.float64)
        _subtract_by_rank(grad_row + labels * grad_stride_c, factor * post, used, rank, passes)

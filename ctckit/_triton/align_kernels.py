"""The Viterbi kernel: forced alignment of each item to its target.

The same trellis as the loss (:mod:`.trellis`: the lanes of the extended target, the
first states, the final states of eq. 8, the ring in global memory), with the sum of the
alpha recursion (eqs. 6-7) replaced by a max: ``delta_t(s) = log y^t_{l'_s} +
max(delta_{t-1}(s), delta_{t-1}(s-1), [delta_{t-1}(s-2)])``. Each frame records which
predecessor won as an int8 back-pointer; the trace back from the better final state
gives one class per frame and its log-probability. Ties break as in the Numba core.

:func:`.launch.viterbi` allocates the ring and back-pointers and launches it; a batch
whose back-pointers would pass the core's budget (``MAX_BACK_POINTER_BYTES``) goes to
:func:`_viterbi_bounded_kernel`, checkpointed as the core's ``_viterbi_item_bounded``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .trellis import end_states, first_states, item


@triton.jit
def _viterbi_step(slot, s, delta, skip_in):
    """One frame of the recursion, before the emission: ``(best, step)``, the best
    predecessor's score of each state and which one it is (0 stay, 1 from s-1, 2 from
    s-2; ties to the smallest jump). ``slot``: this frame's half of the ring."""
    tl.store(slot + s, delta)
    tl.debug_barrier()
    one = tl.load(slot + s - 1, mask=s >= 1, other=float("-inf"))
    two = tl.load(slot + s - 2, mask=skip_in, other=float("-inf"))
    from_one = one > delta
    best = tl.where(from_one, one, delta)
    from_two = two > best
    best = tl.where(from_two, two, best)
    return best, tl.where(from_two, 2, tl.where(from_one, 1, 0))


@triton.jit
def _emit(n, t, state, lp_ptr, stride_t, stride_n, stride_c, targets_ptr, off, blank, frames_max, alignment_ptr,
          score_ptr):
    """Frame t of the path: the class of ``state`` and its log-probability."""
    is_label = (state % 2) == 1
    label = tl.load(targets_ptr + off + (state - 1) // 2, mask=is_label, other=0)
    c = tl.where(is_label, label, blank)
    tl.store(alignment_ptr + n * frames_max + t, c)
    tl.store(score_ptr + n * frames_max + t, tl.load(lp_ptr + t * stride_t + n * stride_n + c * stride_c))


@triton.jit
def _final_state(delta, s, length, frames):
    """``(top, state)``: the path's score and its last state (the blank beats the label)."""
    last_blank, last_label = end_states(delta, s, length)
    use_label = last_label > last_blank
    top = tl.where(use_label, last_label, last_blank)
    top = tl.where(frames == 0, tl.where(length == 0, 0.0, float("-inf")), top)
    return top, tl.where(use_label, 2 * length - 1, 2 * length)


@triton.jit
def _viterbi_kernel(lp_ptr, stride_t, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr,
                    blank, ring_ptr, back_ptr, frames_max, alignment_ptr, score_ptr, best_ptr, BLOCK: tl.constexpr):
    """Forced alignment (max-product over the trellis, int8 back-pointers), with the Numba
    core's tie-breaking: stay beats s-1 beats s-2; at the end the blank beats the label."""
    n = tl.program_id(0).to(tl.int64)
    frames, length, off, s, valid, label_state, k, cls, skip_in, skip_out, repeats, row = item(
        n, lp_ptr, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr, blank, BLOCK)
    ring = ring_ptr + n * (2 * BLOCK)
    back = back_ptr + n * frames_max * BLOCK
    delta = tl.load(row, mask=first_states(s, valid, frames), other=float("-inf")).to(tl.float64)
    for t in range(1, frames):
        best, step = _viterbi_step(ring + (t % 2) * BLOCK, s, delta, skip_in)
        tl.store(back + t * BLOCK + s, step.to(tl.int8), mask=valid)
        delta = best + tl.load(row + t * stride_t, mask=valid, other=float("-inf")).to(tl.float64)
    top, state = _final_state(delta, s, length, frames)
    tl.store(best_ptr + n, top)
    tl.debug_barrier()
    if top > float("-inf"):
        for i in range(0, frames):
            t = frames - 1 - i
            _emit(n, t, state, lp_ptr, stride_t, stride_n, stride_c, targets_ptr, off, blank, frames_max, alignment_ptr,
                  score_ptr)
            step = tl.load(back + t * BLOCK + state, mask=t > 0, other=0)
            state = state - step.to(tl.int64)


@triton.jit
def _viterbi_bounded_kernel(lp_ptr, stride_t, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr,
                            target_lengths_ptr, blank, ring_ptr, checkpoint_ptr, back_ptr, frames_max, segment,
                            checkpoints_max, alignment_ptr, score_ptr, best_ptr, BLOCK: tl.constexpr):
    """:func:`_viterbi_kernel` in bounded memory (the Numba core's checkpointed Viterbi):
    the forward pass keeps the row of every ``segment``-th frame; the trace back recomputes
    one segment's back-pointers at a time from its checkpoint, with the same
    :func:`_viterbi_step`, so the same path. Segment j holds frames ``(j K, min((j + 1) K,
    T - 1)]``."""
    n = tl.program_id(0).to(tl.int64)
    frames, length, off, s, valid, label_state, k, cls, skip_in, skip_out, repeats, row = item(
        n, lp_ptr, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr, blank, BLOCK)
    ring = ring_ptr + n * (2 * BLOCK)
    checkpoints = checkpoint_ptr + n * checkpoints_max * BLOCK
    back = back_ptr + n * segment * BLOCK
    delta = tl.load(row, mask=first_states(s, valid, frames), other=float("-inf")).to(tl.float64)
    tl.store(checkpoints + s, delta)
    for t in range(1, frames):
        best, step = _viterbi_step(ring + (t % 2) * BLOCK, s, delta, skip_in)
        delta = best + tl.load(row + t * stride_t, mask=valid, other=float("-inf")).to(tl.float64)
        if t % segment == 0:
            tl.store(checkpoints + (t // segment) * BLOCK + s, delta)
    top, state = _final_state(delta, s, length, frames)
    tl.store(best_ptr + n, top)
    tl.debug_barrier()
    if top > float("-inf"):
        segments = (frames - 1 + segment - 1) // segment
        for i in range(0, segments):
            start = (segments - 1 - i) * segment
            end = tl.minimum(start + segment, frames - 1)
            delta = tl.load(checkpoints + (start // segment) * BLOCK + s)
            for t in range(start + 1, end + 1):
                best, step = _viterbi_step(ring + (t % 2) * BLOCK, s, delta, skip_in)
                tl.store(back + (t - start - 1) * BLOCK + s, step.to(tl.int8), mask=valid)
                delta = best + tl.load(row + t * stride_t, mask=valid, other=float("-inf")).to(tl.float64)
            tl.debug_barrier()
            for j in range(0, end - start):
                t = end - j
                _emit(n, t, state, lp_ptr, stride_t, stride_n, stride_c, targets_ptr, off, blank, frames_max,
                      alignment_ptr, score_ptr)
                state = state - tl.load(back + (t - start - 1) * BLOCK + state).to(tl.int64)
            tl.debug_barrier()
        if frames > 0:
            _emit(n, 0, state, lp_ptr, stride_t, stride_n, stride_c, targets_ptr, off, blank, frames_max, alignment_ptr,
                  score_ptr)

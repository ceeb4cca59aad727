"""The Viterbi kernel: forced alignment of each item to its target.

The same trellis as the loss (:mod:`.trellis`: the lanes of the extended target, the
first states, the final states of eq. 8, the ring in global memory), with the sum of the
alpha recursion (eqs. 6-7) replaced by a max: ``delta_t(s) = log y^t_{l'_s} +
max(delta_{t-1}(s), delta_{t-1}(s-1), [delta_{t-1}(s-2)])``. Each frame records which
predecessor won as an int8 back-pointer; the trace back from the better final state
gives one class per frame and its log-probability. Ties break as in the Numba core.

:func:`.launch.viterbi` allocates the ring and back-pointers and launches it.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .trellis import end_states, first_states, item


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
        slot = ring + (t % 2) * BLOCK
        tl.store(slot + s, delta)
        tl.debug_barrier()
        one = tl.load(slot + s - 1, mask=s >= 1, other=float("-inf"))
        two = tl.load(slot + s - 2, mask=skip_in, other=float("-inf"))
        from_one = one > delta
        best = tl.where(from_one, one, delta)
        from_two = two > best
        best = tl.where(from_two, two, best)
        step = tl.where(from_two, 2, tl.where(from_one, 1, 0))
        tl.store(back + t * BLOCK + s, step.to(tl.int8), mask=valid)
        delta = best + tl.load(row + t * stride_t, mask=valid, other=float("-inf")).to(tl.float64)
    last_blank, last_label = end_states(delta, s, length)
    use_label = last_label > last_blank
    top = tl.where(use_label, last_label, last_blank)
    top = tl.where(frames == 0, tl.where(length == 0, 0.0, float("-inf")), top)
    tl.store(best_ptr + n, top)
    state = tl.where(use_label, 2 * length - 1, 2 * length)
    tl.debug_barrier()
    if top > float("-inf"):
        for i in range(0, frames):
            t = frames - 1 - i
            is_label = (state % 2) == 1
            label = tl.load(targets_ptr + off + (state - 1) // 2, mask=is_label, other=0)
            c = tl.where(is_label, label, blank)
            tl.store(alignment_ptr + n * frames_max + t, c)
            score = tl.load(lp_ptr + t * stride_t + n * stride_n + c * stride_c)
            tl.store(score_ptr + n * frames_max + t, score)
            step = tl.load(back + t * BLOCK + state, mask=t > 0, other=0)
            state = state - step.to(tl.int64)

"""The trellis of one item, as Triton device functions shared by every kernel.

Lane ``s`` of a program is state ``s`` of the extended target ``l'`` (blank at even ``s``,
label ``(s - 1) / 2`` at odd ``s``, ``2L + 1`` states). Here: the log-sum-exp of two and
three terms (``-inf``, not NaN, when all are ``-inf``), the cast of a float64 value to an
output dtype, the lanes of an item (:func:`states`, :func:`item`), the two states a path
may start in and the two it may end in (the terms of eq. 8), and one frame of the alpha
recursion (eqs. 6-7) through the ring in global memory.

:mod:`.loss_kernels` builds the alpha and beta passes from these; :mod:`.align_kernels`
uses the lanes and the first and final states, with a max in place of the log-sum-exp.
Everything here is inlined into the kernels; nothing is launched on its own.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def lse2(a, b):
    top = tl.maximum(a, b)
    safe = tl.where(top == float("-inf"), 0.0, top)
    total = tl.where(top == float("-inf"), 1.0, tl.exp(a - safe) + tl.exp(b - safe))
    return tl.where(top == float("-inf"), float("-inf"), safe + tl.log(total))


@triton.jit
def lse3(a, b, c):
    """log(e^a + e^b + e^c); -inf (not NaN) when all three are -inf."""
    top = tl.maximum(tl.maximum(a, b), c)
    safe = tl.where(top == float("-inf"), 0.0, top)
    total = tl.where(top == float("-inf"), 1.0, tl.exp(a - safe) + tl.exp(b - safe) + tl.exp(c - safe))
    return tl.where(top == float("-inf"), float("-inf"), safe + tl.log(total))


@triton.jit
def cast(x, dtype):
    """``x.to(dtype)``, through float32 for the narrower types (one rounding step the
    interpreter also gets right for bfloat16)."""
    if dtype == tl.float64:
        return x.to(dtype)
    return x.to(tl.float32).to(dtype)


@triton.jit
def states(targets_ptr, off, length, blank, BLOCK: tl.constexpr):
    """The lanes of one item's extended target ``l'`` (length ``2L + 1``).

    Returns ``(s, valid, label_state, k, cls, skip_in, skip_out, repeats)``: lane index,
    lane in ``l'``, lane holds a label, its label index, its class, whether state ``s``
    may be entered from ``s - 2``, whether ``s + 2`` may be entered from ``s``, and the
    number of repeated neighbours (the target needs ``L + repeats`` frames)."""
    s = tl.arange(0, BLOCK)
    valid = s < 2 * length + 1
    label_state = valid & ((s % 2) == 1)
    k = tl.where(label_state, (s - 1) // 2, 0)
    label = tl.load(targets_ptr + off + k, mask=label_state, other=0)
    before = tl.load(targets_ptr + off + k - 1, mask=label_state & (k >= 1), other=-1)
    after = tl.load(targets_ptr + off + k + 1, mask=label_state & (k + 1 < length), other=-1)
    cls = tl.where(label_state, label, blank)
    skip_in = label_state & (k >= 1) & (label != before)
    skip_out = label_state & (k + 1 < length) & (label != after)
    repeats = tl.sum(tl.where(label_state & (k >= 1) & (label == before), 1, 0))
    return s, valid, label_state, k, cls, skip_in, skip_out, repeats


@triton.jit
def item(n, lp_ptr, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr, blank,
         BLOCK: tl.constexpr):
    """Item n's lengths, target offset, lanes (:func:`states`) and the pointers to each
    lane's class in frame 0 (add ``t * stride_t`` for frame t)."""
    frames = tl.load(input_lengths_ptr + n)
    length = tl.load(target_lengths_ptr + n)
    off = tl.load(offsets_ptr + n)
    s, valid, label_state, k, cls, skip_in, skip_out, repeats = states(targets_ptr, off, length, blank, BLOCK)
    return frames, length, off, s, valid, label_state, k, cls, skip_in, skip_out, repeats, lp_ptr + n * stride_n + cls * stride_c


@triton.jit
def first_states(s, valid, frames):
    """The lanes of frame 0: states 0 and 1, if the item has a frame."""
    return valid & (s < 2) & (s < 2 * frames)


@triton.jit
def end_states(row, s, length):
    """The two final states' values (the last blank, and the last label when L > 0)."""
    width = 2 * length + 1
    last_blank = tl.max(tl.where(s == width - 1, row, float("-inf")))
    last_label = tl.max(tl.where(s == width - 2, row, float("-inf")))  # no such lane when L = 0
    return last_blank, last_label


@triton.jit
def alpha_step(alpha, slot, s, skip_in, emit):
    """One frame of eq. 6: ``alpha`` (this lane's previous value) is already stored at
    ``slot + s`` for every lane; returns the new row."""
    tl.debug_barrier()
    one = tl.load(slot + s - 1, mask=s >= 1, other=float("-inf"))
    two = tl.load(slot + s - 2, mask=skip_in, other=float("-inf"))
    return lse3(alpha, one, two) + emit

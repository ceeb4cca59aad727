r"""The kernels of the loss on logits: the log-softmax of the used classes, and the logit gradient.

As :mod:`ctckit._core.logits` on the CPU: :func:`_gather_kernel` reads a frame of an
item's logits once, in blocks of classes, for its log-sum-exp ``lse`` (a maximum, then
``sum exp(x - max)``, in float64) and writes the log-softmax of the classes the item uses
only (``class_of_column``: its distinct classes, blank first), the (T, N, K) input of the
loss kernels (:mod:`.loss_kernels`). :func:`_logit_gradient_kernel` writes
``scale[n] * (exp(x - lse) - posterior)``: the softmax over every class, then, after a
barrier, the classes the item uses again with their posteriors (each class once per
item: no two lanes write one entry). One program per (frame, item).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .trellis import cast


@triton.jit
def _gather_kernel(x_ptr, stride_t, stride_n, stride_c, classes, size, input_lengths_ptr, class_ptr, width, lse_ptr,
                   compact_ptr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    """``lse[t, n]`` and ``compact[t, n, j] = x[t, n, class_of_column[n, j]] - lse[t, n]``
    (``-inf`` where the class is ``-1``); zeros on frames past the item's length.
    ``lse`` and ``compact`` are contiguous float64 (T, N) and (T, N, width)."""
    pid = tl.program_id(0).to(tl.int64)
    t, n = pid // size, pid % size
    frames = tl.load(input_lengths_ptr + n)
    j = tl.arange(0, BLOCK_W)
    in_width = j < width
    out = compact_ptr + pid * width + j
    if t >= frames:
        tl.store(lse_ptr + pid, 0.0)
        tl.store(out, tl.zeros((BLOCK_W,), dtype=tl.float64), mask=in_width)
        return
    row = x_ptr + t * stride_t + n * stride_n
    c = tl.arange(0, BLOCK_C)
    top = tl.full((BLOCK_C,), float("-inf"), dtype=tl.float64)
    for start in range(0, classes, BLOCK_C):
        x = tl.load(row + (start + c) * stride_c, mask=start + c < classes, other=float("-inf")).to(tl.float64)
        top = tl.maximum(top, x)
    top_all = tl.max(top, axis=0)
    total = tl.zeros((BLOCK_C,), dtype=tl.float64)
    for start in range(0, classes, BLOCK_C):
        x = tl.load(row + (start + c) * stride_c, mask=start + c < classes, other=float("-inf")).to(tl.float64)
        total += tl.exp(x - top_all)
    log_norm = top_all + tl.log(tl.sum(total, axis=0))
    tl.store(lse_ptr + pid, log_norm)
    cls = tl.load(class_ptr + n * width + j, mask=in_width, other=-1)
    used = cls >= 0
    x = tl.load(row + tl.where(used, cls, 0) * stride_c, mask=used, other=float("-inf")).to(tl.float64)
    tl.store(out, tl.where(used, x - log_norm, float("-inf")), mask=in_width)


@triton.jit
def _logit_gradient_kernel(x_ptr, stride_t, stride_n, stride_c, classes, size, input_lengths_ptr, class_ptr, width,
                           lse_ptr, post_ptr, scale_ptr, out_ptr, out_stride_t, out_stride_n, out_stride_c,
                           BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    """``out[t, n, c] = scale[n] * (exp(x[t, n, c] - lse[t, n]) + post[t, n, j])`` for ``c =
    class_of_column[n, j]`` (``post``: minus the posteriors, (T, N, width) contiguous), the
    softmax term alone for the other classes; zeros on frames past the item's length and
    where ``scale[n]`` is 0."""
    pid = tl.program_id(0).to(tl.int64)
    t, n = pid // size, pid % size
    frames = tl.load(input_lengths_ptr + n)
    factor = tl.load(scale_ptr + n)
    row = x_ptr + t * stride_t + n * stride_n
    out = out_ptr + t * out_stride_t + n * out_stride_n
    c = tl.arange(0, BLOCK_C)
    if (t >= frames) | (factor == 0.0):
        for start in range(0, classes, BLOCK_C):
            tl.store(out + (start + c) * out_stride_c, tl.zeros((BLOCK_C,), dtype=out_ptr.dtype.element_ty),
                     mask=start + c < classes)
        return
    log_norm = tl.load(lse_ptr + pid)
    for start in range(0, classes, BLOCK_C):
        inside = start + c < classes
        x = tl.load(row + (start + c) * stride_c, mask=inside, other=float("-inf")).to(tl.float64)
        tl.store(out + (start + c) * out_stride_c, cast(factor * tl.exp(x - log_norm), out_ptr.dtype.element_ty), mask=inside)
    tl.debug_barrier()  # the softmax stores above come first: the used classes' entries are written again below
    j = tl.arange(0, BLOCK_W)
    cls = tl.load(class_ptr + n * width + j, mask=j < width, other=-1)
    used = cls >= 0
    safe = tl.where(used, cls, 0)
    x = tl.load(row + safe * stride_c, mask=used, other=float("-inf")).to(tl.float64)
    post = tl.load(post_ptr + pid * width + j, mask=used, other=0.0).to(tl.float64)
    value = factor * (tl.exp(x - log_norm) + post)
    tl.store(out + safe * out_stride_c, cast(value, out_ptr.dtype.element_ty), mask=used)

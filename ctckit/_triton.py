r"""The CTC loss, its gradient and forced alignment as Triton kernels, for CUDA tensors.

One program per batch item walks the frames of its trellis; the lanes of the program
are the extended-label states ``s`` (blank at even ``s``, label ``(s - 1) / 2`` at odd
``s``), so a frame is one vector step. Recursions run in float64 log space (Graves et
al., 2006, eqs. 6-11), whatever the input dtype (float16, bfloat16, float32, float64):

.. math::
    \alpha_t(s) = \log y^t_{l'_s} + \mathrm{lse}\big(\alpha_{t-1}(s), \alpha_{t-1}(s-1),
                  [\alpha_{t-1}(s-2)]\big), \qquad
    \hat\beta_t(s) = \mathrm{lse}\big(\beta_{t+1}(s), \beta_{t+1}(s+1), [\beta_{t+1}(s+2)]\big)

with :math:`\beta_t = \hat\beta_t + \log y^t_{l'_s}` and the posterior of state ``s`` at
frame ``t`` :math:`\gamma_t(s) = \exp(\alpha_t(s) + \hat\beta_t(s) - \log p)`, which is
never ``-inf - (-inf)`` even where a class is masked.

A frame's neighbours ``s - 1`` and ``s - 2`` live in other lanes: each step stores the
row to a two-slot ring in global memory, waits at a barrier, and loads it shifted.

Memory: with a gradient, the alpha pass stores a float64 checkpoint row every
``K = ceil(sqrt(T))`` frames; the beta pass recomputes each segment of ``K`` frames from its
checkpoint, last segment first, and writes the dense gradient or the compact posteriors
(whichever is smaller) as it goes. Both run inside the loss's forward; only that result
is kept for the backward (:func:`memory_bytes`).

Deterministic: no atomics. Per-class sums over a frame's states are fixed-order
reductions; a label that occurs ``r`` times in a target is added in ``r`` ordered
passes (``rank[k]``: how often label ``k`` occurred earlier in its target), so no two
lanes ever write one gradient entry at once.

``TRITON_INTERPRET=1`` runs the same kernels on the CPU with CPU tensors (how the
tests run them without a GPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

from ._inputs import Batch

_MIN_BLOCK = 16


@triton.jit
def _lse2(a, b):
    top = tl.maximum(a, b)
    safe = tl.where(top == float("-inf"), 0.0, top)
    total = tl.where(top == float("-inf"), 1.0, tl.exp(a - safe) + tl.exp(b - safe))
    return tl.where(top == float("-inf"), float("-inf"), safe + tl.log(total))


@triton.jit
def _lse3(a, b, c):
    """log(e^a + e^b + e^c); -inf (not NaN) when all three are -inf."""
    top = tl.maximum(tl.maximum(a, b), c)
    safe = tl.where(top == float("-inf"), 0.0, top)
    total = tl.where(top == float("-inf"), 1.0, tl.exp(a - safe) + tl.exp(b - safe) + tl.exp(c - safe))
    return tl.where(top == float("-inf"), float("-inf"), safe + tl.log(total))


@triton.jit
def _cast(x, dtype):
    """``x.to(dtype)``, through float32 for the narrower types (one rounding step the
    interpreter also gets right for bfloat16)."""
    if dtype == tl.float64:
        return x.to(dtype)
    return x.to(tl.float32).to(dtype)


@triton.jit
def _states(targets_ptr, off, length, blank, BLOCK: tl.constexpr):
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
def _item(n, lp_ptr, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr, blank,
          BLOCK: tl.constexpr):
    """Item n's lengths, target offset, lanes (:func:`_states`) and the pointers to each
    lane's class in frame 0 (add ``t * stride_t`` for frame t)."""
    frames = tl.load(input_lengths_ptr + n)
    length = tl.load(target_lengths_ptr + n)
    off = tl.load(offsets_ptr + n)
    s, valid, label_state, k, cls, skip_in, skip_out, repeats = _states(targets_ptr, off, length, blank, BLOCK)
    return frames, length, off, s, valid, label_state, k, cls, skip_in, skip_out, repeats, lp_ptr + n * stride_n + cls * stride_c


@triton.jit
def _first_states(s, valid, frames):
    """The lanes of frame 0: states 0 and 1, if the item has a frame."""
    return valid & (s < 2) & (s < 2 * frames)


@triton.jit
def _end_states(row, s, length):
    """The two final states' values (the last blank, and the last label when L > 0)."""
    width = 2 * length + 1
    last_blank = tl.max(tl.where(s == width - 1, row, float("-inf")))
    last_label = tl.max(tl.where(s == width - 2, row, float("-inf")))  # no such lane when L = 0
    return last_blank, last_label


@triton.jit
def _alpha_step(alpha, slot, s, skip_in, emit):
    """One frame of eq. 6: ``alpha`` (this lane's previous value) is already stored at
    ``slot + s`` for every lane; returns the new row."""
    tl.debug_barrier()
    one = tl.load(slot + s - 1, mask=s >= 1, other=float("-inf"))
    two = tl.load(slot + s - 2, mask=skip_in, other=float("-inf"))
    return _lse3(alpha, one, two) + emit


@triton.jit
def _alpha_kernel(lp_ptr, stride_t, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr,
                  blank, ring_ptr, checkpoint_ptr, segment, checkpoints, log_p_ptr,
                  BLOCK: tl.constexpr, STORE: tl.constexpr):
    """log p(l_n | x_n) into ``log_p[n]`` (-inf when infeasible, NaN when a used log-prob
    is NaN); with ``STORE``, the alpha row of every ``segment``-th frame into
    ``checkpoint[n, t // segment]`` for the backward pass to recompute the others."""
    n = tl.program_id(0).to(tl.int64)
    frames, length, off, s, valid, label_state, k, cls, skip_in, skip_out, repeats, row = _item(
        n, lp_ptr, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr, blank, BLOCK)
    ring = ring_ptr + n * (2 * BLOCK)
    checkpoint = checkpoint_ptr + n * checkpoints * BLOCK
    first = _first_states(s, valid, frames)
    alpha = tl.load(row, mask=first, other=float("-inf")).to(tl.float64)
    nans = tl.sum(tl.where(first & (alpha != alpha), 1, 0))
    if STORE:
        tl.store(checkpoint + s, alpha)
    for t in range(1, frames):
        slot = ring + (t % 2) * BLOCK
        tl.store(slot + s, alpha)
        emit = tl.load(row + t * stride_t, mask=valid, other=float("-inf")).to(tl.float64)
        nans += tl.sum(tl.where(valid & (emit != emit), 1, 0))
        alpha = _alpha_step(alpha, slot, s, skip_in, emit)
        if STORE:
            if t % segment == 0:
                tl.store(checkpoint + (t // segment) * BLOCK + s, alpha)
    last_blank, last_label = _end_states(alpha, s, length)
    log_p = _lse2(last_blank, last_label)
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
    frames, length, off, s, valid, label_state, k, cls, skip_in, skip_out, repeats, row = _item(
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
                alpha = _alpha_step(alpha, rows + (t - 1 - start) * BLOCK, s, skip_in, emit)
                tl.store(rows + (t - start) * BLOCK + s, alpha)
            for i in range(0, stop - start):
                t = stop - 1 - i
                if t < frames - 1:
                    slot_ring = ring + (t % 2) * BLOCK
                    tl.store(slot_ring + s, beta)
                    tl.debug_barrier()
                    one = tl.load(slot_ring + s + 1, mask=s + 1 < BLOCK, other=float("-inf"))
                    two = tl.load(slot_ring + s + 2, mask=skip_out, other=float("-inf"))
                    after = _lse3(beta, one, two)
                emit = tl.load(row + t * stride_t, mask=valid, other=float("-inf")).to(tl.float64)
                alpha = tl.load(rows + (t - start) * BLOCK + s)  # this lane's own store: no barrier needed
                post = tl.where(valid, tl.exp(alpha + after - log_p), 0.0)
                blank_post = tl.sum(tl.where(label_state, 0.0, post))
                if COMPACT:
                    base = out_ptr + t * out_stride_t
                    tl.store(base + slot * out_stride_c, _cast(blank_post, out_type))
                    tl.store(base + (slot + 1 + k) * out_stride_c, _cast(post, out_type), mask=label_state)
                else:
                    grad_row = out_ptr + t * out_stride_t + n * out_stride_n
                    blank_base = 0.0
                    if TORCH_GRAD:
                        for c0 in range(0, classes, BLOCK_C):
                            c = c0 + tl.arange(0, BLOCK_C)
                            y = tl.load(lp_ptr + t * stride_t + n * stride_n + c * stride_c, mask=c < classes,
                                        other=float("-inf"))
                            tl.store(grad_row + c * out_stride_c, _cast(tl.exp(y.to(tl.float64)), out_type), mask=c < classes)
                        blank_base = tl.exp(tl.load(lp_ptr + t * stride_t + n * stride_n + blank * stride_c).to(tl.float64))
                    tl.debug_barrier()
                    tl.store(grad_row + blank * out_stride_c, _cast(blank_base - blank_post, out_type))
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
        tl.store(pointers, _cast(current - values, pointers.dtype.element_ty), mask=selected)


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
        tl.store(grad_row + blank * grad_stride_c, _cast(-factor * blank_post, grad_ptr.dtype.element_ty))
        post = tl.load(post_ptr + t * post_stride_t + (slot + 1 + j) * post_stride_c, mask=used, other=0.0).to(tl.float64)
        _subtract_by_rank(grad_row + labels * grad_stride_c, factor * post, used, rank, passes)


@triton.jit
def _viterbi_kernel(lp_ptr, stride_t, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr,
                    blank, ring_ptr, back_ptr, frames_max, alignment_ptr, score_ptr, best_ptr, BLOCK: tl.constexpr):
    """Forced alignment (max-product over the trellis, int8 back-pointers), with the Numba
    core's tie-breaking: stay beats s-1 beats s-2; at the end the blank beats the label."""
    n = tl.program_id(0).to(tl.int64)
    frames, length, off, s, valid, label_state, k, cls, skip_in, skip_out, repeats, row = _item(
        n, lp_ptr, stride_n, stride_c, targets_ptr, offsets_ptr, input_lengths_ptr, target_lengths_ptr, blank, BLOCK)
    ring = ring_ptr + n * (2 * BLOCK)
    back = back_ptr + n * frames_max * BLOCK
    delta = tl.load(row, mask=_first_states(s, valid, frames), other=float("-inf")).to(tl.float64)
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
    last_blank, last_label = _end_states(delta, s, length)
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


def _block(max_length: int) -> int:
    return max(_MIN_BLOCK, triton.next_power_of_2(2 * max_length + 1))


def _warps(block: int) -> int:
    return 4 if block <= 512 else 8 if block <= 2048 else 16


def label_ranks(batch: Batch) -> tuple[np.ndarray, int]:
    """``rank[k]``: how often target label ``k`` occurred earlier in its item's target, and
    the number of rank passes (1 + the largest rank; 0 without labels)."""
    lengths = batch.target_lengths
    count = int(lengths.sum())
    rank = np.zeros(batch.targets.shape[0], dtype=np.int64)
    if count == 0:
        return rank, 0
    item = np.repeat(np.arange(lengths.shape[0]), lengths)
    positions = batch.offsets[item] + np.arange(count) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    labels = batch.targets[positions]
    order = np.lexsort((positions, labels, item))  # by item, then label, then position
    keys = np.stack([item[order], labels[order]])
    starts = np.flatnonzero(np.concatenate([[True], (keys[:, 1:] != keys[:, :-1]).any(0)]))
    group_start = np.repeat(starts, np.diff(np.append(starts, count)))
    rank[positions[order]] = np.arange(count) - group_start
    return rank, int(rank.max()) + 1


class DeviceBatch:
    """A validated :class:`Batch` on the device, with the label ranks and the block size."""

    def __init__(self, batch: Batch, device: torch.device):
        to = lambda array: torch.from_numpy(np.ascontiguousarray(array)).to(device)
        rank, self.passes = label_ranks(batch)
        self.targets, self.offsets = to(batch.targets), to(batch.offsets)
        self.input_lengths, self.target_lengths, self.rank = to(batch.input_lengths), to(batch.target_lengths), to(rank)
        self.size = batch.input_lengths.shape[0]
        self.max_length = int(batch.target_lengths.max(initial=0))
        self.block = _block(self.max_length)

    def index_args(self):
        return self.targets, self.offsets, self.input_lengths, self.target_lengths


def _segment(frames: int) -> int:
    """Frames per recomputed segment: sqrt(T) keeps checkpoints plus one segment smallest."""
    return max(1, math.isqrt(max(frames - 1, 0)) + 1)


def workspace_shapes(frames: int, size: int, block: int, grad: bool) -> dict:
    """The float64 working buffers of one loss call (freed when it returns), by name."""
    if not grad:
        return {"ring": (size, 2, block)}
    segment = _segment(frames)
    return {"ring": (size, 2, block), "checkpoints": (size, -(-frames // segment), block), "rows": (size, segment, block)}


def memory_bytes(frames: int, size: int, classes: int, num_targets: int, max_length: int, itemsize: int,
                 torch_grad: bool = False) -> dict:
    """Bytes of a loss call with a gradient on (T, N, C) log-probs of ``itemsize`` bytes:
    ``kept``, what the forward keeps for the backward (the dense gradient or the compact
    posteriors, whichever is smaller; dense for torch's convention), and ``working``, the
    float64 buffers of the forward (:func:`workspace_shapes`)."""
    compact = not torch_grad and num_targets + size < size * classes
    kept = frames * (num_targets + size if compact else size * classes) * itemsize
    working = sum(math.prod(shape) for shape in workspace_shapes(frames, size, _block(max_length), True).values()) * 8
    return {"kept": kept, "working": working, "compact": compact}


def negative_log_likelihood(log_probs: torch.Tensor, batch: DeviceBatch, blank: int, grad: str, torch_grad: bool):
    """Per-item ``-log p(l_n | x_n)`` (float64, (N,)) and, by ``grad`` (``"none"``,
    ``"dense"``, ``"compact"``), nothing, the gradient of the summed loss or the compact
    posteriors, as :func:`ctckit._core.negative_log_likelihood` returns them.

    Working memory, all float64 and freed on return: a two-row ring per item, and with a
    gradient ``ceil(T / K) + K`` alpha rows per item (checkpoints and one segment of
    ``K = ceil(sqrt(T))`` frames), each ``next_pow2(2 S + 1)`` states wide."""
    frames, size, classes = log_probs.shape
    device, block = log_probs.device, batch.block
    store = grad != "none"
    work = {name: torch.empty(shape, dtype=torch.float64, device=device)
            for name, shape in workspace_shapes(frames, size, block, store).items()}
    ring = work["ring"]
    checkpoint, rows = work.get("checkpoints", ring), work.get("rows", ring)  # (unused without a gradient)
    segment, checkpoints = (rows.shape[1], checkpoint.shape[1]) if store else (frames, 1)
    log_p = torch.empty(size, dtype=torch.float64, device=device)
    strides = log_probs.stride()
    _alpha_kernel[(size,)](log_probs, *strides, *batch.index_args(), blank, ring, checkpoint, segment, checkpoints, log_p,
                           BLOCK=block, STORE=store, num_warps=_warps(block))
    nll = torch.where(log_p == float("-inf"), float("inf"), 0.0 - log_p)  # NaN stays NaN; 0.0 - 0.0 is not -0.0
    if not store:
        return nll, None
    if grad == "dense":
        out = log_probs.new_zeros(log_probs.shape)
        out_strides = out.stride()
    else:
        out = log_probs.new_zeros((frames, batch.targets.numel() + size))
        out_strides = (out.stride(0), 0, out.stride(1))
    _beta_kernel[(size,)](log_probs, *strides, *batch.index_args(), blank, ring, checkpoint, segment, checkpoints, rows,
                          log_p, batch.rank, batch.passes, classes, out, *out_strides,
                          BLOCK=block, BLOCK_C=min(1024, triton.next_power_of_2(classes)), COMPACT=grad == "compact",
                          TORCH_GRAD=torch_grad, num_warps=_warps(block))
    return nll, out


def scatter_gradient(posteriors: torch.Tensor, batch: DeviceBatch, blank: int, scale: torch.Tensor, classes: int) -> torch.Tensor:
    """The dense gradient of ``sum_n scale[n] * nll[n]`` from compact posteriors."""
    frames = posteriors.shape[0]
    grad = posteriors.new_zeros((frames, batch.size, classes))
    block_l = max(_MIN_BLOCK, triton.next_power_of_2(batch.max_length))
    scale = scale.to(device=posteriors.device, dtype=torch.float64).contiguous()
    _scatter_kernel[(batch.size,)](posteriors, posteriors.stride(0), posteriors.stride(1), *batch.index_args(),
                                   batch.rank, batch.passes, blank, scale, grad, *grad.stride(),
                                   BLOCK_L=block_l, num_warps=_warps(block_l))
    return grad


def viterbi(log_probs: torch.Tensor, batch: DeviceBatch, blank: int):
    """``(alignments (N, T) int64, scores (N, T) in the dtype of log_probs, best (N,) float64)``:
    frames past an item's length hold -1 and 0; an item without a path gets ``best = -inf``."""
    frames, size, _ = log_probs.shape
    device, block = log_probs.device, batch.block
    alignments = torch.full((size, frames), -1, dtype=torch.int64, device=device)
    scores = log_probs.new_zeros((size, frames))
    best = torch.empty(size, dtype=torch.float64, device=device)
    ring = torch.empty((size, 2, block), dtype=torch.float64, device=device)
    back = torch.empty((size, frames, block), dtype=torch.int8, device=device)
    _viterbi_kernel[(size,)](log_probs, *log_probs.stride(), *batch.index_args(), blank, ring, back, frames,
                             alignments, scores, best, BLOCK=block, num_warps=_warps(block))
    return alignments, scores, best

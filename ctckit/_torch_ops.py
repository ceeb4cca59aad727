"""The CTC loss in plain torch operations, for tensors on any device.

A loop over time, vectorised over items and extended-label states, in log space
(Graves 2006, eqs. 6-8); autograd differentiates it, which gives the exact gradient
w.r.t. ``log_probs``. Slower and hungrier than the Numba core (autograd keeps every
frame's alpha), but it runs wherever torch runs (CUDA, MPS, XPU) and is the reference
for devices without a dedicated kernel. Accumulates in float32 or wider.
"""

from __future__ import annotations

import torch
from torch import Tensor

_NEG_INF = float("-inf")


def _logsumexp3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """log(e^a + e^b + e^c), -inf when all are -inf, with finite gradients everywhere
    (the double ``where`` keeps 0/0 out of the backward)."""
    top = torch.maximum(a, torch.maximum(b, c))
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top)).detach()
    total = (a - top).exp() + (b - top).exp() + (c - top).exp()
    positive = total > 0
    return torch.where(positive, top + torch.where(positive, total, torch.ones_like(total)).log(), torch.full_like(total, _NEG_INF))


def negative_log_likelihood(log_probs: Tensor, targets: Tensor, offsets: Tensor, input_lengths: Tensor,
                            target_lengths: Tensor, blank: int, torch_grad: bool, longest: int | None = None) -> Tensor:
    """Per-item ``-log p(l_n | x_n)`` (N,), differentiable w.r.t. ``log_probs`` (T, N, C).

    ``targets`` 1-D int64 with item n's labels at ``offsets[n] : offsets[n] + target_lengths[n]``,
    all validated and on ``log_probs``' device. Infeasible items give ``+inf`` and no gradient;
    a NaN among an item's used log-probs gives a NaN loss (as the other backends).
    """
    frames, size, _ = log_probs.shape
    device = log_probs.device
    work = log_probs if log_probs.dtype in (torch.float32, torch.float64) else log_probs.float()
    if longest is None:  # (known on the host when validated there: no device sync, and meta tensors work)
        longest = int(target_lengths.max()) if size else 0
    width = 2 * longest + 1
    position = torch.arange(longest, device=device)
    used = position[None, :] < target_lengths[:, None]
    labels = torch.where(used, targets[(offsets[:, None] + position[None, :]).clamp(max=max(targets.numel() - 1, 0))]
                         if targets.numel() else torch.zeros_like(used, dtype=torch.long), torch.full_like(used, blank, dtype=torch.long))
    extended = torch.full((size, width), blank, dtype=torch.long, device=device)
    extended[:, 1::2] = labels
    skip = torch.zeros((size, width), dtype=torch.bool, device=device)
    skip[:, 3::2] = labels[:, 1:] != labels[:, :-1]

    frame_used = torch.arange(frames, device=device)[:, None] < input_lengths[None, :]  # (T, N)
    safe = torch.where(frame_used[:, :, None], work, torch.zeros_like(work))  # padding frames: no NaN in the backward
    emit = safe.gather(2, extended[None].expand(frames, size, width))  # (T, N, L')

    neg_inf = torch.full((size, width), _NEG_INF, dtype=work.dtype, device=device)
    alpha = neg_inf.clone()
    alpha[:, 0] = emit[0, :, 0]
    if width > 1:
        alpha[:, 1] = emit[0, :, 1]
    for t in range(1, frames):
        one = torch.cat([neg_inf[:, :1], alpha[:, :-1]], 1)
        two = torch.where(skip, torch.cat([neg_inf[:, :2], alpha[:, :-2]], 1), neg_inf)
        step = _logsumexp3(alpha, one, two) + emit[t]
        alpha = torch.where(frame_used[t][:, None], step, alpha)

    last = (2 * target_lengths)[:, None]
    end_blank = alpha.gather(1, last)[:, 0]
    end_label = alpha.gather(1, (last - 1).clamp(min=0))[:, 0]
    end_label = torch.where(target_lengths > 0, end_label, torch.full_like(end_label, _NEG_INF))
    log_p = _logsumexp3(end_blank, end_label, torch.full_like(end_label, _NEG_INF))
    log_p = torch.where(input_lengths == 0, torch.where(target_lengths == 0, 0.0, _NEG_INF).to(log_p), log_p)
    repeats = ((labels[:, 1:] == labels[:, :-1]) & used[:, 1:]).sum(1) if longest > 1 else torch.zeros_like(target_lengths)
    poisoned = torch.isnan(emit.detach()).any(2).any(0)
    log_p = log_p + torch.where(poisoned, float("nan"), 0.0).to(log_p)
    log_p = torch.where(target_lengths + repeats > input_lengths, _NEG_INF, log_p)
    feasible = log_p > _NEG_INF
    nll = torch.where(log_p == _NEG_INF, float("inf"), 0.0 - log_p)
    if torch_grad:  # torch's convention: add exp(log_probs) to the gradient (value unchanged)
        counted = frame_used[:, :, None] & feasible[None, :, None]
        y = torch.where(counted, work, torch.full_like(work, _NEG_INF)).exp().detach()
        term = (y * torch.where(y > 0, work, torch.zeros_like(work))).sum((0, 2))  # no 0 * -inf, no NaN padding
        nll = nll + (term - term.detach())
    return nll.to(torch.float64)

"""The PyTorch frontend: a drop-in for ``torch.nn.functional.ctc_loss`` and ``torch.nn.CTCLoss``.

The loss is the operator ``ctckit::ctc_loss`` (a ``torch.library.custom_op`` with a
shape-only fake and an autograd formula), so it works under ``torch.compile``.
Its forward computes the per-item losses and, when ``log_probs`` requires grad, the
per-item gradient in the same pass; the backward only scales that gradient by the
upstream one.

This module is the API and its autograd glue. The backends (the Numba core for CPU
tensors, Triton kernels for CUDA tensors, plain torch operations for any other device),
the choice between them and the host copies live in :mod:`ctckit._torch_backends`.
"""


from functools import partial

import torch
from torch import Tensor

from . import _core, _decode
from ._decode import TokenSpan
from ._inputs import check_choice, check_gradient, check_options, check_shapes
from ._torch_backends import BACKENDS, BY_NAME, to_numpy
from ._torch_backends import choose as _choose_backend
from ._torch_logits import CTCLossFromLogits, ctc_loss_from_logits
from ._torch_common import (NoDoubleBackward, as_index_tensor, check_float_tensor, loss_dtype, plain_eager, reduced,
                            validated)
from ._words import WordSpan, align_words, to_dicts, to_srt, to_webvtt, word_spans

__all__ = ["ctc_loss", "CTCLoss", "ctc_loss_from_logits", "CTCLossFromLogits", "forced_align", "merge_tokens", "greedy_decode", "beam_search", "ctc_posteriors",
           "TokenSpan", "WordSpan", "word_spans", "align_words", "to_dicts", "to_srt", "to_webvtt"]


def _saved_kind(log_probs_shape, num_targets, torch_grad, need_grad):
    """What the forward keeps for the backward: nothing, compact posteriors, or the dense
    gradient, whichever is smaller. Asked of concrete shapes only (in the operators'
    implementations): on symbolic shapes the comparison would be a guard, and a batch that
    crosses the line would compile another graph. See :func:`_saved_numel`."""
    if not need_grad:
        return "none"
    _, batch, classes = log_probs_shape
    return "compact" if not torch_grad and _core.compact_is_smaller(num_targets, batch, classes) else "dense"


def _saved_numel(log_probs_shape, num_targets, torch_grad, need_grad):
    """The number of elements of what the forward keeps, whichever :func:`_saved_kind` it is:
    the smaller of the two sizes, a ``sym_min`` that needs no guard on symbolic shapes.
    The forward returns it flat, and the backward reshapes it by its kind."""
    if not need_grad:
        return 0
    frames, batch, classes = log_probs_shape
    if torch_grad:
        return frames * batch * classes
    return frames * torch.sym_min(num_targets + batch, batch * classes)


@torch.library.custom_op("ctckit::ctc_loss", mutates_args=())
def _ctc_loss_op(
    log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
    blank: int, torch_grad: bool, need_grad: bool, engine: str = "numba",
) -> tuple[Tensor, Tensor]:
    """Per-item losses (float64, (N,)) and what the backward needs, flat: if ``need_grad``,
    the per-item gradients (T, N, C), or the compact posteriors (T, len(targets) + N) when
    they are smaller (see :func:`_saved_numel`); an empty tensor otherwise.
    ``log_probs``: (T, N, C); ``engine="numba"``:
    float32/float64 on the CPU; ``"triton"``: any float dtype on a CUDA device (or the CPU
    under ``TRITON_INTERPRET=1``)."""
    return _loss_impl(log_probs, targets, input_lengths, target_lengths, blank, torch_grad, need_grad, engine)


def _loss_impl(log_probs, targets, input_lengths, target_lengths, blank, torch_grad, need_grad, engine, batch=None):
    """The operator's computation, on the backend named ``engine``; ``batch``: the validated
    index arrays, when the caller (the eager path) already has them."""
    if batch is None:  # the operator's call (torch.compile, torch.export): its values are checked here, by design
        batch = validated(log_probs.shape, targets, input_lengths, target_lengths, blank)
    kind = _saved_kind(log_probs.shape, targets.numel(), torch_grad, need_grad)
    nll, saved = BY_NAME[engine].loss(log_probs.detach(), batch, blank, kind, torch_grad)
    return nll, (log_probs.new_empty(0) if saved is None else saved.reshape(-1))


@_ctc_loss_op.register_fake
def _ctc_loss_fake(log_probs, targets, input_lengths, target_lengths, blank, torch_grad, need_grad, engine="numba"):
    shapes = check_shapes(log_probs.shape, targets.shape, input_lengths.shape, target_lengths.shape)
    nll = log_probs.new_empty((shapes.batch,), dtype=torch.float64)
    return nll, log_probs.new_empty((_saved_numel(log_probs.shape, targets.numel(), torch_grad, need_grad),))


@torch.library.custom_op("ctckit::ctc_loss_gradient", mutates_args=())
def _gradient_op(
    saved: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor, scale: Tensor,
    blank: int, frames: int, classes: int, torch_grad: bool, engine: str = "numba",
) -> Tensor:
    """The dense gradient (T, N, C) of ``sum_n scale[n] * loss_n`` from what the forward
    kept (flat): the gradient itself, or compact posteriors, scattered."""
    return _gradient_impl(saved, targets, input_lengths, target_lengths, scale, blank, frames, classes, torch_grad, engine)


def _gradient_impl(saved, targets, input_lengths, target_lengths, scale, blank, frames, classes, torch_grad, engine,
                   batch=None):
    shape = (frames, input_lengths.shape[0], classes)
    if _saved_kind(shape, targets.numel(), torch_grad, True) == "dense":
        return saved.view(shape) * scale.to(saved.dtype)[None, :, None]
    if batch is None:  # the operator's call: checked here, as in _loss_impl
        batch = validated(shape, targets, input_lengths, target_lengths, blank)
    return BY_NAME[engine].scatter(saved.view(frames, -1), batch, blank, scale.detach(), classes)


@_gradient_op.register_fake
def _gradient_fake(saved, targets, input_lengths, target_lengths, scale, blank, frames, classes, torch_grad, engine="numba"):
    return saved.new_empty((frames, input_lengths.shape[0], classes))


def _setup_context(ctx, inputs, output):
    log_probs, targets, input_lengths, target_lengths, blank, torch_grad, need_grad, engine = inputs
    ctx.blank, ctx.torch_grad, ctx.need_grad, ctx.engine = blank, torch_grad, need_grad, engine
    ctx.save_for_backward(output[1], log_probs, targets, input_lengths, target_lengths)


def _backward(ctx, grad_nll, _grad_of_saved):
    saved, log_probs, targets, input_lengths, target_lengths = ctx.saved_tensors
    if getattr(ctx, "eager", False):  # the forward's validated batch: the saved tensors are unchanged (autograd checks)
        loss, gradient = partial(_loss_impl, batch=ctx.batch), partial(_gradient_impl, batch=ctx.batch)
    else:
        loss, gradient = _ctc_loss_op, _gradient_op
    if not ctx.need_grad:  # the forward ran without the gradient: compute it now
        _, saved = loss(log_probs.detach(), targets, input_lengths, target_lengths, ctx.blank, ctx.torch_grad, True, ctx.engine)
    frames, _, classes = log_probs.shape
    grad = gradient(saved, targets, input_lengths, target_lengths, grad_nll, ctx.blank, frames, classes, ctx.torch_grad,
                    ctx.engine)
    if torch.is_grad_enabled() and log_probs.requires_grad:
        grad = NoDoubleBackward.apply(grad, log_probs)
    return grad, None, None, None, None, None, None, None


_ctc_loss_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerLoss(torch.autograd.Function):
    """The operator's forward and backward without the operator: for plain tensors outside
    ``torch.compile``/``torch.export``, where the operator's dispatch costs time on every
    call, and its first call imports ``torch._dynamo`` (about 1.5 s)."""

    @staticmethod
    def forward(ctx, log_probs, targets, input_lengths, target_lengths, blank, torch_grad, need_grad, engine, batch=None):
        inputs = (log_probs, targets, input_lengths, target_lengths, blank, torch_grad, need_grad, engine)
        if batch is None:
            batch = validated(log_probs.shape, targets, input_lengths, target_lengths, blank)
        nll, saved = _loss_impl(*inputs, batch=batch)
        ctx.mark_non_differentiable(saved)
        _setup_context(ctx, inputs, (nll, saved))
        ctx.eager, ctx.batch = True, batch
        return nll, saved

    @staticmethod
    def backward(ctx, grad_nll, grad_of_saved):
        return *_backward(ctx, grad_nll, grad_of_saved), None


def ctc_loss(
    log_probs: Tensor, targets, input_lengths, target_lengths,
    blank: int = 0, reduction: str = "mean", zero_infinity: bool = False, *, gradient: str = "exact",
    backend: str = "auto",
) -> Tensor:
    r"""The CTC loss, as ``torch.nn.functional.ctc_loss``, exact and fast.

    Args:
        log_probs: (T, N, C) or unbatched (T, C) log-probabilities, float16, bfloat16,
            float32 or float64 (half types are computed in float32).
        targets: padded (N, S), concatenated (sum(target_lengths),) or unbatched (S,) or
            (1, S) integer tensor (or list, or array); labels in [0, C), never ``blank``.
        input_lengths, target_lengths: N lengths: integer tensors of any shape with N
            elements (as torch: (N,), (N, 1), 0-d for N = 1), lists, tuples or arrays;
            an int when unbatched.
        blank, reduction, zero_infinity: as in torch (an int, one of the three strings,
            a bool).
        gradient: ``"exact"`` (default): the true derivative w.r.t. ``log_probs``, minus the
            posterior occupation of each class. ``"torch"``: torch's convention, which adds
            ``exp(log_probs)`` (the two give the same gradient through a log_softmax).
        backend: ``"auto"`` (default): the Numba core for CPU tensors, Triton kernels for
            CUDA tensors (when triton is installed), plain torch operations (a loop over
            time, vectorised over items and states, differentiated by autograd; slower)
            for tensors on other devices. ``"numba"``, ``"triton"`` or ``"torch"`` force one
            (``"triton"`` on CPU tensors needs ``TRITON_INTERPRET=1``).

    .. math:: \mathrm{loss}_n = -\log \sum_{\pi \in \mathcal{B}^{-1}(l_n)} \prod_{t < T_n} y^t_{\pi_t}
    """
    check_float_tensor(log_probs)
    backend = BY_NAME[_choose_backend(backend, log_probs.device)]
    torch_grad = check_gradient(gradient)
    blank, reduction, zero_infinity = check_options(blank, reduction, zero_infinity)
    targets = as_index_tensor(targets, "targets")
    input_lengths = as_index_tensor(input_lengths, "input_lengths")
    target_lengths = as_index_tensor(target_lengths, "target_lengths")
    shapes = check_shapes(log_probs.shape, targets.shape, input_lengths.shape, target_lengths.shape)
    if input_lengths.dim() != 1 or target_lengths.dim() != 1:  # any shape with N elements, as torch: (N,) from here on
        input_lengths, target_lengths = input_lengths.reshape(-1), target_lengths.reshape(-1)

    out_dtype = loss_dtype(log_probs)
    compute = backend.accept(log_probs, targets, input_lengths, target_lengths)  # in a dtype the backend reads
    if not shapes.batched:
        compute, targets = compute.unsqueeze(1), targets.reshape(1, -1)
    batch = None
    if backend.autograd:  # plain torch operations, differentiated by autograd
        checked = validated(compute.shape, targets, input_lengths, target_lengths, blank)
        nll, _ = backend.loss(compute, checked, blank, "none", torch_grad)
    else:
        need_grad = torch.is_grad_enabled() and compute.requires_grad
        inputs = (compute, targets, input_lengths, target_lengths, blank, torch_grad, need_grad, backend.name)
        if not plain_eager(compute, targets, input_lengths, target_lengths):
            nll, _ = _ctc_loss_op(*inputs)  # validates inside the operator
        else:
            batch = validated(compute.shape, targets, input_lengths, target_lengths, blank, shapes if shapes.batched else None)
            # no autograd node at all when nothing needs a gradient
            nll, _ = _EagerLoss.apply(*inputs, batch) if need_grad else _loss_impl(*inputs, batch=batch)

    return reduced(nll, reduction, zero_infinity, shapes, batch, target_lengths, out_dtype)


class CTCLoss(torch.nn.Module):
    """``torch.nn.CTCLoss`` on ctckit's core: ``CTCLoss(blank, reduction, zero_infinity)``
    called as ``(log_probs, targets, input_lengths, target_lengths)``."""

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False, *, gradient: str = "exact",
                 backend: str = "auto"):
        super().__init__()
        self.blank, self.reduction, self.zero_infinity = check_options(blank, reduction, zero_infinity)
        check_gradient(gradient)
        self.gradient, self.backend = gradient, check_choice(backend, "backend", BACKENDS)  # the device is known at call time

    def forward(self, log_probs: Tensor, targets, input_lengths, target_lengths) -> Tensor:
        return ctc_loss(
            log_probs, targets, input_lengths, target_lengths,
            self.blank, self.reduction, self.zero_infinity, gradient=self.gradient, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"blank={self.blank}, reduction={self.reduction!r}, zero_infinity={self.zero_infinity}, gradient={self.gradient!r}"


def forced_align(log_probs, targets, input_lengths, target_lengths, blank: int = 0, *, backend: str = "auto",
                 wildcard=None):
    """:func:`ctckit.numpy.forced_align` on tensors: ``(alignments, scores)`` as tensors
    (int64 and the dtype of ``log_probs``) on the device of ``log_probs``.

    ``backend``: ``"auto"`` (default): the Numba core for CPU tensors, the Triton kernel for
    CUDA tensors (when triton is installed), the Numba core on a CPU copy otherwise;
    ``"numba"`` or ``"triton"`` force one. The Numba core bounds its memory as NumPy's
    does; the Triton kernel keeps every back-pointer (an int8 per frame and state, on the
    device). ``wildcard``: as in :func:`ctckit.numpy.forced_align`; with ``backend="auto"``
    CUDA tensors are then aligned on a host copy (the Triton kernel has no wildcard label).
    """
    check_float_tensor(log_probs)
    chosen = _choose_backend(backend, log_probs.device, loss=False)
    if wildcard is not None and chosen == "triton" and backend == "auto":
        chosen = "numba"
    return BY_NAME[chosen].align(log_probs, targets, input_lengths, target_lengths, blank, wildcard)


def merge_tokens(alignment, scores, blank: int = 0):
    """:func:`ctckit.numpy.merge_tokens` on tensors."""
    return _decode.merge_tokens(to_numpy(alignment), to_numpy(scores), blank)


def greedy_decode(log_probs, input_lengths=None, blank: int = 0):
    """:func:`ctckit.numpy.greedy_decode` on tensors (copied to the host)."""
    check_float_tensor(log_probs)
    return _decode.greedy_decode(to_numpy(log_probs), to_numpy(input_lengths), blank)


def beam_search(log_probs, input_lengths=None, beam_width: int = 16, blank: int = 0, top_k: int = 1, **options):
    """:func:`ctckit.numpy.beam_search` on tensors (copied to the host; same keyword-only options)."""
    check_float_tensor(log_probs)
    return _decode.beam_search(to_numpy(log_probs), to_numpy(input_lengths), beam_width, blank, top_k, **options)


def ctc_posteriors(log_probs, targets, input_lengths, target_lengths, blank: int = 0):
    """:func:`ctckit.numpy.ctc_posteriors` on tensors, computed on the host, returned on
    the device of ``log_probs``."""
    check_float_tensor(log_probs)
    posteriors = _decode.ctc_posteriors(*map(to_numpy, (log_probs, targets, input_lengths, target_lengths)), blank)
    return torch.from_numpy(posteriors).to(device=log_probs.device, dtype=log_probs.dtype)

r"""The fused training step for PyTorch: the CTC loss on logits, ``ctc_loss_from_logits``.

``ctc_loss_from_logits(x, ...)`` is ``ctc_loss(x.log_softmax(-1), ...)`` without the
log-softmax: the forward reads each frame of logits once (its log-sum-exp, and the
log-probs of the classes the item uses, :mod:`ctckit._core.logits`), the backward reads
it once more and writes the gradient ``scale_n * (softmax - posterior)`` once. What the
forward keeps for the backward is ``lse`` (T, N) and the posteriors of each item's
distinct classes (T, N, K), K at most ``min(C, S + 1)``.

As the loss on log-probs (:mod:`ctckit.torch`), it is two operators,
``ctckit::ctc_loss_from_logits`` and its gradient, with shape-only fakes and an autograd
formula (``torch.compile``, ``torch.export``), bypassed by an ``autograd.Function`` in plain
eager mode, on the backends of :mod:`ctckit._torch_backends`.
"""

from functools import partial

import torch
from torch import Tensor

from ._inputs import check_choice, check_dim, check_options, check_shapes, reduction_weights
from ._torch_backends import BACKENDS, BY_NAME
from ._torch_backends import choose as choose_backend
from ._torch_common import (NoDoubleBackward, as_index_tensor, check_float_tensor, loss_dtype, plain_eager, reduced,
                            validated)
from .errors import CTCInputError


def saved_width(classes, targets_shape):
    """K of the saved posteriors: an item uses at most its length's labels and the blank,
    and at most C classes: ``min(C, S + 1)``, S the padded width of the targets (the
    whole length of concatenated ones). A ``sym_min``: no guard on symbolic shapes."""
    return torch.sym_min(classes, targets_shape[-1] + 1)


def gradient_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the gradient is computed in (and the posteriors kept in)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("ctckit::ctc_loss_from_logits", mutates_args=())
def _loss_op(
    logits: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor, blank: int, need_grad: bool,
    engine: str = "numba",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-item losses (float64, (N,)) of ``log_softmax(logits)`` ((T, N, C), classes last)
    and, if ``need_grad``, what the backward needs: ``lse`` (T, N) float64, the posteriors
    (T, N, K) (:func:`gradient_dtype`) and the class of each of their columns (N, K) int64
    (``-1`` past an item's classes), K = :func:`saved_width`; empty tensors otherwise."""
    return _loss_impl(logits, targets, input_lengths, target_lengths, blank, need_grad, engine)


def _loss_impl(logits, targets, input_lengths, target_lengths, blank, need_grad, engine, batch=None):
    if batch is None:  # the operator's call (torch.compile, torch.export): its values are checked here
        batch = validated(logits.shape, targets, input_lengths, target_lengths, blank, values="logits")
    width = saved_width(logits.shape[2], targets.shape)
    nll, saved = BY_NAME[engine].loss_from_logits(logits.detach(), batch, blank, need_grad, width)
    if saved is None:
        return nll, *_empty_saved(logits)
    return nll, *saved


def _empty_saved(logits):
    return (logits.new_empty(0, dtype=torch.float64), logits.new_empty(0, dtype=gradient_dtype(logits.dtype)),
            logits.new_empty(0, dtype=torch.int64))


@_loss_op.register_fake
def _loss_fake(logits, targets, input_lengths, target_lengths, blank, need_grad, engine="numba"):
    shapes = check_shapes(logits.shape, targets.shape, input_lengths.shape, target_lengths.shape, "logits")
    nll = logits.new_empty((shapes.batch,), dtype=torch.float64)
    if not need_grad:
        return nll, *_empty_saved(logits)
    frames, size, classes = logits.shape
    width = saved_width(classes, targets.shape)
    return (nll, logits.new_empty((frames, size), dtype=torch.float64),
            logits.new_empty((frames, size, width), dtype=gradient_dtype(logits.dtype)),
            logits.new_empty((size, width), dtype=torch.int64))


@torch.library.custom_op("ctckit::ctc_loss_from_logits_gradient", mutates_args=())
def _gradient_op(
    logits: Tensor, lse: Tensor, posteriors: Tensor, class_of_column: Tensor, targets: Tensor, input_lengths: Tensor,
    target_lengths: Tensor, nll: Tensor, scale: Tensor, blank: int, engine: str = "numba",
) -> Tensor:
    """The gradient (T, N, C) of ``sum_n scale[n] * loss_n`` w.r.t. the logits, in their
    dtype, from what the forward kept."""
    return _gradient_impl(logits, lse, posteriors, class_of_column, targets, input_lengths, target_lengths, nll, scale,
                          blank, engine)


def _gradient_impl(logits, lse, posteriors, class_of_column, targets, input_lengths, target_lengths, nll, scale, blank,
                   engine, batch=None):
    if batch is None:  # the operator's call: checked here, as in _loss_impl
        batch = validated(logits.shape, targets, input_lengths, target_lengths, blank, values="logits")
    saved = (lse, posteriors, class_of_column)
    return BY_NAME[engine].logit_gradient(logits.detach(), saved, batch, nll.detach(), scale.detach())


@_gradient_op.register_fake
def _gradient_fake(logits, lse, posteriors, class_of_column, targets, input_lengths, target_lengths, nll, scale, blank,
                   engine="numba"):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)  # what every backend returns


def _setup_context(ctx, inputs, output):
    logits, targets, input_lengths, target_lengths, blank, need_grad, engine = inputs
    ctx.blank, ctx.need_grad, ctx.engine = blank, need_grad, engine
    ctx.save_for_backward(logits, targets, input_lengths, target_lengths, *output)


def _backward(ctx, grad_nll, *_grads_of_saved):
    logits, targets, input_lengths, target_lengths, nll, lse, posteriors, class_of_column = ctx.saved_tensors
    if getattr(ctx, "eager", False):  # the forward's validated batch: the saved tensors are unchanged (autograd checks)
        loss, gradient = partial(_loss_impl, batch=ctx.batch), partial(_gradient_impl, batch=ctx.batch)
    else:
        loss, gradient = _loss_op, _gradient_op
    if not ctx.need_grad:  # the forward ran without the gradient: compute what it would have kept
        _, lse, posteriors, class_of_column = loss(logits.detach(), targets, input_lengths, target_lengths, ctx.blank, True,
                                                   ctx.engine)
    if grad_nll is None:
        grad_nll = torch.zeros_like(nll)
    grad = gradient(logits, lse, posteriors, class_of_column, targets, input_lengths, target_lengths, nll, grad_nll,
                    ctx.blank, ctx.engine)
    if torch.is_grad_enabled() and logits.requires_grad:
        grad = NoDoubleBackward.apply(grad, logits)
    return grad, None, None, None, None, None, None


_loss_op.register_autograd(_backward, setup_context=_setup_context)


def _dense_is_smaller(shape, width: int, dtype: torch.dtype) -> bool:
    """Whether the gradient itself, (T, N, C), takes no more memory than what the backward
    would compute it from: ``lse`` (T, N) float64 and the posteriors (T, N, K). So for
    small vocabularies (C <= K + 2 in float32: characters, ``C <= S + 1``)."""
    frames, size, classes = shape
    item = 8 if dtype == torch.float64 else 4  # gradient_dtype's size
    return frames * size * classes * item <= frames * size * (8 + width * item) + size * width * 8


class _EagerStep(torch.autograd.Function):
    """The loss and its reduction as one autograd node, for plain tensors in eager mode:
    the operators and the reduction's torch operations (and their backward nodes) cost
    more than the whole computation on small batches (docs: 50 x 16 x 20).

    The forward keeps what the operators' forward keeps, or, when that is no smaller
    (:func:`_dense_is_smaller`; float32/float64 logits), the gradient itself, computed at
    once with the reduction's weights: the backward then multiplies it by the incoming
    gradient (a scalar, or the N items' for ``reduction="none"``), which leaves it
    bitwise unchanged when that is 1, as ``loss.backward()`` makes it."""

    @staticmethod
    def forward(ctx, logits, targets, input_lengths, target_lengths, blank, engine, batch, reduction, zero_infinity,
                shapes, out_dtype):
        backend = BY_NAME[engine]
        width = min(logits.shape[2], targets.shape[-1] + 1)  # saved_width on concrete shapes
        weights = torch.from_numpy(reduction_weights(batch.target_lengths, reduction))
        ctx.engine, ctx.batch, ctx.weights, ctx.none = engine, batch, weights, reduction == "none"
        if logits.dtype in (torch.float32, torch.float64) and _dense_is_smaller(logits.shape, width, logits.dtype):
            nll, ctx.dense = backend.loss_and_logit_gradient(logits.detach(), batch, blank, width,
                                                             weights if logits.is_cpu else weights.to(logits.device))
        else:
            nll, saved = backend.loss_from_logits(logits.detach(), batch, blank, True, width)
            ctx.dense, ctx.saved, ctx.nll = None, saved, nll
        loss = reduced(nll, reduction, zero_infinity, shapes, batch, target_lengths, out_dtype, weights)
        ctx.save_for_backward(logits)  # autograd checks that it is unchanged at the backward
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (logits,) = ctx.saved_tensors
        incoming = grad_loss.reshape(-1) if ctx.none else grad_loss  # (N,), or a scalar
        if ctx.dense is not None:
            factor = incoming if incoming.dtype == ctx.dense.dtype else incoming.to(ctx.dense.dtype)
            grad = ctx.dense * (factor[None, :, None] if ctx.none else factor)
        else:
            scale = ctx.weights.to(incoming.device) * incoming.to(torch.float64)
            grad = BY_NAME[ctx.engine].logit_gradient(logits.detach(), ctx.saved, ctx.batch, ctx.nll, scale)
        if torch.is_grad_enabled() and logits.requires_grad:
            grad = NoDoubleBackward.apply(grad, logits)
        return grad, *(None,) * 10


def ctc_loss_from_logits(
    logits: Tensor, targets, input_lengths, target_lengths, blank: int = 0, reduction: str = "mean",
    zero_infinity: bool = False, *, dim: int = -1, backend: str = "auto",
) -> Tensor:
    r"""``ctc_loss(logits.log_softmax(dim), ...)`` in one pass, without the log-softmax.

    Args:
        logits: (T, N, C) or unbatched (T, C) unnormalised scores (a model's last layer),
            float16, bfloat16, float32 or float64, read as they are (sums in float64,
            the gradient in float32, or float64 for float64 logits), with the classes on
            dimension ``dim``; the other dimensions, in order, are T and N.
        targets, input_lengths, target_lengths, blank, reduction, zero_infinity: as in
            :func:`ctckit.torch.ctc_loss`.
        dim: the dimension of the classes (default: the last).
        backend: as in :func:`ctckit.torch.ctc_loss`; ``"torch"`` computes the
            log-softmax and differentiates through it.

    Returns what ``ctc_loss(logits.log_softmax(dim), ...)`` returns; its gradient w.r.t.
    ``logits`` is ``scale_n * (softmax - posterior occupation of each class)`` on an item's
    frames (``scale_n`` from the reduction), zero on padding frames, for classes masked
    with ``-inf`` and for targets that cannot be aligned, computed in the backward from
    ``logits``, the log-sum-exp of each frame and the posteriors of the classes in use.

    .. math:: \mathrm{loss}_n = -\log \sum_{\pi \in \mathcal{B}^{-1}(l_n)} \prod_{t < T_n}
        \frac{e^{x_{t,n,\pi_t}}}{\sum_c e^{x_{t,n,c}}}
    """
    check_float_tensor(logits, "logits")
    if logits.dim() not in (2, 3):
        raise CTCInputError(f"logits must be (T, N, C) or unbatched (T, C), got {logits.dim()} dimensions with shape "
                            f"{tuple(logits.shape)}")
    dim = check_dim(dim, logits.dim())
    if dim != logits.dim() - 1:
        logits = logits.movedim(dim, -1)
    backend = BY_NAME[choose_backend(backend, logits.device)]
    blank, reduction, zero_infinity = check_options(blank, reduction, zero_infinity)
    targets = as_index_tensor(targets, "targets")
    input_lengths = as_index_tensor(input_lengths, "input_lengths")
    target_lengths = as_index_tensor(target_lengths, "target_lengths")
    shapes = check_shapes(logits.shape, targets.shape, input_lengths.shape, target_lengths.shape, "logits")
    if input_lengths.dim() != 1 or target_lengths.dim() != 1:  # any shape with N elements, as torch
        input_lengths, target_lengths = input_lengths.reshape(-1), target_lengths.reshape(-1)

    out_dtype = loss_dtype(logits)
    compute = logits
    if not shapes.batched:
        compute, targets = compute.unsqueeze(1), targets.reshape(1, -1)
    batch = None
    if backend.autograd:  # plain torch operations: the log-softmax made, differentiated by autograd
        checked = validated(compute.shape, targets, input_lengths, target_lengths, blank, values="logits")
        log_probs = backend.accept(compute, targets, input_lengths, target_lengths).log_softmax(-1)
        nll, _ = backend.loss(log_probs, checked, blank, "none", False)
    else:
        need_grad = torch.is_grad_enabled() and compute.requires_grad
        inputs = (compute, targets, input_lengths, target_lengths, blank, need_grad, backend.name)
        if not plain_eager(compute, targets, input_lengths, target_lengths):
            nll = _loss_op(*inputs)[0]  # validates inside the operator
        else:
            batch = validated(compute.shape, targets, input_lengths, target_lengths, blank,
                              shapes if shapes.batched else None, values="logits")
            if need_grad:
                return _EagerStep.apply(compute, targets, input_lengths, target_lengths, blank, backend.name, batch,
                                        reduction, zero_infinity, shapes, out_dtype)
            nll = _loss_impl(*inputs, batch=batch)[0]
    return reduced(nll, reduction, zero_infinity, shapes, batch, target_lengths, out_dtype)


class CTCLossFromLogits(torch.nn.Module):
    """:func:`ctc_loss_from_logits` as a module: ``CTCLossFromLogits(blank, reduction,
    zero_infinity, dim)`` called as ``(logits, targets, input_lengths, target_lengths)``."""

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False, dim: int = -1, *,
                 backend: str = "auto"):
        super().__init__()
        self.blank, self.reduction, self.zero_infinity = check_options(blank, reduction, zero_infinity)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        self.dim, self.backend = dim, check_choice(backend, "backend", BACKENDS)  # the device is known at call time

    def forward(self, logits: Tensor, targets, input_lengths, target_lengths) -> Tensor:
        return ctc_loss_from_logits(logits, targets, input_lengths, target_lengths, self.blank, self.reduction,
                                    self.zero_infinity, dim=self.dim, backend=self.backend)

    def extra_repr(self) -> str:
        return f"blank={self.blank}, reduction={self.reduction!r}, zero_infinity={self.zero_infinity}, dim={self.dim}"

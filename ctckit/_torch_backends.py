"""The backends of the PyTorch frontend, behind one interface, and the choice between them.

A :class:`Backend` is a module-level object that computes on arguments validated once per
call by :mod:`ctckit._inputs`: a :class:`~ctckit._core.indices.Batch` of host index arrays.

* ``accept(log_probs, targets, input_lengths, target_lengths)``: ``log_probs`` in a dtype
  the backend reads (float16, bfloat16 and the float8 types in float32, unless it reads
  them itself), after refusing tensors on a device it cannot read;
* ``loss(log_probs, batch, blank, kind, torch_grad) -> (nll, saved)``: the per-item losses
  (float64, (N,)) and, by ``kind`` (``"none"``, ``"dense"``, ``"compact"``; see
  ``ctckit.torch._saved_kind``), ``None``, the gradient (T, N, C) or the compact
  posteriors (T, len(targets) + N) in the dtype of ``log_probs``;
* ``scatter(posteriors, batch, blank, scale, classes) -> grad``: the dense gradient
  (T, N, C) of ``sum_n scale[n] * loss_n`` from compact posteriors;
* ``loss_from_logits(logits, batch, blank, need_grad, width) -> (nll, saved)``: the
  losses of ``log_softmax(logits)`` (classes last) without making it, and, with
  ``need_grad``, what :meth:`logit_gradient` needs: ``(lse, posteriors,
  class_of_column)``, (T, N), (T, N, width) and (N, width) (see
  :func:`ctckit._core.negative_log_likelihood_from_logits`);
* ``logit_gradient(logits, saved, batch, nll, scale) -> grad``: the gradient of ``sum_n
  scale[n] * loss_n`` w.r.t. the logits, in their dtype, C-contiguous whatever the
  logits' strides (a compiled graph may hand the operator other strides than its fake
  saw); ``loss_and_logit_gradient(logits, batch, blank, width, scale) -> (nll, grad)``,
  the two at once (the Numba core does a small batch's items one at a time);
* ``align(log_probs, targets, input_lengths, target_lengths, blank, wildcard) ->
  (alignments, scores)``: forced alignment, validated by :mod:`ctckit._decode`, on the
  device of ``log_probs``.

Which runs where (:func:`choose`, for ``backend="auto"``):

* :data:`NUMBA`: CPU tensors, on NumPy views of them, through :mod:`ctckit._core`;
  alignment of tensors on a device without a kernel, on a CPU copy;
* :data:`TRITON`: CUDA tensors, when triton is installed, through :mod:`ctckit._triton`
  (imported at first use: importing :mod:`ctckit.torch` does not import triton); CPU
  tensors only in Triton's interpreter (``TRITON_INTERPRET=1``);
* :data:`TORCH_OPS`: tensors on any other device, the loss in plain torch operations
  (:mod:`ctckit._torch_ops`), differentiated by autograd (``autograd = True``: it keeps
  nothing to scatter and does not align).

:func:`host` and :func:`to_numpy` are the host copies the backends and the decoders read.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch
from torch import Tensor

from . import _core, _decode, _torch_ops
from ._core.indices import Batch
from ._inputs import check_choice

BACKENDS = ("auto", "numba", "triton", "torch")
"""The values of the ``backend`` argument (alignment: the first three)."""

KERNEL_DTYPES = (torch.float32, torch.float64)
"""The float dtypes the Numba core computes in; the others are computed in float32."""


def resolved(tensor: Tensor) -> Tensor:
    """``tensor`` with its negative and conjugate bits applied (a lazy ``_neg_view()`` or
    ``conj()``): ``numpy()`` and the kernels read memory, not the bits."""
    if tensor.is_neg() or tensor.is_conj():
        return tensor.resolve_neg().resolve_conj()
    return tensor


def host(tensor: Tensor) -> np.ndarray:
    """A tensor as a NumPy array: a view of a CPU tensor's memory, a copy of any other."""
    tensor = resolved(tensor)
    if tensor.is_cpu and not tensor.requires_grad:
        return tensor.numpy()  # half the time of detach().cpu().numpy()
    return tensor.detach().cpu().numpy()


def to_numpy(value):
    """A tensor as a NumPy array on the host (copied from another device; float types other
    than float32/float64 as float32); others (lists, arrays) unchanged."""
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point and value.dtype not in KERNEL_DTYPES:
            value = value.float()
        return host(value)
    return value


class Backend:
    """The interface (see the module's docstring); the defaults are those of a backend
    that computes in float32 or float64 on any device."""

    name = ""
    autograd = False
    """Whether autograd differentiates :meth:`loss` (then ``kind`` is ``"none"``)."""

    def accept(self, log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor) -> Tensor:
        return log_probs if log_probs.dtype in KERNEL_DTYPES else log_probs.float()

    def loss(self, log_probs: Tensor, batch: Batch, blank: int, kind: str, torch_grad: bool):
        raise NotImplementedError

    def scatter(self, posteriors: Tensor, batch: Batch, blank: int, scale: Tensor, classes: int) -> Tensor:
        raise NotImplementedError(f"backend {self.name!r} keeps nothing to scatter")

    def align(self, log_probs: Tensor, targets, input_lengths, target_lengths, blank, wildcard=None):
        raise NotImplementedError(f"backend {self.name!r} does not align")

    def loss_from_logits(self, logits: Tensor, batch: Batch, blank: int, need_grad: bool, width: int):
        raise NotImplementedError(f"backend {self.name!r} has no loss on logits")

    def logit_gradient(self, logits: Tensor, saved, batch: Batch, nll: Tensor, scale: Tensor) -> Tensor:
        raise NotImplementedError(f"backend {self.name!r} has no loss on logits")

    def loss_and_logit_gradient(self, logits: Tensor, batch: Batch, blank: int, width: int, scale: Tensor):
        """``(nll, grad)``: :meth:`loss_from_logits` and :meth:`logit_gradient` at once."""
        nll, saved = self.loss_from_logits(logits, batch, blank, True, width)
        return nll, self.logit_gradient(logits, saved, batch, nll, scale)


def logits_view(logits: Tensor) -> tuple[np.ndarray, int]:
    """``(array, fmt)``: a CPU tensor of logits as the NumPy view the core reads (float16 and
    bfloat16 as their uint16 bits, ``fmt`` saying which; other float types than these and
    float32/float64 as a float32 copy)."""
    logits = resolved(logits.detach() if logits.requires_grad else logits)
    if logits.dtype in KERNEL_DTYPES:
        return logits.numpy(), _core.FORMAT_FLOAT
    if logits.dtype in (torch.float16, torch.bfloat16):
        fmt = _core.FORMAT_FLOAT16 if logits.dtype == torch.float16 else _core.FORMAT_BFLOAT16
        return logits.view(torch.int16).numpy().view(np.uint16), fmt
    return logits.float().numpy(), _core.FORMAT_FLOAT


class _Numba(Backend):
    """The Numba core, on NumPy views of CPU tensors (host copies for alignment)."""

    name = "numba"

    def accept(self, log_probs, targets, input_lengths, target_lengths):
        log_probs = log_probs if log_probs.dtype in KERNEL_DTYPES else log_probs.float()  # as Backend.accept
        for name, tensor in (("log_probs", log_probs), ("targets", targets), ("input_lengths", input_lengths),
                             ("target_lengths", target_lengths)):
            if not tensor.is_cpu and log_probs.is_cpu:  # backend="auto" chose Numba too: say what to move
                raise ValueError(f"{name} is on device '{tensor.device}' and log_probs on the CPU, where the loss "
                                 f"is computed: pass {name} on the CPU")
            if not tensor.is_cpu:
                raise ValueError(f"{name} is on device '{tensor.device}'; backend 'numba' computes on the CPU "
                                 "(pass CPU tensors, or backend='auto' or 'torch')")
        return log_probs

    def loss(self, log_probs, batch, blank, kind, torch_grad):
        # _core.negative_log_likelihood looked up at each call: tests replace it with a spy
        nll, saved = _core.negative_log_likelihood(resolved(log_probs).numpy(), batch, blank, grad=kind, torch_grad=torch_grad)
        return torch.from_numpy(nll), (None if saved is None else torch.from_numpy(saved))

    def scatter(self, posteriors, batch, blank, scale, classes):
        scale = scale.to(torch.float64).numpy()
        return torch.from_numpy(_core.scatter_gradient(posteriors.numpy(), batch, blank, scale, classes))

    def loss_from_logits(self, logits, batch, blank, need_grad, width):
        array, fmt = logits_view(logits)
        nll, saved = _core.negative_log_likelihood_from_logits(array, fmt, batch, blank, need_grad, width)
        return torch.from_numpy(nll), (None if saved is None else tuple(map(torch.from_numpy, saved)))

    def logit_gradient(self, logits, saved, batch, nll, scale):
        array, fmt = logits_view(logits)
        lse, posteriors, class_of_column = (tensor.numpy() for tensor in saved)
        grad = _core.gradient_from_logits(array, fmt, (lse, posteriors, class_of_column), batch.input_lengths,
                                          nll.detach().numpy(), scale.detach().to(torch.float64).numpy(), time_major=True)
        return torch.from_numpy(grad).to(logits.dtype)  # C-contiguous, as the operator's fake says

    def loss_and_logit_gradient(self, logits, batch, blank, width, scale):
        array, fmt = logits_view(logits)
        scale = scale if scale.dtype == torch.float64 and scale.is_cpu else scale.to("cpu", torch.float64)
        nll, _, grad = _core.loss_and_gradient_from_logits(array, fmt, batch, blank, scale.numpy(), width, time_major=True)
        grad = torch.from_numpy(grad)
        return torch.from_numpy(nll), grad if grad.dtype == logits.dtype else grad.to(logits.dtype)

    def align(self, log_probs, targets, input_lengths, target_lengths, blank, wildcard=None):
        arrays = map(to_numpy, (log_probs, targets, input_lengths, target_lengths))
        alignments, scores = _decode.forced_align(*arrays, blank, wildcard=wildcard)  # checks the values of log_probs too
        device = log_probs.device
        return torch.from_numpy(alignments).to(device), torch.from_numpy(scores).to(device=device, dtype=log_probs.dtype)


class _Triton(Backend):
    """The Triton kernels, on the tensors' device; the batch's index arrays are copied there."""

    name = "triton"

    @staticmethod
    def kernels():
        """:mod:`ctckit._triton`, imported at its first use."""
        try:
            from . import _triton
        except ImportError as error:
            raise ImportError("backend 'triton' needs the triton package: pip install 'ctckit[triton]'") from error
        return _triton

    def accept(self, log_probs, targets, input_lengths, target_lengths):
        return log_probs  # the kernels read every float dtype, and compute in float64

    def loss(self, log_probs, batch, blank, kind, torch_grad):
        kernels = self.kernels()
        on_device = kernels.DeviceBatch(batch, log_probs.device)
        return kernels.negative_log_likelihood(resolved(log_probs), on_device, blank, kind, torch_grad)

    def scatter(self, posteriors, batch, blank, scale, classes):
        kernels = self.kernels()
        return kernels.scatter_gradient(posteriors, kernels.DeviceBatch(batch, posteriors.device), blank, scale, classes)

    def loss_from_logits(self, logits, batch, blank, need_grad, width):
        gradient_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return self.kernels().loss_from_logits(resolved(logits), batch, blank, need_grad, width, gradient_dtype)

    def logit_gradient(self, logits, saved, batch, nll, scale):
        return self.kernels().logit_gradient(resolved(logits), saved, batch, nll, scale)  # C-contiguous

    def align(self, log_probs, targets, input_lengths, target_lengths, blank, wildcard=None):
        if wildcard is not None:
            raise ValueError("wildcard: the Triton kernel has no wildcard label; pass backend='numba' (a host copy) or "
                             "backend='auto'")
        _, batch = _decode.alignable_batch(log_probs.shape, *map(to_numpy, (targets, input_lengths, target_lengths)), blank)
        kernels = self.kernels()
        batched = log_probs.dim() == 3
        values = log_probs.detach() if batched else log_probs.detach().unsqueeze(1)
        alignments, scores, best = kernels.viterbi(values, kernels.DeviceBatch(batch, log_probs.device), int(blank))
        _decode.check_aligned(host(best))
        return (alignments, scores) if batched else (alignments[0], scores[0])


class _TorchOps(Backend):
    """The loss in plain torch operations on the tensors' device, differentiated by autograd."""

    name = "torch"
    autograd = True

    def loss(self, log_probs, batch, blank, kind, torch_grad):
        device = log_probs.device
        as_tensor = lambda array: torch.from_numpy(array).to(device)
        nll = _torch_ops.negative_log_likelihood(
            log_probs, as_tensor(batch.targets), as_tensor(batch.offsets), as_tensor(batch.input_lengths),
            as_tensor(batch.target_lengths), blank, torch_grad, int(batch.target_lengths.max(initial=0)))
        return nll, None


NUMBA, TRITON, TORCH_OPS = _Numba(), _Triton(), _TorchOps()
BY_NAME = {backend.name: backend for backend in (NUMBA, TRITON, TORCH_OPS)}
"""The backends by the name :func:`choose` returns (and the operators take as ``engine``)."""


def choose(backend: str, device: torch.device, loss: bool = True) -> str:
    """The backend that will run: ``"auto"`` picks Numba on the CPU, Triton on CUDA when
    it is installed, and plain torch operations otherwise (the Numba core on a CPU copy
    for alignment, which has no torch-operations path)."""
    if type(backend) is str and backend == "auto" and device.type == "cpu":  # the common case, first
        return "numba"
    backend = check_choice(backend, "backend", BACKENDS if loss else BACKENDS[:3])
    if backend == "auto":
        if device.type == "cpu":
            return "numba"
        if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
            return "triton"
        return "torch" if loss else "numba"
    if backend == "triton":
        TRITON.kernels()
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true", "True"):
            raise ValueError("backend 'triton' runs CPU tensors only in Triton's interpreter (set TRITON_INTERPRET=1 "
                             "before importing ctckit); backend 'numba' is the fast path on the CPU")
    return backend

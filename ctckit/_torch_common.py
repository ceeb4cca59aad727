"""What the PyTorch frontend's losses share: argument handling, the eager bypass of the
operators, and the refusal of a double backward."""

import numpy as np
import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ._inputs import as_index_array, check_shapes, check_values, reduction_weights
from ._torch_backends import host
from .errors import CTCInputError


def validated(log_probs_shape, targets, input_lengths, target_lengths, blank, shapes=None, values="log_probs"):
    """The :class:`Batch` of the index tensors, checked on the host (copied once from another
    device); ``shapes``: what :func:`check_shapes` returned for these arguments, when the
    caller has it; ``values``: the first argument's name in messages."""
    if shapes is None:
        shapes = check_shapes(log_probs_shape, targets.shape, input_lengths.shape, target_lengths.shape, values)
    return check_values(shapes, _host_values(targets, "targets"), _host_values(input_lengths, "input_lengths"),
                        _host_values(target_lengths, "target_lengths"), blank)


def _host_values(tensor: Tensor, name: str):
    if tensor.is_meta:  # shapes only: the checks and the kernels need the values
        raise CTCInputError(f"{name} must hold values (a tensor on the CPU or on the loss's device), got a meta tensor")
    return host(tensor)


class NoDoubleBackward(torch.autograd.Function):
    """Identity on the gradient that refuses to be differentiated w.r.t. the loss's input."""

    @staticmethod
    def forward(ctx, grad, log_probs):
        return grad.clone()

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError(
            "ctckit's CTC loss does not support double backward (a gradient of its gradient "
            "w.r.t. log_probs or logits)"
        )


_is_functorch_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda tensor: False)


def plain_eager(*tensors) -> bool:
    """Whether the operator may be bypassed: eager mode, plain tensors, no tracing mode."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    for tensor in tensors:
        if type(tensor) is not Tensor or _is_functorch_wrapped(tensor):
            return False
    return True


def as_index_tensor(value, name: str) -> Tensor:
    """An index argument as a tensor: tensors as they are, others (lists, ints, arrays of
    any byte order) through :func:`as_index_array` and a host copy in native byte order
    (uint64 stays uint64: values past int64 are reported by the checks, unwrapped)."""
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{name} must have an integer dtype (int32 or int64), got {value.dtype}")
        return value
    array = as_index_array(value, name)
    return torch.from_numpy(np.array(array, dtype=array.dtype.newbyteorder("="), order="C"))


def autocast_enabled(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:  # a device type without autocast
        return False


def loss_dtype(values: Tensor) -> torch.dtype:
    """The dtype of the loss: that of its input, float32 for half types under autocast
    (which runs torch's ctc_loss in float32 as well)."""
    if values.dtype not in (torch.float16, torch.bfloat16):
        return values.dtype
    if autocast_enabled(values.device) and values.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return values.dtype


def reduced(nll: Tensor, reduction: str, zero_infinity: bool, shapes, batch, target_lengths: Tensor, out_dtype,
            weights: Tensor | None = None) -> Tensor:
    """The per-item losses ``nll`` (float64) after ``zero_infinity`` and ``reduction``, as
    torch's ``ctc_loss`` returns them; ``batch``: the validated lengths when the caller has
    them; ``weights``: their :func:`reduction_weights` as a CPU tensor, when it has those."""
    if zero_infinity:
        nll = torch.where(nll == float("inf"), torch.zeros_like(nll), nll)
    if reduction == "none":
        return (nll if shapes.batched else nll[0]).to(out_dtype)
    if reduction == "mean":
        if not nll.is_cpu or (weights is None and batch is None):
            weights = 1.0 / (target_lengths.to(device=nll.device, dtype=torch.float64).clamp_min(1) * shapes.batch)
        elif weights is None:  # from the validated lengths: 17 us instead of 29 in torch operations
            weights = torch.from_numpy(reduction_weights(batch.target_lengths, reduction))
        return (nll * weights).sum().to(out_dtype)
    return nll.sum().to(out_dtype)


def check_float_tensor(values, name: str = "log_probs") -> None:
    """The first argument of the tensor functions: a floating-point tensor."""
    if not isinstance(values, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    if not values.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {values.dtype}")

"""Checking and normalising the arguments of every CTC function, once, before any kernel.

Frontends turn their tensors into NumPy arrays (without copying) and call
:func:`check_shapes` (shapes only: shared with torch's shape-only "fake" path) and then
:func:`check_values`, which returns a :class:`Batch` that the kernels can index
without bounds checks. Numba does not check bounds: every index a kernel uses is
checked here.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from ._core import KERNEL_DTYPES, validate
from .errors import CTCInputError

REDUCTIONS = ("none", "mean", "sum")


@dataclass(frozen=True)
class Shapes:
    """What the shapes of the arguments say.

    ``batched``: log_probs was (T, N, C) rather than (T, C); ``padded``: targets are
    (N, S) rather than concatenated; ``max_target`` is S for padded targets (the
    concatenated length otherwise).
    """

    batched: bool
    padded: bool
    frames: int
    batch: int
    classes: int
    max_target: int


@dataclass(frozen=True)
class Batch:
    """Validated, kernel-ready index arrays (all int64, C-contiguous).

    Item ``n`` has ``input_lengths[n]`` frames and the labels
    ``targets[offsets[n] : offsets[n] + target_lengths[n]]``.
    """

    targets: np.ndarray
    offsets: np.ndarray
    input_lengths: np.ndarray
    target_lengths: np.ndarray


def check_blank(blank, classes: int | None = None) -> int:
    """``blank`` as an int; in ``[0, classes)`` when ``classes`` is given."""
    if isinstance(blank, bool) or not isinstance(blank, (int, np.integer)):
        raise TypeError(f"blank must be an int, got {type(blank).__name__}")
    blank = operator.index(blank)
    if classes is not None and not 0 <= blank < classes:
        raise CTCInputError(f"blank must be in [0, C) = [0, {classes}), got {blank}")
    return blank


def as_kernel_array(log_probs) -> tuple[np.ndarray, np.dtype]:
    """``(array, original dtype)``: log-probs as a float32/float64 array, copied only when
    the dtype needs it (float16 computes in float32, wider types in float64)."""
    array = np.asarray(log_probs)
    if array.dtype.kind != "f":
        raise TypeError(f"log_probs must be a floating-point array, got dtype {array.dtype}")
    if array.dtype not in KERNEL_DTYPES:
        return array.astype(np.float32 if array.dtype.itemsize < 4 else np.float64), array.dtype
    return array, array.dtype


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise CTCInputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def as_index_array(value, name: str) -> np.ndarray:
    """An int, a list/tuple of ints or an integer array as an integer ndarray.

    Floats (also integral-valued ones) and bools raise ``TypeError``: torch rejects them
    too, and a silent cast would hide a bug in the caller.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must hold integers, got a bool")
    if isinstance(value, (int, np.integer)):
        return np.asarray(value, dtype=np.int64)
    if isinstance(value, (list, tuple)):
        array = np.asarray(value)
        if array.size == 0:
            return np.zeros(array.shape, dtype=np.int64)
        if array.dtype.kind not in "iu" or any(isinstance(x, (bool, np.bool_)) for x in np.asarray(value, dtype=object).flat):
            raise TypeError(f"{name} must hold integers, got a sequence of {array.dtype}: {value!r:.60}")
        return array
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise TypeError(f"{name} must have an integer dtype (int32 or int64), got {value.dtype}")
        return value
    raise TypeError(f"{name} must be an integer array, a list of ints or an int, got {type(value).__name__}")


def check_shapes(log_probs_shape, targets_shape, input_lengths_shape, target_lengths_shape) -> Shapes:
    """Check the shapes of the four array arguments; no values are read."""
    lp = tuple(log_probs_shape)
    if len(lp) == 3:
        frames, batch, classes = lp
        batched = True
    elif len(lp) == 2:
        (frames, classes), batch = lp, 1
        batched = False
    else:
        raise CTCInputError(f"log_probs must be (T, N, C) or unbatched (T, C), got {len(lp)} dimensions with shape {lp}")
    if frames == 0 or classes == 0 or batch == 0:
        raise CTCInputError(f"log_probs must not be empty, got shape {lp} (T, N and C must be at least 1)")

    for name, shape in (("input_lengths", input_lengths_shape), ("target_lengths", target_lengths_shape)):
        shape = tuple(shape)
        if batched and shape != (batch,):
            raise CTCInputError(f"{name} must have shape (N,) = ({batch},) to match log_probs {lp}, got {shape}")
        if not batched and shape not in ((), (1,)):
            raise CTCInputError(f"{name} must be a single length for unbatched log_probs {lp}, got shape {shape}")

    tg = tuple(targets_shape)
    if batched and len(tg) == 2:
        if tg[0] != batch:
            raise CTCInputError(f"targets padded as (N, S) must have N = {batch} rows to match log_probs {lp}, got shape {tg}")
        padded, max_target = True, tg[1]
    elif len(tg) == 1:
        padded, max_target = not batched, tg[0]
    else:
        expected = "(N, S) or concatenated (sum(target_lengths),)" if batched else "(S,)"
        raise CTCInputError(f"targets must be {expected}, got shape {tg}")
    return Shapes(batched, padded, frames, batch, classes, max_target)


def check_values(shapes: Shapes, targets: np.ndarray, input_lengths, target_lengths, blank: int) -> Batch:
    """Check every length and every used target value; return kernel-ready arrays."""
    check_blank(blank, shapes.classes)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must have an integer dtype (int32 or int64), got {targets.dtype}")
    input_lengths = np.ascontiguousarray(input_lengths.reshape(-1), dtype=np.int64)
    target_lengths = np.ascontiguousarray(target_lengths.reshape(-1), dtype=np.int64)
    flat = np.ascontiguousarray(targets.reshape(-1), dtype=np.int64)
    offsets = np.empty(shapes.batch, dtype=np.int64)
    width = shapes.max_target if shapes.padded else -1
    problem, n, k = validate.first_invalid(flat, input_lengths, target_lengths, shapes.frames, shapes.classes, blank, width,
                                           offsets)
    if problem != validate.VALID:  # padding may hold anything: only used positions were read
        raise _problem(problem, n, k, shapes, flat, offsets, input_lengths, target_lengths, blank)
    return Batch(flat, offsets, input_lengths, target_lengths)


def _problem(problem: int, n: int, k: int, shapes: Shapes, flat, offsets, input_lengths, target_lengths, blank) -> CTCInputError:
    """The error for what :func:`.validate.first_invalid` found at item ``n`` (position ``k``)."""
    if problem == validate.INPUT_LENGTH_NEGATIVE:
        return CTCInputError(f"input_lengths[{n}] = {int(input_lengths[n])} is negative (batch index {n})")
    if problem == validate.INPUT_LENGTH_TOO_LONG:
        return CTCInputError(f"input_lengths[{n}] = {int(input_lengths[n])} exceeds the number of frames T = {shapes.frames} "
                             f"(batch index {n})")
    if problem == validate.TARGET_LENGTH_NEGATIVE:
        return CTCInputError(f"target_lengths[{n}] = {int(target_lengths[n])} is negative (batch index {n})")
    if problem == validate.TARGET_LENGTH_TOO_LONG:
        return CTCInputError(f"target_lengths[{n}] = {int(target_lengths[n])} exceeds the padded target length "
                             f"S = {shapes.max_target} (batch index {n})")
    if problem == validate.TARGET_TOTAL_MISMATCH:
        total = sum(int(length) for length in target_lengths)
        return CTCInputError(f"concatenated targets must have sum(target_lengths) = {total} elements, got {shapes.max_target}")
    value = int(flat[offsets[n] + k])
    where = f"targets[{n}, {k}]" if shapes.padded and shapes.batched else f"targets[{int(offsets[n]) + k}]"
    item = f" (batch index {n})" if shapes.batched else ""
    why = f"equals blank ({blank}); targets cannot be blank" if value == blank else f"is outside [0, C) = [0, {shapes.classes})"
    return CTCInputError(f"{where}{item} = {value} {why}")


GRADIENTS = ("exact", "torch")


def check_gradient(gradient) -> bool:
    """``gradient="exact"|"torch"`` as the kernels' ``torch_grad`` flag."""
    if gradient not in GRADIENTS:
        raise CTCInputError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    return gradient == "torch"


def prepare(log_probs_shape, targets, input_lengths, target_lengths, blank, reduction):
    """All checks of a loss call on NumPy-side arguments: returns ``(Shapes, Batch)``."""
    blank = check_blank(blank)
    check_reduction(reduction)
    targets = as_index_array(targets, "targets")
    input_lengths = as_index_array(input_lengths, "input_lengths")
    target_lengths = as_index_array(target_lengths, "target_lengths")
    shapes = check_shapes(log_probs_shape, targets.shape, input_lengths.shape, target_lengths.shape)
    return shapes, check_values(shapes, targets, input_lengths, target_lengths, blank)


def reduction_weights(target_lengths: np.ndarray, reduction: str) -> np.ndarray:
    """d(reduced loss) / d(loss_n), float64 (N,).

    ``"mean"`` is torch's: the batch mean of ``loss_n / max(target_length_n, 1)``.
    """
    size = target_lengths.shape[0]
    if reduction == "mean":
        return 1.0 / (size * np.maximum(target_lengths, 1).astype(np.float64))
    return np.ones(size, dtype=np.float64)

"""Checking and normalising the arguments of every CTC function, once, before any kernel.

Frontends turn their tensors into NumPy arrays (without copying) and call
:func:`check_shapes` (shapes only: shared with torch's shape-only "fake" path) and then
:func:`check_values`, which returns a :class:`Batch` that the kernels can index
without bounds checks. Numba does not check bounds: every index a kernel uses is
checked here.
"""

from __future__ import annotations

import math
import operator
import sys
from dataclasses import dataclass

import numpy as np

from ._core import FORMAT_BFLOAT16, FORMAT_FLOAT, FORMAT_FLOAT16, KERNEL_DTYPES, validate
from ._core.indices import Batch
from .errors import CTCInputError

REDUCTIONS = ("none", "mean", "sum")
GRADIENTS = ("exact", "torch")
_INT64_MAX = 2**63 - 1
_ML_FLOAT_PREFIXES = ("float8_", "float6_", "float4_")


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


def check_blank(blank, classes: int | None = None) -> int:
    """``blank`` as an int; in ``[0, classes)`` when ``classes`` is given."""
    if isinstance(blank, bool) or not isinstance(blank, (int, np.integer)):
        raise TypeError(f"blank must be an int, got {type(blank).__name__}")
    blank = operator.index(blank)
    if classes is not None and not 0 <= blank < classes:
        raise CTCInputError(f"blank must be in [0, C) = [0, {classes}), got {blank}")
    return blank


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    """A string option (``reduction``, ``gradient``, ``backend``) that must be one of ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {choices}, got {type(value).__name__}")
    if value not in choices:
        raise CTCInputError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_reduction(reduction) -> str:
    return check_choice(reduction, "reduction", REDUCTIONS)


def check_zero_infinity(zero_infinity) -> bool:
    """``zero_infinity`` as a bool: a Python or NumPy bool, nothing else (``"False"`` is not false)."""
    if not isinstance(zero_infinity, (bool, np.bool_)):
        raise TypeError(f"zero_infinity must be a bool, got {type(zero_infinity).__name__}: {zero_infinity!r:.40}")
    return bool(zero_infinity)


def check_options(blank, reduction, zero_infinity) -> tuple[int, str, bool]:
    """The options every loss function takes, checked the same way in every frontend."""
    return check_blank(blank), check_reduction(reduction), check_zero_infinity(zero_infinity)


def _is_ml_dtypes_float(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is one of ml_dtypes' floating types (bfloat16, float8_*, ...), which
    NumPy knows only as opaque (kind ``'V'``) types; ml_dtypes is never imported here."""
    if "ml_dtypes" not in sys.modules or dtype.type.__module__ != "ml_dtypes":
        return False
    return dtype.name == "bfloat16" or dtype.name.startswith(_ML_FLOAT_PREFIXES)


def as_float_array(values, name: str = "log_probs") -> np.ndarray:
    """``values`` as a floating-point NumPy array (NumPy's or ml_dtypes' types), not copied."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as error:  # ragged nested lists, odd objects
        raise CTCInputError(f"{name} must be a rectangular array of floats, got {type(values).__name__}: "
                            f"{error}") from error
    if array.dtype.kind != "f" and not _is_ml_dtypes_float(array.dtype):
        raise TypeError(f"{name} must be a floating-point array, got dtype {array.dtype}")
    return array


def as_kernel_array(log_probs) -> tuple[np.ndarray, np.dtype]:
    """``(array, original dtype)``: log-probs as a float32/float64 array, copied only when
    the dtype needs it (float16, bfloat16 and the float8 types compute in float32, wider
    types in float64)."""
    array = as_float_array(log_probs)
    if array.dtype not in KERNEL_DTYPES:
        return array.astype(np.float32 if array.dtype.itemsize < 4 else np.float64), array.dtype
    return array, array.dtype


def check_dim(dim, ndim: int) -> int:
    """The class dimension ``dim`` of logits with ``ndim`` dimensions, as a non-negative int."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise CTCInputError(f"dim must be in [-{ndim}, {ndim}) for logits with {ndim} dimensions, got {dim}")
    return int(dim) % ndim


def as_logits_array(logits, dim) -> tuple[np.ndarray, int, np.dtype]:
    """``(array, fmt, dtype)``: logits with their classes last (a view), as the kernels of
    :mod:`ctckit._core.logits` read them: float32 and float64 as they are, float16 and
    bfloat16 as their uint16 bits (``fmt``), other float types converted to float32 or
    float64; ``dtype`` is the original one."""
    array = as_float_array(logits, "logits")
    if array.ndim not in (2, 3):
        raise CTCInputError(f"logits must be (T, N, C) or unbatched (T, C), got {array.ndim} dimensions with shape "
                            f"{array.shape}")
    array = np.moveaxis(array, check_dim(dim, array.ndim), -1)
    if array.dtype in KERNEL_DTYPES:
        return array, FORMAT_FLOAT, array.dtype
    if array.dtype == np.float16:
        return array.view(np.uint16), FORMAT_FLOAT16, array.dtype
    if array.dtype.name == "bfloat16":
        return array.view(np.uint16), FORMAT_BFLOAT16, array.dtype
    return array.astype(np.float32 if array.dtype.itemsize < 4 else np.float64), FORMAT_FLOAT, array.dtype


def as_index_array(value, name: str) -> np.ndarray:
    """An int, a list/tuple of ints or an integer array as an integer ndarray.

    Floats (also integral-valued ones) and bools raise ``TypeError``: torch rejects them
    too, and a silent cast would hide a bug in the caller. Ragged nested sequences and
    ints beyond 64 bits raise :class:`CTCInputError`. Integers from 2**63 to 2**64 - 1
    come back as uint64: :func:`check_values` reports them, unwrapped, where they are used.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must hold integers, got a bool")
    if isinstance(value, int):
        if not -_INT64_MAX - 1 <= value < 2**64:
            raise CTCInputError(f"{name} = {value} is outside the range of 64-bit integers")
        return np.asarray(value, dtype=np.int64 if value <= _INT64_MAX else np.uint64)
    if isinstance(value, np.integer):
        return np.asarray(value)
    if isinstance(value, (list, tuple)):
        return _sequence_as_array(value, name)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise TypeError(f"{name} must have an integer dtype (int32 or int64), got {value.dtype}")
        return value
    raise TypeError(f"{name} must be an integer array, a list of ints or an int, got {type(value).__name__}")


def _sequence_as_array(value, name: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as error:
        raise CTCInputError(f"{name} must be a rectangular sequence of ints (every row of one length), "
                            f"got {value!r:.60}") from error
    if array.size == 0:
        return np.zeros(array.shape, dtype=np.int64)
    items = np.asarray(value, dtype=object).reshape(-1)
    if any(isinstance(x, (bool, np.bool_)) for x in items):
        raise TypeError(f"{name} must hold integers, got a bool in {value!r:.60}")
    if array.dtype.kind in "iu":
        return array
    if all(isinstance(x, (int, np.integer)) for x in items):  # ints that no one integer dtype holds: NumPy made floats
        values = [int(x) for x in items]
        if all(0 <= v < 2**64 for v in values):
            return np.asarray(value, dtype=np.uint64)
        worst = next(v for v in values if not -_INT64_MAX - 1 <= v <= _INT64_MAX)
        raise CTCInputError(f"{name} holds {worst}: lengths and labels must fit in int64 (or in uint64 when none "
                            f"is negative)")
    raise TypeError(f"{name} must hold integers, got a sequence of {array.dtype}: {value!r:.60}")


def check_shapes(log_probs_shape, targets_shape, input_lengths_shape, target_lengths_shape, values: str = "log_probs"
                 ) -> Shapes:
    """Check the shapes of the four array arguments; no values are read. ``values``: the
    name of the first argument in messages (``"logits"`` for the losses on logits)."""
    lp = tuple(log_probs_shape)
    if len(lp) == 3:
        frames, batch, classes = lp
        batched = True
    elif len(lp) == 2:
        (frames, classes), batch = lp, 1
        batched = False
    else:
        raise CTCInputError(f"{values} must be (T, N, C) or unbatched (T, C), got {len(lp)} dimensions with shape {lp}")
    if frames == 0 or classes == 0 or batch == 0:
        raise CTCInputError(f"{values} must not be empty, got shape {lp} (T, N and C must be at least 1)")

    for name, shape in (("input_lengths", input_lengths_shape), ("target_lengths", target_lengths_shape)):
        shape = tuple(shape)  # any shape with N elements, as torch (which flattens them): (N,), (N, 1), 0-d for N = 1
        if batched and math.prod(shape) != batch:
            raise CTCInputError(f"{name} must have N = {batch} elements, shape (N,) = ({batch},) or any shape of "
                                f"{batch} elements, to match {values} {lp}, got shape {shape}")
        if not batched and math.prod(shape) != 1:
            raise CTCInputError(f"{name} must be a single length for unbatched {values} {lp}, got shape {shape}")

    tg = tuple(targets_shape)
    if len(tg) == 2 and (batched or tg[0] == 1):  # unbatched: (1, S) too, as torch
        if tg[0] != batch:
            raise CTCInputError(f"targets padded as (N, S) must have N = {batch} rows to match {values} {lp}, got shape {tg}")
        padded, max_target = True, tg[1]
    elif len(tg) == 1:
        padded, max_target = not batched, tg[0]
    else:
        expected = "(N, S) or concatenated (sum(target_lengths),)" if batched else "(S,) or (1, S)"
        raise CTCInputError(f"targets must be {expected}, got shape {tg}")
    return Shapes(batched, padded, frames, batch, classes, max_target)


def check_values(shapes: Shapes, targets: np.ndarray, input_lengths, target_lengths, blank: int,
                 labels: str = "targets") -> Batch:
    """Check every length and every used target value; return kernel-ready arrays.

    The arrays are copied first and the copies checked and returned: what is checked is
    what the kernels read, whatever the caller does with its own arrays meanwhile.
    """
    check_blank(blank, shapes.classes)
    for name, array in ((labels, targets), ("input_lengths", input_lengths), ("target_lengths", target_lengths)):
        if array.dtype.kind not in "iu":
            raise TypeError(f"{name} must have an integer dtype (int32 or int64), got {array.dtype}")
    flat, exact_targets = _owned_int64(targets)
    input_lengths, exact_il = _owned_int64(input_lengths)
    target_lengths, exact_tl = _owned_int64(target_lengths)
    offsets = np.empty(shapes.batch, dtype=np.int64)
    width = shapes.max_target if shapes.padded else -1
    problem, n, k = validate.first_invalid(flat, input_lengths, target_lengths, shapes.frames, shapes.classes, blank, width,
                                           offsets)
    if problem != validate.VALID:  # padding may hold anything: only used positions were read
        raise _problem(problem, n, k, shapes, targets.ndim == 2, exact_targets, offsets, exact_il, exact_tl, blank, labels)
    return Batch(flat, offsets, input_lengths, target_lengths)


def _owned_int64(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel copy, exact copy)`` of an integer array, both 1-D and ctckit's own. uint64
    values above int64's range saturate in the kernel copy (every check rejects them,
    where they are read); messages print the exact copy."""
    if array.dtype.kind == "u" and array.dtype.itemsize == 8:
        exact = array.astype(np.uint64, order="C").reshape(-1)
        return np.minimum(exact, np.uint64(_INT64_MAX)).astype(np.int64), exact
    copy = array.astype(np.int64, order="C").reshape(-1)  # astype copies, always
    return copy, copy


def _problem(problem: int, n: int, k: int, shapes: Shapes, two_d: bool, flat, offsets, input_lengths, target_lengths,
             blank, labels: str = "targets") -> CTCInputError:
    """The error for what :func:`.validate.first_invalid` found at item ``n`` (position ``k``);
    ``labels``: the name of the targets argument."""
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
    where = f"{labels}[{n}, {k}]" if shapes.padded and two_d else f"{labels}[{int(offsets[n]) + k}]"
    item = f" (batch index {n})" if shapes.batched else ""
    why = f"equals blank ({blank}); {labels} cannot be blank" if value == blank else f"is outside [0, C) = [0, {shapes.classes})"
    return CTCInputError(f"{where}{item} = {value} {why}")


def check_gradient(gradient) -> bool:
    """``gradient="exact"|"torch"`` as the kernels' ``torch_grad`` flag."""
    return check_choice(gradient, "gradient", GRADIENTS) == "torch"


def prepare(log_probs_shape, targets, input_lengths, target_lengths, blank, reduction, values="log_probs"):
    """All checks of a loss call on NumPy-side arguments: returns ``(Shapes, Batch)``."""
    blank = check_blank(blank)
    check_reduction(reduction)
    targets = as_index_array(targets, "targets")
    input_lengths = as_index_array(input_lengths, "input_lengths")
    target_lengths = as_index_array(target_lengths, "target_lengths")
    shapes = check_shapes(log_probs_shape, targets.shape, input_lengths.shape, target_lengths.shape, values)
    return shapes, check_values(shapes, targets, input_lengths, target_lengths, blank)


def reduction_weights(target_lengths: np.ndarray, reduction: str) -> np.ndarray:
    """d(reduced loss) / d(loss_n), float64 (N,).

    ``"mean"`` is torch's: the batch mean of ``loss_n / max(target_length_n, 1)``.
    """
    size = target_lengths.shape[0]
    if reduction == "mean":
        return 1.0 / (size * np.maximum(target_lengths, 1).astype(np.float64))
    return np.ones(size, dtype=np.float64)

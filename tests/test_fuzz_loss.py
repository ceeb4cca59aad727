"""Property-based fuzzing of the loss functions' arguments, in both frontends.

Each example draws a small CTC problem, a frontend (``ctckit.numpy.ctc_loss``,
``ctc_loss_and_grad``, ``ctckit.torch.ctc_loss``, ``CTCLoss``) and a form for every argument:
dtypes, byte orders, strides, read-only and negative-bit views, containers, the shapes of
the lengths that torch takes. Either every argument is in a documented form, and the call
must return the float64 reference's losses and gradient (and torch's losses where torch
accepts the same arguments), or one argument is hostile (bad types, dtypes, shapes,
ranges, ragged lists, huge or negative ints, wrong-typed options), and the call must raise
``CTCInputError`` or ``TypeError`` naming that argument. Any other outcome fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes  # in the test extra
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ctckit.numpy as cn
import ctckit.torch as ct
import reference as ref
from conftest import log_softmax
from ctckit import CTCInputError

FRONTENDS = ("numpy.ctc_loss", "numpy.ctc_loss_and_grad", "torch.ctc_loss", "torch.CTCLoss")
ARGUMENTS = ("log_probs", "targets", "input_lengths", "target_lengths", "blank", "reduction", "zero_infinity")
INT_DTYPES = ("<i8", "<i4", "<i2", "i1", "<u8", "<u4", "<u2", "u1", ">i8", ">i4", ">u8", ">u2")
TENSOR_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint64)
# (loss rtol, gradient atol) by the dtype ctckit returns
TOLERANCES = {"float64": (1e-9, 1e-9), "float32": (1e-4, 1e-5), "float16": (3e-3, 3e-3), "bfloat16": (2e-2, 2e-2)}


@dataclass
class Problem:
    log_probs: np.ndarray  # float64 (T, N, C): the values ctckit must see
    labels: list
    input_lengths: np.ndarray
    blank: int
    batched: bool
    padded: bool
    width: int
    dtype: str  # of log_probs as passed

    @property
    def target_lengths(self):
        return np.array([len(row) for row in self.labels], dtype=np.int64)


@st.composite
def problems(draw):
    batched = draw(st.sampled_from([True, True, True, False]))
    frames, classes = draw(st.integers(1, 7)), draw(st.integers(2, 6))
    size = draw(st.integers(1, 4)) if batched else 1
    blank = draw(st.integers(0, classes - 1))
    labels_of = st.sampled_from([c for c in range(classes) if c != blank])
    input_lengths = np.array([draw(st.integers(0, frames)) for _ in range(size)], dtype=np.int64)
    labels = [draw(st.lists(labels_of, max_size=frames + 1)) for _ in range(size)]  # some infeasible
    padded = draw(st.booleans())
    width = max(len(row) for row in labels) + draw(st.integers(0, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = log_softmax(draw(st.sampled_from([0.5, 2.0, 8.0])) * rng.standard_normal((frames, size, classes)))
    if draw(st.booleans()):  # a masked class
        values[:, :, draw(st.integers(0, classes - 1))] = -np.inf
    if draw(st.booleans()):  # garbage on frames past each input length: never read
        for n in range(size):
            values[input_lengths[n]:, n] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e300]))
    dtype = draw(st.sampled_from(["float64", "float64", "float32", "float16", "bfloat16"]))
    with np.errstate(over="ignore"):
        seen = values.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype).astype(np.float64)
    return Problem(seen, labels, input_lengths, blank, batched, padded, width, dtype)


def _canonical_targets(problem, unsigned, rng):
    """int64 targets in the problem's layout, garbage padding (non-negative for unsigned dtypes)."""
    if not problem.padded:
        return np.array([c for row in problem.labels for c in row], dtype=np.int64)
    low = 0 if unsigned else -5
    rows = rng.integers(low, problem.log_probs.shape[2] + 5, (len(problem.labels), problem.width))
    for n, row in enumerate(problem.labels):
        rows[n, : len(row)] = row
    return rows


def _layout(draw, array):
    """``array`` (any dtype) in a drawn memory layout with the same values."""
    kind = draw(st.sampled_from(["contiguous", "strided", "reversed", "fortran", "read-only"]))
    if kind == "strided" and array.ndim:
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), dtype=array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    if kind == "reversed" and array.ndim:
        return np.ascontiguousarray(array[::-1])[::-1]  # negative strides
    if kind == "fortran":
        return np.asfortranarray(array)
    if kind == "read-only":
        array = array.copy()
        array.setflags(write=False)
    return array


def _tensor_layout(draw, tensor):
    kind = draw(st.sampled_from(["contiguous", "strided", "negative bit", "transposed"]))
    if kind == "strided":
        wide = torch.zeros((2 * tensor.numel(),), dtype=tensor.dtype)
        wide[::2] = tensor.reshape(-1)
        return wide[::2].reshape(tensor.shape)
    if kind == "negative bit" and tensor.dtype.is_signed:
        return tensor.neg()._neg_view()
    if kind == "transposed" and tensor.dim() >= 2:
        return tensor.transpose(0, 1).contiguous().transpose(0, 1)
    return tensor


def _index_form(draw, values, tensors_ok, shapes):
    """A documented form of int64 ``values`` (non-negative unless padding): arrays of any
    integer dtype and layout, lists, tuples, tensors (torch frontends), any of ``shapes``."""
    values = values.reshape(draw(st.sampled_from(shapes)))
    negative = bool((values < 0).any())
    kinds = ["array", "array", "list"] + (["tuple"] if values.ndim == 1 else []) + (["tensor", "tensor"] if tensors_ok else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "list":
        return values.tolist() if values.ndim else int(values)
    if kind == "tuple":
        return tuple(int(v) for v in values)
    if kind == "tensor":
        dtypes = [d for d in TENSOR_INT_DTYPES if d.is_signed or not negative]
        return _tensor_layout(draw, torch.from_numpy(values.astype(np.int64)).to(draw(st.sampled_from(dtypes))))
    dtype = draw(st.sampled_from([d for d in INT_DTYPES if "u" not in d or not negative]))
    return _layout(draw, values.astype(dtype))


def _length_shapes(problem):
    size = len(problem.labels)
    shapes = [(size,), (size, 1), (1, size), (size, 1, 1)]
    return shapes + [()] if size == 1 else shapes


def _log_probs_form(draw, problem, torch_frontend):
    dtype = {"bfloat16": ml_dtypes.bfloat16}.get(problem.dtype, problem.dtype)
    values = problem.log_probs if problem.batched else problem.log_probs[:, 0]
    if torch_frontend:
        tensor = torch.from_numpy(values).to(getattr(torch, problem.dtype))
        return _tensor_layout(draw, tensor.requires_grad_(draw(st.sampled_from([True, True, False]))))
    with np.errstate(over="ignore", invalid="ignore"):
        array = values.astype(dtype)
    kind = draw(st.sampled_from(["array", "big-endian", "list"] if problem.dtype in ("float64", "float32") else ["array"]))
    if kind == "big-endian":
        return _layout(draw, array.astype(array.dtype.newbyteorder(">")))
    if kind == "list" and problem.dtype == "float64":
        return array.tolist()
    return _layout(draw, array)


def _benign_arguments(draw, problem, frontend):
    torch_frontend = frontend.startswith("torch")
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    targets = _canonical_targets(problem, unsigned=draw(st.booleans()), rng=rng)
    if problem.batched or not problem.padded:
        target_shapes = [targets.shape]
    else:
        target_shapes = [targets.shape, (targets.shape[1],)]  # unbatched: (1, S) or (S,)
    lengths = _length_shapes(problem) if problem.batched else [(), (1,), (1, 1)]
    arguments = {
        "log_probs": _log_probs_form(draw, problem, torch_frontend),
        "targets": _index_form(draw, targets, torch_frontend, target_shapes),
        "input_lengths": _index_form(draw, problem.input_lengths, torch_frontend, lengths),
        "target_lengths": _index_form(draw, problem.target_lengths, torch_frontend, lengths),
        "blank": draw(st.sampled_from([problem.blank, np.int64(problem.blank), np.int32(problem.blank)])),
        "reduction": draw(st.sampled_from(["none", "mean", "sum"])),
        "zero_infinity": draw(st.sampled_from([False, True, np.bool_(False), np.bool_(True)])),
    }
    if problem.padded and targets.dtype.kind == "i" and draw(st.booleans()) and problem.width > min(map(len, problem.labels)):
        huge = np.array(targets, dtype=np.uint64)  # padding past int64's range: never read
        for n, row in enumerate(problem.labels):
            huge[n, len(row):] = 2**64 - 1
        arguments["targets"] = huge.reshape(np.shape(arguments["targets"]))
    return arguments


def _hostile_value(draw, name, arguments, problem, frontend):
    """A bad value for argument ``name``, which the call must refuse naming it."""
    frames, size, classes = problem.log_probs.shape
    if name == "log_probs":
        return _hostile_log_probs(draw, problem, frontend)
    if name == "blank":
        return draw(st.sampled_from([classes, -1, 2**70, 1.0, True, "0", None, np.float32(0), np.bool_(False)]))
    if name == "reduction":
        return draw(st.sampled_from(["avg", "", "MEAN", 1, None, b"mean", ["mean"], np.array(["mean"])]))
    if name == "zero_infinity":
        return draw(st.sampled_from(["False", "", 0, 1, None, 1.0, torch.tensor(True), np.array([True])]))
    given = arguments[name]
    current = np.asarray(given.resolve_neg().numpy() if isinstance(given, torch.Tensor) else given).astype(np.int64)
    kind = draw(st.sampled_from(["float", "bool", "None", "text", "ragged", "huge list"]
                                + (["too many"] if problem.batched or name != "targets" else [])))  # unbatched (S,): padding
    if kind == "float":
        return current.astype(np.float64)
    if kind == "bool":
        return current.astype(bool).tolist() if current.size and current.ndim else [True]
    if kind in ("None", "text", "huge list"):
        return {"None": None, "text": "1, 2", "huge list": [2**70] * size}[kind]
    if kind == "ragged":
        return [[1, 2], [3]] if name == "targets" else [[1]] * size + [[1, 2]]
    if name == "targets":
        return _hostile_targets(draw, problem) if draw(st.booleans()) else (
            np.ones((size + 1, 2), np.int64) if problem.padded else np.append(current, 1))
    if kind == "too many":
        return np.append(current.reshape(-1), 1)
    return _hostile_lengths(draw, name, problem)


def _hostile_log_probs(draw, problem, frontend):
    values = np.clip(np.nan_to_num(problem.log_probs, nan=0.0, posinf=0.0, neginf=-1e4), -1e4, 0.0)
    choices = [values.astype(np.int64), values.astype(np.complex128), values > 0, values[..., None],
               values[:0], values[:, :, :0], None, "log_probs", values[:, 0, 0]]
    if frontend.startswith("torch"):  # and arrays are no tensors
        choices = [torch.from_numpy(c) if isinstance(c, np.ndarray) else c for c in choices] + [values]
    else:
        choices += [[[[0.0, -1.0]], [[0.0]]], np.array([[None]], dtype=object)]
    return draw(st.sampled_from(choices))


def _hostile_targets(draw, problem):
    """A used label out of range (or blank), or targets of a wrong rank or row count."""
    frames, size, classes = problem.log_probs.shape
    used = [(n, k) for n, row in enumerate(problem.labels) for k in range(len(row))]
    kind = draw(st.sampled_from(["rank 3"] + ["label"] * 4 * bool(used) + ["rows"] * (problem.padded and problem.batched)))
    if kind == "rank 3":
        return np.ones((size, 1, 1), dtype=np.int64)
    if kind == "rows":
        return np.ones((size + 1, problem.width), dtype=np.int64)
    targets = _canonical_targets(problem, unsigned=False, rng=np.random.default_rng(0))
    n, k = draw(st.sampled_from(used))
    where = (n, k) if problem.padded else sum(len(row) for row in problem.labels[:n]) + k
    bad = draw(st.sampled_from([classes, classes + 7, -1, problem.blank, 2**63 - 1, -(2**63), 2**64 - 1]))
    if bad == 2**64 - 1:
        targets = np.where(targets < 0, 0, targets).astype(np.uint64)
    targets[where] = bad
    return targets if problem.batched or not problem.padded else targets.reshape(-1)


def _hostile_lengths(draw, name, problem):
    """One length negative, too long, or past int64 (uint64)."""
    frames = problem.log_probs.shape[0]
    lengths = (problem.input_lengths if name == "input_lengths" else problem.target_lengths).copy()
    n = draw(st.integers(0, len(lengths) - 1))
    kind = draw(st.sampled_from(["negative", "past 2**63"] + ["too long"] * (name == "input_lengths" or problem.padded)))
    if kind == "negative":
        lengths[n] = -draw(st.integers(1, 2**63))
    elif kind == "too long":
        lengths[n] = (frames if name == "input_lengths" else problem.width) + 1
    else:
        lengths = lengths.astype(np.uint64)
        lengths[n] = draw(st.sampled_from([2**63, 2**64 - 1]))
    return lengths


def _call(frontend, arguments, gradient_wanted):
    """``(loss, gradient w.r.t. log_probs or None)`` as NumPy arrays."""
    a = arguments
    positional = (a["log_probs"], a["targets"], a["input_lengths"], a["target_lengths"])
    if frontend == "numpy.ctc_loss":
        return np.asarray(cn.ctc_loss(*positional, a["blank"], a["reduction"], a["zero_infinity"])), None
    if frontend == "numpy.ctc_loss_and_grad":
        loss, grad = cn.ctc_loss_and_grad(*positional, a["blank"], a["reduction"], a["zero_infinity"])
        return np.asarray(loss), grad
    if frontend == "torch.ctc_loss":
        loss = ct.ctc_loss(*positional, a["blank"], a["reduction"], a["zero_infinity"])
    else:
        loss = ct.CTCLoss(a["blank"], a["reduction"], a["zero_infinity"])(*positional)
    log_probs = a["log_probs"]
    grad = None
    if gradient_wanted and log_probs.requires_grad:
        grad, = torch.autograd.grad(loss.sum(), log_probs)
        grad = grad.float().numpy() if grad.dtype == torch.bfloat16 else grad.numpy()
    loss = loss.detach()
    return (loss.float() if loss.dtype == torch.bfloat16 else loss).numpy(), grad


def _expected(problem, reduction, zero_infinity):
    """Reference losses (reduced) and the gradient of their sum, float64."""
    nll = ref.batch_nll(problem.log_probs, problem.labels, problem.input_lengths, problem.blank)
    grad = ref.batch_grad(problem.log_probs, problem.labels, problem.input_lengths, problem.blank)
    if zero_infinity:
        nll = np.where(np.isinf(nll), 0.0, nll)
    weights = np.ones(len(nll))
    if reduction == "mean":
        weights = 1.0 / (len(nll) * np.maximum(problem.target_lengths, 1))
    grad = grad * weights[None, :, None]
    loss = nll if reduction == "none" else np.asarray(np.dot(weights, nll) if np.isfinite(nll).all() else np.inf)
    if not problem.batched:
        loss, grad = (loss[0] if reduction == "none" else loss), grad[:, 0]
    return np.asarray(loss), grad


def _check_torch_agrees(arguments, loss, tolerance):
    """torch's ctc_loss on the same values (float64, index tensors), where torch accepts them."""
    a = arguments
    as_tensor = lambda x: x.resolve_neg().long() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x).astype(np.int64))
    try:
        theirs = F.ctc_loss(a["log_probs"].detach().double(), *map(as_tensor, (a["targets"], a["input_lengths"], a["target_lengths"])),
                            int(a["blank"]), a["reduction"], bool(a["zero_infinity"]))
    except RuntimeError:
        return  # torch refuses padded unbatched (S,) targets: ctckit reads them as padded
    np.testing.assert_allclose(loss, theirs.numpy(), rtol=tolerance, atol=tolerance)


SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("frontend", FRONTENDS)
@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_documented_arguments_give_the_reference_result(frontend, data):
    _check(data.draw, frontend, None)


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("hostile", ARGUMENTS)
@settings(max_examples=25, **SETTINGS)
@given(data=st.data())
def test_a_bad_argument_is_named_in_the_error(frontend, hostile, data):
    _check(data.draw, frontend, hostile)


def _check(draw, frontend, hostile):
    """Call ``frontend`` on a drawn problem, with a bad value for ``hostile`` (or none)."""
    problem = draw(problems())
    arguments = _benign_arguments(draw, problem, frontend)
    if hostile is not None:
        arguments[hostile] = _hostile_value(draw, hostile, arguments, problem, frontend)
    try:
        loss, grad = _call(frontend, arguments, gradient_wanted=hostile is None)
    except (CTCInputError, TypeError) as error:
        assert hostile is not None, f"{frontend} refused documented arguments: {error!r}"
        assert hostile in str(error), f"{frontend}: the error for a bad {hostile} does not name it: {error!r}"
        return
    assert hostile is None, f"{frontend} accepted a bad {hostile}: {arguments[hostile]!r:.80}"
    expected_loss, expected_grad = _expected(problem, arguments["reduction"], bool(arguments["zero_infinity"]))
    rtol, atol = TOLERANCES[problem.dtype]
    assert loss.shape == expected_loss.shape
    np.testing.assert_allclose(loss.astype(np.float64), expected_loss, rtol=rtol, atol=rtol)
    if grad is not None:
        assert grad.shape == expected_grad.shape
        np.testing.assert_allclose(np.asarray(grad, dtype=np.float64), expected_grad, rtol=rtol, atol=atol)
    if frontend.startswith("torch") and problem.dtype in ("float64", "float32"):
        _check_torch_agrees(arguments, loss, rtol)

"""The CTC loss on logits (``ctc_loss_from_logits``, log-softmax folded in), NumPy and torch:
against a float64 reference (the paper's recursions on ``log_softmax`` of float64 logits,
chained through the softmax's Jacobian), float32/float16/bfloat16 accuracy, masked and
infeasible items, the class dimension and strided inputs, the torch operator
(opcheck, torch.compile, torch.export, autocast) and bad input."""

import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ctckit.numpy as cn
import ctckit.torch as ct
import reference as ref
from cases import random_case
from conftest import log_softmax
from ctckit import CTCInputError

REDUCTIONS = ["none", "mean", "sum"]
FRONTENDS = pytest.mark.parametrize("frontend", ["numpy", "torch"])


# --------------------------------------------------------------------------- helpers


def _reference(x, labels, input_lengths, blank=0, reduction="mean", zero_infinity=False):
    """``(loss, grad)`` in float64 for (T, N, C) logits ``x`` (classes last): the reference's
    losses and log-prob gradient of ``log_softmax(x)``, the gradient chained through the
    softmax's Jacobian (``g - softmax * sum_c g``), zero for infeasible items."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lp = log_softmax(x)
    nll = ref.batch_nll(lp, labels, input_lengths, blank)
    g = ref.batch_grad(lp, labels, input_lengths, blank)
    size = x.shape[1]
    lengths = np.array([len(seq) for seq in labels])
    weights = np.full(size, 1.0) if reduction != "mean" else 1.0 / (np.maximum(lengths, 1) * size)
    grad = weights[None, :, None] * (g - np.exp(lp) * g.sum(-1, keepdims=True))
    if zero_infinity:
        nll = np.where(nll == np.inf, 0.0, nll)
    loss = nll if reduction == "none" else np.dot(weights, nll)
    return np.asarray(loss, dtype=np.float64), grad


def _pad(labels, rng, classes, width=None):
    """(N, S) targets with garbage padding (ignored), and the concatenated ones."""
    width = width or max(1, max(map(len, labels)) + 2)
    padded = rng.integers(-3, classes + 3, (len(labels), width))
    for n, seq in enumerate(labels):
        padded[n, : len(seq)] = seq
    concatenated = np.array([c for seq in labels for c in seq], dtype=np.int64)
    return padded, concatenated


def _edge_problem(rng, blank, frames=12, classes=6, scale=2.0):
    """A batch with repeats ("aab"), an empty target, a short input, an infeasible item
    ("aaa" in 4 frames needs 5) and an item of no frames (empty target: loss 0)."""
    a, b, c = [k for k in range(classes) if k != blank][:3]
    labels = [[a, a, b], [], [c, b, a, c], [a, a, a], [], [b, c, b, b, a]]
    input_lengths = np.array([frames, frames - 2, frames - 5, 4, 0, frames - 1])
    x = scale * rng.standard_normal((frames, len(labels), classes))
    return x, labels, input_lengths


def _assert_same_loss(alone, with_grad):
    """The loss computed without the gradient is that computed with it, up to the last bits
    (the core's loss-only and gradient passes sum in different orders, as on log-probs)."""
    alone, with_grad = np.asarray(alone, dtype=np.float64), np.asarray(with_grad, dtype=np.float64)
    np.testing.assert_array_equal(np.isfinite(alone), np.isfinite(with_grad))
    np.testing.assert_array_equal(alone[~np.isfinite(alone)], with_grad[~np.isfinite(with_grad)])
    np.testing.assert_allclose(alone, with_grad, rtol=1e-13, atol=0)


def _numpy_call(x, targets, input_lengths, target_lengths, **kwargs):
    loss, grad = cn.ctc_loss_and_grad_from_logits(x, targets, input_lengths, target_lengths, **kwargs)
    loss_only = cn.ctc_loss_from_logits(x, targets, input_lengths, target_lengths, **kwargs)
    _assert_same_loss(loss_only, loss)
    return loss, grad


def _torch_call(x, targets, input_lengths, target_lengths, **kwargs):
    logits = torch.from_numpy(np.array(x)).requires_grad_()
    as_tensor = lambda v: torch.as_tensor(np.asarray(v))
    loss = ct.ctc_loss_from_logits(logits, as_tensor(targets), as_tensor(input_lengths), as_tensor(target_lengths),
                                   **kwargs)
    loss.sum().backward()
    with torch.no_grad():  # the loss without the gradient: same value
        alone = ct.ctc_loss_from_logits(logits, as_tensor(targets), as_tensor(input_lengths), as_tensor(target_lengths),
                                        **kwargs)
    _assert_same_loss(alone.numpy(), loss.detach().numpy())
    return loss.detach().numpy(), logits.grad.numpy()


CALLS = {"numpy": _numpy_call, "torch": _torch_call}


def _assert_close(loss, grad, want_loss, want_grad, rtol=1e-10, atol=1e-11):
    loss = np.asarray(loss, dtype=np.float64)
    assert loss.shape == want_loss.shape
    np.testing.assert_array_equal(np.isinf(loss), np.isinf(want_loss))
    finite = np.isfinite(want_loss)
    np.testing.assert_allclose(loss[finite], want_loss[finite], rtol=rtol, atol=atol)
    assert grad.shape == want_grad.shape
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=atol)


# --------------------------------------------------------------------------- 1. against the float64 reference


@FRONTENDS
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("form", ["padded", "concatenated"])
@pytest.mark.parametrize("blank", [0, 2, 5])  # first, middle, last of C = 6
def test_matches_float64_reference(frontend, reduction, zero_infinity, form, blank, rng):
    x, labels, il = _edge_problem(rng, blank)
    padded, concatenated = _pad(labels, rng, 6)
    tl = [len(seq) for seq in labels]
    targets = padded if form == "padded" else concatenated
    loss, grad = CALLS[frontend](x, targets, il, tl, blank=blank, reduction=reduction, zero_infinity=zero_infinity)
    want_loss, want_grad = _reference(x, labels, il, blank, reduction, zero_infinity)
    _assert_close(loss, grad, want_loss, want_grad)
    assert loss.dtype == np.float64 and grad.dtype == np.float64
    # the edges that matter: the infeasible item (3) is inf or 0, the frameless one 0, no grad past input_lengths
    if reduction == "none":
        assert loss[3] == (0.0 if zero_infinity else np.inf) and loss[4] == 0.0
    assert not grad[:, 3].any() and not grad[:, 4].any()
    for n, frames in enumerate(il):
        assert not grad[frames:, n].any()
    # each used frame of a feasible item: the gradient (softmax - posteriors) sums to 0 over the classes
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-12)


@FRONTENDS
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("blank", [0, 3])
def test_unbatched_logits_match_reference(frontend, reduction, blank, rng):
    frames, classes = 9, 5
    x = 1.5 * rng.standard_normal((frames, classes))
    labels = [k for k in range(classes) if k != blank][:2]
    labels = [labels[0], labels[0], labels[1]]  # a repeat
    for length, targets in ((7, labels), (0, [])):  # short input, and an empty target over all frames
        il = length or frames
        loss, grad = CALLS[frontend](x, np.array(targets, dtype=np.int64), il, len(targets), blank=blank,
                                     reduction=reduction)
        want_loss, want_grad = _reference(x[:, None], [targets], [il], blank, reduction)
        assert np.shape(loss) == () and grad.shape == (frames, classes)
        _assert_close(loss, grad, want_loss.reshape(()), want_grad[:, 0])
        # the same as a batch of one
        batched, batched_grad = CALLS[frontend](x[:, None], np.array([targets + [1]], dtype=np.int64), [il], [len(targets)],
                                                blank=blank, reduction=reduction)
        np.testing.assert_array_equal(np.reshape(batched, -1)[0], loss)
        np.testing.assert_array_equal(batched_grad[:, 0], grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("blank", [0, 3, 6])
def test_torch_matches_torch_ctc_loss_on_float64_log_softmax(reduction, blank, rng):
    # torch's own kernel, differentiated through its log_softmax by autograd; with
    # zero_infinity, so that its gradient of infeasible items is zero too.
    frames, classes = 15, 7
    case = random_case(rng, frames, 5, classes, max_target=6, infeasible=0.3, blank=blank)
    case.input_lengths[case.input_lengths == 0] = 1  # torch's kernel: no items without frames
    x = torch.tensor(3.0 * rng.standard_normal((frames, 5, classes)))
    targets, il, tl = (torch.tensor(a) for a in (case.concatenated, case.input_lengths, case.target_lengths))
    theirs_x = x.clone().requires_grad_()
    theirs = F.ctc_loss(theirs_x.log_softmax(2), targets, il, tl, blank, reduction, zero_infinity=True)
    theirs.sum().backward()
    ours_x = x.clone().requires_grad_()
    ours = ct.ctc_loss_from_logits(ours_x, targets, il, tl, blank, reduction, zero_infinity=True)
    ours.sum().backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours_x.grad, theirs_x.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("classes", [5, 40])  # the eager step keeps the gradient itself (5), or the posteriors (40)
def test_torch_upstream_gradient_and_a_second_backward(reduction, classes, rng):
    # A random upstream gradient (not the 1 of loss.backward()), twice with retain_graph:
    # the saved gradient or posteriors are scaled, never changed in place. Padded targets
    # of width 6: K = min(C, 7) columns, so C = 5 keeps the gradient, C = 40 the posteriors.
    x, targets, il, tl = _torch_problem(frames=12, batch=4, classes=classes, max_target=6, seed=len(reduction))
    upstream = torch.tensor(rng.standard_normal(4) if reduction == "none" else 2.5, dtype=torch.float64)
    theirs_x = x.clone().requires_grad_()
    (theirs_grad,) = torch.autograd.grad(F.ctc_loss(theirs_x.log_softmax(2), targets, il, tl, 0, reduction,
                                                    zero_infinity=True), theirs_x, upstream)
    ours_x = x.clone().requires_grad_()
    ours = ct.ctc_loss_from_logits(ours_x, targets, il, tl, 0, reduction, zero_infinity=True)
    first = torch.autograd.grad(ours, ours_x, upstream, retain_graph=True)[0]
    second = torch.autograd.grad(ours, ours_x, -upstream)[0]
    torch.testing.assert_close(first, theirs_grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(second, -theirs_grad, rtol=0, atol=1e-10)
    assert first.abs().max() > 0.01


def test_torch_logits_changed_in_place_after_the_forward_are_refused():
    x, targets, il, tl = _torch_problem(classes=4)  # small classes: the gradient is made in the forward
    x.requires_grad_()
    logits = x * 1.0
    loss = ct.ctc_loss_from_logits(logits, targets, il, tl)
    with torch.no_grad():
        logits.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# --------------------------------------------------------------------------- 2. float32 and large logits


@FRONTENDS
@pytest.mark.parametrize("frames,classes,length,scale", [
    (200, 50, 40, 1.0),
    (200, 50, 40, 1e4),   # peaky: log-probs down to about -1e5
    (60, 2000, 15, 1.0),  # a wide vocabulary
    (120, 8, 30, 30.0),
])
def test_float32_within_1e_5_of_float64(frontend, frames, classes, length, scale):
    rng = np.random.default_rng(frames * classes + int(scale))
    batch = 3
    x = (scale * rng.standard_normal((frames, batch, classes))).astype(np.float32)
    labels = [list(rng.integers(1, classes, length - 5 * n)) for n in range(batch)]
    il = np.array([frames, frames - 7, frames - 20])
    padded, _ = _pad(labels, rng, classes)
    loss, grad = CALLS[frontend](x, padded, il, [len(s) for s in labels], reduction="none")
    want_loss, want_grad = _reference(x.astype(np.float64), labels, il, reduction="none")
    assert np.isfinite(want_loss).all()
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    assert np.max(np.abs(loss - want_loss) / np.abs(want_loss)) < 1e-5
    assert np.max(np.abs(grad - want_grad)) / np.max(np.abs(want_grad)) < 1e-5


@FRONTENDS
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale,offset", [(1e4, 0.0), (3e5, 0.0), (1.0, 1e4), (3.0, -3e4)])
def test_huge_logits_stay_finite_and_exact(frontend, dtype, scale, offset, rng):
    # exps of logits this large overflow unless shifted by each frame's maximum
    frames, classes = 30, 7
    x = (scale * rng.standard_normal((frames, 3, classes)) + offset).astype(dtype)
    labels = [[1, 2, 2, 3], [4], [5, 6, 1, 1, 2, 3]]
    padded, _ = _pad(labels, rng, classes)
    for reduction in ("none", "mean"):
        loss, grad = CALLS[frontend](x, padded, [30, 25, 30], [4, 1, 6], reduction=reduction)
        want_loss, want_grad = _reference(x.astype(np.float64), labels, [30, 25, 30], reduction=reduction)
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
        # float64: the reference's posteriors, exps of sums of log-probs of about -1e7, are
        # themselves only about 1e-16 * 1e7 exact
        tol = 1e-10 + 1e-15 * np.abs(want_loss).max() if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(loss, want_loss, rtol=tol)
        assert np.max(np.abs(grad - want_grad)) <= tol * np.max(np.abs(want_grad))


@FRONTENDS
@pytest.mark.parametrize("scale", [1e19, 1e30])
def test_logits_of_magnitude_1e19_and_more_give_the_finite_loss(frontend, scale):
    # Log-probs this large are finite in float64 and the loss is about their size: not NaN.
    base = np.array([[-5.1469242934988874, -7.7252751373458391, 0.0],
                     [-2.5669493775644500, -8.9726442807059579, 0.0],
                     [0.0, -3.5691908200089518, -20.077352809371297]])[:, None, :]
    x = base * scale
    loss, grad = CALLS[frontend](x, np.array([[1, 2]]), [3], [2], reduction="none")
    want_loss, want_grad = _reference(x, [[1, 2]], [3], reduction="none")
    assert np.isfinite(want_loss).all()
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, atol=1e-12)


def test_loss_is_invariant_to_a_constant_shift_of_the_logits(rng):
    x = 2.0 * rng.standard_normal((40, 2, 9))
    labels = np.array([[1, 2, 3, 3, 4], [8, 7, 0, 0, 0]])
    base, base_grad = cn.ctc_loss_and_grad_from_logits(x, labels, [40, 33], [5, 2], reduction="none")
    shifted, shifted_grad = cn.ctc_loss_and_grad_from_logits(x + 1e3 * rng.standard_normal((40, 2, 1)), labels, [40, 33],
                                                              [5, 2], reduction="none")
    np.testing.assert_allclose(shifted, base, rtol=1e-11)
    np.testing.assert_allclose(shifted_grad, base_grad, atol=1e-11)


# --------------------------------------------------------------------------- 3. masked classes


@FRONTENDS
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_masked_classes_get_exactly_zero_gradient(frontend, zero_infinity, dtype, rng):
    frames, classes = 14, 8
    x = 2.0 * rng.standard_normal((frames, 4, classes))
    x[..., 6:] = -np.inf  # classes masked everywhere (no item uses them)
    mask = rng.random(x.shape) < 0.15  # entries masked here and there, also on used classes
    mask[..., 0] = False  # never the blank: the items stay feasible
    x[mask] = -np.inf
    x[:, 3, 5] = -np.inf  # item 3 uses class 5, masked on all its frames: infeasible
    labels = [[1, 2, 2], [3], [4, 1, 2, 3], [5, 1]]
    il = [14, 10, 14, 14]
    x = x.astype(dtype)
    padded, _ = _pad(labels, rng, classes)
    loss, grad = CALLS[frontend](x, padded, il, [len(s) for s in labels], reduction="none", zero_infinity=zero_infinity)
    want_loss, want_grad = _reference(x.astype(np.float64), labels, il, reduction="none", zero_infinity=zero_infinity)
    assert loss[3] == (0.0 if zero_infinity else np.inf)
    assert np.isfinite(loss[:3]).all()
    assert not np.isnan(grad).any()
    masked = np.isneginf(x)
    assert (grad[masked] == 0.0).all(), "a class masked with -inf got a gradient"
    assert not grad[:, 3].any(), "an infeasible item got a gradient"
    tol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(loss, want_loss, rtol=tol)
    np.testing.assert_allclose(grad, want_grad, atol=tol)


@FRONTENDS
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_not_a_number_logits_give_nan_on_that_item_only(frontend, reduction, rng):
    # A NaN (or +inf: log_softmax is NaN there) on a frame an item uses makes its loss NaN
    # and its gradient NaN on its frames; on a padding frame it is never read.
    # A frame of item 4 masked on every class is NaN too (log_softmax: -inf - -inf).
    x = rng.standard_normal((10, 5, 5))
    x[3, 1, 2] = np.nan
    x[5, 2, 4] = np.inf
    x[8:, 3] = np.nan  # item 3 has 8 frames: padding
    x[9, 3, :] = -np.inf
    x[6, 4, :] = -np.inf
    labels = [[1, 2], [2, 3], [4], [1, 1], [3]]
    il = [10, 9, 7, 8, 10]
    loss, grad = CALLS[frontend](x, _pad(labels, rng, 5)[0], il, [2, 2, 1, 2, 1], reduction=reduction)
    clean = np.where(np.isfinite(x), x, 0.0)
    want_loss, want_grad = _reference(clean, labels, il, reduction=reduction)
    if reduction == "none":
        assert np.isnan(loss[[1, 2, 4]]).all()
        np.testing.assert_allclose(loss[[0, 3]], want_loss[[0, 3]], rtol=1e-10)
    else:
        assert np.isnan(loss)
    assert np.isnan(grad[:9, 1]).all() and np.isnan(grad[:7, 2]).all() and np.isnan(grad[:, 4]).all()
    assert not grad[9:, 1].any() and not grad[7:, 2].any()
    np.testing.assert_allclose(grad[:, [0, 3]], want_grad[:, [0, 3]], atol=1e-11)


# --------------------------------------------------------------------------- 4. float16 and bfloat16


def _half_logits(frontend, name, values):
    """``values`` (float64) rounded to the half type, and the exact float64 values it holds."""
    if frontend == "numpy":
        array = values.astype(np.float16 if name == "float16" else ml_dtypes.bfloat16)
        return array, array.astype(np.float64)
    tensor = torch.tensor(values).to(getattr(torch, name))
    return tensor, tensor.double().numpy()


HALF_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}  # twice the largest relative rounding error
HALF_TINY = {"float16": 2.0**-24, "bfloat16": 0.0}  # the spacing of float16's subnormals


@FRONTENDS
@pytest.mark.parametrize("name", ["float16", "bfloat16"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("scale", [3.0, 300.0])
def test_half_logits_match_float64_on_the_same_values(frontend, name, reduction, scale, rng):
    frames, classes = 16, 9
    values = scale * rng.standard_normal((frames, 4, classes))
    values[:, :, 8] = -np.inf  # a masked class
    values[2, 0, :4] = [1e-7, -6e-8, 0.0, -0.0]  # float16 subnormals and zeros
    logits, exact = _half_logits(frontend, name, values)
    labels = [[1, 2, 2, 3], [7], [], [5, 6, 5]]
    il = [16, 12, 9, 16]
    padded, _ = _pad(labels, rng, classes)
    tl = [len(s) for s in labels]
    if frontend == "numpy":
        loss, grad = cn.ctc_loss_and_grad_from_logits(logits, padded, il, tl, reduction=reduction)
        assert loss.dtype == logits.dtype and grad.dtype == logits.dtype
        loss_only = cn.ctc_loss_from_logits(logits, padded, il, tl, reduction=reduction)
        assert loss_only.dtype == logits.dtype
        np.testing.assert_allclose(loss_only.astype(np.float64), loss.astype(np.float64), rtol=HALF_EPS[name])
    else:
        x = logits.clone().requires_grad_()
        loss = ct.ctc_loss_from_logits(x, torch.tensor(padded), torch.tensor(il), torch.tensor(tl), reduction=reduction)
        assert loss.dtype == logits.dtype
        loss.sum().backward()
        assert x.grad.dtype == logits.dtype
        loss, grad = loss.detach(), x.grad
    loss = np.asarray(loss.float() if frontend == "torch" else loss, dtype=np.float64)
    grad = np.asarray(grad.float() if frontend == "torch" else grad, dtype=np.float64)
    want_loss, want_grad = _reference(exact, labels, il, reduction=reduction)
    np.testing.assert_allclose(loss, want_loss, rtol=HALF_EPS[name])
    assert (grad[np.isneginf(exact)] == 0.0).all()
    slack = HALF_TINY[name] + 1e-5 * np.abs(want_grad).max()  # the float32 gradient, then rounded
    np.testing.assert_allclose(grad, want_grad, rtol=HALF_EPS[name], atol=slack)


# --------------------------------------------------------------------------- 5. the class dimension, strides


@FRONTENDS
@pytest.mark.parametrize("dim", [0, 1, 2, -1, -2, -3])
def test_dim_is_the_class_dimension(frontend, dim, rng):
    x = rng.standard_normal((11, 3, 6))
    labels = np.array([[1, 2, 2], [5, 0, 0], [3, 4, 0]])
    il, tl = [11, 8, 10], [3, 1, 2]
    base, base_grad = CALLS[frontend](x, labels, il, tl, reduction="sum")
    moved = np.ascontiguousarray(np.moveaxis(x, -1, dim))  # the classes really on dim
    loss, grad = CALLS[frontend](moved, labels, il, tl, reduction="sum", dim=dim)
    assert grad.shape == moved.shape
    np.testing.assert_array_equal(loss, base)
    np.testing.assert_array_equal(grad, np.moveaxis(base_grad, -1, dim))


@FRONTENDS
@pytest.mark.parametrize("dim", [0, -2, 1, -1])
def test_dim_of_unbatched_logits(frontend, dim, rng):
    x = rng.standard_normal((10, 5))
    base, base_grad = CALLS[frontend](x, np.array([1, 3, 3]), 10, 3)
    moved = np.ascontiguousarray(np.moveaxis(x, -1, dim))
    loss, grad = CALLS[frontend](moved, np.array([1, 3, 3]), 10, 3, dim=dim)
    np.testing.assert_array_equal(loss, base)
    np.testing.assert_array_equal(grad, np.moveaxis(base_grad, -1, dim))


def _strided_views(rng, shape):
    """(T, N, C) arrays with other strides than C-contiguous ones, each with its name."""
    frames, batch, classes = shape
    yield "batch-first", rng.standard_normal((batch, frames, classes)).transpose(1, 0, 2)
    yield "every other frame", rng.standard_normal((2 * frames, batch, classes))[::2]
    yield "every other class", rng.standard_normal((frames, batch, 2 * classes))[:, :, 1::2]
    yield "Fortran order", np.asfortranarray(rng.standard_normal(shape))
    yield "reversed", rng.standard_normal(shape)[::-1, ::-1]
    yield "classes first", rng.standard_normal((classes, batch, frames)).transpose(2, 1, 0)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_numpy_strided_logits_give_the_same_bits_as_contiguous(dtype, rng):
    dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    labels = np.array([[1, 2, 2, 3], [4, 0, 0, 0], [3, 1, 4, 2]])
    for name, view in _strided_views(rng, (13, 3, 5)):
        view = (3.0 * view).astype(dtype, copy=False) if dtype != np.float64 else view
        if dtype != np.float64:  # astype copies: make the view strided again, by the same recipe
            view = _restride(view, name)
        assert not view.flags.c_contiguous, name
        for reduction in REDUCTIONS:
            got = cn.ctc_loss_and_grad_from_logits(view, labels, [13, 9, 12], [4, 1, 4], reduction=reduction)
            want = cn.ctc_loss_and_grad_from_logits(np.ascontiguousarray(view), labels, [13, 9, 12], [4, 1, 4],
                                                    reduction=reduction)
            assert got[1].dtype == dtype and got[1].shape == view.shape
            np.testing.assert_array_equal(got[0], want[0], err_msg=name)
            np.testing.assert_array_equal(got[1], want[1], err_msg=name)


def _restride(array, name):
    """A copy of ``array`` with the strides the view ``name`` of :func:`_strided_views` has."""
    if name == "batch-first":
        return np.ascontiguousarray(array.transpose(1, 0, 2)).transpose(1, 0, 2)
    if name == "every other frame":
        out = np.empty((2 * array.shape[0],) + array.shape[1:], dtype=array.dtype)
        out[::2] = array
        return out[::2]
    if name == "every other class":
        out = np.empty(array.shape[:2] + (2 * array.shape[2],), dtype=array.dtype)
        out[:, :, 1::2] = array
        return out[:, :, 1::2]
    if name == "Fortran order":
        return np.asfortranarray(array)
    if name == "reversed":
        return np.ascontiguousarray(array[::-1, ::-1])[::-1, ::-1]
    return np.ascontiguousarray(array.transpose(2, 1, 0)).transpose(2, 1, 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_torch_strided_logits_give_the_same_bits_as_contiguous(dtype):
    g = torch.Generator().manual_seed(3)
    frames, batch, classes = 13, 3, 5
    randn = lambda *shape: (3.0 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)
    views = {
        "batch-first": randn(batch, frames, classes).transpose(0, 1),
        "every other frame": randn(2 * frames, batch, classes)[::2],
        "every other class": randn(frames, batch, 2 * classes)[:, :, ::2],
        "classes first": randn(classes, batch, frames).permute(2, 1, 0),
    }
    targets, il, tl = torch.tensor([[1, 2, 2, 3], [4, 0, 0, 0], [3, 1, 4, 2]]), torch.tensor([13, 9, 12]), torch.tensor([4, 1, 4])
    for name, view in views.items():
        assert not view.is_contiguous(), name
        results = []
        for x in (view, view.contiguous()):
            x = x.detach().requires_grad_()
            loss = ct.ctc_loss_from_logits(x, targets, il, tl, reduction="sum")
            loss.backward()
            results.append((loss.detach(), x.grad))
        (loss, grad), (want, want_grad) = results
        assert grad.dtype == dtype and grad.shape == view.shape
        assert torch.equal(loss, want), name
        assert torch.equal(grad, want_grad), name


# --------------------------------------------------------------------------- 6. the torch operator


def _torch_problem(frames=20, batch=3, classes=6, max_target=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(frames, batch, classes, generator=g, dtype=dtype)
    targets = torch.randint(1, classes, (batch, max_target), generator=g)
    input_lengths = torch.randint(frames // 2 + 1, frames + 1, (batch,), generator=g)
    input_lengths[0] = frames
    target_lengths = torch.randint(0, max_target + 1, (batch,), generator=g)
    return x, targets, input_lengths, target_lengths


@pytest.mark.parametrize("classes", [6, 40])
@pytest.mark.parametrize("concatenated", [False, True])
@pytest.mark.parametrize("need_grad", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_opcheck_loss_operator(classes, concatenated, need_grad, batch_first):
    x, targets, il, tl = _torch_problem(classes=classes)
    if batch_first:
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    if concatenated:
        targets = torch.cat([targets[n, : tl[n]] for n in range(len(tl))])
    logits = x.detach().requires_grad_()
    assert torch.ops.ctckit.ctc_loss_from_logits.default is not None
    torch.library.opcheck(torch.ops.ctckit.ctc_loss_from_logits.default, (logits, targets, il, tl, 0, need_grad))


@pytest.mark.parametrize("batch_first", [False, True])
def test_opcheck_gradient_operator(batch_first):
    from ctckit._torch_logits import _gradient_op, _loss_op

    x, targets, il, tl = _torch_problem()
    if batch_first:
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    nll, lse, posteriors, class_of_column = _loss_op(x, targets, il, tl, 0, True)
    scale = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    torch.library.opcheck(_gradient_op, (x, lse, posteriors, class_of_column, targets, il, tl, nll, scale, 0))


class LogitsModel(torch.nn.Module):
    def __init__(self, classes, reduction="mean", zero_infinity=False, dim=-1):
        super().__init__()
        self.proj = torch.nn.Linear(classes, classes, dtype=torch.float64)
        self.dim = dim
        self.loss = ct.CTCLossFromLogits(reduction=reduction, zero_infinity=zero_infinity, dim=dim)

    def forward(self, x, targets, input_lengths, target_lengths):
        return self.loss(self.proj(x).movedim(-1, self.dim), targets, input_lengths, target_lengths)


@pytest.mark.parametrize("reduction,dim", [("mean", -1), ("sum", 0), ("none", 1)])
def test_compile_fullgraph_matches_eager(reduction, dim):
    x, targets, il, tl = _torch_problem()
    il[1] = 3  # an infeasible item (up to 5 labels in 3 frames)
    tl[1] = 5
    model = LogitsModel(6, reduction, zero_infinity=True, dim=dim)
    eager = model(x, targets, il, tl)
    eager_grads = torch.autograd.grad(eager.sum(), list(model.parameters()))
    torch._dynamo.reset()
    compiled_model = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled = compiled_model(x, targets, il, tl)
    compiled_grads = torch.autograd.grad(compiled.sum(), list(model.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in compiled_grads)


def test_compile_fullgraph_gradient_of_the_logits_matches_eager():
    x, targets, il, tl = _torch_problem(classes=12)

    def step(logits):
        return ct.ctc_loss_from_logits(logits, targets, il, tl, reduction="sum")

    torch._dynamo.reset()
    results = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        logits = x.clone().requires_grad_()
        loss = fn(logits)
        loss.backward()
        results.append((loss.detach(), logits.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-13, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("batch_first", [False, True])
def test_compile_with_inductor_matches_eager(batch_first):
    # A batch-first model's (N, T, C) output, transposed to (T, N, C): the kernels read it
    # without a copy; the compiled backward must agree with the gradient's strides.
    x, targets, il, tl = _torch_problem()
    weight = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if batch_first:
        x = x.transpose(0, 1).contiguous()

    def step(x, weight):
        logits = x @ weight
        return ct.ctc_loss_from_logits(logits.transpose(0, 1) if batch_first else logits, targets, il, tl)

    torch._dynamo.reset()
    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        w = weight.clone().requires_grad_()
        loss = fn(x, w)
        loss.backward()
        results.append((loss.detach(), w.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-10, atol=1e-12)


def test_export_gives_the_same_loss():
    x, targets, il, tl = _torch_problem()
    model = LogitsModel(6)
    program = torch.export.export(model, (x, targets, il, tl))
    assert any("ctc_loss_from_logits" in str(node.target) for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(x, targets, il, tl), model(x, targets, il, tl), rtol=1e-13, atol=0)
    x2, targets2, il2, tl2 = _torch_problem(seed=5)
    torch.testing.assert_close(program.module()(x2, targets2, il2, tl2), model(x2, targets2, il2, tl2), rtol=1e-13,
                               atol=0)


def test_autocast_bfloat16_returns_float32_as_ctc_loss_does():
    x, targets, il, tl = _torch_problem(dtype=torch.float32)
    proj = torch.nn.Linear(6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = proj(x)
        assert logits.dtype == torch.bfloat16
        logits.retain_grad()
        loss = ct.ctc_loss_from_logits(logits, targets, il, tl)
        on_log_probs = ct.ctc_loss(logits.log_softmax(2).to(torch.bfloat16), targets, il, tl)
    assert loss.dtype == torch.float32 and on_log_probs.dtype == torch.float32
    exact = F.ctc_loss(logits.detach().double().log_softmax(2), targets, il, tl)
    torch.testing.assert_close(loss.double(), exact, rtol=1e-6, atol=0)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all() and proj.weight.grad.abs().sum() > 0


def test_double_backward_is_refused():
    x, targets, il, tl = _torch_problem()
    logits = x.detach().requires_grad_()
    grad, = torch.autograd.grad(ct.ctc_loss_from_logits(logits, targets, il, tl), logits, create_graph=True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(grad.square().sum(), logits)


def test_no_grad_fn_without_requires_grad():
    x, targets, il, tl = _torch_problem()
    loss = ct.ctc_loss_from_logits(x, targets, il, tl)
    assert loss.grad_fn is None and not loss.requires_grad
    logits = x.detach().requires_grad_()
    with torch.no_grad():
        inside = ct.ctc_loss_from_logits(logits, targets, il, tl)
    assert inside.grad_fn is None and not inside.requires_grad
    outside = ct.ctc_loss_from_logits(logits, targets, il, tl)
    assert outside.grad_fn is not None
    assert torch.equal(loss, inside) and torch.equal(inside, outside.detach())


def test_module_equals_function_and_checks_its_options():
    x, targets, il, tl = _torch_problem()
    module = ct.CTCLossFromLogits(blank=0, reduction="sum", zero_infinity=True, dim=-1)
    assert torch.equal(module(x, targets, il, tl), ct.ctc_loss_from_logits(x, targets, il, tl, reduction="sum",
                                                                           zero_infinity=True))
    assert repr(module) == "CTCLossFromLogits(blank=0, reduction='sum', zero_infinity=True, dim=-1)"
    with pytest.raises(TypeError, match=r"dim must be an int, got bool"):
        ct.CTCLossFromLogits(dim=True)
    with pytest.raises(TypeError, match=r"dim must be an int, got float"):
        ct.CTCLossFromLogits(dim=1.0)
    with pytest.raises(TypeError, match=r"zero_infinity must be a bool"):
        ct.CTCLossFromLogits(zero_infinity="no")
    with pytest.raises(CTCInputError, match=r"dim must be in \[-3, 3\)"):
        ct.CTCLossFromLogits(dim=3)(x, targets, il, tl)


# --------------------------------------------------------------------------- 7. bad input

T, N, C = 6, 3, 5
X = torch.randn(T, N, C, generator=torch.Generator().manual_seed(1))
TARGETS = torch.tensor([[1, 2, 3, 4], [1, 1, 0, 0], [2, 0, 0, 0]])
IL = torch.tensor([6, 5, 4])
TL = torch.tensor([4, 2, 1])


def _call(frontend, fused, x=X, targets=TARGETS, il=IL, tl=TL, **kwargs):
    """ctc_loss_from_logits (``fused``) or ctc_loss on log-probs, NumPy or torch."""
    if frontend == "numpy":
        convert = lambda v: v.numpy() if isinstance(v, torch.Tensor) else v
        x, targets, il, tl = map(convert, (x, targets, il, tl))
        function = cn.ctc_loss_from_logits if fused else cn.ctc_loss
    else:
        function = ct.ctc_loss_from_logits if fused else ct.ctc_loss
    return function(x, targets, il, tl, **kwargs)


# (arguments, error, the message naming the argument); each raised as ctc_loss raises it for log_probs
SHARED_ERRORS = [
    (dict(x=torch.zeros(T, N, C, dtype=torch.long)), TypeError, r"logits must be a floating-point"),
    (dict(x=torch.zeros(T, N, C, dtype=torch.int32)), TypeError, r"logits must be a floating-point"),
    (dict(x=torch.randn(T)), CTCInputError, r"logits must be \(T, N, C\) or unbatched \(T, C\), got 1 dimensions"),
    (dict(x=torch.randn(T, N, C, 2)), CTCInputError, r"logits must be \(T, N, C\) or unbatched \(T, C\), got 4 dim"),
    (dict(x=torch.randn(0, N, C)), CTCInputError, r"logits must not be empty"),
    (dict(x=torch.randn(T, N, 0)), CTCInputError, r"logits must not be empty"),
    (dict(targets=torch.tensor([[1, 2, 0, 4], [1, 1, 0, 0], [2, 0, 0, 0]])), CTCInputError,
     r"targets\[0, 2\] \(batch index 0\) = 0 equals blank \(0\)"),
    (dict(targets=torch.tensor([[1, 2, 3, 4], [1, 3, 0, 0], [2, 0, 0, 0]]), blank=3), CTCInputError,
     r"targets\[0, 2\] \(batch index 0\) = 3 equals blank \(3\)"),
    (dict(targets=torch.tensor([[1, 2, 3, 4], [1, 5, 0, 0], [2, 0, 0, 0]])), CTCInputError,
     r"targets\[1, 1\] \(batch index 1\) = 5 is outside \[0, C\) = \[0, 5\)"),
    (dict(targets=torch.tensor([1, 2, 3, 4, 1, 1, 9])), CTCInputError, r"targets\[6\] \(batch index 2\) = 9 is outside"),
    (dict(il=torch.tensor([6, 7, 4])), CTCInputError,
     r"input_lengths\[1\] = 7 exceeds the number of frames T = 6 \(batch index 1\)"),
    (dict(il=torch.tensor([6, -1, 4])), CTCInputError, r"input_lengths\[1\] = -1 is negative \(batch index 1\)"),
    (dict(tl=torch.tensor([4, 2, -3])), CTCInputError, r"target_lengths\[2\] = -3 is negative \(batch index 2\)"),
    (dict(tl=torch.tensor([4, 5, 1])), CTCInputError, r"target_lengths\[1\] = 5 exceeds the padded target length S = 4"),
    (dict(il=torch.tensor([6, 5])), CTCInputError, r"input_lengths must have N = 3 elements"),
    (dict(blank=5), CTCInputError, r"blank must be in \[0, C\) = \[0, 5\), got 5"),
    (dict(blank=True), TypeError, r"blank must be an int, got bool"),
    (dict(reduction="avg"), CTCInputError, r"reduction must be one of"),
    (dict(zero_infinity="False"), TypeError, r"zero_infinity must be a bool, got str"),
    (dict(il=IL.float()), TypeError, r"input_lengths must have an integer dtype"),
]


@FRONTENDS
@pytest.mark.parametrize("kwargs,error,message", SHARED_ERRORS)
def test_bad_input_raises_as_ctc_loss_does_naming_the_argument(frontend, kwargs, error, message):
    with pytest.raises(error, match=message) as raised:
        _call(frontend, True, **kwargs)
    assert type(raised.value) is error
    with pytest.raises(Exception) as on_log_probs:  # noqa: PT011 (the same as ctc_loss's, with its argument's name)
        _call(frontend, False, **kwargs)
    assert type(on_log_probs.value) is error
    assert str(raised.value) == str(on_log_probs.value).replace("log_probs", "logits")


@FRONTENDS
@pytest.mark.parametrize("x,error,message", [
    ("abc", TypeError, r"logits must be a"),
    (None, TypeError, r"logits must be a"),
    ({"a": 1.0}, TypeError, r"logits must be a"),
])
def test_non_array_logits_raise_naming_logits(frontend, x, error, message):
    with pytest.raises(error, match=message):
        _call(frontend, True, x=x)


def test_torch_refuses_a_numpy_array_naming_logits():
    with pytest.raises(TypeError, match=r"logits must be a torch.Tensor, got ndarray"):
        ct.ctc_loss_from_logits(X.numpy(), TARGETS, IL, TL)


def test_numpy_takes_nested_lists_of_floats():
    loss = cn.ctc_loss_from_logits(X.double().tolist(), TARGETS.tolist(), IL.tolist(), TL.tolist())
    assert loss == cn.ctc_loss_from_logits(X.double().numpy(), TARGETS.numpy(), IL.numpy(), TL.numpy())


@FRONTENDS
@pytest.mark.parametrize("dim,error,message", [
    (3, CTCInputError, r"dim must be in \[-3, 3\) for logits with 3 dimensions, got 3"),
    (-4, CTCInputError, r"dim must be in \[-3, 3\) for logits with 3 dimensions, got -4"),
    (True, TypeError, r"dim must be an int, got bool"),
    (False, TypeError, r"dim must be an int, got bool"),
    (1.0, TypeError, r"dim must be an int, got float"),
    ("0", TypeError, r"dim must be an int, got str"),
    (None, TypeError, r"dim must be an int, got NoneType"),
])
def test_bad_dim_raises_naming_dim(frontend, dim, error, message):
    with pytest.raises(error, match=message):
        _call(frontend, True, dim=dim)


@FRONTENDS
def test_bad_dim_of_unbatched_logits(frontend):
    with pytest.raises(CTCInputError, match=r"dim must be in \[-2, 2\) for logits with 2 dimensions, got 2"):
        _call(frontend, True, x=X[:, 0], targets=TARGETS[0], il=6, tl=4, dim=2)


@FRONTENDS
def test_lengths_are_checked_against_t_after_moving_the_classes(frontend):
    # (C, T, N) = (5, 6, 3) with dim=0: T is 6, not 5
    x = X.permute(2, 0, 1).contiguous()
    with pytest.raises(CTCInputError, match=r"input_lengths\[1\] = 7 exceeds the number of frames T = 6"):
        _call(frontend, True, x=x, il=torch.tensor([6, 7, 4]), dim=0)
    with pytest.raises(CTCInputError, match=r"targets\[1, 1\] \(batch index 1\) = 5 is outside \[0, C\) = \[0, 5\)"):
        _call(frontend, True, x=x, targets=torch.tensor([[1, 2, 3, 4], [1, 5, 0, 0], [2, 0, 0, 0]]), dim=0)
    assert np.isfinite(float(_call(frontend, True, x=x, il=torch.tensor([6, 6, 6]), dim=0)))
    assert np.isfinite(float(_call(frontend, True, x=x, dim=np.int64(0))))


# --------------------------------------------------------------------------- 8. against the loss on log-probs


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_gradient_equals_ctc_loss_on_log_softmax(reduction, zero_infinity, seed):
    rng = np.random.default_rng(100 + seed)
    case = random_case(rng, 25, 6, int(rng.integers(3, 30)), infeasible=0.35, blank=[0, None, None][seed])
    case.labels[0], case.input_lengths[0], case.target_lengths[0] = [], 25, 0  # make sure of both kinds
    case.labels[1] = [c for c in range(case.shape[2]) if c != case.blank][:1] * 13
    case.input_lengths[1], case.target_lengths[1] = 25, 13  # 13 equal labels need 25 frames: just feasible
    case.labels[2] = case.labels[1][:4]
    case.input_lengths[2], case.target_lengths[2] = 6, 4  # "aaaa" needs 7 frames: infeasible
    padded, _ = _pad(case.labels, rng, case.shape[2])
    x = torch.tensor(3.0 * rng.standard_normal(case.shape))
    targets, il, tl = torch.tensor(padded), torch.tensor(case.input_lengths), torch.tensor(case.target_lengths)
    results = []
    for fused in (True, False):
        logits = x.clone().requires_grad_()
        if fused:
            loss = ct.ctc_loss_from_logits(logits, targets, il, tl, case.blank, reduction, zero_infinity)
        else:
            loss = ct.ctc_loss(logits.log_softmax(-1), targets, il, tl, case.blank, reduction, zero_infinity)
        loss.sum().backward()
        results.append((loss.detach(), logits.grad))
    (loss, grad), (want, want_grad) = results
    if reduction == "none":
        assert torch.isinf(want[2]) != zero_infinity
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(grad).all() and torch.isfinite(want_grad).all()
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=1e-12)
    assert not grad[:, 2].any()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_backend_torch_equals_the_fused_kernels(reduction, rng):
    # backend="torch" makes the log-softmax and differentiates it with autograd: the same
    # values on feasible items
    x, labels, il = _edge_problem(rng, blank=1)
    keep = [0, 1, 2, 5]  # the feasible items with frames
    x, labels, il = x[:, keep], [labels[k] for k in keep], il[keep]
    padded, _ = _pad(labels, rng, 6)
    results = []
    for backend in ("auto", "torch"):
        logits = torch.tensor(x, requires_grad=True)
        loss = ct.ctc_loss_from_logits(logits, torch.tensor(padded), torch.tensor(il), torch.tensor([len(s) for s in labels]),
                                       blank=1, reduction=reduction, backend=backend)
        loss.sum().backward()
        results.append((loss.detach(), logits.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_certain_target_never_gets_a_negative_loss(dtype):
    # Large logits make one path all but certain: -log P is 0 to 1e-16, and the rounding of
    # the log-sum-exps (float32 exps for float32 logits) left up to -2.6e-8 (optax#1771's
    # trap: a negative loss turns into NaN downstream). Every frontend now returns >= 0.
    rng = np.random.default_rng(0)
    size = 3000
    x = (rng.standard_normal((40, size, 2)) * 30).astype(dtype)
    input_lengths = rng.integers(1, 41, size)
    target_lengths = rng.integers(0, 6, size)
    targets = np.ones((size, 5), dtype=np.int64)
    with np.errstate(divide="ignore"):
        expected = F.ctc_loss(torch.from_numpy(x.astype(np.float64)).log_softmax(-1), torch.from_numpy(targets),
                              torch.from_numpy(input_lengths), torch.from_numpy(target_lengths), reduction="none").numpy()
    feasible = np.isfinite(expected)
    results = {"numpy": cn.ctc_loss_from_logits(x, targets, input_lengths, target_lengths, reduction="none"),
               "numpy, with the gradient": cn.ctc_loss_and_grad_from_logits(x, targets, input_lengths, target_lengths,
                                                                            reduction="none")[0],
               "torch": ct.ctc_loss_from_logits(torch.from_numpy(x).requires_grad_(), torch.from_numpy(targets),
                                                input_lengths, target_lengths, reduction="none").detach().numpy()}
    for name, losses in results.items():
        assert (losses[feasible] >= 0).all(), name
        np.testing.assert_allclose(losses[feasible], expected[feasible], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["float32", "float64", "float16 bits"])
def test_loss_alone_an_item_at_a_time_gives_the_bits_of_the_two_passes(kind, batch_first, rng, monkeypatch):
    # Without a gradient, batches of short items and few classes take one kernel that
    # gathers an item's frames and runs its recursion before the next item
    # (logits_step.loss_only). Its losses must be those of the gather pass over the whole
    # batch followed by the core's rounds, bit for bit; an item the first round rejects
    # (peaky frames, a path below float64's range) and more than MAX_CLASSES classes on
    # time-first logits send the batch back to those two passes.
    from ctckit import _core
    from ctckit._core import logits_step
    from ctckit._core.indices import Batch

    x, labels, input_lengths = _edge_problem(rng, blank=2, frames=40, classes=9, scale=4.0)
    x0, labels0, _ = _edge_problem(rng, blank=0, frames=40, classes=9, scale=4.0)
    peaky = np.full((40, 1, 9), -1000.0)  # as ctckit.warmup's peaky batch: the log-space round
    for t in range(20):
        peaky[t, 0, 1 + t // 4] = peaky[20 + t, 0, 1 + t // 4] = 0.0
        peaky[t, 0, 0], peaky[20 + t, 0, 0] = -40.0, -100.0
    wide = 3.0 * rng.standard_normal((40, 2, logits_step.MAX_CLASSES + 1))  # one kernel only batch-first
    cases = [(x, labels, input_lengths, 2, True),
             (np.concatenate([x0[:, :2], peaky], axis=1), labels0[:2] + [[1, 2, 3, 4, 5]], [40, 38, 40], 0, False),
             (wide, [[5, logits_step.MAX_CLASSES, 5], [7]], [40, 33], 0, batch_first)]
    taken = []
    stepped = logits_step.loss_only
    monkeypatch.setattr(logits_step, "loss_only", lambda *a: taken.append(stepped(*a)) or taken[-1])
    for values, item_labels, lengths, blank, one_kernel in cases:
        if batch_first:
            values = np.ascontiguousarray(values.transpose(1, 0, 2)).transpose(1, 0, 2)
        fmt = _core.FORMAT_FLOAT
        if kind == "float32":
            values = values.astype(np.float32)
        elif kind == "float16 bits":
            values, fmt = values.astype(np.float16).view(np.uint16), _core.FORMAT_FLOAT16
        concatenated = np.array([c for seq in item_labels for c in seq], dtype=np.int64)
        assert ((0 <= concatenated) & (concatenated < values.shape[2]) & (concatenated != blank)).all()  # unchecked here
        target_lengths = np.array([len(seq) for seq in item_labels], dtype=np.int64)
        batch = Batch(concatenated, np.concatenate([[0], np.cumsum(target_lengths)[:-1]]).astype(np.int64),
                      np.asarray(lengths, dtype=np.int64), target_lengths)
        taken.clear()
        alone, saved = _core.negative_log_likelihood_from_logits(values, fmt, batch, blank, False)
        assert saved is None and len(taken) == 1 and (taken[0] is not None) == one_kernel
        with monkeypatch.context() as m:
            m.setattr(logits_step, "loss_only", lambda *a: None)
            two_passes, _ = _core.negative_log_likelihood_from_logits(values, fmt, batch, blank, False)
        assert alone.tobytes() == two_passes.tobytes()
        assert np.isinf(alone).any() == (blank == 2)  # the edge problem's infeasible item


@pytest.mark.parametrize("from_logits", [False, True])
def test_a_float16_loss_past_its_range_is_inf_without_a_warning(from_logits):
    # An empty target over 20000 frames of 30 equally likely classes: 20000 log 30 = 68024,
    # past float16's 65504. NumPy's cast warned "overflow encountered in cast", an error
    # under -W error; torch returns inf silently, and so does ctckit now.
    frames = 20000
    values = np.zeros((frames, 1, 30), dtype=np.float16)  # logits, or log-probs of any constant
    args = (np.zeros((1, 1), dtype=np.int64), [frames], [0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if from_logits:
            loss = cn.ctc_loss_from_logits(values, *args, reduction="sum")
            grad_loss, _ = cn.ctc_loss_and_grad_from_logits(values, *args, reduction="sum")
        else:
            values = values - np.float16(np.log(30.0))
            loss = cn.ctc_loss(values, *args, reduction="sum")
            grad_loss, _ = cn.ctc_loss_and_grad(values, *args, reduction="sum")
    assert loss.dtype == grad_loss.dtype == np.float16
    assert loss == grad_loss == np.inf

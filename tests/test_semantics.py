"""Edge semantics: masks, NaN, infeasible targets, padding, dtypes, non-contiguous inputs."""

import ml_dtypes  # in the test extra
import numpy as np
import pytest
import torch

import ctckit.numpy as cn
import ctckit.torch as ct
import reference as ref
from cases import random_case


def _padded(case):
    return torch.tensor(case.padded), torch.tensor(case.input_lengths), torch.tensor(case.target_lengths)


def test_gradcheck_on_unnormalised_float64_leaf(rng):
    case = random_case(rng, frames=7, batch=3, classes=4, blank=0)
    lp = torch.tensor(rng.standard_normal(case.shape), requires_grad=True)  # not a log_softmax
    targets, il, tl = _padded(case)
    assert torch.autograd.gradcheck(lambda x: ct.ctc_loss(x, targets, il, tl, reduction="none"), (lp,))
    assert torch.autograd.gradcheck(lambda x: ct.ctc_loss(x, targets, il, tl, reduction="mean", zero_infinity=True), (lp,))


def test_masked_classes_get_zero_gradient_not_nan():
    lp = torch.full((6, 1, 5), -np.inf, dtype=torch.float64)
    lp[:, 0, :3] = torch.randn(6, 3, dtype=torch.float64).log_softmax(1)  # classes 3, 4 masked
    lp.requires_grad_()
    loss = ct.ctc_loss(lp, torch.tensor([[1, 2]]), [6], [2], reduction="sum")
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(lp.grad).all()
    assert (lp.grad[:, :, 3:] == 0).all()
    expected = ref.ctc_nll(lp.detach()[:, 0].numpy(), [1, 2])
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_infinite_loss_has_zero_gradient_and_zero_infinity_zeroes_it():
    lp = torch.randn(3, 2, 4, dtype=torch.float64).log_softmax(2).requires_grad_()
    targets, il, tl = torch.tensor([[1, 1, 2], [1, 2, 3]]), [3, 3], [3, 2]  # item 0 needs 4 frames
    losses = ct.ctc_loss(lp, targets, il, tl, reduction="none")
    assert losses[0] == np.inf and np.isfinite(losses[1].item())
    losses.sum().backward()
    assert (lp.grad[:, 0] == 0).all() and not torch.isnan(lp.grad).any()
    zeroed = ct.ctc_loss(lp, targets, il, tl, reduction="none", zero_infinity=True)
    assert zeroed[0] == 0 and zeroed[1] == losses[1]


def test_target_unreachable_through_masks_is_inf_not_nan():
    lp = torch.zeros(4, 1, 3, dtype=torch.float64).log_softmax(2)
    lp[:, :, 2] = -np.inf  # label 2 can never be emitted
    lp.requires_grad_()
    loss = ct.ctc_loss(lp, torch.tensor([[2]]), [4], [1], reduction="sum")
    assert loss.item() == np.inf
    loss.backward()
    assert (lp.grad == 0).all()


def test_nan_in_a_used_frame_gives_nan_loss():
    lp = torch.randn(5, 2, 4, dtype=torch.float64).log_softmax(2)
    lp[2, 0, 1] = np.nan
    losses = ct.ctc_loss(lp, torch.tensor([[1, 2], [1, 2]]), [5, 5], [2, 2], reduction="none")
    assert torch.isnan(losses[0]) and torch.isfinite(losses[1])


def test_frames_past_input_length_influence_nothing(rng):
    case = random_case(rng, frames=20, batch=4, classes=6)
    il = case.input_lengths.copy()
    il[0] = 11
    dirty = case.log_probs.copy()
    for n in range(4):
        dirty[il[n]:, n, :] = np.nan
        dirty[il[n]:, n, 0] = np.inf
    labels = [l[: il[n] // 2] for n, l in enumerate(case.labels)]
    tl = [len(l) for l in labels]
    padded = np.zeros((4, 10), dtype=np.int64)
    for n, l in enumerate(labels):
        padded[n, : len(l)] = l
    loss, grad = cn.ctc_loss_and_grad(dirty, padded, il, tl, case.blank, reduction="sum")
    clean = ref.batch_nll(case.log_probs, labels, il, case.blank).sum()
    assert loss == pytest.approx(clean, rel=1e-12)
    for n in range(4):
        assert (grad[il[n]:, n] == 0).all()


def test_empty_targets_and_empty_inputs(rng):
    lp = np.log(np.full((4, 3, 3), 1 / 3))
    losses = cn.ctc_loss(lp, np.zeros((3, 0), dtype=np.int64), [4, 0, 2], [0, 0, 0], reduction="none")
    np.testing.assert_allclose(losses, [4 * np.log(3), 0.0, 2 * np.log(3)])


def test_inputs_are_not_modified_and_non_contiguous_inputs_work(rng):
    case = random_case(rng, frames=25, batch=5, classes=7)
    big = np.ascontiguousarray(np.transpose(case.log_probs, (1, 0, 2)))  # (N, T, C)
    view = torch.tensor(big).transpose(0, 1)  # (T, N, C), non-contiguous
    assert not view.is_contiguous()
    padded = torch.tensor(case.padded)
    targets = torch.stack([padded, torch.full_like(padded, 99)], 2)[:, :, 0]  # non-contiguous too
    snapshot = view.clone(), targets.clone()
    losses = ct.ctc_loss(view, targets, torch.tensor(case.input_lengths), torch.tensor(case.target_lengths), case.blank, "none")
    expected = ref.batch_nll(case.log_probs, [list(r[:l]) for r, l in zip(targets.numpy(), case.target_lengths)], case.input_lengths, case.blank)
    assert not targets.is_contiguous()
    np.testing.assert_allclose(losses.numpy(), expected, rtol=1e-12)
    assert torch.equal(view, snapshot[0]) and torch.equal(targets, snapshot[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(dtype, rng):
    case = random_case(rng, frames=30, batch=3, classes=6)
    lp = torch.tensor(case.log_probs, dtype=dtype).requires_grad_()
    targets, il, tl = _padded(case)
    loss = ct.ctc_loss(lp, targets, il, tl, case.blank, "sum")
    assert loss.dtype == dtype
    loss.backward()
    assert lp.grad.dtype == dtype
    exact = ref.batch_nll(lp.detach().double().numpy(), case.labels, case.input_lengths, case.blank).sum()
    assert loss.item() == pytest.approx(exact, rel=1e-2)
    ref_grad = ref.batch_grad(lp.detach().double().numpy(), case.labels, case.input_lengths, case.blank)
    np.testing.assert_allclose(lp.grad.double().numpy(), ref_grad, atol=2e-2)


def test_numpy_float16_returns_float16(rng):
    case = random_case(rng, frames=10, batch=2, classes=4)
    loss, grad = cn.ctc_loss_and_grad(case.log_probs.astype(np.float16), case.padded, case.input_lengths, case.target_lengths, case.blank)
    assert loss.dtype == np.float16 and grad.dtype == np.float16 and grad.shape == case.shape


def test_numpy_frontend_matches_torch_frontend(rng):
    case = random_case(rng, frames=30, batch=4, classes=9)
    args = (case.concatenated, case.input_lengths.tolist(), case.target_lengths.tolist(), case.blank, "mean")
    loss, grad = cn.ctc_loss_and_grad(case.log_probs, *args)
    lp = torch.tensor(case.log_probs, requires_grad=True)
    t_loss = ct.ctc_loss(lp, torch.tensor(case.concatenated), *args[1:])
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-14)
    np.testing.assert_allclose(grad, lp.grad.numpy(), rtol=1e-14, atol=1e-16)
    assert cn.ctc_loss(case.log_probs, *args) == loss


def test_reduction_none_scales_each_item_by_its_upstream_gradient(rng):
    case = random_case(rng, frames=15, batch=4, classes=5)
    lp = torch.tensor(case.log_probs, requires_grad=True)
    targets, il, tl = _padded(case)
    losses = ct.ctc_loss(lp, targets, il, tl, case.blank, "none")
    upstream = torch.tensor([0.5, -2.0, 0.0, 3.0], dtype=torch.float64)
    losses.backward(upstream)
    ref_grad = ref.batch_grad(case.log_probs, case.labels, case.input_lengths, case.blank)
    np.testing.assert_allclose(lp.grad.numpy(), ref_grad * upstream.numpy()[None, :, None], atol=1e-12)


def test_no_grad_forward_matches_grad_forward(rng):
    case = random_case(rng, frames=40, batch=6, classes=8)
    lp = torch.tensor(case.log_probs, requires_grad=True)
    targets, il, tl = _padded(case)
    with torch.no_grad():
        plain = ct.ctc_loss(lp, targets, il, tl, case.blank, "none")
    assert torch.equal(plain, ct.ctc_loss(lp, targets, il, tl, case.blank, "none").detach())


def test_double_backward_raises_a_clear_error(rng):
    case = random_case(rng, frames=8, batch=2, classes=4)
    lp = torch.tensor(case.log_probs, requires_grad=True)
    targets, il, tl = _padded(case)
    grad, = torch.autograd.grad(ct.ctc_loss(lp, targets, il, tl, case.blank), lp, create_graph=True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        grad.pow(2).sum().backward()


def _plain_and_lazy(case):
    """Index tensors, and the same with the negative bit set (``neg()._neg_view()`` reads as
    the same values, its memory holds their negatives)."""
    plain = _padded(case)
    lazy = tuple(t.neg()._neg_view() for t in plain)
    assert all(t.is_neg() for t in lazy) and all(torch.equal(a, b) for a, b in zip(plain, lazy))
    return plain, lazy


def test_tensors_with_the_negative_bit_are_read_by_value(rng):
    case = random_case(rng, frames=15, batch=3, classes=6)
    (targets, il, tl), lazy_indices = _plain_and_lazy(case)
    base = torch.tensor(case.log_probs)
    expected_leaf = base.clone().requires_grad_()
    expected = ct.ctc_loss(expected_leaf, targets, il, tl, case.blank, "sum")
    expected.backward()
    leaf = base.clone().requires_grad_()
    lazy_log_probs = leaf.neg()._neg_view()  # the values of base, the bit set
    assert lazy_log_probs.is_neg()
    loss = ct.ctc_loss(lazy_log_probs, *lazy_indices, case.blank, "sum")
    loss.backward()
    assert loss.item() == expected.item()
    torch.testing.assert_close(leaf.grad, expected_leaf.grad, rtol=0, atol=0)
    with torch.no_grad():
        assert ct.ctc_loss(lazy_log_probs, *lazy_indices, case.blank, "sum").item() == expected.item()
    posteriors = ct.ctc_posteriors(base.neg()._neg_view(), *lazy_indices, case.blank)
    torch.testing.assert_close(posteriors, ct.ctc_posteriors(base, targets, il, tl, case.blank))
    aligned = ct.forced_align(base.neg()._neg_view(), *lazy_indices, case.blank) if tl.max() * 2 <= il.min() else None
    if aligned is not None:
        torch.testing.assert_close(aligned[0], ct.forced_align(base, targets, il, tl, case.blank)[0])


@pytest.mark.parametrize("dtype", ["<i8", ">i8", ">i4", "<u8", ">u8", "u4", "u1", "i2"])
def test_index_arrays_of_any_integer_dtype_and_byte_order(dtype, rng):
    """NumPy index arrays in any byte order and integer width, through both frontends
    (torch.from_numpy takes neither big-endian nor, before torch 2.3, uint64 arrays)."""
    case = random_case(rng, frames=12, batch=3, classes=5)
    expected = cn.ctc_loss(case.log_probs, case.padded, case.input_lengths, case.target_lengths, case.blank, "none")
    padding = case.padded.copy()
    padding[padding < 0] = 0  # unsigned types: garbage padding made non-negative
    arrays = [a.astype(dtype) for a in (padding, case.input_lengths, case.target_lengths)]
    assert all(a.dtype == np.dtype(dtype) for a in arrays)
    np.testing.assert_array_equal(cn.ctc_loss(case.log_probs, *arrays, case.blank, "none"), expected)
    lp = torch.tensor(case.log_probs, requires_grad=True)
    expected_torch = ct.ctc_loss(lp, *_padded(case), case.blank, "none")  # with the gradient: same path
    torch.testing.assert_close(ct.ctc_loss(lp, *arrays, case.blank, "none"), expected_torch, rtol=0, atol=0)
    concatenated = case.concatenated.astype(dtype)
    torch.testing.assert_close(ct.ctc_loss(lp, concatenated, *arrays[1:], case.blank, "none"), expected_torch, rtol=0, atol=0)


ML_DTYPES = ["bfloat16", "float8_e4m3fn", "float8_e5m2"]


@pytest.mark.parametrize("name", ML_DTYPES)
def test_numpy_frontend_takes_ml_dtypes_floats_and_computes_in_float32(name, rng):
    dtype = np.dtype(getattr(ml_dtypes, name))
    case = random_case(rng, frames=20, batch=3, classes=6)
    low = case.log_probs.astype(dtype)
    args = (case.padded, case.input_lengths, case.target_lengths, case.blank)
    loss, grad = cn.ctc_loss_and_grad(low, *args, reduction="sum")
    as_float32 = low.astype(np.float32)
    expected_loss, expected_grad = cn.ctc_loss_and_grad(as_float32, *args, reduction="sum")
    assert loss.dtype == dtype and grad.dtype == dtype and grad.shape == case.shape
    assert loss == expected_loss.astype(dtype)
    np.testing.assert_array_equal(grad, expected_grad.astype(dtype))
    assert cn.ctc_loss(low, *args, reduction="sum") == loss
    assert float(loss) == pytest.approx(ref.batch_nll(as_float32.astype(np.float64), case.labels, case.input_lengths,
                                                      case.blank).sum(), rel=0.07)  # float8_e4m3fn: 3 mantissa bits


def test_other_ml_dtypes_and_non_float_log_probs_raise_type_error():
    for dtype in (ml_dtypes.int4, np.int64, np.complex64, np.bool_, "U3"):
        with pytest.raises(TypeError, match=r"log_probs must be a floating-point array"):
            cn.ctc_loss(np.zeros((4, 1, 3)).astype(dtype), [[1]], [4], [1])


def test_ctckit_does_not_import_ml_dtypes():
    import subprocess
    import sys

    code = ("import sys, numpy as np, ctckit.numpy as cn\n"
            "cn.ctc_loss(np.log(np.full((4, 1, 3), 1 / 3)), [[1]], [4], [1])\n"
            "print('ml_dtypes' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_torch_decoders_take_lists_and_arrays_of_indices(rng):
    case = random_case(rng, frames=16, batch=3, classes=5)
    lp = torch.tensor(case.log_probs)
    tensors = _padded(case)
    expected = ct.ctc_posteriors(lp, *tensors, case.blank)
    for form in (lambda t: t.tolist(), lambda t: t.numpy(), lambda t: t.numpy().astype(">i4")):
        torch.testing.assert_close(ct.ctc_posteriors(lp, *map(form, tensors), case.blank), expected, rtol=0, atol=0)
        assert ct.greedy_decode(lp, form(tensors[1]), case.blank) == ct.greedy_decode(lp, tensors[1], case.blank)
        assert ct.beam_search(lp, form(tensors[1]), 4, case.blank) == ct.beam_search(lp, tensors[1], 4, case.blank)
    feasible = [n for n in range(3) if 2 * case.target_lengths[n] <= case.input_lengths[n]]
    sub = (tensors[0][feasible], tensors[1][feasible], tensors[2][feasible])
    alignments, scores = ct.forced_align(lp[:, feasible], *(t.tolist() for t in sub), case.blank)
    torch.testing.assert_close(alignments, ct.forced_align(lp[:, feasible], *sub, case.blank)[0])

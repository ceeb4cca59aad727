"""Edge semantics: masks, NaN, infeasible targets, padding, dtypes, non-contiguous inputs."""

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

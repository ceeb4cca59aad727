"""ctckit.torch against torch.nn.functional.ctc_loss and the float64 reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ctckit.torch as ct
import reference as ref
from cases import random_case
from conftest import BACKEND_DEVICE

REDUCTIONS = ["none", "mean", "sum"]


def _backends(seeds, every):
    """Every seed on the Numba core; every ``every``-th also on the Triton kernels (which
    run in Triton's interpreter when there is no GPU: slow, so fewer seeds)."""
    return [(s, "numba") for s in seeds] + [(s, "triton") for s in seeds[::every]]


def _tensors(case, *, concatenated, index_dtype, as_lists):
    targets = case.concatenated if concatenated else case.padded
    targets = torch.tensor(targets, dtype=index_dtype)
    if as_lists:
        return targets, case.input_lengths.tolist(), tuple(case.target_lengths.tolist())
    return targets, torch.tensor(case.input_lengths, dtype=index_dtype), torch.tensor(case.target_lengths, dtype=index_dtype)


@pytest.mark.parametrize("seed,backend", _backends(range(40), 3))
def test_loss_and_logit_gradient_match_torch(seed, backend):
    rng = np.random.default_rng(seed)
    case = random_case(rng, infeasible=0.2 if seed % 3 == 0 else 0.0)
    concatenated, as_lists = bool(seed % 2), bool(seed % 5 == 0)
    index_dtype = torch.int32 if seed % 4 == 0 else torch.int64
    reduction, zero_infinity = REDUCTIONS[seed % 3], bool(seed % 7 < 3)
    targets, il, tl = _tensors(case, concatenated=concatenated, index_dtype=index_dtype, as_lists=as_lists)
    logits = torch.tensor(case.log_probs, requires_grad=True)
    device = BACKEND_DEVICE[backend]

    ours = ct.ctc_loss(logits.to(device).log_softmax(2), targets, il, tl, case.blank, reduction, zero_infinity, backend=backend)
    theirs = F.ctc_loss(logits.log_softmax(2), targets, il, tl, case.blank, reduction, zero_infinity)
    assert ours.device.type == device
    torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-10, atol=1e-10)

    if torch.isfinite(theirs).all():
        upstream = torch.randn_like(theirs)
        g_ours, = torch.autograd.grad(ours, logits, upstream.to(device))
        g_theirs, = torch.autograd.grad(theirs, logits, upstream)
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed,backend", _backends(range(12), 2))
def test_exact_gradient_matches_reference(seed, backend):
    rng = np.random.default_rng(1000 + seed)
    case = random_case(rng, infeasible=0.2)
    lp = torch.tensor(case.log_probs, requires_grad=True)
    targets, il, tl = _tensors(case, concatenated=False, index_dtype=torch.int64, as_lists=False)
    losses = ct.ctc_loss(lp.to(BACKEND_DEVICE[backend]), targets, il, tl, case.blank, "none", backend=backend).cpu()
    expected = ref.batch_nll(case.log_probs, case.labels, case.input_lengths, case.blank)
    np.testing.assert_allclose(losses.detach().numpy(), expected, rtol=1e-12)
    upstream = torch.randn(case.shape[1], dtype=torch.float64)
    grad, = torch.autograd.grad(losses, lp, upstream)
    ref_grad = ref.batch_grad(case.log_probs, case.labels, case.input_lengths, case.blank)
    expected_grad = ref_grad * np.where(np.isfinite(expected), upstream.numpy(), 0.0)[None, :, None]
    np.testing.assert_allclose(grad.numpy(), expected_grad, atol=1e-12)


@pytest.mark.parametrize("seed,backend", _backends(range(6), 2))
def test_torch_gradient_convention_matches_torch(seed, backend):
    rng = np.random.default_rng(2000 + seed)
    case = random_case(rng)
    targets, il, tl = _tensors(case, concatenated=True, index_dtype=torch.int64, as_lists=False)
    lp_ours = torch.tensor(case.log_probs, requires_grad=True)
    lp_theirs = torch.tensor(case.log_probs, requires_grad=True)
    ct.ctc_loss(lp_ours.to(BACKEND_DEVICE[backend]), targets, il, tl, case.blank, "sum", gradient="torch", backend=backend).backward()
    F.ctc_loss(lp_theirs, targets, il, tl, case.blank, "sum").backward()
    torch.testing.assert_close(lp_ours.grad, lp_theirs.grad, rtol=1e-9, atol=1e-9)


def test_unbatched_matches_batched_of_one(rng):
    case = random_case(rng, frames=20, batch=1, classes=6)
    lp = torch.tensor(case.log_probs[:, 0])
    labels = torch.tensor(case.labels[0], dtype=torch.long)
    for il, tl in [(int(case.input_lengths[0]), len(case.labels[0])),
                   (torch.tensor(case.input_lengths[0]), torch.tensor(len(case.labels[0])))]:
        ours = ct.ctc_loss(lp, labels, il, tl, case.blank, "none")
        assert ours.shape == ()
        theirs = F.ctc_loss(lp, labels, torch.tensor(case.input_lengths[0]), torch.tensor(len(case.labels[0])), case.blank, "none")
        torch.testing.assert_close(ours, theirs)


def test_unbatched_targets_may_be_padded(rng):
    lp = torch.randn(12, 5, dtype=torch.float64).log_softmax(1)
    padded = torch.tensor([1, 2, 3, 99, -4])
    ours = ct.ctc_loss(lp, padded, 12, 3, reduction="none")
    theirs = F.ctc_loss(lp, padded[:3], torch.tensor(12), torch.tensor(3), reduction="none")
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_dtypes_match_torch(dtype, rng):
    case = random_case(rng, frames=60, batch=4, classes=10)
    lp = torch.tensor(case.log_probs, dtype=dtype)
    targets, il, tl = _tensors(case, concatenated=False, index_dtype=torch.int64, as_lists=False)
    ours = ct.ctc_loss(lp, targets, il, tl, case.blank, "none")
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, F.ctc_loss(lp, targets, il, tl, case.blank, "none"), rtol=1e-5, atol=1e-4)


def test_module_matches_functional(rng):
    case = random_case(rng, frames=30, batch=3, classes=8)
    lp = torch.tensor(case.log_probs)
    targets, il, tl = _tensors(case, concatenated=False, index_dtype=torch.int64, as_lists=False)
    module = ct.CTCLoss(blank=case.blank, reduction="sum", zero_infinity=True)
    torch.testing.assert_close(module(lp, targets, il, tl), torch.nn.CTCLoss(case.blank, "sum", True)(lp, targets, il, tl))
    assert "reduction='sum'" in repr(module)


@pytest.mark.parametrize("backend", ["numba", "triton"])
def test_seed_example_runs_and_matches_torch(backend):
    # The example of torch.nn.functional.ctc_loss's documentation (../shared/seeds).
    torch.manual_seed(0)
    log_probs = torch.randn(50, 16, 20).log_softmax(2).detach().requires_grad_()
    targets = torch.randint(1, 20, (16, 30), dtype=torch.long)
    input_lengths = torch.full((16,), 50, dtype=torch.long)
    target_lengths = torch.randint(10, 30, (16,), dtype=torch.long)
    loss = ct.ctc_loss(log_probs.to(BACKEND_DEVICE[backend]), targets, input_lengths, target_lengths, backend=backend,
                       gradient="torch")  # log_probs is the leaf here: torch's convention to compare gradients
    loss.backward()
    expected = F.ctc_loss(log_probs, targets, input_lengths, target_lengths)
    torch.testing.assert_close(loss.cpu(), expected)
    grad, = torch.autograd.grad(expected, log_probs)
    torch.testing.assert_close(log_probs.grad, grad, rtol=1e-5, atol=1e-7)

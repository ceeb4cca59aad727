"""ctckit.torch against torch.nn.functional.ctc_loss and the float64 reference."""

import itertools

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


def _length_forms(values):
    """Every form torch's ctc_loss takes for N lengths, by name (it flattens tensors)."""
    tensor = torch.tensor(values)
    forms = {"(N,)": tensor, "(N, 1)": tensor.reshape(-1, 1), "(1, N)": tensor.reshape(1, -1),
             "(N, 1, 1)": tensor.reshape(-1, 1, 1),
             "list": list(values), "tuple": tuple(values)}
    if len(values) == 1:
        forms["0-d"] = tensor.reshape(())
    return forms


def _target_forms(labels, width, batched):
    """Targets in every layout: padded rows (garbage padding), concatenated, (1, S) and (S,)."""
    padded = torch.full((len(labels), width), 3, dtype=torch.long)
    for n, row in enumerate(labels):
        padded[n, : len(row)] = torch.tensor(row, dtype=torch.long)
    forms = {"padded": padded, "concatenated": torch.tensor([c for row in labels for c in row], dtype=torch.long)}
    if not batched:
        forms = {"(1, S)": padded, "(S,)": forms["concatenated"]}
    return forms


PROBLEMS = {  # (T, N or None for unbatched, C, labels, input lengths)
    "batch of three": (12, 3, 5, [[1, 2, 2], [4], [3, 1]], [12, 9, 7]),
    "batch of one": (10, 1, 4, [[1, 2, 3]], [9]),
    "unbatched": (10, None, 4, [[2, 1, 1]], [10]),
}


@pytest.mark.parametrize("problem", PROBLEMS)
def test_every_form_of_targets_and_lengths_torch_accepts(problem):
    """Each combination of layouts that torch's ctc_loss accepts gives torch's losses and
    logit gradients here; torch flattens length tensors, so (N, 1) from a DataLoader that
    stacks (1,)-shaped lengths, (1, N) and 0-d ones for a batch of one are fine."""
    frames, size, classes, labels, input_lengths = PROBLEMS[problem]
    batched = size is not None
    logits = torch.randn(frames, size or 1, classes, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    if not batched:
        logits = logits[:, 0]
    accepted = []
    for (t_name, targets), (i_name, il), (l_name, tl) in itertools.product(
            _target_forms(labels, 4, batched).items(), _length_forms(input_lengths).items(),
            _length_forms([len(row) for row in labels]).items()):
        leaf = logits.clone().requires_grad_()
        try:
            expected = F.ctc_loss(leaf.log_softmax(-1), targets, il, tl, 0, "none")
        except (TypeError, RuntimeError):
            continue  # torch refuses this combination (e.g. mixed tensors and lists)
        accepted.append((t_name, i_name, l_name))
        upstream = torch.linspace(0.5, 2.0, expected.numel(), dtype=torch.float64).reshape(expected.shape)
        expected_grad, = torch.autograd.grad(expected, leaf, upstream)
        leaf = logits.clone().requires_grad_()
        loss = ct.ctc_loss(leaf.log_softmax(-1), targets, il, tl, 0, "none")
        grad, = torch.autograd.grad(loss, leaf, upstream)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12, msg=f"{t_name} {i_name} {l_name}")
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
        mean = ct.CTCLoss(reduction="mean")(logits.log_softmax(-1), targets, il, tl)
        torch.testing.assert_close(mean, F.ctc_loss(logits.log_softmax(-1), targets, il, tl), rtol=1e-12, atol=1e-12)
    names = {name for triple in accepted for name in triple}
    assert {"(N, 1)", "(1, N)", "(N, 1, 1)", "list", "tuple"} <= names
    assert ("0-d" in names) == (len(labels) == 1)
    assert {"padded", "concatenated"} <= names if batched else {"(1, S)", "(S,)"} <= names


def test_lengths_stacked_by_a_data_loader_from_one_element_tensors():
    """A dataset that returns each length as a (1,) tensor: the DataLoader stacks them to (N, 1)."""
    generator = torch.Generator().manual_seed(3)
    samples = [(torch.randn(20, 6, generator=generator), torch.tensor([1, 2, 3, 4]), torch.tensor([20]), torch.tensor([4]))
               for _ in range(4)]
    x, targets, il, tl = torch.utils.data.default_collate(samples)
    assert il.shape == (4, 1) and tl.shape == (4, 1)
    log_probs = x.transpose(0, 1).log_softmax(2)  # (T, N, C)
    torch.testing.assert_close(ct.CTCLoss()(log_probs, targets, il, tl), torch.nn.CTCLoss()(log_probs, targets, il, tl))

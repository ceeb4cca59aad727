"""backend="torch": the loss in plain torch operations (for devices without the Numba core),
checked against the Numba core on the CPU."""

import numpy as np
import pytest
import torch

import ctckit.torch as ct
from cases import random_case
from ctckit import CTCInputError


def _inputs(case, concatenated):
    targets = torch.tensor(case.concatenated if concatenated else case.padded)
    return targets, torch.tensor(case.input_lengths), torch.tensor(case.target_lengths)


@pytest.mark.parametrize("seed", range(16))
def test_torch_ops_match_the_core(seed):
    rng = np.random.default_rng(500 + seed)
    case = random_case(rng, infeasible=0.2, scale=[1.0, 5.0][seed % 2])
    lp = case.log_probs.copy()
    if seed % 3 == 0:
        lp[rng.random(lp.shape) < 0.1] = -np.inf  # masked classes
    for n, length in enumerate(case.input_lengths):
        lp[length:, n] = np.nan  # padding frames are never read
    targets, il, tl = _inputs(case, concatenated=bool(seed % 2))
    reduction, zero_infinity, gradient = ["none", "mean", "sum"][seed % 3], seed % 4 == 0, ["exact", "torch"][seed % 2]
    results = []
    upstream = torch.rand(len(case.labels) if reduction == "none" else (), dtype=torch.float64) + 0.5
    for backend in ("numba", "torch"):
        x = torch.tensor(lp, requires_grad=True)
        loss = ct.ctc_loss(x, targets, il, tl, case.blank, reduction, zero_infinity, gradient=gradient, backend=backend)
        grad, = torch.autograd.grad(loss, x, upstream) if loss.requires_grad else (torch.zeros_like(x),)
        results.append((loss.detach(), grad))
    (loss_core, grad_core), (loss_ops, grad_ops) = results
    torch.testing.assert_close(loss_ops, loss_core, rtol=1e-10, atol=1e-10, equal_nan=True)
    assert not torch.isnan(grad_ops).any()
    torch.testing.assert_close(grad_ops, grad_core, rtol=1e-9, atol=1e-10)


def test_torch_ops_float32_unbatched_and_gradcheck(rng):
    case = random_case(rng, frames=12, batch=1, classes=5)
    lp = torch.tensor(case.log_probs[:, 0], dtype=torch.float32)
    labels = torch.tensor(case.labels[0], dtype=torch.long)
    args = (labels, int(case.input_lengths[0]), len(case.labels[0]), case.blank, "none")
    ops = ct.ctc_loss(lp, *args, backend="torch")
    core = ct.ctc_loss(lp, *args, backend="numba")
    assert ops.shape == () and ops.dtype == torch.float32
    torch.testing.assert_close(ops, core, rtol=1e-5, atol=1e-5)
    x = torch.tensor(case.log_probs[:, :1], requires_grad=True)  # float64, not normalised below
    x = (x + torch.randn_like(x)).detach().requires_grad_()
    targets = torch.tensor([case.labels[0] + [0]])
    assert torch.autograd.gradcheck(lambda z: ct.ctc_loss(z, targets, case.input_lengths[:1].tolist(), [len(case.labels[0])],
                                                          case.blank, "sum", backend="torch"), (x,))


def test_nan_and_infeasible_items_as_the_core():
    lp = torch.randn(6, 5, 4, dtype=torch.float64).log_softmax(2)
    lp[:, 2, 3] = -np.inf  # item 2: its label 3 can never be emitted
    lp[3, 1, 1] = np.nan  # item 1: a NaN in a used frame
    lp[0, 3, 1] = np.nan  # item 3: too short for its target (needs 5 frames) and a NaN
    targets = torch.tensor([[1, 2, 2], [1, 2, 0], [3, 0, 0], [1, 1, 1], [0, 0, 0]])
    il, tl = [6, 6, 6, 4, 0], [3, 2, 1, 3, 0]
    core = ct.ctc_loss(lp, targets, il, tl, reduction="none", backend="numba")
    ops = ct.ctc_loss(lp, targets, il, tl, reduction="none", backend="torch")
    torch.testing.assert_close(ops, core, equal_nan=True, rtol=1e-12, atol=0)
    assert torch.isnan(ops[1]) and ops[2] == ops[3] == np.inf and str(ops[4].item()) == "0.0"


def test_meta_tensors_give_shapes_through_the_torch_ops():
    lp = torch.randn(4, 2, 3, device="meta", requires_grad=True)
    losses = ct.ctc_loss(lp, torch.tensor([[1], [2]]), [4, 3], [1, 1], reduction="none")
    assert losses.device.type == "meta" and losses.shape == (2,)
    losses.sum().backward()
    assert lp.grad.device.type == "meta" and lp.grad.shape == lp.shape


@pytest.mark.parametrize("meta_argument", ["targets", "input_lengths", "target_lengths"])
@pytest.mark.parametrize("on_logits", [False, True])
def test_meta_index_tensors_are_named_not_a_torch_internal_error(meta_argument, on_logits):
    """The checks and the kernels need the index values: a meta tensor has none."""
    arguments = {"targets": torch.tensor([[1], [2]]), "input_lengths": torch.tensor([4, 3]),
                 "target_lengths": torch.tensor([1, 1])}
    arguments[meta_argument] = arguments[meta_argument].to("meta")
    loss = ct.ctc_loss_from_logits if on_logits else ct.ctc_loss
    # the Numba backend (log-probs on the CPU) names the device first; the fused path, the values
    with pytest.raises(ValueError, match=f"^{meta_argument} (must hold values .* got a meta tensor|is on device 'meta' "
                                         f"and log_probs on the CPU, where the loss is computed: pass {meta_argument} on the CPU$)"):
        loss(torch.randn(4, 2, 3).log_softmax(-1), **arguments)


def test_backend_choice_and_devices():
    lp = torch.randn(4, 1, 3, device="meta")
    with pytest.raises(ValueError, match="log_probs is on device 'meta'; backend 'numba' computes on the CPU"):
        ct.ctc_loss(lp, torch.tensor([[1]]), [4], [1], backend="numba")
    with pytest.raises(CTCInputError, match=r"backend must be one of \('auto', 'numba', 'triton', 'torch'\), got 'gpu'"):
        ct.ctc_loss(torch.randn(4, 1, 3), torch.tensor([[1]]), [4], [1], backend="gpu")
    with pytest.raises(CTCInputError, match="backend must be one of"):
        ct.CTCLoss(backend="gpu")
    assert ct.CTCLoss(backend="torch").backend == "torch"

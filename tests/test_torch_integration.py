"""ctckit.torch as a registered operator: opcheck, torch.compile, torch.export, autocast, DDP."""

import pickle

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F

import ctckit.torch as ct
from ctckit.torch import _ctc_loss_op


def _problem(frames=20, batch=3, classes=6, max_target=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, batch, classes, generator=g, dtype=dtype)
    targets = torch.randint(1, classes, (batch, max_target), generator=g)
    input_lengths = torch.randint(frames // 2 + 1, frames + 1, (batch,), generator=g)
    input_lengths[0] = frames
    target_lengths = torch.randint(0, max_target + 1, (batch,), generator=g)
    return x, targets, input_lengths, target_lengths


@pytest.mark.parametrize("classes", [6, 40])  # dense and compact saved state
@pytest.mark.parametrize("concatenated", [False, True])
@pytest.mark.parametrize("torch_grad", [False, True])
@pytest.mark.parametrize("need_grad", [False, True])
def test_opcheck(classes, concatenated, torch_grad, need_grad):
    x, targets, il, tl = _problem(classes=classes)
    if concatenated:
        targets = torch.cat([targets[n, : tl[n]] for n in range(len(tl))])
    lp = x.log_softmax(2).detach().requires_grad_()
    torch.library.opcheck(_ctc_loss_op, (lp, targets, il, tl, 0, torch_grad, need_grad))


@pytest.mark.parametrize("classes", [6, 40])  # dense and compact saved state
@pytest.mark.parametrize("torch_grad", [False, True])
def test_opcheck_gradient_operator(classes, torch_grad):
    from ctckit.torch import _gradient_op

    x, targets, il, tl = _problem(classes=classes)
    _, saved = _ctc_loss_op(x.log_softmax(2), targets, il, tl, 0, torch_grad, True)
    assert saved.dim() == 1  # flat, whichever kind: no shape guard under torch.compile
    scale = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    torch.library.opcheck(_gradient_op, (saved, targets, il, tl, scale, 0, 20, classes, torch_grad))


class TinyModel(torch.nn.Module):
    def __init__(self, classes, reduction="mean", zero_infinity=False):
        super().__init__()
        self.proj = torch.nn.Linear(classes, classes, dtype=torch.float64)
        self.loss = ct.CTCLoss(reduction=reduction, zero_infinity=zero_infinity)

    def forward(self, x, targets, input_lengths, target_lengths):
        return self.loss(self.proj(x).log_softmax(2), targets, input_lengths, target_lengths)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_compile_fullgraph_matches_eager(reduction):
    x, targets, il, tl = _problem()
    model = TinyModel(6, reduction, zero_infinity=True)
    eager = model(x, targets, il, tl)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x, targets, il, tl)
    compiled_grads = torch.autograd.grad(compiled, list(model.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_compile_with_inductor_matches_eager():
    x, targets, il, tl = _problem(classes=40)
    model = TinyModel(40)
    eager = model(x, targets, il, tl)
    compiled = torch.compile(model, fullgraph=True)(x, targets, il, tl)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled_grads = torch.autograd.grad(compiled, list(model.parameters()))
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# (T, N, S) with C = 12: padded targets keep compact posteriors when N * S + N < N * C, that
# is S <= 10, else the dense gradient. The shapes cross that line back and forth.
CROSSING_SHAPES = [(20, 3, 5), (24, 4, 14), (30, 2, 7), (17, 5, 15), (40, 3, 9), (33, 6, 12)]


@pytest.mark.parametrize("dynamic,most_graphs", [(None, 2), (True, 1)])
def test_changing_shapes_do_not_recompile_every_call(dynamic, most_graphs):
    # What the forward keeps (compact posteriors or the dense gradient, whichever is
    # smaller) is chosen inside the operators, so it is no shape guard: one static graph,
    # then one dynamic graph for every later shape (one graph with dynamic=True).
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    model = TinyModel(12)
    compiled = torch.compile(model, fullgraph=True, backend=counter, dynamic=dynamic)
    kinds = set()
    for seed, (frames, batch, max_target) in enumerate(CROSSING_SHAPES):
        x, targets, il, tl = _problem(frames, batch, 12, max_target, seed=seed)
        kinds.add(ct._saved_kind((frames, batch, 12), targets.numel(), False, True))
        loss = compiled(x, targets, il, tl)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        expected = model(x, targets, il, tl)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
        for got, want in zip(grads, torch.autograd.grad(expected, list(model.parameters()))):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert kinds == {"compact", "dense"}
    assert counter.frame_count <= most_graphs, f"compiled {counter.frame_count} graphs for {len(CROSSING_SHAPES)} shapes"


def test_compile_takes_the_length_shapes_torch_takes():
    x, targets, il, tl = _problem()
    model = TinyModel(6)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, targets, il[:, None], tl[:, None]), model(x, targets, il, tl), rtol=0, atol=0)
    one = (x[:, :1], targets[0, : tl[0]], il[0], tl[0])  # a batch of one: 0-d lengths, concatenated targets
    torch.testing.assert_close(compiled(*one), model(x[:, :1], targets[:1], il[:1], tl[:1]), rtol=1e-12, atol=1e-12)


def test_export_gives_the_same_loss():
    x, targets, il, tl = _problem()
    model = TinyModel(6)
    program = torch.export.export(model, (x, targets, il, tl))
    torch.testing.assert_close(program.module()(x, targets, il, tl), model(x, targets, il, tl))
    x2, targets2, il2, tl2 = _problem(seed=5)
    torch.testing.assert_close(program.module()(x2, targets2, il2, tl2), model(x2, targets2, il2, tl2))


def test_autocast_bfloat16_returns_float32_and_gradients_flow_in_bfloat16():
    x, targets, il, tl = _problem(dtype=torch.float32)
    proj = torch.nn.Linear(6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = proj(x)
        assert logits.dtype == torch.bfloat16
        log_probs = logits.log_softmax(2).to(torch.bfloat16)
        log_probs.retain_grad()
        loss = ct.ctc_loss(log_probs, targets, il, tl)
        reference = F.ctc_loss(log_probs, targets, il, tl)
    assert loss.dtype == torch.float32 and reference.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert log_probs.grad.dtype == torch.bfloat16
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()


def test_module_pickles_and_round_trips_state_dict():
    module = ct.CTCLoss(blank=2, reduction="sum", zero_infinity=True)
    clone = pickle.loads(pickle.dumps(module))
    assert (clone.blank, clone.reduction, clone.zero_infinity) == (2, "sum", True)
    fresh = ct.CTCLoss(blank=2, reduction="sum", zero_infinity=True)
    fresh.load_state_dict(module.state_dict())
    x, targets, il, tl = _problem()
    targets[targets == 2] = 1
    lp = x.log_softmax(2)
    assert torch.equal(clone(lp, targets, il, tl), module(lp, targets, il, tl))
    assert repr(module) == "CTCLoss(blank=2, reduction='sum', zero_infinity=True, gradient='exact')"


def test_double_backward_is_refused_but_create_graph_elsewhere_works():
    x, targets, il, tl = _problem()
    lp = x.log_softmax(2).detach().requires_grad_()
    weight = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    loss = weight * ct.ctc_loss(lp, targets, il, tl)
    grad_w, = torch.autograd.grad(loss, weight, create_graph=True)  # first order only: fine
    assert torch.isfinite(grad_w)
    grad_lp, = torch.autograd.grad(ct.ctc_loss(lp, targets, il, tl), lp, create_graph=True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(grad_lp.square().sum(), lp)


@pytest.mark.parametrize("classes", [6, 40])  # dense and compact saved state
def test_eager_path_equals_the_operator(classes):
    """Plain eager calls bypass the operator's dispatch (same forward and backward code)."""
    from ctckit.torch import _EagerLoss

    x, targets, il, tl = _problem(classes=classes)
    results = []
    for call in (_EagerLoss.apply, _ctc_loss_op):
        lp = x.log_softmax(2).detach().requires_grad_()
        nll, _ = call(lp, targets, il, tl, 0, False, True, "numba")
        grad, = torch.autograd.grad((nll * torch.arange(1.0, 4.0, dtype=torch.float64)).sum(), lp)
        results.append((nll, grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


class _PassThrough(torch.utils._python_dispatch.TorchDispatchMode):
    """A dispatch mode that changes nothing, but makes ctc_loss take the operator path."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("unbatched", [False, True])
def test_eager_call_and_operator_path_give_the_same_reduced_loss_and_gradient(reduction, unbatched):
    # The eager path validates once and takes the mean's weights from the validated
    # lengths; the operator path computes them with torch operations. Same bits.
    x, targets, il, tl = _problem(classes=6)
    if unbatched:
        x, targets, il, tl = x[:, 1], targets[1], il[1], tl[1]
    results = []
    for mode in (None, _PassThrough()):
        lp = x.log_softmax(-1).detach().requires_grad_()
        if mode is None:
            loss = ct.ctc_loss(lp, targets, il, tl, reduction=reduction)
        else:
            with mode:
                loss = ct.ctc_loss(lp, targets, il, tl, reduction=reduction)
        grad, = torch.autograd.grad(loss.sum(), lp)
        results.append((loss, grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("need_grad", [True, False])
def test_eager_backward_refuses_index_tensors_changed_after_the_forward(need_grad):
    # The eager backward reuses the forward's validated indices; autograd must refuse the
    # backward if a saved index tensor changed in place in between (here to a label out of
    # range, which a stale check would let through to the kernels).
    from ctckit.torch import _EagerLoss

    for changed in (1, 3):  # targets, target_lengths
        x, *indices = _problem(classes=6)
        lp = x.log_softmax(2).detach().requires_grad_()
        nll, _ = _EagerLoss.apply(lp, *indices, 0, False, need_grad, "numba")
        indices[changed - 1][0] += 50
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            nll.sum().backward()


def test_first_eager_call_does_not_import_dynamo():
    # the operator's first call imports torch._dynamo (about 1.5 s); plain eager use need not
    import subprocess
    import sys

    code = ("import sys, torch, ctckit.torch as ct\n"
            "x = torch.randn(20, 2, 5).log_softmax(2).requires_grad_()\n"
            "ct.ctc_loss(x, torch.tensor([[1, 2], [3, 3]]), [20, 20], [2, 2]).backward()\n"
            "print('torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"

"""ctckit.jax.ctc_loss against optax.ctc_loss (its drop-in) and the float64 reference.

The first three tests port the CTC tests of optax 0.2.8's own suite
(``optax/losses/_classification_test.py``, ``CTCTest``): one-to-one alignment (the loss
part; ``ctc_loss_with_forward_probs`` has no counterpart here), one-to-one alignment with
paddings (loss and gradient), and repeated labels with their minimal alignment.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ctckit.jax as cj
import reference as ref
from ctckit import CTCInputError


def _paddings(lengths, steps):
    return (np.arange(steps)[None, :] >= np.asarray(lengths)[:, None]).astype(np.float32)


def _average(fn):
    return lambda logits, *args: jnp.mean(fn(logits, *args))


def test_optax_one_to_one_alignment():
    rng = np.random.default_rng(1234)
    batch, steps, classes = 8, 50, 40
    logits = rng.standard_normal((batch, steps, classes)).astype(np.float32)
    labels = rng.integers(1, classes, (batch, steps))
    for n in range(batch):
        for t in range(1, steps):
            while labels[n, t] == labels[n, t - 1]:
                labels[n, t] = rng.integers(1, classes)
    loss = jax.jit(cj.ctc_loss)(logits, np.zeros((batch, steps)), labels, np.zeros((batch, steps)))
    logprobs = jax.nn.log_softmax(logits.astype(np.float64))
    expected = -np.array([sum(logprobs[b, t, labels[b, t]] for t in range(steps)) for b in range(batch)])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_optax_one_to_one_alignment_and_paddings():
    rng = np.random.default_rng(5)
    batch, classes, steps = 5, 13, 7
    logits = rng.normal(size=(batch, steps, classes)).astype(np.float32)
    logprobs = np.asarray(jax.nn.log_softmax(logits.astype(np.float64)))
    labels = np.array([rng.permutation(np.arange(1, classes))[:steps] for _ in range(batch)])
    lengths = rng.integers(3, 6, batch)
    paddings = _paddings(lengths, steps)
    loss = jax.jit(cj.ctc_loss)(logits, paddings, labels, paddings)
    _, gradients = jax.jit(jax.value_and_grad(_average(cj.ctc_loss)))(logits, paddings, labels, paddings)
    for n in range(batch):
        expected_loss = -sum(logprobs[n, t, k] for t, k in enumerate(labels[n, :lengths[n]]))
        np.testing.assert_allclose(loss[n], expected_loss, rtol=1e-6)
        expected = np.exp(logprobs[n])
        expected[lengths[n]:] = 0.0
        for t, k in enumerate(labels[n, :lengths[n]]):
            expected[t, k] -= 1.0
        np.testing.assert_allclose(gradients[n], expected / batch, rtol=1e-5, atol=1e-7)


def test_optax_repeat_with_one_to_one_alignment():
    labels = np.array([[1, 2, 2, 3], [2, 3, 4, 4], [1, 1, 1, 1], [1, 1, 2, 3], [1, 1, 1, 2]])
    alignments = [[1, 2, 0, 2, 3], [2, 3, 4, 0, 4], [1, 0, 1, 0, 1, 0, 1], [1, 0, 1, 2, 3], [1, 0, 1, 0, 1, 2]]
    batch, label_steps = len(labels), 6
    labels = np.pad(labels, [(0, 0), (0, label_steps - labels.shape[1])])
    label_paddings = _paddings([4] * batch, label_steps)
    frames = np.array([len(a) for a in alignments])
    logits = np.random.default_rng(3).standard_normal((batch, frames.max(), 5)).astype(np.float32)
    loss = jax.jit(cj.ctc_loss)(logits, _paddings(frames, frames.max()), labels, label_paddings)
    logprobs = np.asarray(jax.nn.log_softmax(logits.astype(np.float64)))
    for n in range(batch):
        expected = -sum(logprobs[n, t, k] for t, k in enumerate(alignments[n]))
        np.testing.assert_allclose(loss[n], expected, rtol=1e-6)


def _random_case(rng, batch=6, frames=40, classes=12, max_labels=10, middle_padding=False):
    logits = (rng.standard_normal((batch, frames, classes)) * 2).astype(np.float32)
    frame_lengths = rng.integers(frames // 2, frames + 1, batch)
    logit_paddings = _paddings(frame_lengths, frames)
    if middle_padding:
        logit_paddings[0, 3:6] = 1.0  # padded frames between used ones: skipped, as optax does
    label_lengths = rng.integers(0, max_labels + 1, batch)
    labels = rng.integers(1, classes, (batch, max_labels))
    return logits, logit_paddings, labels, _paddings(label_lengths, max_labels)


@pytest.mark.parametrize("seed", range(4))
def test_random_batches_match_optax_and_the_reference(seed):
    rng = np.random.default_rng(seed)
    logits, logit_paddings, labels, label_paddings = _random_case(rng, middle_padding=seed % 2 == 1)
    loss = cj.ctc_loss(logits, logit_paddings, labels, label_paddings)
    theirs = optax.ctc_loss(logits, logit_paddings, labels, label_paddings)
    feasible = np.isfinite(np.asarray(loss))
    assert feasible.sum() >= 3
    np.testing.assert_allclose(np.asarray(loss)[feasible], np.asarray(theirs)[feasible], rtol=1e-5)
    # the float64 reference on the used frames and labels
    for b in np.flatnonzero(feasible):
        used = logit_paddings[b] == 0
        lp = np.asarray(jax.nn.log_softmax(logits[b, used].astype(np.float64)))[:, None, :]
        target = list(labels[b, label_paddings[b] == 0])
        np.testing.assert_allclose(loss[b], ref.batch_nll(lp, [target], [used.sum()])[0], rtol=1e-6)
    weights = (rng.random(len(logits)) + 0.5) * feasible
    ours = np.asarray(jax.grad(lambda x: jnp.sum(cj.ctc_loss(x, logit_paddings, labels, label_paddings) * weights))(logits))
    theirs = np.asarray(jax.grad(lambda x: jnp.sum(optax.ctc_loss(x, logit_paddings, labels, label_paddings) * weights))(logits))
    with jax.enable_x64(True):  # optax in float64: the exact gradient
        exact = np.asarray(jax.grad(lambda x: jnp.sum(optax.ctc_loss(x, logit_paddings, labels, label_paddings) * weights))(
            jnp.asarray(logits, dtype=jnp.float64)))
    scale = np.abs(exact).max()
    assert np.abs(ours - exact).max() <= 1e-6 * scale  # float32 within 1e-6 of float64
    assert np.abs(ours - theirs).max() <= 5e-5 * scale  # optax's float32 gradient is itself off by up to 2e-5


def test_unalignable_targets_give_inf_and_a_zero_gradient():
    logits = np.random.default_rng(0).standard_normal((2, 4, 5)).astype(np.float32)
    labels = np.array([[1, 1, 1, 2], [1, 2, 0, 0]])  # item 0 needs 7 frames, has 4
    label_paddings = _paddings([4, 2], 4)
    loss, grad = jax.value_and_grad(lambda x: cj.ctc_loss(x, np.zeros((2, 4)), labels, label_paddings)[0])(logits)
    assert loss == np.inf
    assert not np.isnan(np.asarray(grad)).any() and np.count_nonzero(np.asarray(grad)) == 0


def test_a_certain_alignment_never_gives_a_negative_loss():
    # optax#1771: in float32 optax returns about -8e-8 here, which turns into NaN downstream.
    # P = 1 - y0^2 with y0 = 1 / (1 + e^17): the loss is 1.7e-15, below float32's reach from
    # float32 logits; ctckit returns 0 or a tiny positive value, never a negative one.
    logits = jnp.array([[[0.0, 17.0], [0.0, 17.0]]])
    loss = cj.ctc_loss(logits, jnp.zeros((1, 2)), jnp.array([[1]]), jnp.zeros((1, 1)))
    assert 0.0 <= float(loss[0]) < 1e-12
    assert float(optax.ctc_loss(logits, jnp.zeros((1, 2)), jnp.array([[1]]), jnp.zeros((1, 1)))[0]) < 0  # optax's bug
    grad = jax.grad(lambda x: cj.ctc_loss(x, jnp.zeros((1, 2)), jnp.array([[1]]), jnp.zeros((1, 1)))[0])(logits)
    assert np.isfinite(np.asarray(grad)).all()


def test_jit_vmap_and_changing_shapes():
    rng = np.random.default_rng(7)
    fn = jax.jit(jax.value_and_grad(lambda x, lp, lb, lbp: cj.ctc_loss(x, lp, lb, lbp).sum()))
    for frames, classes in ((20, 6), (33, 9), (20, 6)):
        case = _random_case(rng, batch=3, frames=frames, classes=classes, max_labels=5)
        value, grad = fn(*case)
        assert grad.shape == (3, frames, classes) and np.isfinite(np.asarray(grad)).all()
        assert float(value) == pytest.approx(float(np.sum(cj.ctc_loss(*case))), rel=1e-6)
    logits, logit_paddings, labels, label_paddings = _random_case(rng, batch=3, frames=15, classes=7, max_labels=4)
    stacked = jnp.stack([logits, 0.5 * logits])
    batched = jax.vmap(lambda x: cj.ctc_loss(x, logit_paddings, labels, label_paddings))(stacked)
    one_by_one = [cj.ctc_loss(x, logit_paddings, labels, label_paddings) for x in stacked]
    np.testing.assert_array_equal(np.asarray(batched), np.asarray(one_by_one))
    grads = jax.vmap(jax.grad(lambda x: cj.ctc_loss(x, logit_paddings, labels, label_paddings).sum()))(stacked)
    np.testing.assert_array_equal(np.asarray(grads[1]),
                                  np.asarray(jax.grad(lambda x: cj.ctc_loss(x, logit_paddings, labels,
                                                                            label_paddings).sum())(stacked[1])))


def test_bfloat16_and_float16_logits_are_read_as_they_are():
    rng = np.random.default_rng(11)
    logits, logit_paddings, labels, label_paddings = _random_case(rng, batch=3, frames=20, classes=8, max_labels=4)
    for dtype in (jnp.bfloat16, jnp.float16):
        x = jnp.asarray(logits).astype(dtype)
        loss = cj.ctc_loss(x, logit_paddings, labels, label_paddings)
        grad = jax.grad(lambda z: cj.ctc_loss(z, logit_paddings, labels, label_paddings).sum())(x)
        assert loss.dtype == dtype and grad.dtype == dtype
        exact = cj.ctc_loss(x.astype(jnp.float32), logit_paddings, labels, label_paddings)  # same values, float32
        np.testing.assert_allclose(np.asarray(loss, np.float64), np.asarray(exact, np.float64), rtol=1e-2)


_X64 = """
import jax, jax.numpy as jnp, numpy as np, optax
import ctckit.jax as cj
{enable}
rng = np.random.default_rng(0)
logits = rng.standard_normal((3, 12, 6))
lp = np.zeros((3, 12)); labels = rng.integers(1, 6, (3, 4)); lbp = np.zeros((3, 4))
{context}
    x = jnp.asarray(logits, dtype=jnp.float64)
    loss, grad = jax.jit(jax.value_and_grad(lambda z: cj.ctc_loss(z, lp, labels, lbp).sum()))(x)
    theirs = jax.grad(lambda z: optax.ctc_loss(z, lp, labels, lbp).sum())(x)
    assert loss.dtype == jnp.float64 and grad.dtype == jnp.float64, (loss.dtype, grad.dtype)
    assert abs(float(loss) - float(optax.ctc_loss(x, lp, labels, lbp).sum())) < 1e-9 * abs(float(loss))
    assert float(jnp.abs(grad - theirs).max()) < 1e-9, float(jnp.abs(grad - theirs).max())
    print("ok")
"""


@pytest.mark.parametrize("how", ["flag", "context manager"])
def test_float64_stays_float64_with_the_flag_and_the_context_manager(how):
    if how == "flag":
        code = _X64.format(enable='jax.config.update("jax_enable_x64", True)', context="if True:")
    else:
        code = _X64.format(enable="", context="with jax.enable_x64(True):")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "CTCKIT_QUIET_COMPILE": "1"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("arguments,match", [
    (dict(logits=np.zeros((2, 3))), "logits must be"),
    (dict(logits=np.zeros((2, 3, 4), dtype=np.int32)), "logits must be a floating-point"),
    (dict(logit_paddings=np.zeros((2, 4))), "logit_paddings must be"),
    (dict(labels=np.zeros((3, 2), dtype=np.int32)), "labels must be"),
    (dict(labels=np.zeros((2, 2), dtype=np.float32)), "labels must have an integer dtype"),
    (dict(label_paddings=np.zeros((2, 3))), "label_paddings must have the shape"),
    (dict(blank_id=4), "blank"),
])
def test_bad_shapes_and_dtypes_raise_at_trace_time_naming_the_argument(arguments, match):
    args = dict(logits=np.zeros((2, 3, 4), np.float32), logit_paddings=np.zeros((2, 3)),
                labels=np.ones((2, 2), np.int32), label_paddings=np.zeros((2, 2)))
    args.update(arguments)
    blank = args.pop("blank_id", 0)
    with pytest.raises((CTCInputError, TypeError, ValueError), match=match):
        jax.jit(lambda *a: cj.ctc_loss(*a, blank_id=blank)).lower(*args.values())


@pytest.mark.parametrize("value,why", [(0, "equals blank"), (7, "outside"), (-1, "outside")])
def test_bad_label_values_raise_a_clear_error_never_a_wrong_number(value, why):
    labels = np.array([[1, value], [2, 3]])
    message = rf"labels\[0, 1\] \(batch index 0\) = {value} (is )?{why}"
    with pytest.raises(CTCInputError, match=message):  # concrete labels: checked before the call
        cj.ctc_loss(np.zeros((2, 5, 7), np.float32), np.zeros((2, 5)), labels, np.zeros((2, 2)))
    with pytest.raises(Exception, match=message):  # traced labels: by the callback, inside XLA's error
        np.asarray(jax.jit(cj.ctc_loss)(np.zeros((2, 5, 7), np.float32), np.zeros((2, 5)), labels, np.zeros((2, 2))))
    # a bad value in a padded position is never read
    loss = cj.ctc_loss(np.zeros((2, 5, 7), np.float32), np.zeros((2, 5)), labels, np.array([[0.0, 1.0], [0.0, 0.0]]))
    assert np.isfinite(np.asarray(loss)).all()


def test_importing_ctckit_or_its_numpy_frontend_never_imports_jax():
    code = textwrap.dedent("""
        import sys
        import ctckit, ctckit.numpy
        assert "jax" not in sys.modules, "jax imported"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_xlas_flush_to_zero_mode_does_not_leak_into_later_results():
    # XLA runs the handler with subnormals flushed to zero (FTZ/DAZ); threads created while
    # it ran (Numba's OpenMP workers here: the first ctckit call of the process is the
    # JAX one) copy that mode. Later gradients with subnormal entries then depended on the
    # thread count (-0.0 on one thread, -3e-41 on another).
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, {tests!r})
        import jax, jax.numpy as jnp, numpy as np
        import ctckit, ctckit.jax as cj, ctckit.numpy as cn
        from cases import random_case
        logits = jnp.array([[[0.0, 17.0], [0.0, 17.0]]])
        jax.grad(lambda x: cj.ctc_loss(x, jnp.zeros((1, 2)), jnp.array([[1]]), jnp.zeros((1, 1)))[0])(logits)
        case = random_case(np.random.default_rng(7), frames=150, batch=20, classes=24, dtype=np.float32, infeasible=0.1)
        args = (case.log_probs, case.padded, case.input_lengths, case.target_lengths, case.blank, "mean", True)
        grads = []
        for threads in (2, 1):
            ctckit.set_num_threads(threads)
            grads.append(cn.ctc_loss_and_grad(*args)[1])
        subnormal = (grads[1] != 0) & (np.abs(grads[1]) < np.finfo(np.float32).tiny)
        assert subnormal.any(), "the case has no subnormal gradient entries"
        assert grads[0].tobytes() == grads[1].tobytes(), int((grads[0] != grads[1]).sum())
        print("ok")
    """).format(tests=os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "CTCKIT_QUIET_COMPILE": "1"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("middle_padding", [False, True])
def test_the_ffi_and_the_callback_give_the_same_bits(monkeypatch, middle_padding):
    # On the CPU the loss runs as an XLA FFI handler on XLA's buffers; elsewhere (GPU, TPU,
    # or a JAX without the FFI) through jax.pure_callback: both are the same computation.
    from ctckit import _jax_ffi

    case = _random_case(np.random.default_rng(11), batch=4, frames=18, classes=9, max_labels=5,
                        middle_padding=middle_padding)
    stacked = jnp.stack([case[0], 0.5 * case[0]])

    def run():
        step = jax.jit(jax.value_and_grad(lambda x: (cj.ctc_loss(x, *case[1:]) * jnp.arange(1.0, 5.0)).sum()))
        batched = jax.jit(jax.vmap(lambda x: cj.ctc_loss(x, *case[1:])))
        return [np.asarray(a) for a in (*step(case[0]), batched(stacked))]

    through_ffi = run()
    monkeypatch.setattr(_jax_ffi, "register", lambda name, compute: False)
    through_callback = run()
    for ffi, callback in zip(through_ffi, through_callback):
        np.testing.assert_array_equal(ffi, callback)
    assert np.abs(through_ffi[1]).max() > 0.01


def test_an_error_inside_the_ffi_handler_reaches_the_caller():
    # Raised inside XLA's computation: it must come back as an error, never as an
    # unwritten (garbage) result.
    labels = jnp.array([[1, 9], [2, 3]])  # 9 >= C = 7
    step = jax.jit(jax.grad(lambda x, lb: cj.ctc_loss(x, jnp.zeros((2, 5)), lb, jnp.zeros((2, 2))).sum()))
    with pytest.raises(Exception, match=r"CTCInputError: labels\[0, 1\] \(batch index 0\) = 9"):
        np.asarray(step(np.zeros((2, 5, 7), np.float32), labels))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_negative_zero_paddings_mean_not_padded_in_every_dtype(dtype):
    """``-(mask - 1)`` gives -0.0: as 0.0, not padding (half floats once crossed to the host
    as their bits, where -0.0 is 0x8000, nonzero: every frame and label counted as padding)."""
    case = _random_case(np.random.default_rng(3), batch=3, frames=12, classes=6, max_labels=4)
    logits, logit_paddings, labels, label_paddings = case
    want = np.asarray(cj.ctc_loss(logits, logit_paddings, labels, label_paddings))
    negative = [jnp.where(jnp.asarray(p) == 0, -0.0, jnp.asarray(p)).astype(dtype) for p in (logit_paddings, label_paddings)]
    assert np.signbit(np.asarray(negative[0], np.float32)).any()
    for call in (cj.ctc_loss, jax.jit(cj.ctc_loss)):
        np.testing.assert_array_equal(np.asarray(call(logits, negative[0], labels, negative[1])), want)


def test_int64_labels_out_of_int32_range_are_named_not_wrapped():
    """Without x64 JAX turns int64 into int32: 2**32 + 1 would become 1, a valid label."""
    assert not jax.config.jax_enable_x64
    logits, paddings = np.zeros((1, 6, 4), np.float32), np.zeros((1, 6))
    for labels in (np.array([[2**32 + 1, 2]]), [[2**32 + 1, 2]], np.array([[2**64 - 2**32 + 1, 2]], np.uint64)):
        with pytest.raises(CTCInputError, match=r"labels\[0, 0\] \(batch index 0\) = \d+ is outside \[0, C\) = \[0, 4\)"):
            cj.ctc_loss(logits, paddings, labels, np.zeros((1, 2)))
    # in a padded position it is never read, as any other padding value
    loss = cj.ctc_loss(logits, paddings, np.array([[2, 2**32 + 1]]), np.array([[0.0, 1.0]]))
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(cj.ctc_loss(logits, paddings, [[2, 0]], [[0.0, 1.0]])))
    with pytest.raises(TypeError, match="^labels must"):
        cj.ctc_loss(logits, paddings, [[2**70, 2]], np.zeros((1, 2)))


def test_narrow_dtypes_are_computed_not_refused_by_the_ffi():
    """float8 logits, float8 or int4 paddings and int4 labels: what XLA's buffers of these
    types would hold is not read on the host; they are converted in JAX first."""
    import ml_dtypes

    case = _random_case(np.random.default_rng(4), batch=3, frames=12, classes=6, max_labels=4)
    logits, logit_paddings, labels, label_paddings = case
    f8 = jnp.asarray(logits).astype(ml_dtypes.float8_e4m3fn)
    want = np.asarray(cj.ctc_loss(f8.astype(jnp.float32), logit_paddings, labels, label_paddings))
    narrow = (f8, jnp.asarray(logit_paddings).astype(ml_dtypes.float8_e4m3fn), jnp.asarray(labels).astype(jnp.int4),
              jnp.asarray(label_paddings).astype(jnp.int4))
    for call in (cj.ctc_loss, jax.jit(cj.ctc_loss)):
        loss = call(*narrow)
        assert loss.dtype == f8.dtype
        np.testing.assert_array_equal(np.asarray(loss), want.astype(ml_dtypes.float8_e4m3fn))
    grad = jax.jit(jax.grad(lambda x: cj.ctc_loss(x, *narrow[1:]).astype(jnp.float32).sum()))(f8)
    assert grad.dtype == f8.dtype and np.isfinite(np.asarray(grad, np.float32)).all()

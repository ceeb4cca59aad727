"""float32 -> float16 rounding in the core (``ctckit/_core/half_rounding.py``): bit for bit
NumPy's, and what the NumPy frontend returns for float16 inputs."""

import numpy as np
import pytest

import ctckit.numpy as cn
from conftest import log_softmax
from ctckit._core.half_rounding import float16_from_float32


def _every_half_and_its_neighbours():
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    values = np.unique(halves[np.isfinite(halves)].astype(np.float32))
    midpoints = ((values[:-1].astype(np.float64) + values[1:]) / 2).astype(np.float32)  # ties: to even
    up, down = np.nextafter(midpoints, np.float32(np.inf)), np.nextafter(midpoints, np.float32(-np.inf))
    beyond = np.array([65504, 65519.996, 65520, 65536, 1e30, np.inf, np.nan, 2.0**-24, 2.0**-25,
                       np.nextafter(np.float32(2.0**-25), np.float32(1)), 3 * 2.0**-25, 1e-45, 0.0], np.float32)
    return np.concatenate([values, midpoints, up, down, beyond, -beyond])


@pytest.mark.parametrize("values", ["every half, the midpoints and their neighbours", "random float32 bits"])
def test_rounding_is_numpys_bit_for_bit(values):
    if values == "random float32 bits":
        bits = np.random.default_rng(5).integers(0, 1 << 32, 1_000_000, dtype=np.uint64).astype(np.uint32)
        x = bits.view(np.float32)
    else:
        x = _every_half_and_its_neighbours()
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    got = float16_from_float32(x)
    assert got.dtype == np.float16 and got.shape == x.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])


def test_any_layout_keeps_its_shape():
    x = np.random.default_rng(1).standard_normal((3, 4, 5)).astype(np.float32).transpose(2, 0, 1)
    np.testing.assert_array_equal(float16_from_float32(x), x.astype(np.float16))


@pytest.mark.parametrize("dim", [-1, 0])
def test_float16_results_of_the_numpy_frontend_are_the_float32_ones_rounded(dim):
    """The gradient of a float16 input is the float32 computation's, rounded once (mostly
    subnormal halves here: 1000 classes, the reduction's scale)."""
    rng = np.random.default_rng(2)
    frames, size, classes, length = 30, 3, 1000, 6
    logits = rng.standard_normal((frames, size, classes)).astype(np.float16)
    targets = rng.integers(1, classes, (size, length))
    lengths = ([frames, frames - 2, frames - 5], [length, length - 1, 3])
    moved = np.moveaxis(logits, -1, dim)
    loss, grad = cn.ctc_loss_and_grad_from_logits(moved, targets, *lengths, dim=dim)
    loss32, grad32 = cn.ctc_loss_and_grad_from_logits(np.moveaxis(logits.astype(np.float32), -1, dim), targets,
                                                      *lengths, dim=dim)
    assert grad.dtype == np.float16 and grad.shape == moved.shape and loss.dtype == np.float16
    subnormal = np.abs(grad32) < 2.0**-14
    assert subnormal.mean() > 0.5  # what made NumPy's rounding slow
    np.testing.assert_array_equal(grad.view(np.uint16), grad32.astype(np.float16).view(np.uint16))

    log_probs = log_softmax(logits.astype(np.float32)).astype(np.float16)
    _, grad = cn.ctc_loss_and_grad(log_probs, targets, *lengths)
    _, grad32 = cn.ctc_loss_and_grad(log_probs.astype(np.float32), targets, *lengths)
    assert grad.dtype == np.float16
    np.testing.assert_array_equal(grad.view(np.uint16), grad32.astype(np.float16).view(np.uint16))

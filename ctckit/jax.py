r"""The JAX frontend: ``ctc_loss``, a drop-in for ``optax.ctc_loss`` on ctckit's core.

Same signature and meaning as optax 0.2.8: ``logits`` (B, T, K) unnormalised,
``logit_paddings`` (B, T) with 1.0 on padded frames, ``labels`` (B, N) with
``label_paddings`` (B, N) 1.0 on padded labels; the per-sequence losses (B,) come back.
The log-softmax is folded into the loss (:mod:`ctckit._core.logits`): float64 sums
whatever the logits' dtype, an exact gradient ``g_b * (softmax - posterior)``.

Plumbing: the core runs on the host through ``jax.pure_callback`` (under ``jit``, ``vmap``
with ``vmap_method="broadcast_all"``, on any backend: arrays on a GPU or TPU make a round
trip to the host), differentiated by ``jax.custom_vjp``. Differentiated, the forward's
callback also returns each item's gradient (one pass over the logits after the loss),
which the backward scales by the incoming cotangent: one callback a step, the logits
crossing into it once and the gradient out once (a callback copies what crosses it; a
second one in the backward, from residuals, made bpe5k's step 2.5x slower). Every float64
array crosses the callback boundary as its bits (pairs of uint32),
and half types as uint16 bits: the callback never depends on JAX's x64 setting of the
thread XLA runs it on (under ``jax.enable_x64`` used as a context manager, a callback on
one of XLA's threads sees x64 off), so float64 stays float64.

Differences from optax, on purpose: a target that cannot be aligned (more labels and
repeats than frames) gives ``inf`` with a zero gradient (optax: a finite value near
``-log_epsilon`` with a gradient towards an impossible alignment, which is
indistinguishable from a large real loss); a loss is never negative (optax's float32 loss
can be, optax#1771); ``log_epsilon`` is accepted and unused. Padded frames are skipped
wherever ``logit_paddings`` marks them, as optax does.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _core, _jax_ffi
from ._fenv import ieee_floats
from ._inputs import check_blank, check_shapes, check_values
from .errors import CTCInputError

__all__ = ["ctc_loss"]

_BITS = {jnp.dtype(jnp.float16): (_core.FORMAT_FLOAT16, jnp.uint16), jnp.dtype(jnp.bfloat16): (_core.FORMAT_BFLOAT16, jnp.uint16)}


def ctc_loss(logits, logit_paddings, labels, label_paddings, *, blank_id: int = 0, log_epsilon: float = -1e5):
    r"""Per-sequence CTC losses (B,) of ``log_softmax(logits)``, as ``optax.ctc_loss``.

    Args:
        logits: (B, T, K) unnormalised scores, float16, bfloat16, float32 or float64 (read
            as they are), or another float type such as float8 (computed in float32).
        logit_paddings: (B, T), 1 on padded frames (skipped wherever they are), 0 elsewhere
            (any real dtype; -0.0 is 0).
        labels: (B, N) integer labels in ``[0, K)``, never ``blank_id`` where not padded
            (NumPy int64 labels are checked before JAX, without x64, makes them int32).
        label_paddings: (B, N), 1 on padded labels (right padding), 0 elsewhere.
        blank_id: the blank's class.
        log_epsilon: accepted for optax's signature; unused (no finite stand-in for
            ``log 0`` is needed: an unalignable target gives ``inf``, gradient 0).

    Returns the losses in the dtype of ``logits``; differentiable w.r.t. ``logits`` (exactly:
    ``g * (softmax - posterior)``), under ``jit``, ``grad`` and ``vmap``.

    .. math:: \mathrm{loss}_b = -\log \sum_{\pi \in \mathcal{B}^{-1}(l_b)} \prod_{t \notin \mathrm{pad}_b}
        \frac{e^{x_{b,t,\pi_t}}}{\sum_k e^{x_{b,t,k}}}
    """
    logits = _as_jax(logits, "logits")
    labels = _labels_as_given(labels, label_paddings, logits.shape[-1] if logits.ndim else 0)
    logit_paddings, labels, label_paddings = (_as_jax(a, name) for a, name in (
        (logit_paddings, "logit_paddings"), (labels, "labels"), (label_paddings, "label_paddings")))
    _check(logits, logit_paddings, labels, label_paddings)
    blank = check_blank(blank_id, logits.shape[2])
    given = logits.dtype
    if given not in _READ:  # float8 and the like: computed in float32
        logits = logits.astype(jnp.float32)
    if labels.dtype not in _LABELS:  # int4 and the like
        labels = labels.astype(jnp.int32)
    logit_paddings, label_paddings = (_readable_paddings(p) for p in (logit_paddings, label_paddings))
    if not any(isinstance(a, jax.core.Tracer) for a in (logit_paddings, labels, label_paddings)):
        # concrete indices (not under jit): checked here, so that a bad label raises CTCInputError itself
        # (under jit the callback raises it, wrapped in XLA's runtime error)
        _host_indices(logits.shape, logit_paddings, labels, label_paddings, blank)
    return _loss(logits, logit_paddings, labels, label_paddings, blank).astype(given)


_READ = {jnp.dtype(t) for t in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)}
"""Logits dtypes the core reads as they are."""
_LABELS = {jnp.dtype(t) for t in (jnp.int8, jnp.int16, jnp.int32, jnp.int64, jnp.uint8, jnp.uint16, jnp.uint32, jnp.uint64)}
"""Label dtypes that cross to the host as they are."""


def _readable_paddings(paddings):
    """Paddings the host reads as they are (float32, float64, bool, the usual ints), or as
    0/1 compared here in their own dtype: half floats cross as their bits, where -0.0 (not
    padding) is 0x8000, and float8 or int4 buffers are not read at all. (Comparing float32
    paddings here too cost ocr's jitted forward 0.2 ms, 10%, in an interleaved A/B.)"""
    if paddings.dtype in _PLAIN_PADDINGS:
        return paddings
    return (paddings != 0).astype(jnp.int8)


_PLAIN_PADDINGS = {jnp.dtype(jnp.float32), jnp.dtype(jnp.float64), jnp.dtype(bool)} | _LABELS


def _as_jax(value, name: str):
    try:
        return jnp.asarray(value)
    except (TypeError, ValueError, OverflowError) as error:  # ragged lists, objects, ints beyond 64 bits
        raise TypeError(f"{name} must be an array, got {type(value).__name__} that JAX cannot convert: {error}") from None


def _labels_as_given(labels, label_paddings, classes: int):
    """``labels`` that are not a JAX array, checked before JAX converts them: without x64,
    JAX turns int64 into int32, which would wrap a label out of range into a valid one."""
    if isinstance(labels, jax.Array):
        return labels
    try:
        array = np.asarray(labels)
    except (TypeError, ValueError, OverflowError) as error:
        raise TypeError(f"labels must be a (B, N) integer array, got {type(labels).__name__}: {error}") from None
    if array.dtype.kind not in "iu":
        if array.dtype == object:  # Python ints beyond 64 bits
            raise TypeError("labels must have an integer dtype, got Python values NumPy holds as objects")
        return array  # _check names the dtype
    canonical = jax.dtypes.canonicalize_dtype(array.dtype)
    if canonical == array.dtype or array.ndim != 2:
        return array
    info = np.iinfo(canonical)
    used = np.ones(array.shape, dtype=bool)
    if not isinstance(label_paddings, jax.core.Tracer) and np.shape(label_paddings) == array.shape:
        used = np.asarray(label_paddings) == 0
    wraps = used & ((array < info.min) | (array > info.max))
    if wraps.any():
        b, n = np.argwhere(wraps)[0]
        raise CTCInputError(f"labels[{b}, {n}] (batch index {b}) = {array[b, n]} is outside [0, C) = [0, {classes})")
    return array


def _check(logits, logit_paddings, labels, label_paddings) -> None:
    """Shapes and dtypes, at trace time, each error naming its argument."""
    if logits.ndim != 3:
        raise CTCInputError(f"logits must be (B, T, K), got shape {logits.shape}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be a floating-point array, got {logits.dtype}")
    batch, frames, classes = logits.shape
    if 0 in logits.shape:
        raise CTCInputError(f"logits must not be empty, got shape {logits.shape}")
    if logit_paddings.shape != (batch, frames):
        raise CTCInputError(f"logit_paddings must be (B, T) = {(batch, frames)} to match logits, got {logit_paddings.shape}")
    if labels.ndim != 2 or labels.shape[0] != batch:
        raise CTCInputError(f"labels must be (B, N) with B = {batch}, got shape {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if label_paddings.shape != labels.shape:
        raise CTCInputError(f"label_paddings must have the shape of labels {labels.shape}, got {label_paddings.shape}")
    for name, paddings in (("logit_paddings", logit_paddings), ("label_paddings", label_paddings)):
        if jnp.issubdtype(paddings.dtype, jnp.complexfloating) or paddings.dtype == jnp.dtype(object):
            raise TypeError(f"{name} must be real (1 on padding, 0 elsewhere), got {paddings.dtype}")


def _as_bits(x):
    """What crosses the callback for a float array: float32 itself, float64 as uint32 pairs
    (last axis 2), half types as uint16."""
    if x.dtype == jnp.float64:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if x.dtype in _BITS:
        return jax.lax.bitcast_convert_type(x, _BITS[x.dtype][1])
    return x.astype(jnp.float32)


def _from_float64_bits(bits):
    return jax.lax.bitcast_convert_type(bits, jnp.float64)


def _host_logits(bits: np.ndarray, dtype_name: str):
    """``(array, fmt)`` of the logits as the core reads them, from what crossed the callback."""
    if dtype_name == "float64":
        return np.ascontiguousarray(bits).view(np.float64)[..., 0], _core.FORMAT_FLOAT
    if dtype_name in ("float16", "bfloat16"):
        return np.asarray(bits, dtype=np.uint16), (_core.FORMAT_FLOAT16 if dtype_name == "float16" else _core.FORMAT_BFLOAT16)
    return np.asarray(bits, dtype=np.float32), _core.FORMAT_FLOAT


def _host_indices(shape, logit_paddings, labels, label_paddings, blank):
    """``(batch, used)``: the validated :class:`Batch` of the used frames and labels (their
    counts, the labels packed to the front if padding lies between them) and the used
    frames' mask (B', T); B' flattens vmap's leading axes of ``labels``."""
    frames, classes = shape[-2], shape[-1]
    labels = np.asarray(labels)
    items = int(np.prod(labels.shape[:-1]))  # B' (N may be 0: no reshape(-1, 0))
    labels = labels.reshape(items, labels.shape[-1])
    label_used = (np.asarray(label_paddings) == 0).reshape(labels.shape)
    used = (np.asarray(logit_paddings) == 0).reshape(labels.shape[0], frames)
    input_lengths, target_lengths = used.sum(axis=1), label_used.sum(axis=1)
    if not (label_used == (np.arange(labels.shape[1]) < target_lengths[:, None])).all():
        packed = np.zeros_like(labels)
        for b in range(labels.shape[0]):
            packed[b, :target_lengths[b]] = labels[b, label_used[b]]
        labels = packed
    view_shape = (frames, labels.shape[0], classes)
    shapes = check_shapes(view_shape, labels.shape, input_lengths.shape, target_lengths.shape, "logits")
    return check_values(shapes, labels, input_lengths, target_lengths, blank, labels="labels"), used


def _host_batch(values, logit_paddings, labels, label_paddings, blank):
    """``(view, batch, used)``: the logits as (T, B', K) (a view, or the used frames packed
    to the front when padded frames lie between used ones) with :func:`_host_indices`."""
    classes, frames = values.shape[-1], values.shape[-2]
    values = values.reshape(-1, frames, classes)
    batch, used = _host_indices(values.shape, logit_paddings, labels, label_paddings, blank)
    if not (used == (np.arange(frames) < batch.input_lengths[:, None])).all():  # padding between used frames: pack them
        packed = np.zeros_like(values)
        for b in range(values.shape[0]):
            packed[b, :batch.input_lengths[b]] = values[b, used[b]]
        values = packed
    return values.transpose(1, 0, 2), batch, used


def _forward_into(values, fmt, logit_paddings, labels, label_paddings, blank, nll_out, grad_out):
    """The losses into ``nll_out`` (B',) and, if ``grad_out`` is not None, the gradient of
    each item's loss w.r.t. its logits into it ((B', T, K), zero on padded frames), which
    the backward scales. ``values``: the logits (B', T, K), C-contiguous."""
    lead = np.shape(labels)[:-1]
    classes, frames = values.shape[-1], values.shape[-2]
    view, batch, used = _host_batch(values, logit_paddings, labels, label_paddings, blank)
    size = view.shape[1]
    if grad_out is None:
        nll, _ = _core.negative_log_likelihood_from_logits(view, fmt, batch, blank, False)
        nll_out[...] = nll.reshape(lead)  # never negative (see ctckit._core._never_negative)
        return
    target = grad_out.reshape(size, frames, classes)  # a view: grad_out is C-contiguous
    in_place = (used == (np.arange(frames) < batch.input_lengths[:, None])).all()
    # written in place: (T, B', K) in the memory of (B', T, K), batch-first, or time-first
    # when the view is C-contiguous too (B' = 1 or T = 1: the same memory either way)
    out = (target.reshape(frames, size, classes) if view.flags.c_contiguous else target) if in_place else None
    nll, _, grad = _core.loss_and_gradient_from_logits(view, fmt, batch, blank, np.ones(size), out=out)
    nll_out[...] = nll.reshape(lead)
    if not in_place:
        grad = grad.transpose(1, 0, 2)
        target[...] = 0.0
        for b in range(size):  # back to the frames they came from
            target[b, used[b]] = grad[b, :batch.input_lengths[b]]


def _ffi_forward(inputs, outputs):
    """The FFI handler's computation (:mod:`._jax_ffi`): XLA's buffers, written in place."""
    (values, xla_dtype), (logit_paddings, _), (labels, _), (label_paddings, _), (blank, _) = inputs
    fmt = {_jax_ffi.FLOAT16: _core.FORMAT_FLOAT16, _jax_ffi.BFLOAT16: _core.FORMAT_BFLOAT16}.get(xla_dtype, _core.FORMAT_FLOAT)
    grad_out = outputs[1][0] if len(outputs) > 1 else None
    with ieee_floats():  # XLA flushes subnormals to zero meanwhile (see ctckit._fenv)
        _forward_into(values, fmt, logit_paddings, labels, label_paddings, int(blank.reshape(-1)[0]), outputs[0][0],
                      grad_out)


def _callback_forward(bits, logit_paddings, labels, label_paddings, *, blank, dtype_name, need_grad):
    """The ``pure_callback`` of the forward (arrays off the CPU): the losses and gradient of
    :func:`_forward_into`, float64 as its bits (see the module's docstring)."""
    values, fmt = _host_logits(bits, dtype_name)
    double = dtype_name == "float64"
    dtype = np.float64 if double else np.float32
    nll = np.empty(np.shape(labels)[:-1], dtype=dtype)
    grad = np.empty(np.shape(values), dtype=dtype) if need_grad else None
    with ieee_floats():
        _forward_into(np.ascontiguousarray(values), fmt, logit_paddings, labels, label_paddings, blank, nll, grad)
    out = [nll.view(np.uint32).reshape(*nll.shape, 2) if double else nll]
    if need_grad:
        out.append(grad.view(np.uint32).reshape(*grad.shape, 2) if double else grad)
    return tuple(out)


_FFI_TARGET = "ctckit_ctc_loss_from_logits"


def _forward_call(logits, logit_paddings, labels, label_paddings, blank, need_grad):
    """``(nll, grad)`` (``grad`` None without ``need_grad``): float64 for float64 logits,
    else float32; through the FFI on the CPU, a callback elsewhere."""
    double = jnp.dtype(logits.dtype) == jnp.float64
    out_dtype = jnp.float64 if double else jnp.float32
    shapes = [jax.ShapeDtypeStruct(logits.shape[:-2], out_dtype)]
    if need_grad:
        shapes.append(jax.ShapeDtypeStruct(logits.shape, out_dtype))
    operands = (logits, logit_paddings, labels, label_paddings)

    def through_callback(logits, logit_paddings, labels, label_paddings):
        bit_shapes = [jax.ShapeDtypeStruct(s.shape + ((2,) if double else ()), jnp.uint32 if double else jnp.float32)
                      for s in shapes]
        host = partial(_callback_forward, blank=blank, dtype_name=jnp.dtype(logits.dtype).name, need_grad=need_grad)
        out = jax.pure_callback(host, tuple(bit_shapes), _as_bits(logits), logit_paddings, labels, label_paddings,
                                vmap_method="broadcast_all")
        return tuple(_from_float64_bits(o) if double else o for o in out)

    def through_ffi(logits, logit_paddings, labels, label_paddings):
        call = jax.ffi.ffi_call(_FFI_TARGET, tuple(shapes), vmap_method="broadcast_all")
        return tuple(call(logits, logit_paddings, labels, label_paddings, jnp.int32(blank)))

    if _jax_ffi.register(_FFI_TARGET, _ffi_forward):
        out = jax.lax.platform_dependent(*operands, cpu=through_ffi, default=through_callback)
    else:
        out = through_callback(*operands)
    return out[0], (out[1] if need_grad else None)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _loss(logits, logit_paddings, labels, label_paddings, blank):
    nll, _ = _forward_call(logits, logit_paddings, labels, label_paddings, blank, False)
    return nll.astype(logits.dtype)


def _loss_fwd(logits, logit_paddings, labels, label_paddings, blank):
    nll, grad = _forward_call(logits, logit_paddings, labels, label_paddings, blank, True)
    return nll.astype(logits.dtype), grad


def _loss_bwd(blank, grad, g):
    """``g[b] * grad[b]``: the forward computed each item's gradient (one call a step, the
    logits read once)."""
    scaled = g.astype(grad.dtype)[..., None, None] * grad
    return scaled.astype(g.dtype), None, None, None


_loss.defvjp(_loss_fwd, _loss_bwd)

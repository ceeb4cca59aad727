r"""The loss on logits: log-softmax folded into the loss, its backward into one pass.

A training step computes ``ctc_loss(log_softmax(x))``. Written out, the log-softmax
``log y[t, n, c] = x[t, n, c] - lse[t, n]``, ``lse = log sum_c exp(x[t, n, c])``, makes a
(T, N, C) array, its backward reads two more and writes a third. But the CTC recursions
(Graves et al., eqs. 6-16) read only the columns of the blank and of the labels an item
uses, and the gradient w.r.t. the logits has a closed form (eq. 16 through the softmax):

.. math:: \partial\,\mathrm{loss}_n / \partial x_{t,n,c} = y_{t,n,c} - \gamma_{t,n}(c),

the softmax minus the posterior occupation of class c at frame t (zero for classes the
target does not use). So:

1. :func:`compact_columns`: each item's distinct classes, blank first, get columns
   ``0 .. K_n - 1``; its labels are renumbered by column (equal labels stay equal, so
   repeats are still repeats).
2. :func:`gather_log_probs`: one pass over the logits, a frame at a time, computes ``lse``
   and writes only the used columns of the log-softmax, in float64: a (T, N, K) array,
   ``K <= min(C, max target length + 1)``.
3. The core's loss and exact gradient on that array (:mod:`.loss`): ``-gamma`` per column.
4. :func:`logit_gradient` (the backward): one more pass, ``scale[n] * (exp(x - lse) -
   gamma)``, written once into the output.

Nothing (T, N, C) is made but the gradient itself; the backward keeps ``lse`` and the
(T, N, K) posteriors. Logits are read as they are: float32, float64, and float16 or
bfloat16 through their bits (uint16, ``FORMAT_*``), converted exactly to float32 in a row
buffer; time-first (T, N, C) or batch-first (N, T, C) rows without a copy
(:func:`frame_rows`). Exps are float32 for all but float64 logits (:func:`.vexp32_shifted`,
relative error below 3e-7), every sum is float64.
"""

import numpy as np
from numba import types
from numba.extending import overload

from . import buffers, pool
from .config import HOT, INLINE, LINKED, NJIT
from .disk_cache import njit
from .intrinsics import float_from_bits, is_set, keep_alive, unmanaged
from .vexp import vexp32_shifted, vexp_shifted

FORMAT_FLOAT, FORMAT_FLOAT16, FORMAT_BFLOAT16 = 0, 1, 2
"""How the kernels read logits: a float32/float64 array as it is, or a uint16 array of the
bits of IEEE half floats or of bfloat16 values."""

ROW_NS = 2.0
"""Estimated ns per logit of a pass (one exp and a few loads and stores): only to split frames between threads."""


@njit(**NJIT)
def compact_columns(targets, offsets, target_lengths, classes, blank, width=-1):
    """``(columns, class_of_column)``: item n's labels renumbered by column (``columns``, the
    layout of ``targets``; padding keeps its values), and ``class_of_column[n, j]``, the
    class of its column j (``-1`` past its ``K_n`` distinct classes; column 0 is the blank),
    K columns: ``width``, or at least the most distinct classes of an item (``-1``: exactly that)."""
    size = offsets.shape[0]
    longest = 0
    for n in range(size):
        longest = max(longest, target_lengths[n])
    class_of_column = np.full((size, max(min(classes, longest + 1), width)), -1, dtype=np.int64)
    column_of_class = np.full(classes, -1, dtype=np.int64)
    columns = targets.copy()
    used_most = 1
    for n in range(size):
        column_of_class[blank] = 0
        class_of_column[n, 0] = blank
        used = 1
        start = offsets[n]
        for k in range(target_lengths[n]):
            label = targets[start + k]
            if column_of_class[label] < 0:
                column_of_class[label] = used
                class_of_column[n, used] = label
                used += 1
            columns[start + k] = column_of_class[label]
        for j in range(used):
            column_of_class[class_of_column[n, j]] = -1
        used_most = max(used_most, used)
    return columns, class_of_column[:, :max(used_most, width)].copy()


def _readable_row(source, fmt, row):
    """``source`` (a row of logits) as values the float kernels read: itself for a float
    array, else its half floats converted (exactly) into ``row`` (float32), which is
    returned."""


@overload(_readable_row, inline="always")
def _readable_row_impl(source, fmt, row):
    if not isinstance(source.dtype, types.Integer):
        return lambda source, fmt, row: source

    def convert_bits(source, fmt, row):
        if fmt == FORMAT_BFLOAT16:
            for c in range(row.shape[0]):
                row[c] = _bfloat16_value(np.int64(source[c]))
        else:
            for c in range(row.shape[0]):
                row[c] = _float16_value(np.int64(source[c]))
        return row
    return convert_bits


PROBE = 64
"""float32 rows take their shift from the largest of their first ``PROBE`` values (exps of
up to e^80 fit float32), not from a pass over the whole row: 0.2 ns a logit less. A row
with a value more than 80 above it is done again with the row's maximum."""


def _log_sum_exp(values, row, row32):
    """``log sum_c exp(values[c])``, the sum in float64, the exps in the precision of
    ``values`` (float32: :func:`.vexp32_shifted`, relative error below 3e-7, twice as fast,
    shifted by a probe maximum, see ``PROBE``)."""


@overload(_log_sum_exp, inline="always")
def _log_sum_exp_impl(values, row, row32):
    if values.dtype == types.float32:
        def in_float32(values, row, row32):
            shift = _row_max(values[:min(PROBE, values.shape[0])])
            if vexp32_shifted(values, shift, row32, np.float32(1.0)) > 0:
                shift = _row_max(values)
                vexp32_shifted(values, shift, row32, np.float32(1.0))
            total = 0.0
            for c in range(row32.shape[0]):
                total += np.float64(row32[c])
            return shift + np.log(total)
        return in_float32

    def in_float64(values, row, row32):
        shift = _row_max(values)
        vexp_shifted(values, shift, row)
        total = 0.0
        for c in range(row.shape[0]):
            total += row[c]
        return shift + np.log(total)
    return in_float64


def _scaled_softmax(values, shift, factor, target):
    """``target[c] = factor * exp(values[c] - shift)``, in the precision of ``target``
    (float32: :func:`.vexp32_shifted`, the product in the same loop)."""


@overload(_scaled_softmax, inline="always")
def _scaled_softmax_impl(values, shift, factor, target):
    if target.dtype == types.float32:
        return lambda values, shift, factor, target: vexp32_shifted(values, shift, target, np.float32(factor))

    def in_float64(values, shift, factor, target):
        vexp_shifted(values, shift, target)
        for c in range(target.shape[0]):
            target[c] *= factor
    return in_float64


@njit(**INLINE)
def _from_fields(bits, exponent_bits, mantissa_bits, bias):
    """The float64 value of a small IEEE binary float given as its bits (sign, exponent,
    mantissa): exact, subnormals, infinities and NaN included; branch-free selects."""
    top = (1 << exponent_bits) - 1
    exponent = (bits >> mantissa_bits) & top
    mantissa = bits & ((1 << mantissa_bits) - 1)
    significand = mantissa + ((1 << mantissa_bits) if exponent > 0 else 0)
    power = float_from_bits((max(exponent, 1) - bias - mantissa_bits + 1023) << 52)
    value = significand * power
    value = value if exponent < top else (np.inf if mantissa == 0 else np.nan)
    return -value if (bits >> (exponent_bits + mantissa_bits)) & 1 else value


# Linked, not inlined at Numba's IR level: inlined three levels deep into a loop over a
# batch-major row, Numba's SSA pass lost a variable of _from_fields's selects and warned
# (NumbaIRAssumptionWarning, "please report"), an error under `-W error` or pytest's
# `filterwarnings = error`. LLVM inlines them: the same machine code.
@njit(**LINKED)
def _float16_value(bits):
    return _from_fields(bits, 5, 10, 15)


@njit(**LINKED)
def _bfloat16_value(bits):
    return _from_fields(bits, 8, 7, 127)


@njit(**INLINE)
def _row_max(row):
    """The largest value of ``row``, NaN skipped (the sum of exps after it propagates it),
    on eight independent maxima: LLVM does not vectorise a max over floats without
    ``nnan``, and one chain of compares costs 0.56 ns an element (8 chains: 0.2)."""
    size = row.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = -np.inf
    c = 0
    while c + 8 <= size:
        v0, v1, v2, v3 = row[c], row[c + 1], row[c + 2], row[c + 3]
        v4, v5, v6, v7 = row[c + 4], row[c + 5], row[c + 6], row[c + 7]
        m0, m1, m2, m3 = (v0 if v0 > m0 else m0), (v1 if v1 > m1 else m1), (v2 if v2 > m2 else m2), (v3 if v3 > m3 else m3)
        m4, m5, m6, m7 = (v4 if v4 > m4 else m4), (v5 if v5 > m5 else m5), (v6 if v6 > m6 else m6), (v7 if v7 > m7 else m7)
        c += 8
    while c < size:
        v = row[c]
        m0 = v if v > m0 else m0
        c += 1
    top = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    return np.float64(top)


@njit(**INLINE)
def _gather_row(logits, batch_major, fmt, t, n, used, class_of_column, lse, compact, row, row32, half):
    """Frame t of item n: ``lse[t, n]`` and ``compact[t, n, :]`` (zeros on an unused frame)."""
    if not used:
        lse[t, n] = 0.0
        for j in range(compact.shape[2]):
            compact[t, n, j] = 0.0
        return
    values = _readable_row(unmanaged(logits)[n, t] if batch_major else unmanaged(logits)[t, n], fmt, half)
    log_norm = _log_sum_exp(values, row, row32)
    lse[t, n] = log_norm
    for j in range(compact.shape[2]):
        c = class_of_column[n, j]
        compact[t, n, j] = np.float64(values[c]) - log_norm if c >= 0 else -np.inf


@njit(**INLINE)
def _gradient_row(logits, batch_major, fmt, t, n, used, factor, lse, posteriors, class_of_column, target, half):
    """Frame t of item n's gradient into ``target`` (C,): the softmax times ``factor``,
    written once (float32 output: exps in float32, see :func:`.vexp32_shifted`), then the
    classes the item uses, plus their posteriors times ``factor``, in float64; zeros on an
    unused frame or for ``factor == 0``."""
    if not used or factor == 0.0:
        for c in range(target.shape[0]):
            target[c] = 0.0
        return
    values = _readable_row(unmanaged(logits)[n, t] if batch_major else unmanaged(logits)[t, n], fmt, half)
    _scaled_softmax(values, lse[t, n], factor, target)
    for j in range(class_of_column.shape[1]):  # the posteriors (minus, as the core's exact gradient) of each used class
        c = class_of_column[n, j]
        if c >= 0:
            target[c] = np.float64(target[c]) + factor * np.float64(posteriors[t, n, j])


@njit(**HOT)
def _gather_frames(frames, cancel, logits, batch_major, fmt, input_lengths, class_of_column, lse, compact):
    """:func:`gather_log_probs` over the frame indices ``frames``."""
    size, classes = compact.shape[1], logits.shape[2]
    scratch = np.empty(classes)
    scratch32 = np.empty((2, classes), dtype=np.float32)
    row, row32, half = unmanaged(scratch), unmanaged(scratch32)[0], unmanaged(scratch32)[1]
    for i in range(frames.shape[0]):
        if is_set(cancel):
            break
        t = frames[i]
        for n in range(size):
            _gather_row(logits, batch_major, fmt, t, n, t < input_lengths[n], class_of_column, lse, compact, row, row32, half)
    keep_alive(scratch, scratch32)


@njit(**HOT)
def _gradient_frames(frames, cancel, logits, batch_major, fmt, lse, posteriors, class_of_column, input_lengths, scale,
                     grad, grad_batch_major):
    """:func:`logit_gradient` over the frame indices ``frames`` (see :func:`_gradient_row`)."""
    size, classes = lse.shape[1], logits.shape[2]
    scratch32 = np.empty(classes, dtype=np.float32)
    half = unmanaged(scratch32)
    out = unmanaged(grad)
    for i in range(frames.shape[0]):
        if is_set(cancel):
            break
        t = frames[i]
        for n in range(size):
            target = out[n, t] if grad_batch_major else out[t, n]
            _gradient_row(logits, batch_major, fmt, t, n, t < input_lengths[n], scale[n], lse, posteriors, class_of_column,
                          target, half)
    keep_alive(scratch32)


def _frame_costs(shape):
    frames, size, classes = shape
    return np.full(frames, ROW_NS * size * classes)


def _worth_openmp(shape) -> bool:
    """Whether a pass over frames may run on Numba's OpenMP threads: not under
    ``SERIAL_COST``, which runs on the calling thread alone, as on ctckit's pool (docs'
    passes take 20-50 us; waking OpenMP's threads next to busy peers cost more than that)."""
    frames, size, classes = shape
    return ROW_NS * frames * size * classes > pool.SERIAL_COST


def frame_rows(logits):
    """``(rows, batch_major)``: (T, N, C) logits as a C-contiguous array the kernels index
    by row: ``logits`` itself (``rows[t, n]``), the (N, T, C) array it is a transposed view
    of (``rows[n, t]``, batch-first models: no copy), or a contiguous copy. On a strided
    row Numba's code does not vectorise (6x slower)."""
    if logits.flags.c_contiguous:
        return logits, False
    batch_first = logits.transpose(1, 0, 2)
    if batch_first.flags.c_contiguous:
        return batch_first, True
    return np.ascontiguousarray(logits), False


def gradient_output(shape, batch_major, dtype, out=None):
    """The array a logit gradient of (T, N, C) ``shape`` is written into: ``out`` after
    checking it, or a new one; C-contiguous, laid out (N, T, C) if ``batch_major``."""
    frames, size, classes = shape
    layout = (size, frames, classes) if batch_major else (frames, size, classes)
    if out is None:
        return buffers.empty(layout, dtype)
    if out.shape != layout or out.dtype != np.dtype(dtype) or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous {np.dtype(dtype)} array of shape {layout}")
    return out


def gather_log_probs(logits, fmt, input_lengths, class_of_column):
    """``(lse, compact)``: ``lse[t, n]`` (float64 (T, N)) and the used columns of the
    log-softmax, ``compact[t, n, j] = x[t, n, class_of_column[n, j]] - lse[t, n]`` (float64
    (T, N, K), ``-inf`` past an item's columns); zeros on frames past an item's length.
    ``logits``: (T, N, C), any strides (see :func:`frame_rows`)."""
    frames, size, classes = logits.shape
    rows, batch_major = frame_rows(logits)
    lse = np.empty((frames, size))
    compact = np.empty((frames, size, class_of_column.shape[1]))
    arguments = (rows, batch_major, fmt, input_lengths, class_of_column, lse, compact)
    pool.run_kernel(_gather_frames, np.arange(frames), arguments, _frame_costs(logits.shape), _worth_openmp(logits.shape))
    return lse, compact


def logit_gradient(logits, fmt, lse, posteriors, class_of_column, input_lengths, scale, out_dtype, time_major=False,
                   out=None):
    """The gradient of ``sum_n scale[n] loss_n`` w.r.t. the logits, (T, N, C) in
    ``out_dtype``: ``scale[n] * (exp(x - lse) + posteriors)`` with ``posteriors`` the core's
    exact gradient w.r.t. the compact log-probs (minus the occupation of each column's
    class); zero on frames past an item's length and for items with ``scale[n] == 0``. For
    batch-first logits (see :func:`frame_rows`) it is a (T, N, C) view of a batch-first
    array, as they are, unless ``time_major`` asks for a C-contiguous (T, N, C) array (what
    a compiled graph's operator must return whatever its input's strides). ``out``: the
    C-contiguous array to write it into (shape and dtype as it would be made), if any."""
    frames = logits.shape[0]
    rows, batch_major = frame_rows(logits)
    grad_batch_major = batch_major and not time_major
    grad = gradient_output(logits.shape, grad_batch_major, out_dtype, out)
    arguments = (rows, batch_major, fmt, lse, posteriors, class_of_column, input_lengths, scale, grad, grad_batch_major)
    pool.run_kernel(_gradient_frames, np.arange(frames), arguments, _frame_costs(logits.shape), _worth_openmp(logits.shape))
    return grad.transpose(1, 0, 2) if grad_batch_major else grad

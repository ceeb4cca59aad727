"""The check of a batch's lengths and target labels, as one compiled pass.

:func:`ctckit._inputs.check_values` calls it before any other kernel and turns what it
reports into an error message. It replaces a dozen NumPy operations (and their
temporaries) per call: on small batches those cost more than the loss itself. It reads
only inside its arrays: a target is read after its item's offset and length are known to
lie within ``targets``.
"""


from .config import NJIT
from .disk_cache import njit

VALID = 0
INPUT_LENGTH_NEGATIVE = 1
INPUT_LENGTH_TOO_LONG = 2
TARGET_LENGTH_NEGATIVE = 3
TARGET_LENGTH_TOO_LONG = 4
TARGET_TOTAL_MISMATCH = 5
TARGET_OUT_OF_RANGE = 6


@njit(**NJIT)
def first_invalid(targets, input_lengths, target_lengths, frames, classes, blank, width, offsets):
    """Fill ``offsets`` and return ``(problem, n, k)``, the first problem in the order of the
    checks: every input length in ``[0, frames]``, every target length ``>= 0`` (and
    ``<= width`` for padded targets), lengths summing to ``len(targets)`` for concatenated
    ones, then each used label in ``[0, classes)`` and not ``blank`` (item n, position k).

    ``targets`` 1-D int64: padded targets flattened (``width`` = S, item n's labels from
    ``n * S``), or concatenated ones (``width`` = -1, item n's from the sum of the lengths
    before it). ``problem`` is ``VALID`` (0) when there is none.
    """
    size = input_lengths.shape[0]
    for n in range(size):
        if input_lengths[n] < 0:
            return INPUT_LENGTH_NEGATIVE, n, 0
    for n in range(size):
        if input_lengths[n] > frames:
            return INPUT_LENGTH_TOO_LONG, n, 0
    for n in range(size):
        if target_lengths[n] < 0:
            return TARGET_LENGTH_NEGATIVE, n, 0
    available = targets.shape[0]
    if width >= 0:
        for n in range(size):
            if target_lengths[n] > width:
                return TARGET_LENGTH_TOO_LONG, n, 0
            offsets[n] = n * width
    else:
        total = 0
        for n in range(size):
            if target_lengths[n] > available:  # then the total cannot match; no overflow below
                return TARGET_TOTAL_MISMATCH, n, 0
            offsets[n] = total
            total += target_lengths[n]
        if total != available:
            return TARGET_TOTAL_MISMATCH, size, 0
    for n in range(size):
        start = offsets[n]
        for k in range(target_lengths[n]):
            label = targets[start + k]
            if label < 0 or label >= classes or label == blank:
                return TARGET_OUT_OF_RANGE, n, k
    return VALID, 0, 0


"""The index arrays of a validated batch, as the kernels take them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    """Validated, kernel-ready index arrays (all int64, C-contiguous, ctckit's own copies:
    a caller that changes its arrays later, from another thread say, cannot change what
    was checked).

    Item ``n`` has ``input_lengths[n]`` frames and the labels
    ``targets[offsets[n] : offsets[n] + target_lengths[n]]``.
    """

    targets: np.ndarray
    offsets: np.ndarray
    input_lengths: np.ndarray
    target_lengths: np.ndarray

"""Results are bitwise identical across runs and thread counts."""

import numpy as np

import ctckit
import ctckit.numpy as cn
from cases import random_case


def test_bitwise_identical_at_1_and_2_threads():
    rng = np.random.default_rng(3)
    case = random_case(rng, frames=120, batch=9, classes=20, dtype=np.float32, infeasible=0.1)
    args = (case.log_probs, case.padded, case.input_lengths, case.target_lengths, case.blank, "mean", True)
    results = []
    before = ctckit.get_num_threads()
    try:
        for threads in (1, 2, 1, 2):
            ctckit.set_num_threads(threads)
            results.append(cn.ctc_loss_and_grad(*args) + (cn.ctc_loss(*args),))
    finally:
        ctckit.set_num_threads(before)
    for loss, grad, loss_only in results[1:]:
        assert loss.tobytes() == results[0][0].tobytes()
        assert grad.tobytes() == results[0][1].tobytes()
        assert loss_only.tobytes() == results[0][2].tobytes()

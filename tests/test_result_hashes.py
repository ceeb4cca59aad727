"""ctckit's results on the benchmark's shapes are the stored ones, bit for bit on the CPU
they were stored on (see ``result_hashes.py``; store them again only for a change meant to
alter results, and say why in the commit)."""

import json

import pytest

from result_hashes import STORE, fingerprints, host_cpu

STORED = json.loads(STORE.read_text())


@pytest.fixture(scope="module")
def current():
    return fingerprints()


@pytest.mark.parametrize("case", sorted(STORED["cases"]))
def test_results_match_the_stored_fingerprints(case, current):
    stored, now = STORED["cases"][case], current[case]
    assert now["infinite"] == stored["infinite"]
    assert now["loss_sum"] == pytest.approx(stored["loss_sum"], rel=1e-9)
    if host_cpu() == STORED["cpu"]:
        assert now == stored
    else:  # other vector instructions may round differently: the sums above still hold
        assert set(now) == set(stored)

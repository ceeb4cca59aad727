"""ctckit in a real process: forked children, fork pools, DataLoader workers, many threads,
Ctrl-C on a long call. Each scenario runs in a subprocess with a timeout, so that a killed
child or a hang fails the test instead of taking the test run down."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import ctckit
import ctckit.numpy as cn
from cases import random_case

PRELUDE = """
import os, sys, time, hashlib
import numpy as np
import ctckit, ctckit.numpy as cn

def batch(seed, frames=120, size=24, classes=30, longest=40):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((frames, size, classes))
    log_probs = (logits - np.logaddexp.reduce(logits, axis=2, keepdims=True)).astype(np.float32)
    lengths = rng.integers(1, longest + 1, size)
    targets = rng.integers(1, classes, (size, longest))
    input_lengths = rng.integers(2 * longest + 1, frames + 1, size)
    return log_probs, targets, input_lengths, lengths

def work(seed):
    '''Loss, gradient, alignment and decoding of one batch, as a hash to compare.'''
    log_probs, targets, input_lengths, lengths = batch(seed)
    loss, grad = cn.ctc_loss_and_grad(log_probs, targets, input_lengths, lengths, reduction="none")
    alignments, scores = cn.forced_align(log_probs, targets, input_lengths, lengths)
    posteriors = cn.ctc_posteriors(log_probs, targets, input_lengths, lengths)
    hyps = cn.beam_search(log_probs, input_lengths, beam_width=8)
    parts = [loss, grad, cn.ctc_loss(log_probs, targets, input_lengths, lengths), alignments, scores, posteriors]
    return hashlib.sha256(b"".join(p.tobytes() for p in parts) + repr(hyps).encode()).hexdigest()
"""


def run_script(body: str, timeout: float = 240, **env) -> str:
    """Run PRELUDE + body in a fresh interpreter; return its stdout (it must exit 0)."""
    code = PRELUDE + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **env})
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_the_parent_uses_openmp_and_the_child_ctckits_own_threads():
    """What makes the fork tests below meaningful: the parent's calls ran on Numba's OpenMP
    layer (which kills a forked child that uses it after its parent did), and the child's
    run on ctckit's own threads instead."""
    out = run_script("""
        import threading, numba
        work(0)
        print(numba.threading_layer())
        pid = os.fork()
        if pid == 0:
            work(0)
            names = [t.name for t in threading.enumerate() if t.name.startswith("ctckit-")]
            os._exit(0 if names else 3)
        print(os.waitpid(pid, 0)[1])
    """, CTCKIT_NUM_THREADS="2")
    assert out.split() == ["omp", "0"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_computes_what_its_parent_does():
    out = run_script("""
        parent = work(0)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the parent's pool threads did not survive the fork
            os.write(write, work(0).encode())
            os._exit(0)
        os.close(write)  # a child that dies closes its end: the read below returns
        _, status = os.waitpid(pid, 0)
        child = os.read(read, 100).decode()
        print(status, parent == child, len(child))
    """, CTCKIT_NUM_THREADS="2")
    assert out.split() == ["0", "True", "64"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_fork_pool_map_returns_the_parents_results():
    out = run_script("""
        import multiprocessing
        expected = [work(seed) for seed in range(4)]
        with multiprocessing.get_context("fork").Pool(2) as pool:
            got = pool.map(work, range(4), chunksize=1)
        print(got == expected)
    """, CTCKIT_NUM_THREADS="2")
    assert out.strip() == "True"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_fork_dataloader_workers_return_the_parents_results():
    out = run_script("""
        import torch
        import ctckit.torch as ct
        from torch.utils.data import DataLoader, Dataset

        class Losses(Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, seed):
                log_probs, targets, input_lengths, lengths = batch(seed)
                x = torch.from_numpy(log_probs).requires_grad_()
                loss = ct.ctc_loss(x, torch.from_numpy(targets), torch.from_numpy(input_lengths), torch.from_numpy(lengths))
                loss.backward()
                return work(seed) + hashlib.sha256(loss.detach().numpy().tobytes() + x.grad.numpy().tobytes()).hexdigest()

        expected = [Losses()[seed] for seed in range(4)]
        loader = DataLoader(Losses(), batch_size=None, num_workers=2, multiprocessing_context="fork")
        print(list(loader) == expected)
    """, CTCKIT_NUM_THREADS="2")
    assert out.strip() == "True"


def test_eight_threads_calling_at_once_get_the_serial_results():
    cases = [random_case(np.random.default_rng(seed), frames=80, batch=12, classes=20, dtype=np.float32, infeasible=0.1)
             for seed in range(8)]

    def compute(case):
        args = (case.log_probs, case.padded, case.input_lengths, case.target_lengths, case.blank, "none", True)
        loss, grad = cn.ctc_loss_and_grad(*args)
        alignment_args = (case.log_probs, case.padded, case.input_lengths, case.target_lengths, case.blank)
        return loss.tobytes() + grad.tobytes() + cn.ctc_loss(*args).tobytes() + cn.ctc_posteriors(*alignment_args).tobytes()

    expected = [compute(case) for case in cases]
    results = [[] for _ in cases]
    errors = []
    start = threading.Barrier(len(cases))

    def caller(i):
        try:
            start.wait()
            for _ in range(5):
                results[i].append(compute(cases[i]))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert all(not thread.is_alive() for thread in threads)
    for i, case_results in enumerate(results):
        assert case_results == [expected[i]] * 5


@pytest.mark.parametrize("threads", [1, 3])
def test_results_are_bitwise_identical_whatever_the_thread_count(threads):
    case = random_case(np.random.default_rng(7), frames=150, batch=20, classes=24, dtype=np.float32, infeasible=0.1)
    args = (case.log_probs, case.padded, case.input_lengths, case.target_lengths, case.blank, "mean", True)
    before = ctckit.get_num_threads()
    try:
        ctckit.set_num_threads(2)
        expected = cn.ctc_loss_and_grad(*args) + (cn.ctc_loss(*args),)
        ctckit.set_num_threads(threads)
        got = cn.ctc_loss_and_grad(*args) + (cn.ctc_loss(*args),)
    finally:
        ctckit.set_num_threads(before)
    assert [a.tobytes() for a in got] == [a.tobytes() for a in expected]


def test_set_num_threads_checks_its_argument():
    with pytest.raises(TypeError, match="threads must be an int"):
        ctckit.set_num_threads(2.0)
    with pytest.raises(TypeError, match="threads must be an int"):
        ctckit.set_num_threads(True)
    with pytest.raises(ValueError, match=r"threads must be in \[1, 256\], got 0"):
        ctckit.set_num_threads(0)
    with pytest.raises(ValueError, match=r"threads must be in \[1, 256\], got 100000"):
        ctckit.set_num_threads(100000)



@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("chunks", ["all short", "some long"])
def test_a_call_never_runs_on_more_threads_than_set(threads, chunks, monkeypatch):
    # ctckit's pool cuts a long call into chunks that shrink towards the end. The calling
    # thread used to take the short tail chunks while `threads` workers ran the long ones:
    # set_num_threads(1) ran on two threads (a 100 x 640 x 100 step: 1.9 CPU seconds a
    # second). Each chunk here sleeps, so any chunks allowed to overlap do.
    from ctckit._core import pool

    monkeypatch.setattr(pool, "_openmp_allowed", lambda threads: False)
    if chunks == "all short":  # the calling thread takes chunks too
        costs = np.full(40, 0.4e6)
    else:  # some chunks too long for the calling thread: the workers alone
        costs = np.full(40, 3e6)
        costs[0] = 2 * pool.CALLER_CHUNK_COST
    running, most, lock, ran = [0], [0], threading.Lock(), []

    def task(items, cancel):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
            ran.extend(items.tolist())

    before = ctckit.get_num_threads()
    ctckit.set_num_threads(threads)
    try:
        pool.run(task, costs)
    finally:
        ctckit.set_num_threads(before)
    assert sorted(ran) == list(range(40))
    assert most[0] == threads  # as many as allowed, never more


INTERRUPTED = """
import signal
# Python's own Ctrl-C handler, even where the suite was started with SIGINT ignored (a
# background job of a shell without job control), which every child inherits
signal.signal(signal.SIGINT, signal.default_int_handler)
{setup}
{warmup}  # compiles, or loads the kernels from the cache, before the clock starts
print("ready", flush=True)
try:
    {call}
    print("finished", flush=True)
except KeyboardInterrupt:
    print("interrupted", time.monotonic(), flush=True)
    cpu = time.process_time()
    time.sleep(0.5)
    print("busy", time.process_time() - cpu, flush=True)  # CPU seconds the stopped kernels still used
    {check}
"""


def interrupt(setup: str, warmup: str, call: str, check: str = "pass", wait: float = 1.0) -> tuple[float, float, str]:
    """Start ``call`` in a child, send it SIGINT ``wait`` s later; return the seconds from
    the signal to the child's KeyboardInterrupt, the CPU seconds the child used in the half
    second after it, and the child's output."""
    code = PRELUDE + INTERRUPTED.format(setup=textwrap.dedent(setup), warmup=warmup, call=call, check=check)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "CTCKIT_NUM_THREADS": "2"})
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        time.sleep(wait)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert "interrupted" in lines, f"stdout: {out}\nstderr: {err}"
    return float(lines["interrupted"]) - sent, float(lines["busy"]), out


def test_ctrl_c_stops_a_long_single_item_loss_within_half_a_second():
    # One item of T = 60000 frames and L = 20000 labels, about 2.4e9 cells: seconds in one kernel.
    latency, busy, _ = interrupt(
        setup="""
            rng = np.random.default_rng(0)
            frames, length, classes = 60000, 20000, 16
            log_probs = np.log(rng.dirichlet(np.ones(classes), size=(frames, 1))).astype(np.float32)
            targets = rng.integers(1, classes, (1, length))
        """,
        warmup="cn.ctc_loss(log_probs[:3000], targets[:, :1000], [3000], [1000])",
        call="cn.ctc_loss(log_probs, targets, [frames], [length])",
    )
    assert latency < 0.5
    assert busy < 0.2  # the worker's kernel stopped too, not only the calling thread


def test_ctrl_c_stops_a_long_batch_and_the_next_call_works():
    latency, busy, out = interrupt(
        setup="""
            frames, size = 6000, 96  # about 1.7e9 cells, seconds of work with the gradient
            log_probs, targets, input_lengths, lengths = batch(1, frames=frames, size=size, classes=20, longest=1500)
            input_lengths[:] = frames
            lengths[:2] = 10, 700  # the warm-up compiles both rounds the batch needs: no compile is interrupted
            small = (np.ascontiguousarray(log_probs[:, :2]), targets[:2], input_lengths[:2], lengths[:2])
        """,
        warmup="expected = cn.ctc_loss_and_grad(*small)",
        call="cn.ctc_loss_and_grad(log_probs, targets, input_lengths, lengths)",
        check="""again = cn.ctc_loss_and_grad(*small)
    print("again", all(a.tobytes() == b.tobytes() for a, b in zip(again, expected)))""",
    )
    assert latency < 0.5
    assert busy < 0.2
    assert "again True" in out


def test_ctrl_c_stops_a_wide_beam_search_within_half_a_second():
    latency, busy, _ = interrupt(
        setup="""
            rng = np.random.default_rng(0)
            log_probs = np.log(rng.dirichlet(np.ones(40), size=(3000, 2))).astype(np.float32)
        """,
        warmup="cn.beam_search(log_probs[:20], beam_width=64, token_min_log_prob=-np.inf, beam_prune_log_prob=-np.inf)",
        call="cn.beam_search(log_probs, beam_width=2048, token_min_log_prob=-np.inf, beam_prune_log_prob=-np.inf)",
    )
    assert latency < 0.5
    assert busy < 0.2


def test_ctrl_c_stops_a_long_decode_with_the_word_decoder_and_the_next_call_works():
    # 60,000 frames at beam 64 take seconds; the search returns to Python between chunks of frames.
    latency, busy, out = interrupt(
        setup="""
            from ctckit.decoder import build_ctcdecoder
            labels = ["", " "] + list("abcdefghijklmnopqrstuvwxyz")
            logits = np.log(np.random.default_rng(0).dirichlet(np.ones(len(labels)) * 0.3, size=60000))
            decoder = build_ctcdecoder(labels)
        """,
        warmup="expected = decoder.decode(logits[:500], beam_width=64)",
        call="decoder.decode(logits, beam_width=64)",
        check="""print("again", decoder.decode(logits[:500], beam_width=64) == expected)""",
    )
    assert latency < 0.5
    assert busy < 0.2
    assert "again True" in out

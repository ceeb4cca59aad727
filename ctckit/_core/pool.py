"""ctckit's own pool of threads: it runs the Numba kernels over the items of a batch.

The kernels are serial ``nogil`` functions over a list of items (the items of a batch, or
the frames of the gradient's scatter). This module cuts the list into chunks and runs them
on a few Python threads, which release the GIL inside the kernels, and on the calling
thread. Numba's ``parallel=True`` alone is not safe for a library in a user's process:

- **fork**: Numba's OpenMP layer kills a child made by ``os.fork`` (a fork ``Pool``, a
  ``DataLoader`` worker) that runs a parallel kernel after its parent did ("fork() called
  from a process already using GNU OpenMP", even with one thread), and its TBB layer needs
  a library that has no wheel on several platforms and that a virtual environment does not
  put on the loader's path. Threads do not survive a fork: the child starts its own pool
  when it first needs one (``os.register_at_fork``).
- **Ctrl-C**: Python handles a signal only between bytecodes of the main thread, so a
  kernel that holds the calling thread for seconds answers Ctrl-C seconds late. Here the
  calling thread runs chunks only when every chunk of the call is estimated to be short
  (``CALLER_CHUNK_COST``); otherwise it waits on a lock, which a signal interrupts, while
  the workers run them. On ``KeyboardInterrupt`` (or
  any exception) it raises the job's cancel flag, which the kernels read between items and
  every few frames (:func:`ctckit._core.intrinsics.is_set`), and re-raises.
- **threads**: any number of Python threads may call ctckit at once; their jobs share the
  pool. One call never runs on more than ``get_num_threads()`` threads at a time, the
  calling thread included.

Short calls (under ``OPENMP_COST``) still run on Numba's OpenMP layer where that is safe
(not in a forked child; see :func:`_openmp_allowed`): one ``parallel=True`` loop over the
whole batch that calls the same serial kernel for each item (:func:`run_kernel`,
:mod:`.addresses`). Next to torch that layer shares torch's OpenMP threads instead of competing
with them for the cores, and a short call answers Ctrl-C soon enough anyway.

Every item is computed by the same code whichever thread runs it, and writes only its own
slice of the outputs, so results are bitwise identical whatever the thread count.

Costs are estimates in nanoseconds of one core (a kernel's cells times a few ns); they
only decide how to split the work, never what is computed.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable

import numpy as np

from .._threads import get_num_threads
from .addresses import run_openmp
from .chunks import plan_chunks

SERIAL_COST = 300_000
"""Work estimated below this (ns) runs on the calling thread alone: handing a chunk to a
worker and back costs 50-80 us (Python, two thread wake-ups, two hand-overs of the GIL),
more than it saves on a smaller batch (measured on docs: 0.15 ms alone, 0.17 ms shared)."""
CALLER_CHUNK_COST = 20_000_000
"""The calling thread takes part only in calls whose chunks are all estimated below this
(20 ms), so that it answers Ctrl-C within a fraction of a second; a call with a longer
chunk runs on the workers alone."""
CHUNK_COST = 250_000
"""Work is cut in one chunk per thread, or for longer work in chunks that shrink as the
work left does, down to about this many ns: each chunk costs a few microseconds of Python
and a hand-over of the GIL, and small last chunks let the threads finish together."""
OPENMP_COST = 50_000_000
"""Work estimated below this (50 ms of one core) runs on Numba's OpenMP threads where that
is safe, which answers Ctrl-C within about 25 ms on two threads. Next to torch, Numba's
OpenMP layer shares torch's OpenMP threads, which spin for milliseconds after each torch
operation: ctckit's own threads had to compete with them for the cores, and a loss call
right after a torch operation took 1.5-2x as long (bpe1k's forward+backward 6.1-6.6 ->
10.2-12.2 ms). Longer work goes to ctckit's threads, for Ctrl-C."""

Task = Callable[[np.ndarray, np.ndarray], None]
"""``task(items, cancel)``: run the kernel over ``items`` (int64 indices), stopping early
once ``cancel[0]`` is nonzero."""


_state_lock = threading.Lock()
_workers: list[threading.Thread] = []
_jobs: queue.SimpleQueue = queue.SimpleQueue()


_forked = False
"""Set in a forked child: Numba's OpenMP layer kills a child that runs a parallel kernel
after its parent did (GNU OpenMP's threads do not survive a fork), so a child never uses it."""
_openmp_checked = False


def _openmp_allowed(threads: int) -> bool:
    """Whether a short call may run on Numba's threading layer: not in a forked child, with
    more than one thread, and only on a layer that several Python threads may use at once
    (OpenMP or TBB; Numba's fallback, workqueue, aborts the process when two threads launch
    kernels together)."""
    global _openmp_checked
    if _forked or threads < 2:
        return False
    if not _openmp_checked:
        with _state_lock:
            if not _openmp_checked:
                _openmp_checked = _load_openmp() or None
    if _openmp_checked is None:
        return False
    wanted = min(threads, _numba_threads)
    if _layer.get_num_threads() != wanted:  # per calling thread, as Numba keeps it
        _layer.set_num_threads(wanted)
    return True


class _Layer:
    """Numba's threading layer through its native entry points, bound once it is loaded:
    ``numba.get_num_threads`` and ``numba.set_parallel_chunksize`` take a process-wide lock
    and check the layer at every call (four of them, about 10 us, in each short call)."""

    def __init__(self, parallel):
        self.get_num_threads = parallel._get_num_threads
        self.set_num_threads = parallel._set_num_threads
        self.set_chunksize = parallel._set_parallel_chunksize


_layer: _Layer | None = None
_numba_threads = 1


def _load_openmp() -> bool:
    """Load the layer as Numba's first parallel launch would, without compiling a kernel
    (0.24 s); whether it is one that ctckit may use (see :func:`_openmp_allowed`)."""
    global _layer, _numba_threads
    import numba

    try:
        from numba.np.ufunc import parallel

        parallel._launch_threads()
        layer = numba.threading_layer()
        bound = _Layer(parallel)
    except Exception:  # none loadable, or another Numba: ctckit's own threads always work
        return False
    _layer, _numba_threads = bound, numba.config.NUMBA_NUM_THREADS
    # one Numba thread (NUMBA_NUM_THREADS=1): the layer would add its launch for nothing
    return layer in ("omp", "tbb") and _numba_threads > 1


def _reset_after_fork() -> None:
    """In a forked child: the workers did not survive the fork, and a lock may have been
    held by one of them; start afresh (the configured thread count is kept), without
    Numba's OpenMP layer."""
    global _state_lock, _workers, _jobs, _forked
    _forked = True
    _state_lock = threading.Lock()
    _workers = []
    _jobs = queue.SimpleQueue()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _work_forever(jobs: queue.SimpleQueue) -> None:
    while True:
        jobs.get().work()


def _start_workers(count: int) -> None:
    if len(_workers) >= count:
        return
    with _state_lock:
        while len(_workers) < count:
            worker = threading.Thread(target=_work_forever, args=(_jobs,), name=f"ctckit-{len(_workers)}", daemon=True)
            worker.start()
            _workers.append(worker)


class _Job:
    """The chunks of one call, taken in order (they shrink towards the end)."""

    def __init__(self, task: Task, chunks: list):
        self.task = task
        self.chunks = chunks
        self.front, self.back = 0, len(chunks)
        self.unfinished = len(chunks)
        self.lock = threading.Lock()
        self.finished = threading.Lock()
        self.finished.acquire()
        self.cancel = np.zeros(1, dtype=np.int64)
        self.error: BaseException | None = None

    def _claim(self):
        with self.lock:
            if self.cancel[0]:
                self._drop_unclaimed()
                return None
            if self.front >= self.back:
                return None
            self.front += 1
            return self.chunks[self.front - 1]

    def _drop_unclaimed(self) -> None:
        """Count the chunks nobody took as finished (the job is cancelled); under the lock."""
        dropped = self.back - self.front
        self.front = self.back
        self._finish(dropped)

    def _finish(self, count: int) -> None:
        """``count`` more chunks are done; under the lock."""
        if count:
            self.unfinished -= count
            if self.unfinished == 0:
                self.finished.release()

    def wait(self) -> None:
        """Return when every chunk is done, in a wait that a signal interrupts."""
        while not self.finished.acquire(timeout=0.1):
            pass

    def work(self) -> None:
        while (chunk := self._claim()) is not None:
            try:
                self.task(chunk, self.cancel)
            except BaseException as error:  # kept for the caller, which re-raises it
                if self.error is None:
                    self.error = error
                self.cancel[0] = 1
            finally:
                with self.lock:
                    self._finish(1)

    def stop(self) -> None:
        """Cancel: the kernels stop at their next check, nobody takes another chunk."""
        self.cancel[0] = 1
        with self.lock:
            self._drop_unclaimed()


def _one_at_a_time(together: Callable[[], None]) -> None:
    """Run an OpenMP loop with its ``prange`` handing out one iteration at a time (dynamic
    scheduling), not Numba's static shares: a thread that another runtime's spinning
    workers preempt (torch's OpenMP pool, XLA's) then holds up one item, not half the
    batch for a whole time slice (bpe5k's fused step: 67 ms with static halves next to
    torch and XLA calls, 26 ms alone). Which thread takes an item never changes its bits."""
    chunk = _layer.set_chunksize(1)  # the calling thread's setting; returns the previous one
    try:
        together()
    finally:
        _layer.set_chunksize(chunk)


def run_kernel(kernel, items: np.ndarray, arguments: tuple, costs: np.ndarray, openmp: bool = True) -> None:
    """:func:`run` for a serial Numba kernel ``kernel(chunk, cancel, *arguments)`` over the
    int64 indices ``items`` (items or frames; ``costs[i]`` the estimated ns of
    ``items[i]``): chunks of ``items`` on ctckit's threads, or, for a short call, every
    index at once on Numba's OpenMP threads (:func:`.addresses.run_openmp`; not with
    ``openmp=False``, for passes too short to wake those threads)."""
    items = np.ascontiguousarray(items, dtype=np.int64)
    run(lambda chunk, cancel: kernel(items[chunk], cancel, *arguments), costs,
        (lambda: run_openmp(kernel, items, arguments)) if openmp else None)


def run(task: Task, costs: np.ndarray, together: Callable[[], None] | None = None) -> None:
    """Run ``task`` over every item (``len(costs)`` of them, ``costs[n]`` the estimated ns
    of item n), in parallel; return when all are done. Raises what a task raised, and
    ``KeyboardInterrupt`` (after cancelling the rest) when it arrives meanwhile.

    ``together()``, when given, runs every item at once on Numba's OpenMP threads: what a
    short call (under ``OPENMP_COST``) uses where it may (:func:`_openmp_allowed`)."""
    size = costs.shape[0]
    if size == 0:
        return
    threads = get_num_threads()
    total = float(costs.sum())
    if together is not None and total <= OPENMP_COST and _openmp_allowed(threads):
        _one_at_a_time(together)
        return
    if total <= SERIAL_COST or (threads == 1 or size == 1) and total <= CALLER_CHUNK_COST:
        task(np.arange(size, dtype=np.int64), np.zeros(1, dtype=np.int64))  # short: the calling thread alone
        return
    bounds, chunk_costs = plan_chunks(costs, threads, CHUNK_COST)
    items = np.arange(size, dtype=np.int64)
    chunks = [items[bounds[i]:bounds[i + 1]] for i in range(bounds.shape[0] - 1)]
    job = _Job(task, chunks)
    # The calling thread works only when every chunk is short (it must answer Ctrl-C);
    # otherwise it waits while ``threads`` workers run the chunks: never more than
    # ``threads`` at once (a caller that also took the short tail chunks made one more).
    caller_works = bool((chunk_costs <= CALLER_CHUNK_COST).all())
    helpers = min(len(chunks), threads - 1 if caller_works else threads)
    _start_workers(helpers)
    for _ in range(helpers):
        _jobs.put(job)
    try:
        if caller_works:
            job.work()
        job.wait()
    except BaseException:
        job.stop()
        job.finished.acquire(timeout=0.5)  # the kernels stop within milliseconds; do not hang on one that does not
        raise
    if job.error is not None:
        raise job.error

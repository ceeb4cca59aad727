"""Reused gradient buffers (ctckit/_core/buffers.py): never handed out twice while in use,
and a reused buffer's old contents never reach a result."""

import gc
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import ctckit.numpy as cn
from ctckit._core import buffers


@pytest.fixture
def small_buffers(monkeypatch):
    """Reuse from 1 KiB up, with an empty free list before and after."""
    monkeypatch.setattr(buffers, "MIN_BYTES", 1024)
    monkeypatch.setattr(buffers, "KEEP", 2)
    buffers.forget()
    yield
    buffers.forget()


@pytest.mark.parametrize("derive", [
    lambda a: a.transpose(1, 0, 2), lambda a: a[3:], lambda a: a.reshape(-1)[::2], lambda a: a.view(np.int32),
    lambda a: np.asarray(a)[1:][1:],
])
def test_memory_comes_back_only_when_every_view_is_gone(small_buffers, derive):
    a = buffers.empty((64, 8, 16), np.float32)
    assert a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % 64 == 0 and a.shape == (64, 8, 16)
    address = a.ctypes.data
    view = derive(a)
    del a
    gc.collect()
    others = [buffers.empty((64, 8, 16), np.float32) for _ in range(3)]
    assert all(other.ctypes.data != address for other in others)  # the view still uses that memory
    del others, view
    gc.collect()
    assert any(buffers.empty((64, 8, 16), np.float32).ctypes.data == address for _ in range(3))


def test_a_torch_tensor_keeps_its_memory(small_buffers):
    torch = pytest.importorskip("torch")
    tensor = torch.from_numpy(buffers.empty((64, 8, 16), np.float32))
    address = tensor.data_ptr()
    part = tensor[5:]
    del tensor
    gc.collect()
    assert buffers.empty((64, 8, 16), np.float32).ctypes.data != address
    del part
    gc.collect()
    assert any(buffers.empty((64, 8, 16), np.float32).ctypes.data == address for _ in range(3))


def test_at_most_keep_buffers_wait_and_sizes_must_fit(small_buffers):
    arrays = [buffers.empty((1024 * (i + 1),), np.float32) for i in range(5)]
    del arrays
    gc.collect()
    assert len(buffers._free) == 2
    assert sorted(len(b) for b in buffers._free.values())[-1] >= 5 * 4096  # the largest are kept
    big = buffers.empty((10 * 4096,), np.uint8)  # nothing kept is that large: a new buffer
    assert all(big.ctypes.data != b.ctypes.data for b in buffers._free.values())


def test_buffers_past_max_bytes_are_not_kept(small_buffers, monkeypatch):
    monkeypatch.setattr(buffers, "MAX_BYTES", 8192)
    a = buffers.empty((4096,), np.float32)  # 16 KiB: handed out, not kept afterwards
    del a
    gc.collect()
    assert not buffers._free
    b = buffers.empty((1024,), np.float32)
    del b
    gc.collect()
    assert len(buffers._free) == 1


def test_live_arrays_never_overlap_across_threads(small_buffers):
    live, errors = [], []
    lock = threading.Lock()

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(300):
            a = buffers.empty((int(rng.integers(256, 2048)),), np.float64)
            a[:] = seed
            with lock:
                live.append(a)
                if len(live) > 6:
                    live.pop(int(rng.integers(0, len(live))))
            if not np.all(a == seed):
                errors.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes) for a in live)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


@pytest.mark.parametrize("logits_path", [True, False])
def test_a_reused_dirty_buffer_gives_the_same_gradient(small_buffers, logits_path):
    rng = np.random.default_rng(0)
    T, N, C, S = 30, 4, 40, 6
    x = rng.normal(size=(T, N, C)).astype(np.float32)
    targets = rng.integers(1, C, size=(N, S))
    input_lengths, target_lengths = np.array([30, 17, 9, 30]), np.array([6, 5, 3, 1])

    def gradient():
        if logits_path:
            return cn.ctc_loss_and_grad_from_logits(x, targets, input_lengths, target_lengths, reduction="sum")[1]
        log_probs = x - np.log(np.exp(x).sum(-1, keepdims=True))
        return cn.ctc_loss_and_grad(log_probs, targets, input_lengths, target_lengths, reduction="sum")[1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(buffers, "KEEP", 0)
        expected = gradient()  # from np.empty
    for _ in range(3):  # NaN-filled buffers wait in the free list
        dirty = buffers.empty((T, N, C), np.float32)
        dirty.fill(np.nan)
        del dirty
        gc.collect()
        got = gradient()
        np.testing.assert_array_equal(got, expected)
        assert np.all(got[17:, 1] == 0) and np.all(got[9:, 2] == 0)


@pytest.mark.parametrize("setting, expected", [("0", 0), ("5", 5), ("1000", 64), ("-3", 0), ("many", 2), ("", 2)])
def test_the_keep_setting_from_the_environment(setting, expected):
    code = "from ctckit._core import buffers; print(buffers.KEEP)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "CTCKIT_KEEP_BUFFERS": setting}).stdout
    assert int(out) == expected

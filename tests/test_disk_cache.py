"""Numba's on-disk cache shared by processes that compile at the same time
(``ctckit/_core/disk_cache.py``): every ctckit kernel keeps its cache in a
``KeyedCacheFile``; an index entry that names another key's machine code is a miss, not a
wrong kernel; processes that compile different signatures of one kernel at once leave every
signature in the cache, each with its own code."""

import importlib
import os
import pickle
import pkgutil
import subprocess
import sys
import textwrap
import time
import types

import numba

import ctckit._core
from ctckit._core import disk_cache
from ctckit._core.disk_cache import KeyedCacheFile


def _cached_dispatchers():
    """Every Numba kernel with an on-disk cache in ``ctckit._core`` and its sub-packages."""
    found = {}
    for module_info in pkgutil.walk_packages(ctckit._core.__path__, "ctckit._core."):
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            cache_file = getattr(getattr(value, "_cache", None), "_cache_file", None)
            if isinstance(value, numba.core.dispatcher.Dispatcher) and cache_file is not None:
                found[f"{value.py_func.__module__}.{value.py_func.__qualname__}"] = cache_file
    return found


def test_every_cached_kernel_keeps_its_cache_by_key():
    """A kernel made with plain ``numba.njit(cache=True)`` would reopen the race."""
    found = _cached_dispatchers()
    assert len(found) > 40, sorted(found)  # the walk found the kernels (about 60 today)
    plain = sorted(name for name, cache_file in found.items() if not isinstance(cache_file, KeyedCacheFile))
    assert not plain, f"made with numba.njit, not ctckit._core.disk_cache.njit: {plain}"


def test_an_entry_naming_another_keys_code_is_a_miss(tmp_path):
    """What the race left behind: the index sends key B to key A's file (and a file written
    by plain Numba, numbered and without its key, is not trusted either)."""
    cache = KeyedCacheFile(str(tmp_path), "module.kernel-1", source_stamp=("stamp", 1))
    key_a, key_b, key_old = (("float32[::1]",), "cpu"), (("float64[::1]",), "cpu"), (("int64",), "cpu")
    cache.save(key_a, "code for A")
    assert cache.load(key_a) == "code for A"
    assert cache.load(key_b) is None  # not in the index
    name_a = cache.data_name(key_a)
    assert name_a != cache.data_name(key_b) and name_a.startswith("module.kernel-1.")

    old_name = "module.kernel-1.1.nbc"  # Numba's own numbered file, holding only the code
    with open(tmp_path / old_name, "wb") as f:
        f.write(pickle.dumps(("code for", "something else")))
    cache._save_index({key_a: name_a, key_b: name_a, key_old: old_name})
    assert cache.load(key_b) is None
    assert cache.load(key_old) is None
    assert cache.load(key_a) == "code for A"

    cache.save(key_b, "code for B")  # the miss compiles, and the entry is made right
    assert cache.load(key_b) == "code for B" and cache.load(key_a) == "code for A"
    os.remove(tmp_path / cache.data_name(key_b))
    assert cache.load(key_b) is None  # a file removed under the index: a miss, no error


KERNEL_MODULE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("disk_cache", {disk_cache!r})
disk_cache = importlib.util.module_from_spec(spec)
spec.loader.exec_module(disk_cache)

@disk_cache.njit(cache=True)
def combine(a, b):
    return a * 3 + b
"""

ARGUMENTS = """
import numpy as np
def arguments():
    '''Eight signatures of ``combine``: scalars and arrays, contiguous and strided.'''
    f64 = np.arange(12.0).reshape(3, 4)
    return [(1.5, 2.0), (np.float32(1.5), np.float32(2.0)), (7, 5), (1 + 2j, 3j),
            (f64, f64), (f64[:, ::2], f64[:, ::2]), (f64.astype(np.float32), f64.astype(np.float32)),
            (f64.astype(np.float32)[::2], f64.astype(np.float32)[::2])]
"""

COMPILE = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from signatures import arguments
start = float(sys.argv[3])
while time.time() < start:  # every process starts compiling at once
    time.sleep(0.001)
from numba.core import caching
write_index = caching.IndexDataCacheFile._save_index
def write_index_slowly(self, overloads):  # widens the race's window: from reading the index to writing it
    time.sleep(0.2)
    write_index(self, overloads)
caching.IndexDataCacheFile._save_index = write_index_slowly
import kernel
order = arguments()
order = order[int(sys.argv[2]):] + order[:int(sys.argv[2])]
for a, b in order:
    kernel.combine(a, b)
"""

CHECK = """
import sys
import numba
import numpy as np
sys.path.insert(0, sys.argv[1])
from signatures import arguments
import kernel
fresh = numba.njit(cache=False)(kernel.combine.py_func)  # the truth: compiled here, now
for a, b in arguments():
    got, want = kernel.combine(a, b), fresh(a, b)
    assert type(got) is type(want) and np.asarray(got).dtype == np.asarray(want).dtype, (type(a), got, want)
    np.testing.assert_array_equal(got, want)
misses = {str(s): n for s, n in kernel.combine.stats.cache_misses.items() if n}
assert not misses, f"compiled again: {misses}"
assert len(kernel.combine.signatures) == 8, kernel.combine.signatures
print("ok")
"""


def test_processes_compiling_one_kernel_at_once_leave_every_signature_right(tmp_path):
    """Four processes compile eight signatures each, in different orders, from one instant;
    writing the index waits 0.2 s, so saves overlap as on a loaded machine. A fresh process
    then loads every signature without compiling and gets what a fresh compile computes.
    The same kernel made with plain ``numba.njit(cache=True)`` fails here: a float32 call
    returned a complex number, another run "can't unbox array"."""
    disk_cache = os.path.join(os.path.dirname(ctckit._core.__file__), "disk_cache.py")
    (tmp_path / "kernel.py").write_text(textwrap.dedent(KERNEL_MODULE.format(disk_cache=disk_cache)))
    (tmp_path / "signatures.py").write_text(ARGUMENTS)
    (tmp_path / "compile.py").write_text(COMPILE)
    (tmp_path / "check.py").write_text(CHECK)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": ""}
    start = time.time() + 3.0  # after every process has imported NumPy and Numba
    workers = [subprocess.Popen([sys.executable, str(tmp_path / "compile.py"), str(tmp_path), str(shift),
                                 repr(start)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for shift in (0, 2, 4, 6)]
    for worker in workers:
        output, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, output
    check = subprocess.run([sys.executable, str(tmp_path / "check.py"), str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and check.stdout.strip() == "ok", check.stdout + check.stderr
    data_files = [name for _, _, names in os.walk(tmp_path / "cache") for name in names if name.endswith(".nbc")]
    assert len(data_files) == 8, data_files  # one file a signature


def test_numba_still_has_the_methods_the_keyed_cache_uses():
    """``KeyedCacheFile`` overrides ``save`` and ``load`` on Numba's private helpers."""
    for name in ("_load_index", "_save_index", "_load_data", "_save_data", "_data_name_pattern", "_cache_path"):
        assert hasattr(KeyedCacheFile(".", "x", None), name), name


def test_an_edited_kernels_old_files_are_removed_not_piled_up(tmp_path):
    """A new source stamp (the file edited, ctckit upgraded) starts a new index: the kernel's
    older data files go (Numba's numbered files were overwritten; keyed ones would pile up),
    other kernels' stay."""
    old = KeyedCacheFile(str(tmp_path), "module.kernel-1", source_stamp=("stamp", 1))
    key_a, key_b = (("float32[::1]",), "cpu"), (("float64[::1]",), "cpu")
    old.save(key_a, "old code for A")
    (tmp_path / "module.kernel-1.3.nbc").write_bytes(b"a numbered file of plain Numba")
    other = KeyedCacheFile(str(tmp_path), "module.kernel_two-9", source_stamp=("stamp", 1))
    other.save(key_a, "another kernel's code")

    new = KeyedCacheFile(str(tmp_path), "module.kernel-1", source_stamp=("stamp", 2))
    assert new.load(key_a) is None  # stale
    new.save(key_b, "new code for B")
    new.save(key_a, "new code for A")  # the index is not new any more: B stays
    assert new.load(key_a) == "new code for A" and new.load(key_b) == "new code for B"
    assert other.load(key_a) == "another kernel's code"
    kernel_files = sorted(p.name for p in tmp_path.glob("module.kernel-1.*.nbc"))
    assert kernel_files == sorted([new.data_name(key_a), new.data_name(key_b)])


def test_a_save_waits_for_the_lock_then_goes_on_without_it(tmp_path):
    """A process stopped while it holds the lock (Ctrl-Z) delays others' saves, never hangs them."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(tmp_path / disk_cache.LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        fd = os.open(tmp_path / disk_cache.LOCK_NAME, os.O_RDWR)
        start = time.monotonic()
        assert disk_cache._lock_or_give_up(fd, 0.3) is False
        assert 0.3 <= time.monotonic() - start < 5
        os.close(fd)
        holder.kill()
        holder.wait()
        fd = os.open(tmp_path / disk_cache.LOCK_NAME, os.O_RDWR)
        assert disk_cache._lock_or_give_up(fd, 0.3) is True  # released with its holder
        os.close(fd)
    finally:
        holder.kill()


def test_a_process_waits_out_a_stuck_lock_once_not_at_every_save(tmp_path, monkeypatch):
    """A first call saves a dozen kernels: waiting the full patience at each of them behind a
    stopped holder took minutes (a probe's run was killed after 150 s). After one wait that
    ran out, later saves try the lock once and go on."""
    monkeypatch.setattr(disk_cache, "LOCK_PATIENCE_S", 0.5)
    monkeypatch.setattr(disk_cache, "_patience_spent", [])
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(tmp_path / disk_cache.LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    cache_file = types.SimpleNamespace(_cache_path=str(tmp_path))
    try:
        assert holder.stdout.readline().strip() == "locked"
        waits = []
        for _ in range(3):
            start = time.monotonic()
            with KeyedCacheFile._index_lock(cache_file):
                waits.append(time.monotonic() - start)
        assert waits[0] >= 0.5 and max(waits[1:]) < 0.25, waits
    finally:
        holder.kill()
        holder.wait()

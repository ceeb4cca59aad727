"""Numba's on-disk cache, made safe for processes that compile at the same time.

Numba keeps a function's cached machine code in numbered files (``name.1.nbc``,
``name.2.nbc``, ...) and an index (``name.nbi``) from each key (signature, CPU, bytecode)
to its file. A process that saves a new key reads the index, takes the first free number,
writes the index, then the file. Two processes that compile different signatures of one
kernel at the same time (DDP ranks, DataLoader workers, ``ctckit warmup``'s parallel
groups, two notebooks on an empty cache) can both take the same number: the index then
sends one signature to the other's machine code, and every later process loads it. Seen
in ``ctckit warmup``: float64 calls given the float32 kernel ("can't unbox array"); a
kernel compiled for contiguous arrays, given a strided view, would read the wrong memory.

ctckit's kernels are made with :func:`njit` (``numba.njit``, whose cache, for a cached
kernel, is a :class:`KeyedCacheFile`):

- a data file is named by a digest of its key, so two keys never share a file;
- a data file holds its key next to the machine code, and a load compares it with the key
  asked for: an entry mixed up by the race above (or left by a version of ctckit without
  this file) is a cache miss, and the kernel compiles again;
- a data file and the index are written under a lock (``fcntl.lockf`` on a file in the
  cache folder; Numba's compiler lock orders the threads of one process), so no process's
  entry is lost. Where locks are not available an entry can be lost (compiled again by a
  later process), never mixed up;
- when a kernel's index is new (its source file changed: an edit, another version of
  ctckit), its older data files are removed, as Numba's numbering would have reused them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time

import numba
from numba.core.caching import IndexDataCacheFile

try:
    import fcntl
except ImportError:  # not POSIX: no lock (see the module's docstring)
    fcntl = None

LOCK_NAME = "ctckit-cache.lock"
"""The file in a cache folder whose lock orders the index's updates."""
LOCK_PATIENCE_S = 30.0
"""How long a save waits for the lock (held for milliseconds, unless its holder is stopped,
as by Ctrl-Z) before it goes on without it: an entry may then be lost, never mixed up.
A process waits that long once: after a wait that ran out, its later saves try the lock
once and go on (a first call saves a dozen kernels: 30 s each would be minutes)."""
_patience_spent = []  # set once a wait for the lock ran out in this process


class KeyedCacheFile(IndexDataCacheFile):
    """Numba's index and data files, with data files named by and holding their key."""

    def save(self, key, data):
        name = self.data_name(key)
        with self._index_lock():
            self._save_data(name, (key, data))  # first: the index never names a file still to come
            overloads = self._load_index()
            if not overloads:  # a new index: files of an edited or upgraded kernel are stale
                self._remove_data_files(keep=name)
            if overloads.get(key) != name:
                overloads[key] = name
                self._save_index(overloads)

    def load(self, key):
        name = self._load_index().get(key)
        if name is None:
            return None
        try:
            stored = self._load_data(name)
        except Exception:  # removed meanwhile, or not a file this class wrote
            return None
        if not (isinstance(stored, tuple) and len(stored) == 2 and stored[0] == key):
            return None  # another key's machine code: compile again
        return stored[1]

    def data_name(self, key) -> str:
        """The data file for ``key``: a digest of its text (equal keys from two processes
        may get two names, as a key can name objects by address; two keys whose texts
        collide are told apart by :meth:`load`)."""
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:20]
        return self._data_name_pattern.replace("{number:d}", digest)

    def _remove_data_files(self, keep: str):
        """Removes this kernel's data files but ``keep``: Numba's numbered files were reused
        by later saves; files named by key would pile up with each edit or version."""
        prefix, suffix = self._data_name_pattern.split("{number:d}")
        try:
            names = os.listdir(self._cache_path)
        except OSError:
            return
        for stale in names:
            if stale != keep and stale.startswith(prefix) and stale.endswith(suffix) and ".tmp." not in stale:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self._cache_path, stale))

    @contextlib.contextmanager
    def _index_lock(self):
        if fcntl is None:
            yield
            return
        try:
            fd = os.open(os.path.join(self._cache_path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # a folder we may write the cache in but not a lock file: no lock
            yield
            return
        try:  # a POSIX record lock: held by this process only, not by a child it forks
            if not _lock_or_give_up(fd, 0.0 if _patience_spent else LOCK_PATIENCE_S):
                _patience_spent.append(True)
            yield
        finally:
            os.close(fd)  # releases the lock


def _lock_or_give_up(fd: int, patience_s: float) -> bool:
    """Takes the lock on ``fd``, waiting at most ``patience_s``; False if it went without."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except (BlockingIOError, PermissionError):  # held by another process
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        except OSError:  # a file system without locks
            return False


def keyed_cache(dispatcher):
    """``dispatcher`` with its on-disk cache (if it has one) kept in :class:`KeyedCacheFile`."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if isinstance(cache_file, IndexDataCacheFile):
        cache_file.__class__ = KeyedCacheFile
    return dispatcher


UNCACHED: list = []
"""The kernels made without an on-disk cache: no folder that Numba looks in was writable."""


def njit(**options):
    """``numba.njit(**options)`` as a decorator, its kernel's cache a :class:`KeyedCacheFile`.
    Every ctckit kernel is made with it (a test checks). Where Numba finds no folder to
    cache in (``NUMBA_CACHE_DIR``, the ``__pycache__`` next to the source, the user-wide
    cache: a read-only installation and home), ``cache=True`` raises at decoration, which
    would make ``import ctckit.numpy`` fail: the kernel is then made without a cache, and
    compiles in each process (the compile notice says so)."""
    decorate = numba.njit(**options)

    def make(function):
        try:
            return keyed_cache(decorate(function))
        except RuntimeError as error:
            if not options.get("cache") or "cannot cache" not in str(error):
                raise
        UNCACHED.append(function.__qualname__)
        return numba.njit(**{**options, "cache": False})(function)

    return make

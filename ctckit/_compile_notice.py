"""A notice on stderr when ctckit compiles its kernels, so that a first call is never silent.

ctckit's kernels are Numba functions compiled on their first call for the argument types
they get (10-20 s for a first loss call on 2 cores) and cached on disk (``cache=True``).
A later process loads them from the cache in a fraction of a second, but every new
environment, container image or cache folder compiles them again. When a compilation of
one of ctckit's kernels is still running after :data:`DELAY` seconds, this module says
so, once per process: what compiles, about how long it takes, where the cache goes, how
to compile ahead of time (``ctckit warmup``) and how to turn the notice off.

How it knows: Numba's event API broadcasts a ``"numba:compile"`` event at the start and
the end of every compilation, and never for a load from the on-disk cache (a cache hit
returns before the event is raised). A listener starts a timer at the start of a
top-level compilation (not one nested in another: the callees a kernel compiles along
with it) of a function defined in a ``ctckit`` module, and the timer speaks unless that
compilation has ended. The timer runs on its own thread: Numba's compiler is Python code
and LLVM's passes release the GIL, so the notice appears while the compilation runs.

Why :mod:`warnings` and not :mod:`logging`: a warning reaches stderr with no set-up,
whereas a library's log record shows only if the application configures logging (or
through logging's last-resort handler, which configured applications replace, often
with a level that hides it). Warnings have standard off switches: by category,
``warnings.filterwarnings("ignore", category=ctckit.CompileWarning)`` (or pytest's
``filterwarnings = ignore::ctckit.CompileWarning``), and by message on the command line,
``-W "ignore:ctckit is compiling"`` or ``PYTHONWARNINGS`` (Python resolves a category named
there before the packages of a virtual environment are importable, so a message it is);
test runners collect warnings in their summary instead of interleaving them with output.
The warning is attributed to the line of the caller's code that called ctckit, as
``warnings.warn`` attributes any warning.

``CTCKIT_QUIET_COMPILE=1`` in the environment turns the notice off too.

Importing this module registers the listener; :mod:`ctckit._core` imports it, and
:mod:`ctckit` exports :class:`CompileWarning` lazily, so that ``import ctckit`` still
imports neither Numba nor the kernels.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from contextlib import contextmanager

from numba.core import config, event

DELAY = 1.0
"""Seconds a compilation must have been running before the notice is given."""

QUIET_VARIABLE = "CTCKIT_QUIET_COMPILE"

_SKIPPED_PACKAGES = ("ctckit", "numba", "llvmlite", "torch", "importlib", "threading", "contextlib", "functools")
"""Modules whose frames are not the caller's code that a notice is attributed to."""


class CompileWarning(UserWarning):
    """ctckit is compiling a Numba kernel (a first call: seconds, not milliseconds).

    Given at most once per process, when a compilation has run for a second. Silence it
    with ``warnings.filterwarnings("ignore", category=ctckit.CompileWarning)`` or the
    environment variable ``CTCKIT_QUIET_COMPILE=1``; compile ahead of time with
    ``ctckit warmup``.
    """


_lock = threading.Lock()
_given = False
_silenced = 0
_local = threading.local()


def quiet() -> bool:
    """Whether the notice is turned off (``CTCKIT_QUIET_COMPILE`` set to anything but 0)."""
    return os.environ.get(QUIET_VARIABLE, "").strip() not in ("", "0")


@contextmanager
def silenced():
    """No notice while this context is open (``ctckit warmup`` reports its own progress)."""
    global _silenced
    with _lock:
        _silenced += 1
    try:
        yield
    finally:
        with _lock:
            _silenced -= 1


def cache_folder(dispatcher) -> str:
    """The folder that Numba caches ``dispatcher``'s machine code in. Numba's rule (its
    cache locators, tried in order): ``NUMBA_CACHE_DIR``, if set, with a subfolder per
    source folder; else ``__pycache__`` next to the source file, if writable; else a
    user-wide cache folder (``~/.cache/numba`` on Linux), with a subfolder per source folder."""
    cache = getattr(dispatcher, "_cache", None)
    path = getattr(cache, "cache_path", None)
    if path:
        return str(path)
    if type(cache).__name__ == "NullCache":  # made without a cache (see ctckit._core.disk_cache.njit)
        return ""
    code = getattr(getattr(dispatcher, "py_func", None), "__code__", None)
    if config.CACHE_DIR or code is None:
        return str(config.CACHE_DIR)
    return os.path.join(os.path.dirname(code.co_filename), "__pycache__")


NOT_CACHED = ("Numba cannot cache the machine code: no folder it looks in is writable (NUMBA_CACHE_DIR, the "
              "__pycache__ folders next to ctckit's source files, the user-wide cache), so every process compiles it "
              "again; set NUMBA_CACHE_DIR to a writable folder.")


def where_cached(folder: str) -> str:
    """Where the cache is, in words, for a kernel that Numba caches in ``folder``."""
    unused = ""
    if config.CACHE_DIR:
        if os.path.abspath(folder).startswith(os.path.abspath(str(config.CACHE_DIR))):
            return f"{config.CACHE_DIR} (NUMBA_CACHE_DIR)"
        unused = f"; NUMBA_CACHE_DIR, {config.CACHE_DIR}, is not writable"
    if os.path.basename(folder) == "__pycache__":
        return (f"the __pycache__ folders next to ctckit's source files (such as {folder}"
                f"{unused or '; set NUMBA_CACHE_DIR to use another folder'})")
    return f"{os.path.dirname(folder)} (Numba's user-wide cache: ctckit's own folders are not writable{unused})"


def _cache_sentence(folder: str) -> str:
    if not folder:
        return NOT_CACHED
    return f"Numba caches the machine code in {where_cached(folder)}, and later processes load it from there."


def _ours(dispatcher) -> bool:
    module = getattr(getattr(dispatcher, "py_func", None), "__module__", None) or ""
    return module == "ctckit" or module.startswith("ctckit.")


def message(dispatcher) -> str:
    function = getattr(dispatcher, "py_func", None)
    name = f"{function.__module__}.{function.__qualname__}" if function is not None else repr(dispatcher)
    return (f"ctckit is compiling {name} for this machine: a first call compiles for 10-20 s on 2 cores, "
            f"each kind of call once (loss or gradient, float32 or float64, short or long targets, decoding). "
            f"{_cache_sentence(cache_folder(dispatcher))} To compile ahead of time (container images, CI): "
            f"`ctckit warmup`. To silence "
            f"this notice: {QUIET_VARIABLE}=1, or warnings.filterwarnings('ignore', category=ctckit.CompileWarning).")


def _caller_frame(thread_id: int):
    """The frame of the code that called ctckit on thread ``thread_id``: the first frame
    outside ctckit (and torch's autograd, Numba, ...) beyond ctckit's outermost frame."""
    frame = sys._current_frames().get(thread_id)
    outermost = None
    chain = []
    while frame is not None:
        chain.append(frame)
        name = frame.f_globals.get("__name__", "")
        if name == "ctckit" or name.startswith("ctckit."):
            outermost = len(chain) - 1
        frame = frame.f_back
    if outermost is None:
        return None
    for frame in chain[outermost + 1:]:
        name = frame.f_globals.get("__name__", "")
        if name.split(".")[0] not in _SKIPPED_PACKAGES:
            return frame
    return chain[outermost]


def _give(dispatcher, thread_id: int, compiling: dict) -> None:
    """The timer's action: the notice, once per process, unless the compilation ended."""
    global _given
    with _lock:
        if _given or compiling["ended"] or _silenced or quiet():
            return
        _given = True
    text = message(dispatcher)
    frame = _caller_frame(thread_id)
    filename, lineno = (frame.f_code.co_filename, frame.f_lineno) if frame is not None else (__file__, 0)
    module_globals = frame.f_globals if frame is not None else globals()
    try:
        warnings.warn_explicit(text, CompileWarning, filename, lineno, module=module_globals.get("__name__"),
                               registry=module_globals.setdefault("__warningregistry__", {}))
    except Warning:  # an "error" filter: this thread cannot raise it in the caller's, so it is printed
        sys.stderr.write(warnings.formatwarning(text, CompileWarning, filename, lineno))


def _started(dispatcher) -> None:
    """A compilation starts on this thread: time it if it is a top-level one of ctckit's."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    if depth or _given or _silenced or not _ours(dispatcher) or quiet():
        return
    compiling = {"ended": False}
    timer = threading.Timer(DELAY, _give, args=(dispatcher, threading.get_ident(), compiling))
    timer.daemon = True
    _local.timer = (timer, compiling)
    timer.start()


def _ended() -> None:
    """A compilation on this thread ended (or failed): the top-level one's timer stops."""
    _local.depth = max(0, getattr(_local, "depth", 0) - 1)
    pending = getattr(_local, "timer", None)
    if _local.depth == 0 and pending is not None:
        timer, compiling = pending
        compiling["ended"] = True
        timer.cancel()
        _local.timer = None


def _reset_after_fork() -> None:
    """In a forked child: a timer thread of the parent's may have held the lock."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class _Listener(event.Listener):
    def on_start(self, ev):
        try:
            _started(ev.data["dispatcher"])
        except Exception:  # a notice must never break a compilation
            pass

    def on_end(self, ev):
        try:
            _ended()
        except Exception:
            pass


event.register("numba:compile", _Listener())  # once: a module runs once per process

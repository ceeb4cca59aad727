"""Compiled kernels called through their addresses: each compiles once, on its own.

Numba links a called function's code into its caller's, then optimises the whole and
makes machine code of it again, for every caller. Where that costs seconds of compilation,
ctckit's drivers call the code below them through a pointer instead
(:func:`.intrinsics.call_compiled`), and it compiles once:

- each round of a batch calls its per-item kernel (:mod:`.loss.items`) through its
  address: linked in, the parallel driver took 15 s more to compile (two levels: the
  loop's body and the function around it);
- every serial kernel over a chunk of items or frames, ``kernel(items, cancel,
  *arguments)``, runs on Numba's OpenMP threads through one parallel loop,
  :func:`each_openmp`, which calls it by address for each item. It replaced a
  ``parallel=True`` twin of each kernel that compiled the kernel's body again: 2.4 s of
  the fused step's first call for :mod:`.logits_step`'s twin, about 1 s for the others.
  The OpenMP threads now run the very machine code that the calling thread runs.

Nothing checks, at a call through a pointer, that the arguments have the types the callee
was compiled for: :func:`address_of` compiles it for the types of the values the caller
passes (its return type is checked), and :func:`run_openmp` passes exactly those.
"""

import numpy as np
from numba import config as numba_config
from numba import prange, typeof, types

from .config import PARALLEL
from .disk_cache import njit
from .intrinsics import call_compiled

CANCEL_FLAG = np.zeros(1, dtype=np.int64)
"""A cancel flag's type (each job has its own flag), for compiling a kernel that takes one."""

try:  # what Numba's dispatchers look their compiled code up by: about 0.1 us an argument
    from numba._dispatcher import compute_fingerprint as _argument_kind
except ImportError:  # numba.typeof takes about 8 us an argument
    def _argument_kind(value):
        """What decides an argument's Numba type."""
        if isinstance(value, np.ndarray):
            return value.dtype.char, value.ndim, value.flags.num
        return type(value)

_addresses = {}


def address_key(function, arguments):
    """What :func:`address_of` looks ``function``'s compiled code up by."""
    return function, tuple(map(_argument_kind, arguments))


def address_of(function, arguments, result=types.none, key=None):
    """The native entry point of the Numba function ``function`` compiled for the types of
    ``arguments`` (or loaded from Numba's cache), to be called through a pointer
    (:func:`.call_compiled`) with arguments of those types; it must return ``result``'s
    type. ``key``: :func:`address_key`'s, when the caller has it. With ``NUMBA_DISABLE_JIT``
    the "address" is the Python function, which :func:`.call_compiled` then calls."""
    if numba_config.DISABLE_JIT:
        return function
    key = address_key(function, arguments) if key is None else key
    address = _addresses.get(key)
    if address is None:
        argument_types = tuple(typeof(value) for value in arguments)
        function.compile(argument_types)
        compiled = function.overloads[argument_types]
        if compiled.signature.return_type != result:
            raise TypeError(f"{function.__name__} returns {compiled.signature.return_type}, not {result}")
        address = _addresses[key] = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
    return address


@njit(**PARALLEL)
def each_openmp(kernel, items, arguments):
    """``kernel(items[i:i + 1], never, *arguments)`` for every i, on Numba's OpenMP
    threads; ``kernel``: the address of a serial kernel (:func:`run_openmp`), ``never``: a
    cancel flag that stays clear (a short call is not cancelled: see :mod:`.pool`)."""
    never = np.zeros(1, dtype=np.int64)
    for i in prange(items.shape[0]):
        call_compiled(None, kernel, (items[i:i + 1], never) + arguments)


def run_openmp(kernel, items, arguments) -> None:
    """The serial kernel ``kernel(items, cancel, *arguments)`` over every index of
    ``items`` (a C-contiguous int64 array) at once, on Numba's OpenMP threads, one index at
    a time (:func:`each_openmp`; the slices it passes have ``items``' type)."""
    each_openmp(address_of(kernel, (items, CANCEL_FLAG, *arguments)), items, arguments)

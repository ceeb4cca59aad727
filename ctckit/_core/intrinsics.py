"""Low-level tools for the kernels' inner loops, written as Numba intrinsics.

:func:`unmanaged`: array views that skip reference counting. Numba counts references to
every array atomically, and each array handed to an inlined helper is a new reference:
in the loss's per-frame code that was about 28 increments and 28 decrements per frame of
an item, more than half of its time (an atomic operation costs about 5 ns here). Views
made by :func:`unmanaged` carry no reference count, so those operations become a test of
a null pointer; their owner must outlive them (:func:`keep_alive`).

:func:`prefetch`: a software prefetch hint for array elements (``llvm.prefetch``). The
loss gathers the blank's and the target labels' log-probs of each frame: with many
classes (``C`` in the thousands) these are scattered over a row of several KiB, one row
per frame at a stride of ``N * C`` elements, which the hardware prefetcher cannot guess.
Each gather then waits on a cache miss. Asking for frame ``t + d``'s elements while frame
``t`` is computed hides that latency. A prefetch is only a hint: it never faults and
changes no result.

:func:`float_from_bits` and :func:`bits_from_float`: bit casts between a float64 and its
IEEE 754 bit pattern, for :mod:`.vexp`'s ``2^n`` and for reading and making powers of two
without ``frexp``/``ldexp`` library calls.

:func:`is_set`: an atomic read of a flag that another thread sets (the pool's cancel flag).
:func:`call_compiled`: a call through a compiled function's address.
"""

import numpy as np
from llvmlite import binding, ir
from numba import config, types
from numba.core import cgutils
from numba.extending import intrinsic

# LLVM names intrinsics by their pointer types: opaque pointers (LLVM 15 on) are "p0".
_NAME = "llvm.prefetch.p0" if binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def prefetch(typingctx, array, i, j, k):
    """Hint that ``array[i, j, k]`` (a 3-D array) will be read soon; no bounds check is
    needed (a prefetch of any address is harmless), but callers stay in bounds anyway."""
    if not (isinstance(array, types.Array) and array.ndim == 3):
        return None
    signature = types.void(array, i, j, k)

    def codegen(context, builder, sig, args):
        view = context.make_array(sig.args[0])(context, builder, args[0])
        index = [context.cast(builder, value, kind, types.intp) for value, kind in zip(args[1:], sig.args[1:])]
        pointer = cgutils.get_item_pointer(context, builder, sig.args[0], view, index, wraparound=False)
        byte_pointer = ir.IntType(8).as_pointer()
        int32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32]), _NAME)
        # read (0), high temporal locality (3), data cache (1)
        builder.call(hint, [builder.bitcast(pointer, byte_pointer), int32(0), int32(3), int32(1)])
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def unmanaged(typingctx, array):
    """A view of ``array`` (same type, data, shape and strides) without a reference count.

    Passing it around costs no atomic operation; views taken from it have none either.
    It does not keep the memory alive: the caller keeps the owner alive for as long as
    the view is used (:func:`keep_alive` after the last use), and never returns the view.
    """
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, sig, args):
        owner = context.make_array(sig.args[0])(context, builder, args[0])
        view = context.make_array(sig.return_type)(context, builder)
        for field in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(view, field, getattr(owner, field))
        view.meminfo = cgutils.get_null_value(view.meminfo.type)  # no reference count
        view.parent = cgutils.get_null_value(view.parent.type)  # no Python object behind it
        return view._getvalue()

    return array(array), codegen


@intrinsic
def keep_alive(typingctx, *arrays):
    """Does nothing, but counts as a use of each array: Numba releases an array after its
    last use, so calling this after the last use of an :func:`unmanaged` view keeps the
    views' owners alive until then."""
    if not all(isinstance(array, types.Array) for array in arrays):
        return None

    def codegen(context, builder, sig, args):
        return context.get_dummy_value()

    return types.void(types.StarArgTuple(arrays)), codegen


@intrinsic
def float_from_bits(typingctx, bits):
    """The float64 whose IEEE 754 bit pattern is the int64 ``bits`` (a bit cast, no
    conversion): ``float_from_bits((e + 1023) << 52) == 2.0 ** e`` for normal ``e``."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        value = context.cast(builder, args[0], sig.args[0], types.int64)
        return builder.bitcast(value, ir.DoubleType())

    return types.float64(bits), codegen


@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 whose IEEE 754 bit pattern is the int32 ``bits`` (a bit cast):
    ``float32_from_bits((e + 127) << 23) == 2.0 ** e`` for normal ``e``."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        value = context.cast(builder, args[0], sig.args[0], types.int32)
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def bits_from_float(typingctx, value):
    """The IEEE 754 bit pattern of the float64 ``value``, as an int64 (a bit cast, no
    conversion): bits 52-62 hold the biased exponent."""
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(context.cast(builder, args[0], sig.args[0], types.float64), ir.IntType(64))

    return types.int64(value), codegen


@intrinsic
def bits_from_float32(typingctx, value):
    """The IEEE 754 bit pattern of the float32 ``value``, as an int32 (a bit cast)."""
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(context.cast(builder, args[0], sig.args[0], types.float32), ir.IntType(32))

    return types.int32(value), codegen


@intrinsic
def call_compiled(typingctx, result, address, arguments):
    """``function(*arguments)`` for the Numba-compiled ``function`` whose native entry point
    is at ``address`` (an integer), returning a value of ``result``'s type.

    A call through a pointer: the caller's compiled code does not include the callee's,
    which compiles (and caches) on its own. The caller must pass exactly the argument
    types the callee was compiled for, and ``result`` must have its return type: nothing
    can check that here. An exception the callee raises propagates to the caller.
    """
    if not (isinstance(address, types.Integer) and isinstance(arguments, types.BaseTuple)):
        return None
    return_type = types.unliteral(result)

    def codegen(context, builder, sig, args):
        argument_types = tuple(sig.args[2])
        values = [builder.extract_value(args[2], i) for i in range(len(argument_types))]
        function_type = context.call_conv.get_function_type(return_type, argument_types)
        pointer = builder.inttoptr(args[1], function_type.as_pointer())
        status, value = context.call_conv.call_function(builder, pointer, return_type, argument_types, values)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return value

    return return_type(result, address, arguments), codegen


@intrinsic
def call_host(typingctx, address, count):
    """``function(count)`` for the C function ``int64 function(int64)`` at ``address``: a
    ctypes callback into Python, which takes the GIL itself (a kernel may run without it).
    It cannot raise: Python errors must come back as its result."""
    if not (isinstance(address, types.Integer) and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        word = ir.IntType(64)
        function = builder.inttoptr(args[0], ir.FunctionType(word, [word]).as_pointer())
        return builder.call(function, [context.cast(builder, args[1], sig.args[1], types.int64)])

    return types.int64(address, count), codegen


def _load_first(context, builder, array_type, array_value):
    """LLVM: ``array[0]`` read with an atomic (monotonic) load."""
    array = context.make_array(array_type)(context, builder, array_value)
    kind = context.get_value_type(array_type.dtype)
    pointer = builder.bitcast(array.data, kind.as_pointer())
    return builder.load_atomic(pointer, "monotonic", context.get_abi_sizeof(kind))


@intrinsic
def is_set(typingctx, flag):
    """Whether ``flag[0]`` (an integer array) is nonzero, read with an atomic load.

    For a flag that another thread sets while a kernel runs (:mod:`ctckit._core.pool`'s cancel
    flag): a plain load inside a loop may be hoisted out of it by LLVM, since nothing in the
    loop writes the flag, and the kernel would never see it change. An atomic (monotonic)
    load is read again every time; on x86 it is an ordinary ``mov``.
    """
    if not (isinstance(flag, types.Array) and isinstance(flag.dtype, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        value = _load_first(context, builder, sig.args[0], args[0])
        return builder.icmp_signed("!=", value, value.type(0))

    return types.boolean(flag), codegen


if config.DISABLE_JIT:  # plain Python (NUMBA_DISABLE_JIT=1, used to check the kernels' logic)
    def prefetch(array, i, j, k):
        """No-op: a hint only."""

    def unmanaged(array):
        """The array itself: Python counts references anyway."""
        return array

    def keep_alive(*arrays):
        """No-op."""

    def float_from_bits(bits):
        """The float64 with bit pattern ``bits`` (its low 64 bits, as the compiled shift keeps)."""
        return float(np.array(int(bits) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64).view(np.float64))

    def float32_from_bits(bits):
        """The float32 with bit pattern ``bits`` (its low 32 bits)."""
        return np.array(int(bits) & 0xFFFFFFFF, dtype=np.uint32).view(np.float32)[()]

    def bits_from_float32(value):
        """The bit pattern of the float32 ``value``."""
        return int(np.array(value, dtype=np.float32).view(np.int32))

    def bits_from_float(value):
        """The bit pattern of the float64 ``value``."""
        return int(np.array(value, dtype=np.float64).view(np.int64))

    def call_compiled(result, function, arguments):
        """``function(*arguments)``: here the "address" is the Python function itself."""
        return function(*arguments)

    def is_set(flag):
        """Whether ``flag[0]`` is nonzero."""
        return bool(flag[0])

    def call_host(address, count):
        """The C function at ``address`` called through ctypes."""
        import ctypes
        return ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(int(address))(int(count))

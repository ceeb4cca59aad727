"""A software prefetch hint for array elements (LLVM's ``llvm.prefetch``).

The loss gathers the blank's and the target labels' log-probs of each frame: with many
classes (``C`` in the thousands) these are scattered over a row of several KiB, one row
per frame at a stride of ``N * C`` elements, which the hardware prefetcher cannot guess.
Each gather then waits on a cache miss. Asking for frame ``t + d``'s elements while frame
``t`` is computed hides that latency. A prefetch is only a hint: it never faults and
changes no result.
"""

from llvmlite import binding, ir
from numba import types
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

"""The variable-length columns of a batch on the wire, in one kernel call: document starts per row
(from cu_seqlens, validated) and the sparse labels (masked positions and their original ids).

`trainer_client.wire.wire_parts` computes the same arrays with numpy (the reference, and what any
other producer uses); in the server it took ~0.1 ms of an 8 x 8,192 batch, GIL held, about as
long as assembling the batch. Here a first pass turns each 32 labels into a bit mask with one
vector compare (and counts them by popcount), and a second walks the set bits (~ratio of them)
to write positions and ids. (AVX-512 compress-stores were tried: `llvm.masked.compressstore`
lowers to the memory form of vpcompressd, which Zen 4 microcodes; it ran 12x slower.)
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.errors import TypingError
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

import curriculum.numba_boot  # noqa: F401  (before any kernel runs: numba without scipy.linalg)
from sampler_server.kernels.mask import IGNORE_INDEX

_LANES = 32  # labels per vector compare: one uint32 bit mask


@intrinsic
def _lanes_set(typingctx, lab, j):
    """Bit i set iff lab[j + i] != IGNORE_INDEX, for i < 32: one vector compare, no branches."""
    if not (isinstance(lab, types.Array) and lab.ndim == 1 and lab.layout == "C" and lab.dtype == types.int32):
        raise TypingError(f"wire_parts: labels must be a C-contiguous int32 array, got {lab}")
    sig = types.uint32(lab, types.int64)

    def codegen(context, builder, sig, args):
        n = _LANES
        vt = ir.VectorType(ir.IntType(32), n)
        a = context.make_array(sig.args[0])(context, builder, args[0])
        v = builder.load(builder.bitcast(builder.gep(a.data, [args[1]]), vt.as_pointer()), align=4)
        m = builder.icmp_signed("!=", v, ir.Constant(vt, [IGNORE_INDEX] * n))
        return builder.bitcast(m, ir.IntType(n))

    return sig, codegen


@intrinsic
def _popcount32(typingctx, x):
    """Set bits of a uint32 (llvm.ctpop: one instruction where the CPU has it)."""
    if x != types.uint32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic("llvm.ctpop", [i32])
        return builder.zext(builder.call(fn, [args[0]]), ir.IntType(64))

    return types.int64(x), codegen


@njit(cache=True, nogil=True)
def wire_parts(labels: np.ndarray, cu_seqlens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(doc_off, doc_pos, mask_off, mask_pos, mask_label), all int32, of an int32[B, L] labels
    array and the batch's cu_seqlens (every row start and every document start of the flattened
    tokens, then B·L): row b's document starts are doc_pos[doc_off[b]:doc_off[b+1]] (positions in
    the row), its masked positions mask_pos[mask_off[b]:mask_off[b+1]] with original ids
    mask_label[...]. Raises ValueError when cu_seqlens is not such a list."""
    B, L = labels.shape
    n_cu = cu_seqlens.shape[0]
    if n_cu < 2 or cu_seqlens[0] != 0 or cu_seqlens[n_cu - 1] != B * L:
        raise ValueError("cu_seqlens must rise strictly from 0 to B*L")
    doc_off = np.empty(B + 1, np.int32)
    doc_pos = np.empty(n_cu - 1, np.int32)
    b = -1
    for i in range(n_cu - 1):
        s = np.int64(cu_seqlens[i])
        if cu_seqlens[i + 1] <= s:
            raise ValueError("cu_seqlens must rise strictly from 0 to B*L")
        r = s // L
        if r != b:  # the first start in row r must be the row's own start
            if r != b + 1 or s != r * L:
                raise ValueError("cu_seqlens must hold every row start (r * L): documents never span rows")
            b = r
            doc_off[b] = i
        doc_pos[i] = s - r * L
    if b != B - 1:
        raise ValueError("cu_seqlens must hold every row start (r * L): documents never span rows")
    doc_off[B] = n_cu - 1

    flat = labels.reshape(-1)
    W = L // _LANES  # whole 32-label words a row; the rest (L % 32) is scanned one by one
    words = np.empty((B, W), np.uint32)
    mask_off = np.empty(B + 1, np.int32)
    total = 0
    for r in range(B):  # pass 1: the bit masks and the counts
        mask_off[r] = total
        row0 = r * L
        for w in range(W):
            bits = _lanes_set(flat, row0 + w * _LANES)
            words[r, w] = bits
            total += _popcount32(bits)
        for j in range(row0 + W * _LANES, row0 + L):
            total += flat[j] != IGNORE_INDEX
    mask_off[B] = total
    mask_pos = np.empty(total, np.int32)
    mask_label = np.empty(total, np.int32)
    k = 0
    for r in range(B):  # pass 2: the set bits (~ratio of them) give positions and ids
        row0 = r * L
        for w in range(W):
            bits = words[r, w]
            while bits:
                i = w * _LANES + np.int64(trailing_zeros(bits))
                bits &= bits - np.uint32(1)
                mask_pos[k] = i
                mask_label[k] = flat[row0 + i]
                k += 1
        for i in range(W * _LANES, L):
            if flat[row0 + i] != IGNORE_INDEX:
                mask_pos[k] = i
                mask_label[k] = flat[row0 + i]
                k += 1
    return doc_off, doc_pos, mask_off, mask_pos, mask_label

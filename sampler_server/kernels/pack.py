"""Packing kernels: keyed permutations for the two-level shuffle, and the copy of a run of
wrapped documents ([CLS] tokens [SEP]) into a sequence row."""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

import curriculum.numba_boot  # noqa: F401  (before any kernel runs: numba without scipy.linalg)
from sampler_server.kernels.rng import mix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _data_pointer(context, builder, ty, value):
    return value if isinstance(ty, types.CPointer) else context.make_array(ty)(context, builder, value).data


@intrinsic
def _copy32(typingctx, dst, at, src, frm, count):
    """dst[at : at + count] = src[frm : frm + count] as one memcpy of 4-byte items (uint32 token
    ids into int32 rows: ids < 2**31, so the bits are the value). `src` is a C-contiguous array
    or a pointer (kernels/assemble.py); no bounds checks, like the loop this replaces."""
    for name, ty in (("dst", dst), ("src", src)):
        if isinstance(ty, types.Array) and (ty.ndim != 1 or ty.layout != "C" or ty.dtype.bitwidth != 32):
            raise TypingError(f"_copy32: {name} must be a 1-D C-contiguous array of 4-byte items, got {ty}")
    if not isinstance(dst, types.Array) or not (isinstance(src, types.Array) or isinstance(src, types.CPointer) and src.dtype.bitwidth == 32):
        raise TypingError(f"_copy32: expected (array, int, array or pointer, int, int), got {dst}, {src}")

    def codegen(context, builder, sig, args):
        dst_v, at_v, src_v, frm_v, count_v = args
        at_v, frm_v, count_v = (context.cast(builder, v, t, types.int64) for v, t in zip((at_v, frm_v, count_v), (sig.args[1], sig.args[3], sig.args[4])))
        d = builder.gep(_data_pointer(context, builder, sig.args[0], dst_v), [at_v])
        s_ = builder.gep(_data_pointer(context, builder, sig.args[2], src_v), [frm_v])
        cgutils.raw_memcpy(builder, d, s_, count_v, context.get_constant(types.int64, 4), align=4)
        return context.get_dummy_value()

    return types.void(dst, at, src, frm, count), codegen


@njit(cache=True, nogil=True)
def keyed_permutation(n: int, key: np.uint64, out: np.ndarray) -> None:
    """Fisher-Yates over out[:n] with draws from a counter-based hash of `key`: the same (n, key)
    gives the same permutation on every machine, numpy version and thread."""
    for i in range(n):
        out[i] = i
    for i in range(n - 1, 0, -1):
        h = mix64(key + np.uint64(i + 1) * _GOLDEN)
        # multiply-high of the top 32 bits maps uniformly onto [0, i]
        j = np.int64(((h >> np.uint64(32)) * np.uint64(i + 1)) >> np.uint64(32))
        t = out[i]
        out[i] = out[j]
        out[j] = t


@njit(cache=True, nogil=True)
def copy_run(
    tokens: np.ndarray,  # uint32[...] the shard's token buffer
    offsets: np.ndarray,  # int64[docs+1] the shard's document offsets
    order: np.ndarray,  # int32[n_docs_in_block] shard-local doc ids in shuffled order
    d: int,  # rank in `order` of the first document of the run
    od: int,  # offset inside that wrapped document (0 = its CLS)
    n: int,  # tokens to write
    cls_id: int,
    sep_id: int,
    out: np.ndarray,  # int32[L] the sequence row
    pos: int,  # where in the row the run starts
    starts: np.ndarray,  # int32[L] positions of document starts in the row (output)
    n_starts: int,
) -> int:
    """Write `n` tokens of the wrapped stream into out[pos:pos+n]; returns the new n_starts.

    Invariant: a wrapped document of length m+2 is CLS, its m tokens, SEP; the stream is these
    back to back in `order`, so offset od of document d maps to exactly one token."""
    written = 0
    while written < n:
        doc = order[d]
        lo = offsets[doc]
        m = offsets[doc + 1] - lo
        wrapped = m + 2
        while od < wrapped and written < n:
            if od == 0:
                out[pos + written] = cls_id
                starts[n_starts] = pos + written
                n_starts += 1
                od += 1
                written += 1
            elif od <= m:
                k = min(m - (od - 1), n - written)
                _copy32(out, pos + written, tokens, lo + od - 1, k)
                od += k
                written += k
            else:
                out[pos + written] = sep_id
                od += 1
                written += 1
        if od >= wrapped:
            d += 1
            od = 0
    return n_starts


@njit(cache=True, nogil=True)
def copy_run_virtual(
    key: np.uint64,  # the block's key
    lens: np.ndarray,  # int64 document lengths of the block, storage order
    order: np.ndarray,  # int32 shuffled document ids
    d: int,
    od: int,
    n: int,
    cls_id: int,
    sep_id: int,
    lo: int,  # token ids are drawn from [lo, hi)
    hi: int,
    out: np.ndarray,
    pos: int,
    starts: np.ndarray,
    n_starts: int,
) -> int:
    """`copy_run` for generated documents: token t of document k is lo + hash(key, k, t) mod (hi - lo)."""
    span = np.uint64(hi - lo)
    written = 0
    while written < n:
        doc = order[d]
        m = lens[doc]
        dkey = mix64(key ^ (np.uint64(doc + 1) * _GOLDEN))
        while od < m + 2 and written < n:
            if od == 0:
                out[pos + written] = cls_id
                starts[n_starts] = pos + written
                n_starts += 1
            elif od <= m:
                out[pos + written] = lo + np.int64(mix64(dkey + np.uint64(od)) % span)
            else:
                out[pos + written] = sep_id
            od += 1
            written += 1
        if od >= m + 2:
            d += 1
            od = 0
    return n_starts

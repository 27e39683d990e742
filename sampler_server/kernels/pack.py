"""Packing kernels: keyed permutations for the two-level shuffle, and the copy of a run of
wrapped documents ([CLS] tokens [SEP]) into a sequence row."""

from __future__ import annotations

import numpy as np
from numba import njit

from sampler_server.kernels.rng import mix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


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
                for t in range(k):
                    out[pos + written + t] = tokens[lo + od - 1 + t]
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

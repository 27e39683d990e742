"""Batch assembly in one kernel call: pack every row from its runs of wrapped documents, mask it
while it is still in cache, and write the batch's cu_seqlens.

The Python side (`LanguageStream.add_runs`) resolves where each row's tokens live — epoch and
block orders, binary searches — and describes each run as one uint64 row of RUN_COLUMNS:

  kind   RUN_SHARD: a run of a memory-mapped shard; RUN_VIRTUAL: generated tokens (virtual.py)
  src    address of the shard's uint32 tokens | of the block's int64 document lengths
  off    address of the shard's int64 document offsets | unused
  order  address of the block's int32 shuffled document ids
  key    unused | the block's key
  d, od  the run starts at offset od of the d-th document in `order` (0 = its [CLS])
  n      tokens in the run
  lo, hi unused | generated ids are drawn from [lo, hi)

Arrays are passed by address because a batch reads from dozens of shards and block orders: one
call over a table of runs replaces a kernel call per row (with its dispatch and the Python around
it, ~20 µs a row: most of a 64 x 1,024 batch). The caller keeps every array a row points into
alive until the call returns (`Runs.keep`). The copy and the masking are exactly `copy_run` /
`copy_run_virtual` and `_mask_row`, so a batch is byte-identical to packing row by row with
`LanguageStream.fill` and masking with `mask_tokens` (tests/sampler_server/test_assemble.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

import curriculum.numba_boot  # noqa: F401  (before any kernel runs: numba without scipy.linalg)
from sampler_server.kernels.mask import _WORKERS, _check_range, _check_run, _mask_row, scratch_words
from sampler_server.kernels.pack import copy_run, copy_run_virtual

RUN_SHARD, RUN_VIRTUAL = 0, 1
RUN_COLUMNS = ("kind", "src", "off", "order", "key", "d", "od", "n", "lo", "hi")
_KIND, _SRC, _OFF, _ORDER, _KEY, _D, _OD, _N, _LO, _HI = range(len(RUN_COLUMNS))


def _pointer_to(dtype: types.Type):
    @intrinsic
    def as_pointer(typingctx, addr):
        """An integer address as a typed pointer (indexing it reads memory there: no bounds)."""
        if not isinstance(addr, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

        return types.CPointer(dtype)(addr), codegen

    return as_pointer


_u32_at = _pointer_to(types.uint32)
_i32_at = _pointer_to(types.int32)
_i64_at = _pointer_to(types.int64)


@njit(cache=True, nogil=True)
def _shard_run(runs: np.ndarray, r: np.int64, n: np.int64, cls_id: np.int64, sep_id: np.int64, out: np.ndarray,
               pos: np.int64, starts: np.ndarray, ns: np.int64) -> np.int64:
    return copy_run(_u32_at(runs[r, _SRC]), _i64_at(runs[r, _OFF]), _i32_at(runs[r, _ORDER]), np.int64(runs[r, _D]),
                    np.int64(runs[r, _OD]), n, cls_id, sep_id, out, pos, starts, ns)


@njit(cache=True, nogil=True)
def _virtual_run(runs: np.ndarray, r: np.int64, n: np.int64, cls_id: np.int64, sep_id: np.int64, out: np.ndarray,
                 pos: np.int64, starts: np.ndarray, ns: np.int64) -> np.int64:
    return copy_run_virtual(runs[r, _KEY], _i64_at(runs[r, _SRC]), _i32_at(runs[r, _ORDER]), np.int64(runs[r, _D]),
                            np.int64(runs[r, _OD]), n, cls_id, sep_id, np.int64(runs[r, _LO]), np.int64(runs[r, _HI]),
                            out, pos, starts, ns)


@njit(cache=True, nogil=True)
def _pack_row(runs: np.ndarray, r0: np.int64, r1: np.int64, kind: np.int64, cls_id: np.int64, sep_id: np.int64,
              out: np.ndarray, starts: np.ndarray) -> np.int64:
    """Runs r0..r1-1 (all of `kind`) back to back into `out`, document starts into `starts`;
    returns how many starts, or -1 if the runs do not fill the row exactly. (The branch is on the
    batch's kind, not on each run's column: branching on the column made the shard copy 4x slower.)"""
    pos = np.int64(0)
    ns = np.int64(0)
    for r in range(r0, r1):
        n = np.int64(runs[r, _N])
        if pos + n > out.shape[0]:
            return -1
        if kind == RUN_SHARD:
            ns = _shard_run(runs, r, n, cls_id, sep_id, out, pos, starts, ns)
        else:
            ns = _virtual_run(runs, r, n, cls_id, sep_id, out, pos, starts, ns)
        pos += n
    return ns if pos == out.shape[0] else -1


@njit(cache=True, nogil=True)
def pack_row(runs: np.ndarray, cls_id: np.int64, sep_id: np.int64, out: np.ndarray, starts: np.ndarray) -> np.int64:
    """One row from all of `runs` (one kind), unmasked: `LanguageStream.fill`. Returns how many
    document starts it wrote into `starts`."""
    if runs.shape[1] != len(RUN_COLUMNS):
        raise ValueError("pack_row: runs must be uint64[R, 10]")
    kind = np.int64(runs[0, _KIND]) if runs.shape[0] > 0 else np.int64(RUN_SHARD)
    for r in range(runs.shape[0]):
        if runs[r, _KIND] != kind:
            raise ValueError("pack_row: runs of both kinds (shard and virtual)")
    ns = _pack_row(runs, 0, runs.shape[0], kind, cls_id, sep_id, out, starts)
    if ns < 0:
        raise ValueError("pack_row: the runs do not add up to the row's length")
    return ns


_BAD_RUNS, _BAD_ID = -1, -2  # n_starts[b] of a row that failed (read after the parallel loop)


@njit(cache=True, nogil=True)
def _assemble_rows(
    first: np.int64, step: np.int64, runs: np.ndarray, row_first: np.ndarray, kind: np.int64, cls_id: np.int64,
    sep_id: np.int64, input_ids: np.ndarray, labels: np.ndarray, starts: np.ndarray, n_starts: np.ndarray,
    seq_keys: np.ndarray, mask_ratio: np.ndarray, is_special: np.ndarray, mid: np.int32, random_pool: np.ndarray,
    run: np.ndarray, lo: np.uint32, span: np.uint32, hbuf: np.ndarray,
) -> None:
    """Rows first, first + step, ...: pack, then mask while the row is in cache. A row whose runs
    are malformed gets n_starts[b] = _BAD_RUNS, one holding an id outside [0, V) _BAD_ID."""
    for b in range(first, input_ids.shape[0], step):
        ns = _pack_row(runs, row_first[b], row_first[b + 1], kind, cls_id, sep_id, input_ids[b], starts[b])
        if ns < 0:
            n_starts[b] = _BAD_RUNS
            continue
        n_starts[b] = ns
        if not _mask_row(input_ids[b], labels[b], hbuf, seq_keys[b], mask_ratio[b], is_special, mid, random_pool, run, lo,
                         span):
            n_starts[b] = _BAD_ID


@njit(cache=True, nogil=True)
def _raise_row_errors(n_starts: np.ndarray) -> None:
    """Raise for the first failed row. (A separate function: reading an array written in the
    parallel loop, or raising, in `assemble` itself added ~1-2 µs to every call.)"""
    for b in range(n_starts.shape[0]):
        if n_starts[b] == _BAD_RUNS:
            raise ValueError("assemble: a row's runs do not add up to its length")
        if n_starts[b] == _BAD_ID:
            raise ValueError("assemble: a token id lies outside [0, len(is_special)); size is_special to the vocabulary")


@njit(cache=True, nogil=True, parallel=True)
def assemble(
    runs: np.ndarray,  # uint64[R, len(RUN_COLUMNS)] run descriptors, rows in order, all of one kind
    row_first: np.ndarray,  # int64[B + 1]: row b is made of runs row_first[b] .. row_first[b+1]-1
    cls_id: np.int64,
    sep_id: np.int64,
    input_ids: np.ndarray,  # int32[B, L] C-contiguous, fully written (packed, then masked)
    labels: np.ndarray,  # int32[B, L] C-contiguous, fully written
    seq_keys: np.ndarray,  # uint64[B]
    mask_ratio: np.ndarray,  # float64[B], in [0, 1]
    is_special: np.ndarray,  # bool[V]
    mask_id: np.int32,
    random_pool: np.ndarray,  # int32[R]
    pool_run: np.ndarray,  # int64[3], mask.pool_run(random_pool)
    special_range: np.ndarray,  # int64[2], mask.free_range(is_special): trusted (ends checked only)
) -> np.ndarray:
    """Pack and mask every row; returns cu_seqlens (int32): every row start and every [CLS]
    position of the flattened [B·L] tokens, then B·L. Raises ValueError on malformed input."""
    B, L = input_ids.shape
    kind = np.int64(runs[0, _KIND]) if runs.shape[0] > 0 else np.int64(RUN_SHARD)
    _check(runs, row_first, kind, input_ids, labels, seq_keys, mask_ratio, is_special, random_pool)
    _check_run(random_pool, pool_run)
    _check_range(is_special, special_range)
    lo, hi = special_range[0], special_range[1]
    ulo = np.uint32(lo)
    span = np.uint32(hi - lo)
    mid = np.int32(mask_id)
    # A wrapped document is at least [CLS][SEP], so a row holds at most L // 2 + 1 starts.
    starts = np.empty((B, L // 2 + 1), np.int32)
    n_starts = np.empty(B, np.int64)
    n_work = min(B, _WORKERS)  # fixed, not the thread count: the bytes never depend on threads
    scratch = np.empty((n_work, scratch_words(L)), np.uint64)
    for c in prange(n_work):
        _assemble_rows(c, n_work, runs, row_first, kind, cls_id, sep_id, input_ids, labels, starts, n_starts, seq_keys,
                       mask_ratio, is_special, mid, random_pool, pool_run, ulo, span, scratch[c])
    _raise_row_errors(n_starts)
    return _cu_seqlens(starts, n_starts, L)


@njit(cache=True, nogil=True)
def _check(runs, row_first, kind, input_ids, labels, seq_keys, mask_ratio, is_special, random_pool) -> None:
    B, L = input_ids.shape
    if labels.shape[0] != B or labels.shape[1] != L:
        raise ValueError("assemble: labels must have the shape of input_ids")
    if row_first.shape[0] != B + 1 or seq_keys.shape[0] != B or mask_ratio.shape[0] != B:
        raise ValueError("assemble: row_first needs B + 1 entries, seq_keys and mask_ratio one per row")
    if runs.shape[1] != 10 or row_first[0] != 0 or row_first[B] != runs.shape[0]:
        raise ValueError("assemble: runs must be uint64[R, 10] and row_first span them")
    if is_special.shape[0] == 0 or random_pool.shape[0] == 0:
        raise ValueError("assemble: is_special and random_pool must be non-empty")
    for b in range(B):
        if not (0.0 <= mask_ratio[b] <= 1.0):
            raise ValueError("assemble: mask_ratio must lie in [0, 1]")
        if row_first[b + 1] < row_first[b]:
            raise ValueError("assemble: row_first must be non-decreasing")
    for r in range(runs.shape[0]):
        if runs[r, _KIND] != kind:
            raise ValueError("assemble: runs of both kinds (shard and virtual) in one batch")


@njit(cache=True, nogil=True)
def _cu_seqlens(starts: np.ndarray, n_starts: np.ndarray, L: np.int64) -> np.ndarray:
    """Every row start (a row that begins inside a document gets one at 0) and every [CLS]
    position of the flattened [B·L] tokens, then B·L."""
    B = n_starts.shape[0]
    total = 1
    for b in range(B):
        total += n_starts[b] + (n_starts[b] == 0 or starts[b, 0] != 0)
    cu = np.empty(total, np.int32)
    k = 0
    for b in range(B):
        base = b * L
        if n_starts[b] == 0 or starts[b, 0] != 0:
            cu[k] = base
            k += 1
        for i in range(n_starts[b]):
            cu[k] = base + starts[b, i]
            k += 1
    cu[k] = B * L
    return cu

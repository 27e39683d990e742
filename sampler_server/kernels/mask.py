"""MLM masking: one counter-based hash per token decides selection, action and replacement.

For token j of sequence b, h = token_hash(seq_keys[b], j) (see rng.py) and
  u = h >> 32            selects: selected iff u < ceil(mask_ratio[b] * 2**32), i.e. u / 2**32 < ratio;
                         among selected tokens u is uniform on [0, t_sel), and its sub-ranges give
                         the action: [0, 0.8 t_sel) -> [MASK], [0.8 t_sel, 0.9 t_sel) -> random id,
                         the rest unchanged (80/10/10 to within 1 / t_sel);
  h & 0xFFFFFFFF         picks the random replacement random_pool[(low32 * R) >> 32].
Special tokens (is_special[id]) are never selected. Labels are the original id where selected and
-100 elsewhere. Since h depends only on (seed, phase, g, j), the result does not depend on how a
batch is split into sub-batches, ranks or threads.

Speed: the per-token work is branch-free so LLVM vectorizes it (AVX-512 / AVX2). A lookup in
the bool table `is_special` would keep the loop scalar, so when every special id is < 256 (the
usual layout) the test is a shift into four bit words instead, and otherwise the lookup runs as
a pass of its own. Random replacements (~ratio/10 of tokens) are resolved in a last short pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from sampler_server.kernels.rng import mix64

IGNORE_INDEX = -100  # the label value torch's CrossEntropyLoss skips

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LOW32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_TWO32 = 4294967296.0


@njit(cache=True, nogil=True)
def selection_thresholds(ratio: np.float64) -> tuple[np.uint64, np.uint64, np.uint64]:
    """(t_sel, t_mask, t_rand) for a mask ratio in [0, 1]: u < t_mask -> [MASK], u < t_rand ->
    random id, u < t_sel -> unchanged. ratio * 2**32 is exact, so t_sel = ceil of it is too."""
    t_sel = np.uint64(np.ceil(ratio * _TWO32))
    t_mask = (t_sel * np.uint64(4)) // np.uint64(5)
    t_rand = (t_sel * np.uint64(9)) // np.uint64(10)
    return t_sel, t_mask, t_rand


@njit(cache=True, nogil=True)
def low_special_bits(is_special: np.ndarray) -> tuple[bool, np.uint64, np.uint64, np.uint64, np.uint64]:
    """(no special id >= 256, the flags of ids 0..255 as four uint64 bit words).

    Most vocabularies keep their special tokens among the first ids; then the special test is a
    shift and a mask, which vectorizes, instead of a table lookup, which does not."""
    V = is_special.shape[0]
    high = False
    for i in range(V - min(V, 256)):  # indexed from 0 so it vectorizes: ~3 us for 256k ids
        high |= is_special[i + 256]
    w0 = w1 = w2 = w3 = np.uint64(0)
    for i in range(min(V, 256)):
        if is_special[i]:
            bit = np.uint64(1) << np.uint64(i & 63)
            if i < 64:
                w0 |= bit
            elif i < 128:
                w1 |= bit
            elif i < 192:
                w2 |= bit
            else:
                w3 |= bit
    return not high, w0, w1, w2, w3


@njit(cache=True, nogil=True)
def _decide(
    ids: np.ndarray, lab: np.ndarray, j: np.int64, tok: np.int32, special: bool, key: np.uint64,
    t_sel: np.uint64, t_mask: np.uint64, t_rand: np.uint64, mid: np.int32, r64: np.uint64,
) -> np.int64:
    """Mask token j from its hash; returns 1 if it was parked for a random replacement.

    Branch-free so the calling loops vectorize. A random replacement is parked in ids as
    -1 - (its pool index): valid ids are >= 0, so the negatives are exactly these."""
    h = mix64(key + np.uint64(j + 1) * _GOLDEN)
    u = h >> _S32
    sel = (u < t_sel) & (not special)
    lab[j] = tok if sel else np.int32(IGNORE_INDEX)
    parked = np.int32(-1) - np.int32(((h & _LOW32) * r64) >> _S32)
    rep = mid if u < t_mask else (parked if u < t_rand else tok)
    ids[j] = rep if sel else tok
    return np.int64(sel & (u >= t_mask) & (u < t_rand))


@njit(cache=True, nogil=True, parallel=True)
def mask_tokens(
    input_ids: np.ndarray,  # int32[B, L], masked in place
    labels: np.ndarray,  # int32[B, L], fully written
    seq_keys: np.ndarray,  # uint64[B], sequence_key(seed, phase, g) of each row
    mask_ratio: np.ndarray,  # float64[B], in [0, 1]
    is_special: np.ndarray,  # bool[V], True for ids never masked (CLS/SEP/PAD/MASK/...)
    mask_id: np.int32,
    random_pool: np.ndarray,  # int32[R], the non-special ids a random replacement draws from
) -> None:
    """Apply MLM masking to every row of input_ids in place and write the labels.

    Raises ValueError if a token id lies outside [0, V) (the rows' contents are then unspecified)."""
    B, L = input_ids.shape
    V = is_special.shape[0]
    R = random_pool.shape[0]
    if labels.shape[0] != B or labels.shape[1] != L:
        raise ValueError("mask_tokens: labels must have the shape of input_ids")
    if seq_keys.shape[0] != B or mask_ratio.shape[0] != B:
        raise ValueError("mask_tokens: seq_keys and mask_ratio need one entry per row of input_ids")
    if V == 0 or R == 0:
        raise ValueError("mask_tokens: is_special and random_pool must be non-empty")
    if R >= 2**31:
        raise ValueError("mask_tokens: random_pool must hold fewer than 2**31 ids")
    for b in range(B):
        if not (0.0 <= mask_ratio[b] <= 1.0):
            raise ValueError("mask_tokens: mask_ratio must lie in [0, 1]")
    low, w0, w1, w2, w3 = low_special_bits(is_special)
    r64 = np.uint64(R)
    uV = np.uint32(V)
    last_id = np.uint32(V - 1)
    mid = np.int32(mask_id)
    ignore = np.int32(IGNORE_INDEX)
    bad = 0
    for b in prange(B):
        t_sel, t_mask, t_rand = selection_thresholds(mask_ratio[b])
        key = seq_keys[b]
        ids = input_ids[b]
        lab = labels[b]
        n_bad = 0
        n_random = 0
        if low:
            # Specials all below 256: test them with shifts; the whole pass vectorizes.
            for j in range(L):
                tok = ids[j]
                ut = np.uint32(tok)
                n_bad += ut >= uV
                hi = ut >> np.uint32(6)
                word = w0 if hi == 0 else (w1 if hi == 1 else (w2 if hi == 2 else w3))
                special = (ut < np.uint32(256)) & (((word >> np.uint64(ut & np.uint32(63))) & np.uint64(1)) != 0)
                n_random += _decide(ids, lab, j, tok, special, key, t_sel, t_mask, t_rand, mid, r64)
        else:
            # A table lookup keeps a loop scalar, so it gets a pass of its own, leaving the
            # hash pass vectorized: lab = -100 at specials, else the id (clamped in range;
            # out-of-range ids are counted and raise below).
            for j in range(L):
                tok = ids[j]
                ut = np.uint32(tok)
                n_bad += ut >= uV
                lab[j] = ignore if is_special[min(ut, last_id)] else tok
            for j in range(L):
                n_random += _decide(ids, lab, j, ids[j], lab[j] == ignore, key, t_sel, t_mask, t_rand, mid, r64)
        bad += n_bad
        if n_bad:
            continue  # negative ids would read as parked: leave the row, raise below
        # Rare (~ratio/10 of tokens): resolve parked replacements from the pool.
        j = 0
        while n_random > 0:
            v = ids[j]
            if v < 0:
                ids[j] = random_pool[-1 - v]
                n_random -= 1
            j += 1
    if bad:
        raise ValueError("mask_tokens: a token id lies outside [0, len(is_special)); size is_special to the vocabulary")


def mask_batch(
    input_ids: np.ndarray,
    seq_keys: np.ndarray,
    mask_ratio: float | np.ndarray,
    is_special: np.ndarray,
    mask_id: int,
    random_pool: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask a copy of input_ids (int32[B, L]); returns (masked ids, labels), both int32[B, L].

    `mask_ratio` may be one float for every row; `random_pool` defaults to all non-special ids."""
    ids = np.array(input_ids, dtype=np.int32, order="C", copy=True)
    if ids.ndim != 2:
        raise ValueError(f"mask_batch: input_ids must be 2-D [B, L], got shape {ids.shape}")
    B = ids.shape[0]
    keys = np.ascontiguousarray(seq_keys, dtype=np.uint64)
    ratios = np.ascontiguousarray(np.broadcast_to(np.asarray(mask_ratio, np.float64), (B,)))
    special = np.ascontiguousarray(is_special, dtype=np.bool_)
    pool = np.flatnonzero(~special).astype(np.int32) if random_pool is None else random_pool
    pool = np.ascontiguousarray(pool, dtype=np.int32)
    labels = np.empty_like(ids)
    mask_tokens(ids, labels, keys, ratios, special, np.int32(mask_id), pool)
    return ids, labels

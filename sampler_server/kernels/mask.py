"""MLM masking: one counter-based hash per four tokens decides selection and action.

For sequence b with key = seq_keys[b], the hash of token quad k is h_k = token_hash(key, k) (see
rng.py), and token j draws the 16-bit number
  u_j = (h_{j >> 2} >> (16 * (j & 3))) & 0xFFFF        (the four 16-bit quarters, low one first).
With t_sel = ceil(mask_ratio[b] * 2**16), t_mask = t_sel * 4 // 5 and t_rand = t_sel * 9 // 10:
  selected  iff u_j < t_sel and the token is not special (is_special[id]), i.e. u_j / 2**16 < ratio;
  among selected tokens u_j is uniform on [0, t_sel): u_j < t_mask -> [MASK], u_j < t_rand -> a random
  id, otherwise unchanged (80/10/10 to within 1 / t_sel).
So the ratio is rounded up to a multiple of 2**-16 (0.3 selects with probability 0.300003), and the
80/10/10 split is exact to within 1 / t_sel: 0.0003 at a 5 % ratio (t_sel = 3,277).
The random id (needed by ~ratio/10 of tokens) comes from a second stream under the key
mix64(key ^ PICK_TAG), one hash per token: r = token_hash(that key, j), id = random_pool[((r >> 32) * R) >> 32].
Labels are the original id where selected and -100 elsewhere. Everything depends only on (key, j),
so the result does not depend on how a batch is split into sub-batches, ranks or threads.

Speed (one thread, AVX-512). Per row: (1) a pass writes the quad hashes into a scratch buffer,
whose uint16 view is exactly u_0, u_1, ... on a little-endian CPU (16 bits a token instead of 32
cut masking by a quarter: the splitmix64 finalizer is most of the per-token arithmetic);
(2) blocks of 32 tokens are masked by `_block`, written in LLVM vector IR so that compares and selects
stay in vector registers and the block returns two 32-bit masks: the tokens that need a random id and
the "candidates" whose id lies outside the longest special-free id range [lo, hi) (special tokens and
out-of-range ids live there). Both are rare: their positions are appended to two lists with no
branch on how many there are (`_record`), and after the row's blocks a loop over each list
finishes them: a table lookup in is_special for candidates, a second hash for random ids. Nothing
branches on a token's draw (a loop over each block's bits did, and mispredicted about once a
block: a third of the time once the keys change from batch to batch, as they do).
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core.errors import TypingError
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

import curriculum.numba_boot  # noqa: F401  (before any kernel runs: numba without scipy.linalg)
from sampler_server.kernels.rng import mix64

if sys.byteorder != "little":  # the uint16 view of the quad hashes is u_0, u_1, ... only on little-endian CPUs
    raise ImportError("sampler_server.kernels.mask assumes a little-endian CPU (x86-64, aarch64)")

IGNORE_INDEX = -100  # the label value torch's CrossEntropyLoss skips
# Bumped whenever the rule above gives different bytes for the same key, so that the run id (and
# every batch's build id) changes with it: a trainer resuming from a checkpoint, or failing over to
# a replica, on the other rule stops instead of mixing masks. 2: 16-bit draws (was 32, unversioned).
MASK_RULE_VERSION = 2
PICK_TAG = np.uint64(0xB7E151628AED2A6B)  # digits of e: separates the random-id stream from the decisions

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO16 = 65536.0
_BLOCK = 32  # tokens per vector block: one 32-bit mask per block for each rare kind
_WORKERS = 32  # parallel work items per call (rows are dealt round-robin); more than any thread count used


def _splat(builder: ir.IRBuilder, x: ir.Value, n: int) -> ir.Value:
    vt = ir.VectorType(x.type, n)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n))


def _contiguous_1d(name: str, ty: types.Type, dtype: types.Type) -> None:
    if not (isinstance(ty, types.Array) and ty.ndim == 1 and ty.layout == "C" and ty.dtype == dtype):
        raise TypingError(f"mask_tokens: {name} must be a C-contiguous {dtype} array, got {ty}")


@intrinsic
def _block(typingctx, ids, lab, u16, o, sel_max, t_mask, t_rand, mid, lo, span):
    """Mask tokens o .. o+31 of one row: store labels and [MASK]s, return park | cand << 32.

    cand bit i: (id - lo) mod 2**32 >= span, i.e. the id of token o+i lies outside [lo, lo + span),
    where specials and invalid ids live; it was masked as if maskable and the caller must check it.
    park bit i: token o+i is selected and needs a random id (it is left unchanged here).
    All lanes are computed with vector compares and selects: uint16 draws, uint32 ids."""
    _contiguous_1d("input_ids", ids, types.int32)
    _contiguous_1d("labels", lab, types.int32)
    _contiguous_1d("the hash buffer", u16, types.uint16)
    sig = types.uint64(ids, lab, u16, types.int64, types.uint16, types.uint16, types.uint16, types.int32, types.uint32, types.uint32)

    def codegen(context, builder, sig, args):
        n = _BLOCK
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vt = ir.VectorType(i32, n)

        def row_ptr(k: int, lanes: ir.VectorType) -> ir.Value:
            a = context.make_array(sig.args[k])(context, builder, args[k])
            return builder.bitcast(builder.gep(a.data, [args[3]]), lanes.as_pointer())

        p_ids, p_lab, p_u = row_ptr(0, vt), row_ptr(1, vt), row_ptr(2, ir.VectorType(ir.IntType(16), n))
        tok = builder.load(p_ids, align=4)
        u = builder.load(p_u, align=2)
        cand = builder.icmp_unsigned(">=", builder.sub(tok, _splat(builder, args[8], n)), _splat(builder, args[9], n))
        sel = builder.icmp_unsigned("<=", u, _splat(builder, args[4], n))
        below_mask = builder.icmp_unsigned("<", u, _splat(builder, args[5], n))
        below_rand = builder.icmp_unsigned("<", u, _splat(builder, args[6], n))
        park = builder.and_(builder.and_(sel, builder.not_(below_mask)), below_rand)
        builder.store(builder.select(sel, tok, _splat(builder, ir.Constant(i32, IGNORE_INDEX), n)), p_lab, align=4)
        builder.store(builder.select(builder.and_(sel, below_mask), _splat(builder, args[7], n), tok), p_ids, align=4)
        bits = ir.IntType(n)
        park64 = builder.zext(builder.bitcast(park, bits), i64)
        cand64 = builder.zext(builder.bitcast(cand, bits), i64)
        return builder.or_(park64, builder.shl(cand64, ir.Constant(i64, 32)))

    return sig, codegen


@intrinsic
def _flag_bits64(typingctx, flags, o):
    """Bit i set iff flags[o + i] (bool array, 64 entries from o): a vector compare, no branches."""
    if not (isinstance(flags, types.Array) and flags.ndim == 1 and flags.layout == "C" and flags.dtype == types.boolean):
        raise TypingError(f"mask_tokens: is_special must be a C-contiguous bool array, got {flags}")
    sig = types.uint64(flags, types.int64)

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        i8 = ir.IntType(8)
        vt = ir.VectorType(i8, 64)
        p = builder.bitcast(builder.gep(a.data, [args[1]]), vt.as_pointer())
        nz = builder.icmp_unsigned("!=", builder.load(p, align=1), ir.Constant(vt, [0] * 64))
        return builder.bitcast(nz, ir.IntType(64))

    return sig, codegen


@njit(cache=True, nogil=True)
def special_free_range(is_special: np.ndarray) -> tuple[np.int64, np.int64]:
    """(lo, hi): the longest run of consecutive non-special ids is [lo, hi) (the first if tied).

    Ids outside it are the only ones the kernel checks against is_special; with the usual layouts
    (specials at the start and/or end of the vocabulary) that is a few ids that text rarely uses."""
    V = is_special.shape[0]
    best_lo = np.int64(0)
    best_hi = np.int64(0)
    start = np.int64(0)  # first id after the last special seen
    for o in range(0, V - 63, 64):
        bits = _flag_bits64(is_special, o)  # specials are rare: most words are 0
        while bits:
            s = o + np.int64(trailing_zeros(bits))
            bits &= bits - np.uint64(1)
            if s - start > best_hi - best_lo:
                best_lo, best_hi = start, s
            start = s + 1
    for s in range(V - V % 64, V):
        if is_special[s]:
            if s - start > best_hi - best_lo:
                best_lo, best_hi = start, np.int64(s)
            start = np.int64(s + 1)
    if V - start > best_hi - best_lo:
        best_lo, best_hi = start, np.int64(V)
    return best_lo, best_hi


@njit(cache=True, nogil=True)
def free_range(is_special: np.ndarray) -> np.ndarray:
    """special_free_range(is_special) as int64[2] (lo, hi): computed once per vocabulary and
    passed to `mask_tokens` / `assemble` — scanning a 256k-id is_special costs ~4 µs, a tenth of
    masking an 8 x 8,192 batch. The kernels trust it: ids inside it are never looked up in
    is_special, so it must come from this function on the same is_special (they check only its
    ends, which catches a stale or shifted range but not one spanning a special id inside)."""
    lo, hi = special_free_range(is_special)
    out = np.empty(2, np.int64)
    out[0], out[1] = lo, hi
    return out


@njit(cache=True, nogil=True)
def _check_range(is_special: np.ndarray, rng: np.ndarray) -> None:
    """Refuse a range whose ends do not bound a special-free run of is_special (O(1), so only
    the ends: a range spanning a special id inside passes; free_range makes it right)."""
    V = is_special.shape[0]
    if rng.shape[0] != 2 or not (0 <= rng[0] <= rng[1] <= V) or (rng[0] > 0 and not is_special[rng[0] - 1]) or (
        rng[1] < V and not is_special[rng[1]]
    ) or (rng[1] > rng[0] and (is_special[rng[0]] or is_special[rng[1] - 1])):
        raise ValueError("special_range does not match is_special: pass free_range(is_special) of the same is_special")


@njit(cache=True, nogil=True)
def selection_thresholds(ratio: np.float64) -> tuple[np.uint64, np.uint64, np.uint64]:
    """(t_sel, t_mask, t_rand) for a mask ratio in [0, 1] and 16-bit draws u: u < t_mask -> [MASK],
    u < t_rand -> random id, u < t_sel -> unchanged. ratio * 2**16 is exact, so t_sel = ceil of it is too."""
    t_sel = np.uint64(np.ceil(ratio * _TWO16))
    return t_sel, (t_sel * np.uint64(4)) // np.uint64(5), (t_sel * np.uint64(9)) // np.uint64(10)


@njit(cache=True, nogil=True)
def pool_run(random_pool: np.ndarray) -> np.ndarray:
    """(k0, first id, length) of the longest run of consecutive ids in random_pool
    (random_pool[k0 + i] == first + i): the picks that land in it are computed, not read from the
    pool — a vocabulary-sized pool (1 MB for 256k ids) read at random misses the cache, ~20% of
    the masking time. Pass it with the pool to `mask_tokens` / `assemble`."""
    best_k, best_n = 0, 0
    k = 0
    R = random_pool.shape[0]
    while k < R:
        e = k + 1
        while e < R and random_pool[e] == random_pool[e - 1] + 1:
            e += 1
        if e - k > best_n:
            best_k, best_n = k, e - k
        k = e
    out = np.zeros(3, np.int64)
    if best_n > 0:
        out[0], out[1], out[2] = best_k, random_pool[best_k], best_n
    return out


@njit(cache=True, nogil=True)
def _check_run(random_pool: np.ndarray, run: np.ndarray) -> None:
    """A run that is not one of the pool's (O(1) ends check; pool_run makes it right)."""
    if run.shape[0] != 3 or run[2] < 0 or run[0] < 0 or run[0] + run[2] > random_pool.shape[0] or (
        run[2] > 0 and (random_pool[run[0]] != run[1] or random_pool[run[0] + run[2] - 1] != run[1] + run[2] - 1)
    ):
        raise ValueError("pool_run does not match random_pool: pass pool_run(random_pool)")


@intrinsic
def _popcount(typingctx, x):
    """Set bits of an integer (one POPCNT)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.ctpop(args[0])

    return x(x), codegen


@njit(cache=True, nogil=True)
def hash_words(L: np.int64) -> np.int64:
    """uint64 words of a row's quad hashes: one hash per four tokens."""
    return (L + 3) >> 2


@njit(cache=True, nogil=True)
def _position_words(L: np.int64) -> np.int64:
    """uint64 words holding int32 positions of a row: at most L, plus 4 written past the last."""
    return (L + 5) >> 1


@njit(cache=True, nogil=True)
def scratch_words(L: np.int64) -> np.int64:
    """uint64 words of scratch `_mask_row` needs for a row of L tokens: the quad hashes, then two
    lists of positions (tokens that get a random id; tokens whose id needs a look in is_special)."""
    return hash_words(L) + 2 * _position_words(L)


@njit(cache=True, nogil=True)
def _record(buf: np.ndarray, n: np.int64, o: np.int64, bits: np.uint32) -> np.int64:
    """Append o + i for each set bit i of `bits` to buf[n:]; returns the new length.

    With no branch on how many bits are set, which is random: a loop over the bits mispredicted
    about once a block (a block has no random-id token 38% of the time at ratio 0.3), a third of
    the masking time once the keys change from batch to batch. Four are written whatever the
    count (writes past it are overwritten later or unused; trailing_zeros(0) = 64 is defined);
    more than four (0.4% of blocks at ratio 0.3) loop."""
    c = np.int64(_popcount(bits))
    b = np.uint64(bits)
    buf[n] = o + trailing_zeros(b)
    b &= b - np.uint64(1)
    buf[n + 1] = o + trailing_zeros(b)
    b &= b - np.uint64(1)
    buf[n + 2] = o + trailing_zeros(b)
    b &= b - np.uint64(1)
    buf[n + 3] = o + trailing_zeros(b)
    b &= b - np.uint64(1)
    if c > 4:
        k = n + 4
        while b:
            buf[k] = o + trailing_zeros(b)
            b &= b - np.uint64(1)
            k += 1
    return n + c


@njit(cache=True, nogil=True)
def _pick(pick_key: np.uint64, j: np.int64, random_pool: np.ndarray, run: np.ndarray) -> np.int32:
    """The random replacement id of token j (multiply-shift maps 32 random bits onto the pool);
    `run` = pool_run(random_pool), so the value is random_pool[k] either way."""
    r = mix64(pick_key + np.uint64(j + 1) * _GOLDEN)
    k = np.int64(((r >> _S32) * np.uint64(random_pool.shape[0])) >> _S32)
    d = k - run[0]
    if d >= 0 and d < run[2]:
        return np.int32(run[1] + d)
    return random_pool[k]


@njit(cache=True, nogil=True)
def _mask_one(
    ids: np.ndarray, lab: np.ndarray, u16: np.ndarray, j: np.int64, is_special: np.ndarray, sel_max: np.uint16,
    t_mask: np.uint16, t_rand: np.uint16, mid: np.int32, pick_key: np.uint64, random_pool: np.ndarray, run: np.ndarray,
) -> bool:
    """The rule for token j alone (the module docstring); returns False if its id is outside [0, V)."""
    tok = ids[j]
    lab[j] = np.int32(IGNORE_INDEX)
    if np.uint32(tok) >= np.uint32(is_special.shape[0]):
        return False
    u = u16[j]
    if is_special[tok] or u > sel_max:
        return True
    lab[j] = tok
    if u < t_mask:
        ids[j] = mid
    elif u < t_rand:
        ids[j] = _pick(pick_key, j, random_pool, run)
    return True


@njit(cache=True, nogil=True)
def _mask_row(
    ids: np.ndarray, lab: np.ndarray, hbuf: np.ndarray, key: np.uint64, ratio: np.float64,
    is_special: np.ndarray, mid: np.int32, random_pool: np.ndarray, run: np.ndarray, lo: np.uint32, span: np.uint32,
) -> bool:
    """Mask one row in place and fill its labels; returns False if it holds an id outside [0, V)."""
    L = ids.shape[0]
    uV = np.uint32(is_special.shape[0])
    ok = True
    t_sel, t_mask64, t_rand64 = selection_thresholds(ratio)
    if t_sel == 0:  # ratio 0: nothing selected (and u <= t_sel - 1 below would wrap)
        for j in range(L):
            ok &= np.uint32(ids[j]) < np.uint32(is_special.shape[0])
            lab[j] = np.int32(IGNORE_INDEX)
        return ok
    sel_max = np.uint16(t_sel - np.uint64(1))  # u < t_sel <=> u <= t_sel - 1, which fits in 16 bits
    t_mask = np.uint16(t_mask64)
    t_rand = np.uint16(t_rand64)
    pick_key = mix64(key ^ PICK_TAG)
    nh = hash_words(L)
    for k in range(nh):  # vectorizes: 8 independent splitmix64 finalizers per register
        hbuf[k] = mix64(key + np.uint64(k + 1) * _GOLDEN)
    u16 = hbuf[:nh].view(np.uint16)  # u16[j] = u_j (little-endian)
    pw = _position_words(L)
    parked = hbuf[nh : nh + pw].view(np.int32)  # positions that get a random id, in order
    cands = hbuf[nh + pw : nh + 2 * pw].view(np.int32)  # positions whose id lies outside [lo, hi)
    n_parked = np.int64(0)
    n_cands = np.int64(0)
    full = L - L % _BLOCK
    for o in range(0, full, _BLOCK):
        r = _block(ids, lab, u16, o, sel_max, t_mask, t_rand, mid, lo, span)
        n_parked = _record(parked, n_parked, o, np.uint32(r & _LOW32))
        n_cands = _record(cands, n_cands, o, np.uint32(r >> _S32))
    # Candidates first: a special token was masked as if maskable; undo it (its label says it
    # was selected, so the parked loop below skips it). Selected tokens kept the original in lab.
    for i in range(n_cands):
        j = np.int64(cands[i])
        tok = lab[j] if u16[j] <= sel_max else ids[j]
        if np.uint32(tok) >= uV:
            ok = False
        elif is_special[tok]:
            lab[j] = np.int32(IGNORE_INDEX)
            ids[j] = tok
    for i in range(n_parked):  # a counted loop: its iterations' hashes overlap
        j = np.int64(parked[i])
        if lab[j] != np.int32(IGNORE_INDEX):  # not a special undone above
            ids[j] = _pick(pick_key, j, random_pool, run)
    for j in range(full, L):  # the last L % 32 tokens, one at a time
        ok &= _mask_one(ids, lab, u16, j, is_special, sel_max, t_mask, t_rand, mid, pick_key, random_pool, run)
    return ok


@njit(cache=True, nogil=True)
def _mask_rows(
    first: np.int64, step: np.int64, input_ids: np.ndarray, labels: np.ndarray, seq_keys: np.ndarray,
    mask_ratio: np.ndarray, is_special: np.ndarray, mid: np.int32, random_pool: np.ndarray, run: np.ndarray,
    lo: np.uint32, span: np.uint32, hbuf: np.ndarray, bad: np.ndarray,
) -> None:
    """Rows first, first + step, ...; bad[b] = whether row b holds an id outside [0, V)."""
    B = input_ids.shape[0]
    for b in range(first, B, step):
        bad[b] = not _mask_row(input_ids[b], labels[b], hbuf, seq_keys[b], mask_ratio[b], is_special, mid, random_pool,
                               run, lo, span)


@njit(cache=True, nogil=True)
def _raise_if_bad(bad: np.ndarray) -> None:
    """(A separate function: a reduction or a raise after the parallel loop in `mask_tokens`
    itself added ~1-2 µs to every call.)"""
    for b in range(bad.shape[0]):
        if bad[b]:
            raise ValueError("mask_tokens: a token id lies outside [0, len(is_special)); size is_special to the vocabulary")


@njit(cache=True, nogil=True, parallel=True)
def mask_tokens(
    input_ids: np.ndarray,  # int32[B, L] C-contiguous, masked in place
    labels: np.ndarray,  # int32[B, L] C-contiguous, fully written
    seq_keys: np.ndarray,  # uint64[B], sequence_key(seed, phase, g) of each row
    mask_ratio: np.ndarray,  # float64[B], in [0, 1]
    is_special: np.ndarray,  # bool[V], True for ids never masked (CLS/SEP/PAD/MASK/...)
    mask_id: np.int32,
    random_pool: np.ndarray,  # int32[R], the non-special ids a random replacement draws from
    pool_run: np.ndarray,  # int64[3], pool_run(random_pool)
    special_range: np.ndarray,  # int64[2], free_range(is_special): trusted (ends checked only)
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
    if R >= 2**31 or V >= 2**31:
        raise ValueError("mask_tokens: random_pool and is_special must hold fewer than 2**31 entries")
    _check_run(random_pool, pool_run)
    _check_range(is_special, special_range)
    for b in range(B):
        if not (0.0 <= mask_ratio[b] <= 1.0):
            raise ValueError("mask_tokens: mask_ratio must lie in [0, 1]")
    lo, hi = special_range[0], special_range[1]
    ulo = np.uint32(lo)
    span = np.uint32(hi - lo)
    mid = np.int32(mask_id)
    # Worker c masks rows c, c + n_work, ... with scratch row c; which thread runs a worker never
    # changes the bytes. n_work is fixed, not the thread count: numba.get_num_threads() in a
    # kernel would keep it out of the on-disk cache.
    n_work = min(B, _WORKERS)
    scratch = np.empty((n_work, scratch_words(L)), np.uint64)
    bad = np.empty(B, np.bool_)
    for c in prange(n_work):
        _mask_rows(c, n_work, input_ids, labels, seq_keys, mask_ratio, is_special, mid, random_pool, pool_run, ulo, span,
                   scratch[c], bad)
    _raise_if_bad(bad)


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
    mask_tokens(ids, labels, keys, ratios, special, np.int32(mask_id), pool, pool_run(pool), free_range(special))
    return ids, labels

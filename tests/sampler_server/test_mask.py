"""MLM masking kernel vs a plain-numpy twin; rates; special tokens; split and thread invariance."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampler_server.kernels.mask import IGNORE_INDEX, PICK_TAG, free_range, mask_batch, mask_tokens, pool_run, special_free_range
from sampler_server.kernels.rng import sequence_key, sequence_keys, token_hash

V = 5_000
MASK_ID = 4
SPECIAL_IDS = [0, 1, 2, 3, 4, 17, 4_999]  # PAD, CLS, SEP, UNK, MASK and two scattered ones
# The kernel checks is_special only for ids outside the longest special-free id range [lo, hi) and
# takes every other id as maskable without a lookup; these sets put that range in different places.
SPECIAL_SETS = {
    "scattered": SPECIAL_IDS,  # [18, 4999): both ends are candidates
    "low": [0, 1, 2, 3, 4, 63, 64, 130, 255],  # [256, V)
    "high": [0, 1, 2, 3, 4, 4_990, 4_998],  # XLM-R style <mask> at the end: [5, 4990)
    "middle": [4, 1_200, 1_201, 3_000],  # [1202, 3000): candidates are frequent on both sides
}
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def np_mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on uint64 arrays (numpy array arithmetic wraps mod 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def reference_mask(ids, keys, ratios, is_special, mask_id, pool):
    """The kernel's rule written with whole-array numpy operations; returns (new ids, labels)."""
    ids = np.asarray(ids, np.int32)
    B, L = ids.shape
    keys = keys.astype(np.uint64)[:, None]
    j = np.arange(L, dtype=np.uint64)
    # One hash per four tokens: token j takes the (j % 4)-th 16-bit quarter of quad j // 4's hash,
    # the lowest first.
    h = np_mix64(keys + (j // np.uint64(4) + np.uint64(1))[None, :] * GOLDEN)
    u = (h >> (np.uint64(16) * (j % np.uint64(4)))[None, :]) & np.uint64(0xFFFF)
    t_sel = np.ceil(ratios * 2.0**16).astype(np.uint64)[:, None]
    t_mask = t_sel * np.uint64(4) // np.uint64(5)
    t_rand = t_sel * np.uint64(9) // np.uint64(10)
    selected = (u < t_sel) & ~is_special[ids]
    labels = np.where(selected, ids, IGNORE_INDEX).astype(np.int32)
    # The random ids come from a second stream of the same form under key mix64(key ^ PICK_TAG).
    pick_keys = np_mix64(keys ^ PICK_TAG)
    r = np_mix64(pick_keys + (j + np.uint64(1))[None, :] * GOLDEN)
    pick = ((r >> np.uint64(32)) * np.uint64(pool.size)) >> np.uint64(32)
    out = ids.copy()
    out[selected & (u < t_mask)] = mask_id
    rnd = selected & (u >= t_mask) & (u < t_rand)
    out[rnd] = pool[pick[rnd].astype(np.int64)]
    return out, labels


def vocab_tables(v: int = V, specials=SPECIAL_IDS) -> tuple[np.ndarray, np.ndarray]:
    is_special = np.zeros(v, np.bool_)
    is_special[specials] = True
    return is_special, np.flatnonzero(~is_special).astype(np.int32)


def make_batch(B: int, L: int, seed: int, special_rate: float = 0.05, specials=SPECIAL_IDS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(B, L)).astype(np.int32)
    low = rng.random((B, L)) < 0.05
    ids[low] = rng.integers(0, 300, size=int(low.sum()))  # the low ids, where the bit words are
    sprinkle = rng.random((B, L)) < special_rate
    ids[sprinkle] = rng.choice(specials, size=int(sprinkle.sum()))
    ids[:, 0] = 1
    ids[:, -1] = 2
    return ids


def keys_for(seed: int, phase: int, gs) -> np.ndarray:
    return np.array([sequence_key(seed, phase, int(g)) for g in gs], np.uint64)


def run_kernel(ids, keys, ratios, is_special, pool, mask_id=MASK_ID, run=None, free=None):
    out = np.array(ids, np.int32, copy=True)
    labels = np.full(out.shape, 12345, np.int32)  # garbage: the kernel must write every label
    run = pool_run(pool) if run is None else run
    free = free_range(is_special) if free is None else free
    mask_tokens(out, labels, keys, np.asarray(ratios, np.float64), is_special, np.int32(mask_id), pool, run, free)
    return out, labels


def test_pool_run_is_the_longest_run_of_consecutive_ids():
    assert pool_run(np.array([3, 4, 5, 9, 10, 11, 12, 20], np.int32)).tolist() == [3, 9, 4]
    assert pool_run(np.array([7], np.int32)).tolist() == [0, 7, 1]
    assert pool_run(np.array([5, 3, 1], np.int32)).tolist() == [0, 5, 1]  # decreasing: runs of one
    rng = np.random.default_rng(4)
    for _ in range(50):
        pool = np.unique(rng.integers(0, 400, rng.integers(1, 300))).astype(np.int32)
        if rng.random() < 0.5:
            rng.shuffle(pool)
        k0, first, n = pool_run(pool).tolist()
        assert np.array_equal(pool[k0 : k0 + n], np.arange(first, first + n))
        steps = np.flatnonzero(np.diff(pool) != 1)  # run boundaries
        longest = np.diff(np.concatenate(([-1], steps, [pool.size - 1]))).max()
        assert n == longest


def test_the_computed_run_picks_what_the_pool_holds():
    # Random ids come from the run arithmetic where it covers the pick, else from the pool: the
    # same bytes as reading the pool for every pick (run length 0), for pools with gaps.
    is_special, full = vocab_tables(specials=SPECIAL_SETS["scattered"])
    B, L = 16, 300
    ids = make_batch(B, L, seed=2)
    keys = keys_for(1, 0, range(B))
    for pool in (full, full[::2], np.concatenate((full[100:], full[:100]))):
        pool = np.ascontiguousarray(pool)
        with_run = run_kernel(ids, keys, np.full(B, 1.0), is_special, pool)
        without = run_kernel(ids, keys, np.full(B, 1.0), is_special, pool, run=np.zeros(3, np.int64))
        assert all(np.array_equal(a, b) for a, b in zip(with_run, without))
        assert all(np.array_equal(a, b) for a, b in zip(with_run, reference_mask(ids, keys, np.full(B, 1.0), is_special, MASK_ID, pool)))
    with pytest.raises(ValueError, match="pool_run does not match"):
        run_kernel(ids, keys, np.full(B, 0.3), is_special, full, run=np.array([0, full[0] + 1, 5], np.int64))


def test_token_hash_is_the_documented_formula() -> None:
    key = sequence_key(3, 1, 77)
    for j in (0, 1, 1000):
        x = (int(key) + (j + 1) * int(GOLDEN)) % 2**64
        want = np_mix64(np.array([x], np.uint64))[0]
        assert token_hash(key, j) == want


def test_sequence_keys_differ_and_accept_big_seeds() -> None:
    keys = {int(sequence_key(s, p, g)) for s in (0, 1, 2**64 + 1) for p in (0, 1, 2) for g in range(200)}
    assert len(keys) == 2 * 3 * 200  # seed 2**64 + 1 is seed 1 mod 2**64
    assert sequence_key(2**64 + 1, 2, 5) == sequence_key(1, 2, 5)
    with pytest.raises(ValueError, match="g"):
        sequence_key(0, 0, -1)
    gs = np.arange(10**9, 10**9 + 50, dtype=np.int64)
    out = np.empty(gs.size, np.uint64)
    sequence_keys(np.uint64(7), np.uint64(2), gs, out)
    np.testing.assert_array_equal(out, keys_for(7, 2, gs))


@pytest.mark.parametrize("specials", sorted(SPECIAL_SETS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernel_matches_numpy_reference(seed: int, specials: str) -> None:
    is_special, pool = vocab_tables(specials=SPECIAL_SETS[specials])
    B, L = 37, 513
    ids = make_batch(B, L, seed, specials=SPECIAL_SETS[specials])
    ratios = np.random.default_rng(seed).choice([0.0, 0.05, 0.15, 0.3, 0.5, 1.0], size=B)
    keys = keys_for(seed, 0, range(B))
    got_ids, got_labels = run_kernel(ids, keys, ratios, is_special, pool)
    want_ids, want_labels = reference_mask(ids, keys, ratios, is_special, MASK_ID, pool)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_labels, want_labels)


@pytest.mark.parametrize("specials", sorted(SPECIAL_SETS))
def test_blocks_with_many_random_ids_and_specials_match_reference(specials: str) -> None:
    """The kernel records each 32-token block's random-id and special positions with four
    unconditional writes and loops only past four: drive both lists past four in many blocks."""
    is_special, pool = vocab_tables(specials=SPECIAL_SETS[specials])
    B, L = 64, 1024
    ids = make_batch(B, L, seed=11, special_rate=0.3, specials=SPECIAL_SETS[specials])
    keys = keys_for(11, 1, range(B))
    ratios = np.full(B, 1.0)  # a tenth of the tokens get a random id: ~3 per block
    got_ids, got_labels = run_kernel(ids, keys, ratios, is_special, pool)
    want_ids, want_labels = reference_mask(ids, keys, ratios, is_special, MASK_ID, pool)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_labels, want_labels)
    blocks = (slice(None), slice(0, L - L % 32))
    per_block = lambda m: m[blocks].reshape(B, -1, 32).sum(axis=2)  # noqa: E731
    randomized = (want_labels != IGNORE_INDEX) & (want_ids != MASK_ID) & (want_ids != ids)
    assert (per_block(randomized) > 4).sum() > 100
    assert (per_block(is_special[ids]) > 4).sum() > 100


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 6),
    L=st.integers(1, 300),
    ratio=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**63),
    pool_size=st.integers(1, 50),
    specials=st.sampled_from(sorted(SPECIAL_SETS)),
)
def test_property_matches_numpy_reference(
    B: int, L: int, ratio: float, seed: int, pool_size: int, specials: str
) -> None:
    is_special, full_pool = vocab_tables(specials=SPECIAL_SETS[specials])
    pool = full_pool[:pool_size]
    ids = make_batch(B, L, seed % 1000, special_rate=0.2, specials=SPECIAL_SETS[specials])
    keys = keys_for(seed, 1, range(B))
    ratios = np.full(B, ratio)
    got = run_kernel(ids, keys, ratios, is_special, pool)
    want = reference_mask(ids, keys, ratios, is_special, MASK_ID, pool)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.fixture(scope="module")
def big_run() -> dict[str, np.ndarray]:
    """4,096 x 1,024 tokens, no specials except CLS/SEP: 4.19e6 maskable tokens at ratio 0.3."""
    is_special, pool = vocab_tables()
    B, L = 4_096, 1_024
    ids = make_batch(B, L, seed=9, special_rate=0.0)
    keys = keys_for(42, 0, range(B))
    out, labels = run_kernel(ids, keys, np.full(B, 0.3), is_special, pool)
    return {"ids": ids, "out": out, "labels": labels, "is_special": is_special}


def test_mask_rate_and_80_10_10(big_run) -> None:
    ids, out, labels, is_special = big_run["ids"], big_run["out"], big_run["labels"], big_run["is_special"]
    maskable = ~is_special[ids]
    n = int(maskable.sum())
    assert n >= 4_000_000
    selected = labels != IGNORE_INDEX
    rate = selected.sum() / n
    # Binomial sigma of the rate: sqrt(0.3 * 0.7 / 4.1e6) = 0.023 points, so 0.1 points is > 4 sigma.
    assert abs(rate - 0.3) < 0.001
    m = int(selected.sum())
    to_mask = np.mean(out[selected] == MASK_ID)
    changed = out[selected] != ids[selected]
    to_random = np.mean(changed & (out[selected] != MASK_ID))
    # sigma of each share over 1.2e6 selected tokens <= 0.04 points; 0.5 points is > 10 sigma.
    # (A random replacement that draws the original id counts as unchanged: rate 1/|pool|.)
    assert m > 1_000_000
    assert abs(to_mask - 0.8) < 0.005
    assert abs(to_random - 0.1) < 0.005
    assert abs((1.0 - to_mask - to_random) - 0.1) < 0.005


def test_labels_are_the_original_at_masked_positions(big_run) -> None:
    ids, out, labels = big_run["ids"], big_run["out"], big_run["labels"]
    selected = labels != IGNORE_INDEX
    np.testing.assert_array_equal(labels[selected], ids[selected])
    np.testing.assert_array_equal(out[~selected], ids[~selected])
    assert set(np.unique(labels)) <= set(np.unique(ids)) | {IGNORE_INDEX}


def test_mask_rate_per_row_ratio() -> None:
    is_special, pool = vocab_tables()
    B, L = 3_000, 1_024
    ids = make_batch(B, L, seed=5, special_rate=0.0)
    ratios = np.tile([0.05, 0.15, 0.5], B // 3)
    _, labels = run_kernel(ids, keys_for(7, 2, range(B)), ratios, is_special, pool)
    maskable = ~is_special[ids]
    for r in (0.05, 0.15, 0.5):
        rows = ratios == r
        rate = (labels[rows] != IGNORE_INDEX).sum() / maskable[rows].sum()
        # 1e6 tokens per ratio: sigma <= 0.05 points.
        assert abs(rate - r) < 0.003, (r, rate)


@pytest.mark.parametrize("specials", sorted(SPECIAL_SETS))
def test_special_tokens_never_masked_or_changed(specials: str) -> None:
    is_special, pool = vocab_tables(specials=SPECIAL_SETS[specials])
    B, L = 200, 512
    ids = make_batch(B, L, seed=3, special_rate=0.4, specials=SPECIAL_SETS[specials])
    out, labels = run_kernel(ids, keys_for(0, 0, range(B)), np.full(B, 1.0), is_special, pool)
    special = is_special[ids]
    np.testing.assert_array_equal(out[special], ids[special])
    assert (labels[special] == IGNORE_INDEX).all()
    # At ratio 1 every other token is selected, and no random replacement is ever special.
    assert (labels[~special] == ids[~special]).all()
    replaced = ~special & (out != ids) & (out != MASK_ID)
    assert replaced.any() and not is_special[out[replaced]].any()


@pytest.mark.parametrize("V_", [1, 5, 63, 64, 65, 200, 5_000])
def test_special_free_range(V_: int) -> None:
    rng = np.random.default_rng(V_)
    for rate in (0.0, 0.02, 0.3, 1.0):
        is_special = rng.random(V_) < rate
        lo, hi = special_free_range(is_special)
        # Brute force: the first longest run of non-special ids.
        best = (0, 0)
        for a in range(V_ + 1):
            b = a
            while b < V_ and not is_special[b]:
                b += 1
            if b - a > best[1] - best[0]:
                best = (a, b)
        assert (lo, hi) == best or (best == (0, 0) and hi == lo)
        assert not is_special[lo:hi].any()


def test_a_range_that_is_not_the_vocabularys_is_refused() -> None:
    # free_range(is_special) is passed in (computed once per vocabulary) and trusted; the kernel
    # checks its ends in O(1), which refuses a shifted or stale range (not one that spans a
    # special id inside: only free_range of the same is_special is right).
    is_special, pool = vocab_tables(specials=SPECIAL_SETS["scattered"])
    ids = make_batch(4, 64, seed=1)
    keys = keys_for(0, 0, range(4))
    good = free_range(is_special)
    assert tuple(good) == special_free_range(is_special)
    lo, hi = good.tolist()
    for bad in ([lo, hi + 1], [lo - 1, hi], [lo + 1, hi], [lo, hi - 1], [hi, lo], [0, is_special.size + 1]):
        with pytest.raises(ValueError, match="special_range does not match"):
            run_kernel(ids, keys, np.full(4, 0.3), is_special, pool, free=np.array(bad, np.int64))


def test_ratio_zero_masks_nothing() -> None:
    is_special, pool = vocab_tables()
    ids = make_batch(16, 256, seed=1)
    out, labels = run_kernel(ids, keys_for(0, 0, range(16)), np.zeros(16), is_special, pool)
    np.testing.assert_array_equal(out, ids)
    assert (labels == IGNORE_INDEX).all()


def test_independent_of_batch_split() -> None:
    is_special, pool = vocab_tables()
    B, L = 96, 700
    ids = make_batch(B, L, seed=4)
    keys = keys_for(5, 1, range(1000, 1000 + B))
    ratios = np.full(B, 0.3)
    whole = run_kernel(ids, keys, ratios, is_special, pool)
    cuts = [0, 1, 7, 40, 41, 95, 96]
    for a, b in zip(cuts[:-1], cuts[1:]):
        part = run_kernel(ids[a:b], keys[a:b], ratios[a:b], is_special, pool)
        np.testing.assert_array_equal(part[0], whole[0][a:b])
        np.testing.assert_array_equal(part[1], whole[1][a:b])
    # A permuted batch (rows carry their own keys) gives the permuted result.
    perm = np.random.default_rng(0).permutation(B)
    shuffled = run_kernel(ids[perm], keys[perm], ratios[perm], is_special, pool)
    np.testing.assert_array_equal(shuffled[0], whole[0][perm])


def test_independent_of_thread_count() -> None:
    is_special, pool = vocab_tables()
    B, L = 64, 1_024
    ids = make_batch(B, L, seed=8)
    keys = keys_for(1, 0, range(B))
    before = numba.get_num_threads()
    try:
        results = []
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            results.append(run_kernel(ids, keys, np.full(B, 0.3), is_special, pool))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_different_seeds_differ() -> None:
    is_special, pool = vocab_tables()
    B, L = 8, 1_024
    ids = make_batch(B, L, seed=2)
    a = run_kernel(ids, keys_for(0, 0, range(B)), np.full(B, 0.3), is_special, pool)
    b = run_kernel(ids, keys_for(1, 0, range(B)), np.full(B, 0.3), is_special, pool)
    c = run_kernel(ids, keys_for(0, 1, range(B)), np.full(B, 0.3), is_special, pool)
    for other in (b, c):
        agree = np.mean((a[1] != IGNORE_INDEX) == (other[1] != IGNORE_INDEX))
        # Independent 30% selections agree on 0.7^2 + 0.3^2 = 58% of tokens.
        assert agree < 0.65
    # And two rows of one batch with the same tokens get different masks.
    same = np.tile(ids[:1], (2, 1))
    _, labels = run_kernel(same, keys_for(0, 0, [0, 1]), np.full(2, 0.3), is_special, pool)
    assert not np.array_equal(labels[0], labels[1])


def test_mask_batch_wrapper() -> None:
    is_special, pool = vocab_tables()
    ids = make_batch(4, 128, seed=6)
    keys = keys_for(0, 0, range(4))
    out, labels = mask_batch(ids, keys, 0.3, is_special, MASK_ID)
    want = reference_mask(ids, keys, np.full(4, 0.3), is_special, MASK_ID, pool)
    np.testing.assert_array_equal(out, want[0])
    np.testing.assert_array_equal(labels, want[1])
    assert not np.array_equal(out, ids)  # a copy was masked, the input is untouched
    np.testing.assert_array_equal(ids, make_batch(4, 128, seed=6))


def test_invalid_inputs_raise() -> None:
    is_special, pool = vocab_tables()
    ids = make_batch(4, 64, seed=0)
    keys = keys_for(0, 0, range(4))
    bad = ids.copy()
    bad[2, 5] = V
    with pytest.raises(ValueError, match="outside"):
        run_kernel(bad, keys, np.full(4, 0.3), is_special, pool)
    bad[2, 5] = -7
    with pytest.raises(ValueError, match="outside"):
        run_kernel(bad, keys, np.full(4, 0.3), is_special, pool)
    with pytest.raises(ValueError, match="mask_ratio"):
        run_kernel(ids, keys, np.array([0.3, 0.3, 1.5, 0.3]), is_special, pool)
    with pytest.raises(ValueError, match="random_pool"):
        run_kernel(ids, keys, np.full(4, 0.3), is_special, pool[:0])
    with pytest.raises(ValueError, match="seq_keys"):
        run_kernel(ids, keys[:3], np.full(4, 0.3), is_special, pool)


@pytest.mark.parametrize("value", [-100, -1, V, 2**31 - 1])
def test_invalid_id_raises_wherever_it_is(value: int) -> None:
    """An invalid id raises in a vector block or in the tail, selected ([MASK]ed) or not."""
    is_special, pool = vocab_tables()
    ids = make_batch(2, 70, seed=11)  # blocks at 0 and 32, then a 6-token tail
    keys = keys_for(0, 0, range(2))
    for pos in (5, 33, 66):
        for ratio in (0.0, 1.0):  # at ratio 1 every token is selected, most are [MASK]ed
            bad = ids.copy()
            bad[1, pos] = value
            with pytest.raises(ValueError, match="outside"):
                run_kernel(bad, keys, np.full(2, ratio), is_special, pool)


# The bytes of each masking rule version, pinned. When this fails the rule changed: masks of a
# running job would change under the same run id, so bump MASK_RULE_VERSION (it is hashed into
# the run id) and add the new version's digest here.
RULE_DIGESTS = {2: "a663d60f8d2bb6d120d3f8a62dd3697a036c0df6c3f185af441a672795f9507e"}


def test_the_masking_rule_is_pinned_to_its_version():
    import hashlib

    from sampler_server.kernels.mask import MASK_RULE_VERSION

    rng = np.random.default_rng(9)
    ids = rng.integers(0, 1000, (6, 37)).astype(np.int32)  # 37: neither a multiple of 4 nor of 32
    is_special = np.zeros(1000, np.bool_)
    is_special[[0, 1, 2, 3, 4, 500]] = True
    keys = np.array([sequence_key(5, 1, g) for g in range(6)], np.uint64)
    out, lab = mask_batch(ids, keys, np.array([0.0, 2**-16, 0.05, 0.3, 0.999, 1.0]), is_special, 4)
    assert MASK_RULE_VERSION in RULE_DIGESTS, "a new MASK_RULE_VERSION needs its digest here"
    assert hashlib.sha256(out.tobytes() + lab.tobytes()).hexdigest() == RULE_DIGESTS[MASK_RULE_VERSION]

"""Blend kernel vs a slow reference twin; the Tijdeman bound; random access through checkpoints."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampler_server.kernels.blend import BlendIndex, blend_run


def reference_blend(weights: np.ndarray, counts0: np.ndarray, n: int,
                    excess: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Earliest-deadline-first by an O(K) scan per position (the kernel must match it exactly).

    Same window formulas as the kernel, in the same IEEE order: language i's next occurrence
    (number c_i + 1) may go at integer times ceil((c_i + e_i + delta) / p_i) ..
    floor((c_i + e_i + 1 - delta) / p_i + 1), e the excess the piece starts with.
    Returns (languages of the n positions, final counts)."""
    p = np.asarray(weights, np.float64)
    K = p.size
    e = np.zeros(K) if excess is None else np.asarray(excess, np.float64)
    c = np.array(counts0, np.int64)
    out = np.empty(n, np.int32)
    if K == 1:
        out[:] = 0
        c[0] += n
        return out, c
    delta = 1.0 / (2.0 * K - 2.0)
    one_minus_delta = 1.0 - delta
    # Times at or past the kernel's packing limit are all taken as the limit (see blend_run).
    limit = float(2 ** (62 - max(1, math.ceil(math.log2(K)))))
    opens = np.clip(np.ceil((c + e + delta) / p), -limit, limit).astype(np.int64)
    due = np.clip(np.floor((c + e + one_minus_delta) / p + 1.0), -limit, limit).astype(np.int64)
    big = np.iinfo(np.int64).max
    t0 = int(c.sum())
    for s in range(n):
        t = t0 + 1 + s
        is_open = opens <= t
        if is_open.any():
            i = int(np.argmin(np.where(is_open, due, big)))  # argmin returns the lowest index on ties
        else:
            i = int(np.argmin(opens))
        out[s] = i
        c[i] += 1
        opens[i] = int(min(np.ceil((float(c[i]) + e[i] + delta) / p[i]), limit))
        due[i] = int(min(np.floor((float(c[i]) + e[i] + one_minus_delta) / p[i] + 1.0), limit))
    return out, c


def max_discrepancy(weights: np.ndarray, langs: np.ndarray, counts0: np.ndarray | None = None) -> float:
    """max over prefixes t and languages i of |c_i(t) - p_i t| for a run starting at counts0.

    c_i - p_i t peaks right at an occurrence and p_i t - c_i right before one (or at the end), so
    checking those times covers every prefix."""
    p = np.asarray(weights, np.float64)
    K = p.size
    c0 = np.zeros(K, np.int64) if counts0 is None else np.asarray(counts0, np.int64)
    t0 = int(c0.sum())
    n = langs.size
    order = np.argsort(langs, kind="stable")
    bounds = np.searchsorted(langs[order], np.arange(K + 1))
    worst = 0.0
    for i in range(K):
        times = t0 + order[bounds[i] : bounds[i + 1]].astype(np.float64) + 1.0
        k = c0[i] + np.arange(1, times.size + 1, dtype=np.float64)
        worst = max(worst, float(np.max(k - p[i] * times, initial=-np.inf)))
        worst = max(worst, float(np.max(p[i] * (times - 1.0) - (k - 1.0), initial=-np.inf)))
        worst = max(worst, float(p[i] * (t0 + n) - (c0[i] + times.size)))
        if t0 > 0:
            worst = max(worst, float(abs(c0[i] - p[i] * t0)))
    return worst


def run(weights: np.ndarray, n: int, counts0: np.ndarray | None = None,
        excess: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """The kernel on a copy of counts0; returns (languages, final counts, fallbacks)."""
    c = np.zeros(len(weights), np.int64) if counts0 is None else np.array(counts0, np.int64)
    e = np.zeros(len(weights)) if excess is None else np.asarray(excess, np.float64)
    out = np.empty(n, np.int32)
    fallbacks = blend_run(np.asarray(weights, np.float64), e, c, int(c.sum()), n, out)
    return out, c, int(fallbacks)


def phase_run(pieces: list[tuple[np.ndarray, np.ndarray, int]], n_languages: int) -> tuple[np.ndarray, float, int]:
    """A phase blended in pieces (language indices, weights, length), each continuing from the
    phase's counts and targets as the sampler chains them. Returns (global languages, the
    largest |count - cumulative target| over every prefix and language, fallbacks)."""
    counts, target = np.zeros(n_languages, np.int64), np.zeros(n_languages)
    out, worst, fallbacks = [], 0.0, 0
    for lang, w, n in pieces:
        local, c, fb = run(w, n, excess=counts[lang] - target[lang])
        fallbacks += fb
        glob = lang[local]
        # Deviations over the piece, position by position (pieces are short in these tests).
        hits = np.zeros((n, n_languages))
        hits[np.arange(n), glob] = 1.0
        dev = counts + np.cumsum(hits, axis=0) - (target + np.outer(np.arange(1, n + 1), np.bincount(lang, w, n_languages)))
        worst = max(worst, float(np.abs(dev).max()))
        counts[lang] += c
        target[lang] += w * n
        out.append(glob)
    return np.concatenate(out), worst, fallbacks


def bound(K: int) -> float:
    return 1.0 - 1.0 / (2 * K - 2) if K > 1 else 0.0


def tolerance(t_max: int) -> float:
    # p_i * t in float64 carries a relative error ~1e-16, so allow 1e-9 plus that at large t.
    return 1e-9 + 4e-16 * t_max


def dirichlet(K: int, seed: int, alpha: float = 1.0) -> np.ndarray:
    w = np.random.default_rng(seed).dirichlet(np.full(K, alpha))
    w = np.maximum(w, 1e-12)
    return w / w.sum()


def tails(K: int, tail: float) -> np.ndarray:
    w = np.full(K, tail)
    w[0] = 1.0 - tail * (K - 1)
    return w


WEIGHTS = {
    "k2": dirichlet(2, 1),
    "k3": dirichlet(3, 2),
    "k17": dirichlet(17, 3),
    "k17_sparse": dirichlet(17, 4, alpha=0.2),
    "k200": dirichlet(200, 5),
    "extreme_3": np.array([0.9, 0.05, 0.05]),
    "tails_1e-6": tails(6, 1e-6),
    "two_tails": np.array([0.5 - 1e-6, 0.5 - 1e-6, 1e-6, 1e-6]),
    "uniform_5": np.full(5, 0.2),
}


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_kernel_matches_reference(name: str) -> None:
    w = WEIGHTS[name]
    n = 50_000
    got, counts, fallbacks = run(w, n)
    want, want_counts = reference_blend(w, np.zeros(w.size, np.int64), n)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(counts, want_counts)
    assert fallbacks == 0


@pytest.mark.parametrize("name", ["k3", "k17", "k200", "tails_1e-6"])
def test_kernel_matches_reference_after_restart(name: str) -> None:
    # Restarting from the counts of a prefix is the kernel's whole random-access contract.
    w = WEIGHTS[name]
    prefix, _, _ = run(w, 12_345)
    c0 = np.bincount(prefix, minlength=w.size).astype(np.int64)
    got, _, _ = run(w, 5_000, c0)
    want, _ = reference_blend(w, c0, 5_000)
    np.testing.assert_array_equal(got, want)
    whole, _, _ = run(w, 12_345 + 5_000)
    np.testing.assert_array_equal(got, whole[12_345:])


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_every_prefix_within_tijdeman_bound(name: str) -> None:
    w = WEIGHTS[name]
    n = 200_000
    langs, counts, fallbacks = run(w, n)
    assert fallbacks == 0
    assert counts.sum() == n
    assert max_discrepancy(w, langs) <= bound(w.size) + tolerance(n)


def test_bound_at_mmbert_scale() -> None:
    # 1,833 languages with tau-annealed power-law weights, as in mmBERT's decay phase.
    sizes = np.random.default_rng(7).pareto(0.8, 1833) + 1.0
    w = sizes**0.3 / np.sum(sizes**0.3)
    n = 300_000
    langs, _, fallbacks = run(w, n)
    assert fallbacks == 0
    assert max_discrepancy(w, langs) <= bound(w.size) + tolerance(n)


def test_k1_is_trivial() -> None:
    langs, counts, _ = run(np.array([1.0]), 100)
    assert (langs == 0).all() and counts[0] == 100
    idx = BlendIndex(np.array([1.0]), chunk=16)
    assert idx.counts_at(1000)[0] == 1000
    assert (idx.languages(999, 5) == 0).all()


def test_far_offsets_match_a_run_from_zero() -> None:
    w = WEIGHTS["k17"]
    g = 10_000_000
    full, _, fallbacks = run(w, g + 2_000)
    assert fallbacks == 0
    idx = BlendIndex(w, chunk=1 << 16)
    got = idx.languages(g - 1_000, 3_000)
    np.testing.assert_array_equal(got, full[g - 1_000 : g + 2_000])
    np.testing.assert_array_equal(idx.counts_at(g), np.bincount(full[:g], minlength=w.size))
    # The bound at the far window, measured from the checkpointed counts.
    base = idx.counts_at(g - 1_000)
    assert max_discrepancy(w, got, base) <= bound(w.size) + tolerance(g + 2_000)


@pytest.mark.parametrize("name", ["k200", "tails_1e-6"])
def test_bound_at_random_far_offsets(name: str) -> None:
    w = WEIGHTS[name]
    idx = BlendIndex(w, chunk=1 << 16)
    rng = np.random.default_rng(11)
    for g in sorted(rng.integers(1_000_000, 12_000_000, size=4)):
        base = idx.counts_at(int(g))
        assert base.sum() == g
        langs = idx.languages(int(g), 20_000)
        assert max_discrepancy(w, langs, base) <= bound(w.size) + tolerance(int(g) + 20_000)


def test_languages_equals_slices_of_a_run_from_zero() -> None:
    w = WEIGHTS["k17_sparse"]
    full, _, _ = run(w, 50_000)
    idx = BlendIndex(w, chunk=1_000)
    rng = np.random.default_rng(3)
    cases = [(0, 0), (0, 1), (0, 1_000), (999, 2), (1_000, 1_000), (48_000, 2_000)]
    cases += [(int(s), int(rng.integers(0, 3_000))) for s in rng.integers(0, 47_000, size=40)]
    for start, n in cases:
        got = idx.languages(start, n)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, full[start : start + n], err_msg=f"start={start} n={n}")


def test_counts_at_is_consistent() -> None:
    w = WEIGHTS["k200"]
    full, _, _ = run(w, 30_000)
    idx = BlendIndex(w, chunk=4_096)
    for g in [0, 1, 4_095, 4_096, 4_097, 12_345, 30_000]:
        c = idx.counts_at(g)
        assert c.dtype == np.int64 and c.sum() == g
        np.testing.assert_array_equal(c, np.bincount(full[:g], minlength=w.size))
    # A returned array is the caller's: mutating it leaves the index intact.
    idx.counts_at(8_192)[:] = -1
    np.testing.assert_array_equal(idx.counts_at(8_192), np.bincount(full[:8_192], minlength=w.size))


def test_checkpoints_are_built_lazily_from_the_nearest_below() -> None:
    idx = BlendIndex(WEIGHTS["k3"], chunk=100)
    idx.counts_at(550)
    assert sorted(idx._checkpoints) == [0, 1, 2, 3, 4, 5]
    idx.languages(120, 10)
    assert sorted(idx._checkpoints) == [0, 1, 2, 3, 4, 5]


def test_slices_continue_from_recent_ends_with_the_same_result() -> None:
    # Consecutive slices (a trainer's steps, ranks of one step) start where an earlier one ended;
    # the walk then starts from the remembered counts, and the answers must not change.
    w = WEIGHTS["k17_sparse"]
    full, _, _ = run(w, 60_000)
    idx = BlendIndex(w, chunk=5_000)
    start = 1_234
    for n in [7, 300, 1, 4_096, 2_500, 9_000, 0, 33]:
        before, got = idx.slice(start, n)
        np.testing.assert_array_equal(got, full[start : start + n], err_msg=f"start={start} n={n}")
        np.testing.assert_array_equal(before, np.bincount(full[:start], minlength=w.size))
        assert start + n in idx._recent or (start + n) % idx.chunk == 0
        start += n
    # Bounded: older ends are forgotten; lookups between them still come out right.
    for s in range(40_000, 40_000 + 3 * BlendIndex.RECENT):
        idx.slice(s, 1)
    assert len(idx._recent) == BlendIndex.RECENT
    for g in [40_050, 40_000 + 3 * BlendIndex.RECENT, 1_241, 59_999]:
        np.testing.assert_array_equal(idx.counts_at(g), np.bincount(full[:g], minlength=w.size))
        np.testing.assert_array_equal(idx.languages(g, 1), full[g : g + 1])


def test_concurrent_access_from_a_thread_pool() -> None:
    w = WEIGHTS["k17"]
    full, _, _ = run(w, 400_000)
    starts = np.random.default_rng(5).integers(0, 390_000, size=64)
    idx = BlendIndex(w, chunk=8_192)
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda s: idx.languages(int(s), 10_000), starts))
    for s, g in zip(starts, got):
        np.testing.assert_array_equal(g, full[s : s + 10_000])


def test_greedy_largest_deficit_rules_break_the_unit_bound() -> None:
    """Why EDF: argmax(p_i (t+1) - c_i) exceeds 1 on these weights (found by a Dirichlet
    search), and Megatron's argmax(p_i t - c_i) does on 0.9/0.05/0.05; EDF stays within 1 - delta."""

    def greedy(p: np.ndarray, n: int, shift: int) -> np.ndarray:
        c = np.zeros(p.size)
        out = np.empty(n, np.int32)
        for t in range(n):
            i = int(np.argmax(p * max(t + shift, 1) - c))
            out[t] = i
            c[i] += 1
        return out

    w = np.array([0.0162886, 0.07522868, 0.4645582, 0.00748073, 0.41759933, 0.01536339, 0.00348107])
    w /= w.sum()
    assert max_discrepancy(w, greedy(w, 3_000, shift=1)) > 1.03
    ours, _, _ = run(w, 3_000)
    assert max_discrepancy(w, ours) <= bound(w.size) + 1e-9

    w = np.array([0.9, 0.05, 0.05])
    assert max_discrepancy(w, greedy(w, 3_000, shift=0)) > 1.15
    ours, _, _ = run(w, 3_000)
    assert max_discrepancy(w, ours) <= bound(w.size) + 1e-9


@settings(max_examples=60, deadline=None)
@given(
    raw=st.lists(st.floats(min_value=1e-4, max_value=1.0), min_size=2, max_size=12),
    n=st.integers(min_value=1, max_value=1_500),
    split=st.integers(min_value=0, max_value=1_500),
)
def test_property_matches_reference_and_bound(raw: list[float], n: int, split: int) -> None:
    w = np.array(raw) / np.sum(raw)
    split = min(split, n)
    got, _, fallbacks = run(w, n)
    want, _ = reference_blend(w, np.zeros(w.size, np.int64), n)
    np.testing.assert_array_equal(got, want)
    assert fallbacks == 0
    assert max_discrepancy(w, got) <= bound(w.size) + 1e-9
    head, c, _ = run(w, split)
    tail, _, _ = run(w, n - split, c)
    np.testing.assert_array_equal(np.concatenate([head, tail]), got)


@pytest.mark.parametrize("tiny", [1e-12, 1e-17, 1e-300, 5e-324])
def test_vanishing_shares_blend_and_never_come_up(tiny: float) -> None:
    # Such shares used to make the kernel raise (a deadline past its packed keys) -- every batch
    # of a phase amended with a multiplier of 1e-12 beside 1e6 was a 500 -- or, past int64,
    # convert to garbage times. A share this small must simply never come up within any run.
    with np.errstate(divide="ignore", over="ignore"):
        for K in (2, 3, 40, 1833):
            w = np.full(K, 1.0 / (K - 1))
            w[K // 2] = tiny
            w /= w.sum()
            assert w[K // 2] > 0
            n = 20_000
            got, counts, fallbacks = run(w, n)
            want, want_counts = reference_blend(w, np.zeros(K, np.int64), n)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(counts, want_counts)
            assert fallbacks == 0 and counts[K // 2] == 0
            assert max_discrepancy(w, got) <= bound(K) + tolerance(n)
            # Far into a segment (random access through checkpoints) it still never comes up.
            idx = BlendIndex(w, chunk=1 << 12)
            far = idx.languages(3_000_000, 4_096)
            assert not np.any(far == K // 2)
            np.testing.assert_array_equal(idx.languages(0, n), got)


def test_positions_past_the_packing_limit_are_refused() -> None:
    w = np.full(1833, 1 / 1833)
    c = np.zeros(1833, np.int64)
    c[0] = 2**51 - 1
    with pytest.raises(ValueError, match="cannot be packed"):
        blend_run(w, np.zeros(w.size), c, int(c.sum()), 1, np.empty(1, np.int32))


def test_invalid_inputs_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="> 0"):
        BlendIndex(np.array([0.5, 0.5, 0.0]))
    with pytest.raises(ValueError, match="sum to 1"):
        BlendIndex(np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="chunk"):
        BlendIndex(np.array([0.5, 0.5]), chunk=0)
    idx = BlendIndex(np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="g must be"):
        idx.counts_at(-1)
    with pytest.raises(ValueError, match="start"):
        idx.languages(-1, 3)
    with pytest.raises(ValueError, match="t0"):
        blend_run(np.array([0.5, 0.5]), np.zeros(2), np.array([3, 0], np.int64), 2, 1, np.empty(1, np.int32))


# -- pieces: a phase whose weights change ---------------------------------------------------


@pytest.mark.parametrize("name", ["k2", "k3", "k17", "k17_sparse", "k200"])
def test_kernel_matches_reference_with_an_excess(name: str) -> None:
    w = WEIGHTS[name]
    rng = np.random.default_rng(len(w))
    for _ in range(5):
        e = rng.uniform(-0.99, 0.99, w.size)
        e -= e.mean()  # deviations of a phase sum to zero
        got, c, _ = run(w, 3_000, excess=e)
        ref, c_ref = reference_blend(w, np.zeros(w.size, np.int64), 3_000, excess=e)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(c, c_ref)


@pytest.mark.parametrize("name", ["k2", "k3", "k17", "k17_sparse", "k200"])
def test_splitting_constant_weights_into_pieces_changes_nothing(name: str) -> None:
    # A piece continuing from the phase's excess has the windows of one unbroken run, so cutting a
    # run anywhere (an amendment that leaves the weights alone) gives the same positions.
    w = WEIGHTS[name]
    K = w.size
    whole, _, _ = run(w, 20_000)
    cuts = np.sort(np.random.default_rng(K).choice(np.arange(1, 20_000), 12, replace=False))
    lens = np.diff(np.concatenate(([0], cuts, [20_000])))
    pieced, worst, fallbacks = phase_run([(np.arange(K), w, int(n)) for n in lens], K)
    np.testing.assert_array_equal(pieced, whole)
    assert fallbacks == 0 and worst <= bound(K) + tolerance(20_000)


def anneal_pieces(n_languages: int, taus: np.ndarray, length: int, seed: int) -> list:
    """Pieces of an annealed τ: p ∝ n^τ over Zipf-like language sizes, τ per segment."""
    sizes = 1e9 / np.arange(1, n_languages + 1) ** 1.3 * np.random.default_rng(seed).uniform(0.5, 2.0, n_languages)
    out = []
    for tau in taus:
        p = sizes**tau
        out.append((np.arange(n_languages), p / p.sum(), length))
    return out


@pytest.mark.parametrize("K", [3, 17, 60, 200])
def test_annealed_tau_keeps_every_language_within_one_of_its_cumulative_target(K: int) -> None:
    # The sampler audit's case: 16 segments of τ 0.9 -> 0.3. Pieces that started fresh each
    # under-served the small languages by up to one sequence per piece (a language with < 1
    # sequence per piece never came up); continuing from the phase's excess keeps each language
    # within one sequence of its cumulative target over the whole phase.
    for seed in range(3):
        pieces = anneal_pieces(K, np.linspace(0.9, 0.3, 16), 40 * K, seed)
        _, worst, _ = phase_run(pieces, K)
        assert worst <= 1.0, (seed, worst)


def test_small_languages_come_up_when_their_share_per_piece_is_under_one() -> None:
    # 10 languages, 16 pieces of 120 sequences: the smallest gets ~0.7 of a sequence per piece,
    # ~11 over the phase. A fresh start per piece served it 0 times.
    pieces = anneal_pieces(10, np.linspace(0.9, 0.8, 16), 120, seed=1)
    langs, worst, _ = phase_run(pieces, 10)
    target = sum(w * n for _, w, n in pieces)
    got = np.bincount(langs, minlength=10)
    assert np.all(np.abs(got - target) <= 1.0) and worst <= 1.0
    assert target[-1] > 5 and got[-1] >= np.floor(target[-1])


def test_many_small_weight_nudges_do_not_drift() -> None:
    # A feedback policy: a multiplier nudge every few sequences, 200 pieces.
    rng = np.random.default_rng(3)
    K = 30
    base = 1.0 / np.arange(1, K + 1) ** 1.2
    m = np.ones(K)
    pieces = []
    for _ in range(200):
        m = np.clip(m * rng.uniform(0.8, 1.2, K), 0.5, 2.0)
        w = base * m
        pieces.append((np.arange(K), w / w.sum(), int(rng.integers(5, 60))))
    _, worst, _ = phase_run(pieces, K)
    assert worst <= 1.0, worst


def test_arbitrary_weight_changes_stay_near_one() -> None:
    # No theorem covers weights that change without notice (see the blend module): measured over
    # 300 random phases of 2-12 pieces with arbitrary new weights and language subsets, the worst
    # deviation stays below 1.5 (pieces starting fresh: up to ~4.7 in the same cases).
    rng = np.random.default_rng(0)
    worst_all = 0.0
    for _ in range(300):
        M = int(rng.integers(2, 30))
        pieces = []
        for _ in range(int(rng.integers(2, 12))):
            sub = np.arange(M) if rng.random() >= 0.3 else np.sort(rng.choice(M, int(rng.integers(1, M + 1)), replace=False))
            w = np.maximum(rng.dirichlet(np.full(sub.size, rng.choice([0.2, 1.0, 5.0]))), 1e-9)
            pieces.append((sub, w / w.sum(), int(rng.integers(1, 400))))
        worst_all = max(worst_all, phase_run(pieces, M)[1])
    assert worst_all < 1.5, worst_all

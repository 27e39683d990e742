"""Virtual corpora: generated streams behave like real ones (documents, epochs, determinism)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import RECIPES
from curriculum.recipe import load_recipe
from sampler_server.kernels.pack import copy_run_virtual
from sampler_server.sampler import Sampler
from sampler_server.virtual import VirtualLanguageStream, virtual_doc_lengths
from test_pack import GOLDEN, M64, mix64_py

CLS, SEP = 2, 1


def doc_lengths_ref(key: int, target: int, mean: float) -> list[int]:
    """Plain-Python twin of `virtual_doc_lengths`: exponential lengths from (key, k), the last
    document taking the remainder (merged into the previous one when under 3 wrapped tokens)."""
    out: list[int] = []
    used = 0
    while True:
        h = mix64_py(key + (len(out) + 1) * GOLDEN)
        u = ((h >> 11) + 0.5) / 2.0**53
        length = max(1, int(-mean * math.log(u) + 0.5))
        if used + length + 2 >= target:
            rest = target - used
            if rest >= 3 or not out:
                out.append(rest - 2)
            else:
                out[-1] += rest
            return out
        out.append(length)
        used += length + 2


def run_virtual_ref(key: int, lens, order, d: int, od: int, n: int, lo: int, hi: int) -> tuple[list[int], list[int]]:
    """Plain-Python twin of `copy_run_virtual`: n tokens of the wrapped stream of documents
    order[d:], starting od tokens into order[d]; returns them and the offsets of their [CLS]s."""
    toks: list[int] = []
    starts: list[int] = []
    while len(toks) < od + n:
        doc = int(order[d])
        dkey = mix64_py(key ^ ((doc + 1) * GOLDEN & M64))
        starts.append(len(toks))
        toks += [CLS] + [lo + mix64_py(dkey + t) % (hi - lo) for t in range(1, int(lens[doc]) + 1)] + [SEP]
        d += 1
    return toks[od : od + n], [s - od for s in starts if od <= s < od + n]


def test_doc_lengths_fill_the_block_exactly():
    rng = np.random.default_rng(0)
    for target in [3, 4, 10, 1000, 123_457]:
        for mean in (1.0, 50.0, 600.0):
            buf = np.empty(target // 3 + 1, np.int64)
            n = virtual_doc_lengths(np.uint64(rng.integers(1 << 62)), np.int64(target), np.float64(mean), buf)
            assert (buf[:n] + 2).sum() == target and buf[:n].min() >= 1


@pytest.mark.parametrize("mean", [1.0, 3.5, 50.0, 600.0])
def test_doc_lengths_match_the_reference(mean):
    rng = np.random.default_rng(int(mean * 10))
    for _ in range(40):
        key = int(rng.integers(0, 1 << 63, dtype=np.uint64)) * 2 + int(rng.integers(2))  # the full uint64 range
        target = int(rng.integers(3, 20_000))
        buf = np.empty(target // 3 + 1, np.int64)
        n = virtual_doc_lengths(np.uint64(key), np.int64(target), np.float64(mean), buf)
        assert buf[:n].tolist() == doc_lengths_ref(key, target, mean)


def test_doc_lengths_are_exponential_around_the_mean():
    # ~39,000 documents of mean 50: the sample mean's standard error is 50/sqrt(39,000) = 0.25, so
    # 1.0 is 4 standard errors; rounding to whole tokens (and the floor of 1) moves the mean by
    # < 0.05. The share above the mean is P(X >= 50.5) = exp(-1.01) = 0.364 for an exponential
    # (0.5 for a symmetric law), standard error 0.0024: 0.01 is 4 of them.
    buf = np.empty(2_000_000 // 3 + 1, np.int64)
    n = virtual_doc_lengths(np.uint64(12345), np.int64(2_000_000), np.float64(50.0), buf)
    lens = buf[: n - 1]  # the last one is the remainder
    assert abs(lens.mean() - 50.0) < 1.0
    assert abs((lens > 50).mean() - math.exp(-50.5 / 50.0)) < 0.01


def test_copy_run_virtual_matches_reference():
    rng = np.random.default_rng(7)
    key = 0xC0FFEE1234567890
    lens = rng.integers(1, 40, 60).astype(np.int64)
    order = rng.permutation(60).astype(np.int32)
    wcum = np.concatenate(([0], np.cumsum(lens[order] + 2)))
    for _ in range(200):
        a = int(rng.integers(0, wcum[-1] - 1))
        n = int(rng.integers(1, wcum[-1] - a + 1))
        d = int(np.searchsorted(wcum, a, side="right") - 1)
        out = np.full(n + 5, -7, np.int32)
        starts = np.full(n + 5, -1, np.int32)
        m = copy_run_virtual(np.uint64(key), lens, order, d, a - int(wcum[d]), n, CLS, SEP, 5, 1000, out, 5, starts, 0)
        toks, st = run_virtual_ref(key, lens, order, d, a - int(wcum[d]), n, 5, 1000)
        assert out[5:].tolist() == toks and np.all(out[:5] == -7)
        assert (starts[:m] - 5).tolist() == st


def test_virtual_stream_is_a_shuffled_stream_of_documents():
    st = VirtualLanguageStream("x_Latn", tokens=20_000, docs=100, seed=3, vocab=(5, 1000))
    S = st.stream_len
    assert S == 20_000 + 2 * 100
    out = np.empty(2 * S, np.int32)
    m = st.fill(0, out, np.empty(2 * S, np.int32), CLS, SEP)
    assert (out == CLS).sum() == m == (out == SEP).sum()
    e0, e1 = out[:S], out[S:]
    docs0 = sorted(bytes(x) for x in np.split(e0, np.flatnonzero(e0 == CLS)[1:]))
    docs1 = sorted(bytes(x) for x in np.split(e1, np.flatnonzero(e1 == CLS)[1:]))
    assert docs0 == docs1 and e0.tobytes() != e1.tobytes()  # same documents, new order per epoch
    assert out[(out != CLS) & (out != SEP)].min() >= 5 and out.max() < 1000
    part = np.empty(777, np.int32)
    VirtualLanguageStream("x_Latn", 20_000, 100, 3, (5, 1000)).fill(S - 300, part, np.empty(777, np.int32), CLS, SEP)
    assert np.array_equal(part, out[S - 300 : S + 477])  # random access == sequential


def test_synthetic_1833_manifest_serves_every_phase_with_a_persisted_index(synth_1833, tmp_path):
    # mmBERT's shape scaled 10^4 down in tokens (same languages, τ, warm-up shape, variants).
    r = load_recipe(RECIPES / "mmbert.toml")
    phases = []
    for p in r.phases:
        upd = {"tokens": p.tokens / 1e4}
        if p.batch_warmup:
            upd["batch_warmup"] = p.batch_warmup.model_copy(update={"tokens": p.batch_warmup.tokens / 1e4})
        phases.append(p.model_copy(update=upd))
    small = r.model_copy(update={"phases": phases})
    s = Sampler(synth_1833, small, seed=0, index_dir=tmp_path / "index")
    info = s.build_index()
    assert info["files"] == 3 and info["bytes"] > 0
    for phase_start in s.timeline.phase_start:
        b = s.batch(phase_start, rank=3, world_size=8)
        assert b.input_ids.shape[1] == s.schedule(phase_start).seq_len
        assert (b.labels != -100).any()
    last = s.total_steps - 1
    again = Sampler(synth_1833, small, seed=0, index_dir=tmp_path / "index")  # reuses the index
    assert again.batch(last, 1, 2).input_ids.tobytes() == s.batch(last, 1, 2).input_ids.tobytes()
    fresh = Sampler(synth_1833, small, seed=0)  # no index: same bytes, computed from scratch
    assert fresh.batch(last, 1, 2).labels.tobytes() == s.batch(last, 1, 2).labels.tobytes()

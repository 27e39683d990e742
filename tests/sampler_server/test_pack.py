"""Packing kernels against plain-numpy twins."""

from __future__ import annotations

import numpy as np
import pytest

from sampler_server.kernels.pack import copy_run, keyed_permutation

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64_py(x: int) -> int:
    x &= M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def permutation_ref(n: int, key: int) -> list[int]:
    out = list(range(n))
    for i in range(n - 1, 0, -1):
        h = mix64_py(key + (i + 1) * GOLDEN)
        j = ((h >> 32) * (i + 1)) >> 32
        out[i], out[j] = out[j], out[i]
    return out


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100, 4099])
def test_keyed_permutation_matches_reference(n):
    for key in (0, 1, 0xDEADBEEFCAFEF00D, M64):
        out = np.empty(n, np.int32)
        keyed_permutation(n, np.uint64(key), out)
        assert out.tolist() == permutation_ref(n, key)
        assert sorted(out.tolist()) == list(range(n))


def test_keyed_permutation_is_roughly_uniform():
    # Position of element 0 over many keys: chi-square against uniform over 8 slots.
    hits = np.zeros(8)
    out = np.empty(8, np.int32)
    for key in range(8000):
        keyed_permutation(8, np.uint64(key * 7919), out)
        hits[int(np.flatnonzero(out == 0)[0])] += 1
    chi2 = ((hits - 1000) ** 2 / 1000).sum()
    assert chi2 < 24.3  # 99.9th percentile of chi-square with 7 degrees of freedom


def wrapped_ref(tokens, offsets, order, cls, sep):
    parts = []
    for d in order:
        parts += [[cls], tokens[offsets[d] : offsets[d + 1]].tolist(), [sep]]
    return np.array([t for p in parts for t in p], np.int64)


def test_copy_run_matches_reference():
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 30, 50)
    offsets = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
    tokens = rng.integers(10, 1000, offsets[-1]).astype(np.uint32)
    order = rng.permutation(50).astype(np.int32)
    ref = wrapped_ref(tokens, offsets, order, 2, 3)
    starts_ref = np.concatenate(([0], np.cumsum(lens[order] + 2)))[:-1]
    wcum = np.concatenate(([0], np.cumsum(lens[order] + 2)))
    for _ in range(300):
        a = int(rng.integers(0, ref.size - 1))
        n = int(rng.integers(1, ref.size - a + 1))
        d = int(np.searchsorted(wcum, a, side="right") - 1)
        out = np.full(n + 5, -7, np.int32)
        starts = np.full(n + 5, -1, np.int32)
        m = copy_run(tokens, offsets, order, d, a - int(wcum[d]), n, 2, 3, out, 5, starts, 0) if n + 5 <= out.size else 0
        assert np.array_equal(out[5 : 5 + n], ref[a : a + n])
        assert np.all(out[:5] == -7)
        expect = starts_ref[(starts_ref >= a) & (starts_ref < a + n)] - a + 5
        assert np.array_equal(starts[:m], expect)

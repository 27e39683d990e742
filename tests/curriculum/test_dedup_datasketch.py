"""The datasketch backend's shortcuts (band-key pre-pass, one reused LeanMinHash) against the
plain datasketch loop they replace: a fresh LeanMinHash per document, every document queried,
every kept document inserted. The drops must be equal on every input."""

from __future__ import annotations

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHashLSH

from curriculum import minhash as mh
from curriculum.dedup import DedupConfig, _band_matches, find_duplicates


def plain_datasketch(sig: np.ndarray, ids: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """The straightforward loop over MinHashLSH: query, verify, insert the kept, in doc_id order."""
    bands, rows = cfg.lsh_params()
    min_equal = cfg.min_equal() if cfg.verify else 0
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(bands, rows))
    drop = np.zeros(len(ids), dtype=bool)
    for row in np.argsort(ids, kind="stable").tolist():
        if np.all(sig[row] == mh.EMPTY):
            continue
        m = LeanMinHash(seed=cfg.seed, hashvalues=sig[row], scheme=cfg.scheme)
        candidates = lsh.query(m)
        if candidates and np.any(np.count_nonzero(sig[candidates] == sig[row], axis=1) >= min_equal):
            drop[row] = True
        else:
            lsh.insert(row, m)
    return drop


def mixed_signatures(seed: int, n_single: int = 400, num_perm: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Singletons, groups that share some bands (copies with a share of slots replaced, in and out
    of the threshold), exact copies and empty documents, shuffled, with random doc ids."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, 2**32 - 1, num_perm, dtype=np.uint64).astype(np.uint32) for _ in range(n_single)]
    for _ in range(40):
        root = rng.integers(0, 2**32 - 1, num_perm, dtype=np.uint64).astype(np.uint32)
        rows.append(root)
        for _ in range(int(rng.integers(1, 5))):
            member = (root if rng.random() < 0.6 else rows[-1]).copy()
            change = rng.random(num_perm) < rng.choice([0.0, 0.03, 0.1, 0.2, 0.4, 0.7])
            member[change] = rng.integers(0, 2**32 - 1, int(change.sum()), dtype=np.uint64).astype(np.uint32)
            rows.append(member)
    rows += [np.full(num_perm, mh.EMPTY, dtype=np.uint32)] * 2
    sig = np.stack(rows)[rng.permutation(len(rows))]
    ids = rng.choice(10**12, sig.shape[0], replace=False).astype(np.int64)
    return sig, ids


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cfg", [
    DedupConfig(), DedupConfig(verify=False), DedupConfig(threshold=0.5), DedupConfig(scheme="legacy"),
    DedupConfig(num_perm=64, bands=16, rows=4, threshold=0.6),
], ids=["default", "no-verify", "t0.5", "legacy", "64x16x4"])
def test_datasketch_backend_equals_the_plain_datasketch_loop(seed, cfg):
    sig, ids = mixed_signatures(seed, num_perm=cfg.num_perm)
    want = plain_datasketch(sig, ids, cfg)
    assert 0 < want.sum() < 200
    assert np.array_equal(find_duplicates(sig, ids, cfg, "datasketch"), want)
    assert np.array_equal(find_duplicates(sig, ids, cfg, "banded"), want)


def test_datasketch_backend_on_a_memmap_and_tiny_inputs(tmp_path):
    sig, ids = mixed_signatures(5)
    cfg = DedupConfig()
    np.save(tmp_path / "sig.npy", sig)
    on_disk = np.load(tmp_path / "sig.npy", mmap_mode="r")
    assert np.array_equal(find_duplicates(on_disk, ids, cfg, "datasketch"), plain_datasketch(sig, ids, cfg))
    for n in (0, 1, 2):
        assert np.array_equal(find_duplicates(sig[:n], ids[:n], cfg, "datasketch"), plain_datasketch(sig[:n], ids[:n], cfg))
    two = np.stack([sig[0], sig[0]])
    assert find_duplicates(two, np.array([7, 3]), cfg, "datasketch").tolist() == [True, False]


def test_band_matches_equal_a_brute_force_twin():
    rng = np.random.default_rng(3)
    bands, rows = 6, 3
    # Few distinct values per slot, so bands often coincide.
    sig = rng.integers(0, 3, (300, bands * rows + 2), dtype=np.uint64).astype(np.uint32)
    ranked = rng.permutation(300)[:250]
    earlier, later = _band_matches(sig, ranked, bands, rows)
    band = [[tuple(sig[r, j * rows:(j + 1) * rows]) for j in range(bands)] for r in ranked.tolist()]
    want_earlier = [any(band[k][j] == band[i][j] for i in range(k) for j in range(bands)) for k in range(len(ranked))]
    want_later = [any(band[k][j] == band[i][j] for i in range(k + 1, len(ranked)) for j in range(bands)) for k in range(len(ranked))]
    assert earlier.tolist() == want_earlier and later.tolist() == want_later
    assert 0 < earlier.sum() < len(ranked) and 0 < later.sum() < len(ranked)

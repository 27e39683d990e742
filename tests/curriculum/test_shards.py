"""Token shards: round trip, zero-copy memory map, atomic writes, clear errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curriculum.shards import ShardError, open_shard, sha256_file, write_shard


def make(tmp_path, n_docs=1000, seed=0):
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 500, n_docs)
    offsets = np.concatenate(([0], np.cumsum(lens)))
    toks = rng.integers(0, 256_000, offsets[-1], dtype=np.uint32)
    info = write_shard(tmp_path / "fra_Latn" / "00000.arrow", toks, offsets, ["a.jsonl"] * n_docs, np.arange(n_docs))
    return info, toks, offsets


def test_round_trip(tmp_path):
    info, toks, offsets = make(tmp_path)
    view = open_shard(info.path)
    assert view.docs == 1000 and info.tokens == toks.size
    np.testing.assert_array_equal(view.offsets, offsets)
    np.testing.assert_array_equal(view.tokens, toks)
    assert view.tokens.dtype == np.uint32 and view.tokens.max() > 65535
    assert info.sha256 == sha256_file(info.path) and info.bytes == info.path.stat().st_size
    assert not list(info.path.parent.glob(".*.tmp"))  # atomic: no temp file left


def test_open_does_not_allocate_the_token_array(tmp_path):
    info, toks, _ = make(tmp_path, n_docs=4000)
    before = pa.total_allocated_bytes()
    view = open_shard(info.path)
    s = int(view.tokens[::997].sum())  # touch the buffer
    assert pa.total_allocated_bytes() - before < 4096  # Arrow allocated nothing for the tokens
    assert not view.tokens.flags.owndata and not view.tokens.flags.writeable  # a view of the map
    assert s == int(toks[::997].sum())


def test_errors_name_the_shard(tmp_path):
    with pytest.raises(ShardError, match="missing.arrow: missing"):
        open_shard(tmp_path / "missing.arrow")
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(b"\x00junk" * 100)
    with pytest.raises(ShardError, match="bad.arrow: not a readable Arrow IPC"):
        open_shard(bad)
    with pytest.raises(ValueError, match="inconsistent"):
        write_shard(tmp_path / "x.arrow", np.zeros(3, np.uint32), np.array([0, 2]), ["a"], np.arange(1))

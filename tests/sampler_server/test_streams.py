"""Language streams: two-level shuffle, no document repeated within an epoch, exact continuation."""

from __future__ import annotations

import numpy as np

from curriculum.shards import write_shard
from sampler_server.streams import LanguageStream, cut_blocks

CLS, SEP = 2, 3


def docs_corpus(tmp_path, n_docs=300, n_shards=3, seed=0):
    """Documents whose first token is 1000 + doc id, so every document is identifiable."""
    rng = np.random.default_rng(seed)
    paths, doc = [], 0
    for s in range(n_shards):
        lens = rng.integers(1, 60, n_docs // n_shards)
        toks = []
        for n in lens:
            toks.append(np.concatenate(([1000 + doc], rng.integers(5, 999, n - 1))).astype(np.uint32))
            doc += 1
        offsets = np.concatenate(([0], np.cumsum(lens)))
        p = tmp_path / f"{s:05d}.arrow"
        write_shard(p, np.concatenate(toks), offsets, ["x"] * lens.size, np.arange(lens.size))
        paths.append(p)
    return paths, doc


def split_docs(stream: np.ndarray) -> list[int]:
    """Doc ids in order of their CLS in a stretch of stream that starts at a CLS."""
    cls = np.flatnonzero(stream == CLS)
    return [int(stream[i + 1]) - 1000 for i in cls if i + 1 < stream.size]


def test_cut_blocks():
    w = np.array([5, 5, 5, 5, 5, 5])
    assert cut_blocks(w, 10).tolist() == [0, 2, 4, 6]
    assert cut_blocks(w, 1000).tolist() == [0, 6]
    assert cut_blocks(np.array([50, 1, 1]), 10).tolist() == [0, 1, 3]


def test_each_epoch_is_a_permutation_of_all_documents(tmp_path):
    paths, n_docs = docs_corpus(tmp_path)
    st = LanguageStream("x_Latn", paths, seed=5, block_tokens=300)
    assert st.table.tokens.size > 10  # several blocks per shard: the two-level shuffle is exercised
    S = st.stream_len
    out = np.empty(3 * S, np.int32)
    starts = np.empty(3 * S, np.int32)
    m = st.fill(0, out, starts, CLS, SEP)
    epochs = [split_docs(out[e * S : (e + 1) * S]) for e in range(3)]
    for ids in epochs:
        assert sorted(ids) == list(range(n_docs))  # every document once per epoch
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled each epoch
    assert m == 3 * n_docs and np.array_equal(np.flatnonzero(out == CLS), starts[:m])


def test_random_access_equals_sequential_reads(tmp_path):
    paths, _ = docs_corpus(tmp_path, seed=1)
    st = LanguageStream("y_Latn", paths, seed=9, block_tokens=200)
    S = st.stream_len
    full = np.empty(2 * S + 500, np.int32)
    st.fill(0, full, np.empty(full.size, np.int32), CLS, SEP)
    rng = np.random.default_rng(0)
    for start in rng.integers(0, 2 * S, 30):
        part = np.empty(500, np.int32)
        fresh = LanguageStream("y_Latn", paths, seed=9, block_tokens=200)  # no cache shared
        fresh.fill(int(start), part, np.empty(500, np.int32), CLS, SEP)
        assert np.array_equal(part, full[start : start + 500])


def test_one_stream_read_out_of_order_equals_sequential_reads(tmp_path):
    """The stream keeps the block its last read ended in: reads that jump between blocks and
    epochs (same offset in another epoch too), and reads within the kept block, on one object."""
    paths, _ = docs_corpus(tmp_path, seed=2)
    st = LanguageStream("z_Latn", paths, seed=4, block_tokens=200)
    S = st.stream_len
    full = np.empty(3 * S, np.int32)
    LanguageStream("z_Latn", paths, seed=4, block_tokens=200).fill(0, full, np.empty(full.size, np.int32), CLS, SEP)
    rng = np.random.default_rng(1)
    starts = rng.integers(0, 3 * S - 120, 200).tolist()
    starts += [s + k * S for s in starts[:20] for k in (0, 1) if s + (k + 1) * S < 3 * S - 120]  # offset kept, epoch not
    starts += [starts[0] + 7, starts[0] + 9]  # inside the block just read
    for start in starts:
        n = int(rng.integers(1, 120))
        part = np.empty(n, np.int32)
        st.fill(int(start), part, np.empty(n, np.int32), CLS, SEP)
        assert np.array_equal(part, full[start : start + n]), start


def test_seed_and_language_change_the_order(tmp_path):
    paths, _ = docs_corpus(tmp_path, seed=2)
    a = LanguageStream("a_Latn", paths, seed=1, block_tokens=200)
    b = LanguageStream("a_Latn", paths, seed=2, block_tokens=200)
    c = LanguageStream("b_Latn", paths, seed=1, block_tokens=200)
    outs = []
    for st in (a, b, c):
        o = np.empty(2000, np.int32)
        st.fill(0, o, np.empty(2000, np.int32), CLS, SEP)
        outs.append(o.tobytes())
    assert len(set(outs)) == 3

"""The build's fast paths against the plain paths they replace: Arrow-native Parquet reading and
normalization, SentencePiece fed UTF-8 bytes, the shard checksum taken while writing, and the
on-disk cache of the Unicode tables. Each must give exactly what the plain path gives."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import curriculum.ingest as ingest
from curriculum.ingest import InputFile, read_documents
from curriculum.normalize import ArrowTexts, normalize_text, normalize_texts
from curriculum.unicode_tables import cached_tables
from curriculum.shards import open_shard, sha256_file, write_shard
from curriculum.tokenize import load_tokenizer

POOL = list("ab \t\n\r\x00") + ["\u0301", "\u0328", "\u09be", "\u09bc", "\u0958", "\u00e9", "\u3000", "\u00a0", "\U0001f600"]


def random_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(POOL) for _ in range(rng.randint(0, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def gemma_tokenizer():
    from curriculum import assets

    return load_tokenizer(assets.gemma2_tokenizer_path(), num_threads=1)


@pytest.fixture(scope="module")
def small_hf_tokenizer(small_tokenizer):
    return load_tokenizer(small_tokenizer)


def batches_as_lists(batches) -> list[tuple]:
    return [(list(b.texts), list(b.languages), b.rows.tolist(), dict(b.drops), [(i.line, i.reason) for i in b.issues])
            for b in batches]


def plain_read(monkeypatch, f: InputFile, **kw) -> list[tuple]:
    with monkeypatch.context() as m:
        m.setattr(ingest, "_clean_arrow_texts", lambda arr: None)  # every row through Python
        return batches_as_lists(read_documents(f, **kw))


@pytest.mark.parametrize("batch_size,batch_bytes", [(4096, 64 << 20), (7, 64 << 20), (50, 300), (3, 40)])
def test_parquet_fast_path_gives_the_batches_of_the_row_by_row_path(tmp_path, monkeypatch, batch_size, batch_bytes):
    clean = [t for t in random_texts(0, 400) if t.strip()]
    files = {
        "clean": pa.table({"text": clean}),
        "large": pa.table({"text": pa.array(clean, pa.large_string())}),
        # some record batches need the row-by-row path (null, blank), others not: the two kinds meet
        "mixed": pa.table({"text": clean[:60] + [None] + clean[60:130] + ["  \u3000\n"] + clean[130:]}),
        "invalid": pa.table({"text": pa.array([t.encode() for t in clean[:30]] + [b"ok \xff bad"] + [t.encode() for t in clean[30:60]],
                                              pa.binary()).view(pa.string())}),
        "labels": pa.table({"text": clean[:50], "language": ["fra"] * 25 + ["xx-nonsense"] + ["deu_Latn"] * 24}),
        "empty": pa.table({"text": pa.array([], pa.string())}),
    }
    fast_seen = 0
    for name, table in files.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path, row_group_size=37)
        f = InputFile(str(path), "parquet", "none", "fra_Latn" if name != "clean" else None)
        got = list(read_documents(f, batch_size=batch_size, batch_bytes=batch_bytes))
        fast_seen += sum(isinstance(b.texts, ArrowTexts) for b in got)
        assert batches_as_lists(got) == plain_read(monkeypatch, f, batch_size=batch_size, batch_bytes=batch_bytes), name
    assert fast_seen > 0


def test_normalize_texts_on_arrow_equals_the_list_path():
    texts = random_texts(1, 20_000)
    want = [normalize_text(t) for t in texts]
    for arr in (pa.array(texts, pa.large_string()), pa.array(texts, pa.string()),
                pa.array(["x", *texts], pa.large_string()).slice(1), pa.chunked_array([texts[:5], texts[5:]])):
        got, out = normalize_texts(arr)
        assert isinstance(got, ArrowTexts) and got == want and out.to_pylist() == want
        assert got[3] == want[3] and got[-1] == want[-1] and got[2:5] == want[2:5] and len(got) == len(want)
    with pytest.raises(ValueError, match="null"):
        normalize_texts(pa.array(["a", None]))
    assert list(normalize_texts(pa.array([], pa.string()))[0]) == []


def test_sentencepiece_on_bytes_equals_strings(gemma_tokenizer):
    texts = [t for t in random_texts(2, 600)] + ["hello Köln", "日本語のテキスト", "a <mask> b", ""]
    want_ids, want_off = gemma_tokenizer.encode_batch(texts)
    for arr in (pa.array(texts, pa.string()), pa.array(["z", *texts], pa.large_string()).slice(1)):
        ids, off = gemma_tokenizer.encode_arrow(arr)
        assert ids.dtype == np.uint32 and np.array_equal(ids, want_ids) and np.array_equal(off, want_off)
    ids, off = gemma_tokenizer.encode_arrow(pa.array(["ab", None, "cd"]))
    assert np.array_equal(off, gemma_tokenizer.encode_batch(["ab", "", "cd"])[1])
    with pytest.raises(TypeError, match="string"):
        gemma_tokenizer.encode_arrow(pa.array([1, 2]))


def test_hf_encode_arrow_equals_encode_batch(small_hf_tokenizer):
    texts = random_texts(3, 300)
    want = small_hf_tokenizer.encode_batch(texts)
    got = small_hf_tokenizer.encode_arrow(pa.array(texts, pa.large_string()))
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_shard_checksum_is_the_files_sha256(tmp_path):
    rng = np.random.default_rng(0)
    for n_docs in (0, 1, 50):
        lens = rng.integers(0, 5000, n_docs)
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        tokens = rng.integers(0, 256_000, int(offsets[-1]), dtype=np.uint32)
        info = write_shard(tmp_path / f"s{n_docs}.arrow", tokens, offsets, [f"f{i}" for i in range(n_docs)], np.arange(n_docs))
        path = tmp_path / f"s{n_docs}.arrow"
        assert info.sha256 == sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
        assert info.bytes == path.stat().st_size
        view = open_shard(path)
        assert view.docs == n_docs and np.array_equal(view.tokens, tokens) and np.array_equal(view.offsets, offsets)
    assert not list(tmp_path.glob(".*.tmp"))


def test_cached_tables_rebuild_when_missing_stale_or_unwritable(tmp_path, monkeypatch):
    calls = []

    def build():
        calls.append(1)
        return np.arange(10, dtype=np.uint32), np.ones(3, dtype=np.uint8)

    source = tmp_path / "mod.py"
    source.write_text("v1")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    first = cached_tables("t", str(source), build)
    again = cached_tables("t", str(source), build)
    assert len(calls) == 1 and all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(first, again))
    source.write_text("v2")  # the building module changed: a new file, never the old table
    cached_tables("t", str(source), build)
    assert len(calls) == 2 and len(list((tmp_path / "cache").glob("t-*.npz"))) == 2
    for p in (tmp_path / "cache").glob("t-*.npz"):
        p.write_bytes(b"garbage")  # unreadable: rebuilt
    assert np.array_equal(cached_tables("t", str(source), build)[0], first[0]) and len(calls) == 3
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(source / "not-a-dir"))  # unwritable: still answers
    assert np.array_equal(cached_tables("t", str(source), build)[1], first[1]) and len(calls) == 4


def test_numba_normalization_equals_normalize_text_on_random_unicode():
    """The numba NFC (decompose, reorder, compose, Hangul, controls, CR, strip) against Python's
    on strings drawn from every code point NFC treats specially, plus random and astral ones."""
    import unicodedata

    special = [cp for cp in range(0x30000) if unicodedata.combining(chr(cp)) or unicodedata.decomposition(chr(cp))
               and not unicodedata.decomposition(chr(cp)).startswith("<")]
    parts = {int(x, 16) for cp in special for x in unicodedata.decomposition(chr(cp)).split() if not x.startswith("<")}
    pool = sorted(set(special) | parts | set(range(0x1100, 0x1200)) | {0xAC00, 0xAC01, 0xD7A3, 0x0D, 0x0A, 0x20, 0x3000, 0x85, 0x00}
                  | {0xE0067, 0xF0000, 0x10FFFF, 0x1F600, 0x41})
    pool = [p for p in pool if not 0xD800 <= p < 0xE000]
    rng = random.Random(7)
    texts = ["".join(chr(rng.choice(pool)) for _ in range(rng.randint(1, 14))) for _ in range(60_000)]
    texts += ["".join(chr(rng.randrange(0x20, 0x30000)) for _ in range(20)).encode("utf-8", "ignore").decode() for _ in range(5_000)]
    want = [normalize_text(t) for t in texts]
    got, arr = normalize_texts(texts)
    assert got == want and arr.to_pylist() == want
    got, arr = normalize_texts(pa.array(texts, pa.large_string()))
    assert got == want and arr.to_pylist() == want
    assert sum(w != t for w, t in zip(want, texts)) > 20_000

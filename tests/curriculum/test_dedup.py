"""Near-dedup: shingle and signature kernels against plain-Python/numpy twins and datasketch,
Jaccard estimates, the LSH decision rule (both backends against a brute-force reference), and
recall/precision on generated near-duplicates."""

from __future__ import annotations

import math
import re
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash, MinHashLSH
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy.stats import binom

from curriculum import minhash as mh
from curriculum.dedup import (
    KNOWN_OPTIMA,
    LSH_WEIGHTS,
    NEAR_DUPLICATE,
    DedupConfig,
    DedupError,
    band_hashes,
    choose_method,
    datasketch_optimal_params,
    dedup_language,
    doc_ids_for_file,
    estimated_jaccard,
    find_duplicates,
    script_of,
    shingle_hashes,
    signatures_for_texts,
    uses_char_shingles,
)

M64 = (1 << 64) - 1
FNV_OFFSET, FNV_PRIME, SHINGLE_SEED = 0xCBF29CE484222325, 0x100000001B3, 0x9E3779B97F4A7C15


# ---- plain-Python / numpy reference twins -------------------------------------------------------

def ref_fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    return h ^ (h >> 33)


def ref_tokens(text: str, char_mode: bool) -> list[list[int]]:
    """Tokens as lists of folded codepoints, by the plain-Python character rules."""
    tokens: list[list[int]] = []
    word: list[int] = []
    for ch in text:
        if mh.is_word_char(ch):
            folded = ord(mh.fold_char(ch))
            if char_mode:
                tokens.append([folded])
            else:
                word.append(folded)
        elif word:
            tokens.append(word)
            word = []
    if word:
        tokens.append(word)
    return tokens


def ref_token_hash(cps: list[int]) -> int:
    h = FNV_OFFSET
    for c in cps:
        h = ((h ^ c) * FNV_PRIME) & M64
    return ref_fmix64(h)


def ref_shingles(text: str, char_mode: bool, n: int) -> list[int]:
    th = [ref_token_hash(t) for t in ref_tokens(text, char_mode)]
    if not th:
        return []
    m = min(n, len(th))
    out = []
    for s in range(len(th) - m + 1):
        g = SHINGLE_SEED ^ m
        for j in range(m):
            g = ((g ^ th[s + j]) * FNV_PRIME) & M64
        g = ref_fmix64(g)
        out.append((g ^ (g >> 32)) & 0xFFFFFFFF)
    return out


def ref_fmix32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def ref_signature(hashes: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: str) -> np.ndarray:
    """Plain-numpy signature of one document's shingle hashes."""
    if hashes.size == 0:
        return np.full(a.size, 0xFFFFFFFF, dtype=np.uint32)
    if scheme == "affine32":
        x = ref_fmix32(hashes)[:, None]
        vals = x * a.astype(np.uint32)[None, :] + b.astype(np.uint32)[None, :]  # uint32 wraps: mod 2^32
    else:
        x = hashes.astype(np.uint64)[:, None]
        y = x * a[None, :].astype(np.uint64) + b[None, :].astype(np.uint64)  # uint64 wraps: mod 2^64
        vals = ((y % np.uint64((1 << 61) - 1)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return vals.min(axis=0).astype(np.uint32)


def ref_band_hash(values: np.ndarray) -> int:
    h = 0x2545F4914F6CDD1D
    for v in values.tolist():
        h = ((h ^ v) * FNV_PRIME) & M64
    return ref_fmix64(h)


def ref_rule(sig: np.ndarray, ids: np.ndarray, bands: int, rows: int, min_equal: int) -> np.ndarray:
    """The decision rule by brute force: in doc_id order, drop when a kept doc shares a band and verifies."""
    drop = np.zeros(len(ids), dtype=bool)
    kept: list[int] = []
    for row in np.argsort(ids).tolist():
        if np.all(sig[row] == mh.EMPTY):
            continue
        for k in kept:
            share = any(np.array_equal(sig[row, j * rows:(j + 1) * rows], sig[k, j * rows:(j + 1) * rows]) for j in range(bands))
            if share and np.count_nonzero(sig[row] == sig[k]) >= min_equal:
                drop[row] = True
                break
        else:
            kept.append(row)
    return drop


# ---- generated text --------------------------------------------------------------------------

def make_vocab(rng: np.random.Generator, size: int = 6000) -> list[str]:
    onsets = ["", "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "st", "tr", "br", "gr"]
    vowels = ["a", "e", "i", "o", "u", "é", "ä", "ou", "ai", "ø"]
    codas = ["", "", "n", "r", "s", "t", "l", "m"]
    words = set()
    while len(words) < size:
        k = int(rng.integers(1, 4))
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(k)))
    return sorted(words)


class TextGen:
    """Sentences of Zipf-distributed pseudo-words, with punctuation and capitals: real-ish text."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.vocab = np.array(make_vocab(self.rng))
        p = 1.0 / np.arange(1, self.vocab.size + 1) ** 1.05
        self.p = p / p.sum()

    def words(self, n: int) -> list[str]:
        return self.rng.choice(self.vocab, n, p=self.p).tolist()

    def render(self, words: list[str]) -> str:
        out, i = [], 0
        while i < len(words):
            k = int(self.rng.integers(6, 16))
            sent = words[i:i + k]
            out.append(" ".join([sent[0].capitalize(), *sent[1:]]) + self.rng.choice([".", ".", "!", "?", ";"]))
            i += k
        return " ".join(out)

    def edit(self, words: list[str], k: int) -> list[str]:
        """k substitutions at positions ≥ 6 apart, so each costs ~5 shingles."""
        out = list(words)
        slots = self.rng.permutation(np.arange(3, len(words) - 3, 6))[:k]
        for s in slots:
            out[s] = str(self.rng.choice(self.vocab[2000:]))  # a rarer word than most
        return out


def true_jaccard(h1: np.ndarray, h2: np.ndarray) -> float:
    a, b = np.unique(h1), np.unique(h2)
    inter = np.intersect1d(a, b).size
    return inter / (a.size + b.size - inter)


# ---- characters, shingles, the kernel twins --------------------------------------------------

def test_character_classes_and_folding():
    assert mh.is_word_char("ा") and mh.is_word_char("\u200c") and mh.is_word_char("_") and mh.is_word_char("٣")
    assert not mh.is_word_char("-") and not mh.is_word_char(" ") and not mh.is_word_char("。")
    table = mh.fold_table()
    assert table.dtype == np.uint32 and table.size == 0x110000 and table[0] == 0
    assert table[ord("İ")] == ord("i") and table[ord("Σ")] == ord("σ") and table[ord("Ä")] == ord("ä")
    assert table[ord(" ")] == 0 and table[ord("ा")] == ord("ा")
    # Devanagari: vowel signs stay inside the word (plain \w would split "नमस्ते" in three).
    assert ref_tokens("नमस्ते दुनिया", False) == [[ord(c) for c in "नमस्ते"], [ord(c) for c in "दुनिया"]]


TEXTS = [
    "", "   ", "...!?", "one", "Two words", "The quick brown fox jumps over the lazy dog, twice!",
    "İstanbul'da ÇAĞRI merkezi; ΣΟΦΊΑ σοφία", "नमस्ते दुनिया, यह एक परीक्षण है।",
    "我们是好朋友。今天天气很好！", "ภาษาไทยไม่มีช่องว่าง ระหว่างคำ", "emoji 😀 between 😀 words_with_underscore 42",
    "a\u200cb \u200d zwj", "tab\tand\nnewlines\r\nhere", "x" * 300 + " y",
]


@pytest.mark.parametrize("char_mode", [False, True])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_shingle_kernel_matches_python_twin(char_mode, n):
    hashes, offsets = mh.shingle_hashes_from_utf8(*mh.utf8_buffers(TEXTS), char_mode, n)
    for d, text in enumerate(TEXTS):
        assert hashes[offsets[d]:offsets[d + 1]].tolist() == ref_shingles(text, char_mode, n), text


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.text(max_size=60), min_size=1, max_size=6), char_mode=st.booleans(), n=st.integers(1, 6))
def test_shingle_kernel_matches_twin_on_arbitrary_unicode(texts, char_mode, n):
    hashes, offsets = mh.shingle_hashes_from_utf8(*mh.utf8_buffers(texts), char_mode, n)
    for d, text in enumerate(texts):
        assert hashes[offsets[d]:offsets[d + 1]].tolist() == ref_shingles(text, char_mode, n)


def test_invalid_utf8_stays_inside_its_document():
    rng = np.random.default_rng(3)
    # A truncated 3-byte sequence ends document 0; document 1 starts with continuation bytes.
    docs = [b"abc def\xe4", b"\xb8\xad\xe6\x96\x87 ghi", bytes(rng.integers(0, 256, 500, dtype=np.uint8))]
    buf = np.frombuffer(b"".join(docs), dtype=np.uint8)
    offsets = np.cumsum([0] + [len(d) for d in docs]).astype(np.int64)
    hashes, sh_off = mh.shingle_hashes_from_utf8(buf, offsets, False, 2)
    for d, doc in enumerate(docs):
        alone, _ = mh.shingle_hashes_from_utf8(np.frombuffer(doc, dtype=np.uint8), np.array([0, len(doc)]), False, 2)
        assert np.array_equal(hashes[sh_off[d]:sh_off[d + 1]], alone)
    assert hashes[sh_off[0]:sh_off[1]].tolist() == ref_shingles("abc def", False, 2)


def test_arrow_input_matches_list_input():
    cfg = DedupConfig()
    texts = TEXTS * 3
    expected = signatures_for_texts(texts, "Latn", cfg)
    arr = pa.array(["pad", *texts, "pad"])
    assert np.array_equal(signatures_for_texts(arr.slice(1, len(texts)), "Latn", cfg), expected)
    chunked = pa.chunked_array([pa.array(texts[:5]), pa.array(texts[5:]).slice(0)])
    assert np.array_equal(signatures_for_texts(chunked, "Latn", cfg), expected)
    with_null = signatures_for_texts(pa.array(["a b c", None]), "Latn", cfg)
    assert np.all(with_null[1] == mh.EMPTY)
    lone_surrogate = signatures_for_texts(["ab\ud800cd ef"], "Latn", cfg)  # not valid UTF-8: no error
    assert np.array_equal(lone_surrogate, signatures_for_texts(["ab cd ef"], "Latn", cfg))


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_permutations_are_datasketchs(scheme):
    for num_perm, seed in [(128, 1), (112, 7)]:
        a, b = mh.permutations(num_perm, seed, scheme)
        ref = MinHash(num_perm=num_perm, seed=seed, scheme=scheme).permutations
        assert np.array_equal(a, np.asarray(ref[0])) and np.array_equal(b, np.asarray(ref[1]))


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signature_kernel_matches_numpy_twin(scheme):
    rng = np.random.default_rng(11)
    sizes = rng.integers(0, 40, 60)
    sizes[:3] = [0, 1, 4]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    hashes = rng.integers(0, 2**32, offsets[-1], dtype=np.uint64).astype(np.uint32)
    a, b = mh.permutations(64, 5, scheme)
    sig = mh.signatures_from_hashes(hashes, offsets, a, b, scheme)
    for d in range(sizes.size):
        assert np.array_equal(sig[d], ref_signature(hashes[offsets[d]:offsets[d + 1]], a, b, scheme))


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_equal_datasketch_on_the_same_shingle_hashes(scheme):
    gen = TextGen(5)
    texts = [gen.render(gen.words(int(n))) for n in gen.rng.integers(1, 120, 40)] + ["", "!!"]
    cfg = DedupConfig(num_perm=112, seed=42, scheme=scheme)
    hashes, offsets = shingle_hashes(texts, "fra_Latn", cfg)
    ours = signatures_for_texts(texts, "fra_Latn", cfg)
    a, b = cfg.permutations()
    assert np.array_equal(ours, mh.signatures_from_hashes(hashes, offsets, a, b, scheme))
    for d in range(len(texts)):
        m = MinHash(num_perm=112, seed=42, scheme=scheme, hashfunc=int)
        m.update_batch(hashes[offsets[d]:offsets[d + 1]])
        assert np.array_equal(ours[d], m.hashvalues.astype(np.uint32)), d
        assert int(m.hashvalues.max()) <= 0xFFFFFFFF


def test_text_path_is_independent_of_batching_and_threads():
    import numba

    gen = TextGen(6)
    texts = [gen.render(gen.words(int(n))) for n in gen.rng.integers(0, 200, 50)]
    buf, offsets = mh.utf8_buffers(texts)
    a, b = mh.permutations(128, 1, "affine32")
    whole = mh.signatures_from_utf8(buf, offsets, False, 5, a, b)
    assert np.array_equal(whole, mh.signatures_from_hashes(*mh.shingle_hashes_from_utf8(buf, offsets, False, 5), a, b))
    for d in (0, 17, 49):  # a document alone, at its own offsets into the shared buffer
        assert np.array_equal(mh.signatures_from_utf8(buf, offsets[d:d + 2], False, 5, a, b)[0], whole[d])
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert np.array_equal(mh.signatures_from_utf8(buf, offsets, False, 5, a, b), whole)
    finally:
        numba.set_num_threads(threads)


def test_jaccard_estimates_within_binomial_tolerance():
    # Sets with exact Jaccard J = c / (c + 2u); the estimate is Binomial(num_perm, J) / num_perm for
    # ideal permutations, so each must lie within 4.5 σ (+1 slot of slack), and the mean error
    # over 60 pairs within 4 σ/√60 (no bias).
    rng = np.random.default_rng(21)
    num_perm = 128
    a, b = mh.permutations(num_perm, 1, "affine32")
    targets = np.linspace(0.05, 0.95, 60)
    errors, sds = [], []
    for j in targets:
        size = 600
        c = int(round(2 * size * j / (1 + j)))
        u = size - c
        universe = rng.choice(2**32, c + 2 * u, replace=False).astype(np.uint32)
        s1, s2 = universe[: c + u], np.concatenate([universe[:c], universe[c + u:]])
        true_j = c / (c + 2 * u)
        sig = mh.signatures_from_hashes(np.concatenate([s1, s2]), np.array([0, s1.size, s1.size + s2.size]), a, b)
        est = float(estimated_jaccard(sig[0], sig[1]))
        sd = math.sqrt(true_j * (1 - true_j) / num_perm)
        assert abs(est - true_j) <= 4.5 * sd + 1 / num_perm, (true_j, est)
        errors.append(est - true_j)
        sds.append(sd)
    assert abs(np.mean(errors)) <= 4 * math.sqrt(np.mean(np.square(sds)) / len(targets))


def test_estimates_agree_with_datasketch_default_minhash_on_text():
    # datasketch's own pipeline (SHA-1 of the shingle strings, its default) against ours on the same
    # texts: both estimate the same shingle-set Jaccard, with independent errors of σ each.
    gen = TextGen(8)
    cfg = DedupConfig()
    pairs = []
    for k in range(40):
        w = gen.words(int(gen.rng.integers(150, 300)))
        pairs.append((gen.render(w), gen.render(gen.edit(w, 1 + k // 3))))
    ours = signatures_for_texts([t for p in pairs for t in p], "Latn", cfg)
    diffs = []
    for i, (t1, t2) in enumerate(pairs):
        ms = []
        for t in (t1, t2):
            words = ["".join(map(chr, tok)) for tok in ref_tokens(t, False)]
            shingles = [" ".join(words[s:s + 5]).encode() for s in range(len(words) - 4)]
            m = MinHash(num_perm=cfg.num_perm)
            m.update_batch(shingles)
            ms.append(m)
        theirs = ms[0].jaccard(ms[1])
        est = float(estimated_jaccard(ours[2 * i], ours[2 * i + 1]))
        h1, h2 = (shingle_hashes([t], "Latn", cfg)[0] for t in (t1, t2))
        j = true_jaccard(h1, h2)
        sd = math.sqrt(max(j * (1 - j), 0.01) / cfg.num_perm)
        assert abs(est - theirs) <= 5 * math.sqrt(2) * sd + 2 / cfg.num_perm, (j, est, theirs)
        diffs.append(est - theirs)
    assert np.mean(np.abs(diffs)) <= 0.06
    assert abs(np.mean(diffs)) <= 0.03


def test_band_hash_kernel_matches_python_twin():
    rng = np.random.default_rng(4)
    sig = rng.integers(0, 2**32, (20, 128), dtype=np.uint64).astype(np.uint32)
    out = np.empty((20, 9), dtype=np.uint64)
    band_hashes(sig, 9, 13, out)
    for d in range(20):
        for j in range(9):
            assert int(out[d, j]) == ref_band_hash(sig[d, j * 13:(j + 1) * 13])


# ---- configuration and scripts ---------------------------------------------------------------

def test_the_table_of_known_optima_is_what_datasketch_picks():
    # The table spares workers the datasketch + scipy import; it must never disagree with it.
    for (t, p), params in KNOWN_OPTIMA.items():
        lsh = MinHashLSH(threshold=t, num_perm=p, weights=LSH_WEIGHTS)
        assert params == (lsh.b, lsh.r) == datasketch_optimal_params(t, p), (t, p)


def test_the_default_settings_do_not_import_datasketch(tmp_path):
    # A fresh interpreter: deriving the LSH params and deduplicating a language whose documents
    # share no band needs neither datasketch nor scipy.integrate under it (~0.6 s of imports).
    code = (
        "import sys, numpy as np\n"
        "from curriculum.dedup import DedupConfig, find_duplicates\n"
        "cfg = DedupConfig()\n"
        "assert cfg.lsh_params() == (16, 8)\n"
        "rng = np.random.default_rng(0)\n"
        "sig = rng.integers(0, 2**32 - 2, (50, cfg.num_perm), dtype=np.uint32)\n"
        "assert not find_duplicates(sig, np.arange(50), cfg, method='datasketch').any()\n"
        "print(sorted(m for m in ('datasketch', 'scipy.integrate') if m in sys.modules))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(tmp_path / "nc"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_config_derives_datasketch_params_and_validates():
    for t, p in [(0.8, 128), (0.7, 112), (0.9, 128), (0.5, 64)]:
        lsh = MinHashLSH(threshold=t, num_perm=p, weights=LSH_WEIGHTS)
        assert DedupConfig(threshold=t, num_perm=p).lsh_params() == (lsh.b, lsh.r)
    assert DedupConfig().lsh_params() == (16, 8)
    datatrove = DedupConfig(num_perm=112, bands=14, rows=8, threshold=0.72)
    assert datatrove.lsh_params() == (14, 8)
    assert DedupConfig(threshold=0.8, num_perm=128).min_equal() == 103  # ceil(102.4)
    assert DedupConfig(threshold=0.75, num_perm=128).min_equal() == 96  # exactly 96/128 counts
    with pytest.raises(ValidationError, match="bands and rows"):
        DedupConfig(bands=14)
    with pytest.raises(ValidationError, match="exceeds num_perm"):
        DedupConfig(num_perm=64, bands=9, rows=13)
    with pytest.raises(ValidationError):
        DedupConfig(threshold=1.5)
    with pytest.raises(ValidationError):
        DedupConfig(nperm=128)


def test_scripts_pick_word_or_character_shingles():
    assert script_of("cmn_Hani") == "Hani" and script_of("Thai") == "Thai"
    assert uses_char_shingles("cmn_Hani") and uses_char_shingles("jpn_Jpan") and uses_char_shingles("tha_Thai")
    assert not uses_char_shingles("fra_Latn") and not uses_char_shingles("hin_Deva") and not uses_char_shingles("kor_Hang")
    with pytest.raises(DedupError, match="cmn_Hani"):
        script_of("chinese")
    cfg = DedupConfig()
    text = ["我们是好朋友"]  # one "word" to \w: a character-free-of-spaces script
    assert shingle_hashes(text, "cmn_Hani", cfg)[0].size == 2  # 6 characters → two 5-grams
    assert shingle_hashes(text, "cmn_Latn", cfg)[0].size == 1


# ---- the decision rule: backends, reference, determinism -------------------------------------

def clustered_signatures(seed: int, n_clusters: int = 60, num_perm: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Signatures in clusters: copies of a root with a random share of slots replaced, plus chains
    (each member perturbed from the previous one), exact copies and empty documents."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_clusters):
        root = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)
        rows.append(root)
        prev = root
        for _ in range(int(rng.integers(0, 6))):
            base = prev if rng.random() < 0.5 else root
            change = rng.random(num_perm) < rng.choice([0.0, 0.05, 0.12, 0.2, 0.3, 0.6])
            member = base.copy()
            member[change] = rng.integers(0, 2**32, int(change.sum()), dtype=np.uint64).astype(np.uint32)
            rows.append(member)
            prev = member
    rows += [np.full(num_perm, mh.EMPTY, dtype=np.uint32)] * 3
    sig = np.stack(rows)
    ids = rng.choice(10**9, sig.shape[0], replace=False).astype(np.int64)
    return sig, ids


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("cfg", [
    DedupConfig(), DedupConfig(verify=False), DedupConfig(threshold=0.6),
    DedupConfig(num_perm=128, bands=14, rows=8, threshold=0.72, chunk_docs=7),
], ids=["default", "no-verify", "t0.6", "datatrove-14x8-chunked"])
def test_both_backends_follow_the_reference_rule(seed, cfg):
    sig, ids = clustered_signatures(seed)
    bands, rows = cfg.lsh_params()
    expected = ref_rule(sig, ids, bands, rows, cfg.min_equal() if cfg.verify else 0)
    assert 0 < expected.sum() < len(ids) - 60
    for method in ("datasketch", "banded"):
        assert np.array_equal(find_duplicates(sig, ids, cfg, method), expected), method
    assert not np.any(expected[np.all(sig == mh.EMPTY, axis=1)])  # no signature: always kept


@pytest.mark.parametrize("method", ["datasketch", "banded"])
def test_result_is_independent_of_input_order(method, tmp_path):
    sig, ids = clustered_signatures(3)
    cfg = DedupConfig()
    first = find_duplicates(sig, ids, cfg, method, workdir=tmp_path)
    assert np.array_equal(first, find_duplicates(sig, ids, cfg, method, workdir=tmp_path))
    rng = np.random.default_rng(0)
    for _ in range(3):
        perm = rng.permutation(len(ids))
        shuffled = find_duplicates(sig[perm], ids[perm], cfg, method)
        assert np.array_equal(shuffled, first[perm])
    assert list(tmp_path.iterdir()) == []  # temporary chunks are removed


def test_exact_duplicates_across_files_keep_the_smallest_doc_id():
    gen = TextGen(9)
    originals = [gen.render(gen.words(int(n))) for n in gen.rng.integers(40, 200, 30)]
    files = [originals[:12] + originals[20:25], originals[5:20], originals[::-1][:10]]
    cfg = DedupConfig()
    sigs = [signatures_for_texts(f, "deu_Latn", cfg) for f in files]
    # The first occurrence in (file, row) order survives, every later copy is dropped.
    seen, expected = set(), []
    for f in files:
        mask = []
        for t in f:
            mask.append(t in seen)
            seen.add(t)
        expected.append(np.array(mask))
    for method in ("auto", "datasketch", "banded"):
        result = dedup_language("deu_Latn", sigs, cfg, method)
        for got, want in zip(result.drops, expected):
            assert np.array_equal(got, want)
        assert result.near_duplicate == sum(int(e.sum()) for e in expected) > 0
    assert dedup_language("deu_Latn", sigs, cfg).method == "datasketch"
    assert dedup_language("deu_Latn", sigs, DedupConfig(in_memory_max_docs=10)).method == "banded"
    assert NEAR_DUPLICATE == "near_duplicate"


def s_curve(j: np.ndarray, bands: int, rows: int) -> np.ndarray:
    return 1 - (1 - j**rows) ** bands


def test_recall_and_precision_on_generated_near_duplicates():
    gen = TextGen(12)
    cfg = DedupConfig()
    bands, rows = cfg.lsh_params()
    texts, pairs, kinds = [], [], []
    # k isolated substitutions change ~5k of ~L shingles: J ≈ (L − 5k) / (L + 5k). One or two
    # edits give J ≈ 0.9–0.98; 5.5–7.5% of the words give J ≈ 0.45–0.6.
    for kind, edits in [("high", lambda n: int(gen.rng.integers(1, 3))),
                        ("low", lambda n: int(n * gen.rng.uniform(0.055, 0.075))), ("single", None)]:
        for _ in range(110):
            words = gen.words(int(gen.rng.integers(200, 400)))
            i = len(texts)
            texts.append(gen.render(words))
            if edits is not None:
                texts.append(gen.render(gen.edit(words, edits(len(words)))))
                pairs.append((i, i + 1))
                kinds.append(kind)
    # Three "files", documents shuffled over them: survivors depend on doc ids, not on position.
    n = len(texts)
    file_of = gen.rng.integers(0, 3, n)
    ids = np.empty(n, dtype=np.int64)
    for f in range(3):
        members = np.flatnonzero(file_of == f)
        ids[gen.rng.permutation(members)] = doc_ids_for_file(f, members.size)
    hashes, offsets = shingle_hashes(texts, "Latn", cfg)
    sig = signatures_for_texts(texts, "Latn", cfg)
    drops = {m: find_duplicates(sig, ids, cfg, m) for m in ("datasketch", "banded")}
    assert np.array_equal(drops["datasketch"], drops["banded"])
    drop = drops["banded"]

    jac = np.array([true_jaccard(hashes[offsets[i]:offsets[i + 1]], hashes[offsets[j]:offsets[j + 1]]) for i, j in pairs])
    dropped = np.array([drop[i] or drop[j] for i, j in pairs])
    for (i, j), d in zip(pairs, dropped):
        assert not (drop[i] and drop[j])
        if d:  # the survivor is the smaller doc id
            assert drop[i if ids[i] > ids[j] else j]
    # Probability a pair is dropped ≈ S-curve(J) × P(Binomial(num_perm, J) ≥ min_equal). Recall on
    # pairs with J ≥ 0.9 must reach its expectation minus 4 σ of the sampling noise; pairs with
    # J ≤ 0.65 must stay below their (tiny) expectation plus 4 σ plus one pair.
    p = s_curve(jac, bands, rows) * binom.sf(cfg.min_equal() - 1, cfg.num_perm, jac)
    high, low = jac >= 0.9, jac <= 0.65
    assert high.sum() >= 90 and low.sum() >= 90  # the generator hits its targets
    assert dropped[high].mean() >= p[high].mean() - 4 * math.sqrt(np.sum(p[high] * (1 - p[high]))) / high.sum()
    assert dropped[high].mean() >= 0.9
    assert dropped[low].sum() <= p[low].sum() + 4 * math.sqrt(np.sum(p[low] * (1 - p[low]))) + 1
    # Precision: no document outside the high-similarity pairs is dropped (singles share nothing).
    in_high_pair = np.zeros(n, dtype=bool)
    for (i, j), h in zip(pairs, high):
        in_high_pair[[i, j]] |= h
    false_drops = int(np.sum(drop & ~in_high_pair))
    assert false_drops <= p[low].sum() + 4 * math.sqrt(np.sum(p[low] * (1 - p[low]))) + 1
    assert drop.sum() - false_drops > 0 and (drop.sum() - false_drops) / drop.sum() >= 0.97


@pytest.mark.parametrize("key, first", [("cmn_Hani", 0x4E00), ("txg_Tang", 0x17000), ("egy_Egyp", 0x13000),
                                        ("akk_Xsux", 0x12000), ("hlu_Hluw", 0x14400)])
def test_char_shingles_find_near_duplicates_in_scripts_without_spaces(key, first):
    # Tangut, hieroglyphs and cuneiform (in FineWeb-2) had word shingles: a 400-character document
    # was one "word", one shingle, and a one-character edit gave an estimated Jaccard of 0.
    rng = np.random.default_rng(2)
    chars = [chr(c) for c in range(first, first + 500)]
    cfg = DedupConfig()
    docs = ["".join(rng.choice(chars, 400)) for _ in range(20)]
    edited = [d[:200] + chars[0] + d[201:] for d in docs]  # one character: ~5 of ~396 shingles change
    assert uses_char_shingles(key) and all(len(re.findall(r"\w+", d)) == 1 for d in docs)
    sig = signatures_for_texts(docs + edited, key, cfg)
    drop = find_duplicates(sig, np.arange(40, dtype=np.int64), cfg)
    assert not drop[:20].any() and drop[20:].mean() >= 0.9


def test_bad_inputs_name_the_parameter():
    cfg = DedupConfig()
    sig = np.zeros((3, 128), dtype=np.uint32)
    with pytest.raises(DedupError, match="occurs more than once"):
        find_duplicates(sig, np.array([1, 2, 1]), cfg)
    with pytest.raises(DedupError, match="signatures"):
        find_duplicates(sig.astype(np.uint64), np.arange(3), cfg)
    with pytest.raises(DedupError, match="signatures"):
        find_duplicates(np.zeros((3, 64), dtype=np.uint32), np.arange(3), cfg)
    with pytest.raises(DedupError, match="doc_ids"):
        find_duplicates(sig, np.arange(4), cfg)
    with pytest.raises(DedupError, match="method"):
        find_duplicates(sig, np.arange(3), cfg, method="faiss")  # type: ignore[arg-type]
    with pytest.raises(DedupError, match="file 1"):
        dedup_language("fra_Latn", [sig, sig[:, :64]], cfg)
    assert choose_method(cfg.in_memory_max_docs, cfg) == "datasketch"
    assert choose_method(cfg.in_memory_max_docs + 1, cfg) == "banded"
    assert find_duplicates(np.zeros((0, 128), dtype=np.uint32), np.zeros(0, dtype=np.int64), cfg, "banded").size == 0
    assert signatures_for_texts([], "Latn", cfg).shape == (0, 128)
    assert dedup_language("fra_Latn", [], cfg).near_duplicate == 0


def test_banded_partitions_and_memmap_give_the_same_drops(tmp_path, monkeypatch):
    import curriculum.dedup as dedup

    sig, ids = clustered_signatures(4)
    cfg = DedupConfig(chunk_docs=50)
    expected = find_duplicates(sig, ids, cfg, "datasketch")
    monkeypatch.setattr(dedup, "_PARTITION_ROWS", 40)  # → 8 hash-prefix partitions per band
    np.save(tmp_path / "sig.npy", sig)
    on_disk = np.load(tmp_path / "sig.npy", mmap_mode="r")
    assert np.array_equal(find_duplicates(on_disk, ids, cfg, "banded", workdir=tmp_path), expected)


@pytest.mark.parametrize("J, floor", [(0.85, 0.8), (0.9, 0.97)])
def test_pairs_just_above_the_threshold_are_found(J, floor):
    # 300 pairs of shingle sets of exact Jaccard J. A pair is dropped when it is an LSH candidate
    # (S-curve) and its estimate passes (Binomial(128, J) >= 103 equal slots). With datasketch's
    # equal weights (9 x 13) the S-curve was 0.69 at 0.85 and 0.93 at 0.9: ~63 % and ~92 % of
    # such pairs survived dedup. With LSH_WEIGHTS (16 x 8): 0.994 and 0.9999.
    cfg = DedupConfig()
    bands, rows = cfg.lsh_params()
    a, b = cfg.permutations()
    rng = np.random.default_rng(int(J * 100))
    size, n_pairs = 500, 300
    common = int(round(size * 2 * J / (1 + J)))  # |A| = |B| = size, |A ∩ B| / |A ∪ B| = J
    sets = []
    for _ in range(n_pairs):
        shared = rng.integers(0, 2**32, common, dtype=np.uint64)
        for _ in range(2):
            sets.append(np.concatenate([shared, rng.integers(0, 2**32, size - common, dtype=np.uint64)]).astype(np.uint32))
    offsets = np.concatenate(([0], np.cumsum([s.size for s in sets]))).astype(np.int64)
    sig = mh.signatures_from_hashes(np.concatenate(sets), offsets, a, b)
    drop = find_duplicates(sig, np.arange(len(sets), dtype=np.int64), cfg, "banded")
    j = common / (2 * size - common)
    p = s_curve(np.array([j]), bands, rows)[0] * binom.sf(cfg.min_equal() - 1, cfg.num_perm, j)
    found = drop[1::2].mean()
    assert not drop[0::2].any()  # the first of each pair (the smaller id) survives
    assert found >= p - 4 * math.sqrt(p * (1 - p) / n_pairs) and found >= floor, (found, p)

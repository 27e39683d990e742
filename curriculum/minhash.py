"""MinHash kernels: UTF-8 text → token hashes → shingle hashes → signatures, all in numba.

The input is Arrow's string layout: one UTF-8 byte buffer and int64 offsets per document (a
Parquet `text` column gives it without a copy; a list of str costs one `str.encode` each, ~1 GB/s).
One parallel kernel decodes UTF-8, lowercases and classifies each codepoint with one table
lookup, finds tokens (runs of word characters, or single word characters for scripts written
without spaces), hashes them, hashes each run of `n` consecutive tokens into a 32-bit shingle
hash and folds it into the document's signature at once: no shingle array is materialised, and
no Python code runs per word or shingle. The two halves also exist on their own
(`shingle_hashes_from_utf8`, `signatures_from_hashes`), for tests and for peers fed our hashes.

Signatures follow datasketch 2.0's permutation schemes value for value, so a signature equals
`datasketch.MinHash(num_perm, seed, scheme=..., hashfunc=<identity>)` fed the same 32-bit
shingle hashes (the tests hold that exactly):
- "affine32" (datasketch's default since 2.0): x = fmix32(h), value_k = a_k·x + b_k mod 2^32 with
  a_k odd, so each permutation is a bijection on 32-bit values (no extra collisions).
- "legacy" (datasketch < 2.0): value_k = ((a_k·h + b_k) mod 2^64) mod (2^61 − 1), low 32 bits;
  the mod 2^64 wrap is numpy's uint64 arithmetic, which datasketch's own code relies on.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from numba import njit, prange

import curriculum.numba_boot  # noqa: F401  (before any kernel runs: numba without scipy.linalg)

SCHEMES = ("affine32", "legacy")
EMPTY = np.uint32(0xFFFFFFFF)  # the value of every slot of a document with no shingles
N_CODEPOINTS = 0x110000
MERSENNE61 = np.uint64((1 << 61) - 1)

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_SHINGLE_SEED = np.uint64(0x9E3779B97F4A7C15)
_M64_1 = np.uint64(0xFF51AFD7ED558CCD)
_M64_2 = np.uint64(0xC4CEB9FE1A85EC53)
_M32_1 = np.uint32(0x85EBCA6B)
_M32_2 = np.uint32(0xC2B2AE35)
_S33 = np.uint64(33)
_S32 = np.uint64(32)
_S61 = np.uint64(61)
_LOW32 = np.uint64(0xFFFFFFFF)
_U32_16 = np.uint32(16)
_U32_13 = np.uint32(13)

# Joiners inside words of Indic and Arabic-script text (ZWNJ, ZWJ).
_WORD_JOINERS = ("\u200c", "\u200d")


def is_word_char(ch: str) -> bool:
    """True for characters that belong to a word: letters, digits, '_', combining marks, joiners.

    This is Python's `\\w` plus combining marks (categories Mn, Mc, Me) and ZWNJ/ZWJ: `\\w` alone
    splits Devanagari, Bengali, Thai, … words at every vowel sign.
    """
    return ch.isalnum() or ch == "_" or ch in _WORD_JOINERS or unicodedata.category(ch)[0] == "M"


def fold_char(ch: str) -> str:
    """The lowercase character a word character is hashed as (simple lowercase mapping).

    Python's `str.lower` maps every codepoint to one codepoint except U+0130 (İ → i + U+0307);
    the first codepoint is kept so the mapping stays a per-codepoint table lookup. (Context rules
    such as Greek final sigma are not applied: Σ always becomes σ.)
    """
    return ch.lower()[0]


@functools.cache
def fold_table() -> np.ndarray:
    """uint32[0x110000]: 0 for a non-word codepoint, else the codepoint of its lowercase form.

    Built once (~0.3 s), then read from disk (`curriculum.unicode_tables.cached_tables`); codepoint 0
    is never a word character, so 0 is free as the "not a word character" mark.
    """
    from curriculum.unicode_tables import cached_tables

    (table,) = cached_tables("fold-table", __file__, _build_fold_table)
    table.setflags(write=False)
    return table


def _build_fold_table() -> tuple[np.ndarray]:
    table = np.zeros(N_CODEPOINTS, dtype=np.uint32)
    for i in range(N_CODEPOINTS):
        ch = chr(i)
        if is_word_char(ch):
            table[i] = ord(fold_char(ch))
    return (table,)


def utf8_buffers(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(utf8 uint8, offsets int64[n+1]) of the texts: Arrow's string layout, without a copy if given one.

    A null string counts as empty. Python strings with lone surrogates (not valid UTF-8) are
    encoded with `surrogatepass`, so such a surrogate becomes one non-word codepoint.
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    if not isinstance(texts, pa.Array):
        # str.encode per document beats pa.array on strings whose UTF-8 form is not cached yet.
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets
    if pa.types.is_string(texts.type) or pa.types.is_string_view(texts.type):
        texts = texts.cast(pa.large_string())
    if not pa.types.is_large_string(texts.type):
        raise TypeError(f"texts: expected a list of str or an Arrow string array, got Arrow type {texts.type}")
    if texts.null_count:
        texts = texts.fill_null("")
    _, offsets_buf, data_buf = texts.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[texts.offset : texts.offset + len(texts) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, dtype=np.uint8)
    # Offsets of a sliced array start anywhere in the data buffer; the kernels read data[offsets[d]:offsets[d+1]].
    return data, offsets


def permutations(num_perm: int, seed: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """Permutation parameters (a, b), generated exactly as datasketch 2.0 does for `scheme`.

    "affine32": uint32 arrays, a odd. "legacy": uint64 arrays in [1, 2^61−1) and [0, 2^61−1).
    """
    gen = np.random.RandomState(seed)
    if scheme == "affine32":
        a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        return a, b
    if scheme == "legacy":
        pairs = np.array(
            [(gen.randint(1, MERSENNE61, dtype=np.uint64), gen.randint(0, MERSENNE61, dtype=np.uint64))
             for _ in range(num_perm)],
            dtype=np.uint64,
        )
        return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])
    raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")


@njit(cache=True, nogil=True, inline="always")
def fmix64(h: np.uint64) -> np.uint64:
    # MurmurHash3's 64-bit finalizer: a bijection that spreads every input bit over the output.
    h ^= h >> _S33
    h *= _M64_1
    h ^= h >> _S33
    h *= _M64_2
    h ^= h >> _S33
    return h


@njit(cache=True, nogil=True, inline="always")
def _fmix32(h: np.uint32) -> np.uint32:
    # MurmurHash3's 32-bit finalizer, as datasketch applies it before the affine32 permutations;
    # numba widens uint32 products to 64 bits, so each product is truncated back explicitly.
    h = np.uint32(h ^ (h >> _U32_16))
    h = np.uint32(h * _M32_1)
    h = np.uint32(h ^ (h >> _U32_13))
    h = np.uint32(h * _M32_2)
    return np.uint32(h ^ (h >> _U32_16))


@njit(cache=True, nogil=True, inline="always")
def _folded_at(buf: np.ndarray, i: int, end: int, table: np.ndarray) -> tuple[int, int]:
    """(folded codepoint or 0 for a non-word character, index of the next character).

    Decodes one UTF-8 sequence starting at buf[i] without reading at or past `end`; a stray
    continuation byte or a truncated sequence is one non-word character, and any decoded value
    beyond the table (invalid UTF-8) is non-word too.
    """
    b0 = np.int64(buf[i])
    if b0 < 0x80:
        return np.int64(table[b0]), i + 1
    if b0 >= 0xC0 and b0 < 0xE0 and i + 1 < end:
        c = ((b0 & 0x1F) << 6) | (np.int64(buf[i + 1]) & 0x3F)
        n = 2
    elif b0 >= 0xE0 and b0 < 0xF0 and i + 2 < end:
        c = ((b0 & 0x0F) << 12) | ((np.int64(buf[i + 1]) & 0x3F) << 6) | (np.int64(buf[i + 2]) & 0x3F)
        n = 3
    elif b0 >= 0xF0 and i + 3 < end:
        c = (((b0 & 0x07) << 18) | ((np.int64(buf[i + 1]) & 0x3F) << 12)
             | ((np.int64(buf[i + 2]) & 0x3F) << 6) | (np.int64(buf[i + 3]) & 0x3F))
        n = 4
    else:
        return 0, i + 1
    if c >= table.shape[0]:
        return 0, i + n
    return np.int64(table[c]), i + n


@njit(cache=True, nogil=True)
def _tokenize(buf: np.ndarray, start: int, end: int, table: np.ndarray, char_mode: bool, tok: np.ndarray, t0: int) -> int:
    """Write the token hashes of buf[start:end] to tok[t0:]; return how many.

    A token is a run of word characters (or one word character in char mode); its hash is
    FNV-1a over its folded codepoints, then fmix64. tok needs end − start free slots from t0:
    every token takes at least one byte, so byte offsets bound token offsets.
    """
    t = t0
    h = _FNV_OFFSET
    in_word = False
    i = start
    while i < end:
        f, i = _folded_at(buf, i, end, table)
        if f != 0:
            if char_mode:
                tok[t] = fmix64((_FNV_OFFSET ^ np.uint64(f)) * _FNV_PRIME)
                t += 1
            else:
                h = (h ^ np.uint64(f)) * _FNV_PRIME
                in_word = True
        elif in_word:
            tok[t] = fmix64(h)
            t += 1
            h = _FNV_OFFSET
            in_word = False
    if in_word:
        tok[t] = fmix64(h)
        t += 1
    return t - t0


@njit(cache=True, nogil=True)
def _shingle_count(ntok: int, n: int) -> int:
    # ntok − n + 1 shingles; a document shorter than n tokens is one shingle of all its tokens.
    if ntok >= n:
        return ntok - n + 1
    return min(ntok, 1)


@njit(cache=True, nogil=True)
def _shingle_hash(tok: np.ndarray, i: int, m: int) -> np.uint32:
    """32-bit hash of the m token hashes tok[i:i+m]: an FNV-style chain seeded with m, fmix64, folded."""
    g = _SHINGLE_SEED ^ np.uint64(m)
    for j in range(m):
        g = (g ^ tok[i + j]) * _FNV_PRIME
    g = fmix64(g)
    return np.uint32((g ^ (g >> _S32)) & _LOW32)


@njit(cache=True, nogil=True)
def _affine32_range(acc: np.ndarray, hashes: np.ndarray, lo: int, hi: int, a: np.ndarray, b: np.ndarray) -> None:
    # acc[k] = min(acc[k], a[k]·fmix32(h) + b[k] mod 2^32) over h in hashes[lo:hi]. Four hashes per
    # pass over k: the load/store of acc[k] is then paid once per four shingles, and the k loop
    # (uint32 multiply, add, min) vectorizes. This blocking made it ~3.5× faster than one at a time.
    i = lo
    while i + 4 <= hi:
        x0 = _fmix32(np.uint32(hashes[i]))
        x1 = _fmix32(np.uint32(hashes[i + 1]))
        x2 = _fmix32(np.uint32(hashes[i + 2]))
        x3 = _fmix32(np.uint32(hashes[i + 3]))
        for k in range(acc.shape[0]):
            ak = a[k]
            bk = b[k]
            v = min(min(np.uint32(ak * x0 + bk), np.uint32(ak * x1 + bk)),
                    min(np.uint32(ak * x2 + bk), np.uint32(ak * x3 + bk)))
            acc[k] = min(acc[k], v)
        i += 4
    while i < hi:
        x = _fmix32(np.uint32(hashes[i]))
        for k in range(acc.shape[0]):
            acc[k] = min(acc[k], np.uint32(a[k] * x + b[k]))
        i += 1


@njit(cache=True, nogil=True)
def _legacy_value(a: np.uint64, b: np.uint64, x: np.uint64) -> np.uint32:
    y = a * x + b  # wraps mod 2^64, as datasketch's numpy code does
    # y mod (2^61−1) without a division: 2^61 ≡ 1, so y ≡ (y >> 61) + (y & p) < 2p.
    r = (y >> _S61) + (y & MERSENNE61)
    if r >= MERSENNE61:
        r -= MERSENNE61
    return np.uint32(r & _LOW32)


@njit(cache=True, nogil=True)
def _legacy_range(acc: np.ndarray, hashes: np.ndarray, lo: int, hi: int, a: np.ndarray, b: np.ndarray) -> None:
    # acc[k] = min(acc[k], legacy permutation k of h) over h in hashes[lo:hi] (no pre-mix).
    for i in range(lo, hi):
        x = np.uint64(hashes[i])
        for k in range(acc.shape[0]):
            acc[k] = min(acc[k], _legacy_value(np.uint64(a[k]), np.uint64(b[k]), x))


@njit(cache=True, nogil=True)
def _signature(acc: np.ndarray, hashes: np.ndarray, lo: int, hi: int, legacy: bool, a: np.ndarray, b: np.ndarray) -> None:
    """acc = the signature of hashes[lo:hi] (all EMPTY when the range is empty)."""
    acc[:] = EMPTY
    if legacy:
        _legacy_range(acc, hashes, lo, hi, a, b)
    else:
        _affine32_range(acc, hashes, lo, hi, a, b)


@njit(cache=True, nogil=True)
def _chunk(c: int, n_chunks: int, n: int) -> tuple[int, int]:
    # Documents [lo, hi) of chunk c: prange runs over chunks so that scratch is allocated once per
    # chunk, not once per document; results do not depend on the chunking.
    return c * n // n_chunks, (c + 1) * n // n_chunks


@njit(cache=True, nogil=True, parallel=True)
def tokenize_kernel(
    buf: np.ndarray, offsets: np.ndarray, table: np.ndarray, char_mode: bool, tok: np.ndarray, counts: np.ndarray
) -> None:
    """Token hashes of document d at tok[offsets[d] − offsets[0]:], their number in counts[d]."""
    for d in prange(offsets.shape[0] - 1):
        counts[d] = _tokenize(buf, offsets[d], offsets[d + 1], table, char_mode, tok, offsets[d] - offsets[0])


@njit(cache=True, nogil=True)
def _shingles_in_place(tok: np.ndarray, t0: int, ntok: int, n: int) -> int:
    """Overwrite tok[t0:t0+k] with the k shingle hashes of the ntok tokens at tok[t0:]; return k.

    In place is safe: shingle s reads tok[t0+s : t0+s+m] and writes tok[t0+s], a slot no later
    shingle reads.
    """
    m = min(n, ntok)
    k = _shingle_count(ntok, n)
    for s in range(k):
        tok[t0 + s] = _shingle_hash(tok, t0 + s, m)
    return k


@njit(cache=True, nogil=True, parallel=True)
def shingle_kernel(
    tok: np.ndarray, offsets: np.ndarray, counts: np.ndarray, n: int, sh_offsets: np.ndarray, out: np.ndarray
) -> None:
    """out[sh_offsets[d]:sh_offsets[d+1]] = the shingle hashes of document d's tokens (from tokenize_kernel)."""
    for d in prange(offsets.shape[0] - 1):
        t0 = offsets[d] - offsets[0]
        k = _shingles_in_place(tok, t0, counts[d], n)
        for s in range(k):
            out[sh_offsets[d] + s] = np.uint32(tok[t0 + s])


@njit(cache=True, nogil=True, parallel=True)
def text_signature_kernel(
    buf: np.ndarray,
    offsets: np.ndarray,
    table: np.ndarray,
    char_mode: bool,
    n: int,
    legacy: bool,
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
) -> None:
    """out[d] = the signature of document d's UTF-8 text: tokenize, shingle and permute in one pass.

    Each chunk of documents owns a token scratch as long as its longest document (in bytes) and
    reuses it for every document: memory stays O(threads × longest document), and the scratch is
    warm in cache (a fresh batch-sized buffer per call cost ~25% in page faults and kept two
    threads from scaling).
    """
    n_docs = offsets.shape[0] - 1
    n_chunks = min(n_docs, 1024)
    for c in prange(n_chunks):
        lo, hi = _chunk(c, n_chunks, n_docs)
        longest = 0
        for d in range(lo, hi):
            longest = max(longest, offsets[d + 1] - offsets[d])
        tok = np.empty(longest, dtype=np.uint64)
        acc = np.empty(a.shape[0], dtype=np.uint32)
        for d in range(lo, hi):
            ntok = _tokenize(buf, offsets[d], offsets[d + 1], table, char_mode, tok, 0)
            k = _shingles_in_place(tok, 0, ntok, n)
            _signature(acc, tok, 0, k, legacy, a, b)
            out[d, :] = acc


@njit(cache=True, nogil=True, parallel=True)
def hash_signature_kernel(
    hashes: np.ndarray, offsets: np.ndarray, legacy: bool, a: np.ndarray, b: np.ndarray, out: np.ndarray
) -> None:
    """out[d] = the signature of the shingle hashes hashes[offsets[d]:offsets[d+1]] (EMPTY if none)."""
    n_docs = offsets.shape[0] - 1
    n_chunks = min(n_docs, 1024)
    for c in prange(n_chunks):
        acc = np.empty(a.shape[0], dtype=np.uint32)
        lo, hi = _chunk(c, n_chunks, n_docs)
        for d in range(lo, hi):
            _signature(acc, hashes, offsets[d], offsets[d + 1], legacy, a, b)
            out[d, :] = acc


def _check_utf8(buf: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    buf = np.ascontiguousarray(buf, dtype=np.uint8)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] < 0 or offsets[-1] > buf.size or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets: expected non-decreasing int64[n_docs+1] within the UTF-8 byte buffer")
    return buf, offsets


def _scheme_params(a: np.ndarray, b: np.ndarray, scheme: str) -> tuple[bool, np.ndarray, np.ndarray]:
    # Fresh writable copies (num_perm values): numba compiles one variant per array flags, and
    # cached read-only permutations would otherwise double the kernels to compile.
    if scheme == "affine32":
        return False, np.array(a, dtype=np.uint32), np.array(b, dtype=np.uint32)
    if scheme == "legacy":
        return True, np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)
    raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")


def shingle_hashes_from_utf8(
    buf: np.ndarray, offsets: np.ndarray, char_mode: bool, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(hashes uint32, offsets int64[n_docs+1]) of the shingles of each document's UTF-8 bytes."""
    if n < 1:
        raise ValueError(f"n: shingle size must be ≥ 1, got {n}")
    buf, offsets = _check_utf8(buf, offsets)
    tok = np.empty(int(offsets[-1] - offsets[0]), dtype=np.uint64)
    counts = np.empty(offsets.size - 1, dtype=np.int64)
    tokenize_kernel(buf, offsets, fold_table(), char_mode, tok, counts)
    sh_offsets = np.zeros(offsets.size, dtype=np.int64)
    np.cumsum(np.where(counts >= n, counts - n + 1, np.minimum(counts, 1)), out=sh_offsets[1:])
    out = np.empty(int(sh_offsets[-1]), dtype=np.uint32)
    shingle_kernel(tok, offsets, counts, n, sh_offsets, out)
    return out, sh_offsets


def signatures_from_utf8(
    buf: np.ndarray, offsets: np.ndarray, char_mode: bool, n: int, a: np.ndarray, b: np.ndarray,
    scheme: str = "affine32",
) -> np.ndarray:
    """uint32[n_docs, num_perm] signatures straight from UTF-8 text (Arrow string layout)."""
    if n < 1:
        raise ValueError(f"n: shingle size must be ≥ 1, got {n}")
    buf, offsets = _check_utf8(buf, offsets)
    legacy, a, b = _scheme_params(a, b, scheme)
    out = np.empty((offsets.size - 1, a.size), dtype=np.uint32)
    text_signature_kernel(buf, offsets, fold_table(), char_mode, n, legacy, a, b, out)
    return out


def signatures_from_hashes(
    hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: str = "affine32"
) -> np.ndarray:
    """uint32[n_docs, num_perm] MinHash signatures of 32-bit shingle hashes in CSR form."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != hashes.size or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets: expected non-decreasing int64[n_docs+1] from 0 to len(hashes)")
    legacy, a, b = _scheme_params(a, b, scheme)
    out = np.empty((offsets.size - 1, a.size), dtype=np.uint32)
    hash_signature_kernel(hashes, offsets, legacy, a, b, out)
    return out

"""Unicode tables for the numba text kernels, built from this Python's `unicodedata` and kept on
disk between processes (`cached_tables`), and the UTF-8 decoding step every kernel shares."""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import unicodedata

import numpy as np
from numba import njit

from curriculum.numba_boot import cache_base  # first: numba without scipy.linalg, a cache folder per kernel source

# Per code point flags (code_point_tables):
NOT_STABLE = 1  # NFC changes it wherever it stands (quick check "no"), or a control character, or CR
SPACE = 2  # str.isspace(): stripped at either end of a document
MAYBE = 4  # NFC quick check "maybe": may compose with the character before it
DECOMPOSES = 8  # has a canonical decomposition (a following mark may compose with its first part)
# Planes 0-3 hold every character with a decomposition or a combining class; the kernel sends a
# document with a code point beyond them (plane 14 tags, private use) to Python.
TABLE_CODE_POINTS = 0x40000
_HANGUL_V = (0x1161, 0x1176)  # vowel and trailing jamo compose algorithmically with a preceding
_HANGUL_T = (0x11A8, 0x11C3)  # syllable (no decomposition mapping lists them)


@njit(cache=True, nogil=True, inline="always")
def decode_utf8(data: np.ndarray, i: int) -> tuple[int, int]:
    """(code point starting at data[i], index after it) of valid UTF-8 bytes."""
    b = np.int64(data[i])
    if b < 0x80:
        return b, i + 1
    if b < 0xE0:
        return ((b & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F), i + 2
    if b < 0xF0:
        return ((b & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6) | (np.int64(data[i + 2]) & 0x3F), i + 3
    return (((b & 0x07) << 18) | ((np.int64(data[i + 1]) & 0x3F) << 12)
            | ((np.int64(data[i + 2]) & 0x3F) << 6) | (np.int64(data[i + 3]) & 0x3F)), i + 4


def cached_tables(name: str, source: str, build) -> tuple[np.ndarray, ...]:
    """`build()`'s arrays, kept on disk between processes: a pool worker or a CLI run loads them
    in ~1 ms instead of rebuilding them from `unicodedata` (~0.1–0.4 s each, per process).

    The file name holds the Python and Unicode versions and a hash of `source` (the file of the
    module that builds the table), so an edit to that module or another Python never reads a
    stale table. The folder is `numba_boot.cache_base()` (`$NUMBA_CACHE_DIR`, else the user
    cache); writes are atomic, and a table that cannot be read or written is just rebuilt.
    """
    with open(source, "rb") as fh:
        tag = hashlib.sha256(fh.read()).hexdigest()[:16]
    base = cache_base()
    path = os.path.join(base, f"{name}-py{sys.version_info[0]}{sys.version_info[1]}-ucd{unicodedata.unidata_version}-{tag}.npz")
    try:
        with np.load(path) as z:
            return tuple(z[f"arr_{i}"] for i in range(len(z.files)))
    except (OSError, ValueError, KeyError):
        pass
    arrays = build()
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    try:
        os.makedirs(base, exist_ok=True)
        np.savez(tmp, *arrays)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return arrays


@functools.cache
def code_point_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flags uint8 and canonical combining class uint8 per code point below TABLE_CODE_POINTS, sorted
    uint64 keys `first << 21 | second` of the canonical two-character decompositions).

    Derived from this Python's `unicodedata`, so they follow its Unicode version. NOT_STABLE:
    the characters NFC changes on their own (quick check "no": singletons, composition
    exclusions, non-starter decompositions) and the Hangul vowel and trailing jamo (composed by
    algorithm, not listed; kept here to stay simple). MAYBE: the second character of a primary
    composite's two-character canonical decomposition (quick check "maybe"). DECOMPOSES: any character with a
    canonical decomposition. Built once (~0.1 s), then read from disk (`cached_tables`).
    Composition exclusions count as NOT_STABLE and give no MAYBE or pair: NFC never composes them.
    """
    flags, ccc, pairs = cached_tables("nfc-tables", __file__, _build_code_point_tables)
    return flags, ccc, pairs


def _build_code_point_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = TABLE_CODE_POINTS
    chars = list(map(chr, range(n)))
    ccc = np.fromiter(map(unicodedata.combining, chars), dtype=np.uint8, count=n)
    flags = np.zeros(n, dtype=np.uint8)
    pairs = []
    for cp, dec in enumerate(map(unicodedata.decomposition, chars)):
        if not dec or dec[0] == "<":  # none, or a compatibility mapping (NFC ignores those)
            continue
        parts = [int(x, 16) for x in dec.split()]
        flags[cp] |= DECOMPOSES
        primary = unicodedata.normalize("NFC", chars[cp]) == chars[cp]
        if len(parts) == 1 or not primary:
            flags[cp] |= NOT_STABLE
        if len(parts) == 2 and primary:
            # Only primary composites compose: an excluded pair (Bengali য + ◌়, whose য় is a
            # composition exclusion) never does, so its second character is not "maybe".
            flags[parts[1]] |= MAYBE
            pairs.append((parts[0] << 21) | parts[1])
    for lo, hi in (_HANGUL_V, _HANGUL_T):
        flags[lo:hi] |= NOT_STABLE
    for lo, hi in ((0x00, 0x09), (0x0B, 0x20), (0x7F, 0xA0)):  # controls and CR: removed or rewritten
        flags[lo:hi] |= NOT_STABLE
    flags[np.fromiter(map(str.isspace, chars), dtype=np.bool_, count=n)] |= SPACE
    return flags, ccc, np.unique(np.asarray(pairs, dtype=np.uint64))


@functools.cache
def nfc_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(decomposition offsets int32[TABLE_CODE_POINTS + 1] and code points int32: each code point's
    full canonical decomposition, empty when it has none; sorted uint64 keys `first << 21 |
    second` and int32 values of the primary composites, Hangul syllables included), from this
    Python's `unicodedata`. Built once (~0.5 s), then read from disk (`cached_tables`)."""
    return cached_tables("nfc-compose", __file__, _build_nfc_tables)  # type: ignore[return-value]


def _build_nfc_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = TABLE_CODE_POINTS
    off = np.zeros(n + 1, dtype=np.int32)
    data: list[int] = []
    pairs: dict[int, int] = {}
    for cp in range(n):
        ch = chr(cp)
        nfd = unicodedata.normalize("NFD", ch)  # full decomposition, marks already in canonical order
        if nfd != ch:
            data.extend(map(ord, nfd))
        off[cp + 1] = len(data)
        dec = unicodedata.decomposition(ch)
        if dec and dec[0] != "<" and unicodedata.normalize("NFC", ch) == ch:
            parts = [int(x, 16) for x in dec.split()]
            if len(parts) == 2:
                pairs[(parts[0] << 21) | parts[1]] = cp
    for syl in range(0xAC00, 0xD7A4):  # Hangul: L + V → LV, LV + T → LVT (by algorithm, not listed)
        si, t = syl - 0xAC00, (syl - 0xAC00) % 28
        key = ((0x1100 + si // 588) << 21) | (0x1161 + (si % 588) // 28) if t == 0 else ((syl - t) << 21) | (0x11A7 + t)
        pairs[key] = syl
    keys = sorted(pairs)
    return (off, np.asarray(data, dtype=np.int32), np.asarray(keys, dtype=np.uint64),
            np.asarray([pairs[k] for k in keys], dtype=np.int32))

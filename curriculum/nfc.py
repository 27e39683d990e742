"""The numba kernels behind `normalize_texts`: which documents the normalization rule can change
(`changed_kernel`, Unicode's NFC quick check on UTF-8), and the whole rule on UTF-8 for those
(`normalize_kernel`: decomposition, canonical ordering, composition), held equal to
`curriculum.normalize.normalize_text` by the tests."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

import curriculum.numba_boot  # noqa: F401  (before any kernel runs: numba without scipy.linalg)
from curriculum.unicode_tables import DECOMPOSES, MAYBE, NOT_STABLE, SPACE, decode_utf8


@njit(cache=True, nogil=True, parallel=True)
def changed_kernel(
    data: np.ndarray, offsets: np.ndarray, flags: np.ndarray, ccc: np.ndarray, pairs: np.ndarray, out: np.ndarray
) -> None:
    """out[d] = True unless `normalize_text` provably leaves document d unchanged.

    data: valid UTF-8 (uint8); offsets: int64[n + 1] into data; tables from `code_point_tables`.
    Unchanged means UAX #15's NFC quick check holds (no NOT_STABLE code point; canonical
    combining classes of marks never decrease, or NFC would reorder them), no control character
    or CR, no whitespace at either end. A MAYBE code point is settled on the spot: right after
    a starter that has no decomposition and is not listed as a pair with it, it stays; a MAYBE
    starter (Bengali ◌া) right after a mark stays too (blocked). A MAYBE mark after a mark, or
    anything MAYBE after a precomposed character (whose decomposition may end in marks the MAYBE
    code point composes past: ǫ + ◌́ → ó + ◌̨), counts as a change and the normalizer decides.
    """
    for d in prange(out.size):
        i = offsets[d]
        end = offsets[d + 1]
        changed = False
        prev_cp = np.int64(-1)  # -1: no code point yet
        prev_ccc = 0
        space = False
        while i < end:
            cp, i = decode_utf8(data, i)
            if cp >= flags.size:
                changed = True
                break
            f = flags[cp]
            c = ccc[cp]
            space = (f & SPACE) != 0
            if (f & NOT_STABLE) != 0 or (c != 0 and prev_ccc > c) or (prev_cp < 0 and space):
                changed = True
                break
            if (f & MAYBE) != 0 and prev_cp >= 0:
                if prev_ccc != 0:
                    # A starter right after a mark is blocked from the starter before the mark
                    # (UAX #15: any character between blocks a starter), so it stays; a mark
                    # may compose past marks of lower class.
                    if c != 0:
                        changed = True
                        break
                elif (flags[prev_cp] & DECOMPOSES) != 0:
                    changed = True
                    break
                key = np.uint64((prev_cp << 21) | cp)
                k = np.searchsorted(pairs, key)
                if k < pairs.size and pairs[k] == key:
                    changed = True
                    break
            prev_cp = cp
            prev_ccc = c
        out[d] = changed or space  # trailing whitespace is stripped


@njit(cache=True, nogil=True, inline="always")
def _ccc_of(cp: int, ccc: np.ndarray) -> int:
    return np.int64(ccc[cp]) if cp < ccc.shape[0] else 0


@njit(cache=True, nogil=True)
def _normalize_doc(data, start, end, flags, ccc, d_off, d_data, c_keys, c_vals, cps, dec, out, o) -> int:
    """`normalize_text` of the valid UTF-8 data[start:end], written as UTF-8 to out[o:]; returns
    the new end. cps and dec are scratch of ≥ end − start and ≥ max decomposition × that."""
    # 1. Decode; CR and CRLF → LF, as are VT, FF, FS..US and NEL (line breaks); the other
    # control characters (C0 and C1 but tab and LF, DEL) dropped.
    m = 0
    i = start
    while i < end:
        cp, i = decode_utf8(data, i)
        if cp == 0x0D:
            cp = 0x0A
            if i < end and data[i] == 0x0A:
                i += 1
        elif cp == 0x0B or cp == 0x0C or (cp >= 0x1C and cp <= 0x1F) or cp == 0x85:
            cp = 0x0A
        elif (cp < 0x20 and cp != 0x09 and cp != 0x0A) or (cp >= 0x7F and cp <= 0x9F):
            continue
        cps[m] = cp
        m += 1
    # 2. Full canonical decomposition.
    q = 0
    for j in range(m):
        cp = cps[j]
        if cp < d_off.shape[0] - 1 and d_off[cp + 1] > d_off[cp]:
            for t in range(d_off[cp], d_off[cp + 1]):
                dec[q] = d_data[t]
                q += 1
        else:
            dec[q] = cp
            q += 1
    # 3. Canonical ordering: a stable insertion sort of each run of marks by combining class
    # (a starter, class 0, stops the walk back).
    for j in range(1, q):
        x = dec[j]
        c = _ccc_of(x, ccc)
        if c == 0:
            continue
        k = j
        while k > 0 and _ccc_of(dec[k - 1], ccc) > c:
            dec[k] = dec[k - 1]
            k -= 1
        dec[k] = x
    # 4. Canonical composition, in place: a character joins the last starter when nothing between
    # blocks it (the last kept character is the starter itself, or a mark of lower class; marks
    # between are in class order, so the last one has the highest class) and the pair is a
    # primary composite.
    starter = -1
    last_cc = 0
    n_out = 0
    for j in range(q):
        x = dec[j]
        c = _ccc_of(x, ccc)
        if starter >= 0 and (n_out == starter + 1 or last_cc < c):
            key = np.uint64((np.int64(dec[starter]) << 21) | x)
            k = np.searchsorted(c_keys, key)
            if k < c_keys.shape[0] and c_keys[k] == key:
                dec[starter] = c_vals[k]
                continue
        if c == 0:
            starter = n_out
        last_cc = c
        dec[n_out] = x
        n_out += 1
    # 5. Strip whitespace (str.isspace: all below the table's end) at both ends; encode.
    a = 0
    while a < n_out and dec[a] < flags.shape[0] and (flags[dec[a]] & SPACE) != 0:
        a += 1
    z = n_out
    while z > a and dec[z - 1] < flags.shape[0] and (flags[dec[z - 1]] & SPACE) != 0:
        z -= 1
    for j in range(a, z):
        cp = np.int64(dec[j])
        if cp < 0x80:
            out[o] = cp
            o += 1
        elif cp < 0x800:
            out[o] = 0xC0 | (cp >> 6)
            out[o + 1] = 0x80 | (cp & 0x3F)
            o += 2
        elif cp < 0x10000:
            out[o] = 0xE0 | (cp >> 12)
            out[o + 1] = 0x80 | ((cp >> 6) & 0x3F)
            out[o + 2] = 0x80 | (cp & 0x3F)
            o += 3
        else:
            out[o] = 0xF0 | (cp >> 18)
            out[o + 1] = 0x80 | ((cp >> 12) & 0x3F)
            out[o + 2] = 0x80 | ((cp >> 6) & 0x3F)
            out[o + 3] = 0x80 | (cp & 0x3F)
            o += 4
    return o


@njit(cache=True, nogil=True)
def normalize_kernel(data, offsets, docs, flags, ccc, d_off, d_data, c_keys, c_vals, max_dec, out, out_off) -> None:
    """`normalize_text` of documents `docs` (indices into offsets) as UTF-8: document docs[k] at
    out[out_off[k]:out_off[k + 1]]. out needs 3 bytes per input byte (the largest growth of a
    canonical decomposition in UTF-8) plus 4 per document."""
    longest = 0
    for k in range(docs.shape[0]):
        longest = max(longest, offsets[docs[k] + 1] - offsets[docs[k]])
    cps = np.empty(longest, dtype=np.int32)  # once per call: reused by every document
    dec = np.empty(longest * max_dec, dtype=np.int32)
    o = 0
    out_off[0] = 0
    for k in range(docs.shape[0]):
        d = docs[k]
        o = _normalize_doc(data, offsets[d], offsets[d + 1], flags, ccc, d_off, d_data, c_keys, c_vals, cps, dec, out, o)
        out_off[k + 1] = o


@njit(cache=True, nogil=True)
def _splice(data, offsets, docs, new, new_off, dest_off, dest) -> None:
    """dest = the documents of (data, offsets), those in `docs` replaced by new[new_off[k]:...]."""
    k = 0
    for d in range(offsets.shape[0] - 1):
        if k < docs.shape[0] and docs[k] == d:
            src, lo, hi = new, new_off[k], new_off[k + 1]
            k += 1
        else:
            src, lo, hi = data, offsets[d], offsets[d + 1]
        dest[dest_off[d] : dest_off[d] + (hi - lo)] = src[lo:hi]

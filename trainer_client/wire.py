"""The batch wire format: one definition, used by the server to encode and by trainers to decode.

Imports only numpy and pyarrow, so a GPU node needs neither numba nor FastAPI to read batches.

A response is an Arrow IPC *stream* (media type `application/vnd.apache.arrow.stream`). Each
record batch is one training batch of one rank; a row is one packed sequence of length L:

    input_ids   fixed_size_list<int32>[L]     token ids after masking
    mask_pos    list<int32>                   positions masked in the row, ascending   (sparse)
    mask_label  list<int32>                   original token id at each of those       (sparse)
    labels      fixed_size_list<int32>[L]     -100 where not masked                    (dense)
    doc_starts  list<int32>                   row positions where a document segment starts;
                                              always holds 0 (a row start is a boundary)
    lang        dictionary<int32, string>     the row's language key

Exactly one of the two label encodings is present: `sparse` (the default: at the mmBERT mask
ratios 5–30 % of tokens carry a label, so two short lists cost 0.4–2.4 bytes a token instead of
4) or `dense` (`?labels=dense`, for debugging and comparison). The schema's metadata says which:
`lc.wire` = "1" (this version) and `lc.labels` = "sparse" | "dense".

The `lang` dictionary is the server's whole language table (`Sampler.languages`, the manifest's
order), sent once per IPC stream and never repeated, so the indices are exactly `Batch.lang`.

Each record batch carries custom metadata (UTF-8 strings; floats in Python's shortest
round-trip repr): build_id, step, phase, phase_index, tau, mask_ratio, seq_len, lr_factor, rank,
world_size, global_batch, tokens_before — see METADATA_FIELDS for the types `decode` restores.
`build_id` identifies manifest + recipe + seed (+ phase variant): two servers with the same
build id return the same bytes for the same request.

Optional zstd compression of the IPC body buffers (`?compression=zstd`, Arrow's own buffer
compression): decoding is the same call. `GET /v1/stream` sends consecutive batches; the schema
holds L, so a new IPC stream (schema, dictionary, batches, end-of-stream marker) starts whenever
the sequence length changes at a phase boundary, and `decode_stream` reads the concatenation.

Encoding is stateless: `encode_batch` turns one batch into a complete one-batch IPC stream
(the `GET /v1/batches/{step}` body) and records where its record-batch message lies, so the
server encodes batches of a stream in parallel worker threads and `StreamJoiner` only
concatenates header + messages + end-of-stream in order.

Decoded arrays equal the sampler's `Batch` fields byte for byte: `input_ids` (and dense
`labels`) are zero-copy, read-only views of the Arrow buffer (of the decompressed buffer with
zstd); sparse labels are expanded into a fresh int32[B, L] filled with -100; `cu_seqlens` is
rebuilt over the flattened B·L tokens (FlashAttention-2 varlen layout). Decoding checks what it
reads first (columns and types against the schema above, Arrow's full validation of every buffer,
positions inside their rows and ascending, language indices inside the dictionary) and raises
WireError, a ValueError, for anything else: corrupt or truncated bytes never decode into arrays
of other shapes.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa

WIRE_VERSION = "1"
MEDIA_TYPE = "application/vnd.apache.arrow.stream"
IGNORE_INDEX = -100
LabelMode = Literal["sparse", "dense"]
Compression = Literal["zstd"] | None
LABEL_MODES: tuple[str, ...] = ("sparse", "dense")
COMPRESSIONS: tuple[str, ...] = ("none", "zstd")

# Per-batch metadata: key -> type `decode` converts it back to.
METADATA_FIELDS: dict[str, type] = {
    "build_id": str,
    "step": int,
    "phase": str,
    "phase_index": int,
    "tau": float,
    "mask_ratio": float,
    "seq_len": int,
    "lr_factor": float,
    "rank": int,
    "world_size": int,
    "global_batch": int,
    "tokens_before": int,
}


# Optional metadata (servers with an amendment journal): decoded with these types when present.
# `build_id` is then the run id hashed with the journal prefix in force at the step; `run_id`
# identifies manifest + recipe + seed whatever the amendments.
OPTIONAL_METADATA: dict[str, type] = {"run_id": str, "journal_version": int}


class WireError(ValueError):
    """Bytes that are not a batch stream of this wire version."""


class BatchArrays(Protocol):
    """What the encoder reads from a batch (the sampler's `Batch` has these fields)."""

    input_ids: np.ndarray
    labels: np.ndarray
    cu_seqlens: np.ndarray
    lang: np.ndarray


def batch_schema(seq_len: int, labels: LabelMode = "sparse") -> pa.Schema:
    """Arrow schema of a batch stream with rows of `seq_len` tokens."""
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    row = pa.list_(pa.int32(), seq_len)
    cols = [pa.field("input_ids", row, nullable=False)]
    if labels == "sparse":
        cols += [pa.field("mask_pos", pa.list_(pa.int32()), nullable=False),
                 pa.field("mask_label", pa.list_(pa.int32()), nullable=False)]
    else:
        cols.append(pa.field("labels", row, nullable=False))
    cols += [pa.field("doc_starts", pa.list_(pa.int32()), nullable=False),
             pa.field("lang", pa.dictionary(pa.int32(), pa.string()), nullable=False)]
    return pa.schema(cols, metadata={"lc.wire": WIRE_VERSION, "lc.labels": labels})


def batch_metadata(build_id: str, info: object, rank: int, world_size: int, *, run_id: str | None = None,
                   journal_version: int | None = None) -> dict[str, str]:
    """Custom metadata of one batch from the sampler's `StepInfo` (read by attribute name)."""
    out = {"build_id": str(build_id), "rank": str(int(rank)), "world_size": str(int(world_size))}
    if run_id is not None:
        out["run_id"] = str(run_id)
    if journal_version is not None:
        out["journal_version"] = str(int(journal_version))
    for key, typ in METADATA_FIELDS.items():
        if key in out:
            continue
        v = getattr(info, key)
        # repr(float) is the shortest string that parses back to the same double.
        out[key] = repr(float(v)) if typ is float else str(int(v)) if typ is int else str(v)
    return out


def _list_array(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))


def wire_parts(labels: np.ndarray, cu_seqlens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The variable-length columns of a batch: (doc_off, doc_pos, mask_off, mask_pos, mask_label),
    all int32. Row b's document starts (positions in the row) are doc_pos[doc_off[b]:doc_off[b+1]],
    its masked positions mask_pos[mask_off[b]:mask_off[b+1]] with original ids mask_label[...].

    The numpy reference; the server computes the same arrays in one numba kernel
    (`sampler_server.kernels.wire_parts`) and passes them to `to_record_batch` as `parts`."""
    doc_off, doc_pos = _doc_parts(np.asarray(cu_seqlens), *labels.shape)
    return (doc_off, doc_pos, *_sparse_parts(labels))


def _doc_parts(cu: np.ndarray, B: int, L: int) -> tuple[np.ndarray, np.ndarray]:
    if cu.ndim != 1 or cu.size < 2 or cu[0] != 0 or cu[-1] != B * L or np.any(np.diff(cu) <= 0):
        raise ValueError(f"cu_seqlens must rise strictly from 0 to B*L={B * L}")
    starts = cu[:-1].astype(np.int64)
    row_of = starts // L
    per_row = np.bincount(row_of, minlength=B)
    if per_row.min() < 1 or np.any(starts[np.concatenate(([0], np.cumsum(per_row)[:-1]))] != np.arange(B) * L):
        raise ValueError("cu_seqlens must hold every row start (r * L): documents never span rows")
    doc_off = np.concatenate(([0], np.cumsum(per_row))).astype(np.int32)
    return doc_off, (starts - row_of * L).astype(np.int32)


def _sparse_parts(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    B, L = lab.shape
    flat = lab.reshape(-1)
    where = np.flatnonzero(flat != IGNORE_INDEX)  # ascending flat positions
    row_starts = np.arange(B + 1, dtype=np.int64) * L
    off = np.searchsorted(where, row_starts)
    pos = (where - np.repeat(row_starts[:-1], np.diff(off))).astype(np.int32)
    return off.astype(np.int32), pos, flat[where]


def to_record_batch(batch: BatchArrays, dictionary: pa.Array, labels: LabelMode = "sparse",
                    parts: tuple[np.ndarray, ...] | None = None) -> pa.RecordBatch:
    """The Arrow record batch of one batch; `input_ids` (and dense labels) are not copied.
    `parts`: `wire_parts(batch.labels, batch.cu_seqlens)` when the caller has it already (the
    server's kernel); it is trusted, not re-checked."""
    ids = np.ascontiguousarray(batch.input_ids, dtype=np.int32)
    lab = np.ascontiguousarray(batch.labels, dtype=np.int32)
    if ids.ndim != 2 or lab.shape != ids.shape:
        raise ValueError(f"input_ids and labels must both be [B, L]; got {ids.shape} and {lab.shape}")
    B, L = ids.shape
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    if parts is not None:
        doc_off, doc_pos, mask_off, mask_pos, mask_label = parts
    else:
        doc_off, doc_pos = _doc_parts(np.asarray(batch.cu_seqlens), B, L)
        if labels == "sparse":
            mask_off, mask_pos, mask_label = _sparse_parts(lab)
    cols = [pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1), pa.int32()), L)]
    if labels == "sparse":
        cols += [_list_array(mask_off, mask_pos), _list_array(mask_off, mask_label)]
    else:
        cols.append(pa.FixedSizeListArray.from_arrays(pa.array(lab.reshape(-1), pa.int32()), L))
    lang = np.ascontiguousarray(batch.lang, dtype=np.int32)
    if lang.shape != (B,) or (B and (lang.min() < 0 or lang.max() >= len(dictionary))):
        raise ValueError(f"lang must be int32[{B}] indexing a dictionary of {len(dictionary)} languages")
    cols += [_list_array(doc_off, doc_pos), pa.DictionaryArray.from_arrays(pa.array(lang, pa.int32()), dictionary)]
    return pa.RecordBatch.from_arrays(cols, schema=batch_schema(L, labels))


EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the IPC end-of-stream marker


@dataclass(frozen=True)
class EncodedBatch:
    """One batch as a complete one-batch IPC stream, split where a longer stream can reuse it:
    `header` (schema + dictionary messages), `body` (the record batch message), then EOS.
    Encoding is stateless, so batches can be encoded in parallel and joined in order later."""

    buffer: pa.Buffer  # header + body + EOS
    header_size: int
    body_size: int
    seq_len: int
    build_id: str = ""  # from the metadata: the server's X-Build-Id of this batch

    def _view(self) -> memoryview:
        return memoryview(self.buffer).cast("B")  # pyarrow exports signed bytes ('b')

    @property
    def header(self) -> memoryview:
        return self._view()[: self.header_size]

    @property
    def body(self) -> memoryview:
        return self._view()[self.header_size : self.header_size + self.body_size]

    def standalone(self) -> memoryview:
        """The whole one-batch stream (a `GET /v1/batches/{step}` response), not copied."""
        return self._view()


def encode_batch(batch: BatchArrays, metadata: Mapping[str, str], dictionary: Sequence[str] | pa.Array, *,
                 labels: LabelMode = "sparse", compression: Compression = None,
                 parts: tuple[np.ndarray, ...] | None = None) -> EncodedBatch:
    """Encode one batch (with its custom metadata) as a one-batch IPC stream (`parts`: see
    `to_record_batch`)."""
    if compression not in (None, "zstd"):
        raise ValueError(f"compression must be None or 'zstd', got {compression!r}")
    if not isinstance(dictionary, pa.Array):
        dictionary = pa.array(list(dictionary), pa.string())
    rb = to_record_batch(batch, dictionary, labels, parts)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rb.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_batch(rb, custom_metadata={k: str(v) for k, v in metadata.items()})
    buf = sink.getvalue()
    # Find where the record batch message starts and ends (schema and dictionary come first).
    reader = pa.BufferReader(buf)
    start = 0
    while True:
        msg = pa.ipc.read_message(reader)
        if msg.type == "record batch":
            break
        start = reader.tell()
    return EncodedBatch(buf, start, reader.tell() - start, rb.schema.field("input_ids").type.list_size,
                        str(metadata.get("build_id", "")))


class StreamJoiner:
    """Joins encoded batches, in order, into one response: a header whenever the schema (the
    sequence length) changes, after an EOS that closes the previous IPC stream."""

    def __init__(self) -> None:
        self._header: bytes | None = None

    def add(self, enc: EncodedBatch) -> bytes:
        parts: list[bytes | memoryview] = []
        header = bytes(enc.header)  # small (schema + language table); bytes compare with memcmp
        if header != self._header:
            if self._header is not None:
                parts.append(EOS)
            self._header = header
            parts.append(header)
        parts.append(enc.body)
        return b"".join(parts)

    def close(self) -> bytes:
        """The EOS of the open IPC stream (b"" when nothing was added)."""
        return EOS if self._header is not None else b""


def encode(batches: Iterable[tuple[BatchArrays, Mapping[str, str]]], languages: Sequence[str] | pa.Array, *,
           labels: LabelMode = "sparse", compression: Compression = None) -> bytes:
    """A whole response: (batch, metadata) pairs as IPC stream bytes."""
    dictionary = languages if isinstance(languages, pa.Array) else pa.array(list(languages), pa.string())
    joiner = StreamJoiner()
    parts = [joiner.add(encode_batch(b, md, dictionary, labels=labels, compression=compression)) for b, md in batches]
    parts.append(joiner.close())
    return b"".join(parts)


@dataclass(frozen=True)
class WireBatch:
    """A decoded batch; array fields equal the sampler's `Batch` fields byte for byte."""

    input_ids: np.ndarray  # int32[B, L], read-only view of the Arrow buffer
    labels: np.ndarray  # int32[B, L], -100 where not masked
    cu_seqlens: np.ndarray  # int32[n_docs + 1] over the flattened B·L tokens
    lang: np.ndarray  # int32[B], index into `languages`
    languages: tuple[str, ...]  # the server's language table
    metadata: dict[str, str | int | float] = field(default_factory=dict)

    @property
    def lang_names(self) -> list[str]:
        return [self.languages[i] for i in self.lang.tolist()]

    @property
    def max_seqlen(self) -> int:
        return int(np.diff(self.cu_seqlens).max()) if self.cu_seqlens.size > 1 else 0


def _values(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets relative to the values, int32 values) of a list<int32> column."""
    off = col.offsets.to_numpy()
    vals = col.flatten().to_numpy(zero_copy_only=True)
    return off - off[0], vals


def _matrix(col: pa.Array, B: int, L: int) -> np.ndarray:
    flat = col.flatten().to_numpy(zero_copy_only=True)  # zero-copy: no nulls, primitive int32
    return flat.reshape(B, L)


def _parse_metadata(raw: Mapping[bytes, bytes] | None) -> dict[str, str | int | float]:
    if raw is None:
        raise WireError("record batch without metadata: not a batch stream of wire version " + WIRE_VERSION)
    try:
        md = {k.decode(): v.decode() for k, v in raw.items()}
    except UnicodeDecodeError:
        raise WireError("batch metadata is not UTF-8: the response is corrupt") from None
    missing = [k for k in METADATA_FIELDS if k not in md]
    if missing:
        raise WireError(f"batch metadata lacks {', '.join(missing)}; server and client wire versions differ?")
    types = {**OPTIONAL_METADATA, **METADATA_FIELDS}
    out: dict[str, str | int | float] = {}
    for k, v in md.items():
        try:
            out[k] = types[k](v) if k in types else v
        except ValueError:
            raise WireError(f"batch metadata {k}={v!r} is not a {types[k].__name__}: the response is corrupt") from None
    return out


def _check_layout(rb: pa.RecordBatch) -> tuple[int, int, bool]:
    """(B, L, dense labels) of a record batch that is exactly a batch of this wire version:
    the schema's columns and types, then Arrow's full validation (offsets within their buffers,
    dictionary indices within the dictionary) before any buffer is read, so corrupt bytes raise
    WireError instead of reading out of bounds (pyarrow aborts the process on such offsets)."""
    meta = rb.schema.metadata or {}
    if meta.get(b"lc.wire") != WIRE_VERSION.encode():
        raise WireError(f"stream is wire version {meta.get(b'lc.wire')!r}, this client reads {WIRE_VERSION!r}")
    mode = meta.get(b"lc.labels", b"").decode(errors="replace")
    if mode not in LABEL_MODES:
        raise WireError(f"schema metadata lc.labels={mode!r}, expected one of {', '.join(LABEL_MODES)}")
    try:
        got = [(f.name, f.type) for f in rb.schema]
    except UnicodeDecodeError:
        raise WireError("a column name is not UTF-8: the response is corrupt") from None
    ids = dict(got).get("input_ids")
    L = ids.list_size if isinstance(ids, pa.FixedSizeListType) else 0
    if L < 1 or got != _layout(L, mode):
        shown = ", ".join(f"{n}: {t}" for n, t in got)
        raise WireError(f"record batch columns ({shown}) are not a {mode}-label batch of wire version {WIRE_VERSION}")
    if rb.num_rows < 1:
        raise WireError("record batch has no rows: a batch holds at least one sequence")
    try:
        rb.validate(full=True)
    except pa.ArrowException as exc:
        raise WireError(f"corrupt record batch ({exc})") from None
    for f, col in zip(rb.schema, rb.columns):
        child = col.indices if f.name == "lang" else col.values
        if col.null_count or child.null_count:
            raise WireError(f"column {f.name} holds nulls: the response is corrupt")
    return rb.num_rows, L, mode == "dense"


@functools.lru_cache(maxsize=16)
def _layout(seq_len: int, labels: str) -> list[tuple[str, pa.DataType]]:
    """(name, type) of each column of a batch with rows of `seq_len` tokens."""
    return [(f.name, f.type) for f in batch_schema(seq_len, labels)]  # type: ignore[arg-type]


def _row_positions(name: str, off: np.ndarray, pos: np.ndarray, B: int, L: int) -> np.ndarray:
    """Flat positions (row * L + pos) of a per-row list of positions; WireError unless every
    position lies in its row and they ascend strictly."""
    if pos.size and (int(pos.min()) < 0 or int(pos.max()) >= L):
        raise WireError(f"column {name}: a position lies outside [0, {L}): the response is corrupt")
    flat = np.repeat(np.arange(B, dtype=np.int64), np.diff(off)) * L + pos
    if np.any(np.diff(flat) <= 0):
        raise WireError(f"column {name}: positions do not ascend within their rows: the response is corrupt")
    return flat


def from_record_batch(rb: pa.RecordBatch, custom_metadata: Mapping[bytes, bytes] | None,
                      languages: tuple[str, ...] | None = None) -> WireBatch:
    """Decode one record batch (plus its custom metadata) of a batch stream; WireError when it
    is not a well-formed batch (shapes, positions and language indices are checked)."""
    B, L, dense = _check_layout(rb)
    input_ids = _matrix(rb.column("input_ids"), B, L)
    if dense:
        labels = _matrix(rb.column("labels"), B, L)
    else:
        off, pos = _values(rb.column("mask_pos"))
        off2, lab = _values(rb.column("mask_label"))
        if not np.array_equal(off, off2):
            raise WireError("columns mask_pos and mask_label differ in length per row: the response is corrupt")
        labels = np.full((B, L), IGNORE_INDEX, np.int32)
        labels.reshape(-1)[_row_positions("mask_pos", off, pos, B, L)] = lab
    off, starts = _values(rb.column("doc_starts"))
    if np.any(np.diff(off) < 1) or np.any(starts[off[:-1]] != 0):
        raise WireError("column doc_starts: a row does not start with position 0: the response is corrupt")
    cu = np.empty(starts.size + 1, np.int32)
    cu[:-1] = _row_positions("doc_starts", off, starts, B, L)
    cu[-1] = B * L
    lang_col = rb.column("lang")
    lang = lang_col.indices.to_numpy(zero_copy_only=True)
    if int(lang.min()) < 0 or int(lang.max()) >= len(lang_col.dictionary):
        raise WireError(f"column lang: an index lies outside the {len(lang_col.dictionary)} languages")
    if languages is None:
        languages = dictionary_names(lang_col.dictionary)
    return WireBatch(input_ids, labels, cu, lang, languages, _parse_metadata(custom_metadata))


_LAST_NAMES: list[tuple[pa.Array, tuple[str, ...]] | None] = [None]


def dictionary_names(dictionary: pa.Array) -> tuple[str, ...]:
    """The language names of a batch's dictionary. Every response of a run repeats the same
    dictionary, and turning 1,833 names into Python strings costs ~80 µs, so the last one is
    kept and compared (~2 µs): a copy, not the response's own array, which would pin the whole
    response buffer. Thread-safe: a race only computes the names twice."""
    hit = _LAST_NAMES[0]
    if hit is not None and hit[0].equals(dictionary):
        return hit[1]
    names = tuple(dictionary.to_pylist())
    _LAST_NAMES[0] = (pa.array(names, pa.string()), names)
    return names


def decode_stream(source: bytes | bytearray | memoryview | pa.Buffer | io.RawIOBase | io.BufferedIOBase) -> Iterator[WireBatch]:
    """Every batch of a response, in order: one or more IPC streams back to back."""
    if isinstance(source, (bytes, bytearray, memoryview, pa.Buffer)):
        buf = source if isinstance(source, pa.Buffer) else pa.py_buffer(source)
        # Every stream the server writes ends with Arrow's end-of-stream marker: a body cut right
        # after a whole batch would otherwise decode as a shorter stream, silently.
        if buf.size == 0:
            raise WireError("empty response: no Arrow IPC stream")
        if buf.size < len(EOS) or memoryview(buf)[-len(EOS):].tobytes() != EOS:
            raise WireError(f"truncated response: {buf.size:,} bytes without the end-of-stream marker")
        reader_src: pa.NativeFile | io.IOBase = pa.BufferReader(buf)
        at_end = lambda: reader_src.tell() >= buf.size  # noqa: E731
    elif hasattr(source, "read"):
        reader_src = source
        at_end = lambda: not _peek(reader_src)  # noqa: E731
    else:
        raise TypeError(f"decode_stream: expected bytes, a pyarrow Buffer or a binary file, got {type(source).__name__}")
    while not at_end():
        try:
            reader = pa.ipc.open_stream(reader_src)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise WireError(f"not an Arrow IPC stream ({exc})") from None
        while True:
            try:
                rb, md = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                break
            except (pa.ArrowException, OSError, ValueError) as exc:  # truncated or corrupt bytes
                raise WireError(f"corrupt Arrow IPC stream ({exc})") from None
            yield from_record_batch(rb, md)


def _peek(f: io.IOBase) -> bool:
    """True when a buffered file-like source has more bytes (it must support peek or seek)."""
    if hasattr(f, "peek"):
        return len(f.peek(1)) > 0
    pos = f.tell()
    more = len(f.read(1)) > 0
    f.seek(pos)
    return more


def decode(data: bytes | bytearray | memoryview | pa.Buffer) -> WireBatch:
    """The single batch of a `GET /v1/batches/{step}` response; WireError if it is not one."""
    out = list(decode_stream(data))
    if len(out) != 1:
        raise WireError(f"expected one batch, the stream holds {len(out)}; use decode_stream for /v1/stream")
    return out[0]

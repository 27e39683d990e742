"""Fuzzing the build's handling of bad input (issue #3, item 8): valid files of every supported
format, corrupted, must read without raising, account for every line or row, name the file (and
line) of each problem, and leave the good files beside them exactly as they build alone.

Most examples call the readers directly (hypothesis, derandomized, bounded); two full builds in
this process (one worker) and the CLI (typer's runner, same process) check the contract end to end.
A regression test for each bug the fuzzing found sits under "regressions".
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import shutil
import string
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_text_corpus
from curriculum import ingest
from curriculum.ingest import DROP_REASONS, FILE_REASONS, ISSUES_PER_REASON, FileIssue, InputFile, discover_inputs
from curriculum.languages import normalize_language
from test_ingest import read_all

FUZZ = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BOM = b"\xef\xbb\xbf"
SNIFF = ingest.SNIFF_BYTES
# Valid documents: several scripts, JSON escapes, an emoji, some with a line break inside; 8-17 kB
# as a file, so that damage lands before and after the reader's binary sniff window.
DOCS = tuple(
    f"{w} document {i}: " + " ".join([w] * (2 + (i * 7) % 23)) + (' with "quotes", a \\ and a\ttab' if i % 5 == 0 else "")
    + ("\nsecond line" if i % 6 == 3 else "")
    for i, w in enumerate(["café", "Straße", "привет", "日本語", "العربية", "हिन्दी", "🙂 emoji", "ελληνικά"] * 5)
)
PAD = [{"text": f"padding document {i}"} for i in range(320)]  # ~8 kB: what follows is past the sniff window
SUFFIX = {("jsonl", "none"): ".jsonl", ("jsonl", "gzip"): ".jsonl.gz", ("jsonl", "zstd"): ".jsonl.zst",
          ("txt", "none"): ".txt", ("txt", "gzip"): ".txt.gz", ("txt", "zstd"): ".txt.zst"}


# -- building and corrupting files --------------------------------------------------------------


def compress(raw: bytes, compression: str, split: float = 1.0) -> bytes:
    """`raw` as the file of that compression; split < 1 cuts it into two gzip members / zstd
    frames there (with a skippable zstd frame between them)."""
    if compression == "none":
        return raw
    cut = int(len(raw) * split)
    parts = [raw[:cut], raw[cut:]] if 0 < cut < len(raw) else [raw]
    if compression == "gzip":
        return b"".join(gzip.compress(p, mtime=0) for p in parts)
    frames = [zstandard.ZstdCompressor(write_checksum=True).compress(p) for p in parts]
    skippable = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"seek!"
    return skippable.join(frames)


def strict_decompress(data: bytes, compression: str) -> bytes:
    """The decoded stream, or ValueError if any part of it is damaged (an independent reference:
    one-shot calls, not the reader's streaming)."""
    if compression == "none":
        return data
    if compression == "gzip":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, gzip.zlib.error) as exc:
            raise ValueError(exc) from None
    out, dctx = [], zstandard.ZstdDecompressor()
    while data:
        obj = dctx.decompressobj()
        try:
            out.append(obj.decompress(data))
        except zstandard.ZstdError as exc:
            raise ValueError(exc) from None
        if not obj.eof:
            raise ValueError("truncated frame")
        data = obj.unused_data
    return b"".join(out)


def parquet_bytes(table: pa.Table, **kw) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=256)),
    st.tuples(st.just("overwrite"), st.floats(0, 1), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("nul"), st.floats(0, 1)),
)


def mutate(data: bytes, m: tuple) -> bytes:
    """Apply one drawn corruption to a file's bytes."""
    b = bytearray(data)
    at = lambda x: min(int(x * len(b)), len(b))  # noqa: E731
    if m[0] == "flip":
        for pos, bit in m[1]:
            if b:
                b[min(int(pos * len(b)), len(b) - 1)] ^= 1 << bit
    elif m[0] == "truncate":
        del b[at(m[1]):]
    elif m[0] == "insert":
        b[at(m[1]):at(m[1])] = m[2]
    elif m[0] == "append":
        b += m[1]
    elif m[0] == "overwrite":
        b[at(m[1]) : at(m[1]) + len(m[2])] = m[2]
    elif m[0] == "footer":  # bytes of a Parquet footer (the thrift metadata before the closing length + PAR1)
        size = int.from_bytes(b[-8:-4], "little") + 8
        for pos, value in m[1]:
            b[len(b) - size + min(int(pos * size), size - 1)] = value
    else:
        b[at(m[1]):at(m[1])] = b"\0"
    return bytes(b)


def random_mutation(rng: random.Random) -> tuple:
    """A mutation as MUTATIONS draws them, from a seeded RNG (for the build tests)."""
    kind = rng.choice(["flip", "truncate", "insert", "append", "overwrite"])
    if kind == "flip":
        return kind, [(rng.random(), rng.randrange(8)) for _ in range(rng.randint(1, 8))]
    if kind == "truncate":
        return kind, rng.random()
    if kind == "append":
        return kind, rng.randbytes(rng.randint(1, 256))
    return kind, rng.random(), rng.randbytes(rng.randint(1, 32))


# -- what a reader must account for -------------------------------------------------------------


def stream_units(decoded: bytes, max_line_bytes: int) -> tuple[int, int, int]:
    """(JSONL documents, text blocks, lines) in a decoded stream: a JSONL document is a line that
    is not blank (or too long); a text document is a run of such lines."""
    lines = decoded.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    docs = blocks = 0
    prev = False
    for i, line in enumerate(lines):
        content = line[len(BOM):] if i == 0 and line.startswith(BOM) else line
        unit = len(line) > max_line_bytes or bool(content.strip())
        docs += unit
        blocks += unit and not prev
        prev = unit
    return docs, blocks, len(lines)


def check_issues(path: Path, drops: Counter, issues: list[FileIssue], max_line: int | None = None, first_line: int = 1) -> None:
    """Every issue names the file and a known reason; each drop reason lists its first lines (the
    cap per reason), in the range the file has."""
    assert all(i.path == str(path) and i.message for i in issues), issues
    listed = Counter(i.reason for i in issues if i.line is not None)
    # A damaged Parquet row group's rows are counted in bulk; one file issue names their range.
    assert listed == Counter({r: min(n, ISSUES_PER_REASON) for r, n in drops.items() if r != "corrupt_parquet"}), (listed, drops)
    assert set(drops) <= set(DROP_REASONS)
    assert {i.reason for i in issues if i.line is None} <= set(FILE_REASONS)
    for i in issues:
        if i.line is not None:
            assert first_line <= i.line and (max_line is None or i.line <= max_line), i


def parquet_skipped(issues: list[FileIssue]) -> int:
    """Rows a reader reported as skipped in damaged row groups."""
    return sum(int(b) - int(a) + 1 for i in issues for a, b in re.findall(r"rows (\d+)\.\.(\d+) skipped", i.message))


def check_parquet_read(path: Path, n_written: int, batch_size: int = 4096) -> None:
    """A Parquet file, intact or not, reads without raising; kept + dropped + reported skipped rows
    = the rows its row groups claim; row numbers are unique and in range; a lost row is reported."""
    texts, _, rows, drops, issues, _ = read_all(InputFile(str(path), "parquet"), batch_size=batch_size)
    try:
        meta = pq.ParquetFile(path).metadata
    except Exception:  # noqa: BLE001 - any footer pyarrow cannot read: the reader must say so
        meta = None
    total = 0 if meta is None else sum(max(0, meta.row_group(g).num_rows) for g in range(meta.num_row_groups))
    check_issues(path, drops, issues, max_line=None if meta is None else total - 1, first_line=0)
    file_reasons = [i.reason for i in issues if i.line is None]
    if len(texts) < n_written:
        assert issues, "documents lost without an issue"
    if meta is None:
        assert texts == [] and not drops and file_reasons in (["not_parquet"], ["corrupt_parquet"], ["empty_file"]), issues
        return
    assert (np.diff(rows) > 0).all() and (rows >= 0).all() and (rows < total).all()
    if set(file_reasons) & {"no_text_column", "non_string_text", "ambiguous_column"}:  # the schema was hit
        assert texts == [] and not drops
        return
    # Every row the footer claims is kept or dropped by reason: the rows of damaged row groups
    # (each range named by a file issue) and those the footer counts past its groups.
    beyond = max(0, meta.num_rows - total)
    assert drops["corrupt_parquet"] == parquet_skipped(issues) + beyond, (drops, issues)
    assert len(texts) + sum(drops.values()) == total + beyond, (len(texts), drops, issues)


# -- corrupted files of every format ------------------------------------------------------------


@settings(max_examples=400, **FUZZ)
@given(
    fmt=st.sampled_from(sorted(SUFFIX)),
    mutation=MUTATIONS,
    chunk=st.sampled_from([1, 5, 64, 1 << 20]),
    crlf=st.booleans(),
    bom=st.booleans(),
    split=st.sampled_from([1.0, 0.5]),
    max_line_bytes=st.sampled_from([60, 1 << 20]),
)
def test_a_corrupted_text_file_accounts_for_every_line(fmt, mutation, chunk, crlf, bom, split, max_line_bytes):
    kind, compression = fmt
    eol = b"\r\n" if crlf else b"\n"
    if kind == "jsonl":
        raw = b"".join(json.dumps({"text": t}, ensure_ascii=i % 2 == 0).encode() + eol for i, t in enumerate(DOCS))
    else:
        raw = (eol * 2).join(t.replace("\n", eol.decode()).encode() for t in DOCS) + eol
    data = mutate(compress((BOM if bom else b"") + raw, compression, split), mutation)
    with tempfile.TemporaryDirectory() as d, mock.patch.object(ingest, "READ_CHUNK", chunk):
        path = Path(d) / f"x{SUFFIX[fmt]}"
        path.write_bytes(data)
        texts, _, rows, drops, issues, _ = read_all(InputFile(str(path), kind, compression), batch_size=4,
                                                    max_line_bytes=max_line_bytes)
    file_reasons = {i.reason for i in issues if i.line is None}
    try:
        decoded = strict_decompress(data, compression)
    except ValueError:  # damage the reader must report (unless the sniff already skipped the file)
        assert file_reasons & {"corrupt_compressed", "binary"}, (file_reasons, mutation)
        check_issues(path, drops, issues)
        assert (np.diff(rows) > 0).all()
        return
    docs, blocks, lines = stream_units(decoded, max_line_bytes)
    check_issues(path, drops, issues, max_line=lines)
    if b"\0" in decoded[:SNIFF]:
        assert texts == [] and not drops and file_reasons == {"binary"}
        return
    assert len(texts) + sum(drops.values()) == (docs if kind == "jsonl" else blocks)  # seen = kept + dropped
    assert file_reasons == ({"empty_file"} if len(texts) + sum(drops.values()) == 0 else set())
    assert (np.diff(rows) > 0).all() and (rows >= 1).all() and (rows <= lines).all()
    if mutation[0] in ("truncate", "append") and compression == "none" and max_line_bytes > 60:  # intact before the damage
        k = max(0, min(len(texts), len(DOCS)) - (kind == "txt"))  # (a cut or extended last block is another text)
        assert texts[:k] == list(DOCS[:k]), mutation


FOOTER = st.tuples(st.just("footer"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6))


@settings(max_examples=300, **FUZZ)
@given(
    mutation=MUTATIONS | FOOTER,
    row_group_size=st.sampled_from([3, 10, 100]),
    compression=st.sampled_from(["none", "snappy", "zstd"]),
    dictionary=st.booleans(),
    labels=st.booleans(),
    batch_size=st.sampled_from([2, 4096]),
)
def test_a_corrupted_parquet_file_accounts_for_every_row(mutation, row_group_size, compression, dictionary, labels, batch_size):
    table = pa.table({"text": list(DOCS), "id": list(range(len(DOCS)))})
    if labels:  # FineWeb-2's per-row language columns: the row-by-row path
        table = table.append_column("language", pa.array([("fr", "de", "ru")[i % 3] for i in range(len(DOCS))]))
        table = table.append_column("language_script", pa.array([("Latn", "Latn", "Cyrl")[i % 3] for i in range(len(DOCS))]))
    data = mutate(parquet_bytes(table, row_group_size=row_group_size, compression=compression, use_dictionary=dictionary), mutation)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.parquet"
        path.write_bytes(data)
        check_parquet_read(path, len(DOCS), batch_size)


def test_every_single_byte_of_a_parquet_footer_damaged(tmp_path):
    """Each byte of the footer of a small file set to 0x00, then 0xFF: read or reported, never a
    silent loss (e.g. a column chunk whose value count reads 0 made pyarrow return no rows for its
    row group, and a group count below the file's made pyarrow stop early)."""
    table = pa.table({"text": list(DOCS[:16]), "language": ["fr", "de"] * 8, "language_script": ["Latn"] * 16})
    good = parquet_bytes(table, row_group_size=5, compression="none")
    size = int.from_bytes(good[-8:-4], "little") + 8
    path = tmp_path / "x.parquet"
    for pos in range(len(good) - size, len(good)):
        for value in (0x00, 0xFF):
            if good[pos] != value:
                path.write_bytes(good[:pos] + bytes([value]) + good[pos + 1 :])
                check_parquet_read(path, 16)


# -- bad content inside well-formed files: an oracle per line / block / row ----------------------


TEXT_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "   ", "\t\u3000\n", "lone \ud800 high", "\udfff", "ok \U0001f600", "a\x00b", "caf\u00e9", "[/]"]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT_VALUES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
LABELS = st.sampled_from([None, "", "fr", "de_DE", "__label__rus_Cyrl", "fra_Latn", "x-Latn", "x_Zzzz", "klingonish", "\ud800",
                          3, ["fr"], {"a": 1}, True])
RAW_LINES = st.sampled_from([
    b"{bad", b"[1, 2]", b"42", b"null", b'"just a string"', b"[" * 3000, b'{"a": ' * 2000, b'{"text": "caf\xe9 latin-1"}',
    b'{"text": "nul \x00 byte"}', b"", b"   ", b"\t", b"\r", BOM, b"\xff\xfe{\x00", b'{"text": ' + b"9" * 5000 + b"}",
    b'{"text": "' + b"y" * 200 + b'"}', b'{"text": "tail", "language": "fr"}',
])
RECORDS = st.one_of(
    st.fixed_dictionaries({"text": JSON_VALUES}, optional={"language": LABELS, "id": st.integers()}),
    st.fixed_dictionaries({"text": TEXT_VALUES}, optional={"language": LABELS}),
    st.fixed_dictionaries({}, optional={"body": TEXT_VALUES, "language": LABELS}),
)


def _label(value: object, default: str | None) -> str | None | bool:
    """The reader's rule for a per-document label: its key, the default, or False (not a language)."""
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        return False
    try:
        return normalize_language(value)
    except Exception:  # noqa: BLE001 - whatever the label library says, the document is dropped, not the read
        return False


def jsonl_oracle(lines: list[bytes], default: str | None, max_line_bytes: int) -> tuple[list, list]:
    """(kept (text, language, line), drops (line, reason)) for the lines of a JSONL file."""
    kept, dropped = [], []
    for n, line in enumerate(lines, 1):
        content = line[len(BOM):] if n == 1 and line.startswith(BOM) else line
        if len(line) > max_line_bytes:
            dropped.append((n, "line_too_long"))
            continue
        if not content.strip():
            continue
        if b"\0" in content:
            dropped.append((n, "binary"))
            continue
        try:
            obj = json.loads(content.decode("utf-8"))
        except UnicodeDecodeError:
            dropped.append((n, "invalid_utf8"))
            continue
        except (ValueError, RecursionError):
            dropped.append((n, "malformed_json"))
            continue
        text = obj.get("text") if isinstance(obj, dict) else None
        reason = (
            "not_an_object" if not isinstance(obj, dict) else "missing_text" if text is None
            else "non_string_text" if not isinstance(text, str) else "invalid_utf8" if any(0xD800 <= ord(c) <= 0xDFFF for c in text)
            else "empty_text" if not text.strip() else "unknown_language" if _label(obj.get("language"), default) is False else None
        )
        if reason:
            dropped.append((n, reason))
        else:
            kept.append((text, _label(obj.get("language"), default), n))
    return kept, dropped


def expected_issues(dropped: list[tuple[int, str]]) -> list[tuple[int, str]]:
    seen: Counter = Counter()
    out = []
    for n, reason in dropped:
        seen[reason] += 1
        if seen[reason] <= ISSUES_PER_REASON:
            out.append((n, reason))
    return out


@settings(max_examples=300, **FUZZ)
@given(
    lines=st.lists(st.one_of(RECORDS, RAW_LINES), max_size=25),
    pad=st.booleans(),
    ascii_only=st.booleans(),
    crlf=st.booleans(),
    bom=st.booleans(),
    final_newline=st.booleans(),
    compression=st.sampled_from(["none", "gzip", "zstd"]),
    split=st.sampled_from([1.0, 0.3]),
    chunk=st.sampled_from([1, 7, 1 << 20]),
    default=st.sampled_from([None, "deu_Latn"]),
    max_line_bytes=st.sampled_from([150, 1 << 20]),
)
def test_jsonl_lines_of_every_kind_are_kept_or_counted(lines, pad, ascii_only, crlf, bom, final_newline, compression, split, chunk,
                                                        default, max_line_bytes):
    encoded = []
    for line in (PAD if pad else []) + lines:
        if isinstance(line, bytes):
            encoded.append(line)
        else:  # a surrogate with ensure_ascii=False: written as the (invalid) UTF-8 of the code point
            encoded.append(json.dumps(line, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))
    encoded = [line + b"\r" if crlf and line else line for line in encoded]  # CRLF: "\r" before each "\n"
    if bom:
        encoded = [BOM + (encoded[0] if encoded else b"")] + encoded[1:]
    raw = b"\n".join(encoded) + (b"\n" if final_newline and encoded else b"")
    with tempfile.TemporaryDirectory() as d, mock.patch.object(ingest, "READ_CHUNK", chunk):
        path = Path(d) / "x.jsonl"
        path.write_bytes(compress(raw, compression, split))
        texts, langs, rows, drops, issues, _ = read_all(InputFile(str(path), "jsonl", compression, default),
                                                        max_line_bytes=max_line_bytes, batch_size=3)
    file_reasons = [i.reason for i in issues if i.line is None]
    if b"\0" in raw[:SNIFF]:
        assert texts == [] and not drops and file_reasons == ["binary"]
        return
    kept, dropped = jsonl_oracle(raw.split(b"\n")[: len(encoded)] if encoded else [], default, max_line_bytes)
    assert list(zip(texts, langs, rows.tolist())) == kept
    assert drops == Counter(r for _, r in dropped)
    assert [(i.line, i.reason) for i in issues if i.line is not None] == expected_issues(dropped)
    assert all(i.path == str(path) for i in issues)
    assert file_reasons == ([] if kept or dropped else ["empty_file"])


TXT_LINES = st.one_of(
    st.text(st.characters(exclude_characters="\n\r\x00", exclude_categories=("Cs",)), min_size=1, max_size=30)
    .filter(lambda s: s.encode().strip()),
    st.sampled_from(["naïve Latin-1 \udcef line", "nul \x00 line"]),  # written as invalid UTF-8 / a NUL
)


@settings(max_examples=200, **FUZZ)
@given(
    blocks=st.lists(st.lists(TXT_LINES, min_size=1, max_size=4), max_size=8),
    gaps=st.lists(st.lists(st.sampled_from([b"", b"  ", b"\t", b"\x0c"]), min_size=1, max_size=2), min_size=9, max_size=9),
    pad=st.booleans(),
    crlf=st.booleans(),
    bom=st.booleans(),
    compression=st.sampled_from(["none", "gzip", "zstd"]),
    chunk=st.sampled_from([1, 7, 1 << 20]),
)
def test_text_blocks_are_kept_or_dropped_whole(blocks, gaps, pad, crlf, bom, compression, chunk):
    cr = b"\r" if crlf else b""
    if pad:  # documents of one line: what follows is past the sniff window
        blocks = [[d["text"]] for d in PAD] + blocks
        gaps = gaps[:1] + [[b""]] * len(PAD) + gaps[1:]
    out: list[bytes] = [g + cr for g in gaps[0]] if bom else []  # leading blank lines, after the BOM
    kept, dropped = [], []
    for block, gap in zip(blocks, gaps[1:]):
        first, bad = len(out) + 1, None
        for k, line in enumerate(block):
            out.append(line.encode("utf-8", "surrogateescape") + cr)  # \udcef: a lone 0xEF byte
            if bad is None and ("\x00" in line or "\udcef" in line):
                bad = (first + k, "binary" if "\x00" in line else "invalid_utf8")
        if bad:
            dropped.append(bad)
        else:
            kept.append(("\n".join(block), first))
        out += [g + cr for g in gap]
    data = (BOM if bom else b"") + b"\n".join(out)
    with tempfile.TemporaryDirectory() as d, mock.patch.object(ingest, "READ_CHUNK", chunk):
        path = Path(d) / "x.txt"
        path.write_bytes(compress(data, compression))
        texts, _, rows, drops, issues, _ = read_all(InputFile(str(path), "txt", compression), batch_size=2)
    if b"\0" in data[:SNIFF]:
        assert texts == [] and not drops and [i.reason for i in issues] == ["binary"]
        return
    assert list(zip(texts, rows.tolist())) == kept
    assert drops == Counter(r for _, r in dropped)
    assert [(i.line, i.reason) for i in issues if i.line is not None] == expected_issues(dropped)
    assert [i.reason for i in issues if i.line is None] == ([] if kept or dropped else ["empty_file"])
    assert all(i.path == str(path) for i in issues)


def _string_column(values: list[str | bytes | None], large: bool) -> pa.Array:
    """A string column holding exactly these bytes (Arrow does not check UTF-8 when built so)."""
    raw = [v.encode() if isinstance(v, str) else v for v in values]
    offsets = np.cumsum([0] + [len(v or b"") for v in raw]).astype(np.int64 if large else np.int32)
    valid = np.packbits(np.array([v is not None for v in raw], dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.large_string() if large else pa.string(), len(raw),
                                 [pa.py_buffer(valid.tobytes()), pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(v or b"" for v in raw))])


PARQUET_VALUES = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
    st.sampled_from([None, "", "  ", "\u3000", "nul \x00 inside", b"bad \xff\xfe utf-8", b"\xc3(", "[/]"]),
)


@settings(max_examples=200, **FUZZ)
@given(
    values=st.lists(PARQUET_VALUES, max_size=30),
    column=st.sampled_from(["string", "large_string", "binary", "large_binary", "dictionary", "string_view"]),
    labels=st.none() | st.lists(st.sampled_from([None, "", "fr", "deu", "x-Latn", "zz", b"f\xffr"]), min_size=30, max_size=30),
    default=st.sampled_from([None, "fra_Latn"]),
    row_group_size=st.integers(1, 12),
    batch_size=st.sampled_from([1, 3, 4096]),
)
def test_parquet_rows_of_every_kind_are_kept_or_counted(values, column, labels, default, row_group_size, batch_size):
    as_bytes = column in ("binary", "large_binary")
    if column in ("dictionary", "string_view"):  # built from Python strings: no invalid UTF-8
        values = [v for v in values if not isinstance(v, bytes)]
    if column == "dictionary":
        arr = pa.array(values, pa.string()).dictionary_encode()
    elif column == "string_view":
        arr = pa.array(values, pa.string_view())
    elif as_bytes:
        arr = pa.array([v.encode() if isinstance(v, str) else v for v in values], getattr(pa, column)())
    else:
        arr = _string_column(values, large=column == "large_string")
    cols = {"text": arr}
    if labels is not None:
        cols["language"] = _string_column(labels[: len(values)], large=False)
    kept, dropped = [], []
    for r, v in enumerate(values):
        label = labels[r] if labels is not None else None
        lang = False if isinstance(label, bytes) else _label(label, default)  # invalid UTF-8: not a language
        if v is None:
            reason = "missing_text"
        elif (as_bytes or isinstance(v, bytes)) and b"\0" in (v.encode() if isinstance(v, str) else v):
            reason = "binary"  # bytes with a NUL are binary data; a string with one is text
        elif isinstance(v, bytes):
            reason = "invalid_utf8"
        elif not v.strip():
            reason = "empty_text"
        elif lang is False:
            reason = "unknown_language"
        else:
            kept.append((v, lang, r))
            continue
        dropped.append((r, reason))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.parquet"
        pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
        texts, langs, rows, drops, issues, _ = read_all(InputFile(str(path), "parquet", language=default), batch_size=batch_size)
    assert list(zip(texts, langs, rows.tolist())) == kept
    assert drops == Counter(r for _, r in dropped)
    assert [(i.line, i.reason) for i in issues if i.line is not None] == expected_issues(dropped)
    assert [i.reason for i in issues if i.line is None] == ([] if values else ["empty_file"])


# -- Parquet column types, compressed streams, empty files ---------------------------------------


def _write(path: Path, table: pa.Table, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **kw)
    return path


@pytest.mark.parametrize(("text", "want_texts", "want_reason"), [
    (pa.array([1, 2]), [], "non_string_text"),
    (pa.array([["a"], ["b"]]), [], "non_string_text"),
    (pa.array([None, None], pa.null()), [], "non_string_text"),
    (pa.array([{"x": "a"}, {"x": "b"}]), [], "non_string_text"),
    (pa.array([b"bytes doc", b"\xff"], pa.binary()), ["bytes doc"], None),
    (pa.array([b"bytes doc", None], pa.large_binary()), ["bytes doc"], None),
    (pa.array(["large doc", "other"], pa.large_string()), ["large doc", "other"], None),
    (pa.array(["view doc", None], pa.string_view()), ["view doc"], None),
    (pa.array(["cat", "dog", "cat", None]).dictionary_encode(), ["cat", "dog", "cat"], None),  # a pandas Categorical
    (pa.array(["cat", "dog"]).dictionary_encode().cast(pa.dictionary(pa.int8(), pa.large_string())), ["cat", "dog"], None),
])
def test_parquet_text_column_types(tmp_path, text, want_texts, want_reason):
    path = _write(tmp_path / "x.parquet", pa.table({"text": text}))
    texts, _, _, drops, issues, _ = read_all(InputFile(str(path), "parquet"))
    assert texts == want_texts
    assert [i.reason for i in issues if i.line is None] == ([want_reason] if want_reason else [])
    assert len(texts) + sum(drops.values()) == (0 if want_reason else len(text))


def test_parquet_without_rows_or_row_groups(tmp_path):
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(tmp_path / "none.parquet", schema):
        pass  # no row group at all
    _write(tmp_path / "empty.parquet", pa.table({"text": pa.array([], pa.string())}))  # one row group of 0 rows
    assert pq.ParquetFile(tmp_path / "none.parquet").num_row_groups == 0
    for name in ("none.parquet", "empty.parquet"):
        texts, _, _, drops, issues, _ = read_all(InputFile(str(tmp_path / name), "parquet"))
        assert texts == [] and not drops and [(i.path, i.reason) for i in issues] == [(str(tmp_path / name), "empty_file")]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst", ".txt", ".txt.zst", ".parquet"])
def test_zero_length_and_empty_streams(tmp_path, suffix):
    (tmp_path / f"zero{suffix}").write_bytes(b"")
    files, _ = discover_inputs([tmp_path / f"zero{suffix}"])
    texts, _, _, drops, issues, _ = read_all(files[0])
    assert texts == [] and not drops and [i.reason for i in issues] == ["empty_file"]
    if suffix.endswith((".gz", ".zst")):  # a valid stream of nothing
        (tmp_path / f"nothing{suffix}").write_bytes(compress(b"", "gzip" if suffix.endswith(".gz") else "zstd"))
        files, _ = discover_inputs([tmp_path / f"nothing{suffix}"])
        assert [i.reason for i in read_all(files[0])[4]] == ["empty_file"]


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_several_members_or_frames_read_as_one_stream(tmp_path, compression):
    raw = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in DOCS)
    parts = [raw[:100], raw[100:101], raw[101:1000], raw[1000:]]  # cuts inside lines
    if compression == "gzip":
        data = b"".join(gzip.compress(p) for p in parts) + b"\0" * 64  # zero padding after the last member is allowed
    else:
        data = compress(raw[:1000], "zstd", 0.1) + zstandard.ZstdCompressor(write_content_size=False).compress(raw[1000:])
    path = tmp_path / f"x.jsonl.{'gz' if compression == 'gzip' else 'zst'}"
    path.write_bytes(data)
    texts, _, rows, drops, issues, _ = read_all(InputFile(str(path), "jsonl", compression))
    assert texts == list(DOCS) and rows.tolist() == list(range(1, len(DOCS) + 1)) and not drops and not issues


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_valid_header_with_a_garbage_body(tmp_path, compression):
    good = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in DOCS[:5])
    header = gzip.compress(b"x")[:10] if compression == "gzip" else zstandard.ZstdCompressor().compress(good)[:6]
    junk = random.Random(1).randbytes(4000).replace(b"\0", b"\1")
    for k, data in enumerate((header + junk, compress(good, compression) + header + junk)):
        path = tmp_path / f"{k}.jsonl.{'gz' if compression == 'gzip' else 'zst'}"
        path.write_bytes(data)
        texts, _, _, drops, issues, _ = read_all(InputFile(str(path), "jsonl", compression))
        assert texts == ([] if k == 0 else list(DOCS[:5])) and not drops
        assert [(i.path, i.line, i.reason) for i in issues] == [(str(path), None, "corrupt_compressed")]


def test_a_huge_single_line_streams_past_in_bounded_memory(tmp_path):
    """A 32 MB line (1 MB allowed) in gzip JSONL and in plain text: skipped, counted, never held."""
    limit = 1 << 20
    good = [json.dumps({"text": t}).encode() for t in DOCS[:3]]
    huge = b'{"text": "' + b"word " * ((32 << 20) // 5) + b'"}'
    near = b'{"text": "' + b"z" * (limit - 20) + b'"}'  # just under the limit: kept
    jsonl = tmp_path / "huge.jsonl.gz"
    jsonl.write_bytes(gzip.compress(b"\n".join([good[0], huge, near, good[1], huge, good[2]]) + b"\n", compresslevel=1))
    txt = tmp_path / "huge.txt"
    txt.write_bytes(b"first block\n\n" + b"x" * (32 << 20) + b"\nrest of its block\n\nlast block\n")
    for f, want_drops in ((InputFile(str(jsonl), "jsonl", "gzip"), Counter(line_too_long=2)),
                          (InputFile(str(txt), "txt"), Counter(line_too_long=1))):
        tracemalloc.start()
        try:
            n, drops, issues = 0, Counter(), []
            for b in ingest.read_documents(f, max_line_bytes=limit):
                n += len(b.texts)
                drops.update(b.drops)
                issues += b.issues
                del b
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert drops == want_drops and n == (4 if f.format == "jsonl" else 2)
        assert [i.line for i in issues] == ([2, 5] if f.format == "jsonl" else [3])
        # A few copies of one chunk and of the longest kept line: far from the 32 MB line.
        assert peak < 12 * limit, f"{f.path}: peak traced memory {peak / 1e6:.1f} MB"


# -- regressions: inputs that used to raise, skip a file, or lose documents ---------------------


def test_deeply_nested_json_is_a_malformed_line_not_a_crash(tmp_path):
    # json.loads raises RecursionError (not ValueError) past ~1000 levels: it escaped the reader.
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "before"}\n' + b"[" * 100_000 + b"\n" + b'{"text": {"a": ' * 5000 + b'\n{"text": "after"}\n')
    texts, _, rows, drops, issues, _ = read_all(InputFile(str(path), "jsonl"))
    assert texts == ["before", "after"] and rows.tolist() == [1, 4]
    assert drops == Counter(malformed_json=2) and [(i.line, i.reason) for i in issues] == [(2, "malformed_json"), (3, "malformed_json")]


def test_a_private_use_language_label_drops_its_document(tmp_path):
    # langcodes raises LookupError (not UnknownLanguageError) for `x-…` tags: it escaped the reader.
    (tmp_path / "x.jsonl").write_bytes(b'{"text": "one", "language": "x-Latn"}\n{"text": "two", "language": "fr"}\n')
    texts, langs, _, drops, issues, _ = read_all(InputFile(str(tmp_path / "x.jsonl"), "jsonl"))
    assert texts == ["two"] and langs == ["fra_Latn"] and drops == Counter(unknown_language=1) and issues[0].line == 1
    _write(tmp_path / "x.parquet", pa.table({"text": ["un", "deux"], "language": ["x_Latn", "fr"]}))
    texts, _, rows, drops, _, _ = read_all(InputFile(str(tmp_path / "x.parquet"), "parquet"))
    assert texts == ["deux"] and rows.tolist() == [1] and drops == Counter(unknown_language=1)


def test_a_private_use_language_folder_is_reported(tmp_path):
    # The same LookupError stopped discovery of a whole corpus.
    _write(tmp_path / "x_Latn" / "train" / "000.parquet", pa.table({"text": ["un"]}))
    _write(tmp_path / "fra_Latn" / "train" / "000.parquet", pa.table({"text": ["deux"]}))
    files, issues = discover_inputs([tmp_path])
    assert [f.language for f in files] == ["fra_Latn"]
    assert [(Path(i.path).parts[-3], i.reason) for i in issues] == [("x_Latn", "unknown_language_folder")]


def test_a_language_column_with_invalid_utf8(tmp_path):
    # to_pylist() raised UnicodeDecodeError on the label column (Arrow does not check UTF-8 on read).
    _write(tmp_path / "x.parquet", pa.table({"text": ["un", "zwei", "tres"], "language": _string_column(["fr", b"d\xffe", "es"], False)}))
    texts, langs, rows, drops, issues, _ = read_all(InputFile(str(tmp_path / "x.parquet"), "parquet"))
    assert texts == ["un", "tres"] and langs == ["fra_Latn", "spa_Latn"] and rows.tolist() == [0, 2]
    assert drops == Counter(unknown_language=1) and [(i.line, i.reason) for i in issues] == [(1, "unknown_language")]


def test_a_dictionary_encoded_text_column_is_read(tmp_path):
    # A pandas Categorical written to Parquet comes back as dictionary<string>: the whole file was
    # skipped as non_string_text.
    values = ["un document", None, "  ", "un document", "deux"]
    _write(tmp_path / "x.parquet", pa.table({"text": pa.array(values).dictionary_encode()}), row_group_size=2)
    texts, _, rows, drops, _, _ = read_all(InputFile(str(tmp_path / "x.parquet"), "parquet"))
    assert texts == ["un document", "un document", "deux"] and rows.tolist() == [0, 3, 4]
    assert drops == Counter(missing_text=1, empty_text=1)


def test_a_footer_whose_column_name_is_not_utf8(tmp_path):
    # pyarrow's ParquetFile() raised UnicodeDecodeError (a ValueError, not an ArrowException) on it.
    data = parquet_bytes(pa.table({"text": ["a doc"], "zzzz": [1]}))
    (tmp_path / "x.parquet").write_bytes(data.replace(b"zzzz", b"\xff\xfe\xfd\xfc"))
    texts, _, _, drops, issues, _ = read_all(InputFile(str(tmp_path / "x.parquet"), "parquet"))
    assert texts == [] and not drops and [(i.reason, "footer unreadable" in i.message) for i in issues] == [("corrupt_parquet", True)]


def test_duplicate_text_or_language_columns(tmp_path):
    # Two columns named `text` raised KeyError from schema.field().
    t = pa.table([pa.array(["a doc", "b doc"]), pa.array(["c", "d"])], names=["text", "text"])
    _write(tmp_path / "dup_text.parquet", t)
    texts, _, _, drops, issues, _ = read_all(InputFile(str(tmp_path / "dup_text.parquet"), "parquet"))
    assert texts == [] and not drops and [(i.reason, "2 columns named 'text'" in i.message) for i in issues] == [("ambiguous_column", True)]
    t = pa.table([pa.array(["a doc", "b doc"]), pa.array(["fr", "de"]), pa.array(["es", "it"])], names=["text", "language", "language"])
    _write(tmp_path / "dup_lang.parquet", t)
    texts, langs, _, drops, issues, _ = read_all(InputFile(str(tmp_path / "dup_lang.parquet"), "parquet", language="pol_Latn"))
    assert texts == ["a doc", "b doc"] and langs == ["pol_Latn"] * 2 and not drops  # the labels are ignored, said once
    assert [i.reason for i in issues] == ["ambiguous_column"]


def test_a_line_holding_only_a_bom(tmp_path):
    # A first line of only a byte-order mark was a malformed JSON line, and an empty text document.
    (tmp_path / "x.jsonl").write_bytes(BOM + b"\r\n" + b'{"text": "one"}\r\n')
    texts, _, rows, drops, issues, _ = read_all(InputFile(str(tmp_path / "x.jsonl"), "jsonl"))
    assert texts == ["one"] and rows.tolist() == [2] and not drops and not issues
    (tmp_path / "x.txt").write_bytes(BOM + b"\r\n\r\nHello\r\nworld\r\n")
    texts, _, rows, drops, issues, _ = read_all(InputFile(str(tmp_path / "x.txt"), "txt"))
    assert texts == ["Hello\nworld"] and rows.tolist() == [3] and not drops and not issues


def test_a_nul_row_is_kept_whatever_its_neighbours(tmp_path):
    # In a string column, a row with a NUL was kept, but dropped as `binary` when another row of
    # the same record batch held invalid UTF-8 (the whole batch fell back to bytes).
    for name, other in (("a", "fine doc"), ("b", b"bad \xff")):
        _write(tmp_path / f"{name}.parquet", pa.table({"text": _string_column(["nul \x00 inside", other], False)}))
        texts, _, _, drops, _, _ = read_all(InputFile(str(tmp_path / f"{name}.parquet"), "parquet"))
        assert texts[0] == "nul \x00 inside"
        assert drops == (Counter() if name == "a" else Counter(invalid_utf8=1))


def test_a_file_name_that_is_not_utf8_is_reported_not_built(tmp_path):
    # Such a name reached the shards' `source` column, and pa.array() raised on its surrogate
    # after every extract task had run.
    folder = os.fsencode(tmp_path / "fra_Latn")
    os.makedirs(folder)
    with open(folder + b"/caf\xe9.jsonl", "wb") as fh:
        fh.write(b'{"text": "un"}\n')
    (tmp_path / "fra_Latn" / "ok.jsonl").write_bytes(b'{"text": "deux"}\n')
    files, issues = discover_inputs([tmp_path])
    assert [Path(f.path).name for f in files] == ["ok.jsonl"]
    assert [(i.path.endswith("caf\\xe9.jsonl"), i.reason) for i in issues] == [(True, "bad_file_name")]
    issues[0].path.encode("utf-8")  # a name the manifest can hold


# -- the build end to end -----------------------------------------------------------------------


def _junk_text(rng: random.Random, n: int) -> list[str]:
    """Documents of random letters: no language, and no near-duplicate of real text."""
    return [" ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(rng.randint(8, 40)))
            for _ in range(n)]


def write_fuzzed_corpus(root: Path, seed: int = 0) -> None:
    """Corrupted files of every format and the regression inputs under `root`, most in a language
    folder none of the good files use (`pol_Latn`)."""
    rng = random.Random(seed)
    fz = root / "fuzzed" / "pol_Latn"
    fz.mkdir(parents=True)
    for k, (kind, compression) in enumerate(sorted(SUFFIX) * 2):
        docs = _junk_text(rng, 12)
        raw = (b"".join(json.dumps({"text": t}).encode() + b"\n" for t in docs) if kind == "jsonl"
               else "\n\n".join(docs).encode())
        (fz / f"{k:02d}{SUFFIX[kind, compression]}").write_bytes(mutate(compress(raw, compression), random_mutation(rng)))
    for k in range(3):
        (fz / f"p{k}.parquet").write_bytes(mutate(parquet_bytes(pa.table({"text": _junk_text(rng, 12)}), row_group_size=4),
                                                  random_mutation(rng)))
    lines = [json.dumps({"text": t}).encode() for t in _junk_text(rng, 4)]
    (fz / "regress.jsonl").write_bytes(b"\n".join([
        BOM, lines[0], b"[" * 5000, b'{"text": "x y z", "language": "x-Latn"}', b'{"text": "q", "language": "zz"}',
        b'{"text": "\\ud800"}', lines[1], b'{"text": "' + b"w " * (4 << 20) + b'"}', lines[2],
    ]) + b"\n")
    _write(fz / "dict.parquet", pa.table({"text": pa.array(_junk_text(rng, 5) + [None]).dictionary_encode()}))
    _write(fz / "dup.parquet", pa.table([pa.array(["a", "b"]), pa.array(["c", "d"])], names=["text", "text"]))
    _write(fz / "labels.parquet", pa.table({"text": _junk_text(rng, 3), "language": _string_column(["pl", b"\xff", "x-Latn"], False)}))
    with pq.ParquetWriter(fz / "no_groups.parquet", pa.schema([("text", pa.string())])):
        pass
    _write(fz / "ints.parquet", pa.table({"text": [1, 2, 3]}))
    (fz / "csv.parquet").write_text("text\nnot parquet\n")
    (fz / "empty.txt").write_bytes(b"")
    (fz / "notes.csv").write_text("a,b\n")
    _write(root / "fuzzed" / "x_Latn" / "train" / "000.parquet", pa.table({"text": ["private use"]}))
    with open(os.fsencode(fz) + b"/latin1-\xe9.jsonl", "wb") as fh:
        fh.write(lines[3] + b"\n")


def tokens_by_file(out: Path, corpus: Path) -> dict[str, tuple[int, int]]:
    """(documents, tokens) per source file of a build, from its shards; keyed by the path in `corpus`."""
    import pyarrow.compute as pc

    from curriculum.manifest import read_manifest

    docs: Counter = Counter()
    tokens: Counter = Counter()
    for rel in read_manifest(out).shards["path"]:
        with pa.OSFile(str(out / rel)) as src:
            batch = pa.ipc.open_file(src).get_batch(0)
        for source, n in zip(batch.column("source").to_pylist(), pc.list_value_length(batch.column("tokens")).to_pylist()):
            key = str(Path(source).relative_to(corpus))
            docs[key] += 1
            tokens[key] += n
    return {k: (docs[k], tokens[k]) for k in docs}


@pytest.fixture(scope="module")
def fuzzed_builds(tmp_path_factory, small_tokenizer):
    """A good corpus built alone, and again beside the fuzzed files (one worker, in process)."""
    from curriculum.build import BuildConfig, build

    root = tmp_path_factory.mktemp("fuzzbuild")
    good = write_text_corpus(root / "good", n_files=3, docs_per_file=40)
    mixed = root / "mixed"
    shutil.copytree(good, mixed)
    write_fuzzed_corpus(mixed)
    reps = {}
    for name, corpus in (("good", good), ("mixed", mixed)):
        cfg = BuildConfig(inputs=[str(corpus)], out=str(root / f"out-{name}"), tokenizer=str(small_tokenizer))
        reps[name] = build(cfg, workers=1, progress=False)
    return root, good, mixed, reps


def test_the_good_files_build_as_they_do_alone(fuzzed_builds):
    root, good, mixed, reps = fuzzed_builds
    alone = tokens_by_file(root / "out-good", good)
    beside = tokens_by_file(root / "out-mixed", mixed)
    assert alone and {k: beside.get(k) for k in alone} == alone
    assert reps["mixed"].docs_kept > reps["good"].docs_kept  # some fuzzed documents got through too


def test_the_manifest_accounts_for_every_document_and_names_every_bad_file(fuzzed_builds):
    from curriculum.manifest import read_manifest

    root, _, mixed, _ = fuzzed_builds
    m = read_manifest(root / "out-mixed")
    docs = m.meta.model_extra["documents"]
    assert docs["input"] == docs["kept"] + sum(docs["dropped"].values())
    # What the readers say of each file, read again here: the same counts and issues in the manifest.
    files, want = discover_inputs([mixed])
    seen, reasons = 0, Counter()
    for f in files:
        texts, _, _, drops, issues, _ = read_all(f)
        seen += len(texts) + sum(drops.values())
        reasons.update(drops)
        want += issues
    assert docs["input"] == seen
    assert {r: docs["dropped"].get(r, 0) for r in reasons} == dict(reasons)
    got = Counter((i["path"], i["line"], i["reason"]) for i in m.meta.file_issues)
    assert got == Counter((i.path, i.line, i.reason) for i in want)
    named = {Path(i["path"]).name for i in m.meta.file_issues}
    for name in ("regress.jsonl", "dup.parquet", "labels.parquet", "no_groups.parquet", "ints.parquet", "csv.parquet",
                 "empty.txt", "notes.csv", "000.parquet", "latin1-\\xe9.jsonl"):
        assert name in named, name
    lines = {(i["line"], i["reason"]) for i in m.meta.file_issues if i["path"].endswith("regress.jsonl")}
    assert lines == {(3, "malformed_json"), (4, "unknown_language"), (5, "unknown_language"), (6, "invalid_utf8"),
                     (8, "line_too_long")}


def test_cli_strict_exits_non_zero_without_a_traceback(fuzzed_builds, small_tokenizer):
    from typer.testing import CliRunner

    from curriculum.cli import app

    root, _, mixed, _ = fuzzed_builds
    runner = CliRunner()
    for flags, code in (([], 0), (["--strict"], 1)):
        res = runner.invoke(app, ["build", str(mixed), "--out", str(root / "out-mixed"), "--tokenizer", str(small_tokenizer), *flags])
        assert res.exit_code == code, res.output
        assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit)), res.output


def test_cli_prints_an_issue_holding_markup_characters(small_tokenizer, tmp_path):
    from typer.testing import CliRunner

    from curriculum.cli import app

    d = tmp_path / "in" / "fra_Latn"
    d.mkdir(parents=True)
    (d / "a.jsonl").write_bytes(b'{"text": "un document assez long pour rester", "language": "[/]"}\n'
                                b'{"text": "un autre document assez long pour rester"}\n')
    res = CliRunner().invoke(app, ["build", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--tokenizer", str(small_tokenizer)])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 0 and "language '[/]' is not a language" in res.output.replace("\n", "")

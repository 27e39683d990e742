"""Read raw corpora: Parquet, JSONL (plain, gzip, zstd) and plain text, in bounded memory.

- `discover_inputs(paths)` walks files and folders (sorted, hidden names skipped), classifies each
  file by extension and takes its language from a FineWeb-2-style folder
  (`fra_Latn/train/000.parquet`, or any folder named like `fra_Latn`).
- `read_documents(f)` yields `DocBatch`es of at most `batch_size` documents. Each document keeps
  its provenance: the source file and its row (Parquet, 0-based) or first line (JSONL and text,
  1-based, as editors count). A Parquet record batch whose rows are all documents as they stand
  (no null, valid UTF-8, none blank, no per-row language column: checked on the Arrow buffers)
  is handed out as `ArrowTexts` without a Python string per row; the batches are the same.

Bad input never stops the read and is never silent. A bad *document* (an undecodable or malformed
line, a missing or non-string text) is dropped and counted under a reason, and its line is listed
as a `FileIssue` (the first `max_issues_per_reason` of each reason per file; the counts are exact).
A bad *file* (not found, not Parquet, a truncated stream, binary junk...) gets a `FileIssue` with
`line=None`; whatever was read before the damage is kept. So per file:
documents seen = documents yielded + sum of drops, and unreadable parts are in the file issues.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, get_args

import numpy as np
from numba import njit

import curriculum.numba_boot  # noqa: F401  (before any kernel runs: numba without scipy.linalg)
from curriculum.languages import UnknownLanguageError, names_script, normalize_language, script_from_text
from curriculum.normalize import ArrowTexts
from curriculum.unicode_tables import SPACE, code_point_tables, decode_utf8

if TYPE_CHECKING:
    import pyarrow as pa

# What a reader reports. Per document (counted in DocBatch.drops, the first lines listed as issues):
DROP_REASONS = (
    "invalid_utf8", "malformed_json", "not_an_object", "missing_text", "non_string_text", "empty_text",
    "line_too_long", "block_too_long", "binary", "unknown_language",
    "corrupt_parquet",  # the rows of a damaged row group, counted from the footer (one file issue lists them)
)
# Per file (FileIssue with line=None; what was read before the damage is kept):
FILE_REASONS = (
    "not_found", "bad_file_name", "unsupported_format", "unknown_language_folder", "held_out_split", "empty_file",
    "unreadable", "binary",
    "corrupt_compressed", "not_parquet", "corrupt_parquet", "no_text_column", "non_string_text", "ambiguous_column",
)

Format = Literal["parquet", "jsonl", "txt"]
Compression = Literal["none", "gzip", "zstd"]

DEFAULT_MAX_LINE_BYTES = 8 << 20  # a JSON line holding a 1M-character document fits (UTF-8 ≤ 4 B/char + escapes)
DEFAULT_BATCH_BYTES = 64 << 20
ISSUES_PER_REASON = 10  # lines listed per file and reason (all are counted)
READ_CHUNK = 1 << 20
# Compressed bytes per zstd call. One call's output is bounded by ~128 KiB per 4 input bytes (RLE
# blocks), so 128 B caps it at 4 MiB; on text, decompression still runs at ~500 MB/s.
_ZSTD_FEED = 128
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, dropped from the first line of a text file
SNIFF_BYTES = 8000  # git's rule: a NUL in the first 8000 bytes means binary
SPLIT_FOLDERS = frozenset({"train", "test", "validation", "valid", "dev"})
# Splits held out of training (FineWeb-2 ships `LANG/test/`): a folder walk skips them.
HELD_OUT_SPLITS = SPLIT_FOLDERS - {"train"}
# A folder named like a language key (`fra_Latn`, also `fra_Latn_removed`, which is then reported).
_LANG_FOLDER = re.compile(r"^[A-Za-z]{2,3}_[A-Za-z]{4}(?:_\w+)?$")
# Above a split folder, a name shaped like a key (any tag, a 4-letter script) is meant as a
# language and reported when it is none; other names there are a dataset's own folder.
_LANG_LIKE = re.compile(r"^[A-Za-z]{1,8}_[A-Za-z]{4}(?:_\w+)?$")
_SUFFIXES: dict[str, tuple[Format, Compression]] = {
    ".parquet": ("parquet", "none"),
    ".jsonl": ("jsonl", "none"), ".ndjson": ("jsonl", "none"),
    ".jsonl.gz": ("jsonl", "gzip"), ".ndjson.gz": ("jsonl", "gzip"),
    ".jsonl.zst": ("jsonl", "zstd"), ".jsonl.zstd": ("jsonl", "zstd"), ".ndjson.zst": ("jsonl", "zstd"),
    ".txt": ("txt", "none"), ".txt.gz": ("txt", "gzip"), ".txt.zst": ("txt", "zstd"),
}


@dataclass(frozen=True)
class InputFile:
    """One input file: how to read it and the language of all its documents (None: identify).

    `row_groups` = (lo, hi) reads only Parquet row groups lo..hi-1 (a slice of a big file; rows
    keep their numbers in the whole file)."""

    path: str
    format: Format
    compression: Compression = "none"
    language: str | None = None
    row_groups: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.format not in get_args(Format):
            raise ValueError(f"InputFile {self.path}: format={self.format!r}, expected one of {get_args(Format)}")
        if self.compression not in get_args(Compression):
            raise ValueError(f"InputFile {self.path}: compression={self.compression!r}, expected one of {get_args(Compression)}")
        if self.row_groups is not None and (self.format != "parquet" or not 0 <= self.row_groups[0] < self.row_groups[1]):
            raise ValueError(f"InputFile {self.path}: row_groups={self.row_groups!r} needs a Parquet file and 0 <= lo < hi")


@dataclass(frozen=True)
class FileIssue:
    """A problem in an input: `line` is the 1-based line (or 0-based Parquet row), None for the file."""

    path: str
    line: int | None
    reason: str
    message: str


@dataclass
class DocBatch:
    """Documents read from one file, in file order, plus what was dropped since the previous batch.

    `drops` and `issues` are increments: sum them over all batches of a file for the file's total.
    """

    path: str
    texts: list[str] | ArrowTexts  # ArrowTexts: the Parquet reader's batches that needed no per-row look
    languages: list[str | None]  # normalized keys; None: unlabeled, language ID decides
    rows: np.ndarray  # int64: Parquet row (0-based) or first line of the document (1-based)
    drops: Counter[str] = field(default_factory=Counter)
    issues: list[FileIssue] = field(default_factory=list)


# -- discovery ----------------------------------------------------------------------------------


def classify(path: str | os.PathLike[str]) -> tuple[Format, Compression] | None:
    """Format and compression from the file name (case-insensitive), or None if unsupported."""
    name = Path(path).name.lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    return None


def folder_language(path: str | os.PathLike[str]) -> tuple[str | None, FileIssue | None]:
    """The language a FineWeb-2-style folder gives a file: (key, None), (None, None) or (None, issue).

    The folder is the grandparent when the parent is a split (`train`, `test`…), else the parent;
    it counts as a language folder if it is shaped like a FineWeb-2 key, code and script
    (`fra_Latn`; reported when it names no language, e.g. FineWeb-2's `fra_Latn_removed`).
    A bare code is no label: too many dataset folder names are ISO 639 codes (`raw`, `new`, `old`,
    `big`, `min`, `run`, `log`…), so `raw/train/*.parquet` or `fra/train/*.parquet` is a dataset
    folder above its split (Hugging Face's layout), and its files are labeled by their `language`
    column or by language ID. The path is made absolute first, so `a.parquet` given from inside
    `fra_Latn/train/` is labeled as `fra_Latn/train/a.parquet` is.
    """
    parts = Path(os.path.abspath(path)).parts
    if len(parts) >= 3 and parts[-2].lower() in SPLIT_FOLDERS and _LANG_LIKE.match(parts[-3]):
        folder = parts[-3]
    elif len(parts) >= 2 and _LANG_FOLDER.match(parts[-2]):
        folder = parts[-2]
    else:
        return None, None
    try:
        return normalize_language(folder), None
    except (UnknownLanguageError, LookupError) as exc:  # LookupError: any other langcodes refusal, to be safe
        if not _LANG_LIKE.match(folder):  # a dataset's own folder above its split, not a language's
            return None, None
        msg = (
            f"folder {folder!r} is not a language ({exc}); the file was not read. Rename the folder to a "
            "language key such as fra_Latn, or move the file out of it to have its language identified"
        )
        return None, FileIssue(str(path), None, "unknown_language_folder", msg)


def _walk(root: Path, errors: list[OSError], held_out: list[str]) -> Iterator[Path]:
    """Files under root in sorted order, skipping hidden files and folders (`.git`, `.work`).

    Symlinked folders are followed (corpora are often assembled from links), each real folder once.
    A folder that cannot be listed (permissions) is appended to `errors`, not skipped silently.
    Held-out split folders below root (`deu_Latn/test/`: FineWeb-2 ships them beside `train/`) are
    not walked but appended to `held_out`: a test set must not leak into training. Given as the
    root itself (`build fineweb2/deu_Latn/test`), a split folder is read.
    """
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=errors.append):
        real = os.path.realpath(dirpath)
        if real in visited:  # a link cycle, or a second link to the same folder
            dirnames[:] = []
            continue
        visited.add(real)
        held_out.extend(str(Path(dirpath) / d) for d in sorted(dirnames) if d.lower() in HELD_OUT_SPLITS)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in HELD_OUT_SPLITS)
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def discover_inputs(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[InputFile], list[FileIssue]]:
    """Input files under `paths` (files or folders; each folder sorted) and the issues found.

    A file reached twice is read once. Unsupported extensions, missing paths and unknown language
    folders are issues, not errors: the rest of the corpus is still read.
    """
    files: list[InputFile] = []
    issues: list[FileIssue] = []
    seen: set[str] = set()
    unlisted: list[OSError] = []  # folders os.walk could not list
    held_out: list[str] = []  # held-out split folders skipped by the walk
    for raw in paths:
        root = Path(raw)
        if root.is_dir():
            candidates: Iterator[Path] = _walk(root, unlisted, held_out)
        elif root.exists():
            candidates = iter([root])
        else:
            issues.append(FileIssue(str(root), None, "not_found", f"input {str(root)!r} does not exist; check the path"))
            continue
        for p in candidates:
            real = os.path.realpath(p)
            if real in seen:
                continue
            seen.add(real)
            try:
                str(p).encode("utf-8")
            except UnicodeEncodeError:  # a name the OS gave as bytes: shards and the manifest record names in UTF-8
                issues.append(FileIssue(os.fsencode(p).decode("utf-8", "backslashreplace"), None, "bad_file_name",
                                        "not read: the file name is not valid UTF-8; rename the file"))
                continue
            kind = classify(p)
            if kind is None:
                known = ", ".join(sorted(_SUFFIXES))
                issues.append(FileIssue(str(p), None, "unsupported_format", f"not read: the extension is not one of {known}"))
                continue
            language, issue = folder_language(p)
            if issue is not None:
                issues.append(issue)
                continue
            files.append(InputFile(str(p), kind[0], kind[1], language))
        for exc in unlisted:
            issues.append(FileIssue(str(exc.filename), None, "unreadable",
                                    f"folder not read: cannot list it ({exc.strerror}); check its permissions"))
        for folder in held_out:
            issues.append(FileIssue(folder, None, "held_out_split",
                                    "not read: a held-out split (test/validation/dev sets stay out of training); "
                                    "give the folder itself as an input to build it"))
        unlisted.clear()
        held_out.clear()
    return files, issues


# -- labels ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _label_key(label: str) -> str | None:
    """Normalized key of a per-document language label, None if it is not a language."""
    try:
        return normalize_language(label)
    except (UnknownLanguageError, LookupError):  # LookupError: any other langcodes refusal, to be safe
        return None


# -- the batch collector ------------------------------------------------------------------------


class _Collector:
    """Accumulates documents, drops and issues of one file; `take()` hands out a DocBatch."""

    def __init__(self, f: InputFile, batch_size: int, batch_bytes: int, max_issues_per_reason: int) -> None:
        self.f = f
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.max_issues = max_issues_per_reason
        self.issue_counts: Counter[str] = Counter()
        self.seen = 0  # documents seen (kept or dropped) in the whole file
        self.file_issues = 0
        self._reset()

    def _reset(self) -> None:
        self.texts: list[str] = []
        self.languages: list[str | None] = []
        self.rows: list[int] = []
        self.nbytes = 0
        self.drops: Counter[str] = Counter()
        self.issues: list[FileIssue] = []
        # Documents pending as Arrow slices (`add_arrow`); never at the same time as `texts`.
        self.arrow: list[tuple[pa.LargeStringArray, np.ndarray]] = []  # (slice, rows)

    def add(self, text: str, language: str | None, row: int, nbytes: int) -> bool:
        """Keep a document; True when the batch is full."""
        if self.arrow:
            self._arrow_to_python()
        self.seen += 1
        self.texts.append(text)
        self.languages.append(language)
        self.rows.append(row)
        self.nbytes += nbytes
        return len(self.texts) >= self.batch_size or self.nbytes >= self.batch_bytes

    def add_arrow(self, texts: pa.LargeStringArray, chars: np.ndarray, language: str | None, rows: np.ndarray) -> Iterator[DocBatch]:
        """Keep the documents of a large_string array, as `add` of each in turn would (`chars` is
        each one's `nbytes`); yields the batches that fill up. No Python string is made."""
        if self.texts:  # one kind of pending documents at a time
            for i, text in enumerate(texts.to_pylist()):
                if self.add(text, language, int(rows[i]), int(chars[i])):
                    yield self.take()
            return
        n, start = len(chars), 0
        cum = np.cumsum(chars)
        while start < n:
            # The first document at which `add` would report the batch full: by count or by size.
            by_count = start + self.batch_size - len(self.languages) - 1
            base = self.nbytes - (int(cum[start - 1]) if start else 0)
            by_size = start + int(np.searchsorted(cum[start:], self.batch_bytes - base, side="left"))
            end = min(by_count, by_size, n - 1) + 1
            self.seen += end - start
            self.arrow.append((texts.slice(start, end - start), rows[start:end]))
            self.languages.extend([language] * (end - start))
            self.nbytes = base + int(cum[end - 1])
            full = min(by_count, by_size) == end - 1
            start = end
            if full:
                yield self.take()

    def _arrow_to_python(self) -> None:
        import pyarrow as pa

        self.texts = pa.concat_arrays([a for a, _ in self.arrow]).to_pylist()
        self.rows = np.concatenate([r for _, r in self.arrow]).tolist()
        self.arrow = []

    def drop(self, reason: str, line: int | None, message: str) -> None:
        """Count a dropped document; list its line while the reason is under the cap."""
        self.seen += 1
        self.drops[reason] += 1
        self.issue_counts[reason] += 1
        if self.issue_counts[reason] <= self.max_issues:
            self.issues.append(FileIssue(self.f.path, line, reason, message))

    def drop_rows(self, reason: str, n: int) -> None:
        """Count `n` documents lost at once (a damaged Parquet row group: one file issue lists them)."""
        if n > 0:
            self.seen += n
            self.drops[reason] += n

    def file_issue(self, reason: str, message: str) -> None:
        self.file_issues += 1
        self.issues.append(FileIssue(self.f.path, None, reason, message))

    def pending(self) -> bool:
        return bool(self.texts or self.arrow or self.drops or self.issues)

    def take(self) -> DocBatch:
        if self.arrow:
            import pyarrow as pa

            arr = self.arrow[0][0] if len(self.arrow) == 1 else pa.concat_arrays([a for a, _ in self.arrow])
            rows = np.concatenate([r for _, r in self.arrow]).astype(np.int64, copy=False)
            b = DocBatch(self.f.path, ArrowTexts(arr), self.languages, rows, self.drops, self.issues)
        else:
            b = DocBatch(self.f.path, self.texts, self.languages, np.asarray(self.rows, dtype=np.int64), self.drops, self.issues)
        self._reset()
        return b


# -- byte streams -------------------------------------------------------------------------------


class _Corrupt(Exception):
    """A compressed stream is damaged or ends early."""


def _raw_chunks(fh: BinaryIO) -> Iterator[bytes]:
    while chunk := fh.read(READ_CHUNK):
        yield chunk


def _gzip_chunks(fh: BinaryIO) -> Iterator[bytes]:
    # GzipFile bounds each read's output, handles multi-member files, and checks CRC and length.
    gz = gzip.GzipFile(fileobj=fh, mode="rb")
    try:
        while chunk := gz.read1(READ_CHUNK):  # read1: what one read decoded, kept before an EOFError
            yield chunk
    except (EOFError, OSError, zlib.error) as exc:
        raise _Corrupt(f"gzip: {exc}") from exc


def _zstd_chunks(fh: BinaryIO) -> Iterator[bytes]:
    # zstandard's stream_reader returns a clean EOF on a truncated frame, so decode frame by frame
    # with decompressobj (whose `eof` says a frame ended) and feed it small slices so that one
    # call's output stays bounded.
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    obj = dctx.decompressobj(write_size=1 << 16)
    in_frame = False
    try:
        for chunk in _raw_chunks(fh):
            mv = memoryview(chunk)
            for a in range(0, len(mv), _ZSTD_FEED):
                piece: bytes | memoryview = mv[a : a + _ZSTD_FEED]
                while piece:
                    out = obj.decompress(piece)
                    in_frame = True
                    if out:
                        yield out
                    if not obj.eof:
                        break
                    piece, obj, in_frame = obj.unused_data, dctx.decompressobj(write_size=1 << 16), False
    except zstandard.ZstdError as exc:
        raise _Corrupt(f"zstd: {exc}") from exc
    if in_frame:
        raise _Corrupt("zstd: the stream ends inside a frame (truncated file)")


def _lines(chunks: Iterator[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, line without its newline) or (n, None) for a line over the limit.

    A line over the limit is skipped as it streams past: memory stays O(max_line_bytes + chunk).
    """
    lineno = 0
    pending: list[bytes] = []
    pending_len = 0
    too_long = False
    for chunk in chunks:
        parts = chunk.split(b"\n")
        for part in parts[:-1]:
            lineno += 1
            if too_long or pending_len + len(part) > max_line_bytes:
                yield lineno, None
            else:
                yield lineno, (b"".join(pending) + part) if pending else part
            pending, pending_len, too_long = [], 0, False
        tail = parts[-1]
        if tail and not too_long:
            pending_len += len(tail)
            if pending_len > max_line_bytes:
                pending, too_long = [], True
            else:
                pending.append(tail)
    if pending or too_long:
        yield lineno + 1, None if too_long else b"".join(pending)


def _text_lines(f: InputFile, fh: BinaryIO, col: _Collector, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Lines of a JSONL / text file after the binary sniff; damage ends the stream with an issue."""
    chunks = {"none": _raw_chunks, "gzip": _gzip_chunks, "zstd": _zstd_chunks}[f.compression](fh)
    head: list[bytes] = []
    damage: _Corrupt | None = None
    try:
        size = 0
        for chunk in chunks:  # gather the sniff window (zstd hands out small chunks)
            head.append(chunk)
            size += len(chunk)
            if size >= SNIFF_BYTES:
                break
    except _Corrupt as exc:  # the lines before the damage still count
        damage = exc
    if b"\0" in b"".join(head)[:SNIFF_BYTES]:
        col.file_issue(
            "binary",
            f"not text: NUL bytes in the first {SNIFF_BYTES} bytes (binary data, or UTF-16/32 text: convert it to UTF-8); file skipped",
        )
        return

    def stream() -> Iterator[bytes]:
        while head:  # pop, so the sniffed chunks are not held for the whole file
            yield head.pop(0)
        if damage is not None:
            raise damage  # raising (not returning) keeps _lines from emitting the cut last line
        yield from chunks

    lineno = 0
    try:
        for lineno, line in _lines(stream(), max_line_bytes):
            if lineno == 1 and line is not None and line.startswith(_BOM):
                line = line[len(_BOM):]  # before the blank-line test: a first line of only a BOM is blank
            yield lineno, line
    except _Corrupt as exc:
        col.file_issue("corrupt_compressed", f"{exc}; read stopped after line {lineno}, the lines before it are kept")


@dataclass(frozen=True)
class _Bad:
    reason: str
    message: str


def _decode(line: bytes, lineno: int) -> str | _Bad:
    """Strict UTF-8 decode of line `lineno` (1-based; 0: not a line), or why it cannot be text."""
    if b"\0" in line:
        return _Bad("binary", f"line {lineno}: NUL bytes (binary data)")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Bad("invalid_utf8", f"line {lineno}: invalid UTF-8 at byte {exc.start} ({exc.reason})")


# ISO 639 codes that say "no particular language": such a row is treated as unlabeled (the file's
# language, else LID decides). `zxx` (no linguistic content) stays a drop (unknown_language).
_UNLABELED = frozenset({"und", "mul", "mis"})


def _row_language(label: object, default: str | None, text: str) -> str | None | _Bad:
    """Key of a per-document label; a missing (or `und`/`mul`/`mis`) label falls back to the file's
    language. A label without a script that names the folder's language keeps the folder's script
    (`srp` rows in `srp_Latn/` are Latin: the label alone would give Serbian's most common script,
    Cyrillic); elsewhere the text's letters choose among its language's scripts, as for LID."""
    if label is None or label == "":
        return default
    if isinstance(label, str) and _says_unlabeled(label):
        return default
    key = _label_key(label) if isinstance(label, str) else None
    if key is None:
        return _Bad("unknown_language", f"language {label!r} is not a language")
    if names_script(label):
        return key
    if default is not None and key.partition("_")[0] == default.partition("_")[0]:
        return default
    return script_from_text(key, text[:_SCRIPT_PREFIX])


_SCRIPT_PREFIX = 600  # characters of a row whose letters choose the script of a label without one (LID's read)


@functools.lru_cache(maxsize=4096)
def _says_unlabeled(label: str) -> bool:
    """`und`, `mul`, `mis` with or without a region or script (`und-Latn`, `__label__und`): labels
    repeat row after row, so this is decided once per distinct label."""
    return re.split(r"[-_@]", label.removeprefix("__label__"), maxsplit=1)[0].lower() in _UNLABELED


def _with_script(label: object, script: object) -> object:
    """FineWeb-2 splits the key in two columns (language=fra, language_script=Latn): join them
    when the label is a bare code; a fuller tag (`pt-BR`, `fra_Latn`) stands as it is."""
    if isinstance(label, str) and isinstance(script, str) and script and re.fullmatch(r"[A-Za-z]{2,3}", label):
        return f"{label}_{script}"
    return label


# -- formats ------------------------------------------------------------------------------------


def _read_jsonl(f: InputFile, col: _Collector, fh: BinaryIO, max_line_bytes: int, text_field: str) -> Iterator[DocBatch]:
    """One document per line: a JSON object with a string `text_field` (and optional `language`)."""
    for lineno, line in _text_lines(f, fh, col, max_line_bytes):
        if line is None:
            col.drop("line_too_long", lineno, f"line {lineno}: longer than max_line_bytes={max_line_bytes}; line skipped")
            continue
        if not line.strip():
            continue  # a blank line is not a document
        s = _decode(line, lineno)
        if isinstance(s, _Bad):
            col.drop(s.reason, lineno, f"{s.message}; line dropped")
            continue
        try:
            obj = json.loads(s)
        except (ValueError, RecursionError) as exc:  # RecursionError: arrays or objects nested too deep
            col.drop("malformed_json", lineno, f"line {lineno}: not valid JSON ({exc}); line dropped")
            continue
        if not isinstance(obj, dict):
            col.drop("not_an_object", lineno, f"line {lineno}: a JSON {type(obj).__name__}, not an object; line dropped")
            continue
        text = obj.get(text_field)
        if text is None:
            col.drop("missing_text", lineno, f"line {lineno}: no {text_field!r} field (or it is null); line dropped")
            continue
        if not isinstance(text, str):
            col.drop("non_string_text", lineno, f"line {lineno}: {text_field!r} is a JSON {type(text).__name__}, not a string; line dropped")
            continue
        if "\\u" in s:  # only an escape can smuggle in a lone surrogate, which UTF-8 cannot encode
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                col.drop("invalid_utf8", lineno, f"line {lineno}: {text_field!r} holds a lone surrogate (\\ud800-\\udfff escape); line dropped")
                continue
        if not text.strip():
            col.drop("empty_text", lineno, f"line {lineno}: {text_field!r} is empty or blank; line dropped")
            continue
        lang = _row_language(_with_script(obj.get("language"), obj.get("language_script")), f.language, text)
        if isinstance(lang, _Bad):
            col.drop(lang.reason, lineno, f"line {lineno}: {lang.message}; line dropped")
            continue
        if col.add(text, lang, lineno, len(line)):
            yield col.take()


def _read_txt(f: InputFile, col: _Collector, fh: BinaryIO, max_line_bytes: int) -> Iterator[DocBatch]:
    """One document per block of lines between blank lines; a bad line drops its whole block."""
    block: list[str] = []
    start = size = 0
    bad: _Bad | None = None  # the first problem in the current block
    bad_line = 0

    def close() -> bool:
        nonlocal block, size, bad
        full = False
        if bad is not None:
            col.drop(bad.reason, bad_line, f"{bad.message}; block from line {start} dropped")
        elif block:
            full = col.add("\n".join(block), f.language, start, size)
        block, size, bad = [], 0, None
        return full

    for lineno, line in _text_lines(f, fh, col, max_line_bytes):
        if line is not None and not line.strip():
            if (block or bad is not None) and close():
                yield col.take()
            continue
        if not block and bad is None:
            start = lineno
        if bad is not None:
            continue  # the block is already dropped: skip to its end
        if line is None:
            bad, bad_line = _Bad("line_too_long", f"line {lineno}: longer than max_line_bytes={max_line_bytes}"), lineno
            continue
        size += len(line) + 1
        if size > max_line_bytes:
            bad, bad_line = _Bad("block_too_long", f"line {lineno}: the block passes max_line_bytes={max_line_bytes}"), lineno
            block = []
            continue
        s = _decode(line, lineno)
        if isinstance(s, _Bad):
            bad, bad_line = s, lineno
            block = []
            continue
        block.append(s.rstrip("\r"))
    if (block or bad is not None) and close():
        yield col.take()


def _arrow_values(arr: pa.Array) -> list[object]:
    """Python values of a column chunk (a dictionary one decoded); in a string column, a value that
    is not valid UTF-8 comes back as bytes, the others as str, whatever their neighbours."""
    import pyarrow as pa

    if pa.types.is_dictionary(arr.type):  # a pandas Categorical, say
        arr = arr.dictionary_decode()
    try:
        return arr.to_pylist()
    except UnicodeDecodeError:  # Arrow does not validate UTF-8 on read
        out: list[object] = []
        for v in arr.cast(pa.large_binary()).to_pylist():
            try:
                out.append(v if v is None else v.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(v)  # `_decode` says why it is not text
        return out


def _clean_arrow_texts(arr: pa.Array) -> tuple[pa.LargeStringArray, np.ndarray] | None:
    """(large_string array, characters per document) when every row of a string column chunk is a
    document as it stands (no null, valid UTF-8, not blank); None when some row needs a look."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) or arr.null_count:
        return None
    if pa.types.is_string(arr.type):
        arr = arr.cast(pa.large_string())
    try:
        arr.validate(full=True)  # UTF-8 as strict as Python's decoder (Parquet reads do not check it)
    except pa.ArrowInvalid:
        return None
    if len(arr) == 0:
        return arr, np.zeros(0, dtype=np.int64)
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, dtype=np.uint8)
    if _any_blank(data, offsets, _space_table()):
        return None
    return arr, pc.utf8_length(arr).to_numpy()


@functools.cache
def _space_table() -> np.ndarray:
    """bool per code point below 0x40000: `str.isspace` (no whitespace lies above)."""
    return (code_point_tables()[0] & SPACE) != 0


@njit(cache=True, nogil=True)
def _any_blank(data: np.ndarray, offsets: np.ndarray, space: np.ndarray) -> bool:
    """True when some document data[offsets[d]:offsets[d+1]] (valid UTF-8) is empty or only
    whitespace, the rule of `not text.strip()`; stops at each document's first other character."""
    for d in range(offsets.shape[0] - 1):
        i = offsets[d]
        end = offsets[d + 1]
        blank = True
        while i < end:
            cp, i = decode_utf8(data, i)
            if cp >= space.shape[0] or not space[cp]:
                blank = False
                break
        if blank:
            return True
    return False


def _read_parquet(f: InputFile, col: _Collector, batch_size: int, text_field: str) -> Iterator[DocBatch]:
    """Rows of the `text_field` column (string, binary, or a dictionary of either) and of the
    `language` / `language_script` columns when present.

    Memory is bounded by one row group: Arrow decodes a row group's column chunk at a time.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f.path)
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: a damaged footer's column name is not UTF-8
        with open(f.path, "rb") as fh:
            magic = fh.read(4)
        if magic == b"PAR1":
            col.file_issue("corrupt_parquet", f"Parquet footer unreadable ({exc}): truncated or damaged; nothing read")
        else:
            col.file_issue("not_parquet", f"not a Parquet file ({exc}); rename it or convert it")
        return
    schema = pf.schema_arrow
    whole = f.row_groups is None or f.row_groups[0] == 0  # what is wrong with the whole file: said by one task
    if text_field not in schema.names:
        if whole:
            col.file_issue("no_text_column", f"no {text_field!r} column (columns: {', '.join(schema.names)}); file skipped")
        return
    if schema.names.count(text_field) > 1:
        if whole:
            col.file_issue("ambiguous_column", f"{schema.names.count(text_field)} columns named {text_field!r}; file skipped. "
                                               "Rename or drop all but one")
        return
    t = schema.field(text_field).type
    if pa.types.is_dictionary(t):  # a pandas Categorical, say: read as its values
        t = t.value_type

    def is_type(*names: str) -> bool:  # the *_view checks arrived in pyarrow 16
        return any(getattr(pa.types, n, lambda _: False)(t) for n in names)

    as_str = is_type("is_string", "is_large_string", "is_string_view")
    if not (as_str or is_type("is_binary", "is_large_binary", "is_binary_view")):
        if whole:
            col.file_issue("non_string_text", f"column {text_field!r} has type {t}, not string; file skipped")
        return
    extra = [c for c in ("language", "language_script") if c in schema.names]
    repeated = [c for c in extra if schema.names.count(c) > 1]
    if repeated:
        if whole:
            col.file_issue("ambiguous_column", f"more than one column named {' or '.join(map(repr, repeated))}: the per-row "
                                               "language labels are ignored (the folder's language or language ID decides)")
        extra = []
    counted = sum(max(0, pf.metadata.row_group(g).num_rows) for g in range(pf.num_row_groups))
    if whole and counted != pf.metadata.num_rows:  # Arrow reads a group's rows up to its count, and no further
        col.file_issue("corrupt_parquet", f"the footer says {pf.metadata.num_rows} rows, its row groups {counted} "
                                          f"(damaged): rows past a group's count are not read")
        col.drop_rows("corrupt_parquet", pf.metadata.num_rows - counted)
    lo, hi = f.row_groups if f.row_groups is not None else (0, pf.num_row_groups)
    if hi > pf.num_row_groups:
        col.file_issue("corrupt_parquet", f"row groups {lo}..{hi - 1} asked, the file has {pf.num_row_groups}; nothing read")
        return
    # (A damaged footer can give a group a negative count: as 0, so row numbers stay unique and >= 0.)
    row = sum(max(0, pf.metadata.row_group(g).num_rows) for g in range(lo))
    # Row group by row group, so a damaged one costs its own rows only, and a file reads the same
    # whether one task reads it or several read slices of its row groups.
    for g in range(lo, hi):
        n = max(0, pf.metadata.row_group(g).num_rows)
        end = row + n
        pages = 0  # rows the pages hold; a damaged footer can say otherwise (a column chunk of 0 values reads as none)
        try:
            for rb in pf.iter_batches(batch_size=batch_size, columns=[text_field, *extra], row_groups=[g]):
                pages += rb.num_rows
                rb = rb.slice(0, max(0, end - row))  # rows past the group's end would take the next group's row numbers
                yield from _parquet_batch(rb, row, f, col, as_str, extra, text_field)
                row += rb.num_rows
        except (pa.ArrowException, OSError) as exc:
            col.file_issue("corrupt_parquet", f"row group {g} unreadable from row {row} on ({exc}); rows {row}..{end - 1} "
                                              f"skipped, the other row groups read")
            col.drop_rows("corrupt_parquet", end - row)  # input = kept + dropped holds with them
        else:
            if pages != n:
                lost = f"rows {row}..{end - 1} skipped" if pages < n else f"{pages - n} rows past its end ignored"
                col.file_issue("corrupt_parquet", f"row group {g}: the footer says {n} rows, its pages hold {pages} "
                                                  f"(damaged); {lost}, the other row groups read")
                col.drop_rows("corrupt_parquet", end - row)
        row = end


def _parquet_batch(rb, row: int, f: InputFile, col: _Collector, as_str: bool, extra: list[str], text_field: str) -> Iterator[DocBatch]:
    """The documents of one Parquet record batch whose first row is `row` in the file."""
    import pyarrow as pa

    column = rb.column(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if as_str and not extra:
        fast = _clean_arrow_texts(column)
        if fast is not None:  # every row is a document: no Python string per row
            arr, chars = fast
            yield from col.add_arrow(arr, chars, f.language, np.arange(row, row + rb.num_rows, dtype=np.int64))
            return
    texts = _arrow_values(column)  # str, None, or bytes (a binary column, or invalid UTF-8) to decode
    labels = _arrow_values(rb.column(1)) if "language" in extra else [None] * rb.num_rows
    if "language_script" in extra:  # FineWeb-2 splits the key: language=fra, language_script=Latn
        scripts = _arrow_values(rb.column(len(extra)))
        labels = [_with_script(l, s) for l, s in zip(labels, scripts)]
    for i, text in enumerate(texts):
        r = row + i
        if isinstance(text, bytes):
            text = _decode(text, 0)
            if isinstance(text, _Bad):
                col.drop(text.reason, r, f"row {r}: {text.reason.replace('_', ' ')}; row dropped")
                continue
        if text is None:
            col.drop("missing_text", r, f"row {r}: {text_field!r} is null; row dropped")
        elif not text.strip():
            col.drop("empty_text", r, f"row {r}: {text_field!r} is empty or blank; row dropped")
        else:
            lang = _row_language(labels[i], f.language, text)
            if isinstance(lang, _Bad):
                col.drop(lang.reason, r, f"row {r}: {lang.message}; row dropped")
            elif col.add(text, lang, r, len(text)):
                yield col.take()


def read_documents(
    f: InputFile,
    batch_size: int = 4096,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    *,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    text_field: str = "text",
    max_issues_per_reason: int = ISSUES_PER_REASON,
) -> Iterator[DocBatch]:
    """Batches of the documents of one file, in file order; the last batch carries the file's issues.

    A batch closes at `batch_size` documents or `batch_bytes` of input. Documents are as read (not
    normalized); labels are normalized keys. Never raises for bad content: see the module doc.
    """
    for name, value in (("batch_size", batch_size), ("max_line_bytes", max_line_bytes), ("batch_bytes", batch_bytes)):
        if value <= 0:
            raise ValueError(f"read_documents: {name}={value} must be > 0")
    col = _Collector(f, batch_size, batch_bytes, max_issues_per_reason)
    try:
        if os.path.getsize(f.path) == 0:
            col.file_issue("empty_file", "the file is empty (0 bytes)")
        elif f.format == "parquet":
            yield from _read_parquet(f, col, batch_size, text_field)
        else:
            with open(f.path, "rb") as fh:
                if f.format == "jsonl":
                    yield from _read_jsonl(f, col, fh, max_line_bytes, text_field)
                else:
                    yield from _read_txt(f, col, fh, max_line_bytes)
    except OSError as exc:
        col.file_issue("unreadable", f"cannot read the file ({exc}); check that it exists and is readable")
    if col.seen == 0 and not col.file_issues and f.row_groups is None:  # a slice may be empty, the file not
        col.file_issue("empty_file", "no documents in the file (only blank lines, or empty once decompressed)")
    if col.pending():
        yield col.take()

"""Writers of bad input files, one per kind, for the ingest tests and the end-to-end build test.

Each `write_*(root)` puts one file under `root` (in a folder that is not a language folder, except
for the unknown-language-folder case) and returns a `BadInput`: the reason the reader must report,
where (line, or None for the file), at which stage (`discover_inputs` or `read_documents`), and the
good documents of the same file that must come through. Good documents are real text: paragraphs
of the UDHR in well-resourced languages (PyPI `gflanguages`), each used once, so that language ID
labels them confidently and near-duplicate detection keeps them all.

    from badinputs import write_all
    cases = write_all(tmp_path)   # every kind; the rest of a corpus can sit beside them
"""

from __future__ import annotations

import functools
import gzip
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from curriculum.ingest import DEFAULT_MAX_LINE_BYTES

GOOD_LANGUAGES = (
    "en_Latn", "fr_Latn", "de_Latn", "es_Latn", "it_Latn", "pt_Latn", "nl_Latn", "pl_Latn", "ru_Cyrl",
    "uk_Cyrl", "tr_Latn", "sv_Latn", "fi_Latn", "hu_Latn", "ro_Latn", "vi_Latn", "el_Grek", "ja_Jpan",
    "ko_Kore", "ar_Arab", "hi_Deva", "th_Thai", "he_Hebr", "ka_Geor", "hy_Armn", "ta_Taml", "lt_Latn",
)
BAD_FOLDER = "unlabeled"  # not a language folder: the files' languages are left to LID


@dataclass(frozen=True)
class BadInput:
    """One bad input and what a reader must report for it."""

    kind: str
    path: Path
    reason: str
    line: int | None  # the 1-based line of the dropped document; None: a file-level issue
    stage: Literal["discover", "read"]
    good: tuple[str, ...]  # texts of the same file that must come through, in order
    exact: bool = True  # False: documents past the damage may also come through (a stream decoded in part)


@functools.cache
def good_paragraphs() -> tuple[tuple[str, str], ...]:
    """(gflanguages id, paragraph) pairs: the UDHR paragraphs of GOOD_LANGUAGES, interleaved by language."""
    import gflanguages

    langs = gflanguages.LoadLanguages()
    per = [
        [(lid, p) for p in dict.fromkeys(p.strip() for p in langs[lid].sample_text.specimen_16.split("\n")) if len(p) >= 40]
        for lid in GOOD_LANGUAGES
    ]
    out = []
    for i in range(max(map(len, per))):
        out.extend(p[i] for p in per if i < len(p))
    return tuple(out)


class _Good:
    """Hands out each good paragraph once."""

    def __init__(self) -> None:
        self._it: Iterator[tuple[str, str]] = iter(good_paragraphs())

    def take(self, n: int) -> list[str]:
        return [next(self._it)[1] for _ in range(n)]


def _line(text: str) -> bytes:
    return (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8")


def _bad_dir(root: Path) -> Path:
    d = Path(root) / BAD_FOLDER
    d.mkdir(parents=True, exist_ok=True)
    return d


def _jsonl_with(root: Path, good: _Good, kind: str, reason: str, bad_line: bytes) -> BadInput:
    """good, BAD, good, good: the bad document is line 2."""
    texts = good.take(3)
    path = _bad_dir(root) / f"{kind}.jsonl"
    path.write_bytes(_line(texts[0]) + bad_line + b"\n" + _line(texts[1]) + _line(texts[2]))
    return BadInput(kind, path, reason, 2, "read", tuple(texts))


def write_invalid_utf8(root: Path, good: _Good) -> BadInput:
    return _jsonl_with(root, good, "invalid_utf8", "invalid_utf8", b'{"text": "caf\xe9 cr\xe8me, Latin-1 bytes"}')


def write_malformed_json(root: Path, good: _Good) -> BadInput:
    return _jsonl_with(root, good, "malformed_json", "malformed_json", b'{"text": "an unterminated string, }')


def write_missing_text(root: Path, good: _Good) -> BadInput:
    return _jsonl_with(root, good, "missing_text", "missing_text", b'{"content": "the field has another name"}')


def write_non_string_text(root: Path, good: _Good) -> BadInput:
    return _jsonl_with(root, good, "non_string_text", "non_string_text", b'{"text": ["a", "list", "of", "words"]}')


def write_long_line(root: Path, good: _Good) -> BadInput:
    """A single line 1 MiB over the default max_line_bytes (multi-MB), between good lines."""
    texts = good.take(3)
    path = _bad_dir(root) / "long_line.jsonl"
    filler = ("word " * ((DEFAULT_MAX_LINE_BYTES + (1 << 20)) // 5)).encode()
    with open(path, "wb") as fh:
        fh.write(_line(texts[0]))
        fh.write(b'{"text": "' + filler + b'"}\n')
        fh.write(_line(texts[1]) + _line(texts[2]))
    return BadInput("long_line", path, "line_too_long", 2, "read", tuple(texts))


def write_binary_junk(root: Path, good: _Good) -> BadInput:
    """Random bytes (with NULs) in a file named .jsonl: the whole file is skipped."""
    path = _bad_dir(root) / "binary_junk.jsonl"
    path.write_bytes(random.Random(0).randbytes(64 << 10))
    return BadInput("binary_junk", path, "binary", None, "read", ())


def write_empty(root: Path, good: _Good) -> BadInput:
    path = _bad_dir(root) / "empty.jsonl"
    path.write_bytes(b"")
    return BadInput("empty", path, "empty_file", None, "read", ())


def write_empty_gzip(root: Path, good: _Good) -> BadInput:
    path = _bad_dir(root) / "empty.jsonl.gz"
    path.write_bytes(gzip.compress(b""))
    return BadInput("empty_gzip", path, "empty_file", None, "read", ())


def write_corrupt_gzip(root: Path, good: _Good) -> BadInput:
    """A good gzip member, then a member with a valid header and a junk deflate body."""
    texts = good.take(2)
    path = _bad_dir(root) / "corrupt.jsonl.gz"
    second = bytearray(gzip.compress(b"".join(_line(t) for t in good.take(2))))
    second[10:] = b"\xff" * (len(second) - 10)  # header intact, body junk: "invalid block type"
    path.write_bytes(gzip.compress(b"".join(_line(t) for t in texts)) + bytes(second))
    return BadInput("corrupt_gzip", path, "corrupt_compressed", None, "read", tuple(texts))


def write_truncated_gzip(root: Path, good: _Good) -> BadInput:
    """A good gzip member, then a second member cut in half."""
    texts = good.take(2)
    lost = gzip.compress(b"".join(_line(t) for t in good.take(3)))
    path = _bad_dir(root) / "truncated.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(_line(t) for t in texts)) + lost[: len(lost) // 2])
    return BadInput("truncated_gzip", path, "corrupt_compressed", None, "read", tuple(texts), exact=False)


def write_corrupt_zstd(root: Path, good: _Good) -> BadInput:
    """A good zstd frame, then a frame with a valid magic number and junk after it."""
    texts = good.take(2)
    path = _bad_dir(root) / "corrupt.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(_line(t) for t in texts)) + b"\x28\xb5\x2f\xfd" + b"\xff" * 64)
    return BadInput("corrupt_zstd", path, "corrupt_compressed", None, "read", tuple(texts))


def write_truncated_zstd(root: Path, good: _Good) -> BadInput:
    """A good zstd frame, then a second frame cut in half (zstandard's stream_reader would not notice)."""
    texts = good.take(2)
    lost = zstandard.ZstdCompressor(write_checksum=True).compress(b"".join(_line(t) for t in good.take(3)))
    path = _bad_dir(root) / "truncated.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(_line(t) for t in texts)) + lost[: len(lost) // 2])
    return BadInput("truncated_zstd", path, "corrupt_compressed", None, "read", tuple(texts), exact=False)


def write_invalid_utf8_txt(root: Path, good: _Good) -> BadInput:
    """Plain text: good block, a block with a Latin-1 line (dropped whole), good block."""
    texts = good.take(2)
    path = _bad_dir(root) / "invalid_utf8.txt"
    path.write_bytes(texts[0].encode() + b"\n\nfirst line of a bad block\nna\xefve Latin-1\nlast line\n\n" + texts[1].encode() + b"\n")
    return BadInput("invalid_utf8_txt", path, "invalid_utf8", 4, "read", tuple(texts))


def write_not_parquet(root: Path, good: _Good) -> BadInput:
    path = _bad_dir(root) / "not_parquet.parquet"
    path.write_text("text\nthis is a CSV file with a .parquet name\n", encoding="utf-8")
    return BadInput("not_parquet", path, "not_parquet", None, "read", ())


def write_truncated_parquet(root: Path, good: _Good) -> BadInput:
    path = _bad_dir(root) / "truncated.parquet"
    pq.write_table(pa.table({"text": good.take(2)}), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return BadInput("truncated_parquet", path, "corrupt_parquet", None, "read", ())


def write_parquet_without_text(root: Path, good: _Good) -> BadInput:
    path = _bad_dir(root) / "no_text_column.parquet"
    pq.write_table(pa.table({"content": good.take(2), "id": [1, 2]}), path)
    return BadInput("parquet_without_text", path, "no_text_column", None, "read", ())


def write_unknown_language_folder(root: Path, good: _Good) -> BadInput:
    """FineWeb-2 layout with a folder that is not a language (FineWeb-2 ships `*_removed` folders)."""
    d = Path(root) / "fra_Latn_removed" / "train"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "000.parquet"
    pq.write_table(pa.table({"text": good.take(1)}), path)
    return BadInput("unknown_language_folder", path, "unknown_language_folder", None, "discover", ())


def write_unsupported(root: Path, good: _Good) -> BadInput:
    path = _bad_dir(root) / "notes.csv"
    path.write_text("id,text\n1,hello\n", encoding="utf-8")
    return BadInput("unsupported", path, "unsupported_format", None, "discover", ())


WRITERS: tuple[Callable[[Path, _Good], BadInput], ...] = (
    write_invalid_utf8, write_malformed_json, write_missing_text, write_non_string_text, write_long_line,
    write_binary_junk, write_empty, write_empty_gzip, write_corrupt_gzip, write_truncated_gzip,
    write_corrupt_zstd, write_truncated_zstd, write_invalid_utf8_txt, write_not_parquet,
    write_truncated_parquet, write_parquet_without_text, write_unknown_language_folder, write_unsupported,
)
KINDS = tuple(w.__name__.removeprefix("write_") for w in WRITERS)


def write_all(root: Path) -> list[BadInput]:
    """Every kind of bad input under `root`; no good paragraph is used twice."""
    good = _Good()
    return [w(Path(root), good) for w in WRITERS]


def write_one(root: Path, kind: str) -> BadInput:
    """One kind (see KINDS) under `root`."""
    return dict(zip(KINDS, WRITERS))[kind](Path(root), _Good())

"""Ingest: discovery, each format with provenance, bad input of every kind, bounded memory; normalize."""

from __future__ import annotations

import gzip
import json
import os
import tracemalloc
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import badinputs
from curriculum.ingest import (
    DROP_REASONS,
    FILE_REASONS,
    DocBatch,
    FileIssue,
    InputFile,
    classify,
    discover_inputs,
    folder_language,
    read_documents,
)
from curriculum.normalize import filter_length, normalize_text


def read_all(f: InputFile, **kw) -> tuple[list[str], list[str | None], np.ndarray, Counter, list[FileIssue], list[DocBatch]]:
    """Concatenate every batch of one file."""
    batches = list(read_documents(f, **kw))
    texts = [t for b in batches for t in b.texts]
    langs = [l for b in batches for l in b.languages]
    rows = np.concatenate([b.rows for b in batches]) if batches else np.zeros(0, np.int64)
    drops: Counter = Counter()
    for b in batches:
        drops.update(b.drops)
    issues = [i for b in batches for i in b.issues]
    return texts, langs, rows, drops, issues, batches


def jsonl_bytes(records: list[object]) -> bytes:
    return b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode() for r in records)


# -- discovery ----------------------------------------------------------------------------------


def test_classify_by_extension():
    assert classify("a/b.parquet") == ("parquet", "none")
    assert classify("x.JSONL") == ("jsonl", "none")
    assert classify("x.jsonl.gz") == ("jsonl", "gzip")
    assert classify("x.jsonl.zst") == ("jsonl", "zstd")
    assert classify("x.ndjson.zst") == ("jsonl", "zstd")
    assert classify("x.txt") == ("txt", "none")
    assert classify("x.txt.zst") == ("txt", "zstd")
    assert classify("x.json") is None
    assert classify("x.gz") is None
    assert classify("README.md") is None


def test_folder_language_fineweb2_layout(tmp_path):
    assert folder_language("data/fra_Latn/train/000.parquet") == ("fra_Latn", None)
    assert folder_language("data/zho_Hani/test/000.parquet") == ("cmn_Hani", None)
    assert folder_language("corpus/deu_Latn/part.jsonl.zst") == ("deu_Latn", None)
    # Bare folder names are never read as languages: `new` is Newari, `web` is nothing.
    assert folder_language("corpus/new/x.jsonl") == (None, None)
    assert folder_language("corpus/web/x.jsonl") == (None, None)
    assert folder_language("x.jsonl") == (None, None)
    # A dataset's folder above its split (Hugging Face's layout) is no language: language ID decides.
    assert folder_language("data/mystuff/train/0.parquet") == (None, None)
    # Nor is a bare ISO code there: too many dataset folders are named by one (`raw` was keyed
    # raw_Latn, `tmp` tyj_Latn, `new` new_Deva). A FineWeb-2 key is the label.
    for name in ("fra", "raw", "all", "new", "old", "big", "mix", "tmp", "my", "en"):
        assert folder_language(f"data/{name}/train/0.parquet") == (None, None), name
    # The path is made absolute first: a file given from inside its folder is labeled as from outside.
    here = os.getcwd()
    try:
        d = tmp_path / "srp_Latn" / "train"
        d.mkdir(parents=True)
        os.chdir(d)
        assert folder_language("a.parquet") == ("srp_Latn", None)
    finally:
        os.chdir(here)
    for path in ("data/fra_Latn_removed/train/0.parquet", "c/xyz_Qqqq/a.jsonl"):
        key, issue = folder_language(path)
        assert key is None and issue is not None
        assert issue.reason == "unknown_language_folder" and issue.path == path and issue.line is None
        assert path.split("/")[1] in issue.message


def test_discover_inputs_walks_sorted_and_reports(tmp_path):
    for rel in (
        "fw/fra_Latn/train/001.parquet", "fw/fra_Latn/train/000.parquet", "fw/deu_Latn/train/000.parquet",
        "fw/fra_Latn_removed/train/000.parquet", "web/b.jsonl.zst", "web/a.jsonl", "web/c.txt.gz",
        "web/README.md", "web/.hidden.jsonl", ".git/x.jsonl",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    files, issues = discover_inputs([tmp_path, tmp_path / "web" / "a.jsonl", tmp_path / "missing"])
    rel = [(str(Path(f.path).relative_to(tmp_path)), f.format, f.compression, f.language) for f in files]
    assert rel == [
        ("fw/deu_Latn/train/000.parquet", "parquet", "none", "deu_Latn"),
        ("fw/fra_Latn/train/000.parquet", "parquet", "none", "fra_Latn"),
        ("fw/fra_Latn/train/001.parquet", "parquet", "none", "fra_Latn"),
        ("web/a.jsonl", "jsonl", "none", None),  # given twice, read once
        ("web/b.jsonl.zst", "jsonl", "zstd", None),
        ("web/c.txt.gz", "txt", "gzip", None),
    ]
    got = sorted((Path(i.path).name, i.reason) for i in issues)
    assert got == [("000.parquet", "unknown_language_folder"), ("README.md", "unsupported_format"), ("missing", "not_found")]


def test_discover_follows_symlinked_folders_once(tmp_path):
    (tmp_path / "real" / "deu_Latn").mkdir(parents=True)
    (tmp_path / "real" / "deu_Latn" / "a.jsonl").write_bytes(b"")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "deu_Latn").symlink_to(tmp_path / "real" / "deu_Latn")
    (tmp_path / "corpus" / "loop").symlink_to(tmp_path / "corpus")
    files, issues = discover_inputs([tmp_path / "corpus"])
    assert [(Path(f.path).name, f.language) for f in files] == [("a.jsonl", "deu_Latn")] and issues == []


def test_input_file_rejects_unknown_format():
    with pytest.raises(ValueError, match="format"):
        InputFile("x.csv", "csv", "none", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compression"):
        InputFile("x.jsonl.bz2", "jsonl", "bz2", None)  # type: ignore[arg-type]


def test_a_folder_that_cannot_be_listed_is_reported_not_skipped(tmp_path, monkeypatch):
    # Was skipped silently (os.walk's default). Tests run as root, where chmod 000 does not stop a
    # listing, so the OS refusal is simulated where os.walk lists folders.
    import os

    for lang in ("deu_Latn", "fra_Latn"):
        (tmp_path / lang / "train").mkdir(parents=True)
        (tmp_path / lang / "train" / "a.txt").write_text("Ein Satz.\n")
    real = os.scandir
    locked = str(tmp_path / "fra_Latn")

    def scandir(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, issues = discover_inputs([tmp_path])
    assert [Path(f.path).parts[-3] for f in files] == ["deu_Latn"]
    assert [(i.path, i.reason) for i in issues] == [(locked, "unreadable")]
    assert "cannot list it (Permission denied)" in issues[0].message


def test_held_out_splits_are_skipped_and_reported_unless_given_themselves(tmp_path):
    # FineWeb-2 ships `LANG/test/` beside `LANG/train/`: its test sets went into the corpus.
    for split in ("train", "test", "Validation", "dev"):
        (tmp_path / "fw" / "deu_Latn" / split).mkdir(parents=True)
        pq.write_table(pa.table({"text": [f"{split} Satz."]}), tmp_path / "fw" / "deu_Latn" / split / "0.parquet")
    files, issues = discover_inputs([tmp_path / "fw"])
    assert [Path(f.path).parent.name for f in files] == ["train"]
    assert sorted((Path(i.path).name, i.reason) for i in issues) == [
        ("Validation", "held_out_split"), ("dev", "held_out_split"), ("test", "held_out_split")]
    files, issues = discover_inputs([tmp_path / "fw" / "deu_Latn" / "test"])  # asked for by name: read
    assert [(Path(f.path).parent.name, f.language) for f in files] == [("test", "deu_Latn")] and issues == []


def test_row_labels_without_a_script_keep_the_folder_script_and_jsonl_reads_language_script(tmp_path):
    # `srp` rows in srp_Latn/ were keyed srp_Cyrl (Serbian's most common script); JSONL ignored
    # `language_script`; `pt-BR` + `Latn` became the non-label 'pt-BR_Latn' and every row was dropped.
    d = tmp_path / "srp_Latn" / "train"
    d.mkdir(parents=True)
    labels = ["srp", "sr", "srp_Cyrl", "sr-Cyrl", "hrv", None]
    pq.write_table(pa.table({"text": [f"Recenica broj {i}." for i in range(6)], "language": labels}), d / "0.parquet")
    (files,), _ = discover_inputs([d / "0.parquet"])
    assert read_all(files)[1] == ["srp_Latn", "srp_Latn", "srp_Cyrl", "srp_Cyrl", "hrv_Latn", "srp_Latn"]
    lines = [{"text": "Recenica.", "language": "srp", "language_script": "Latn"},
             {"text": "Frase.", "language": "pt-BR", "language_script": "Latn"},
             {"text": "Frase.", "language": "por", "language_script": "Latn"},
             {"text": "Frase.", "language": "pt-BR"}]
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    pq.write_table(pa.table({"text": [x["text"] for x in lines], "language": [x["language"] for x in lines],
                             "language_script": [x.get("language_script") for x in lines]}), tmp_path / "web" / "b.parquet")
    files, _ = discover_inputs([tmp_path / "web"])
    for f in files:
        texts, langs, _, drops, _, _ = read_all(f)
        assert langs == ["srp_Latn", "por_Latn", "por_Latn", "por_Latn"] and not drops, (f.path, langs, drops)


def test_row_labels_without_a_script_outside_a_language_folder_take_the_texts_script(tmp_path):
    # ISO 639-1 labels (`sr`, `uz`) always got the language's most common script: Latin Serbian went
    # to srp_Cyrl and Cyrillic Uzbek to uzn_Latn. `und`/`mul`/`mis` rows were dropped as unknown
    # languages; they are unlabeled (LID decides: None here), while `zxx` (no language) stays a drop.
    rows = [("sr", "Ovo je rečenica na srpskom, pisana latinicom."), ("sr", "Ово је реченица на српском."),
            ("uz", "Бу ўзбек тилидаги гап."), ("uz", "Bu oʻzbek tilidagi gap."),
            ("sr", "Ово је српски https://example.com/a/b и www.example.org или me@example.org"),
            ("und", "Some text."), ("mul", "Some text."), ("mis-Latn", "Some text."), ("zxx", "12 34")]
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.jsonl").write_text("".join(json.dumps({"text": t, "language": la}) + "\n" for la, t in rows))
    (f,), _ = discover_inputs([tmp_path / "web"])
    texts, langs, _, drops, _, _ = read_all(f)
    assert langs == ["srp_Latn", "srp_Cyrl", "uzn_Cyrl", "uzn_Latn", "srp_Cyrl", None, None, None]
    assert drops == {"unknown_language": 1}
    # Inside a folder of that language the folder's script stands, whichever script the label's
    # language usually has and whatever the letters say (a folder is a deliberate choice).
    for folder, label, text in [("srp_Latn", "sr", "Ово је реченица."), ("srp_Cyrl", "sr", "Ovo je rečenica."),
                                ("uzn_Latn", "uz", "Бу гап."), ("uzn_Cyrl", "uz", "Bu gap.")]:
        d = tmp_path / folder / "train"
        d.mkdir(parents=True)
        (d / "a.jsonl").write_text(json.dumps({"text": text, "language": label}) + "\n")
        (f,), _ = discover_inputs([d / "a.jsonl"])
        assert read_all(f)[1] == [folder], (folder, label)


# -- formats round-trip with provenance ---------------------------------------------------------


def test_parquet_fineweb2_roundtrip(tmp_path):
    d = tmp_path / "fra_Latn" / "train"
    d.mkdir(parents=True)
    texts = [f"Document numéro {i} en français." for i in range(25)]
    pq.write_table(pa.table({"text": texts, "id": list(range(25))}), d / "000.parquet", row_group_size=7)
    files, issues = discover_inputs([tmp_path])
    assert issues == [] and len(files) == 1
    out, langs, rows, drops, iss, batches = read_all(files[0], batch_size=4)
    assert out == texts and langs == ["fra_Latn"] * 25
    assert rows.dtype == np.int64 and rows.tolist() == list(range(25))
    assert all(len(b.texts) <= 4 for b in batches) and all(b.path == files[0].path for b in batches)
    assert not drops and not iss


def test_parquet_row_group_slices_keep_the_file_row_numbers(tmp_path):
    from dataclasses import replace

    d = tmp_path / "fra_Latn" / "train"
    d.mkdir(parents=True)
    texts = [f"Document numéro {i} en français." for i in range(25)]
    pq.write_table(pa.table({"text": texts}), d / "000.parquet", row_group_size=7)  # groups: 7, 7, 7, 4 rows
    (f,), _ = discover_inputs([tmp_path])
    out, _, rows, _, iss, _ = read_all(replace(f, row_groups=(1, 3)))
    assert out == texts[7:21] and rows.tolist() == list(range(7, 21)) and not iss
    out, _, rows, _, _, _ = read_all(replace(f, row_groups=(3, 4)))
    assert rows.tolist() == list(range(21, 25))
    _, _, _, _, iss, _ = read_all(replace(f, row_groups=(3, 9)))
    assert [i.reason for i in iss] == ["corrupt_parquet"] and "the file has 4" in iss[0].message
    with pytest.raises(ValueError, match="row_groups"):
        replace(f, row_groups=(2, 2))


def test_parquet_language_columns_override_the_folder(tmp_path):
    d = tmp_path / "fra_Latn" / "train"
    d.mkdir(parents=True)
    table = pa.table(
        {
            "text": ["un", "zwei", "tres", None, "  ", "vier", "cinq"],
            "language": ["fra", "deu", "spa", "deu", "deu", "not a language", None],
            "language_script": ["Latn", "Latn", "Latn", "Latn", "Latn", "Latn", None],
        }
    )
    pq.write_table(table, d / "000.parquet")
    (f,), _ = discover_inputs([tmp_path])
    out, langs, rows, drops, issues, _ = read_all(f)
    assert out == ["un", "zwei", "tres", "cinq"]
    assert langs == ["fra_Latn", "deu_Latn", "spa_Latn", "fra_Latn"]  # a null label falls back to the folder
    assert rows.tolist() == [0, 1, 2, 6]
    assert drops == Counter({"missing_text": 1, "empty_text": 1, "unknown_language": 1})
    assert [(i.line, i.reason) for i in issues] == [(3, "missing_text"), (4, "empty_text"), (5, "unknown_language")]


def test_parquet_invalid_utf8_and_binary_text_column(tmp_path):
    pieces = [b"first good row", b"bad \xff\xfe row", b"third row"]
    data = b"".join(pieces)
    offsets = np.cumsum([0] + [len(x) for x in pieces]).astype(np.int32)
    arr = pa.Array.from_buffers(pa.string(), 3, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])
    pq.write_table(pa.table({"text": arr}), tmp_path / "a.parquet")  # Arrow does not validate on write
    out, _, rows, drops, issues, _ = read_all(InputFile(str(tmp_path / "a.parquet"), "parquet"))
    assert out == ["first good row", "third row"] and rows.tolist() == [0, 2]
    assert drops == Counter({"invalid_utf8": 1}) and issues[0].line == 1

    pq.write_table(pa.table({"text": pa.array([b"bytes ok", b"\xc3("], pa.binary())}), tmp_path / "b.parquet")
    out, _, _, drops, _, _ = read_all(InputFile(str(tmp_path / "b.parquet"), "parquet"))
    assert out == ["bytes ok"] and drops == Counter({"invalid_utf8": 1})

    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "c.parquet")
    out, _, _, drops, issues, _ = read_all(InputFile(str(tmp_path / "c.parquet"), "parquet"))
    assert out == [] and not drops and [i.reason for i in issues] == ["non_string_text"]


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_jsonl_roundtrip(tmp_path, compression):
    records = [{"text": f"line {i}: naïve café ✓", "id": i} for i in range(10)]
    records[3]["language"] = "de"
    records[4]["language"] = "__label__fra_Latn"
    raw = b"\xef\xbb\xbf" + jsonl_bytes(records[:5]) + b"\n\r\n" + jsonl_bytes(records[5:]).replace(b"\n", b"\r\n")
    name = {"none": "a.jsonl", "gzip": "a.jsonl.gz", "zstd": "a.jsonl.zst"}[compression]
    data = {"none": raw, "gzip": gzip.compress(raw), "zstd": zstandard.ZstdCompressor().compress(raw)}[compression]
    (tmp_path / name).write_bytes(data)
    (f,), _ = discover_inputs([tmp_path / name])
    assert f.compression == compression
    out, langs, rows, drops, issues, batches = read_all(f, batch_size=3)
    assert out == [r["text"] for r in records]
    assert langs == [None, None, None, "deu_Latn", "fra_Latn", None, None, None, None, None]
    assert rows.tolist() == [1, 2, 3, 4, 5, 8, 9, 10, 11, 12]  # 1-based lines; two blank lines skipped
    assert [len(b.texts) for b in batches] == [3, 3, 3, 1]
    assert not drops and not issues


def test_txt_blocks_roundtrip(tmp_path):
    raw = "\ufeffFirst paragraph,\nstill the first.\n\n\n  \nSecond\r\nparagraph.\r\n\r\nThird, no newline at the end"
    (tmp_path / "notes.txt").write_text(raw, encoding="utf-8")
    (f,), _ = discover_inputs([tmp_path])
    out, langs, rows, drops, issues, _ = read_all(f)
    assert out == ["First paragraph,\nstill the first.", "Second\nparagraph.", "Third, no newline at the end"]
    assert rows.tolist() == [1, 6, 9] and langs == [None] * 3
    assert not drops and not issues


def test_batch_bytes_bounds_a_batch(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(jsonl_bytes([{"text": "x" * 1000}] * 50))
    _, _, _, _, _, batches = read_all(InputFile(str(tmp_path / "a.jsonl"), "jsonl"), batch_bytes=4000)
    assert [len(b.texts) for b in batches] == [4] * 12 + [2]


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", badinputs.KINDS)
def test_bad_input_is_reported_and_the_rest_survives(tmp_path, kind):
    case = badinputs.write_one(tmp_path, kind)
    files, issues = discover_inputs([tmp_path])
    if case.stage == "discover":
        assert [(Path(i.path), i.reason) for i in issues] == [(case.path, case.reason)]
        assert case.reason in FILE_REASONS
        assert case.path not in [Path(f.path) for f in files]
        return
    assert issues == [] and [Path(f.path) for f in files] == [case.path]
    texts, _, rows, drops, got, _ = read_all(files[0])
    assert [(Path(i.path), i.line, i.reason) for i in got] == [(case.path, case.line, case.reason)]
    assert got[0].message and case.reason in (DROP_REASONS if case.line is not None else FILE_REASONS)
    if case.line is not None:  # a dropped document: counted once under its reason
        assert drops == Counter({case.reason: 1})
    else:
        assert not drops
    if case.exact:
        assert texts == list(case.good)
    else:
        assert texts[: len(case.good)] == list(case.good)
    assert len(set(rows.tolist())) == len(rows)


def test_write_all_uses_each_paragraph_once(tmp_path):
    cases = badinputs.write_all(tmp_path)
    assert [c.kind for c in cases] == list(badinputs.KINDS)
    good = [t for c in cases for t in c.good]
    assert len(good) == len(set(good)) > 20
    files, issues = discover_inputs([tmp_path])
    assert sorted(i.reason for i in issues) == ["unknown_language_folder", "unsupported_format"]
    assert len(files) == sum(c.stage == "read" for c in cases)


def test_every_line_problem_in_one_file_is_counted(tmp_path):
    lines = [
        b'{"text": "good one"}',
        b'{"text": "caf\xe9"}',  # 2 invalid_utf8
        b"{not json",  # 3 malformed_json
        b'["a list"]',  # 4 not_an_object
        b'{"id": 1}',  # 5 missing_text
        b'{"text": null}',  # 6 missing_text
        b'{"text": 42}',  # 7 non_string_text
        b'{"text": "   "}',  # 8 empty_text
        b'{"text": "lone \\ud800 surrogate"}',  # 9 invalid_utf8
        b'{"text": "x", "language": "klingonish"}',  # 10 unknown_language
        b'{"text": "' + b"y" * 300 + b'"}',  # 11 line_too_long (max_line_bytes=200)
        b"",  # 12 blank: not a document
        b'{"text": "good two", "language": "fr"}',  # 13
    ]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines))  # no final newline
    texts, langs, rows, drops, issues, _ = read_all(InputFile(str(tmp_path / "a.jsonl"), "jsonl"), max_line_bytes=200)
    assert texts == ["good one", "good two"] and langs == [None, "fra_Latn"] and rows.tolist() == [1, 13]
    assert drops == Counter(
        invalid_utf8=2, malformed_json=1, not_an_object=1, missing_text=2, non_string_text=1, empty_text=1,
        unknown_language=1, line_too_long=1,
    )
    assert [i.line for i in issues] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert len(texts) + sum(drops.values()) == len(lines) - 1  # seen = kept + dropped


def test_binary_line_after_the_sniff_window(tmp_path):
    head = jsonl_bytes([{"text": f"padding document {i}"} for i in range(500)])
    assert len(head) > 8000
    (tmp_path / "a.jsonl").write_bytes(head + b'{"text": "a\x00b"}\n' + jsonl_bytes([{"text": "after"}]))
    texts, _, _, drops, issues, _ = read_all(InputFile(str(tmp_path / "a.jsonl"), "jsonl"))
    assert len(texts) == 501 and texts[-1] == "after"
    assert drops == Counter(binary=1) and issues[0].line == 501


def test_issue_list_is_capped_counts_are_not(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"{bad\n" * 50 + b'{"text": "ok"}\n')
    texts, _, _, drops, issues, _ = read_all(InputFile(str(tmp_path / "a.jsonl"), "jsonl"), max_issues_per_reason=10)
    assert texts == ["ok"] and drops == Counter(malformed_json=50)
    assert [i.line for i in issues] == list(range(1, 11))


def test_txt_long_line_and_long_block(tmp_path):
    raw = b"a\n\n" + b"b" * 300 + b"\nrest of block\n\nc\n" + b"d\n" * 200 + b"\ne\n"
    (tmp_path / "a.txt").write_bytes(raw)
    texts, _, rows, drops, issues, _ = read_all(InputFile(str(tmp_path / "a.txt"), "txt"), max_line_bytes=200)
    assert texts == ["a", "e"] and rows.tolist() == [1, 208]
    assert drops == Counter(line_too_long=1, block_too_long=1)
    # "c\n" is line 6; with 2 bytes a line the block passes 200 bytes at its 101st line.
    assert [(i.line, i.reason) for i in issues] == [(3, "line_too_long"), (106, "block_too_long")]


def test_unreadable_and_vanished_file(tmp_path):
    texts, _, _, _, issues, _ = read_all(InputFile(str(tmp_path / "gone.jsonl"), "jsonl"))
    assert texts == [] and [i.reason for i in issues] == ["unreadable"]


def test_read_documents_validates_parameters(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        list(read_documents(InputFile(str(tmp_path / "a.jsonl"), "jsonl"), batch_size=0))


# -- bounded memory -----------------------------------------------------------------------------


def test_large_jsonl_zst_streams_in_bounded_memory(tmp_path):
    """~200 MB of JSONL in zstd, and a 48 MB single line: Python memory stays within a few MB."""
    path = tmp_path / "big.jsonl.zst"
    rng = np.random.default_rng(0)
    vocab = np.array(["word%d" % i for i in range(4096)])
    n_lines = 0
    with open(path, "wb") as fh, zstandard.ZstdCompressor(level=1).stream_writer(fh) as w:
        for _ in range(100):
            words = vocab[rng.integers(0, len(vocab), size=(200, 250))]
            block = "".join('{"text": "%s"}\n' % " ".join(row) for row in words).encode()
            for _ in range(10):  # 2,000 lines of ~2 kB per round
                w.write(block)
                n_lines += 200
        w.write(b'{"text": "' + b"z" * (48 << 20) + b'"}\n{"text": "tail"}\n')
    raw_bytes = n_lines * 2_000
    assert raw_bytes > 150e6
    tracemalloc.start()
    try:
        n = 0
        last = ""
        drops: Counter = Counter()
        for b in read_documents(InputFile(str(path), "jsonl", "zstd"), batch_size=1024):
            n += len(b.texts)
            drops.update(b.drops)
            if b.texts:
                last = b.texts[-1]
            del b
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == n_lines + 1 and last == "tail" and drops == Counter(line_too_long=1)
    # A batch of 1,024 ~2 kB documents is ~3 MB of str; the file (and the 48 MB line) never is.
    assert peak < 24 << 20, f"peak traced memory {peak / 1e6:.1f} MB"


# -- normalize ----------------------------------------------------------------------------------


def test_normalize_text_nfc_controls_newlines():
    assert normalize_text("Cafe\u0301") == "Café"
    assert normalize_text("a\x00b\x07c\x1bd\x7fe\x9fg") == "abcdeg"
    # Controls that break lines or pages become newlines: deleting them glued the words around them.
    assert normalize_text("end of page.\x0cNext page") == "end of page.\nNext page"
    assert normalize_text("a\x0bb\x1cc\x1dd\x1ee\x1ff\x85g") == "a\nb\nc\nd\ne\nf\ng"
    assert all(ch.isspace() for ch in "\x0b\x0c\x1c\x1d\x1e\x1f\x85")  # what Python calls whitespace
    assert normalize_text("  line one\r\nline\ttwo\rline three\n\n") == "line one\nline\ttwo\nline three"
    assert normalize_text("zero\u200dwidth joiner\u00ad") == "zero\u200dwidth joiner\u00ad"  # Cf is kept


def test_the_blank_document_kernel_is_str_isspace_on_every_code_point():
    # `_any_blank` decides on UTF-8 bytes whether a batch takes the fast path; it must agree with
    # `not text.strip()` for every character, including the whitespace Python knows beyond ASCII
    # (\x1c-\x1f, \x85, \u2028, \u3000...).
    from curriculum.ingest import _any_blank, _space_table

    space = _space_table()

    def blank(texts: list[str]) -> bool:
        data = np.frombuffer("".join(texts).encode("utf-8"), dtype=np.uint8)
        lens = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
        return bool(_any_blank(data, np.concatenate(([0], np.cumsum(lens))), space))

    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    whitespace = [ch for ch in chars if ch.isspace()]
    others = [ch for ch in chars if not ch.isspace()]
    assert {"\x1c", "\x1f", "\x85", "\u2028", "\u3000"} <= set(whitespace) and len(whitespace) == 29
    assert not blank(others) and not blank([ch * 3 for ch in others])  # 1.1M one-character documents
    for ch in whitespace:
        assert blank([ch]) and blank(["x", ch * 3]) and not blank([ch + "a"]) and not blank(["a" + ch]), hex(ord(ch))
    assert blank([""]) and not blank([]) and not blank(["a", "b"])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200))
def test_normalize_text_properties(text):
    out = normalize_text(text)
    assert unicodedata.is_normalized("NFC", out)
    assert not any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in out)
    assert normalize_text(out) == out
    assert out == out.strip()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=40), st.integers(0, 20), st.integers(0, 30))
def test_filter_length_matches_reference(texts, lo, span):
    hi = lo + span
    keep, drops = filter_length(texts, lo, hi)
    assert keep.dtype == np.bool_ and keep.tolist() == [lo <= len(t) <= hi for t in texts]
    assert drops == Counter({k: v for k, v in (("too_short", sum(len(t) < lo for t in texts)), ("too_long", sum(len(t) > hi for t in texts))) if v})


def test_filter_length_rejects_bad_bounds():
    with pytest.raises(ValueError, match="min_chars"):
        filter_length(["a"], -1, 5)
    with pytest.raises(ValueError, match="max_chars"):
        filter_length(["a"], 5, 4)

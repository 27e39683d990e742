"""`curriculum build` end to end: accounting, determinism, bad input, resume after kill -9, Ray."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from conftest import ROOT, run_cli, write_text_corpus
from curriculum.build import BuildConfig, build
from curriculum.manifest import read_manifest
from curriculum.shards import open_shard
from curriculum.verify import verify_manifest


def tables(root: Path) -> dict[str, bytes]:
    return {f: (root / f).read_bytes() for f in ("languages.parquet", "shards.parquet")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("corpus"), n_files=12, docs_per_file=150)


def run_build(corpus: Path, out: Path, tokenizer: Path, **kw) -> object:
    cfg = BuildConfig(inputs=[str(corpus)], out=str(out), tokenizer=str(tokenizer), shard_bytes=64 << 10, **kw)
    return build(cfg, workers=1, progress=False)


def test_build_accounting_and_verify(corpus, small_tokenizer, tmp_path):
    rep = run_build(corpus, tmp_path / "out", small_tokenizer)
    m = read_manifest(tmp_path / "out")
    docs = m.meta.model_extra["documents"]
    assert docs["input"] == docs["kept"] + sum(docs["dropped"].values())
    assert docs["kept"] == int(m.languages["docs"].sum()) == rep.docs_kept
    assert docs["dropped"].get("near_duplicate", 0) >= 5  # the copied file's documents
    langs = set(m.languages["language"].to_list())
    assert {"fra_Latn", "deu_Latn", "rus_Cyrl"} <= langs
    assert {"ukr_Cyrl", "ell_Grek"} <= langs  # identified by fastText from the unlabeled file
    assert m.meta.lid_model and len(m.meta.lid_model["sha256"]) == 64
    assert m.meta.tokenizer.vocab_size == 4000 and m.meta.tokenizer.mask_id == 4
    assert m.shards.height > m.languages.height  # size-bounded shards: several per big language
    n, problems = verify_manifest(tmp_path / "out")
    assert n == m.shards.height and problems == []
    view = open_shard(tmp_path / "out" / m.shards["path"][0])
    assert view.tokens.dtype.name == "uint32" and view.docs == m.shards["docs"][0]
    # Files get the mode open() would give them (mkstemp's 0600 kept other users out of the corpus).
    from curriculum.fileperm import _umask

    for rel in ("manifest.json", "languages.parquet", "shards.parquet", m.shards["path"][0]):
        assert (tmp_path / "out" / rel).stat().st_mode & 0o777 == 0o666 & ~_umask(), rel
    # `synth --out` onto a built corpus is refused (it used to replace its manifest); onto an
    # earlier synthetic manifest it is not.
    before = tables(tmp_path / "out") | {"manifest.json": (tmp_path / "out" / "manifest.json").read_bytes()}
    proc = run_cli("synth", "--out", str(tmp_path / "out"), "--languages", "5", check=False)
    assert proc.returncode == 2 and "holds a built corpus's manifest" in proc.stderr, proc.stderr
    assert tables(tmp_path / "out") | {"manifest.json": (tmp_path / "out" / "manifest.json").read_bytes()} == before
    for n in (5, 6):
        run_cli("synth", "--out", str(tmp_path / "synth"), "--languages", str(n))
    assert read_manifest(tmp_path / "synth").languages.height == 6


def test_same_manifest_whatever_the_worker_count(corpus, small_tokenizer, tmp_path):
    cfg = dict(inputs=[str(corpus)], tokenizer=str(small_tokenizer), shard_bytes=64 << 10)
    build(BuildConfig(out=str(tmp_path / "a"), **cfg), workers=1, progress=False)
    import numba

    before = numba.get_num_threads()
    rep = build(BuildConfig(out=str(tmp_path / "b"), **cfg), workers=2, progress=False)
    assert "pool_warm" in rep.seconds  # a pool process started and warmed up (this process is the other worker)
    assert numba.get_num_threads() == before  # its tasks ran on one numba thread here, then it was given back
    assert tables(tmp_path / "a") == tables(tmp_path / "b")


def test_verify_names_a_corrupted_shard(corpus, small_tokenizer, tmp_path):
    run_build(corpus, tmp_path / "out", small_tokenizer)
    m = read_manifest(tmp_path / "out")
    victim = tmp_path / "out" / m.shards["path"][1]
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF
    victim.write_bytes(bytes(data))
    proc = run_cli("verify", str(tmp_path / "out"), check=False)
    assert proc.returncode == 1 and m.shards["path"][1] in proc.stderr and "checksum mismatch" in proc.stderr
    (tmp_path / "out" / m.shards["path"][2]).unlink()
    proc = run_cli("verify", str(tmp_path / "out"), check=False)
    assert m.shards["path"][2] in proc.stderr and "missing" in proc.stderr
    # What verify advises works: a rerun writes the deleted shards again, byte for byte (it used
    # to count their chunks as done and report success).
    (tmp_path / "out" / m.shards["path"][1]).unlink()
    run_build(corpus, tmp_path / "out", small_tokenizer)
    assert verify_manifest(tmp_path / "out") == (m.shards.height, [])
    assert (tmp_path / "out" / m.shards["path"][1]).read_bytes() != bytes(data)  # the good bytes, not the flipped


def test_bad_inputs_are_reported_and_the_rest_is_built(small_tokenizer, tmp_path):
    from badinputs import write_all

    corpus = write_text_corpus(tmp_path / "in", n_files=3, docs_per_file=40)
    cases = write_all(corpus)
    out = tmp_path / "out"
    proc = run_cli("build", str(corpus), "--out", str(out), "--tokenizer", str(small_tokenizer), check=False)
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out)
    issues = m.meta.file_issues
    docs = m.meta.model_extra["documents"]
    assert docs["input"] == docs["kept"] + sum(docs["dropped"].values())
    for case in cases:
        hit = [i for i in issues if Path(i["path"]).name == case.path.name and i["reason"] == case.reason]
        if case.stage == "read" and case.line is not None:
            assert docs["dropped"].get(case.reason, 0) >= 1, case.kind
        assert hit or docs["dropped"].get(case.reason, 0) >= 1, f"{case.kind}: {case.reason} not reported"
    assert {"fra_Latn", "deu_Latn", "rus_Cyrl"} <= set(m.languages["language"].to_list())
    assert "bad input:" in proc.stderr
    # The default --workers auto: a corpus this small is not worth a second process.
    assert "build: 1 worker(s) (--workers auto: " in proc.stdout + proc.stderr
    strict = run_cli("build", str(corpus), "--out", str(tmp_path / "out2"), "--tokenizer", str(small_tokenizer), "--strict", check=False)
    assert strict.returncode == 1 and "--strict" in strict.stderr


@pytest.mark.slow
def test_kill_minus_9_then_resume_gives_the_same_manifest(small_tokenizer, tmp_path):
    corpus = write_text_corpus(tmp_path / "in", n_files=40, docs_per_file=600, seed=5)
    ref = tmp_path / "ref"
    build(BuildConfig(inputs=[str(corpus)], out=str(ref), tokenizer=str(small_tokenizer), shard_bytes=256 << 10), workers=2, progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "curriculum.cli", "build", str(corpus), "--out", str(out), "--tokenizer",
           str(small_tokenizer), "--workers", "2", "--shard-mb", "0.25"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / ".work" / "extract").glob("*/stats.json"))) < 10:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it was killed; make the corpus bigger"
    done_before = len(list((out / ".work" / "extract").glob("*/stats.json")))
    assert 0 < done_before < 41
    run_cli("build", str(corpus), "--out", str(out), "--tokenizer", str(small_tokenizer), "--workers", "2", "--shard-mb", "0.25")
    assert tables(out) == tables(ref)
    assert verify_manifest(out)[1] == []


@pytest.mark.slow
def test_ray_executor_gives_the_same_manifest(corpus, small_tokenizer, tmp_path):
    cfg = dict(inputs=[str(corpus)], tokenizer=str(small_tokenizer), shard_bytes=64 << 10)
    build(BuildConfig(out=str(tmp_path / "local"), **cfg), workers=1, progress=False)
    build(BuildConfig(out=str(tmp_path / "ray"), **cfg), executor="ray", workers=2, progress=False)
    assert tables(tmp_path / "local") == tables(tmp_path / "ray")


@pytest.mark.slow
def test_a_local_ray_instance_gets_the_usable_cores(monkeypatch):
    """Not os.cpu_count(): in a 2-CPU pod of a 64-core host that ran 64 tasks at once."""
    import curriculum.executors as executors

    monkeypatch.setattr(executors, "usable_cores", lambda: 1)
    ex = executors.RayExecutor()
    try:
        assert ex._ray.cluster_resources()["CPU"] == 1
    finally:
        ex.close()


def test_resuming_into_a_work_dir_of_another_build_is_refused(corpus, small_tokenizer, tmp_path):
    from curriculum.errors import CurriculumError

    out = tmp_path / "out"
    run_build(corpus, out, small_tokenizer)
    (out / "manifest.json").unlink()  # as if it had been killed before the end
    with pytest.raises(CurriculumError, match="other settings.*delete"):
        run_build(corpus, out, small_tokenizer, min_chars=200)
    run_build(corpus, out, small_tokenizer)  # same build: resumes
    assert (out / "manifest.json").exists()


def test_a_rerun_with_changed_inputs_is_refused_naming_them(corpus, small_tokenizer, tmp_path):
    # Was: TypeError (unhashable list) and a traceback, e.g. after `demo-corpus` was run again.
    import shutil

    from curriculum.errors import CurriculumError

    src = tmp_path / "in"
    shutil.copytree(corpus, src)
    out = tmp_path / "out"
    run_build(src, out, small_tokenizer)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    os.utime(files[0], ns=(files[0].stat().st_atime_ns, files[0].stat().st_mtime_ns + 10**9))
    with pytest.raises(CurriculumError, match=r"other inputs \(1 changed size or modification time, e\.g\. .*"
                                              + re.escape(files[0].name) + r"\).*Use a new --out"):
        run_build(src, out, small_tokenizer)
    extra = files[1].with_name("zz-extra" + files[1].suffix)
    shutil.copy(files[1], extra)
    files[2].unlink()
    with pytest.raises(CurriculumError) as info:
        run_build(src, out, small_tokenizer)
    msg = str(info.value)
    assert f"1 added, e.g. {extra}" in msg and f"1 removed, e.g. {files[2]}" in msg and "1 changed" in msg


def test_the_same_inputs_spelled_otherwise_resume_and_an_out_inside_an_input_is_refused(corpus, small_tokenizer,
                                                                                         tmp_path, monkeypatch):
    from curriculum.errors import CurriculumError

    out = tmp_path / "out"
    run_build(corpus, out, small_tokenizer)
    (out / "manifest.json").unlink()  # as if killed before the end
    monkeypatch.chdir(corpus.parent)
    run_build(Path(os.path.relpath(corpus)), out, small_tokenizer)  # was refused: "other inputs (N added ...)"
    assert (out / "manifest.json").exists()
    with pytest.raises(CurriculumError, match="is inside the input"):
        run_build(corpus, corpus / "manifest", small_tokenizer)
    assert not (corpus / "manifest").exists()


def test_normalize_texts_matches_normalize_text():
    """The batch normalizer (numba quick check, then the numba normalizer for the documents it
    flags) equals the reference per text."""
    import random

    from curriculum.normalize import normalize_text, normalize_texts

    rng = random.Random(0)
    # Starters that compose with a following mark, marks in and out of canonical order, MAYBE
    # characters (Bengali/Tamil AA, Hangul jamo), precomposed letters whose decomposition ends
    # in a mark (ǫ), composition exclusions (क़, য়) and their parts, controls, CR, whitespace, a plane-14 tag.
    pool = list("ae xक\t\n\r\x00\x85") + ["\u0301", "\u0328", "\u0316", "\u01eb", "\u09c7", "\u09be", "\u0bc6", "\u0bbe",
                                           "\u093c", "\u0958", "\u1100", "\u1161", "\uac00", "\u11a8", "\u0e48", "\u0e38",
                                           "\u2003", "\u212b", "\u0344", "\U000e0067", "\u00e9", "\u0432",
                                           # excluded pairs: য + ◌় (য় 09DF), ক + ◌় (क़ 0958) next to न + ◌़ (ऩ 0929, primary)
                                           "\u09af", "\u09bc", "\u09df", "\u0915", "\u0928", "\u0929"]
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 12))) for _ in range(50_000)]
    texts += ["Caf\u00e9 d\u00e9j\u00e0", "Cafe\u0301", "  padded \n", "\u0dd9\u0dca", ""]
    want = [normalize_text(t) for t in texts]
    got, arr = normalize_texts(texts)
    assert got == want
    assert arr.to_pylist() == want
    assert sum(w != t for w, t in zip(want, texts)) > 10_000  # the pool exercises both paths


def test_normalize_texts_matches_normalize_text_on_every_triple():
    """Every 3-character sequence over starters, MAYBE starters and marks of several classes,
    precomposed and excluded letters (where the kernel settles a MAYBE code point itself)."""
    import itertools

    from curriculum.normalize import normalize_text, normalize_texts

    alphabet = [
        "a", "e", "\u0915", "\u0928", "\u09a1", "\u09af", "\u09c7", "\u0bc6", "\u0627",  # starters (some compose)
        "\u09be", "\u0bbe", "\u09d7", "\u0cd5",  # MAYBE starters (vowel signs of two-part vowels)
        "\u0301", "\u0328", "\u0316", "\u09bc", "\u093c", "\u0e48", "\u0e38", "\u0651", "\u064e", "\u0654",  # marks
        "\u00e9", "\u01eb", "\u09cb", "\u09df", "\u0958", "\u0929", "\u0622",  # precomposed, excluded
        "\u1100", "\u1161", "\uac00", " ",
    ]
    texts = ["x" + "".join(t) for t in itertools.product(alphabet, repeat=3)]
    want = [normalize_text(t) for t in texts]
    got, arr = normalize_texts(texts)
    assert got == want
    assert arr.to_pylist() == want
    assert 0.2 < sum(w != t for w, t in zip(want, texts)) / len(texts) < 0.9


def _token_streams(root: Path) -> dict[str, list[int]]:
    """Each language's tokens, shard after shard in manifest order."""
    m = read_manifest(root)
    out: dict[str, list[int]] = {}
    for lang, path in zip(m.shards["language"], m.shards["path"]):
        out.setdefault(lang, []).extend(open_shard(root / path).tokens.tolist())
    return out


def test_small_tokenize_chunks_cut_languages_but_not_their_token_streams(corpus, small_tokenizer, tmp_path):
    # One record batch per chunk (chunk_bytes=1): every language with several files becomes
    # several tokenize tasks, each ending its own last shard; the documents and their order are
    # those of one task per language, and the result does not depend on the worker count.
    def run(name: str, workers: int = 1, **kw):
        cfg = BuildConfig(inputs=[str(corpus)], out=str(tmp_path / name), tokenizer=str(small_tokenizer), shard_bytes=1 << 20, **kw)
        return build(cfg, workers=workers, progress=False)

    whole, cut, cut2 = run("whole"), run("cut", chunk_bytes=1), run("cut2", workers=2, chunk_bytes=1)
    assert tables(tmp_path / "cut") == tables(tmp_path / "cut2")
    a, b = read_manifest(tmp_path / "whole"), read_manifest(tmp_path / "cut")
    assert a.languages.select("language", "docs", "tokens").equals(b.languages.select("language", "docs", "tokens"))
    # One shard per language (they are under 1 MB) against one per chunk: per file here.
    assert a.shards.height == a.languages.height
    # fra, deu, rus, spa, ita, pol: two files of distinct documents each, so one more chunk each
    # (fra's third file holds only copies: its chunk keeps nothing and writes no shard).
    assert b.shards.height == a.shards.height + 6
    assert set(b.shards["path"].str.slice(9, 5)) == {"00000", "00001"}  # chunk numbers in shard names
    assert _token_streams(tmp_path / "whole") == _token_streams(tmp_path / "cut")
    assert whole.docs_kept == cut.docs_kept == cut2.docs_kept
    assert verify_manifest(tmp_path / "cut")[1] == []


def test_plan_chunks_cuts_inside_and_across_files() -> None:
    from curriculum.build import plan_chunks

    parts = [("a", [5, 5, 5]), ("b", [20]), ("c", [1, 1])]
    assert plan_chunks(parts, 10) == [
        ((("a", 0, 2),), 10),  # closes inside file a, at the batch that reaches 10
        ((("a", 2, 3), ("b", 0, 1)), 25),  # the rest of a, then all of b (a batch is never split)
        ((("c", 0, 2),), 2),  # what is left is a last, smaller chunk
    ]
    assert plan_chunks(parts, 1 << 30) == [((("a", 0, 3), ("b", 0, 1), ("c", 0, 2)), 37)]  # a small language: one task
    # Every batch lands in exactly one chunk, in file order, whatever the bound.
    for bound in (1, 3, 7, 11, 36, 37, 38):
        flat = [(p, i) for ranges, _ in plan_chunks(parts, bound) for p, lo, hi in ranges for i in range(lo, hi)]
        assert flat == [(p, i) for p, sizes in parts for i in range(len(sizes))]


def test_a_big_parquet_file_is_read_in_slices_of_row_groups(small_tokenizer, tmp_path):
    # One language in one Parquet file of 6 row groups (with a blank row in the 4th): with
    # slice_bytes=1 every row group is its own extract task. Documents keep their row numbers, so
    # the dedup choice, the drops and each language's token stream are those of one task per file.
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curriculum.democorpus import demo_documents

    rng = np.random.default_rng(3)
    words = " ".join(demo_documents()["fra_Latn"]).split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(30, 90)))) for _ in range(600)]
    texts[350] = "   "  # blank: dropped as empty_text
    texts[520] = texts[10]  # an exact copy in a later slice: the earlier row survives
    d = tmp_path / "in" / "fra_Latn" / "train"
    d.mkdir(parents=True)
    pq.write_table(pa.table({"text": texts}), d / "000.parquet", row_group_size=100)

    def run(name: str, workers: int = 1, **kw):
        cfg = BuildConfig(inputs=[str(tmp_path / "in")], out=str(tmp_path / name), tokenizer=str(small_tokenizer), **kw)
        return build(cfg, workers=workers, progress=False)

    whole, sliced, sliced2 = run("whole"), run("sliced", slice_bytes=1), run("sliced2", workers=2, slice_bytes=1)
    parts = sorted(p.name for p in (tmp_path / "sliced" / ".work" / "extract").iterdir())
    assert parts == [f"000000.{g:06d}" for g in range(0, 6)]
    assert whole.docs_in == sliced.docs_in == 600
    assert whole.drops == sliced.drops == {"empty_text": 1, "near_duplicate": 1}
    assert _token_streams(tmp_path / "whole") == _token_streams(tmp_path / "sliced")
    assert tables(tmp_path / "sliced") == tables(tmp_path / "sliced2")  # whatever the worker count
    assert verify_manifest(tmp_path / "sliced")[1] == []


def test_plan_slices_groups_row_groups_up_to_the_bound(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curriculum.build import plan_slices

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"text": [f"document {i} " * 20 for i in range(1000)]}), path, row_group_size=100, compression="none")
    meta = pq.ParquetFile(path).metadata
    group = [sum(meta.row_group(g).column(c).total_compressed_size for c in range(meta.row_group(g).num_columns)) for g in range(10)]
    assert plan_slices(str(path), path.stat().st_size) == [(None, path.stat().st_size)]  # not bigger than the bound
    two = plan_slices(str(path), sum(group[:2]))
    assert [s for s, _ in two] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert sum(n for _, n in two) == sum(group)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + b"\0" * 5000)  # unreadable footer: one task, which reports it
    assert plan_slices(str(tmp_path / "bad.parquet"), 10) == [(None, 5004)]


def _fra_parquet(path: Path, texts: list[str] | None = None, n: int = 600, **kw) -> list[str]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curriculum.democorpus import demo_documents

    if texts is None:
        rng = np.random.default_rng(5)
        words = " ".join(demo_documents()["fra_Latn"]).split()
        texts = [" ".join(rng.choice(words, size=int(rng.integers(30, 90)))) for _ in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts}), path, row_group_size=100, **kw)
    return texts


def test_a_damaged_row_group_costs_its_rows_only_sliced_or_not(small_tokenizer, tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "in" / "fra_Latn" / "train" / "000.parquet"
    _fra_parquet(path, compression="zstd")  # 6 row groups of 100 rows
    chunk = pq.ParquetFile(path).metadata.row_group(2).column(0)
    data = bytearray(path.read_bytes())
    for k in range(chunk.data_page_offset + 8, chunk.data_page_offset + 72):  # inside group 2's data page
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))
    reps = {}
    for name, kw in (("whole", {}), ("sliced", {"slice_bytes": 1})):
        cfg = BuildConfig(inputs=[str(tmp_path / "in")], out=str(tmp_path / name), tokenizer=str(small_tokenizer), **kw)
        reps[name] = build(cfg, workers=1, progress=False)
    for rep in reps.values():
        # The other five row groups kept; the damaged group's 100 rows counted as dropped (they
        # were missing from input = kept + dropped).
        assert (rep.docs_in, rep.docs_kept, rep.drops) == (600, 500, {"corrupt_parquet": 100})
        assert [(i["reason"], "row group 2" in i["message"], "rows 200..299 skipped" in i["message"]) for i in rep.issues] == [
            ("corrupt_parquet", True, True)]
    assert _token_streams(tmp_path / "whole") == _token_streams(tmp_path / "sliced")


def test_slices_report_what_is_wrong_with_a_file_once_and_cap_its_lines(small_tokenizer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "in" / "fra_Latn" / "train"
    d.mkdir(parents=True)
    pq.write_table(pa.table({"body": [f"row {i}" for i in range(600)]}), d / "000.parquet", row_group_size=100)
    texts = _fra_parquet(d / "001.parquet")
    blank = [t if i % 10 else "  " for i, t in enumerate(texts)]  # 60 blank rows, 10 in every row group
    _fra_parquet(d / "002.parquet", blank)
    cfg = BuildConfig(inputs=[str(tmp_path / "in")], out=str(tmp_path / "out"), tokenizer=str(small_tokenizer), slice_bytes=1)
    rep = build(cfg, workers=1, progress=False)
    reasons = Counter((Path(i["path"]).name, i["reason"]) for i in rep.issues)
    assert reasons == {("000.parquet", "no_text_column"): 1, ("002.parquet", "empty_text"): 10}  # 10 lines listed
    assert rep.drops["empty_text"] == 60  # all counted
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["file_issues"] == rep.issues


def test_a_work_dir_of_an_older_layout_is_refused(corpus, small_tokenizer, tmp_path):
    from curriculum.errors import CurriculumError

    stale = tmp_path / "out" / ".work" / "extract" / "000000"
    stale.mkdir(parents=True)
    (stale / "stats.json").write_text("{}")  # a finished task of a version before build.json
    with pytest.raises(CurriculumError, match="older version of curriculum"):
        run_build(corpus, tmp_path / "out", small_tokenizer)


def test_size_flags_must_be_positive_numbers_of_mb(corpus, small_tokenizer, tmp_path):
    for flag, value in (("--chunk-mb", "0"), ("--slice-mb", "nan"), ("--shard-mb", "-1")):
        proc = run_cli("build", str(corpus), "--out", str(tmp_path / "out"), "--tokenizer", str(small_tokenizer), flag, value,
                       check=False)
        assert proc.returncode == 2 and f"{flag} {value}: give a positive number of MB" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_new_tokenizer_redoes_only_the_tokenize_stage(corpus, small_tokenizer, tmp_path):
    # Same inputs and extract/dedup settings, another tokenizer and shard size: refused unless
    # asked (--retokenize); then the rerun keeps every extract and dedup record (not rewritten),
    # leaves other files in --out alone and gives the tables of a fresh build.
    from curriculum.democorpus import demo_documents
    from curriculum.errors import CurriculumError
    from curriculum.tokenize import train_tokenizer

    other = tmp_path / "other.json"
    train_tokenizer([t for docs in demo_documents().values() for t in docs], 3000, other)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    first = run_build(corpus, out, small_tokenizer)
    kept = {p: p.stat().st_mtime_ns for d in ("extract", "dedup") for p in (out / ".work" / d).rglob("*") if p.is_file()}
    old_shards = set(read_manifest(out).shards["path"])
    (out / "notes").mkdir()
    foreign = [out / "notes" / "00001-0002.arrow", out / "notes" / ".draft.tmp"]  # shard-like names, not ours
    for f in foreign:
        f.write_text("mine")
    cfg = dict(inputs=[str(corpus)], tokenizer=str(other), shard_bytes=1 << 20)  # fewer, bigger shards
    with pytest.raises(CurriculumError, match=r"tokenize \(shard_bytes, tokenizer_sha256\).*--retokenize"):
        build(BuildConfig(out=str(out), **cfg), workers=1, progress=False)
    assert verify_manifest(out)[1] == []  # refused: the earlier build untouched
    again = build(BuildConfig(out=str(out), **cfg), workers=1, progress=False, retokenize=True)
    build(BuildConfig(out=str(fresh), **cfg), workers=1, progress=False)
    assert again.retokenized and not first.retokenized
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # reused, not redone
    assert tables(out) == tables(fresh)
    m = read_manifest(out)
    assert m.meta.tokenizer.vocab_size == 3000 and verify_manifest(out)[1] == []
    on_disk = {str(p.relative_to(out)) for p in out.glob("*_*/*.arrow")}
    assert on_disk == set(m.shards["path"]) and len(old_shards) > len(on_disk)  # the extra old shards are gone
    assert all(f.read_text() == "mine" for f in foreign)
    # A change to an extract setting is refused, naming it, --retokenize or not.
    with pytest.raises(CurriculumError, match=r"settings \(min_chars\)"):
        build(BuildConfig(out=str(out), min_chars=30, **cfg), workers=1, progress=False, retokenize=True)
    # Work left by a version with other extract rules (normalization, labels) is not finished by
    # this one: the records would mix two rules. Nor tokenize records of other tokenize rules.
    record = json.loads((out / ".work" / "build.json").read_text())
    for group, key, why in (("settings", "extract_rules", r"settings \(extract_rules\)"),
                            ("tokenize", "tokenize_rules", r"tokenize \(tokenize_rules\).*--retokenize")):
        older = {**record, group: {**record[group], key: 1}}
        (out / ".work" / "build.json").write_text(json.dumps(older))
        with pytest.raises(CurriculumError, match=why):
            build(BuildConfig(out=str(out), **cfg), workers=1, progress=False)
    (out / ".work" / "build.json").write_text(json.dumps(record))
    # A new dedup threshold redoes dedup and tokenize, keeping language ID and signatures (it was
    # refused: "delete .work to start over", losing the extract stage's work).
    extract = {p: p.stat().st_mtime_ns for p in (out / ".work" / "extract").rglob("*") if p.is_file()}
    with pytest.raises(CurriculumError, match=r"dedup \(dedup_threshold, lsh_bands_rows\).*To keep its language ID and signatures and "
                                              r"dedup and tokenize again, add --retokenize"):
        build(BuildConfig(out=str(out), dedup_threshold=0.5, **cfg), workers=1, progress=False)
    redone = build(BuildConfig(out=str(out), dedup_threshold=0.5, **cfg), workers=1, progress=False, retokenize=True)
    fresh5 = build(BuildConfig(out=str(tmp_path / "fresh5"), dedup_threshold=0.5, **cfg), workers=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in extract} == extract and redone.retokenized
    assert tables(out) == tables(tmp_path / "fresh5") and redone.drops == fresh5.drops
    # A threshold LSH cannot split into 2+ bands is refused before any work (was a traceback after extract).
    with pytest.raises(CurriculumError, match=r"--dedup-threshold 0.999 with 128 permutations: no LSH split"):
        build(BuildConfig(out=str(tmp_path / "t99"), dedup_threshold=0.999, **cfg), workers=1, progress=False)
    assert not (tmp_path / "t99" / ".work" / "extract").exists()


def test_a_cleared_tokenize_stage_is_cleared_again_after_a_kill(corpus, small_tokenizer, tmp_path, monkeypatch):
    # A re-tokenize cut short while deleting (here: the first shard deletion fails) leaves
    # build.json saying the tokenize stage belongs to no settings; a rerun with either tokenizer,
    # without --retokenize, clears again and equals a fresh build.
    import curriculum.build as B

    out = tmp_path / "out"
    run_build(corpus, out, small_tokenizer)
    other_cfg = BuildConfig(inputs=[str(corpus)], out=str(out), tokenizer=str(small_tokenizer), shard_bytes=1 << 20)
    real_unlink = Path.unlink

    def fail_on_shards(self, *a, **kw):
        if self.suffix == ".arrow":
            raise OSError("killed")
        return real_unlink(self, *a, **kw)

    monkeypatch.setattr(Path, "unlink", fail_on_shards)
    with pytest.raises(OSError, match="killed"):
        build(other_cfg, workers=1, progress=False, retokenize=True)
    monkeypatch.undo()
    assert json.loads((out / ".work" / "build.json").read_text())["tokenize"] is None
    rep = run_build(corpus, out, small_tokenizer)  # back to the first settings, no --retokenize
    run_build(corpus, tmp_path / "fresh", small_tokenizer)
    assert rep.retokenized and tables(out) == tables(tmp_path / "fresh") and verify_manifest(out)[1] == []


def test_two_builds_cannot_share_an_output(corpus, small_tokenizer, tmp_path):
    import fcntl

    from curriculum.errors import CurriculumError

    work = tmp_path / "out" / ".work"
    work.mkdir(parents=True)
    with open(work / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # as a running build holds it
        with pytest.raises(CurriculumError, match="another build is running"):
            run_build(corpus, tmp_path / "out", small_tokenizer)
    run_build(corpus, tmp_path / "out", small_tokenizer)  # free again


def test_verify_catches_edited_tables_and_stray_shards(corpus, small_tokenizer, tmp_path):
    # Each of these passed verify: "ok: N shards verified".
    import shutil

    run_build(corpus, tmp_path / "out", small_tokenizer)
    assert verify_manifest(tmp_path / "out")[1] == []
    cases = {}
    langs = pl.read_parquet(tmp_path / "out" / "languages.parquet")
    lang = langs.filter(pl.col("dropped_near_duplicate") > 0)["language"][0]
    cases["drops"] = ("languages.parquet", lambda t: t.with_columns(
        pl.when(pl.col("language") == lang).then(pl.col("dropped_near_duplicate") + 7)
        .otherwise(pl.col("dropped_near_duplicate")).alias("dropped_near_duplicate")),
        "dropped as near_duplicate, but languages.parquet's dropped_near_duplicate sums to")
    shards = pl.read_parquet(tmp_path / "out" / "shards.parquet")
    multi = shards.group_by("language").len().filter(pl.col("len") >= 2)["language"].sort()[0]
    first = shards.filter(pl.col("language") == multi).sort("index")["path"][0]
    cases["bytes"] = ("shards.parquet", lambda t: t.with_columns(
        pl.when(pl.col("path") == first).then(pl.col("bytes") + 10).otherwise(pl.col("bytes")).alias("bytes")),
        f"shard {first} ({multi}): ")
    cases["order"] = ("shards.parquet", lambda t: t.with_columns(
        pl.when(pl.col("language") == multi).then(pl.col("index").max().over("language") - pl.col("index"))
        .otherwise(pl.col("index")).alias("index")),
        f"language {multi}'s shard indices do not follow its file names")
    cases["gap"] = ("shards.parquet", lambda t: t.with_columns(
        pl.when(pl.col("language") == multi).then(pl.col("index") * 2).otherwise(pl.col("index")).alias("index")),
        f"language {multi} has shard indices [0, 2")
    for name, (table, edit, says) in cases.items():
        d = tmp_path / name
        shutil.copytree(tmp_path / "out", d)
        edited = edit(pl.read_parquet(d / table))
        edited.write_parquet(d / table)
        problems = verify_manifest(d)[1]
        assert any(says in p for p in problems), (name, problems)
    # A shard file no table lists (left by an earlier build into the same --out).
    stray = tmp_path / "out" / multi / "00007-0000.arrow"
    shutil.copy(tmp_path / "out" / first, stray)
    assert verify_manifest(tmp_path / "out")[1] == [
        f"shard file {multi}/00007-0000.arrow: not listed in shards.parquet (left by an earlier build?); delete it"]


def test_shards_end_at_the_document_that_reaches_the_bound(corpus, small_tokenizer, tmp_path):
    # The bound was checked after each 2,048-document batch: --shard-mb 1 gave 1.87 MB shards.
    bound = 20_000
    build(BuildConfig(inputs=[str(corpus)], out=str(tmp_path / "out"), tokenizer=str(small_tokenizer), shard_bytes=bound),
          workers=1, progress=False)
    m = read_manifest(tmp_path / "out")
    assert m.shards.height > 2 * m.languages.height
    for r in m.shards.iter_rows(named=True):
        view = open_shard(tmp_path / "out" / r["path"])
        last = 4 * int(view.offsets[-1] - view.offsets[-2]) + 8
        size = 4 * view.tokens.size + 8 * view.docs  # the rule: tokens plus 8 bytes per document
        assert size - last < bound, r  # under the bound until its last document


def test_documents_keep_their_source_and_line_when_one_encode_batch_spans_files(small_tokenizer, tmp_path):
    # A language spread over many files has a few documents per extract part; tokenizing batches
    # them across parts, and each document must still name its own file and line.
    import pyarrow as pa

    from curriculum.democorpus import demo_documents
    from curriculum.normalize import normalize_texts
    from curriculum.tokenize import load_tokenizer

    docs = demo_documents()
    fra, deu = [t for t in docs["fra_Latn"] if len(t) >= 40], [t for t in docs["deu_Latn"] if len(t) >= 40]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    want: dict[tuple[str, int], str] = {}
    for f in range(6):
        lines = []
        for k in range(3):  # fra and deu interleaved, three of each per file
            for lang, texts in (("fra", fra), ("deu", deu)):
                text = f"{texts[(3 * f + k) % len(texts)]} ({lang} {f}.{k})"
                lines.append(json.dumps({"text": text, "language": lang}))
                want[(str(corpus / f"web-{f}.jsonl"), len(lines))] = text  # rows of JSONL: 1-based lines
        (corpus / f"web-{f}.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    # No dedup: the few demo texts repeat across files, and every document should reach a shard.
    build(BuildConfig(inputs=[str(corpus)], out=str(out), tokenizer=str(small_tokenizer), dedup=False),
          workers=1, progress=False)
    tok = load_tokenizer(small_tokenizer)
    seen = set()
    for rel in read_manifest(out).shards["path"]:
        view = open_shard(out / rel)
        with pa.OSFile(str(out / rel)) as src:
            batch = pa.ipc.open_file(src).get_batch(0)
        for d, (source, row) in enumerate(zip(batch.column("source").to_pylist(), batch.column("row").to_pylist())):
            _, norm = normalize_texts([want[(source, row)]])
            flat, _ = tok.encode_arrow(norm)
            assert view.tokens[view.offsets[d] : view.offsets[d + 1]].tolist() == flat.tolist(), (rel, source, row)
            seen.add((source, row))
    assert seen == set(want)  # every document, once


def test_role_ids_that_text_produced_are_counted_in_the_manifest_and_shown(tmp_path):
    # Gemma 2's MASK is a user-defined piece: "<mask>" in a document comes out of SentencePiece as
    # the MASK id, and the build writes it as ordinary pieces. How often is data a user should see.
    from curriculum import assets
    from curriculum.democorpus import demo_documents

    gemma = assets.gemma2_tokenizer_path()
    docs = demo_documents()
    corpus = tmp_path / "corpus"
    for lang, extra in (("fra_Latn", ["Écrivez <mask> ici, puis <mask> là.", "<mask><mask> et <mask>"]), ("deu_Latn", [])):
        (corpus / lang / "train").mkdir(parents=True)
        texts = [t for t in docs[lang] if len(t) >= 40] + extra
        (corpus / lang / "train" / "000.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out"
    proc = run_cli("build", str(corpus), "--out", str(out), "--tokenizer", str(gemma), "--no-dedup")
    assert "role ids written as text: 5 " in proc.stdout and "fra_Latn 5" in proc.stdout, proc.stdout
    m = read_manifest(out)
    assert m.meta.model_extra["documents"]["role_ids_spelled_out"] == {"fra_Latn": 5}  # deu_Latn had none
    mask = m.meta.tokenizer.mask_id
    for rel in m.shards["path"]:
        assert mask not in open_shard(out / rel).tokens.tolist()
    assert "role ids written as text: 5 " in run_cli("inspect", str(out)).stdout


def test_dedup_counts_each_part_from_its_extract_stats_and_names_a_part_that_disagrees(corpus, small_tokenizer, tmp_path):
    # The dedup task sizes its arrays from the extract stats' counts (no pass over the files to
    # count them); a part that holds other rows than its stats say is named, not misread.
    import pyarrow as pa

    from curriculum.errors import CurriculumError

    out = tmp_path / "out"
    run_build(corpus, out, small_tokenizer)
    before = tables(out)
    work = out / ".work"
    part = sorted((work / "extract").glob("*/fra_Latn.arrow"))[0]
    for f in list((work / "dedup").glob("fra_Latn.*")) + list((work / "tokenize").glob("fra_Latn.*")):
        f.unlink()
    (out / "manifest.json").unlink()
    run_build(corpus, out, small_tokenizer)  # the fra_Latn dedup again, from the counts: the same tables
    assert tables(out) == before
    with pa.OSFile(str(part)) as src:
        table = pa.ipc.open_file(src).read_all()
    with pa.OSFile(str(part), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table.slice(1))  # one document fewer than its stats count
    for f in list((work / "dedup").glob("fra_Latn.*")):
        f.unlink()
    (out / "manifest.json").unlink()
    with pytest.raises(CurriculumError, match=rf"{re.escape(str(part))}: holds other documents than its extract stats count"):
        run_build(corpus, out, small_tokenizer)


def test_role_id_counts_are_left_out_when_none_or_unknown(tmp_path):
    # A manifest with no spelled-out ids is the bytes older code wrote (its fingerprint names the
    # run); a chunk tokenized by older code did not count them, so the count is unknown: left out.
    from curriculum import assets
    from curriculum.democorpus import demo_documents
    from curriculum.manifest import read_manifest

    gemma = assets.gemma2_tokenizer_path()
    corpus = tmp_path / "corpus"
    (corpus / "fra_Latn" / "train").mkdir(parents=True)
    texts = [t for t in demo_documents()["fra_Latn"] if len(t) >= 40]
    (corpus / "fra_Latn" / "train" / "000.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out"
    run_build(corpus, out, gemma, dedup=False)
    assert "role_ids_spelled_out" not in read_manifest(out).meta.model_extra["documents"]
    (corpus / "fra_Latn" / "train" / "001.jsonl").write_text(json.dumps({"text": "Écrivez <mask> ici, s'il vous plaît."}) + "\n")
    out2 = tmp_path / "out2"
    run_build(corpus, out2, gemma, dedup=False)
    assert read_manifest(out2).meta.model_extra["documents"]["role_ids_spelled_out"] == {"fra_Latn": 1}
    with_count = json.loads((out2 / "manifest.json").read_text())
    for done in (out2 / ".work" / "tokenize").glob("*.json"):  # as a work dir of older code left them
        stats = json.loads(done.read_text())
        del stats["role_ids_spelled_out"]
        done.write_text(json.dumps(stats, sort_keys=True))
    (out2 / "manifest.json").unlink()
    run_build(corpus, out2, gemma, dedup=False)
    del with_count["documents"]["role_ids_spelled_out"]
    assert json.loads((out2 / "manifest.json").read_text()) == with_count  # all else the same

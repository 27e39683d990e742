"""Property-based fuzzing of what reads a built manifest and of what decodes batches for trainers.

A small built manifest (two languages, five shards) is damaged in every way a disk, a copy or a
hand edit can damage it: manifest.json (truncated, not JSON, wrong types, missing and extra keys,
a tokenizer section with wrong ids), languages.parquet / shards.parquet (truncated, random bytes,
flipped bits, a column dropped, renamed, of another type, negative counts, nulls, duplicate rows,
shard paths with `..`, absolute or pointing outside the manifest) and the shard files (truncated,
flipped bits, replaced by another shard, empty, not Arrow, a directory, missing, a symlink out of
the directory). For each, the contract:
- `read_manifest` returns a Manifest or raises ManifestError naming the file;
- `verify_manifest` (and `curriculum verify`) names every damaged shard, or raises ManifestError;
- `open_shard` returns consistent views (offsets monotone, inside the token buffer) or ShardError;
- `open_sampler` refuses with StartupError naming the problem, or serves; while serving, a
  broken shard is a 503 naming it, and damage only a checksum can see is served and caught by
  `verify` (the server's `--verify` refuses it);
- no shard path leaves the manifest directory: the escape targets below are byte-identical
  copies of the real shards, so only a path check can refuse them, and no file there is opened.

Then encoded batches are damaged (truncated at every message boundary and at random offsets, bits
flipped in the metadata, schema and body, the schema's lc.wire / lc.labels changed, columns dropped
or retyped, positions out of range): `wire.decode` raises WireError or returns a batch whose shapes
are consistent (input_ids and labels [B, L], cu_seqlens rising from 0 to B*L through every row
start), never another exception, never a crash of the process.

Hypothesis runs derandomized, with bounded examples. Under "regressions" sits one focused test for
each bug this fuzzing found (the docstring says what it did before the fix).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from curriculum.errors import ManifestError
from curriculum.manifest import LANGUAGE_SCHEMA, SHARD_SCHEMA, Manifest, read_manifest
from curriculum.randomcorpus import write_random_corpus
from curriculum.recipe import parse_recipe
from curriculum.shards import ShardError, open_shard, write_shard
from curriculum.verify import verify_manifest
from sampler_server.service import ApiError, Service, StartupError, open_sampler
from sampler_server.settings import ServerSettings
from trainer_client import wire

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"aaa_Latn": 3000, "bbb_Cyrl": 1500}  # 3 + 2 shards of ~1,000 tokens
RECIPE = {"name": "fuzz", "phases": [{"name": "only", "tokens": 4 * 8 * 64, "batch_tokens": 8 * 64, "seq_len": 64,
                                      "languages": "all", "tau": 0.7, "mask_ratio": 0.3}]}
STEPS = 4
RECIPE_TOML = """name = "fuzz"

[[phases]]
name = "only"
tokens = 2048
batch_tokens = 512
seq_len = 64
languages = "all"
tau = 0.7
mask_ratio = 0.3
"""
FUZZ = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


# -- the corpus and its damaged copies -----------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    root: Path
    rels: list[str]  # shard paths, as shards.parquet lists them
    files: dict[str, bytes]  # every file of the manifest directory by relative path

    def __repr__(self) -> str:  # short, in hypothesis' reports
        return f"Corpus({self.root})"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    root = write_random_corpus(tmp_path_factory.mktemp("mfuzz") / "m", SIZES, seed=1, mean_doc_tokens=50,
                               shard_tokens=1000)
    rels = pl.read_parquet(root / "shards.parquet")["path"].to_list()
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert len(rels) == 5 and verify_manifest(root) == (5, [])
    return Corpus(root, rels, files)


@contextmanager
def copy_of(corpus: Corpus) -> Iterator[tuple[Path, Path]]:
    """(manifest dir, work dir): a fresh copy of the corpus, and beside it `outside/`, holding
    byte-identical copies of every shard (the targets of escaping paths) and the recipe."""
    with tempfile.TemporaryDirectory(prefix="mfuzz-") as d:
        work = Path(d)
        for rel, data in corpus.files.items():
            for base in ("m", "outside"):
                if base == "outside" and rel not in corpus.rels:
                    continue
                (work / base / rel).parent.mkdir(parents=True, exist_ok=True)
                (work / base / rel).write_bytes(data)
        (work / "recipe.toml").write_text(RECIPE_TOML)
        yield work / "m", work


_WATCHED: list[str] = []  # path prefixes whose opening is recorded (in _OPENED)
_OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _WATCHED and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))  # through symlinks
        if any(path.startswith(w) for w in _WATCHED):
            _OPENED.append(path)


sys.addaudithook(_audit)  # cheap while nothing is watched (one list test per audited event)


@contextmanager
def never_opened(directory: Path) -> Iterator[None]:
    """Fail if Python code opens any file under `directory` inside the block."""
    _OPENED.clear()
    _WATCHED.append(os.path.realpath(directory) + os.sep)
    try:
        yield
    finally:
        _WATCHED.clear()
    assert not _OPENED, f"opened outside the manifest directory: {_OPENED}"


def server_settings(root: Path, work: Path, verify: bool) -> ServerSettings:
    return ServerSettings(manifest=str(root), recipe=work / "recipe.toml", verify=verify, chunk=64, block_tokens=256,
                          warmup=False)


# -- what every reader must do ------------------------------------------------------------------


def read_or_error(root: Path, *names: str) -> Manifest | None:
    """read_manifest's answer: a Manifest, or None after a ManifestError that names the manifest
    (and one of `names` when given) — any other exception fails the test."""
    try:
        return read_manifest(root)
    except ManifestError as exc:
        msg = str(exc)
        assert str(root) in msg, msg
        if names:
            assert any(n in msg for n in names), msg
        return None


def assert_view_consistent(view) -> None:
    off, tok = view.offsets, view.tokens
    assert off.dtype == np.int64 and tok.dtype == np.uint32 and off.ndim == tok.ndim == 1
    assert off[0] == 0 and off[-1] == tok.size and np.all(np.diff(off) >= 0)


def open_or_error(path: Path) -> None:
    """open_shard: consistent views or ShardError naming the file."""
    try:
        view = open_shard(path)
    except ShardError as exc:
        assert str(path) in str(exc)
        return
    assert_view_consistent(view)


def assert_batch_consistent(w: wire.WireBatch) -> None:
    """What a trainer may rely on in any batch decode returns."""
    assert w.input_ids.ndim == 2 and w.input_ids.dtype == np.int32
    B, L = w.input_ids.shape
    assert B >= 1 and L >= 1
    assert w.labels.shape == (B, L) and w.labels.dtype == np.int32
    cu = w.cu_seqlens
    assert cu.dtype == np.int32 and cu.ndim == 1 and cu[0] == 0 and cu[-1] == B * L and np.all(np.diff(cu) > 0)
    assert set((np.arange(B) * L).tolist()) <= set(cu.tolist())  # every row start is a boundary
    assert w.lang.shape == (B,) and np.all((w.lang >= 0) & (w.lang < len(w.languages)))
    assert isinstance(w.metadata["step"], int) and isinstance(w.metadata["build_id"], str)


def serve_or_refuse(root: Path, work: Path, verify: bool) -> list[str]:
    """Start the server's sampler on the manifest and ask for every step: refused with a
    StartupError, or each step a consistent batch or a 503 naming a shard. Returns the shards
    the 503s named."""
    cfg = server_settings(root, work, verify)
    try:
        sampler = open_sampler(cfg)
    except StartupError as exc:
        assert str(exc)
        return []
    svc = Service(cfg, sampler, sampler.base_recipe)
    named = []
    for step in range(STEPS):
        try:
            enc = svc.encode(None, step, 0, 1, "sparse", None)
        except ApiError as exc:
            assert exc.status == 503 and exc.code == "shard_unavailable", (exc.status, exc.message)
            assert exc.extra["shard"] in exc.message
            named.append(exc.extra["shard"])
            continue
        assert_batch_consistent(wire.decode(enc.standalone()))
    return named


# -- manifest.json --------------------------------------------------------------------------------

TOP_KEYS = ["format_version", "kind", "created_by", "tokenizer", "lid_model", "build", "file_issues",
            "mean_doc_tokens", "documents"]
TOKENIZER_KEYS = ["name", "sha256", "vocab_size", "cls_id", "sep_id", "mask_id", "pad_id", "special_ids"]
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6), st.lists(st.integers(-5, 40_000), max_size=3),
    st.dictionaries(st.sampled_from(["input", "kept", "dropped", "x"]), st.integers(-3, 10**6), max_size=3),
)
DOCUMENTS = st.one_of(JSON_VALUES, st.fixed_dictionaries({
    "input": st.integers(-2, 9) | st.text(max_size=2), "kept": st.integers(-2, 9),
    "dropped": st.dictionaries(st.text(max_size=3), st.integers(-2, 9) | st.text(max_size=2), max_size=2) | JSON_VALUES,
}))
JSON_MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("garbage"), st.binary(max_size=40)),
    st.tuples(st.just("set"), st.sampled_from(TOP_KEYS), JSON_VALUES),
    st.tuples(st.just("delete"), st.sampled_from(TOP_KEYS)),
    st.tuples(st.just("extra"), st.text(min_size=1, max_size=8), JSON_VALUES),
    st.tuples(st.just("tokenizer"), st.sampled_from(TOKENIZER_KEYS), st.integers(-3, 70_000) | JSON_VALUES),
    st.tuples(st.just("tokenizer-delete"), st.sampled_from(TOKENIZER_KEYS)),
    st.tuples(st.just("documents"), DOCUMENTS),
)


def mutate_json(raw: bytes, mutation: tuple) -> bytes:
    kind, *args = mutation
    if kind == "truncate":
        return raw[: int(args[0] * len(raw))]
    if kind == "garbage":
        return args[0]
    meta = json.loads(raw)
    if kind in ("set", "extra", "documents"):
        key, value = ("documents", args[0]) if kind == "documents" else args
        meta[key] = value
    elif kind == "delete":
        meta.pop(args[0], None)
    elif kind == "tokenizer":
        meta["tokenizer"][args[0]] = args[1]
    elif kind == "tokenizer-delete":
        del meta["tokenizer"][args[0]]
    return json.dumps(meta).encode()


@fuzz(100)
@given(mutation=JSON_MUTATIONS)
@example(mutation=("tokenizer", "special_ids", [-1]))  # once marked the last id special (negative index)
@example(mutation=("tokenizer", "cls_id", 40_000))  # once accepted: an id outside the vocabulary
@example(mutation=("tokenizer", "vocab_size", 5))  # every id special: once a ValueError from the kernel
@example(mutation=("tokenizer", "vocab_size", 1000))  # shards hold larger ids: verify and --verify refuse
@example(mutation=("documents", [1, 2]))  # once a TypeError in verify and inspect
@example(mutation=("documents", {"input": 3, "kept": 3}))  # once a KeyError ('dropped')
@example(mutation=("truncate", 0.5))
def test_manifest_json_damage_is_refused_naming_the_file_or_served(corpus, mutation):
    raw = corpus.files["manifest.json"]
    data = mutate_json(raw, mutation)
    with copy_of(corpus) as (root, work):
        (root / "manifest.json").write_bytes(data)
        m = read_or_error(root, "manifest.json")
        try:
            valid_json = isinstance(json.loads(data), dict)
        except ValueError:
            valid_json = False
        if not valid_json:
            assert m is None
        if m is None:
            with pytest.raises(ManifestError, match="manifest.json"):
                verify_manifest(root)
            with pytest.raises(StartupError, match="manifest.json"):
                open_sampler(server_settings(root, work, verify=False))
            result = CliRunner().invoke(_cli_app(), ["inspect", str(root)])
            assert isinstance(result.exception, ManifestError)
            return
        tok = m.meta.tokenizer
        if tok is not None:  # what the sampler and the model rely on
            ids = [tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id, *tok.special_ids]
            assert 0 < tok.vocab_size <= 2**31 and all(0 <= i < tok.vocab_size for i in ids)
            assert len(set(ids)) < tok.vocab_size and tok.mask_id not in (tok.cls_id, tok.sep_id, tok.pad_id)
        n, problems = verify_manifest(root)  # the shards are intact: the vocabulary and counts may disagree
        assert n == 5 and all(re.match(r"shard \S+ \(\w+\): token id \d+ >= vocab size|manifest.json: (documents|input)", p)
                              for p in problems), problems
        result = CliRunner().invoke(_cli_app(), ["inspect", str(root)])
        assert result.exit_code == 0, (result.output, result.exception)
        named = serve_or_refuse(root, work, verify=True)
        assert named == []  # nothing is broken in the shards


def _cli_app():
    from curriculum.cli import app

    return app


# -- languages.parquet and shards.parquet ---------------------------------------------------------

TABLES = {"languages.parquet": LANGUAGE_SCHEMA, "shards.parquet": SHARD_SCHEMA}
COLUMNS = [(f, c) for f, schema in TABLES.items() for c in schema]
COUNTS = [(f, c) for f, schema in TABLES.items() for c, t in schema.items() if t.is_integer()]
FRACTION = st.floats(0, 1, exclude_max=True)
FLIPS = st.lists(st.tuples(FRACTION, st.integers(0, 7)), min_size=1, max_size=4)
# Shard paths that leave the manifest directory ({out}: the absolute path of outside/, which
# holds a byte-identical copy of every shard); all must be refused before anything is opened.
ESCAPES = ["../outside/{rel}", "{out}/{rel}", "{lang}/../../outside/{rel}", "./../outside/{rel}", "..", "/",
           "", ".", "/etc/passwd", "{lang}/\x00/x.arrow", "../m/{rel}"]
# Odd but inside: read, and verify or the server say what is wrong, if anything.
INSIDE = ["{lang}", "{lang}/./{name}", "{lang}//{name}", "{lang}/missing.arrow", "manifest.json"]
TABLE_MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.sampled_from(list(TABLES)), FRACTION),
    st.tuples(st.just("garbage"), st.sampled_from(list(TABLES)), st.binary(max_size=64)),
    st.tuples(st.just("flip"), st.sampled_from(list(TABLES)), FLIPS),
    st.tuples(st.just("drop"), st.sampled_from(COLUMNS)),
    st.tuples(st.just("rename"), st.sampled_from(COLUMNS), st.text("abcxyz_", min_size=1, max_size=6)),
    st.tuples(st.just("dtype"), st.sampled_from(COLUMNS), st.sampled_from(["str", "float", "bool", "list", "uint8"])),
    st.tuples(st.just("negative"), st.sampled_from(COUNTS), st.integers(0, 4), st.integers(-(2**40), -1)),
    st.tuples(st.just("null"), st.sampled_from(COLUMNS), st.integers(0, 4)),
    st.tuples(st.just("duplicate"), st.sampled_from(list(TABLES)), st.integers(0, 4)),
    st.tuples(st.just("escape"), st.integers(0, 4), st.sampled_from(ESCAPES)),
    st.tuples(st.just("inside"), st.integers(0, 4), st.sampled_from(INSIDE)),
)


def mutate_table(root: Path, work: Path, mutation: tuple) -> tuple[str, str | None]:
    """Apply a table mutation; returns (file, expect): expect None when the result may still be a
    valid manifest, else a text read_manifest's ManifestError must hold (besides the manifest's
    path)."""
    kind, *args = mutation
    if kind in ("truncate", "garbage", "flip"):
        name, arg = args
        data = (root / name).read_bytes()
        if kind == "truncate":
            data = data[: int(arg * len(data))]
        elif kind == "garbage":
            data = arg
        else:
            data = bytearray(data)
            for frac, bit in arg:
                data[int(frac * len(data))] ^= 1 << bit
            data = bytes(data)
        (root / name).write_bytes(data)
        return name, None if kind == "flip" else name
    if kind in ("escape", "inside"):
        name, (row, template) = "shards.parquet", args
    elif kind == "duplicate":
        name, row = args
    else:
        (name, col), *rest = args
    df = pl.read_parquet(root / name)
    expect: str | None = name
    if kind == "drop":
        df = df.drop(col)
        expect = f"{name}: missing column"
    elif kind == "rename":
        new = rest[0]
        df = df.rename({col: new}) if new not in df.columns else df.drop(col)
        expect = f"{name}: missing column"
    elif kind == "dtype":
        to = rest[0]
        s = df[col]
        if to == "str":
            s = s.cast(pl.String) + "x"
        elif to == "float":
            s = s.cast(pl.Float64, strict=False) + 0.5 if s.dtype.is_integer() else s.cast(pl.Float64, strict=False)
        elif to == "bool":
            s = s.cast(pl.String).str.len_bytes() > 3
        elif to == "list":
            s = s.cast(pl.String).map_elements(lambda v: [v], return_dtype=pl.List(pl.String))
        else:
            s = s.cast(pl.UInt8, strict=False)
        df = df.with_columns(s.alias(col))
        expect = None  # some casts read back (a column of 0/1 as bool, ...)
    elif kind == "negative":
        row, value = rest
        df = df.with_columns(pl.when(pl.int_range(pl.len()) == row % df.height).then(pl.lit(value)).otherwise(pl.col(col))
                             .alias(col))
    elif kind == "null":
        df = df.with_columns(pl.when(pl.int_range(pl.len()) == rest[0] % df.height).then(None).otherwise(pl.col(col))
                             .alias(col))
    elif kind == "duplicate":
        df = pl.concat([df, df.slice(row % df.height, 1)])
        # A language twice is named as such; a shard twice breaks its language's sums first.
        expect = f"{name}: language(s) listed twice" if name == "languages.parquet" else "but its shards sum to"
    else:
        rel = df["path"][row % df.height]
        lang, shard_name = rel.split("/")
        value = template.format(rel=rel, out=work / "outside", lang=lang, name=shard_name)
        df = df.with_columns(pl.when(pl.int_range(pl.len()) == row % df.height).then(pl.lit(value))
                             .otherwise(pl.col("path")).alias("path"))
        expect = "shards.parquet: shard path(s)" if kind == "escape" else None
    df.write_parquet(root / name)
    return name, expect


@fuzz(120)
@given(mutation=TABLE_MUTATIONS)
@example(mutation=("escape", 0, "../outside/{rel}"))  # once verified and served from outside the manifest
@example(mutation=("escape", 1, "{out}/{rel}"))  # ditto, an absolute path
@example(mutation=("null", ("shards.parquet", "path"), 0))  # once a TypeError in verify
@example(mutation=("null", ("shards.parquet", "sha256"), 2))  # ditto
@example(mutation=("null", ("languages.parquet", "tokens"), 0))  # once read as 0 tokens
@example(mutation=("negative", ("shards.parquet", "bytes"), 0, -5))  # once accepted
@example(mutation=("inside", 0, "{lang}"))  # a directory: once an IsADirectoryError in verify
def test_table_damage_is_refused_naming_the_file_or_handled(corpus, mutation):
    with copy_of(corpus) as (root, work):
        name, expect = mutate_table(root, work, mutation)
        with never_opened(work / "outside"):
            m = read_or_error(root, expect) if expect is not None else read_or_error(root)
            if expect is not None:
                assert m is None, f"accepted {mutation}"
            if m is None:
                with pytest.raises(ManifestError):
                    verify_manifest(root)
                with pytest.raises(StartupError):
                    open_sampler(server_settings(root, work, verify=False))
                return
            for rel in m.shards["path"].to_list():  # whatever was accepted stays inside
                assert m.shard_location(rel).resolve().is_relative_to(root.resolve())
            n, problems = verify_manifest(root)
            assert all(p.startswith("shard ") or p.startswith("manifest.json") for p in problems), problems
            named = serve_or_refuse(root, work, verify=True)
            assert named == []
            serve_or_refuse(root, work, verify=False)


# -- shard files ------------------------------------------------------------------------------------

SHARD_MUTATIONS = st.tuples(st.integers(0, 4), st.one_of(
    st.tuples(st.just("truncate"), FRACTION),
    st.tuples(st.just("flip"), FLIPS),
    st.tuples(st.just("other"), st.integers(1, 4)),
    st.tuples(st.just("empty")),
    st.tuples(st.just("garbage"), st.binary(min_size=1, max_size=200)),
    st.tuples(st.just("not-arrow")),
    st.tuples(st.just("symlink-out"), st.booleans()),
    st.tuples(st.just("directory")),
    st.tuples(st.just("missing")),
))


def mutate_shard(corpus: Corpus, root: Path, work: Path, i: int, mutation: tuple) -> str:
    rel = corpus.rels[i]
    path = root / rel
    kind, *args = mutation
    data = corpus.files[rel]
    if kind == "truncate":
        path.write_bytes(data[: int(args[0] * len(data))])
    elif kind == "flip":
        b = bytearray(data)
        for frac, bit in args[0]:
            b[int(frac * len(b))] ^= 1 << bit
        if b == data:  # two flips of one bit cancel out
            b[0] ^= 1
        path.write_bytes(bytes(b))
    elif kind == "other":
        path.write_bytes(corpus.files[corpus.rels[(i + args[0]) % len(corpus.rels)]])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(args[0])
    elif kind == "not-arrow":
        path.write_bytes(corpus.files["languages.parquet"])
    elif kind == "symlink-out":  # to its own byte-identical copy, or to another shard's, outside
        target = work / "outside" / (rel if args[0] else corpus.rels[(i + 1) % len(corpus.rels)])
        path.unlink()
        path.symlink_to(target)
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    else:
        path.unlink()
    return rel


@fuzz(100)
@given(mutation=SHARD_MUTATIONS)
@example(mutation=(0, ("symlink-out", True)))  # once verified and served from outside the manifest
@example(mutation=(1, ("directory",)))  # once an IsADirectoryError in verify
@example(mutation=(0, ("flip", [(592.5 / 5826, 7)])))  # non-monotone offsets: once accepted
@example(mutation=(0, ("flip", [(5586.5 / 5826, 7)])))  # once a KeyError from open_shard
@example(mutation=(0, ("flip", [(280.5 / 5826, 0)])))  # once an OSError from open_shard
@example(mutation=(0, ("flip", [(543.5 / 5826, 7)])))  # once a SystemError from open_shard
def test_shard_damage_is_named_by_verify_and_never_served_silently_broken(corpus, mutation):
    i, change = mutation
    with copy_of(corpus) as (root, work):
        rel = mutate_shard(corpus, root, work, i, change)
        with never_opened(work / "outside"):
            assert read_manifest(root).shards.height == 5  # the tables are intact
            n, problems = verify_manifest(root)
            assert n == 5 and any(rel in p for p in problems), problems
            assert all(p.startswith("shard ") for p in problems), problems
            if change[0] != "symlink-out":
                open_or_error(root / rel)
            # --verify refuses any damage; without it, damage the size shows is refused, the rest
            # is served or a 503 naming the shard.
            with pytest.raises(StartupError, match=re.escape(rel)):
                open_sampler(server_settings(root, work, verify=True))
            named = serve_or_refuse(root, work, verify=False)
            assert set(named) <= {rel}, named


# -- the wire format ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    data: bytes
    labels: str
    compression: str | None
    batch: wire.WireBatch  # as decoded from the intact bytes


@pytest.fixture(scope="module")
def encoded(corpus) -> list[Encoded]:
    from sampler_server.sampler import Sampler

    sampler = Sampler(corpus.root, parse_recipe(RECIPE), seed=3, chunk=64, block_tokens=256)
    out = []
    for step, (labels, compression) in enumerate([("sparse", None), ("dense", None), ("sparse", "zstd"), ("dense", "zstd")]):
        b = sampler.batch(step % STEPS, rank=step % 2, world_size=2)
        md = wire.batch_metadata(sampler.build_id, b.info, step % 2, 2, run_id=sampler.run_id, journal_version=0)
        data = bytes(wire.encode_batch(b, md, sampler.languages, labels=labels, compression=compression).standalone())
        w = wire.decode(data)
        assert_batch_consistent(w)
        assert w.input_ids.tobytes() == b.input_ids.tobytes() and w.labels.tobytes() == b.labels.tobytes()
        out.append(Encoded(data, labels, compression, w))
    return out


def message_boundaries(data: bytes) -> list[int]:
    """Offsets where the IPC framing changes: each message's start, its length prefix, the end
    of its metadata (start of its body), and its end."""
    out = {0, len(data)}
    reader = pa.BufferReader(data)
    while reader.tell() < len(data):
        start = reader.tell()
        try:
            msg = pa.ipc.read_message(reader)
        except EOFError:  # the end-of-stream marker
            out |= {start + 4}
            break
        body = msg.body.size if msg.body is not None else 0
        out |= {start, start + 4, start + 8, reader.tell() - body, reader.tell()}
    return sorted(out)


def regions(data: bytes) -> dict[str, tuple[int, int]]:
    """[start, end) of the schema message, the dictionary message, the record batch's metadata
    and its body."""
    reader = pa.BufferReader(data)
    out = {}
    for name in ("schema", "dictionary", "batch"):
        start = reader.tell()
        msg = pa.ipc.read_message(reader)
        body = msg.body.size if msg.body is not None else 0
        if name == "batch":
            out["batch-metadata"] = (start, reader.tell() - body)
            out["body"] = (reader.tell() - body, reader.tell())
        else:
            out[name] = (start, reader.tell())
    return out


def decode_or_error(data: bytes, original: wire.WireBatch | None = None) -> wire.WireBatch | None:
    """wire.decode's answer: None after a WireError; a consistent batch otherwise (equal to
    `original` when given: truncation may only ever drop the end-of-stream marker)."""
    try:
        w = wire.decode(data)
    except wire.WireError as exc:
        assert str(exc)
        return None
    assert_batch_consistent(w)
    if original is not None:
        for name in ("input_ids", "labels", "cu_seqlens", "lang"):
            assert getattr(w, name).tobytes() == getattr(original, name).tobytes(), name
        assert w.metadata == original.metadata
    return w


def test_truncation_at_every_message_boundary_is_refused(encoded):
    for e in encoded:
        cuts = {c + d for c in message_boundaries(e.data) for d in (-1, 0, 1)}
        for cut in sorted(c for c in cuts if 0 <= c < len(e.data)):
            w = decode_or_error(e.data[:cut], e.batch)
            # Bytes must end with the end-of-stream marker: every cut is refused.
            assert w is None, (e.labels, e.compression, cut)
            # A file-like source reads to its end and stops: no hang; only a cut inside the
            # trailing marker may still give the batch (a cut at a message boundary before the
            # batch reads as a stream of none).
            try:
                got = list(wire.decode_stream(io.BufferedReader(io.BytesIO(e.data[:cut]))))
            except wire.WireError:
                got = None
            assert got is None or got == [] or (len(got) == 1 and cut >= len(e.data) - len(wire.EOS))


WIRE_MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), FRACTION),
    st.tuples(st.just("flip"), FLIPS),
    st.tuples(st.just("flip-in"), st.sampled_from(["schema", "dictionary", "batch-metadata", "body"]), FLIPS),
)


@fuzz(300)
@given(which=st.integers(0, 3), mutation=WIRE_MUTATIONS)
def test_damaged_bytes_decode_to_wire_error_or_a_consistent_batch(encoded, which, mutation):
    e = encoded[which]
    kind, *args = mutation
    if kind == "truncate":
        cut = int(args[0] * len(e.data))
        w = decode_or_error(e.data[:cut], e.batch)
        assert w is None or cut >= len(e.data) - len(wire.EOS)
        return
    lo, hi = (0, len(e.data)) if kind == "flip" else regions(e.data)[args[0]]
    b = bytearray(e.data)
    for frac, bit in args[-1]:
        b[lo + int(frac * (hi - lo))] ^= 1 << bit
    decode_or_error(bytes(b))


def reencode(rb: pa.RecordBatch, md: dict[bytes, bytes] | None, schema_md: dict | None = None) -> bytes:
    """A one-batch IPC stream of `rb` as given (no validation), with custom metadata `md`."""
    schema = rb.schema.with_metadata(schema_md if schema_md is not None else rb.schema.metadata)
    rb = pa.RecordBatch.from_arrays(rb.columns, schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(rb, custom_metadata=md)
    return sink.getvalue().to_pybytes()


def read_one(data: bytes) -> tuple[pa.RecordBatch, dict[bytes, bytes]]:
    rb, md = pa.ipc.open_stream(data).read_next_batch_with_custom_metadata()
    return rb, dict(md)


def replace_column(rb: pa.RecordBatch, name: str, col: pa.Array, field: pa.Field | None = None) -> pa.RecordBatch:
    i = rb.schema.get_field_index(name)
    return pa.RecordBatch.from_arrays([col if j == i else c for j, c in enumerate(rb.columns)],
                                      schema=rb.schema.set(i, field or pa.field(name, col.type, nullable=False)))


def list_from(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    """A list<int32> array from raw buffers, *not* validated (as a corrupt response would hold)."""
    return pa.Array.from_buffers(pa.list_(pa.int32()), offsets.size - 1,
                                 [None, pa.py_buffer(np.asarray(offsets, np.int32).tobytes())],
                                 children=[pa.array(np.asarray(values, np.int32))])


def semantic_mutations(rb: pa.RecordBatch, md: dict) -> dict[str, bytes]:
    """Well-framed streams that are not valid batches; each must be a WireError."""
    B, L = rb.num_rows, rb.schema.field("input_ids").type.list_size
    sparse = rb.schema.metadata[b"lc.labels"] == b"sparse"
    smd = dict(rb.schema.metadata)
    out = {
        "labels-swapped": reencode(rb, md, {**smd, b"lc.labels": b"dense" if sparse else b"sparse"}),
        "labels-unknown": reencode(rb, md, {**smd, b"lc.labels": b"bits"}),
        "labels-missing": reencode(rb, md, {b"lc.wire": b"1"}),
        "wire-version": reencode(rb, md, {**smd, b"lc.wire": b"2"}),
        "no-schema-metadata": reencode(rb, md, {}),
        "no-batch-metadata": reencode(rb, None),
        "metadata-missing-key": reencode(rb, {k: v for k, v in md.items() if k != b"build_id"}),
        "metadata-not-a-number": reencode(rb, {**md, b"step": b"seven"}),
        "metadata-not-utf8": reencode(rb, {**md, b"phase": b"\xff\xfe"}),
        "no-rows": reencode(rb.slice(0, 0), md),
        "input-ids-int64": reencode(replace_column(rb, "input_ids", pa.FixedSizeListArray.from_arrays(
            pa.array(rb.column("input_ids").flatten().to_numpy().astype(np.int64)), L)), md),
        "input-ids-variable": reencode(replace_column(rb, "input_ids", pa.ListArray.from_arrays(
            pa.array(np.arange(B + 1, dtype=np.int32) * L), rb.column("input_ids").flatten())), md),
        "input-ids-null-row": reencode(replace_column(rb, "input_ids", pa.FixedSizeListArray.from_arrays(
            rb.column("input_ids").flatten(), L, mask=pa.array([True] + [False] * (B - 1)))), md),
        "lang-outside-dictionary": reencode(replace_column(rb, "lang", pa.DictionaryArray.from_arrays(
            rb.column("lang").indices, pa.array(["x_Latn"]), safe=False)), md),
        "lang-plain-strings": reencode(replace_column(rb, "lang", rb.column("lang").cast(pa.string())), md),
    }
    for name in rb.schema.names:
        out[f"drop-{name}"] = reencode(rb.drop_columns([name]), md)
        i = rb.schema.get_field_index(name)
        out[f"rename-{name}"] = reencode(pa.RecordBatch.from_arrays(
            rb.columns, schema=rb.schema.set(i, rb.schema.field(i).with_name(name + "_x"))), md)
    doc = rb.column("doc_starts")
    off, starts = doc.offsets.to_numpy(), doc.values.to_numpy()
    bad = starts.copy()
    bad[1 if bad.size > 1 else 0] = L  # a position past the row (or a row not starting at 0)
    out["doc-start-past-row"] = reencode(replace_column(rb, "doc_starts", list_from(off, bad)), md)
    first_not_zero = starts.copy()
    first_not_zero[0] = 1
    out["doc-row-not-starting-at-0"] = reencode(replace_column(rb, "doc_starts", list_from(off, first_not_zero)), md)
    empty_row = off.copy()
    empty_row[1] = 0  # row 0 has no start at all (its starts move to row 1)
    out["doc-row-without-start"] = reencode(replace_column(rb, "doc_starts", list_from(empty_row, starts)), md)
    wild = off.copy()
    wild[1] = 2**30  # offsets past the values: pyarrow aborted the process reading these
    out["doc-offsets-past-values"] = reencode(replace_column(rb, "doc_starts", list_from(wild, starts)), md)
    if sparse:
        mp, ml = rb.column("mask_pos"), rb.column("mask_label")
        poff, pos = mp.offsets.to_numpy(), mp.values.to_numpy()
        for what, value in (("past-row", L), ("negative", -1)):
            p = pos.copy()
            p[-1] = value
            out[f"mask-pos-{what}"] = reencode(replace_column(rb, "mask_pos", list_from(poff, p)), md)
        p = pos.copy()
        p[[0, 1]] = p[[1, 0]]
        out["mask-pos-descending"] = reencode(replace_column(rb, "mask_pos", list_from(poff, p)), md)
        shifted = poff.copy()
        shifted[1] += 1  # one label moved to the previous row: lengths disagree with mask_pos
        out["mask-label-rows-differ"] = reencode(replace_column(rb, "mask_label", list_from(shifted, ml.values.to_numpy())), md)
    return out


def test_well_framed_batches_that_break_the_format_are_wire_errors(encoded):
    for e in encoded:
        rb, md = read_one(e.data)
        for name, data in semantic_mutations(rb, md).items():
            try:
                wire.decode(data)
            except wire.WireError:
                continue
            pytest.fail(f"{e.labels} labels, compression {e.compression}: {name} decoded without a WireError")


# -- the CLI, as a user runs it ---------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curriculum.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_cli_verify_and_inspect_name_what_is_wrong(corpus):
    with copy_of(corpus) as (root, work):
        rel = mutate_shard(corpus, root, work, 2, ("flip", [(0.9, 3)]))
        other = mutate_shard(corpus, root, work, 4, ("directory",))
        out = run_cli("verify", str(root))
        assert out.returncode == 1, out.stderr
        fails = [ln for ln in out.stderr.splitlines() if ln.startswith("FAIL")]
        assert len(fails) == 2 and rel in fails[0] + fails[1] and other in fails[0] + fails[1], out.stderr
        assert "Traceback" not in out.stderr
    with copy_of(corpus) as (root, work):
        mutate_table(root, work, ("escape", 0, "../outside/{rel}"))
        for cmd in ("verify", "inspect"):
            out = run_cli(cmd, str(root))
            assert out.returncode == 2 and "shards.parquet" in out.stderr and "Traceback" not in out.stderr, out.stderr
    with copy_of(corpus) as (root, work):
        (root / "manifest.json").write_text('{"kind": "built", "tokenizer": ')
        for cmd in ("verify", "inspect"):
            out = run_cli(cmd, str(root))
            assert out.returncode == 2 and "manifest.json" in out.stderr and "Traceback" not in out.stderr, out.stderr


# -- regressions: one per bug found ------------------------------------------------------------------


def test_shard_path_escaping_to_an_identical_copy_is_never_opened(corpus):
    """`../outside/…` and absolute paths in shards.parquet were read: with a byte-identical copy
    there, verify passed and the server served a file outside the manifest directory."""
    for template in ("../outside/{rel}", "{out}/{rel}"):
        with copy_of(corpus) as (root, work):
            mutate_table(root, work, ("escape", 0, template))
            with never_opened(work / "outside"):
                with pytest.raises(ManifestError, match="shards.parquet: shard path.*not relative paths inside"):
                    read_manifest(root)
                with pytest.raises(StartupError, match="shards.parquet"):
                    open_sampler(server_settings(root, work, verify=True))


def test_a_symlink_out_of_the_manifest_is_refused(corpus):
    """A shard that is a symlink to an identical file elsewhere verified and was served."""
    with copy_of(corpus) as (root, work):
        rel = mutate_shard(corpus, root, work, 0, ("symlink-out", True))
        with never_opened(work / "outside"):
            _, problems = verify_manifest(root)
            assert len(problems) == 1 and f"shard {rel}: leads to" in problems[0] and "outside the manifest" in problems[0]
            with pytest.raises(StartupError, match=f"shard {rel}: leads to .*outside the manifest directory"):
                open_sampler(server_settings(root, work, verify=False))


def test_null_paths_checksums_and_counts_are_refused(corpus):
    """Nulls passed the reader: verify then died with TypeError (path / sha256 of None), and a
    null token count was read as 0."""
    for name, col in (("shards.parquet", "path"), ("shards.parquet", "sha256"), ("languages.parquet", "tokens")):
        with copy_of(corpus) as (root, work):
            mutate_table(root, work, ("null", (name, col), 0))
            with pytest.raises(ManifestError, match=f"{name}: null values in column\\(s\\) {col}"):
                verify_manifest(root)


def test_negative_shard_counts_and_duplicate_shards_are_refused(corpus):
    """Negative counts in shards.parquet were accepted; a shard listed twice (with the language
    counting it twice) would have been served twice an epoch."""
    with copy_of(corpus) as (root, work):
        mutate_table(root, work, ("negative", ("shards.parquet", "bytes"), 0, -5))
        with pytest.raises(ManifestError, match="shards.parquet: negative values in column\\(s\\) bytes"):
            read_manifest(root)
    with copy_of(corpus) as (root, work):
        shards = pl.read_parquet(root / "shards.parquet")
        first = shards.filter(pl.col("language") == "bbb_Cyrl").head(1).with_columns(pl.lit(7, pl.Int32).alias("index"))
        pl.concat([shards, first]).write_parquet(root / "shards.parquet")
        langs = pl.read_parquet(root / "languages.parquet")
        langs = langs.with_columns(
            pl.when(pl.col("language") == "bbb_Cyrl").then(pl.col(c) + first[c][0]).otherwise(pl.col(c)).alias(c)
            for c in ("docs", "tokens")
        ).with_columns(pl.when(pl.col("language") == "bbb_Cyrl").then(pl.col("shards") + 1).otherwise(pl.col("shards")))
        langs.write_parquet(root / "languages.parquet")
        with pytest.raises(ManifestError, match="shards.parquet: shard\\(s\\) listed twice: bbb_Cyrl/00000.arrow"):
            read_manifest(root)


def test_a_shard_path_that_is_a_directory_is_a_verify_problem(corpus):
    """verify died with IsADirectoryError when a shard path was a directory."""
    with copy_of(corpus) as (root, work):
        rel = mutate_shard(corpus, root, work, 1, ("directory",))
        _, problems = verify_manifest(root)
        assert problems == [f"shard {rel} (aaa_Latn): cannot read it (Is a directory); rerun `curriculum build` with the "
                            "same settings to rewrite it"]


def test_manifest_json_that_is_a_directory_is_a_manifest_error(corpus):
    """read_manifest raised IsADirectoryError."""
    with copy_of(corpus) as (root, _):
        (root / "manifest.json").unlink()
        (root / "manifest.json").mkdir()
        with pytest.raises(ManifestError, match="manifest.json: cannot read it"):
            read_manifest(root)


@pytest.mark.parametrize("documents, error", [
    ([1, 2], "documents: Input should be a valid dictionary"),
    ({"input": 3, "kept": "x"}, "documents.kept: Input should be a valid integer"),
    ({"input": 3, "kept": 3, "dropped": {"too_short": -1}}, "documents.dropped.too_short"),
])
def test_documents_of_the_wrong_shape_are_a_manifest_error(corpus, documents, error):
    """verify and inspect died with TypeError / KeyError on a `documents` entry of another shape."""
    with copy_of(corpus) as (root, _):
        (root / "manifest.json").write_bytes(mutate_json(corpus.files["manifest.json"], ("documents", documents)))
        with pytest.raises(ManifestError, match=re.escape(error)):
            verify_manifest(root)


@pytest.mark.parametrize("key, value, error", [
    ("special_ids", [3, -1], "special_ids.1': Input should be greater than or equal to 0"),
    ("cls_id", 32_000, "cls_id=32000 outside the vocabulary"),
    ("mask_id", 2, "mask_id 2 equals the CLS, SEP or PAD id"),
    ("vocab_size", 5, "all 5 ids are special"),
    ("vocab_size", 2**40, "vocab_size"),
])
def test_tokenizer_ids_outside_the_vocabulary_are_refused(corpus, key, value, error):
    """A negative special id marked the *last* id special (numpy's negative index) and ids past
    the vocabulary were accepted; a vocabulary of special ids only died in the kernel."""
    with copy_of(corpus) as (root, work):
        (root / "manifest.json").write_bytes(mutate_json(corpus.files["manifest.json"], ("tokenizer", key, value)))
        with pytest.raises(ManifestError, match=re.escape(error)):
            read_manifest(root)
        with pytest.raises(StartupError, match="manifest.json"):
            open_sampler(server_settings(root, work, verify=False))


def test_corrupt_parquet_that_crashed_polars_is_a_manifest_error(corpus):
    """polars' Parquet reader aborted the process (a failed allocation of 2**61 bytes) on
    languages.parquet with byte 58 flipped, and panicked (a BaseException) on others."""
    data = bytearray(corpus.files["languages.parquet"])
    data[58] ^= 1
    with copy_of(corpus) as (root, _):
        (root / "languages.parquet").write_bytes(bytes(data))
        read_or_error(root, "languages.parquet")  # before the fix: no exception, the process died
    with copy_of(corpus) as (root, _):  # strings that are not UTF-8: polars panicked on them later
        df = pl.read_parquet(root / "shards.parquet")
        raw = pa.Table.from_arrays([pa.array([b"\xff\xfe"] * df.height, pa.binary()).cast(pa.string(), safe=False)
                                    if c == "path" else df[c].to_arrow() for c in df.columns], names=df.columns)
        import pyarrow.parquet as pq

        pq.write_table(raw, root / "shards.parquet")
        with pytest.raises(ManifestError, match="shards.parquet: not a readable Parquet file"):
            read_manifest(root)


def test_open_shard_refuses_corrupt_offsets_and_foreign_layouts(tmp_path):
    """open_shard accepted non-monotone offsets (the kernels then read out of bounds) and raised
    KeyError, OSError, ValueError, SystemError or ArrowNotImplementedError on other damage."""
    values = pa.array(np.arange(6, dtype=np.uint32))
    offsets = np.array([0, 5, 2, 6], np.int64)
    tokens = pa.Array.from_buffers(pa.large_list(pa.uint32()), 3, [None, pa.py_buffer(offsets.tobytes())], children=[values])
    batch = pa.record_batch([tokens, pa.array(["a"] * 3), pa.array([0, 1, 2], pa.int64())], names=["tokens", "source", "row"])
    with pa.ipc.new_file(tmp_path / "offsets.arrow", batch.schema) as w:
        w.write_batch(batch)
    with pytest.raises(ShardError, match="offsets.arrow: not a readable Arrow IPC file .*non-monotonic offset"):
        open_shard(tmp_path / "offsets.arrow")
    with pa.ipc.new_file(tmp_path / "foreign.arrow", pa.schema([("x", pa.int64())])) as w:
        w.write_batch(pa.record_batch([pa.array([1])], names=["x"]))
    with pytest.raises(ShardError, match="foreign.arrow: unexpected layout"):
        open_shard(tmp_path / "foreign.arrow")


def test_decoding_corrupt_list_offsets_raises_instead_of_aborting(encoded, tmp_path):
    """wire.decode aborted the whole trainer process (pyarrow `Check failed` in flatten) on a
    response whose doc_starts offsets lie past the values; run in a child so a regression fails
    this test instead of killing the suite."""
    rb, md = read_one(encoded[0].data)
    (tmp_path / "bad.arrow").write_bytes(semantic_mutations(rb, md)["doc-offsets-past-values"])
    code = ("import sys; from pathlib import Path; from trainer_client import wire\n"
            "try:\n    wire.decode(Path(sys.argv[1]).read_bytes())\n"
            "except wire.WireError as exc:\n    print('WireError', exc)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bad.arrow")], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith("WireError corrupt record batch"), (out.returncode, out.stderr)


def test_decoding_checks_positions_columns_and_names(encoded):
    """Each of these decoded to silently wrong arrays or raised KeyError / IndexError /
    AttributeError / UnicodeDecodeError instead of WireError."""
    rb, md = read_one(encoded[0].data)  # sparse labels
    cases = semantic_mutations(rb, md)
    for name, error in (("mask-pos-past-row", "outside \\[0, 64\\)"), ("mask-pos-negative", "outside \\[0, 64\\)"),
                        ("mask-pos-descending", "do not ascend"), ("doc-row-not-starting-at-0", "start with position 0"),
                        ("doc-start-past-row", "doc_starts"), ("drop-lang", "are not a sparse-label batch"),
                        ("labels-swapped", "are not a dense-label batch"), ("input-ids-variable", "not a sparse"),
                        ("lang-outside-dictionary", "corrupt record batch|outside the 1 languages"),
                        ("mask-label-rows-differ", "differ in length per row|corrupt record batch")):
        with pytest.raises(wire.WireError, match=error):
            wire.decode(cases[name])
    bad_name = bytearray(encoded[0].data)
    at = bad_name.find(b"mask_pos")
    bad_name[at] = 0xF5  # a column name that is not UTF-8
    with pytest.raises(wire.WireError, match="not UTF-8"):
        wire.decode(bytes(bad_name))


def test_a_token_id_past_the_vocabulary_is_a_503_naming_the_shard(corpus):
    """Damage only a checksum sees (same size), but that puts token ids past the vocabulary: the
    server should answer 503 naming the shard, as for any shard that breaks while serving."""
    with copy_of(corpus) as (root, work):
        rels = [r for r in corpus.rels if r.startswith("aaa_Latn/")]
        for rel in rels:  # every shard of the language, so that step 0 reads one
            table = pa.ipc.open_file(pa.py_buffer(corpus.files[rel])).read_all()
            view = open_shard(corpus.root / rel)
            write_shard(root / rel, view.tokens + np.uint32(40_000), view.offsets, table["source"].to_pylist(),
                        table["row"].to_numpy())
            assert (root / rel).stat().st_size == len(corpus.files[rel])
        cfg = server_settings(root, work, verify=False)
        sampler = open_sampler(cfg)
        svc = Service(cfg, sampler, sampler.base_recipe)
        with pytest.raises(ApiError) as info:
            svc.encode(None, 0, 0, 1, "sparse", None)
        assert info.value.status == 503 and info.value.extra["shard"] in rels

"""Locations (local paths, file:// and s3:// URIs) against a real S3-compatible server on 127.0.0.1.

The server is moto's server mode (a real HTTP S3 endpoint, not a mock of the client): pyarrow's
S3 client talks to it over the wire exactly as it would to AWS or MinIO.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from conftest import write_text_corpus
from curriculum import storage
from curriculum.build import BuildConfig, build
from curriculum.errors import CurriculumError, ManifestError
from curriculum.manifest import read_manifest
from curriculum.randomcorpus import write_random_corpus
from curriculum.shards import sha256_file
from curriculum.verify import verify_manifest


def test_locations_resolve_and_join(tmp_path, s3):
    fs, path = storage.resolve(tmp_path / "m")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "m")
    assert not storage.is_remote(tmp_path) and not storage.is_remote(f"file://{tmp_path}")
    assert storage.local_path(f"file://{tmp_path}/m") == tmp_path / "m"
    assert storage.join(f"file://{tmp_path}", "fra_Latn/0.arrow") == tmp_path / "fra_Latn" / "0.arrow"

    uri = s3.uri("m")
    assert storage.is_remote(uri)
    fs, path = storage.resolve(uri)
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3.bucket}/m"
    shard = storage.join(uri, "fra_Latn/00000-0000.arrow")
    assert shard == f"s3://{s3.bucket}/m/fra_Latn/00000-0000.arrow?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
    assert storage.display(shard) == f"s3://{s3.bucket}/m/fra_Latn/00000-0000.arrow"
    assert storage.resolve(shard)[0] is fs  # one client per endpoint, reused
    with pytest.raises(storage.StorageError, match="Unexpected query parameter.*'access_key'.*AWS_ACCESS_KEY_ID"):
        storage.resolve(f"s3://{s3.bucket}/m?access_key=x")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_read_write_list_download_upload(where, tmp_path, s3):
    root = str(tmp_path / "store") if where == "local" else s3.uri(f"rw-{uuid.uuid4().hex[:6]}")
    assert storage.list_files(root) == {} and not storage.exists(storage.join(root, "a.bin"))
    storage.write_bytes(storage.join(root, "a.bin"), b"hello")
    storage.write_bytes(storage.join(root, "sub/b.bin"), b"x" * 1000)
    assert storage.read_bytes(storage.join(root, "a.bin")) == b"hello"
    assert storage.file_size(storage.join(root, "sub/b.bin")) == 1000
    assert storage.list_files(root) == {"a.bin": 5, "sub/b.bin": 1000}
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "nope"))
    digest = storage.download(storage.join(root, "sub/b.bin"), tmp_path / "got")
    assert digest == sha256_file(tmp_path / "got") == storage.sha256_of(storage.join(root, "sub/b.bin"))
    assert (tmp_path / "got").read_bytes() == b"x" * 1000
    # With the size the caller expects, an object replaced by a bigger one is not downloaded whole
    # (the shard cache filled its disk before the size check failed): limit + 1 bytes, then stop.
    storage.download(storage.join(root, "sub/b.bin"), tmp_path / "capped", chunk=64, limit=100)
    assert (tmp_path / "capped").stat().st_size == 101

    src = tmp_path / "tree"
    (src / "d").mkdir(parents=True)
    (src / "d" / "one").write_bytes(b"1")
    (src / "two").write_bytes(b"22")
    (src / "three").write_bytes(b"333")
    seen = []
    up = storage.upload_tree(src, storage.join(root, "t"), skip=lambda rel: rel == "three", done=seen.append, workers=2)
    assert sorted(up) == sorted(seen) == ["d/one", "two"]
    assert storage.list_files(storage.join(root, "t")) == {"d/one": 1, "two": 2}
    if where == "local":
        assert not list(Path(root).rglob("*.tmp"))  # temp + rename leaves nothing behind


def test_manifest_read_and_verified_through_s3(tmp_path, s3):
    local = write_random_corpus(tmp_path / "m", {"fra_Latn": 30_000, "deu_Latn": 12_000}, seed=2, shard_tokens=8_000)
    uri = s3.uri("random")
    storage.upload_tree(local, uri)
    a, b = read_manifest(local), read_manifest(uri)
    assert b.root == uri and b.is_remote and not a.is_remote and isinstance(a.root, Path)
    assert a.fingerprint == b.fingerprint
    assert a.shards.equals(b.shards) and a.languages.equals(b.languages)
    rel = b.shards["path"][1]
    assert b.shard_location(rel) == storage.join(uri, rel) and a.shard_location(rel) == local / rel
    assert verify_manifest(uri) == (a.shards.height, [])

    # Corrupt one object in place (same size) and delete another: verify names both.
    key = f"random/{rel}"
    data = bytearray(s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())
    data[-64] ^= 0xFF
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=bytes(data))
    gone = b.shards["path"][2]
    s3.client.delete_object(Bucket=s3.bucket, Key=f"random/{gone}")
    _, problems = verify_manifest(uri)
    assert len(problems) == 2
    assert rel in problems[0] and "checksum mismatch" in problems[0]
    assert gone in problems[1] and "missing" in problems[1]

    with pytest.raises(ManifestError, match=r"manifest.json: missing; is s3://.*/nothing-here a manifest"):
        read_manifest(s3.uri("nothing-here"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("corpus"), n_files=4, docs_per_file=40)


def test_build_publishes_and_skips_what_is_already_there(corpus, small_tokenizer, tmp_path, s3):
    uri = s3.uri("built")
    cfg = BuildConfig(inputs=[str(corpus)], out=uri, tokenizer=str(small_tokenizer), shard_bytes=16 << 10)
    rep = build(cfg, workers=1, progress=False, work_dir=tmp_path / "stage")
    m = read_manifest(uri)
    n = m.shards.height + 3  # shards + languages.parquet, shards.parquet, manifest.json
    assert rep.out == uri and rep.upload == {"uploaded": n, "skipped": 0, "bytes": rep.upload["bytes"], "deleted": 0}
    assert set(storage.list_files(uri)) == set(m.shards["path"].to_list()) | {"languages.parquet", "shards.parquet", "manifest.json"}
    staged = read_manifest(tmp_path / "stage")
    assert staged.fingerprint == m.fingerprint
    for name in ("languages.parquet", "shards.parquet", "manifest.json"):
        assert storage.read_bytes(storage.join(uri, name)) == (tmp_path / "stage" / name).read_bytes()
    # The staged build equals a build straight to a local directory.
    local = build(BuildConfig(**{**cfg.model_dump(), "out": str(tmp_path / "local")}), workers=1, progress=False)
    assert read_manifest(local.out).fingerprint == m.fingerprint

    again = build(cfg, workers=1, progress=False, work_dir=tmp_path / "stage")
    assert again.upload == {"uploaded": 0, "skipped": n, "bytes": 0, "deleted": 0}

    # Same size, different bytes, written after this staging directory's upload: its ledger no
    # longer vouches for the object (it did, and the rerun said "same sha256" over a corrupt shard);
    # then without a ledger (another staging directory has none): hashed either way, re-uploaded,
    # manifest.json rewritten after it.
    victim = m.shards["path"][0]
    key = f"built/{victim}"
    good = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    for drop_ledger in (False, True):
        body = bytearray(good)
        body[-50] ^= 0xFF
        time.sleep(1.1)  # S3's last-modified time has whole seconds
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=bytes(body))
        if drop_ledger:
            (tmp_path / "stage" / ".work" / "uploaded.jsonl").unlink()
        fixed = build(cfg, workers=1, progress=False, work_dir=tmp_path / "stage")
        assert fixed.upload["uploaded"] == 2 and fixed.upload["skipped"] == n - 2, (drop_ledger, fixed.upload)
        assert verify_manifest(uri)[1] == []
    ledger = [json.loads(x) for x in (tmp_path / "stage" / ".work" / "uploaded.jsonl").read_text().splitlines()]
    assert [r["path"] for r in ledger] == [victim, "manifest.json"] and all(r["mtime_ns"] for r in ledger)

    with pytest.raises(CurriculumError, match="--work-dir is for a remote --out"):
        build(BuildConfig(**{**cfg.model_dump(), "out": str(tmp_path / "x")}), progress=False, work_dir=tmp_path / "w")


def test_retokenized_build_removes_the_shards_it_replaced(small_tokenizer, tmp_path, s3):
    """--retokenize into a remote --out: the earlier build's shards that the new manifest does not
    list are deleted from the bucket once the new manifest is up; objects this staging directory
    never uploaded (even with shard-like names) stay."""
    uri = s3.uri("retok")
    corpus = write_text_corpus(tmp_path / "corpus", n_files=12, docs_per_file=20)  # two files per language
    cfg = BuildConfig(inputs=[str(corpus)], out=uri, tokenizer=str(small_tokenizer), chunk_bytes=1)
    build(cfg, workers=1, progress=False, work_dir=tmp_path / "stage")
    first = set(read_manifest(uri).shards["path"].to_list())
    lang = sorted(first)[0].split("/")[0]
    foreign = {f"{lang}/99999-0000.arrow": b"not ours", "notes/README.txt": b"kept"}
    for rel, body in foreign.items():
        s3.client.put_object(Bucket=s3.bucket, Key=f"retok/{rel}", Body=body)

    one_chunk = BuildConfig(**{**cfg.model_dump(), "chunk_bytes": 1 << 30})  # one chunk, one shard per language
    rep = build(one_chunk, workers=1, progress=False, work_dir=tmp_path / "stage", retokenize=True)
    now = set(read_manifest(uri).shards["path"].to_list())
    gone = first - now
    assert len(first) > len(now)
    assert rep.retokenized and rep.upload["deleted"] == len(gone)
    assert set(storage.list_files(uri)) == now | set(foreign) | {"languages.parquet", "shards.parquet", "manifest.json"}
    # The publish leaves what it did not upload; verify names the shard-like one as unlisted.
    assert verify_manifest(uri)[1] == [f"shard file {lang}/99999-0000.arrow: not listed in shards.parquet (left by an "
                                       "earlier build?); delete it"]
    ledger = [json.loads(x)["path"] for x in (tmp_path / "stage" / ".work" / "uploaded.jsonl").read_text().splitlines()]
    assert sorted(ledger) == sorted(now | {"languages.parquet", "shards.parquet", "manifest.json"})

    # Publishing again finds nothing to upload or delete.
    again = build(one_chunk, workers=1, progress=False, work_dir=tmp_path / "stage")
    assert again.upload["uploaded"] == 0 and again.upload["deleted"] == 0


def test_manifest_and_shards_roundtrip_bytes(tmp_path, s3):
    """Arrow IPC shards come back byte for byte (pyarrow writes, pyarrow reads)."""
    local = write_random_corpus(tmp_path / "m", {"spa_Latn": 5_000}, seed=4, shard_tokens=2_000)
    uri = s3.uri("bytes")
    storage.upload_tree(local, uri)
    for rel, size in storage.list_files(uri).items():
        assert storage.read_bytes(storage.join(uri, rel)) == (local / rel).read_bytes() and size == (local / rel).stat().st_size
    assert sorted(storage.list_files(uri)) == sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())


def test_a_remote_out_that_cannot_be_written_fails_before_any_work(corpus, small_tokenizer, tmp_path, s3):
    # A missing bucket (or bad credentials) failed only at the publish, after the whole build; a
    # double slash was pyarrow's "Empty path component" traceback, after the whole build too.
    bad = s3.uri("m").replace(f"s3://{s3.bucket}/", "s3://no-such-bucket-x/")
    cfg = BuildConfig(inputs=[str(corpus)], out=bad, tokenizer=str(small_tokenizer))
    with pytest.raises(CurriculumError, match=r"--out s3://no-such-bucket-x/m: cannot list and write there"):
        build(cfg, workers=1, progress=False, work_dir=tmp_path / "stage")
    assert not (tmp_path / "stage" / ".work" / "extract").exists()
    with pytest.raises(CurriculumError, match=r"an empty path component \(a double slash\)"):
        build(BuildConfig(inputs=[str(corpus)], out=s3.uri("/m"), tokenizer=str(small_tokenizer)), workers=1,
              progress=False, work_dir=tmp_path / "stage2")
    assert not [k for k in storage.list_files(s3.uri("")) if ".curriculum-write-probe" in k]  # no probe left behind


def test_gcs_locations_get_a_bounded_retry_limit():
    # Google Cloud Storage's client retries a failing call for 15 minutes: without credentials or
    # network a `gs://` build or server sat silent that long per call. A URI that sets no limit
    # gets GCS_RETRY_LIMIT_S; one that sets it keeps its own; other schemes are left alone. The
    # filesystem is built from the rewritten URI (pyarrow accepts the option; no network needed).
    from curriculum.storage import GCS_RETRY_LIMIT_S, _with_default_retry_limit

    assert _with_default_retry_limit("gs://b/p") == f"gs://b/p?retry_limit_seconds={GCS_RETRY_LIMIT_S}"
    assert _with_default_retry_limit("gs://b/p?scheme=http") == f"gs://b/p?scheme=http&retry_limit_seconds={GCS_RETRY_LIMIT_S}"
    assert _with_default_retry_limit("gs://b/p?retry_limit_seconds=5") == "gs://b/p?retry_limit_seconds=5"
    assert _with_default_retry_limit("s3://b/p?region=x") == "s3://b/p?region=x"
    fs, path = storage.resolve("gs://some-bucket/prefix")
    assert isinstance(fs, pafs.GcsFileSystem) and path == "some-bucket/prefix"

"""Object-store shards end to end against a real S3-compatible server on 127.0.0.1 (moto's server
mode: pyarrow's S3 client speaks HTTP to it as to AWS or MinIO), and the local shard cache."""

from __future__ import annotations

import gc
import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_text_corpus
from curriculum import storage
from curriculum.build import BuildConfig, build
from curriculum.manifest import read_manifest
from curriculum.recipe import parse_recipe
from curriculum.shards import ShardError, sha256_file
from sampler_server.cache import ShardCache
from sampler_server.sampler import Sampler

# Three phases in mmBERT's shape, scaled to a corpus of ~90k tokens in 8 languages.
RECIPE = {
    "name": "s3-scaled",
    "phases": [
        {"name": "pretrain", "tokens": 16 * 512, "batch_tokens": 512, "seq_len": 128,
         "languages": {"top": 3}, "tau": 0.7, "mask_ratio": 0.3},
        {"name": "midtrain", "tokens": 8 * 1024, "batch_tokens": 1024, "seq_len": 256,
         "languages": {"top": 6}, "tau": 0.5, "mask_ratio": 0.15},
        {"name": "decay", "tokens": 8 * 1024, "batch_tokens": 1024, "seq_len": 256,
         "languages": "all", "tau": 0.3, "mask_ratio": {"start": 0.1, "end": 0.05},
         "lr": {"decay": "inv_sqrt", "final_factor": 0.02}},
    ],
}


@pytest.fixture(scope="module")
def built(s3, small_tokenizer, tmp_path_factory):
    """The same corpus built twice: `curriculum build --out s3://…` and in-process to a local dir."""
    tmp = tmp_path_factory.mktemp("s3build")
    corpus = write_text_corpus(tmp / "corpus", n_files=6, docs_per_file=60)
    uri = s3.uri("m")
    run_cli("build", str(corpus), "--out", uri, "--tokenizer", str(small_tokenizer), "--work-dir", str(tmp / "stage"))
    local = tmp / "local"
    build(BuildConfig(inputs=[str(corpus)], out=str(local), tokenizer=str(small_tokenizer)), workers=1, progress=False)
    return uri, local


def test_cli_verify_and_inspect_on_the_uri(built, s3):
    uri, local = built
    proc = run_cli("verify", uri)
    m = read_manifest(uri)
    assert f"ok: {m.shards.height} shards verified in s3://{s3.bucket}/m" in proc.stdout
    assert m.fingerprint == read_manifest(local).fingerprint
    assert "ukr_Cyrl" in run_cli("inspect", uri).stdout
    assert set(storage.list_files(uri)) == set(m.shards["path"].to_list()) | {"manifest.json", "languages.parquet", "shards.parquet"}
    # A shard object no table lists (another build published into the prefix): found, as on disk.
    first = m.shards.row(0, named=True)
    stray = f"{first['language']}/00009-0000.arrow"
    s3.client.copy_object(Bucket=s3.bucket, Key=f"m/{stray}", CopySource={"Bucket": s3.bucket, "Key": f"m/{first['path']}"})
    try:
        proc = run_cli("verify", uri, check=False)
        assert proc.returncode == 1 and f"shard file {stray}: not listed in shards.parquet" in proc.stderr, proc.stderr
    finally:
        s3.client.delete_object(Bucket=s3.bucket, Key=f"m/{stray}")


def test_round_trip_batches_byte_identical_to_local_disk(built, tmp_path):
    uri, local = built
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    recipe = parse_recipe(RECIPE)
    ref = Sampler(local, recipe, seed=11, chunk=8, block_tokens=1024)
    got = Sampler(uri, recipe, seed=11, chunk=8, block_tokens=1024, cache_dir=cache_dir, cache_bytes=1 << 30)
    assert ref.shard_cache is None and got.shard_cache is not None and not any(cache_dir.iterdir())
    assert got.build_id == ref.build_id
    phases = set()
    for step in range(got.total_steps):
        a, b = ref.batch(step), got.batch(step)
        phases.add(b.info.phase)
        for f in ("input_ids", "labels", "cu_seqlens", "lang"):
            assert getattr(a, f).tobytes() == getattr(b, f).tobytes(), (step, f)
    assert phases == {"pretrain", "midtrain", "decay"}
    for step in (3, 20, got.total_steps - 1):
        for r in range(2):
            assert ref.batch(step, r, 2).input_ids.tobytes() == got.batch(step, r, 2).input_ids.tobytes()
    # Every shard came through the cache once, verified, under its sha256.
    m = got.manifest
    assert got.shard_cache.stats["downloads"] == m.shards.height
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(f"{h}.arrow" for h in m.shards["sha256"])
    assert all(sha256_file(p) == p.name[:64] for p in cache_dir.iterdir())
    # A restarted server reuses the verified files: no download.
    again = Sampler(uri, recipe, seed=11, chunk=8, block_tokens=1024, cache_dir=cache_dir, cache_bytes=1 << 30)
    assert again.batch(got.total_steps - 1).input_ids.tobytes() == ref.batch(got.total_steps - 1).input_ids.tobytes()
    assert again.shard_cache.stats["downloads"] == 0 and again.shard_cache.stats["hits"] > 0


def _shards(uri: str) -> list[tuple[str, str, int]]:
    """(location, sha256, bytes) of every shard, largest first."""
    m = read_manifest(uri)
    rows = m.shards.sort("bytes", descending=True).iter_rows(named=True)
    return [(m.shard_location(r["path"]), r["sha256"], r["bytes"]) for r in rows]


def test_lru_eviction_by_bytes(built, tmp_path):
    uri, _ = built
    (a, b, c) = _shards(uri)[:3]  # the three largest
    cache = ShardCache(tmp_path / "c", max_bytes=a[2] + b[2] + c[2] - 1)  # room for any two, not three

    def held() -> set[str]:
        return {p.name[:64] for p in (tmp_path / "c").iterdir()}

    for s in (a, b, c):
        cache.open(*s)  # the view is dropped at once: nothing is in use
    assert held() == {b[1], c[1]} and cache.stats["evictions"] == 1  # a: least recently opened
    cache.open(*b)  # a hit, and b becomes the most recent
    assert cache.stats["hits"] == 1 and cache.stats["downloads"] == 3
    cache.open(*a)  # downloaded again; c is now the least recently opened
    assert held() == {b[1], a[1]} and cache.stats["downloads"] == 4 and cache.stats["evictions"] == 2
    assert cache.total_bytes == a[2] + b[2] <= cache.max_bytes

    # Bytes, not counts: a budget of the largest shard alone keeps only it.
    small = ShardCache(tmp_path / "s", max_bytes=a[2])
    small.open(*b)
    small.open(*a)
    assert [p.name[:64] for p in (tmp_path / "s").iterdir()] == [a[1]]

    # A new cache over the same directory adopts the files in their order of use.
    again = ShardCache(tmp_path / "c", max_bytes=cache.max_bytes)
    view = again.open(*b)
    assert again.stats["downloads"] == 0 and again.stats["hits"] == 1 and view.docs > 0


def test_shards_in_use_are_not_evicted_and_evicted_views_stay_valid(built, tmp_path):
    uri, _ = built
    a, b, c = _shards(uri)[:3]
    cache = ShardCache(tmp_path / "c", max_bytes=1)  # any second shard is over budget
    va = cache.open(*a)
    cache.open(*b)
    vc = cache.open(*c)
    names = {p.name[:64] for p in (tmp_path / "c").iterdir()}
    assert names == {a[1], c[1]}  # b was free, a and c are held by live views
    tokens, expect = vc.tokens, vc.tokens.copy()
    del va, vc
    gc.collect()
    cache.open(*b)  # now a and c are free: both evicted
    assert {p.name[:64] for p in (tmp_path / "c").iterdir()} == {b[1]}
    # The evicted shard's memory map outlives its name (POSIX unlink semantics).
    assert np.array_equal(tokens, expect)


def test_checksum_mismatch_names_the_shard_and_both_digests(built, s3, tmp_path):
    uri, _ = built
    m = read_manifest(uri)
    r = m.shards.row(0, named=True)
    body = bytearray(s3.client.get_object(Bucket=s3.bucket, Key=f"m/{r['path']}")["Body"].read())
    body[len(body) // 2] ^= 0x01
    bad_uri = s3.uri("corrupt")
    s3.client.put_object(Bucket=s3.bucket, Key=f"corrupt/{r['path']}", Body=bytes(body))
    location = storage.join(bad_uri, r["path"])
    wrong = hashlib.sha256(bytes(body)).hexdigest()
    cache = ShardCache(tmp_path / "c", max_bytes=1 << 30)
    errors: list[Exception] = []

    def go() -> None:
        try:
            cache.open(location, r["sha256"], r["bytes"])
        except ShardError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4
    msg = str(errors[0])
    assert f"shard s3://{s3.bucket}/corrupt/{r['path']}" in msg and "checksum mismatch" in msg
    assert r["sha256"] in msg and wrong in msg
    assert list((tmp_path / "c").iterdir()) == []  # nothing kept, no temp file left
    assert cache.stats["downloads"] == 0

    with pytest.raises(ShardError, match="missing in the object store"):
        cache.open(storage.join(bad_uri, "nope/00000-0000.arrow"), r["sha256"], r["bytes"])


def test_concurrent_opens_of_one_shard_share_one_download(built, tmp_path, monkeypatch):
    uri, _ = built
    loc, sha, size = _shards(uri)[0]
    real = storage.download
    calls = []

    def slow_download(location, dest, *args, **kwargs):
        calls.append(location)
        # Hold the download until every other thread waits on it (bounded: a broken coalescing
        # shows as a count below n - 1 below, not as a hang).
        deadline = time.monotonic() + 30
        while cache.stats["coalesced"] < n - 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        return real(location, dest, *args, **kwargs)

    monkeypatch.setattr(storage, "download", slow_download)
    cache = ShardCache(tmp_path / "c", max_bytes=1 << 30)
    n = 8
    barrier = threading.Barrier(n)
    views = [None] * n

    def go(i: int) -> None:
        barrier.wait()
        views[i] = cache.open(loc, sha, size)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.stats["downloads"] == 1 and cache.stats["coalesced"] == n - 1
    assert cache.stats["coalesced"] + cache.stats["hits"] == n - 1 and cache.stats["coalesced"] >= 1
    assert all(v is not None and v.tokens.tobytes() == views[0].tokens.tobytes() for v in views)
    assert [p.name for p in Path(tmp_path / "c").iterdir()] == [f"{sha}.arrow"]


def test_local_locations_pass_through_without_a_copy(built, tmp_path):
    _, local = built
    m = read_manifest(local)
    r = m.shards.row(0, named=True)
    cache = ShardCache(tmp_path / "c", max_bytes=1)
    view = cache.open(m.shard_location(r["path"]), r["sha256"], r["bytes"])
    assert view.docs == r["docs"] and list((tmp_path / "c").iterdir()) == [] and cache.stats["downloads"] == 0


def test_http_server_serves_the_uri_with_an_empty_cache(built, tmp_path):
    """`sampler-server serve --manifest s3://...`: start-up checks and batches through the cache."""
    import tomllib

    from fastapi.testclient import TestClient

    from sampler_server.app import create_app
    from sampler_server.settings import ServerSettings
    from trainer_client import wire

    uri, local = built
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text(_toml(RECIPE))
    assert tomllib.loads(recipe_path.read_text())["name"] == RECIPE["name"]
    settings = ServerSettings(manifest=uri, recipe=recipe_path, seed=11, chunk=8, block_tokens=1024,
                              cache_dir=tmp_path / "cache", cache_bytes=1 << 30)
    ref = Sampler(local, parse_recipe(RECIPE), seed=11, chunk=8, block_tokens=1024)
    with TestClient(create_app(settings)) as c:
        for step in (0, ref.total_steps - 1):
            r = c.get(f"/v1/batches/{step}", params={"rank": 1, "world_size": 2})
            assert r.status_code == 200, r.text
            b = wire.decode(r.content)
            want = ref.batch(step, 1, 2)
            assert b.input_ids.tobytes() == want.input_ids.tobytes() and b.labels.tobytes() == want.labels.tobytes()
        assert c.get("/readyz").status_code == 200
        assert c.get("/v1/recipe").json()["build_id"] == ref.build_id


def _toml(d: dict) -> str:
    """A tiny TOML writer for the recipe dicts of these tests (scalars, inline tables, arrays of tables)."""
    def val(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)
    lines = [f'name = "{d["name"]}"']
    for p in d["phases"]:
        lines.append("[[phases]]")
        lines += [f"{k} = {val(v)}" for k, v in p.items()]
    return "\n".join(lines) + "\n"


def test_a_cache_dir_that_cannot_be_a_directory_is_named_as_the_shard_cache(tmp_path):
    # Was "[Errno 20] Not a directory: ...": nothing said it is the shard cache, or how to move it.
    from curriculum.shards import ShardError
    from sampler_server.cache import ShardCache

    (tmp_path / "file").write_text("x")
    with pytest.raises(ShardError, match=r"shard cache .*file/x: cannot use it as a directory \(Not a directory\); "
                                         r"set SAMPLER_CACHE_DIR"):
        ShardCache(tmp_path / "file" / "x")


def test_a_cached_file_damaged_on_disk_is_downloaded_again(built, tmp_path):
    # A flipped byte in a cache file served wrong bytes to every later process, silently; a
    # truncated one failed every start with "rebuild it" (the good object was never fetched again).
    uri, _ = built
    a = _shards(uri)[0]
    cache = ShardCache(tmp_path / "c")
    good = cache.open(*a).tokens.copy()
    path = cache.path_of(a[1])
    for damage in ("flip", "truncate"):
        raw = bytearray(path.read_bytes())
        if damage == "flip":
            raw[len(raw) // 2] ^= 0xFF
        else:
            raw = raw[: len(raw) // 2]
        path.write_bytes(bytes(raw))
        again = ShardCache(tmp_path / "c")  # a new process adopts the file from disk
        view = again.open(*a)
        assert np.array_equal(view.tokens, good) and again.stats["downloads"] == 1 and again.stats["repaired"] == 1
        assert sha256_file(path) == a[1]
        del view
    fresh = ShardCache(tmp_path / "c")  # an intact file is hashed once and reused, not downloaded
    assert np.array_equal(fresh.open(*a).tokens, good) and fresh.stats["downloads"] == 0


def test_readyz_stays_false_for_a_corrupt_remote_shard_until_it_verifies_again(built, s3, tmp_path, monkeypatch):
    # /readyz went back to ready as soon as the object *existed* (the corrupt one did), so it
    # flapped; its S3 calls also ran on the event loop and stalled every request.
    from fastapi.testclient import TestClient

    import sampler_server.service as service
    from sampler_server.app import create_app
    from sampler_server.settings import ServerSettings

    uri, _ = built
    m = read_manifest(uri)
    for r in m.shards.iter_rows(named=True):  # a copy of the manifest under another prefix
        for key in (f"m/{r['path']}",):
            s3.client.copy_object(Bucket=s3.bucket, Key=f"mc/{r['path']}", CopySource={"Bucket": s3.bucket, "Key": key})
    for name in ("manifest.json", "languages.parquet", "shards.parquet"):
        s3.client.copy_object(Bucket=s3.bucket, Key=f"mc/{name}", CopySource={"Bucket": s3.bucket, "Key": f"m/{name}"})
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text(_toml(RECIPE))
    settings = ServerSettings(manifest=s3.uri("mc"), recipe=recipe_path, seed=11, chunk=8, block_tokens=1024,
                              cache_dir=tmp_path / "cache", warmup=False, journal=str(tmp_path / "j.jsonl"))
    with TestClient(create_app(settings)) as c:
        total = c.get("/v1/recipe").json()["total_steps"]
        # Corrupt (same size) the shard the first batch needs, before anything is cached.
        good = {}
        for r in m.shards.iter_rows(named=True):
            body = s3.client.get_object(Bucket=s3.bucket, Key=f"mc/{r['path']}")["Body"].read()
            good[r["path"]] = body
            s3.client.put_object(Bucket=s3.bucket, Key=f"mc/{r['path']}", Body=body[:-9] + bytes(9))
        r = c.get("/v1/batches/0")
        assert r.status_code == 503 and "checksum mismatch" in r.json()["message"], r.text
        monkeypatch.setattr(service, "RECHECK_SECONDS", 0.0)
        for _ in range(2):  # downloaded and verified again each time: still corrupt, still not ready
            assert c.get("/readyz").status_code == 503
        for path, body in good.items():
            s3.client.put_object(Bucket=s3.bucket, Key=f"mc/{path}", Body=body)
        assert c.get("/readyz").status_code == 200
        assert c.get("/v1/batches/0").status_code == 200 and total > 0

"""Manifest reader: round trip and errors that name the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curriculum.errors import ManifestError
from curriculum.manifest import ManifestMeta, read_manifest, write_manifest


def tables(n_shards: int = 2):
    langs = pl.DataFrame(
        {"language": ["fra_Latn", "eng_Latn"], "source": ["web", "web"], "docs": [3, 2], "tokens": [30, 20],
         "bytes": [90, 60], "shards": [n_shards, 1], "dropped_near_duplicate": [1, 0]}
    )
    shards = pl.DataFrame(
        {"path": ["fra_Latn/00000.arrow", "fra_Latn/00001.arrow", "eng_Latn/00000.arrow"],
         "language": ["fra_Latn", "fra_Latn", "eng_Latn"], "index": [0, 1, 0], "docs": [2, 1, 2],
         "tokens": [20, 10, 20], "bytes": [1, 1, 1], "sha256": ["a", "b", "c"]}
    )
    return langs, shards


def test_round_trip_and_byte_identical_rewrite(tmp_path):
    langs, shards = tables()
    write_manifest(tmp_path / "m", ManifestMeta(kind="built"), langs, shards)
    m = read_manifest(tmp_path / "m")
    assert m.languages["language"].to_list() == ["eng_Latn", "fra_Latn"]  # sorted on write
    assert m.available_tokens() == {"eng_Latn": 20, "fra_Latn": 30}
    assert "dropped_near_duplicate" in m.languages.columns
    write_manifest(tmp_path / "m2", ManifestMeta(kind="built"), langs.reverse(), shards.reverse())
    for f in ("languages.parquet", "shards.parquet", "manifest.json"):
        assert (tmp_path / "m" / f).read_bytes() == (tmp_path / "m2" / f).read_bytes(), f
    assert read_manifest(tmp_path / "m2").fingerprint == m.fingerprint


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(ManifestError, match="not a directory"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(ManifestError, match="manifest.json: missing"):
        read_manifest(tmp_path / "d")
    langs, shards = tables()
    write_manifest(tmp_path / "m", ManifestMeta(kind="built"), langs, shards)
    (tmp_path / "m" / "shards.parquet").unlink()
    with pytest.raises(ManifestError, match="shards.parquet: missing"):
        read_manifest(tmp_path / "m")


def test_bad_json_fields_and_version(tmp_path):
    langs, shards = tables()
    root = write_manifest(tmp_path / "m", ManifestMeta(kind="built"), langs, shards)
    meta = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**meta, "kind": "weird"}))
    with pytest.raises(ManifestError, match="manifest.json: field 'kind'"):
        read_manifest(root)
    (root / "manifest.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ManifestError, match="format_version 99"):
        read_manifest(root)


def test_corrupt_parquet_and_missing_column(tmp_path):
    langs, shards = tables()
    root = write_manifest(tmp_path / "m", ManifestMeta(kind="built"), langs, shards)
    (root / "languages.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError, match="languages.parquet: not a readable Parquet"):
        read_manifest(root)
    langs.drop("tokens").write_parquet(root / "languages.parquet")
    with pytest.raises(ManifestError, match="languages.parquet: missing column\\(s\\) tokens"):
        read_manifest(root)
    langs.with_columns(pl.lit("x").alias("tokens")).write_parquet(root / "languages.parquet")
    with pytest.raises(ManifestError, match="wrong type"):
        read_manifest(root)


def test_inconsistent_tables(tmp_path):
    langs, shards = tables(n_shards=3)
    root = write_manifest(tmp_path / "m", ManifestMeta(kind="built"), langs, shards)
    with pytest.raises(ManifestError, match="fra_Latn lists .* 3 shards but its shards sum to .* 2"):
        read_manifest(root)
    langs, shards = tables()
    pl.concat([langs, langs.head(1)]).write_parquet(root / "languages.parquet")
    with pytest.raises(ManifestError, match="listed twice: fra_Latn"):
        read_manifest(root)
    langs.write_parquet(root / "languages.parquet")
    shards.with_columns(pl.lit("deu_Latn").alias("language")).write_parquet(root / "shards.parquet")
    with pytest.raises(ManifestError, match="unlisted language\\(s\\) deu_Latn"):
        read_manifest(root)

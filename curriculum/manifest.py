"""The manifest format: `manifest.json` + `languages.parquet` + `shards.parquet`, one reader.

A manifest describes a built (or synthetic) corpus:
- `manifest.json`: format version, kind (`built` or `synthetic`), build settings, tokenizer
  (hash, vocab size, special ids), LID model hash, file-level issues and totals.
- `languages.parquet`: one row per language key: source, docs, tokens, bytes, shards, and
  `dropped_<reason>` counts.
- `shards.parquet`: one row per shard file: path (relative to the manifest), language, index,
  docs, tokens, bytes, sha256.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError, model_validator

from curriculum.errors import ManifestError
from curriculum.fileperm import atomic_write

FORMAT_VERSION = 1
MANIFEST_JSON = "manifest.json"
LANGUAGES_PARQUET = "languages.parquet"
SHARDS_PARQUET = "shards.parquet"
DROP_PREFIX = "dropped_"

LANGUAGE_SCHEMA: dict[str, pl.DataType] = {
    "language": pl.String(),
    "source": pl.String(),
    "docs": pl.Int64(),
    "tokens": pl.Int64(),
    "bytes": pl.Int64(),
    "shards": pl.Int32(),
}
SHARD_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String(),
    "language": pl.String(),
    "index": pl.Int32(),
    "docs": pl.Int64(),
    "tokens": pl.Int64(),
    "bytes": pl.Int64(),
    "sha256": pl.String(),
}


class TokenizerMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    sha256: str
    vocab_size: int = Field(gt=0, le=2**31)  # ids travel as int32 on the wire
    cls_id: int = Field(ge=0)
    sep_id: int = Field(ge=0)
    mask_id: int = Field(ge=0)
    pad_id: int = Field(ge=0)
    special_ids: list[NonNegativeInt] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ids_in_vocabulary(self) -> TokenizerMeta:
        # The same rules as curriculum.tokenize.load_tokenizer: an id outside the vocabulary
        # would reach the model's embedding, a MASK equal to another role hides masked positions.
        ids = {"cls_id": self.cls_id, "sep_id": self.sep_id, "mask_id": self.mask_id, "pad_id": self.pad_id}
        ids.update({f"special_ids[{i}]": v for i, v in enumerate(self.special_ids)})
        out = [f"{k}={v}" for k, v in ids.items() if v >= self.vocab_size]
        if out:
            raise ValueError(f"{', '.join(out[:5])} outside the vocabulary [0, {self.vocab_size})")
        if self.mask_id in (self.cls_id, self.sep_id, self.pad_id):
            raise ValueError(f"mask_id {self.mask_id} equals the CLS, SEP or PAD id")
        if len({*ids.values()}) >= self.vocab_size:
            raise ValueError(f"all {self.vocab_size} ids are special: no ordinary token is left to mask with")
        return self


class DocumentCounts(BaseModel):
    """`documents` of a built manifest.json: input = kept + sum(dropped)."""

    model_config = ConfigDict(extra="allow")

    input: NonNegativeInt
    kept: NonNegativeInt
    dropped: dict[str, NonNegativeInt]


class ManifestMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    kind: Literal["built", "synthetic"]
    created_by: str = "curriculum"
    tokenizer: TokenizerMeta | None = None
    lid_model: dict | None = None
    build: dict = Field(default_factory=dict)
    file_issues: list[dict] = Field(default_factory=list)
    mean_doc_tokens: float | None = None

    @model_validator(mode="after")
    def _documents_shape(self) -> ManifestMeta:
        # Kept as an extra field (so the fingerprint of existing manifests does not move), but
        # checked: `verify` and `inspect` read its counts.
        docs = (self.model_extra or {}).get("documents")
        if docs is not None:
            try:
                DocumentCounts.model_validate(docs)
            except ValidationError as exc:
                e = exc.errors()[0]
                raise ValueError(f"{'.'.join(['documents', *(str(x) for x in e['loc'])])}: {e['msg'].removeprefix('Value error, ')}") from None
        return self


@dataclass(frozen=True)
class Manifest:
    """A validated manifest; `root` is where it was read from: a `Path` for a local directory, the
    URI string for any other `pyarrow.fs` location (`s3://bucket/prefix?…`)."""

    root: Path | str
    meta: ManifestMeta
    languages: pl.DataFrame
    shards: pl.DataFrame = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """Content hash of the tables and metadata (part of a batch's build id)."""
        import hashlib

        h = hashlib.sha256()
        h.update(self.meta.model_dump_json(exclude={"build"}).encode())
        for df in (self.languages, self.shards):
            h.update(df.hash_rows(seed=0).to_numpy().tobytes())
        return h.hexdigest()[:16]

    def available_tokens(self) -> dict[str, int]:
        return dict(zip(self.languages["language"].to_list(), self.languages["tokens"].to_list()))

    @property
    def is_remote(self) -> bool:
        """True when the shards are read through pyarrow.fs (not from a local directory)."""
        return isinstance(self.root, str)

    def shard_location(self, rel: str) -> Path | str:
        """Where shard `rel` (a `path` of shards.parquet) lives: a `Path` under a local root, a
        URI string (query kept) under a remote one. ManifestError when a local shard resolves
        (through a symlink) outside the manifest directory: it is never opened."""
        from curriculum.storage import join

        loc = join(self.root, rel)
        if isinstance(loc, Path) and not loc.resolve().is_relative_to(Path(self.root).resolve()):
            raise ManifestError(f"shard {rel}: leads to {loc.resolve()}, outside the manifest directory {self.root}; "
                                "copy the shard into the manifest (or rebuild that language)")
        return loc


def drop_columns(df: pl.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(DROP_PREFIX)]


def _check_columns(df: pl.DataFrame, schema: dict[str, pl.DataType], where: Path | str) -> pl.DataFrame:
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ManifestError(f"{where}: missing column(s) {', '.join(missing)}; rebuild the manifest")
    try:
        df = df.with_columns([pl.col(c).cast(t, strict=True) for c, t in schema.items()])
    except pl.exceptions.PolarsError as exc:
        raise ManifestError(f"{where}: a column has the wrong type ({exc}); rebuild the manifest") from None
    nulls = [c for c in schema if df[c].null_count()]
    if nulls:
        raise ManifestError(f"{where}: null values in column(s) {', '.join(nulls)}; rebuild the manifest")
    counts = [c for c, t in schema.items() if t.is_integer()]
    negative = [c for c in counts if df.height and df[c].min() < 0]
    if negative:
        raise ManifestError(f"{where}: negative values in column(s) {', '.join(negative)}; rebuild the manifest")
    return df


def _unsafe_shard_path(rel: str) -> bool:
    """True unless `rel` is a relative path that stays inside the manifest (no `..`, not absolute)."""
    p = PurePosixPath(rel)
    return not rel or "\x00" in rel or p.is_absolute() or ".." in p.parts or p.parts in ((), (".",))


def read_manifest(root: str | Path) -> Manifest:
    """Read and validate a manifest directory (local) or prefix (any pyarrow.fs URI); errors name
    the file and what is wrong."""
    from curriculum import storage

    if storage.is_remote(root):
        return _read_remote(str(root))
    root = storage.local_path(root)
    if not root.is_dir():
        raise ManifestError(f"manifest {root}: not a directory; run `curriculum build` or `curriculum synth` first")
    return _validate(root, lambda name: (root / name).read_bytes(), lambda name: _parquet((root / name).read_bytes()),
                     lambda name: root / name)


def _read_remote(root: str) -> Manifest:
    from curriculum import storage

    def where(name: str) -> str:
        return storage.display(storage.join(root, name))

    try:
        return _validate(root, lambda name: storage.read_bytes(storage.join(root, name)),
                         lambda name: _parquet(storage.read_bytes(storage.join(root, name))), where)
    except storage.StorageError as exc:
        raise ManifestError(str(exc)) from None


def _parquet(data: bytes) -> pl.DataFrame:
    """A Parquet table read by pyarrow: on corrupt bytes it raises, where polars' own reader can
    abort the whole process (a failed allocation for a corrupt length)."""
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(data))
    table.validate(full=True)  # e.g. strings that are not UTF-8, which polars would panic on later
    return pl.from_arrow(table)


def _validate(root: Path | str, read_bytes, read_table, where) -> Manifest:
    """The checks shared by local and remote manifests; `where(name)` names a file in messages."""
    from curriculum.storage import display

    mpath = where(MANIFEST_JSON)
    try:
        meta = ManifestMeta.model_validate_json(read_bytes(MANIFEST_JSON))
    except FileNotFoundError:
        raise ManifestError(f"{mpath}: missing; is {display(root)} a manifest directory?") from None
    except OSError as exc:  # a directory, no permission, ...
        raise ManifestError(f"{mpath}: cannot read it ({exc.strerror or exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        what = (f"field {loc!r}: " if loc else "") + first["msg"].removeprefix("Value error, ")
        raise ManifestError(f"{mpath}: {what}; rebuild the manifest (`curriculum build`)") from None
    if meta.format_version != FORMAT_VERSION:
        raise ManifestError(
            f"{mpath}: format_version {meta.format_version} is not supported (expected {FORMAT_VERSION})"
        )
    tables = {}
    for name, schema in ((LANGUAGES_PARQUET, LANGUAGE_SCHEMA), (SHARDS_PARQUET, SHARD_SCHEMA)):
        p = where(name)
        try:
            df = read_table(name)
        except FileNotFoundError:
            raise ManifestError(f"{p}: missing; the manifest is incomplete") from None
        except (pa.ArrowException, OSError, ValueError, pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
            # (polars panics, a BaseException, on a column name that is not UTF-8)
            first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise ManifestError(f"{p}: not a readable Parquet file ({first_line})") from None
        tables[name] = _check_columns(df, schema, p)
        if name == LANGUAGES_PARQUET:  # drop counts are counts too (inspect and the report sum them)
            _check_columns(df.select(drop_columns(df)), {c: pl.Int64() for c in drop_columns(df)}, p)
    langs, shards = tables[LANGUAGES_PARQUET], tables[SHARDS_PARQUET]

    dup = langs.filter(pl.col("language").is_duplicated())["language"].unique().sort().to_list()
    if dup:
        raise ManifestError(f"{where(LANGUAGES_PARQUET)}: language(s) listed twice: {', '.join(dup)}")
    if meta.kind == "built":
        _check_shards_agree(display(root), langs, shards, where(SHARDS_PARQUET))
    unsafe = [r for r in shards["path"].to_list() if _unsafe_shard_path(r)]
    if unsafe:
        raise ManifestError(f"{where(SHARDS_PARQUET)}: shard path(s) {', '.join(repr(r) for r in unsafe[:5])} are not "
                            "relative paths inside the manifest directory; rebuild the manifest")
    dup = shards.filter(pl.col("path").is_duplicated())["path"].unique().sort().to_list()
    if dup:
        raise ManifestError(f"{where(SHARDS_PARQUET)}: shard(s) listed twice: {', '.join(dup[:5])}; "
                            "rebuild the manifest")
    dup = shards.filter(pl.struct("language", "index").is_duplicated())
    if dup.height:
        r = dup.row(0, named=True)
        raise ManifestError(f"{where(SHARDS_PARQUET)}: language {r['language']} has two shards with index {r['index']}; "
                            "rebuild the manifest")
    return Manifest(root=root, meta=meta, languages=langs, shards=shards)


def _check_shards_agree(root: Path | str, langs: pl.DataFrame, shards: pl.DataFrame, shards_file: Path | str) -> None:
    unknown = sorted(set(shards["language"].to_list()) - set(langs["language"].to_list()))
    if unknown:
        raise ManifestError(f"{shards_file}: shards of unlisted language(s) {', '.join(unknown[:10])}")
    per = shards.group_by("language").agg(
        pl.col("tokens").sum().alias("s_tokens"), pl.col("docs").sum().alias("s_docs"), pl.len().alias("s_n")
    )
    joined = langs.join(per, on="language", how="left").fill_null(0)
    off = joined.filter(
        (pl.col("tokens") != pl.col("s_tokens")) | (pl.col("docs") != pl.col("s_docs")) | (pl.col("shards") != pl.col("s_n"))
    )
    if off.height:
        row = off.row(0, named=True)
        raise ManifestError(
            f"{root}: language {row['language']} lists {row['tokens']} tokens / {row['docs']} docs / "
            f"{row['shards']} shards but its shards sum to {row['s_tokens']} / {row['s_docs']} / {row['s_n']}; "
            f"rerun `curriculum build` with the same settings to write the tables again"
        )


def write_manifest(root: str | Path, meta: ManifestMeta, languages: pl.DataFrame, shards: pl.DataFrame) -> Path:
    """Write the three files atomically (tables first, manifest.json last)."""
    root = Path(root)
    langs = _check_columns(languages, LANGUAGE_SCHEMA, root / LANGUAGES_PARQUET).sort("language")
    shards = _check_columns(shards, SHARD_SCHEMA, root / SHARDS_PARQUET).sort(["language", "index"])
    # Parquet written by polars is byte-identical for identical tables (no timestamps).
    atomic_write(root / LANGUAGES_PARQUET, lambda p: langs.write_parquet(p, statistics=False))
    atomic_write(root / SHARDS_PARQUET, lambda p: shards.write_parquet(p, statistics=False))
    body = json.dumps(meta.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    atomic_write(root / MANIFEST_JSON, lambda p: Path(p).write_text(body))
    return root


def empty_shards() -> pl.DataFrame:
    return pl.DataFrame(schema=SHARD_SCHEMA)

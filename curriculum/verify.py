"""`curriculum verify`: re-check every shard's checksum and counts against the manifest.

Works on a local manifest directory and on any pyarrow.fs location (`s3://…`): a remote shard is
streamed to a temporary file (hashed on the way), opened there to check its counts, and deleted.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from curriculum import storage
from curriculum.errors import CurriculumError, ManifestError
from curriculum.manifest import DROP_PREFIX, Manifest, read_manifest
from curriculum.shards import ShardError, open_shard, sha256_file


SHARD_FILE = re.compile(r"^\d{5,}-\d{4,}\.arrow$")  # the build's `CCCCC-SSSS.arrow`: chunk, shard


def verify_manifest(root: str | Path) -> tuple[int, list[str]]:
    """(shards checked, problems); each problem names the shard and what is wrong."""
    m = read_manifest(root)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="curriculum-verify-") as scratch:
        for r in m.shards.iter_rows(named=True):
            where = f"shard {r['path']} ({r['language']})"
            try:
                fetched = _fetch(m, r["path"], Path(scratch) / "shard.arrow")
            except ManifestError as exc:  # a symlink out of the manifest directory: never read
                problems.append(str(exc))
                continue
            except (OSError, storage.StorageError) as exc:  # a directory, no permission, ...
                problems.append(f"{where}: cannot read it ({getattr(exc, 'strerror', None) or exc}); "
                                "rerun `curriculum build` with the same settings to rewrite it")
                continue
            if fetched is None:
                problems.append(f"{where}: missing; rerun `curriculum build` with the same settings to rewrite it")
                continue
            path, digest = fetched
            size = path.stat().st_size
            if size != r["bytes"]:
                problems.append(f"{where}: {size} bytes, the manifest says {r['bytes']}; delete the file and rerun "
                                "`curriculum build` with the same settings to rewrite it (or the table was edited)")
                continue
            if digest != r["sha256"]:
                problems.append(f"{where}: checksum mismatch (manifest {r['sha256'][:12]}…, file {digest[:12]}…); delete the file "
                                "and rerun `curriculum build` with the same settings to rewrite it")
                continue
            try:
                view = open_shard(path)
            except ShardError as exc:
                problems.append(str(exc))
                continue
            if view.docs != r["docs"] or view.tokens.size != r["tokens"]:
                problems.append(
                    f"{where}: holds {view.docs} docs / {view.tokens.size} tokens, the manifest says {r['docs']} / {r['tokens']}"
                )
            tok = m.meta.tokenizer
            if tok is not None and view.tokens.size and int(view.tokens.max()) >= tok.vocab_size:
                problems.append(f"{where}: token id {int(view.tokens.max())} >= vocab size {tok.vocab_size}")
    docs = m.meta.model_extra.get("documents") if m.meta.model_extra else None
    if docs:
        kept = int(m.languages["docs"].sum())
        if docs["kept"] != kept:
            problems.append(f"manifest.json: documents.kept={docs['kept']} but languages.parquet sums to {kept}")
        if docs["input"] != docs["kept"] + sum(docs["dropped"].values()):
            problems.append(
                f"manifest.json: input documents {docs['input']} != kept {docs['kept']} + dropped {sum(docs['dropped'].values())}"
            )
        problems += _drop_problems(m, docs)
    problems += _order_problems(m)
    problems += _unlisted_shards(m)
    return m.shards.height, problems


def _drop_problems(m: Manifest, docs: dict) -> list[str]:
    """Each reason's total in manifest.json = its per-language column sum + its unattributed count
    (documents of no known language: a malformed line, say)."""
    unattributed = docs.get("unattributed_drops") or {}
    cols = {c.removeprefix(DROP_PREFIX): int(m.languages[c].sum()) for c in m.languages.columns if c.startswith(DROP_PREFIX)}
    out = []
    for reason in sorted(set(docs["dropped"]) | set(cols) | set(unattributed)):
        total, per, loose = docs["dropped"].get(reason, 0), cols.get(reason, 0), unattributed.get(reason, 0)
        if total != per + loose:
            out.append(f"manifest.json: {total} documents dropped as {reason}, but languages.parquet's "
                       f"{DROP_PREFIX}{reason} sums to {per} (+{loose} of no language); the tables were edited")
    return out


def _order_problems(m: Manifest) -> list[str]:
    """A language's shards are indexed 0..n-1, in the order of their file names (chunk, then shard:
    the order the build wrote them, which is the order the sampler reads them in)."""
    out = []
    for (lang,), g in m.shards.group_by("language", maintain_order=True):
        g = g.sort("index")
        idx, paths = g["index"].to_list(), g["path"].to_list()
        if idx != list(range(len(idx))):
            out.append(f"shards.parquet: language {lang} has shard indices {idx[:8]}{'…' if len(idx) > 8 else ''}, "
                       "not 0..n-1; the table was edited")
        elif all(SHARD_FILE.match(Path(x).name) for x in paths) and paths != sorted(paths):
            out.append(f"shards.parquet: language {lang}'s shard indices do not follow its file names "
                       f"({', '.join(paths[:3])}…); the table was edited, which changes the order the sampler reads")
    return out


def _unlisted_shards(m: Manifest) -> list[str]:
    """Shard files in a language folder that shards.parquet does not list (left by an earlier
    build, or another build published, into the same directory or prefix); one listing."""
    listed = set(m.shards["path"].to_list())
    langs = set(m.languages["language"].to_list())
    try:
        files = storage.list_files(m.root)
    except (OSError, storage.StorageError) as exc:
        return [f"{storage.display(m.root)}: cannot list it to look for unlisted shard files ({exc})"]
    return [f"shard file {rel}: not listed in shards.parquet (left by an earlier build?); delete it"
            for rel in sorted(files)
            if rel.endswith(".arrow") and rel.count("/") == 1 and rel.split("/")[0] in langs and rel not in listed]


def _fetch(m: Manifest, rel: str, scratch: Path) -> tuple[Path, str] | None:
    """(local path to open, sha256) of a shard, or None if it is missing. Local shards are read in
    place; remote ones are downloaded to `scratch` (overwritten shard after shard)."""
    if not m.is_remote:
        path = m.shard_location(rel)
        return (path, sha256_file(path)) if path.exists() else None
    # A new file each time (never truncate the previous one in place: it may still be mapped).
    scratch.unlink(missing_ok=True)
    try:
        return scratch, storage.download(m.shard_location(rel), scratch)
    except FileNotFoundError:
        return None


def require_valid(root: str | Path) -> int:
    n, problems = verify_manifest(root)
    if problems:
        raise CurriculumError(f"{len(problems)} problem(s) in {storage.display(root)}:\n  " + "\n  ".join(problems))
    return n

"""`curriculum verify`: re-check every shard's checksum and counts against the manifest.

Works on a local manifest directory and on any pyarrow.fs location (`s3://…`): a remote shard is
streamed to a temporary file (hashed on the way), opened there to check its counts, and deleted.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from curriculum import storage
from curriculum.errors import CurriculumError, ManifestError
from curriculum.manifest import Manifest, read_manifest
from curriculum.shards import ShardError, open_shard, sha256_file


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
    return m.shards.height, problems


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

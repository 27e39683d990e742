"""`curriculum verify`: re-check every shard's checksum and counts against the manifest."""

from __future__ import annotations

from pathlib import Path

from curriculum.errors import CurriculumError
from curriculum.manifest import read_manifest
from curriculum.shards import ShardError, open_shard, sha256_file


def verify_manifest(root: str | Path) -> tuple[int, list[str]]:
    """(shards checked, problems); each problem names the shard and what is wrong."""
    m = read_manifest(root)
    problems: list[str] = []
    for r in m.shards.iter_rows(named=True):
        path = m.root / r["path"]
        where = f"shard {r['path']} ({r['language']})"
        if not path.exists():
            problems.append(f"{where}: missing; rerun `curriculum build` with the same settings to rewrite it")
            continue
        digest = sha256_file(path)
        if digest != r["sha256"]:
            problems.append(f"{where}: checksum mismatch (manifest {r['sha256'][:12]}…, file {digest[:12]}…); rebuild that language")
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


def require_valid(root: str | Path) -> int:
    n, problems = verify_manifest(root)
    if problems:
        raise CurriculumError(f"{len(problems)} problem(s) in {root}:\n  " + "\n  ".join(problems))
    return n

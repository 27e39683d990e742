"""Random-token corpora in the real shard + manifest format, for tests and benchmarks at scale
(e.g. 1,833 languages) where tokenizing real text would only cost time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from curriculum.manifest import ManifestMeta, TokenizerMeta, write_manifest
from curriculum.shards import write_shard

# A BERT-like special-id layout: PAD 0, UNK 1, CLS 2, SEP 3, MASK 4; ordinary tokens from 5.
RANDOM_TOKENIZER = TokenizerMeta(
    name="random", sha256="random", vocab_size=32_000, cls_id=2, sep_id=3, mask_id=4, pad_id=0, special_ids=[0, 1, 2, 3, 4]
)


def write_random_corpus(
    out: str | Path,
    tokens_per_language: dict[str, int],
    *,
    seed: int = 0,
    mean_doc_tokens: int = 200,
    shard_tokens: int = 1 << 20,
    tokenizer: TokenizerMeta = RANDOM_TOKENIZER,
) -> Path:
    """Write shards of random documents (lengths ~ geometric around `mean_doc_tokens`) per language
    and a `built` manifest over them. Each language gets at least one document."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    first = max(tokenizer.special_ids + [tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, tokenizer.pad_id]) + 1
    lang_rows, shard_rows = [], []
    for lang in sorted(tokens_per_language):
        want = max(1, int(tokens_per_language[lang]))
        lens = []
        total = 0
        while total < want:
            n = int(min(want - total, max(1, rng.geometric(1.0 / mean_doc_tokens))))
            lens.append(n)
            total += n
        lens = np.array(lens, np.int64)
        cuts = np.searchsorted(np.cumsum(lens), np.arange(shard_tokens, total, shard_tokens), side="left") + 1
        bounds = np.unique(np.concatenate(([0], cuts[cuts < lens.size], [lens.size])))
        for s in range(bounds.size - 1):
            part = lens[bounds[s] : bounds[s + 1]]
            toks = rng.integers(first, tokenizer.vocab_size, int(part.sum()), dtype=np.uint32)
            offsets = np.concatenate(([0], np.cumsum(part)))
            rel = f"{lang}/{s:05d}.arrow"
            info = write_shard(out / rel, toks, offsets, [f"random:{lang}"] * part.size, np.arange(bounds[s], bounds[s + 1]))
            shard_rows.append({"path": rel, "language": lang, "index": s, "docs": info.docs, "tokens": info.tokens, "bytes": info.bytes, "sha256": info.sha256})
        lang_rows.append({"language": lang, "source": "random", "docs": int(lens.size), "tokens": int(total), "bytes": int(total * 4), "shards": int(bounds.size - 1)})
    meta = ManifestMeta(kind="built", tokenizer=tokenizer, build={"random": {"seed": seed, "mean_doc_tokens": mean_doc_tokens}})
    return write_manifest(out, meta, pl.DataFrame(lang_rows), pl.DataFrame(shard_rows))

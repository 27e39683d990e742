"""Synthetic manifests for planning and scale tests at full size, without a corpus.

`synth_long_tail` gives L languages a realistic long tail: the rank-size curve of FineWeb-2's
1,913 train subsets (real available data, from `data/fineweb2_language_distribution.csv`),
interpolated in log space to L ranks and rescaled to the requested total. Language names are
mmBERT's 1,833 languages and code (1,834 keys) ordered by how much the published run sampled of them (pretrain,
then mid-training, then decay), so the largest synthetic languages are the ones mmBERT treated as
high-resource. Beyond 1,834 languages, synthetic keys `s0001_Latn`... fill the rest.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from curriculum.csvfile import read_user_csv
from curriculum.errors import CurriculumError
from curriculum.languages import default_key_for_iso3
from curriculum.manifest import MANIFEST_JSON, ManifestMeta, TokenizerMeta, empty_shards, write_manifest

MEAN_DOC_TOKENS = 600.0  # a typical web document after filtering (FineWeb-2: ~2.5 KB, ~3 bytes/token)
BYTES_PER_TOKEN = 3.0  # Gemma 2 on multilingual text (DEPENDENCIES.md: 2.98 on UDHR)
# Gemma 2's special ids, so a synthetic manifest can drive a (virtual) sampler like the real one.
GEMMA2 = TokenizerMeta(
    name="gemma2 (synthetic)", sha256="synthetic", vocab_size=256_000,
    cls_id=2, sep_id=1, mask_id=4, pad_id=0, special_ids=[0, 1, 2, 3, 4],
)


def data_file(name: str) -> Path:
    return Path(str(resources.files("curriculum") / "data" / name))


def fineweb2_rank_size() -> np.ndarray:
    """UTF-8 bytes of FineWeb-2's train subsets, largest first."""
    df = pl.read_csv(data_file("fineweb2_language_distribution.csv"))
    train = df.filter((pl.col("split") == "train") & ~pl.col("subset").str.ends_with("_removed"))
    return np.sort(train["utf8_bytes"].cast(pl.Float64).to_numpy())[::-1]


def mmbert_language_order() -> list[str]:
    """mmBERT's languages as keys, most-sampled first (ties by key)."""
    df = pl.read_csv(data_file("mmbert_language_counts.csv"))
    df = df.sort(["pretrain", "ext", "decay-all", "language"], descending=[True, True, True, False])
    return [default_key_for_iso3(c) for c in df["language"].to_list()]


def long_tail_tokens(n_languages: int, total_tokens: float) -> np.ndarray:
    """Token counts (int64, descending) following FineWeb-2's rank-size curve, summing to total."""
    if n_languages < 1:
        raise CurriculumError("--languages must be at least 1")
    curve = np.log(fineweb2_rank_size())
    ranks = np.linspace(0.0, curve.size - 1.0, n_languages) if n_languages > 1 else np.zeros(1)
    logv = np.interp(ranks, np.arange(curve.size, dtype=np.float64), curve)
    share = np.exp(logv - logv.max())
    tokens = np.maximum(1.0, np.floor(share / share.sum() * total_tokens)).astype(np.int64)
    tokens[0] += int(round(total_tokens)) - int(tokens.sum())  # exact total, error on the largest
    if tokens[0] < 1:
        raise CurriculumError("--total-tokens is too small for that many languages")
    return tokens


def _refuse_built_manifest(out: str | Path) -> None:
    """A synthetic manifest may replace an earlier synthetic one, never a built corpus's: its
    tables record what the build kept and dropped, and the shards beside them would be orphaned."""
    path = Path(out) / MANIFEST_JSON
    if not path.exists():
        return
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != "synthetic":
        what = "a built corpus's manifest" if kind == "built" else "a manifest.json that is not a synthetic one"
        raise CurriculumError(f"--out {out}: holds {what}; a synthetic manifest would replace it. "
                              "Pick another --out directory.")


def synth_long_tail(out: str | Path, n_languages: int = 1833, total_tokens: float = 3e12) -> Path:
    """Write a synthetic manifest (no shards) with a FineWeb-2-shaped long tail."""
    _refuse_built_manifest(out)
    names = mmbert_language_order()
    if n_languages > len(names):
        names += [f"s{i:04d}_Latn" for i in range(1, n_languages - len(names) + 1)]
    keys = names[:n_languages]
    tokens = long_tail_tokens(n_languages, total_tokens)
    langs = pl.DataFrame(
        {
            "language": keys,
            "source": ["code" if k == "code" else "web" for k in keys],
            "docs": np.maximum(1, np.round(tokens / MEAN_DOC_TOKENS)).astype(np.int64),
            "tokens": tokens,
            "bytes": np.round(tokens * BYTES_PER_TOKEN).astype(np.int64),
            "shards": np.zeros(n_languages, dtype=np.int32),
        }
    )
    meta = ManifestMeta(
        kind="synthetic",
        tokenizer=GEMMA2,
        mean_doc_tokens=MEAN_DOC_TOKENS,
        build={"synth": {"method": "fineweb2-rank-size", "languages": n_languages, "total_tokens": total_tokens}},
    )
    return write_manifest(out, meta, langs, empty_shards())


def synth_from_mmbert_counts(out: str | Path) -> Path:
    """A reference manifest (no shards) from the published run's per-language token counts
    (`data/mmbert_language_counts.csv`): each language's available tokens are the tokens the run
    sampled of it in all phases (pretrain + mid-training + the `decay-all` variant). The run's
    corpus held at least that much unique-or-repeated text, so planning `mmbert.toml` on it shows
    the published mixture's shape with real language names and the real long tail."""
    _refuse_built_manifest(out)
    df = pl.read_csv(data_file("mmbert_language_counts.csv"))
    total = (df["pretrain"] + df["ext"] + df["decay-all"]).cast(pl.Int64)
    keys = [default_key_for_iso3(c) for c in df["language"].to_list()]
    langs = pl.DataFrame(
        {
            "language": keys,
            "source": ["code" if k == "code" else "web" for k in keys],
            "docs": np.maximum(1, np.round(total.to_numpy() / MEAN_DOC_TOKENS)).astype(np.int64),
            "tokens": total.to_numpy(),
            "bytes": np.round(total.to_numpy() * BYTES_PER_TOKEN).astype(np.int64),
            "shards": np.zeros(len(keys), dtype=np.int32),
        }
    ).filter(pl.col("tokens") > 0)
    meta = ManifestMeta(
        kind="synthetic",
        tokenizer=GEMMA2,
        mean_doc_tokens=MEAN_DOC_TOKENS,
        build={"synth": {"method": "mmbert-published-counts", "columns": ["pretrain", "ext", "decay-all"]}},
    )
    return write_manifest(out, meta, langs, empty_shards())


# Languages FineWeb-2 does not hold, at documented sizes (Gemma 2 tokens): English at the size of
# FineWeb (15T tokens, the English web corpus FineWeb-2 extends) and source code at the size of
# The Stack v2's deduplicated training set (~0.9T tokens). mmBERT took both from other corpora.
FINEWEB2_EXTRAS = {"eng_Latn": ("web", 15e12), "code": ("code", 0.9e12)}


def synth_from_stats(out: str | Path, stats: str | Path | None = None, bytes_per_token: str | Path | None = None) -> Path:
    """A manifest (no shards) with FineWeb-2's real per-language sizes: every train subset (its
    `_removed` twin excluded), UTF-8 bytes converted to tokens with the measured bytes-per-token
    of its script (`data/bytes_per_token.csv`; unmeasured scripts use the all-text ratio), plus
    `FINEWEB2_EXTRAS`. Keys are FineWeb-2's subset names (`{iso639_3}_{Script}`)."""
    from curriculum.bytes_per_token import DEFAULT_ROW, load_table

    _refuse_built_manifest(out)
    bpt = load_table(bytes_per_token)
    src = stats or data_file("fineweb2_language_distribution.csv")
    df = read_user_csv(src, "--from-stats", "FineWeb-2's fineweb2-language-distribution.csv")
    missing = {"split", "subset", "script", "utf8_bytes", "documents"} - set(df.columns)
    if missing:
        raise CurriculumError(f"--from-stats {src}: no column(s) {', '.join(sorted(missing))}; expected FineWeb-2's "
                              "fineweb2-language-distribution.csv")
    train = df.filter((pl.col("split") == "train") & ~pl.col("subset").str.ends_with("_removed"))
    if train.is_empty():
        raise CurriculumError(f"{stats}: no train subsets (expected FineWeb-2's fineweb2-language-distribution.csv)")
    ratio = np.array([bpt.get(s, bpt[DEFAULT_ROW]) for s in train["script"].to_list()])
    nbytes = train["utf8_bytes"].cast(pl.Int64).to_numpy()
    tokens = np.maximum(1, np.round(nbytes / ratio)).astype(np.int64)
    keys = train["subset"].to_list()
    extra_keys = [k for k in FINEWEB2_EXTRAS if k not in keys]
    langs = pl.DataFrame(
        {
            "language": keys + extra_keys,
            "source": ["web"] * len(keys) + [FINEWEB2_EXTRAS[k][0] for k in extra_keys],
            "docs": np.concatenate([train["documents"].cast(pl.Int64).to_numpy(),
                                    [int(FINEWEB2_EXTRAS[k][1] / MEAN_DOC_TOKENS) for k in extra_keys]]).astype(np.int64),
            "tokens": np.concatenate([tokens, [int(FINEWEB2_EXTRAS[k][1]) for k in extra_keys]]).astype(np.int64),
            "bytes": np.concatenate([nbytes, [int(FINEWEB2_EXTRAS[k][1] * BYTES_PER_TOKEN) for k in extra_keys]]).astype(np.int64),
            "shards": np.zeros(len(keys) + len(extra_keys), dtype=np.int32),
        }
    )
    meta = ManifestMeta(
        kind="synthetic",
        tokenizer=GEMMA2,
        mean_doc_tokens=MEAN_DOC_TOKENS,
        build={"synth": {"method": "fineweb2-stats", "extras": {k: v[1] for k, v in FINEWEB2_EXTRAS.items()}}},
    )
    return write_manifest(out, meta, langs, empty_shards())

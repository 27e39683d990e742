"""Bytes of UTF-8 text per token, per script, measured with a real tokenizer on real text.

`curriculum tokenizer bytes-per-token` regenerates `curriculum/data/bytes_per_token.csv` (Gemma 2,
the mmBERT tokenizer, on the demo corpus text: gflanguages' UDHR samples in ~750 language–script
pairs). Converting FineWeb-2's byte counts into tokens with it gives the n_i of p ∝ n^τ. A script
without samples falls back to the ratio over all measured text (the row `*`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import polars as pl

from curriculum.languages import language_script

DEFAULT_ROW = "*"


def measure(tokenizer_path: str | Path) -> pl.DataFrame:
    """script, languages, bytes, tokens, bytes_per_token (sorted by script; `*` = all text)."""
    from curriculum.democorpus import demo_documents
    from curriculum.tokenize import load_tokenizer

    tok = load_tokenizer(tokenizer_path, num_threads=1)
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for key, docs in sorted(demo_documents().items()):
        script = language_script(key)[1] or key
        flat, _ = tok.encode_batch(docs)
        n_bytes = sum(len(d.encode("utf-8")) for d in docs)
        for row in (per[script], per[DEFAULT_ROW]):
            row[0] += 1
            row[1] += n_bytes
            row[2] += int(flat.size)
    rows = [
        {"script": s, "languages": v[0], "bytes": v[1], "tokens": v[2], "bytes_per_token": round(v[1] / v[2], 4)}
        for s, v in per.items()
        if v[2] > 0
    ]
    return pl.DataFrame(rows).sort("script")


def write_table(tokenizer_path: str | Path, out: str | Path) -> pl.DataFrame:
    df = measure(tokenizer_path)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.write_csv(out)
    return df


def load_table(path: str | Path | None = None) -> dict[str, float]:
    """script → bytes per token (with the `*` default row)."""
    from curriculum.synth import data_file

    df = pl.read_csv(path or data_file("bytes_per_token.csv"))
    return dict(zip(df["script"].to_list(), df["bytes_per_token"].to_list()))

"""The embedded demo corpus: real multilingual text from a PyPI package, no download.

Source: `gflanguages` (Google Fonts' language metadata, Apache-2.0), whose sample texts are
mostly excerpts of the Universal Declaration of Human Rights in ~750 language–script pairs. We
keep each language in its usual script (dropping transliterations into historic scripts),
split its sample texts into documents, and write
- FineWeb-2-style labeled Parquet: `OUT/{lang}/train/000.parquet` (column `text`);
- an *unlabeled* part for a few dozen languages fastText lid.176 knows, so the build's language
  ID runs on real text: `OUT/unlabeled/web.jsonl.zst` and `OUT/unlabeled/notes.txt`.
Some sample fields repeat each other (a heading is a prefix of a paragraph), which gives the
near-duplicate detector real work.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl

from curriculum.languages import UnknownLanguageError, normalize_language

FIELDS = ("specimen_16", "specimen_21", "specimen_32", "specimen_36", "specimen_48", "tester", "styles")
# Languages left unlabeled (fastText lid.176 knows them well): the build must identify them.
UNLABELED = (
    "deu_Latn", "fra_Latn", "spa_Latn", "ita_Latn", "por_Latn", "nld_Latn", "pol_Latn", "rus_Cyrl",
    "ukr_Cyrl", "bul_Cyrl", "ell_Grek", "tur_Latn", "arb_Arab", "fas_Arab", "heb_Hebr", "hin_Deva",
    "ben_Beng", "tam_Taml", "tha_Thai", "vie_Latn", "jpn_Jpan", "kor_Hang", "ces_Latn", "swe_Latn",
    "fin_Latn", "hun_Latn", "ron_Latn", "ind_Latn", "kat_Geor", "hye_Armn",
)


def demo_documents() -> dict[str, list[str]]:
    """Language key → documents (paragraphs of the language's sample texts)."""
    import gflanguages

    docs: dict[str, list[str]] = {}
    for lang_id, lang in sorted(gflanguages.LoadLanguages().items()):
        if not lang.HasField("sample_text"):
            continue
        base, _, script = lang_id.partition("_")
        try:
            key = normalize_language(lang_id)
            usual = normalize_language(base)
        except UnknownLanguageError:
            continue
        if key.split("_")[-1] != usual.split("_")[-1] and not key.endswith("_Hani"):
            continue  # a transliteration into another script: not how the language is written
        st = lang.sample_text
        out = docs.setdefault(key, [])
        for f in FIELDS:
            for para in getattr(st, f).split("\n"):
                para = para.strip()
                if len(para) >= 20 and para not in out:
                    out.append(para)
    return {k: v for k, v in docs.items() if v}


def write_demo_corpus(out: str | Path) -> dict[str, int]:
    """Write the demo corpus; returns documents per language."""
    import zstandard

    out = Path(out)
    docs = demo_documents()
    unlabeled_lines: list[str] = []
    notes: list[str] = []
    for key, texts in docs.items():
        if key in UNLABELED:
            for i, t in enumerate(texts):
                (notes if i % 4 == 3 else unlabeled_lines).append(t)
            continue
        d = out / key / "train"
        d.mkdir(parents=True, exist_ok=True)
        pl.DataFrame({"text": texts, "id": [f"{key}-{i}" for i in range(len(texts))]}).write_parquet(d / "000.parquet")
    u = out / "unlabeled"
    u.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zstandard.ZstdCompressor(level=10).stream_writer(buf, closefd=False) as w:
        for t in unlabeled_lines:
            w.write((json.dumps({"text": t}, ensure_ascii=False) + "\n").encode("utf-8"))
    (u / "web.jsonl.zst").write_bytes(buf.getvalue())
    (u / "notes.txt").write_text("\n\n".join(t.replace("\n\n", "\n") for t in notes) + "\n", encoding="utf-8")
    return {k: len(v) for k, v in docs.items()}

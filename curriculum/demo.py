"""`make demo`: the main job on the embedded default, end to end as far as it exists.

1. the embedded real multilingual corpus (gflanguages' UDHR samples, ~700 languages, part of it
   unlabeled) → a tokenizer trained offline → `curriculum build` (real fastText LID, MinHash dedup,
   shards) → `curriculum verify` → `curriculum inspect` → `curriculum plan demo.toml`;
2. a full-scale synthetic manifest (1,833 languages, 3T tokens) planned with the published
   mmBERT recipe, as a table and as a self-contained HTML report.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> None:
    print(f"\n$ curriculum {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "curriculum.cli", *args], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo-out", help="Working directory for the demo's outputs.")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    corpus, tok, built = out / "corpus", out / "tokenizer.json", out / "manifest"
    _run("demo-corpus", str(corpus))
    if not tok.exists():
        _run("tokenizer", "train", str(corpus), "--out", str(tok), "--vocab-size", "8000")
    _run("build", str(corpus), "--out", str(built), "--tokenizer", str(tok), "--workers", "2")
    _run("verify", str(built))
    _run("inspect", str(built), "--top", "12")
    _run("plan", str(ROOT / "manifests" / "recipes" / "demo.toml"), "--manifest", str(built), "--top", "6",
         "--html", str(out / "plan-demo.html"))
    recipe = str(ROOT / "manifests" / "recipes" / "mmbert.toml")
    synth = out / "synth-1833"
    _run("synth", "--languages", "1833", "--total-tokens", "3e12", "--out", str(synth))
    _run("plan", recipe, "--manifest", str(synth), "--top", "8", "--html", str(out / "plan-mmbert.html"))
    print(f"\ndemo done: open {out / 'plan-demo.html'} and {out / 'plan-mmbert.html'} in a browser", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

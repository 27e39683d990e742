"""`make demo`: the main job on the embedded default, end to end as far as it exists.

Today: a full-scale synthetic manifest (1,833 languages, 3T tokens) planned with the published
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
    recipe = str(ROOT / "manifests" / "recipes" / "mmbert.toml")
    synth = out / "synth-1833"
    _run("synth", "--languages", "1833", "--total-tokens", "3e12", "--out", str(synth))
    _run("plan", recipe, "--manifest", str(synth), "--top", "8", "--html", str(out / "plan-mmbert.html"))
    print(f"\ndemo done: open {out / 'plan-mmbert.html'} in a browser", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

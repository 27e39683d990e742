"""`make demo`'s orchestrator (`python -m curriculum.demo`), up to planning: it must also run again
in the same directory, as a user re-running `make demo` does."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT
from curriculum.manifest import read_manifest
from curriculum.verify import verify_manifest


def test_the_demo_builds_and_runs_again_in_the_same_directory(tmp_path):
    out = tmp_path / "demo-out"
    env = {**os.environ, "NUMBA_THREADING_LAYER": os.environ.get("NUMBA_THREADING_LAYER", "omp")}
    cmd = [sys.executable, "-m", "curriculum.demo", "--out", str(out), "--no-train"]
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    m1 = read_manifest(out / "manifest")
    # Second run: demo-corpus rewrites the inputs (new mtimes); the build must start over, not
    # refuse the first run's work directory.
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    m2 = read_manifest(out / "manifest")
    checked, problems = verify_manifest(out / "manifest")
    assert checked == m2.shards.height > 0 and problems == []
    assert m1.languages.equals(m2.languages) and m1.shards.equals(m2.shards)  # deterministic: same tables
    assert m2.languages.height > 100 and "demo done" in second.stdout

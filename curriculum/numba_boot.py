"""Set numba up before any kernel is defined: its array-math registry without scipy.linalg (~0.2 s a
process), and an on-disk cache folder per version of the kernels' sources.

numba loads its registries on the first kernel a process runs (or loads from the on-disk cache).
One of them, `numba.np.arraymath`, imports `scipy.linalg.cython_blas` at import time only to set
a flag (`_HAVE_BLAS`) that picks BLAS or a plain loop for the inner product of `np.cov`-style
helpers; `np.dot` and `np.linalg` look for BLAS again when a kernel using them is compiled, so
they still work. No kernel of this project uses either. Importing scipy.linalg costs ~0.2 s of
the ~0.6 s before a process's first kernel: in every CLI command that runs a kernel, every build
pool process's warm-up, and the server's start-up. So every module that defines kernels imports
this one first; it imports arraymath once with scipy hidden, and numba then finds it imported.

It also points numba's on-disk cache at a folder named by the kernels' sources. numba keys a
cached kernel by its own file's modification time and size only, not by the files of the
functions it calls and inlines or the constants it freezes: after an edit to `mask.py` alone (a
`git pull`, a wheel with fixed timestamps, a cache volume kept across image versions),
`assemble` — in an unchanged `assemble.py` — loaded machine code with the old masking rule.
The folder is `$NUMBA_CACHE_DIR/curriculum-kernels-<hash of KERNEL_SOURCES>` (the user cache
when the variable is unset), so any edit to a kernel's sources starts a fresh cache; where it
cannot be written, a private folder of the process (numba would otherwise fall back to folders
where a stale kernel loads again).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

# Every module whose code or constants a kernel's machine code can hold: those that define
# kernels (njit, intrinsic, overload) and the project modules importing them imports, transitively
# (a global a kernel reads is frozen at compile time, and its value can come from any of them).
# The test (tests/curriculum/test_numba_boot.py) derives this list from the sources.
KERNEL_SOURCES = (
    "curriculum/dedup.py",
    "curriculum/errors.py",
    "curriculum/fileperm.py",
    "curriculum/ingest.py",
    "curriculum/languages.py",
    "curriculum/minhash.py",
    "curriculum/nfc.py",
    "curriculum/normalize.py",
    "curriculum/numba_boot.py",
    "curriculum/shards.py",
    "curriculum/unicode_tables.py",
    "sampler_server/kernels/assemble.py",
    "sampler_server/kernels/blend.py",
    "sampler_server/kernels/mask.py",
    "sampler_server/kernels/pack.py",
    "sampler_server/kernels/rng.py",
    "sampler_server/kernels/wire_parts.py",
    "sampler_server/streams.py",
    "sampler_server/virtual.py",
)
_ROOT = Path(__file__).resolve().parent.parent
_PREFIX = "curriculum-kernels-"


def kernel_fingerprint(root: Path = _ROOT) -> str:
    """16 hex digits of sha256 over KERNEL_SOURCES (names and bytes) under `root`."""
    h = hashlib.sha256()
    for rel in KERNEL_SOURCES:
        try:
            data = (root / rel).read_bytes()
        except OSError:
            data = b"\0missing"
        h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def cache_base() -> str:
    """Where this project's caches go: `$NUMBA_CACHE_DIR` (without the curriculum-kernels-… folder
    this module appended, which a child process inherits), else the user cache folder."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        env = os.path.normpath(env)
        return os.path.dirname(env) if os.path.basename(env).startswith(_PREFIX) else env
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "language-curriculum")


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _use_fingerprinted_cache_dir() -> None:
    import numba

    path = os.path.join(cache_base(), _PREFIX + kernel_fingerprint())
    if not _writable_dir(path):
        # numba would fall back to a folder beside the sources or its user cache, where a stale
        # kernel loads again: a private folder of this process instead, removed at exit.
        import atexit
        import shutil
        import tempfile
        import warnings

        warnings.warn(f"numba cache folder {path} cannot be written: every process compiles its kernels (seconds each); "
                      "set NUMBA_CACHE_DIR to a writable folder", stacklevel=2)
        numba.config.CACHE_DIR = tempfile.mkdtemp(prefix="curriculum-numba-")  # not exported: child processes try again
        atexit.register(shutil.rmtree, numba.config.CACHE_DIR, ignore_errors=True)
        return
    numba.config.CACHE_DIR = path  # read when a kernel is decorated (its cache locator is made then)
    # numba re-reads its NUMBA_* variables before a compile when they changed, and child processes
    # inherit them: both see this folder too.
    os.environ["NUMBA_CACHE_DIR"] = path


def _import_arraymath_without_scipy() -> None:
    if "numba.np.arraymath" in sys.modules:
        return
    # Hide the first of these not yet imported: a module set to None in sys.modules raises
    # ImportError on import, which arraymath takes to mean "no BLAS". If all three are imported
    # already, importing cython_blas is free and nothing is hidden.
    hidden = next((m for m in ("scipy", "scipy.linalg", "scipy.linalg.cython_blas") if m not in sys.modules), None)
    if hidden is not None:
        sys.modules[hidden] = None  # type: ignore[assignment]
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        if hidden is not None and sys.modules.get(hidden, 0) is None:
            del sys.modules[hidden]


def _pin_thread_count() -> None:
    """Export the thread count numba settled on at import, unless the user set one.

    numba re-reads its NUMBA_* variables before a compile when one changed (NUMBA_CACHE_DIR does,
    just above), and a default NUMBA_NUM_THREADS is recomputed from the process's CPU affinity.
    With OMP_PROC_BIND set (common on HPC nodes), starting the OpenMP pool pins the calling thread
    to one CPU: a process that ran a parallel kernel from the cache and then compiled any kernel
    read a default of 1, and numba raised "Cannot set NUMBA_NUM_THREADS to a different value once
    the threads have been launched"."""
    import numba

    os.environ.setdefault("NUMBA_NUM_THREADS", str(numba.config.NUMBA_NUM_THREADS))


_import_arraymath_without_scipy()
_use_fingerprinted_cache_dir()
_pin_thread_count()

"""Import numba's array-math registry without importing scipy.linalg (~0.2 s a process).

numba loads its registries on the first kernel a process runs (or loads from the on-disk cache).
One of them, `numba.np.arraymath`, imports `scipy.linalg.cython_blas` at import time only to set
a flag (`_HAVE_BLAS`) that picks BLAS or a plain loop for the inner product of `np.cov`-style
helpers; `np.dot` and `np.linalg` look for BLAS again when a kernel using them is compiled, so
they still work. No kernel of this project uses either. Importing scipy.linalg costs ~0.2 s of
the ~0.6 s before a process's first kernel: in every CLI command that runs a kernel, every build
pool process's warm-up, and the server's start-up. So every module that defines kernels imports
this one first; it imports arraymath once with scipy hidden, and numba then finds it imported.
"""

from __future__ import annotations

import sys


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


_import_arraymath_without_scipy()

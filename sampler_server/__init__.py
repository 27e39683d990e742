"""sampler_server: deterministic curriculum batches (numba kernels) served over HTTP."""

import os

# numba's default `workqueue` layer aborts the process when parallel kernels are called from
# several threads at once (the server's thread pool); `omp` is safe for concurrent calls but not
# fork-safe, so everything here uses the spawn start method (DEPENDENCIES.md, trap 2).
os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")

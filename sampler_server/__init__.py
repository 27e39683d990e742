"""sampler_server: deterministic curriculum batches (numba kernels) served over HTTP."""

import os

# numba's default `workqueue` layer aborts the process when parallel kernels are called from
# several threads at once (the server's thread pool); `omp` is safe for concurrent calls but not
# fork-safe, so everything here uses the spawn start method (DEPENDENCIES.md, trap 2).
os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")


def __getattr__(name: str):
    # `sampler_server.Sampler` as the README writes it, imported on first use: the CLI and the
    # kernels' modules need not load the whole sampler.
    if name == "Sampler":
        from sampler_server.sampler import Sampler

        return Sampler
    raise AttributeError(f"module 'sampler_server' has no attribute {name!r}")

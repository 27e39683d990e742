"""numba kernels of the sampler: counter-based RNG, blending, packing and masking.

Each kernel is `@njit(cache=True, nogil=True)` on arrays only; tests hold each to a slow
plain-numpy twin that it must match exactly.
"""

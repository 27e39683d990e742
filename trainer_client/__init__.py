"""trainer_client: what a GPU node runs — HTTP client, dataset, ModernBERT MLM, FSDP2 loop.

Imports only torch, numpy, pyarrow, httpx and transformers (never numba, FastAPI or curriculum).
`SamplerDataset` is exported lazily: the sampler server imports `trainer_client.wire` (the wire
format is defined once) and must not pay for importing torch.
"""

from __future__ import annotations

__all__ = ["SamplerDataset", "SamplerClient"]


def __getattr__(name: str):
    if name == "SamplerDataset":
        from trainer_client.dataset import SamplerDataset

        return SamplerDataset
    if name == "SamplerClient":
        from trainer_client.client import SamplerClient

        return SamplerClient
    raise AttributeError(f"module 'trainer_client' has no attribute {name!r}")

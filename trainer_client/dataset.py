"""`SamplerDataset`: a torch IterableDataset of one rank's batches, fetched from the sampler service.

Batch `s` of rank `r` of `W` is a pure function of the server's build and (s, r, W), so the
dataset's whole state is the next step to hand out (plus the build id it trained on):
`state_dict()` / `load_state_dict()` follow torchdata's StatefulDataLoader protocol, and a
resumed run sees exactly the batches an uninterrupted run would have seen.

Background threads fetch the next `prefetch` steps while the model trains on the current one; a
batch is handed out in step order only. Decoding is zero-copy for `input_ids` (a read-only view of
the HTTP body's Arrow buffer; moving it to a GPU copies it once, on CPU the model only reads it).
Use it with `DataLoader(ds, batch_size=None, num_workers=0)` or iterate it directly: it
prefetches with threads, not worker processes.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from trainer_client import wire
from trainer_client.client import DEFAULT_TIMEOUT, RetryPolicy, SamplerClient

log = logging.getLogger("trainer_client")

# torch.from_numpy warns on read-only arrays; ours are read-only on purpose (zero-copy views of
# the response body) and are never written. Scoped to this module.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", module=__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class TrainBatch:
    """One rank's batch of one global step, as tensors."""

    step: int
    input_ids: torch.Tensor  # int32[B, L] (zero-copy, read-only)
    labels: torch.Tensor  # int32[B, L], -100 where not masked
    cu_seqlens: torch.Tensor  # int32[n_docs + 1] over the flattened B·L tokens
    max_seqlen: int
    lang: torch.Tensor  # int32[B], index into `languages`
    languages: tuple[str, ...]
    phase: str
    phase_index: int
    seq_len: int
    lr_factor: float
    global_batch: int  # sequences of all ranks at this step
    tokens_before: int  # tokens of all ranks served before this step
    build_id: str
    metadata: dict[str, Any] = field(repr=False)

    @property
    def tokens(self) -> int:
        """Tokens of the global batch (all ranks)."""
        return self.global_batch * self.seq_len

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainBatch:
        """A copy with the tensors on `device`."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return TrainBatch(self.step, move(self.input_ids), move(self.labels), move(self.cu_seqlens), self.max_seqlen,
                          move(self.lang), self.languages, self.phase, self.phase_index, self.seq_len, self.lr_factor,
                          self.global_batch, self.tokens_before, self.build_id, self.metadata)


def to_train_batch(b: wire.WireBatch) -> TrainBatch:
    """Tensors over the decoded arrays (no copy)."""
    md = b.metadata
    return TrainBatch(
        step=int(md["step"]), input_ids=torch.from_numpy(b.input_ids), labels=torch.from_numpy(b.labels),
        cu_seqlens=torch.from_numpy(np.asarray(b.cu_seqlens)), max_seqlen=b.max_seqlen,
        lang=torch.from_numpy(b.lang), languages=b.languages, phase=str(md["phase"]),
        phase_index=int(md["phase_index"]), seq_len=int(md["seq_len"]), lr_factor=float(md["lr_factor"]),
        global_batch=int(md["global_batch"]), tokens_before=int(md["tokens_before"]), build_id=str(md["build_id"]),
        metadata=md,
    )


@dataclass
class DataStats:
    """Where the data time went (seconds are sums over batches)."""

    batches: int = 0
    wait_seconds: float = 0.0  # the consumer blocked on a batch not yet fetched
    fetch_seconds: float = 0.0  # HTTP round trips, in the background threads
    decode_seconds: float = 0.0  # Arrow decode + tensor views, in the background threads
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_fetch(self, fetch: float, decode: float) -> None:
        with self._lock:
            self.fetch_seconds += fetch
            self.decode_seconds += decode


class SamplerDataset(IterableDataset):
    """Batches `start_step, start_step+1, …` of `rank` of `world_size` from the sampler service."""

    def __init__(
        self,
        urls: str | Sequence[str],
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        *,
        stop_step: int | None = None,
        prefetch: int = 4,
        threads: int = 2,
        variant: str | None = None,
        token: str | None = None,
        build_id: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        labels: wire.LabelMode = "sparse",
        compression: str | None = None,
        client: SamplerClient | None = None,
    ):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got rank={rank}")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if prefetch < 1 or threads < 1:
            raise ValueError(f"prefetch and threads must be >= 1, got prefetch={prefetch}, threads={threads}")
        self.client = client if client is not None else SamplerClient(
            urls, token=token, build_id=build_id, build_origin="given to SamplerDataset", timeout=timeout, retry=retry)
        self.rank, self.world_size = rank, world_size
        self.stop_step = stop_step
        self.prefetch, self.threads = prefetch, min(threads, prefetch)
        self.variant, self.labels, self.compression = variant, labels, compression
        self.stats = DataStats()
        self._next_step = start_step
        self._last_build: tuple[int, str] | None = None  # (step, build id) of the last batch handed out
        self._total_steps: int | None = None

    # -- state (torchdata StatefulDataLoader protocol) -------------------------------------

    @property
    def next_step(self) -> int:
        """The global step the next batch handed out will be."""
        return self._next_step

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly after the last batch handed out."""
        out = {"version": STATE_VERSION, "next_step": self._next_step, "build_id": self.client.build_id,
               "variant": self.variant, "rank": self.rank, "world_size": self.world_size}
        if self._last_build is not None:  # the journal check on resume (client.py)
            out["last_step"], out["last_build_id"] = self._last_build
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`; the build id it names becomes the one the servers must serve.
        Rank and world size come from the current job (a resized job with the same global batch
        sees the same global stream)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"dataset state version {state.get('version')!r}; this client reads {STATE_VERSION}")
        if state.get("variant") != self.variant:
            raise ValueError(f"the saved state trained variant {state.get('variant')!r}, this dataset asks for "
                             f"{self.variant!r}; pass the same --variant to resume")
        if state.get("build_id"):
            self.client.expect_build(str(state["build_id"]), "from the loaded dataset state")
        if state.get("last_build_id") and state.get("last_step") is not None:
            self._last_build = (int(state["last_step"]), str(state["last_build_id"]))
            self.client.remember_step(*self._last_build, "the loaded dataset state")
        self._next_step = int(state["next_step"])

    # -- iteration ------------------------------------------------------------------------

    def total_steps(self) -> int:
        """Steps of the served recipe (asks the server once)."""
        if self._total_steps is None:
            self._total_steps = self.client.info(self.variant).total_steps
        return self._total_steps

    def fetch(self, step: int) -> TrainBatch:
        """One batch, synchronously (retries and failover inside)."""
        t0 = time.perf_counter()
        b = self.client.get_batch(step, self.rank, self.world_size, variant=self.variant, labels=self.labels,
                                  compression=self.compression)
        t1 = time.perf_counter()
        tb = to_train_batch(b)
        self.stats.add_fetch(t1 - t0, time.perf_counter() - t1)
        return tb

    def __iter__(self) -> Iterator[TrainBatch]:
        wi = get_worker_info()
        if wi is not None:  # its position (state_dict) would advance in the worker, not here
            raise RuntimeError("SamplerDataset prefetches with threads and keeps its position in this process: use "
                               "DataLoader(..., num_workers=0)")
        stop = self.stop_step if self.stop_step is not None else self.total_steps()
        nxt = self._next_step
        pending: deque[tuple[int, Future[TrainBatch]]] = deque()
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix=f"sampler-prefetch-r{self.rank}")

        def refill() -> None:
            nonlocal nxt
            while nxt < stop and len(pending) < self.prefetch:
                pending.append((nxt, pool.submit(self.fetch, nxt)))
                nxt += 1

        try:
            refill()
            while pending:
                step, fut = pending.popleft()
                t0 = time.perf_counter()
                batch = fut.result()
                self.stats.wait_seconds += time.perf_counter() - t0
                # Refill after taking the batch, not before: a freshly woken fetch thread would
                # otherwise hold the GIL (httpx builds the request in Python) while we wait for it.
                refill()
                self.stats.batches += 1
                self._next_step = step + 1  # handed out = consumed, for state_dict()
                self._last_build = (step, batch.build_id)
                yield batch
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        return (f"SamplerDataset(urls={self.client.urls}, rank={self.rank}, world_size={self.world_size}, "
                f"next_step={self._next_step}, prefetch={self.prefetch}, variant={self.variant!r})")

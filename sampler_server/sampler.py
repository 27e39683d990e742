"""`Sampler`: every batch a pure function of (recipe, manifest, seed, step, rank, world size).

Sequence g of a phase is assigned a language by the blend of its segment (one segment per
phase, or `anneal_segments` when τ is annealed); it is that language's k-th sequence, i.e. the
language's stream tokens [base + k·L, base + (k+1)·L), where k is the language's count before g
and `base` the tokens it served in earlier segments. The whole state at any g is therefore the
count vector, which the blend index checkpoints; a restarted Sampler recomputes the same bytes.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from curriculum.manifest import Manifest, read_manifest
from curriculum.plan import PhasePlan, plan_recipe
from curriculum.recipe import Recipe, load_recipe
from curriculum.schedule import StepInfo, Timeline
from curriculum.shards import open_shard
from sampler_server.cache import DEFAULT_CACHE_BYTES, ShardCache
from sampler_server.kernels.blend import BlendIndex, adaptive_chunk
from sampler_server.kernels.mask import mask_tokens
from sampler_server.kernels.rng import sequence_keys
from sampler_server.streams import DEFAULT_BLOCK_TOKENS, LanguageStream


@dataclass(frozen=True)
class Batch:
    """One rank's batch. Document boundaries follow FlashAttention-2 varlen: `cu_seqlens` indexes
    the flattened [B·L] tokens; every sequence start is a boundary, and so is every [CLS]."""

    input_ids: np.ndarray  # int32[B, L]
    labels: np.ndarray  # int32[B, L], -100 where not masked
    cu_seqlens: np.ndarray  # int32[n_docs + 1]
    lang: np.ndarray  # int32[B], index into Sampler.languages
    info: StepInfo
    rank: int
    world_size: int

    @property
    def max_seqlen(self) -> int:
        return int(np.diff(self.cu_seqlens).max()) if self.cu_seqlens.size > 1 else 0


@dataclass(frozen=True)
class _Segment:
    start: int  # first phase sequence of the segment
    stop: int
    lang: np.ndarray  # int32 global language index of each blended language
    blend: BlendIndex


class Sampler:
    """Deterministic batches over a built manifest."""

    def __init__(
        self,
        manifest: str | Path | Manifest,
        recipe: str | Path | Recipe,
        seed: int = 0,
        *,
        variant: str | None = None,
        chunk: int | None = None,
        block_tokens: int = DEFAULT_BLOCK_TOKENS,
        threads: int = 1,
        index_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        # Shards of a remote manifest (s3://…) are served from a verified local cache.
        self.shard_cache = ShardCache(cache_dir, cache_bytes) if self.manifest.is_remote else None
        full = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        # Variants branch from the same start: the resolved recipe replaces each phase that has
        # variants by the chosen one (default: its first).
        self.recipe = full.resolve(variant)
        self.variant = variant or next((p.variant for p in self.recipe.phases if p.variant), None)
        self.seed = int(seed)
        # Kernel threads per batch call. 1 by default: a server runs many requests at once (each
        # on its own thread), and a per-rank batch (~64K tokens) masks in ~0.1 ms on one core,
        # less than an OpenMP launch costs.
        self.threads = int(threads)
        tok = self.manifest.meta.tokenizer
        if tok is None:
            raise ValueError(f"manifest {self.manifest.root}: no tokenizer metadata; rebuild it with `curriculum build`")
        self.tokenizer = tok
        self.languages: list[str] = self.manifest.languages["language"].to_list()
        self._lang_index = {k: i for i, k in enumerate(self.languages)}
        self.timeline = Timeline(self.recipe)
        self.plans: list[PhasePlan] = plan_recipe(self.recipe, self.manifest)
        # block_tokens shapes the shuffle of a built corpus, so it is part of what a batch is.
        layout = "" if self.manifest.meta.kind == "synthetic" else f":b{block_tokens}"
        self.build_id = hashlib.sha256(
            f"{self.recipe.fingerprint()}:{self.manifest.fingerprint}:{self.seed}:{self.variant or ''}{layout}".encode()
        ).hexdigest()[:16]
        self._streams = self._make_streams(block_tokens)
        self._segments = [self._make_segments(p, lay.total_sequences, chunk) for p, lay in zip(self.plans, self.timeline.layouts)]
        self.index_dir = Path(index_dir) if index_dir is not None else None
        if self.index_dir is not None:
            self._attach_index()
        self._bases: dict[tuple[int, int], np.ndarray] = {}
        self._base_lock = threading.Lock()
        specials = np.array(sorted({tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id, *tok.special_ids}), np.int64)
        self._is_special = np.zeros(tok.vocab_size, np.bool_)
        self._is_special[specials[specials < tok.vocab_size]] = True
        self._random_pool = np.flatnonzero(~self._is_special).astype(np.int32)

    def _make_streams(self, block_tokens: int) -> list[LanguageStream | None]:
        if self.manifest.meta.kind == "synthetic":
            # No shards: a virtual corpus of the manifest's sizes, generated on read.
            from sampler_server.virtual import VirtualLanguageStream

            tok = self.tokenizer
            lo = max([tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id, *tok.special_ids]) + 1
            rows = self.manifest.languages.iter_rows(named=True)
            return [
                VirtualLanguageStream(r["language"], r["tokens"], r["docs"], self.seed, (lo, tok.vocab_size)) if r["tokens"] > 0 else None
                for r in rows
            ]
        shards = self.manifest.shards
        by_lang: dict[str, list[Path | str]] = {}
        for r in shards.sort(["language", "index"]).iter_rows(named=True):
            by_lang.setdefault(r["language"], []).append(self.manifest.shard_location(r["path"]))
        opener = open_shard
        if self.shard_cache is not None:
            known = {self.manifest.shard_location(r["path"]): (r["sha256"], r["bytes"]) for r in shards.iter_rows(named=True)}
            opener = lambda loc: self.shard_cache.open(loc, *known[loc])  # noqa: E731
        return [
            LanguageStream(k, by_lang[k], self.seed, block_tokens, opener=opener) if k in by_lang else None for k in self.languages
        ]

    def _make_segments(self, plan: PhasePlan, n_seq: int, chunk: int | None) -> list[_Segment]:
        S = len(plan.segments)
        bounds = [math.ceil(s * n_seq / S) for s in range(S + 1)]
        glob = np.array([self._lang_index[k] for k in plan.languages], np.int32)
        out = []
        for s, seg in enumerate(plan.segments):
            w = seg.allocation.weights
            keep = w > 0
            c = chunk or adaptive_chunk(bounds[s + 1] - bounds[s], int(keep.sum()))
            out.append(_Segment(bounds[s], bounds[s + 1], glob[keep], BlendIndex(w[keep] / w[keep].sum(), c)))
        return out

    # -- the persisted index ---------------------------------------------------------------

    def _index_path(self, phase: int, seg: int) -> Path:
        return self.index_dir / f"{self.build_id}-p{phase}-s{seg}-c{self._segments[phase][seg].blend.chunk}.npy"

    def _attach_index(self) -> None:
        for p, segs in enumerate(self._segments):
            for s, segm in enumerate(segs):
                path = self._index_path(p, s)
                if path.exists():
                    segm.blend.attach(np.load(path, mmap_mode="r"))

    def build_index(self, progress=None) -> dict:
        """Build every blend checkpoint of the run and write them to `index_dir` (one .npy per
        segment, memory-mapped on load): after this, any step of any phase is O(chunk) away, and a
        restarted server reuses it. Returns sizes and timings."""
        import os
        import time

        if self.index_dir is None:
            raise ValueError("Sampler.build_index needs index_dir")
        self.index_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        total = 0
        for p, segs in enumerate(self._segments):
            for s, segm in enumerate(segs):
                path = self._index_path(p, s)
                if not path.exists():
                    matrix = segm.blend.checkpoint_matrix(segm.stop - segm.start)
                    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
                    np.save(tmp, matrix)
                    os.replace(tmp, path)
                segm.blend.attach(np.load(path, mmap_mode="r"))
                total += path.stat().st_size
                if progress:
                    progress(p, s)
        return {"seconds": time.perf_counter() - t0, "bytes": total, "files": sum(len(x) for x in self._segments)}

    # -- schedule -------------------------------------------------------------------------

    def schedule(self, step: int) -> StepInfo:
        """The step's phase, τ, mask ratio, sequence length and LR factor (cheap)."""
        return self.timeline.locate(step)

    @property
    def total_steps(self) -> int:
        return self.timeline.total_steps

    # -- stream positions -----------------------------------------------------------------

    def _base(self, phase: int, seg: int) -> np.ndarray:
        """Tokens each language served before segment `seg` of `phase` (int64[K])."""
        hit = self._bases.get((phase, seg))  # lock-free once computed: requests never queue behind a walk
        if hit is not None:
            return hit
        with self._base_lock:
            key = (phase, seg)
            if key in self._bases:
                return self._bases[key]
            order = [(p, s) for p in range(len(self._segments)) for s in range(len(self._segments[p]))]
            cur = np.zeros(len(self.languages), np.int64)
            for p, s in order:
                if (p, s) in self._bases:
                    cur = self._bases[(p, s)]
                else:
                    self._bases[(p, s)] = cur
                if (p, s) == key:
                    return cur
                segm = self._segments[p][s]
                cur = cur.copy()
                cur[segm.lang] += segm.blend.counts_at(segm.stop - segm.start) * self.recipe.phases[p].seq_len
            raise AssertionError("unreachable")

    def consumed_tokens(self, step: int) -> np.ndarray:
        """Tokens of each language served before `step` (int64[K])."""
        info = self.schedule(step)
        g = info.first_sequence
        for s, segm in enumerate(self._segments[info.phase_index]):
            if segm.start <= g < segm.stop or s == len(self._segments[info.phase_index]) - 1:
                out = self._base(info.phase_index, s).copy()
                out[segm.lang] += segm.blend.counts_at(g - segm.start) * info.seq_len
                return out
        raise AssertionError("unreachable")

    def epochs(self, step: int) -> dict[str, float]:
        """Epochs of its stream each language has used before `step`."""
        used = self.consumed_tokens(step)
        return {
            k: float(used[i]) / st.stream_len
            for i, (k, st) in enumerate(zip(self.languages, self._streams))
            if st is not None and used[i] > 0
        }

    # -- batches --------------------------------------------------------------------------

    def assign(self, phase: int, g0: int, g1: int) -> tuple[np.ndarray, np.ndarray]:
        """Global language index and stream start token of phase sequences [g0, g1)."""
        L = self.recipe.phases[phase].seq_len
        langs = np.empty(g1 - g0, np.int32)
        starts = np.empty(g1 - g0, np.int64)
        for s, segm in enumerate(self._segments[phase]):
            a, b = max(g0, segm.start), min(g1, segm.stop)
            if a >= b:
                continue
            before, local = segm.blend.slice(a - segm.start, b - a)
            # k = count of the language before this sequence: counts at `a` plus earlier
            # occurrences inside [a, b).
            order = np.argsort(local, kind="stable")
            sorted_l = local[order]
            first = np.searchsorted(sorted_l, sorted_l, side="left")
            occ = np.empty(b - a, np.int64)
            occ[order] = np.arange(b - a) - first
            k = before[local] + occ
            glob = segm.lang[local]
            langs[a - g0 : b - g0] = glob
            starts[a - g0 : b - g0] = self._base(phase, s)[glob] + k * L
        return langs, starts

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> Batch:
        """The batch of `rank` of `world_size` at global `step`."""
        info = self.schedule(step)
        g0, g1 = self.timeline.rank_slice(info, rank, world_size)
        p, L, n = info.phase_index, info.seq_len, g1 - g0
        langs, starts = self.assign(p, g0, g1)
        input_ids = np.empty((n, L), np.int32)
        doc_starts = np.empty(L, np.int32)
        bounds = []
        tok = self.tokenizer
        for r in range(n):
            stream = self._streams[langs[r]]
            m = stream.fill(int(starts[r]), input_ids[r], doc_starts, tok.cls_id, tok.sep_id)
            row = doc_starts[:m]
            if m == 0 or row[0] != 0:
                row = np.concatenate(([0], row))
            bounds.append(row.astype(np.int64) + r * L)
        bounds.append(np.array([n * L], np.int64))
        cu = np.concatenate(bounds).astype(np.int32)

        phase = self.recipe.phases[p]
        gs = np.arange(g0, g1, dtype=np.int64)
        keys = np.empty(n, np.uint64)
        sequence_keys(np.uint64(self.seed & 0xFFFFFFFFFFFFFFFF), np.uint64(p), gs, keys)
        frac = gs / info.phase_sequences
        if isinstance(phase.mask_ratio, float):
            ratios = np.full(n, phase.mask_ratio, np.float64)
        else:  # annealed linearly in the phase, per sequence
            ratios = phase.mask_ratio.start + (phase.mask_ratio.end - phase.mask_ratio.start) * frac
        labels = np.empty((n, L), np.int32)
        prev = numba.get_num_threads()
        numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))  # this thread only
        try:
            mask_tokens(input_ids, labels, keys, ratios, self._is_special, np.int32(tok.mask_id), self._random_pool)
        finally:
            numba.set_num_threads(prev)
        return Batch(input_ids, labels, cu, langs, info, rank, world_size)

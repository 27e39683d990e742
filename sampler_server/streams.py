"""Per-language token streams over memory-mapped shards, with a two-level shuffle.

Language i's stream is its documents, each wrapped as [CLS] tokens [SEP], back to back, epoch
after epoch. Epoch e orders the language's *blocks* (runs of consecutive documents of about
`block_tokens` tokens inside one shard) by a keyed permutation, and the documents inside each
block by another, so
- the index is O(blocks): per block its shard, first document, document count and tokens;
- reads stay sequential inside a block;
- no document repeats within an epoch, and every epoch is a different order.
Position T of the stream (a token offset, continuing across epochs and phases) is found by
T = e·S + o (S the wrapped tokens of one epoch), a binary search over the epoch's permuted
block offsets, then over the block's permuted document offsets. Both orders are cached (LRU).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curriculum.shards import ShardView, open_shard
from sampler_server.kernels.assemble import RUN_COLUMNS, RUN_SHARD, pack_row
from sampler_server.kernels.pack import keyed_permutation
from sampler_server.kernels.rng import mix64

DEFAULT_BLOCK_TOKENS = 1 << 20


def language_key_hash(key: str) -> int:
    """Stable 64-bit id of a language key (independent of its position in any table)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _mix(*parts: int) -> np.uint64:
    h = np.uint64(0x243F6A8885A308D3)
    for p in parts:
        h = np.uint64(mix64(h ^ np.uint64(p & 0xFFFFFFFFFFFFFFFF)))
    return h


class _LRU:
    def __init__(self, size: int):
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()
        self.last: tuple = (None, None)  # (key, value), one reference: read without the lock

    def get(self, key, make):
        last = self.last
        if last[0] == key:  # consecutive sequences of a language mostly stay in one block
            return last[1]
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                value = self.data[key]
                self.last = (key, value)
                return value
        value = make()  # pure: computing twice under a race gives the same value
        with self.lock:
            self.data[key] = value
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        self.last = (key, value)
        return value


class Runs:
    """Run descriptors of one batch for `assemble` (kernels/assemble.py): one uint64 row per run
    (columns RUN_COLUMNS), `row_first` the first run of each sequence, and `keep` the arrays the
    descriptors point into, held until the kernel has returned."""

    __slots__ = ("rows", "row_first", "keep")

    def __init__(self) -> None:
        self.rows: list[tuple[int, ...]] = []
        self.row_first: list[int] = [0]
        self.keep: list[np.ndarray] = []

    def end_row(self) -> None:
        self.row_first.append(len(self.rows))

    def table(self) -> np.ndarray:
        """The runs as the kernels take them: uint64[R, len(RUN_COLUMNS)]."""
        return np.array(self.rows, np.uint64).reshape(-1, len(RUN_COLUMNS))


def cut_blocks(wrapped: np.ndarray, target: int) -> np.ndarray:
    """Block boundaries (document indices, starting 0, ending n) grouping consecutive documents
    until a block holds at least `target` wrapped tokens."""
    n = wrapped.size
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    cum = np.cumsum(wrapped)
    marks = np.arange(target, cum[-1], target, dtype=np.int64)
    cuts = np.searchsorted(cum, marks, side="left") + 1
    return np.unique(np.concatenate(([0], cuts[cuts < n], [n]))).astype(np.int64)


@dataclass(frozen=True)
class BlockTable:
    shard: np.ndarray  # int32: shard slot (position in the language's shard list)
    doc0: np.ndarray  # int64: first document in the shard
    ndocs: np.ndarray  # int64
    tokens: np.ndarray  # int64: wrapped tokens in the block

    @property
    def stream_len(self) -> int:
        return int(self.tokens.sum())


class LanguageStream:
    """The endless shuffled token stream of one language."""

    def __init__(
        self,
        key: str,
        shard_paths: list[Path],
        seed: int,
        block_tokens: int = DEFAULT_BLOCK_TOKENS,
        cache: int = 64,
        opener: Callable[[Path], ShardView] = open_shard,
    ):
        self.key = key
        self.paths = list(shard_paths)
        self._open = opener  # e.g. a local cache in front of an object store
        self.seed = int(seed)
        self.block_tokens = int(block_tokens)
        self._hash = language_key_hash(key)
        self._shards: list[ShardView] | None = None
        self._table: BlockTable | None = None
        self._stream_len: int | None = None
        self._addrs: list[tuple[int, int]] = []  # per shard slot: addresses of (tokens, offsets)
        self._lock = threading.Lock()
        self._epochs = _LRU(cache)
        self._blocks = _LRU(cache * 8)
        # (epoch, block start and end in the epoch's order, block, docs, dcum, docs address) of the
        # block the last run was in.
        self._last: tuple = (-1, 0, 0, 0, None, None, 0)
        self._block_addrs: list[tuple[int, int]] = []  # per block: its shard's (tokens, offsets) addresses

    def _load(self) -> None:
        with self._lock:
            if self._table is not None:
                return
            shards = [self._open(p) for p in self.paths]
            parts = []
            for s, view in enumerate(shards):
                wrapped = np.diff(view.offsets) + 2
                bounds = cut_blocks(wrapped, self.block_tokens)
                cum = np.concatenate(([0], np.cumsum(wrapped)))
                parts.append((np.full(bounds.size - 1, s, np.int32), bounds[:-1], np.diff(bounds), cum[bounds[1:]] - cum[bounds[:-1]]))
            table = BlockTable(*(np.concatenate([p[k] for p in parts]) for k in range(4)))
            if table.stream_len == 0:
                raise ValueError(f"language {self.key}: its shards hold no documents")
            for view in shards:  # the assembly kernel reads shards through these addresses
                if view.tokens.dtype != np.uint32 or view.offsets.dtype != np.int64 or not (
                    view.tokens.flags.c_contiguous and view.offsets.flags.c_contiguous
                ):
                    raise ValueError(f"language {self.key}: a shard's arrays are not contiguous uint32 tokens / "
                                     "int64 offsets; rebuild it with `curriculum build`")
            self._addrs = [(v.tokens.ctypes.data, v.offsets.ctypes.data) for v in shards]
            self._block_addrs = [self._addrs[s] for s in table.shard.tolist()]
            self._shards, self._table = shards, table

    def token_at_least(self, limit: int) -> tuple[Path | str, int] | None:
        """(path, id) of the first loaded shard holding a token id >= `limit` (damage a size check
        misses, or a shard of another tokenizer). Reads every token: for the error path only."""
        for path, view in zip(self.paths, self._shards or ()):
            top = int(view.tokens.max()) if view.tokens.size else -1
            if top >= limit:
                return path, top
        return None

    @property
    def table(self) -> BlockTable:
        if self._table is None:
            self._load()
        return self._table

    @property
    def stream_len(self) -> int:
        if self._stream_len is None:
            self._stream_len = self.table.stream_len
        return self._stream_len

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(block permutation, cumulative wrapped tokens in that order, length n+1)."""

        def make():
            t = self.table
            perm = np.empty(t.tokens.size, np.int32)
            keyed_permutation(perm.size, _mix(self.seed, self._hash, epoch), perm)
            return perm, np.concatenate(([0], np.cumsum(t.tokens[perm])))

        return self._epochs.get(epoch, make)

    def block_order(self, epoch: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard-local document ids in shuffled order, cumulative wrapped tokens, length n+1)."""
        docs, dcum, _ = self._block_entry(epoch, block)
        return docs, dcum

    def _block_entry(self, epoch: int, block: int) -> tuple[np.ndarray, np.ndarray, int]:
        def make():
            docs, dcum = self._make_block_order(epoch, block)
            return docs, dcum, docs.ctypes.data

        return self._blocks.get((epoch, block), make)

    def _make_block_order(self, epoch: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        t = self.table
        n = int(t.ndocs[block])
        perm = np.empty(n, np.int32)
        keyed_permutation(n, _mix(self.seed, self._hash, epoch, block + 1), perm)
        wrapped = self._doc_lengths(block)[perm] + 2
        return (t.doc0[block] + perm).astype(np.int32), np.concatenate(([0], np.cumsum(wrapped)))

    def _doc_lengths(self, block: int) -> np.ndarray:
        """Token counts of the block's documents in storage order."""
        t = self.table
        offs = self._shards[t.shard[block]].offsets
        a = int(t.doc0[block])
        return np.diff(offs[a : a + int(t.ndocs[block]) + 1])

    def add_runs(self, start: int, n_tokens: int, runs: Runs) -> None:
        """Append to `runs` the runs that make stream tokens [start, start + n_tokens): position T
        is epoch e = T // S, then a binary search over the epoch's block order, then over the
        block's document order. The kernels (kernels/assemble.py) do the copying."""
        S = self.stream_len
        pos, T = 0, int(start)
        while pos < n_tokens:
            e, o = divmod(T, S)
            # A language's next sequence mostly lies in the block its last one ended in (blocks
            # are ~1M tokens): that block's entry is kept, and the epoch's search skipped. One
            # tuple, replaced whole, so threads racing read a consistent (if older) one.
            last = self._last
            if last[0] == e and last[1] <= o < last[2]:
                _, lo, hi, b, docs, dcum, addr = last
            else:
                perm, cum = self.epoch_order(e)
                j = int(cum.searchsorted(o, "right")) - 1
                b = int(perm[j])
                lo, hi = int(cum[j]), int(cum[j + 1])
                docs, dcum, addr = self._block_entry(e, b)
                self._last = (e, lo, hi, b, docs, dcum, addr)
            ob = o - lo
            d = int(dcum.searchsorted(ob, "right")) - 1
            n = min(n_tokens - pos, hi - o)
            self._add_run(b, docs, addr, d, ob - int(dcum[d]), n, runs)
            pos += n
            T += n

    def _add_run(self, block: int, docs: np.ndarray, docs_addr: int, d: int, od: int, n: int, runs: Runs) -> None:
        tok, off = self._block_addrs[block]
        runs.rows.append((RUN_SHARD, tok, off, docs_addr, 0, d, od, n, 0, 0))
        runs.keep.append(docs)  # the LRU may drop it while the kernel reads it

    def fill(self, start: int, out: np.ndarray, starts: np.ndarray, cls_id: int, sep_id: int) -> int:
        """Write stream tokens [start, start+len(out)) into `out` (int32, C-contiguous); document
        starts into `starts`. Returns how many document starts were written. (`Sampler.batch`
        does the same for a whole batch in one kernel call.)"""
        runs = Runs()
        self.add_runs(start, out.size, runs)
        return int(pack_row(runs.table(), np.int64(cls_id), np.int64(sep_id), out, starts))

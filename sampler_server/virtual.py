"""Virtual corpora: token streams generated deterministically on read, for full-scale dry runs.

A synthetic manifest (`curriculum synth`) lists languages with token and document counts but no
shards. `VirtualLanguageStream` gives each language a stream of exactly that many tokens (plus
[CLS]/[SEP] per document) cut into equal blocks; a block's document lengths are drawn from a
counter-based hash (exponential around the language's mean document length) and its tokens are
hashes of (language, block, document, position). Nothing of a 12 TB corpus is stored, yet the
real index, blend, shuffle, pack and mask code runs on it: the same `LanguageStream.add_runs`
walk and keyed permutations; only the hooks that touch shard data differ (document lengths, and
runs of generated tokens for the batch kernel).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

import curriculum.numba_boot  # noqa: F401  (before any kernel runs: numba without scipy.linalg)
from sampler_server.kernels.assemble import RUN_VIRTUAL
from sampler_server.kernels.pack import keyed_permutation
from sampler_server.kernels.rng import mix64
from sampler_server.streams import DEFAULT_BLOCK_TOKENS, BlockTable, LanguageStream, Runs, _mix

MAX_BLOCKS = 1 << 16  # per language: bounds the epoch permutation arrays of the largest languages
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True)
def virtual_doc_lengths(key: np.uint64, target: np.int64, mean: np.float64, out: np.ndarray) -> np.int64:
    """Fill out[:n] with document lengths (tokens, ≥ 1) whose wrapped sizes (length + 2) sum to
    exactly `target` (≥ 3); returns n. Lengths are exponential around `mean` from a hash of
    (key, k); the last document takes the remainder (merged into the previous one if < 3)."""
    n = 0
    used = np.int64(0)
    while True:
        h = mix64(key + np.uint64(n + 1) * _GOLDEN)
        u = (np.float64(h >> np.uint64(11)) + 0.5) / 9007199254740992.0  # (0, 1)
        length = max(np.int64(1), np.int64(-mean * math.log(u) + 0.5))
        if used + length + 2 >= target:
            rest = target - used
            if rest >= 3 or n == 0:
                out[n] = rest - 2
                n += 1
            else:
                out[n - 1] += rest
            return n
        out[n] = length
        used += length + 2
        n += 1


class VirtualLanguageStream(LanguageStream):
    """A language stream of `tokens` tokens in `docs` documents, generated on read."""

    def __init__(self, key: str, tokens: int, docs: int, seed: int, vocab: tuple[int, int], cache: int = 64):
        super().__init__(key, [], seed, DEFAULT_BLOCK_TOKENS, cache)
        self.tokens = int(tokens)
        self.docs = max(1, int(docs))
        self.mean = max(1.0, self.tokens / self.docs)
        self.vocab = vocab
        stream = self.tokens + 2 * self.docs
        self.block_tokens = max(DEFAULT_BLOCK_TOKENS, math.ceil(stream / MAX_BLOCKS))
        self._stream = stream

    def _load(self) -> None:
        with self._lock:
            if self._table is not None:
                return
            nb = max(1, math.ceil(self._stream / self.block_tokens))
            sizes = np.full(nb, self.block_tokens, np.int64)
            sizes[-1] = self._stream - (nb - 1) * self.block_tokens
            if sizes[-1] < 3 and nb > 1:  # a block holds at least one wrapped document
                sizes[-2] += sizes[-1]
                sizes = sizes[:-1]
                nb -= 1
            zeros = np.zeros(nb, np.int64)
            self._table = BlockTable(shard=zeros.astype(np.int32), doc0=zeros, ndocs=zeros, tokens=sizes)

    def _block_key(self, block: int) -> np.uint64:
        return _mix(0x5EED, self._hash, block + 1)  # content does not depend on the shuffle seed

    def _doc_lengths(self, block: int) -> np.ndarray:
        def make():
            target = int(self.table.tokens[block])
            buf = np.empty(target // 3 + 1, np.int64)
            n = virtual_doc_lengths(self._block_key(block), np.int64(target), np.float64(self.mean), buf)
            return buf[:n].copy()

        return self._blocks.get(("lengths", block), make)

    def _make_block_order(self, epoch: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        lens = self._doc_lengths(block)
        perm = np.empty(lens.size, np.int32)
        keyed_permutation(lens.size, _mix(self.seed, self._hash, epoch, block + 1), perm)
        return perm, np.concatenate(([0], np.cumsum(lens[perm] + 2)))

    def _add_run(self, block: int, docs: np.ndarray, docs_addr: int, d: int, od: int, n: int, runs: Runs) -> None:
        lens = self._doc_lengths(block)
        lo, hi = self.vocab
        runs.rows.append((RUN_VIRTUAL, lens.ctypes.data, 0, docs_addr, int(self._block_key(block)), d, od, n, lo, hi))
        runs.keep += (docs, lens)

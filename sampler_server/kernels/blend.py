"""Low-discrepancy blending: which language each sequence of a segment comes from.

This is Tijdeman's chairman-assignment problem (1980). For weights p (K >= 2, all > 0, sum 1)
we assign positions t = 1, 2, ... so that for every prefix t and language i

    |c_i(t) - p_i t| <= 1 - delta,   delta = 1 / (2K - 2),

the best bound possible for all weight vectors. With integer times the k-th occurrence of i must
fall in the window

    (k - 1 + delta) / p_i  <=  t_k  <=  (k - delta) / p_i + 1

(at t_k the count becomes k and needs k - p_i t_k <= 1 - delta; at t_k - 1 it is still k - 1
and needs p_i (t_k - 1) - (k - 1) <= 1 - delta). Between occurrences c_i - p_i t only falls, so
these two checks per occurrence are the whole condition. Earliest-deadline-first over the
languages whose window is open meets every window (Tijdeman's theorem); greedy
"largest deficit" rules do not (they exceed 1: see tests/sampler_server/test_blend.py).

Two heaps give O(log K) a position: `waiting` keyed by window-open time, `ready` keyed by
deadline; ties go to the lower language index in both, so the choice is a function of the keys
alone. The keys are a function of the count vector, hence the whole state at time t is the count
vector: restarting from the counts at a checkpoint reproduces the same continuation exactly,
which is what `BlendIndex` uses for random access.

A phase whose weights change (an annealed τ's segments, an amendment) is blended in pieces of
constant weights, and a piece does not start fresh: it continues from where the phase stands.
With c_i the count and F_i the cumulative target of the phase at the piece's start, the piece's
windows are those of the phase's deviation, i.e. of its own count shifted by the excess
e_i = c_i - F_i: occurrence c + 1 opens at ceil((c + e_i + delta) / p_i) and is due by
floor((c + e_i + 1 - delta) / p_i + 1) (piece-local times and counts). A language that fell
behind in one piece is caught up in the next, so deviations do not add up piece after piece.
Splitting a run of constant weights this way gives the same positions (the windows are the same
numbers, up to rounding). Across a change of weights the bound is no theorem here: Tijdeman's
holds for changing weights only when every deadline knows the future weights, and a piece must
not depend on the future (an amendment may change it), so each deadline assumes the current
weights go on. Measured in tests/sampler_server/test_blend.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from numba import njit

import curriculum.numba_boot  # noqa: F401  (before any kernel runs: numba without scipy.linalg)

# Hashed into every run id: batches of a run with several pieces in a phase changed when pieces
# stopped starting fresh, and those of capped phases when epochs began to count [CLS]/[SEP]
# (version 2); a resumed job must not mix the two.
BLEND_RULE_VERSION = 2


@njit(cache=True, nogil=True)
def _push(heap: np.ndarray, size: np.int64, v: np.int64) -> np.int64:
    """Insert v into the binary min-heap heap[:size]; returns the new size."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if v < heap[parent]:
            heap[i] = heap[parent]
            i = parent
        else:
            break
    heap[i] = v
    return size + 1


@njit(cache=True, nogil=True)
def _pop(heap: np.ndarray, size: np.int64) -> np.int64:
    """Remove and return the smallest value of heap[:size] (the caller decrements its size).

    Floyd's variant: walk the hole down along the smaller children to a leaf (a branch-free
    choice), then sift the last element up from there; fewer mispredicted branches than the
    textbook sift-down, same resulting set."""
    top = heap[0]
    size -= 1
    last = heap[size]
    i = 0
    child = 1
    while child + 1 < size:
        a = heap[child]
        b = heap[child + 1]
        child += b < a
        heap[i] = heap[child]
        i = child
        child = 2 * i + 1
    if child < size:
        heap[i] = heap[child]
        i = child
    while i > 0:
        parent = (i - 1) >> 1
        if last < heap[parent]:
            heap[i] = heap[parent]
            i = parent
        else:
            break
    heap[i] = last
    return top


@njit(cache=True, nogil=True)
def _clamp(x: np.float64, limit: np.int64) -> np.int64:
    """x (an integral float) as a time in [-limit, limit] (compared as a float: a tiny p gives
    times past int64; a language far behind, times before the piece)."""
    if x >= limit:
        return limit
    if x <= -limit:
        return -limit
    return np.int64(x)


@njit(cache=True, nogil=True)
def _open_time(c: np.int64, e: np.float64, p: np.float64, delta: np.float64, limit: np.int64) -> np.int64:
    """First integer time at which occurrence c + 1 may be placed: ceil((c + e + delta) / p)."""
    return _clamp(np.ceil((np.float64(c) + e + delta) / p), limit)


@njit(cache=True, nogil=True)
def _deadline(c: np.int64, e: np.float64, p: np.float64, one_minus_delta: np.float64, limit: np.int64) -> np.int64:
    """Last integer time for occurrence c + 1: floor((c + e + 1 - delta) / p + 1)."""
    return _clamp(np.floor((np.float64(c) + e + one_minus_delta) / p + 1.0), limit)


@njit(cache=True, nogil=True)
def blend_run(weights: np.ndarray, excess: np.ndarray, counts: np.ndarray, t0: np.int64, n: np.int64,
              out: np.ndarray) -> np.int64:
    """Write the languages of positions t0+1 .. t0+n into out[:n]; counts (int64[K]) is advanced.

    `t0` must equal counts.sum() (the positions already assigned in this piece); `excess`
    (float64[K]) is each language's count minus its target where the piece starts (zeros for a
    phase's first piece). Returns the number of times no window was open and the
    earliest-opening language was taken instead; 0 for constant weights unless floating point
    breaks the theorem (tests check it stays 0)."""
    K = weights.shape[0]
    if counts.shape[0] != K or excess.shape[0] != K:
        raise ValueError("blend_run: counts and excess must have one entry per weight")
    if out.shape[0] < n:
        raise ValueError("blend_run: out is shorter than n")
    if counts.sum() != t0:
        raise ValueError("blend_run: t0 must equal counts.sum() (positions already assigned)")
    if K == 1:
        for s in range(n):
            out[s] = 0
        counts[0] += n
        return 0
    delta = 1.0 / (2.0 * K - 2.0)
    one_minus_delta = 1.0 - delta
    # Heap entries pack (time << shift) | language: one integer compare orders by time, then by
    # the lower language index -- the tie-break -- with no indirect key loads.
    shift = 1
    while (1 << shift) < K:
        shift += 1
    lang_mask = (1 << shift) - 1
    # Times are packed below 2^62; any time at or past `limit` is stored as `limit`. A window
    # opening there is never reached (positions stop short of it), and deadlines there all fall
    # after every position served, so EDF meets every deadline that matters whatever order it
    # gives them. This is what lets a language with a vanishing share (a multiplier of 1e-12, a
    # weight of 1e-300) blend: it never comes up, as the bound requires.
    limit = np.int64(1) << (62 - shift)
    if t0 + n >= limit:
        raise ValueError("blend_run: positions past 2^(62 - ceil(log2 K)) cannot be packed; split the segment")
    waiting = np.empty(K, np.int64)  # (window-open time, language) of languages not yet open
    ready = np.empty(K, np.int64)  # (deadline, language) of languages whose window is open
    due = np.empty(K, np.int64)  # deadline of each language's next occurrence
    n_wait = 0
    n_ready = 0
    for i in range(K):
        due[i] = _deadline(counts[i], excess[i], weights[i], one_minus_delta, limit)
        opens = _open_time(counts[i], excess[i], weights[i], delta, limit)
        if opens <= t0 + 1:
            n_ready = _push(ready, n_ready, (due[i] << shift) | i)
        else:
            n_wait = _push(waiting, n_wait, (opens << shift) | i)
    fallbacks = 0
    for s in range(n):
        t = t0 + 1 + s
        # Invariant: ready holds exactly the languages whose window opens at or before t.
        while n_wait > 0 and (waiting[0] >> shift) <= t:
            i = _pop(waiting, n_wait) & lang_mask
            n_wait -= 1
            n_ready = _push(ready, n_ready, (due[i] << shift) | i)
        if n_ready > 0:
            i = _pop(ready, n_ready) & lang_mask
            n_ready -= 1
        else:
            i = _pop(waiting, n_wait) & lang_mask
            n_wait -= 1
            fallbacks += 1
        out[s] = i
        counts[i] += 1
        due[i] = _deadline(counts[i], excess[i], weights[i], one_minus_delta, limit)
        opens = _open_time(counts[i], excess[i], weights[i], delta, limit)
        # Entering ready now or via waiting at t + 1 gives the same set there: the choice
        # depends only on the keys.
        if opens <= t + 1:
            n_ready = _push(ready, n_ready, (due[i] << shift) | i)
        else:
            n_wait = _push(waiting, n_wait, (opens << shift) | i)
    return fallbacks


class BlendIndex:
    """Random access to the blend of one segment, through count checkpoints every `chunk` positions.

    Checkpoints are built lazily and cached (memory O(K x checkpoints built)); building a far one
    walks from the nearest cached one below it, so after the first build any access costs
    O(chunk log K). The counts where the last few slices ended are kept too (`RECENT` of them):
    a trainer asks for step after step, and each rank's slice starts where the previous rank's
    ended, so a slice usually starts exactly at a known count vector and costs O(n log K), not a
    walk of up to `chunk` positions from the checkpoint. Thread-safe: the server calls it from a
    thread pool."""

    RECENT = 32  # count vectors kept at recent slice ends (K int64 each)

    def __init__(self, weights: np.ndarray, chunk: int = 1 << 16,
                 excess: np.ndarray | Callable[[], np.ndarray] | None = None, tag: str = ""):
        """`excess`: see `blend_run` (None: zeros). A callable is called once, on first use: for a
        later piece of a phase it needs the counts at the end of the piece before, a walk that
        only a request reaching this piece should pay. `tag`: an opaque name of what the excess
        comes from (the sampler names index files by weights and tag)."""
        w = np.ascontiguousarray(weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"BlendIndex: weights must be a non-empty 1-D array, got shape {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError("BlendIndex: weights must be finite and > 0; drop zero-weight languages before blending")
        if abs(w.sum() - 1.0) > 1e-9:
            raise ValueError(f"BlendIndex: weights must sum to 1 (got {w.sum()!r}); pass w / w.sum()")
        if chunk < 1:
            raise ValueError(f"BlendIndex: chunk must be >= 1, got {chunk}")
        self.weights = w
        self.weights.flags.writeable = False
        self.chunk = int(chunk)
        self.tag = tag
        self._excess_arg = excess
        self._excess: np.ndarray | None = None
        self._excess_lock = threading.Lock()
        self._checkpoints: dict[int, np.ndarray] = {0: np.zeros(w.size, np.int64)}
        self._recent: dict[int, np.ndarray] = {}  # position -> counts there (read-only), oldest first
        self._matrix: np.ndarray | None = None  # checkpoints 0..J as rows (e.g. memory-mapped from disk)
        self._lock = threading.Lock()

    @property
    def n_languages(self) -> int:
        return int(self.weights.size)

    @property
    def excess(self) -> np.ndarray:
        """Each language's count minus its target where this piece starts (float64[K], read-only)."""
        e = self._excess
        if e is not None:
            return e
        with self._excess_lock:  # not self._lock: a checkpoint walk holds that one and needs this
            if self._excess is None:
                arg = self._excess_arg() if callable(self._excess_arg) else self._excess_arg
                e = np.zeros(self.weights.size) if arg is None else np.array(arg, dtype=np.float64)
                if e.shape != self.weights.shape or not np.all(np.isfinite(e)):
                    raise ValueError(f"BlendIndex: excess must be {self.weights.size} finite numbers, got {e!r}")
                e.flags.writeable = False
                self._excess = e
                self._excess_arg = None  # a callable may hold the pieces before: not needed any more
            return self._excess

    def attach(self, matrix: np.ndarray) -> None:
        """Use precomputed checkpoints: row j = counts after j * chunk positions (int64[J+1, K])."""
        if matrix.ndim != 2 or matrix.shape[1] != self.weights.size or matrix.dtype != np.int64:
            raise ValueError(f"BlendIndex.attach: expected int64[J+1, {self.weights.size}], got {matrix.dtype}{list(matrix.shape)}")
        # Row j sums to j * chunk. Checked on a few rows, not all: the matrix may be a large
        # memory-mapped file, and reading it whole here would cost what attaching saves.
        J = matrix.shape[0]
        probe = np.unique(np.array([0, 1, J // 2, J - 2, J - 1], dtype=np.int64).clip(0, J - 1))
        if not np.array_equal(np.asarray(matrix[probe]).sum(axis=1), probe * self.chunk):
            raise ValueError(f"BlendIndex.attach: the checkpoints were not built with chunk={self.chunk}; rebuild the index")
        self._matrix = matrix

    def checkpoint_matrix(self, positions: int) -> np.ndarray:
        """Checkpoints 0..positions // chunk as one int64 matrix (building what is missing)."""
        last = int(positions) // self.chunk
        self._checkpoint(last)
        return np.stack([self._checkpoint(j) for j in range(last + 1)])

    def _checkpoint(self, j: int) -> np.ndarray:
        """Counts after j * chunk positions (cached; read-only)."""
        m = self._matrix
        if m is not None and j < m.shape[0]:
            return m[j]
        hit = self._checkpoints.get(j)  # cached: no lock, so readers never wait behind a long walk
        if hit is not None:
            return hit
        with self._lock:
            hit = self._checkpoints.get(j)
            if hit is not None:
                return hit
            below = max(k for k in self._checkpoints if k < j)
            if m is not None and m.shape[0] - 1 > below:
                below = m.shape[0] - 1
                self._checkpoints[below] = np.array(m[below])
            counts = self._checkpoints[below].copy()
            scratch = np.empty(self.chunk, np.int32)
            for k in range(below + 1, j + 1):
                blend_run(self.weights, self.excess, counts, (k - 1) * self.chunk, self.chunk, scratch)
                snap = counts.copy()
                snap.flags.writeable = False
                self._checkpoints[k] = snap
            return self._checkpoints[j]

    def _nearest(self, g: int) -> tuple[int, np.ndarray]:
        """(p, a fresh copy of the counts at p) for the known position p <= g nearest to g: the
        checkpoint below g or a recent slice end between it and g."""
        p = g - g % self.chunk
        base = self._checkpoint(p // self.chunk)
        for q, counts in self._recent.items():  # never mutated: writers swap in a new dict
            if p < q <= g:
                p, base = q, counts
        return p, base.copy()

    def _remember(self, g: int, counts: np.ndarray) -> None:
        if g % self.chunk == 0 or g in self._recent:
            return
        snap = counts.copy()
        snap.flags.writeable = False
        with self._lock:  # copy-on-write: readers iterate the dict they found, unlocked
            recent = dict(self._recent)
            recent[g] = snap
            while len(recent) > self.RECENT:
                del recent[next(iter(recent))]
            self._recent = recent

    def _walk_to(self, g: int) -> np.ndarray:
        """Counts at g (a fresh array), walked from the nearest known position below it."""
        p, counts = self._nearest(g)
        if g > p:
            blend_run(self.weights, self.excess, counts, p, g - p, np.empty(g - p, np.int32))
        return counts

    def counts_at(self, g: int) -> np.ndarray:
        """Count of each language among the first g positions (int64[K], a fresh array)."""
        g = int(g)
        if g < 0:
            raise ValueError(f"BlendIndex.counts_at: g must be >= 0, got {g}")
        return self._walk_to(g)

    def languages(self, start: int, n: int) -> np.ndarray:
        """Languages (int32) of the 0-based positions start .. start + n - 1."""
        start, n = int(start), int(n)
        if start < 0 or n < 0:
            raise ValueError(f"BlendIndex.languages: start ({start}) and n ({n}) must be >= 0")
        return self.slice(start, n)[1]

    def slice(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(counts before `start`, languages of positions start .. start + n - 1) in one walk
        from the nearest known position below `start`."""
        start, n = int(start), int(n)
        if start < 0 or n < 0:
            raise ValueError(f"BlendIndex.slice: start ({start}) and n ({n}) must be >= 0")
        counts = self._walk_to(start)
        before = counts.copy()
        out = np.empty(n, np.int32)
        blend_run(self.weights, self.excess, counts, start, n, out)
        self._remember(start + n, counts)
        return before, out


def adaptive_chunk(positions: int, n_languages: int, budget_bytes: int = 64 << 20, floor: int = 4096) -> int:
    """Checkpoint spacing: as dense as `floor`, but sparse enough that all checkpoints of a
    segment of `positions` fit in `budget_bytes` (int64 counts per language each)."""
    need = positions * n_languages * 8 / budget_bytes
    chunk = floor
    while chunk < need:
        chunk *= 2
    return chunk

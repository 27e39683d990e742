"""Counter-based random numbers for the sampler: every draw is a hash of (key, counter).

Why counter-based and not a stateful generator: a draw for token j of sequence g is
`token_hash(sequence_key(seed, phase, g), j)`, a pure function of its coordinates. No state is
carried from one sequence (or token) to the next, so the bytes of a batch do not depend on how the
global batch is split across ranks (world size), into sub-batches, or across threads, nor on which
requests a server answered before. A stateful generator (numpy's Generator, torch's) would make
results depend on the order and the split in which draws are taken.

The mixer is splitmix64's finalizer (Steele, Lea & Flood 2014; Stafford's "Mix13" constants): a
bijection on uint64 with full avalanche, cheap enough for one call per token. All arithmetic wraps
mod 2**64; every constant is a uint64 so numba never promotes to float64 (uint64 op int64 does).
"""

from __future__ import annotations

import numpy as np
from numba import njit

import curriculum.numba_boot  # noqa: F401  (before any kernel runs: numba without scipy.linalg)

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: the Weyl-sequence increment
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_ONE = np.uint64(1)
# Distinct odd tags keep the seed, phase and sequence coordinates in separate "lanes" of the key.
_TAG_SEED = np.uint64(0x243F6A8885A308D3)  # digits of pi
_TAG_PHASE = np.uint64(0x13198A2E03707345)
_TAG_SEQ = np.uint64(0xA4093822299F31D1)
_U64 = (1 << 64) - 1


@njit(cache=True, nogil=True)
def mix64(x: np.uint64) -> np.uint64:
    """splitmix64 finalizer: a uint64 -> uint64 bijection with full avalanche."""
    x = np.uint64(x)
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(cache=True, nogil=True)
def sequence_key_nb(seed: np.uint64, phase: np.uint64, g: np.uint64) -> np.uint64:
    """Key of sequence g of `phase` under `seed` (numba version; all arguments uint64).

    Nested mixing: for fixed (seed, phase) the map g -> key is a bijection (mix64 of an
    injective affine function of g), so two sequences of a phase never share a key."""
    a = mix64(np.uint64(seed) * _TAG_SEED + GOLDEN)
    b = mix64(a ^ (np.uint64(phase) * _TAG_PHASE + GOLDEN))
    return mix64(b + np.uint64(g) * _TAG_SEQ)


def sequence_key(seed: int, phase: int, g: int) -> np.uint64:
    """Key of sequence g of `phase` under `seed` (seed may be any int; taken mod 2**64)."""
    if phase < 0 or g < 0:
        raise ValueError(f"sequence_key: phase ({phase}) and g ({g}) must be >= 0")
    return sequence_key_nb(np.uint64(int(seed) & _U64), np.uint64(phase), np.uint64(g))


@njit(cache=True, nogil=True)
def sequence_keys(seed: np.uint64, phase: np.uint64, gs: np.ndarray, out: np.ndarray) -> None:
    """out[i] = sequence_key(seed, phase, gs[i]) for a batch of sequence indices (uint64 out)."""
    for i in range(gs.shape[0]):
        out[i] = sequence_key_nb(seed, phase, np.uint64(gs[i]))


@njit(cache=True, nogil=True)
def token_hash(key: np.uint64, pos: np.int64) -> np.uint64:
    """The 64 random bits of token `pos` (0-based) of the sequence with `key`."""
    return mix64(np.uint64(key) + (np.uint64(pos) + _ONE) * GOLDEN)

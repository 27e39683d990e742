"""MLM masking throughput: our numba kernels vs HF's DataCollatorForLanguageModeling, plain numpy,
and memcpy bandwidth, all measured in this run on the same batch shapes.

Two of ours: `mask_tokens` (masking a packed batch in place) and `assemble`, the kernel
`Sampler.batch` runs: pack every row from a shard's documents (wrapped in [CLS] ... [SEP]),
mask it, and write cu_seqlens, in one call.

    NUMBA_THREADING_LAYER=omp python benchmarks/bench_mask.py [--reps 50] [--big]

Prints tokens/s for each method and shape, then the ratios ours/HF, ours/numpy and ours/memcpy
(memcpy copies input_ids into labels, the same arrays; a 2-thread row is compared with the faster
of memcpy on one and on two threads; the ratio is given in tokens/s and in bytes/s, where the
kernel moves 12 bytes a token and memcpy 8).
Each rep of ours masks a new batch of sequence keys: with one key set repeated, the branch
predictor learns the masks and flatters any kernel that branches on them.
`--big` adds a full mmBERT global batch (4,608 x 1,024), which no longer fits in cache.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
# Pin OpenMP threads to distinct cores. Unpinned, on a 2-vCPU VM the worker thread of the first
# 2-thread region sometimes lands on the caller's CPU and stays there; every parallel call then
# waits out a scheduler slice (~4 ms) for the whole process (seen in about half of the runs).
os.environ.setdefault("OMP_PROC_BIND", "spread")

import numba  # noqa: E402
import numpy as np  # noqa: E402

from sampler_server.kernels.assemble import RUN_COLUMNS, RUN_SHARD, assemble  # noqa: E402
from sampler_server.kernels.mask import IGNORE_INDEX, free_range, mask_tokens, pool_run  # noqa: E402
from sampler_server.kernels.rng import sequence_key  # noqa: E402

VOCAB = 256_000
RATIO = 0.3
# Gemma 2 ids: <pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4 (the mmBERT tokenizer).
PAD, EOS, BOS, UNK, MASK = 0, 1, 2, 3, 4
SPECIAL = [PAD, EOS, BOS, UNK, MASK]
KEY_SETS = 64  # distinct batches of sequence keys the reps cycle through


def make_batch(B: int, L: int, seed: int = 0) -> np.ndarray:
    """Random int32 tokens with a BOS ... EOS document about every 500 tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(len(SPECIAL), VOCAB, size=(B, L), dtype=np.int32)
    ids[:, ::500] = BOS
    ids[:, 499::500] = EOS
    return ids


def shard_runs(B: int, L: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A shard of documents of 498 tokens (500 wrapped) and the runs that pack its stream into
    B rows of L: (runs table, row_first, the arrays the table points into)."""
    rng = np.random.default_rng(seed)
    n_docs = B * L // 500 + 2
    tokens = rng.integers(len(SPECIAL), VOCAB, size=n_docs * 498, dtype=np.uint32)
    offsets = np.arange(0, n_docs * 498 + 1, 498, dtype=np.int64)
    order = rng.permutation(n_docs).astype(np.int32)
    rows = [(RUN_SHARD, tokens.ctypes.data, offsets.ctypes.data, order.ctypes.data, 0, r * L // 500, r * L % 500, L, 0, 0)
            for r in range(B)]
    return np.array(rows, np.uint64).reshape(-1, len(RUN_COLUMNS)), np.arange(B + 1, dtype=np.int64), [tokens, offsets, order]


def timed(fn: Callable[[], None], setup: Callable[[], None], reps: int) -> float:
    """Best seconds of fn() over reps runs, each after an untimed setup().

    Best-of, not median: on a small shared machine a 2-thread run that loses a core to another
    process waits a whole scheduler slice (~4 ms), which says nothing about the code."""
    times = []
    for _ in range(reps):
        setup()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def hf_collator():
    """DataCollatorForLanguageModeling over a WordLevel tokenizer built in memory (no download)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    names = {PAD: "<pad>", EOS: "<eos>", BOS: "<bos>", UNK: "<unk>", MASK: "<mask>"}
    vocab = {names.get(i, f"t{i}"): i for i in range(VOCAB)}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
        pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>", mask_token="<mask>",
    )  # fmt: skip
    assert tok.mask_token_id == MASK and len(tok) == VOCAB
    return DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=RATIO)


def numpy_generator_mask(ids: np.ndarray, is_special: np.ndarray, pool: np.ndarray, rng) -> np.ndarray:
    """The usual numpy way: uniform draws from a Generator, boolean masks, fancy indexing."""
    selected = (rng.random(ids.shape) < RATIO) & ~is_special[ids]
    labels = np.where(selected, ids, IGNORE_INDEX).astype(np.int32)
    action = rng.random(ids.shape)
    ids[selected & (action < 0.8)] = MASK
    rnd = selected & (action >= 0.8) & (action < 0.9)
    ids[rnd] = pool[rng.integers(0, pool.size, int(rnd.sum()))]
    return labels


def bench_shape(B: int, L: int, reps: int, collator) -> dict[str, float]:
    import torch

    n = B * L
    base = make_batch(B, L)
    is_special = np.zeros(VOCAB, np.bool_)
    is_special[SPECIAL] = True
    pool = np.flatnonzero(~is_special).astype(np.int32)
    run = pool_run(pool)  # once per vocabulary, as the Sampler does
    free = free_range(is_special)
    # Each rep masks other sequences (new keys), as consecutive steps do: with one key set the
    # CPU's branch predictor learns the batch's mask pattern over the reps (seen: ~1.6x faster
    # than with fresh keys before the kernels stopped branching on it).
    key_sets = [np.array([sequence_key(0, 0, g) for g in range(i * B, (i + 1) * B)], np.uint64) for i in range(KEY_SETS)]
    keys = key_sets[0].copy()
    rep = [0]

    def next_keys() -> None:
        rep[0] += 1
        np.copyto(keys, key_sets[rep[0] % KEY_SETS])
    ratios = np.full(B, RATIO)
    ids = np.empty_like(base)
    labels = np.empty_like(base)
    out: dict[str, float] = {}

    def restore() -> None:
        np.copyto(ids, base)
        next_keys()

    for threads in (1, 2):
        numba.set_num_threads(threads)
        restore()
        mask_tokens(ids, labels, keys, ratios, is_special, np.int32(MASK), pool, run, free)  # warm-up (compiled/cached)
        t = timed(lambda: mask_tokens(ids, labels, keys, ratios, is_special, np.int32(MASK), pool, run, free), restore, reps)
        out[f"ours, mask, {threads} thread{'s' if threads > 1 else ''}"] = n / t

    runs, row_first, keep = shard_runs(B, L)
    asm = lambda: assemble(runs, row_first, np.int64(BOS), np.int64(EOS), ids, labels, keys, ratios, is_special,  # noqa: E731
                           np.int32(MASK), pool, run, free)
    for threads in (1, 2):
        numba.set_num_threads(threads)
        asm()
        # No restore: assemble writes every byte of ids and labels from the shard, so it is timed
        # back to back, like memcpy: both in their best cache state. Restoring ids on the main
        # thread before each rep (done up to session 11) left half the rows' lines dirty in the
        # other core's cache (on two threads it took 64 x 1,024 from 0.36x to 0.32x).
        t = timed(asm, next_keys, reps)
        out[f"ours, pack + mask, {threads} thread{'s' if threads > 1 else ''}"] = n / t
    del keep

    rng = np.random.default_rng(0)
    numpy_generator_mask(ids, is_special, pool, rng)
    t = timed(lambda: numpy_generator_mask(ids, is_special, pool, rng), restore, reps)
    out["numpy (Generator draws)"] = n / t

    # HF works on int64 tensors (its random ids come from torch.randint(dtype=long)); it is given
    # the precomputed special_tokens_mask so no per-token Python runs.
    base_t = torch.from_numpy(base.astype(np.int64))
    special_t = torch.from_numpy(is_special[base])
    box: dict[str, torch.Tensor] = {}

    def hf_setup() -> None:
        box["x"] = base_t.clone()

    hf_reps = max(3, min(reps, int(2e7 // n)))  # HF takes ~0.2 s a rep at 4,608 x 1,024: fewer reps there
    print(f"{B}x{L}: ours best of {reps}, HF best of {hf_reps}", flush=True)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for _ in range(3):  # warm-up: torch's first calls are several times slower
            hf_setup()
            collator.torch_mask_tokens(box["x"], special_tokens_mask=special_t)
        t = timed(lambda: collator.torch_mask_tokens(box["x"], special_tokens_mask=special_t), hf_setup, hf_reps)
        out[f"HF torch_mask_tokens, {threads} thread{'s' if threads > 1 else ''}"] = n / t

    # memcpy on the kernel's own arrays: copy input_ids into labels (reads 4 B and writes 4 B a
    # token; the kernels read 4 and write 8). On one thread np.copyto; on two, each thread copies
    # its rows (on this 2-vCPU VM that is 1.03-1.2x one thread's rate): the 2-thread kernels are
    # held to the bandwidth two threads get.
    # Back to back, with no setup (a restore on the main thread would cost the 2-thread copy
    # the same cross-core traffic as it did assemble).
    restore()
    t = timed(lambda: np.copyto(labels, ids), lambda: None, reps)
    out[MEMCPY["1 thread"]] = n / t
    numba.set_num_threads(2)
    _copy_rows(labels, ids)
    t = timed(lambda: _copy_rows(labels, ids), lambda: None, reps)
    out[MEMCPY["2 threads"]] = n / t
    return out


MEMCPY = {"1 thread": "memcpy (np.copyto ids -> labels, int32)", "2 threads": "memcpy, 2 threads (rows split)"}


@numba.njit(nogil=True, parallel=True)
def _copy_rows(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[:] = src[:], rows dealt round-robin to two threads (a vectorized copy loop per row)."""
    for c in numba.prange(2):
        for b in range(c, src.shape[0], 2):
            dst[b, :] = src[b, :]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--big", action="store_true", help="also a 4,608 x 1,024 batch (past the caches)")
    args = ap.parse_args()

    shapes = [(64, 1024), (8, 8192)] + ([(4608, 1024)] if args.big else [])
    collator = hf_collator()
    print(
        f"vocab {VOCAB}, mask ratio {RATIO}, int32 tokens; numba {numba.__version__} "
        f"({numba.config.THREADING_LAYER} layer), {os.cpu_count()} CPUs; best of {args.reps} reps; "
        f"load average before: {os.getloadavg()[0]:.2f} (2-thread rows need the other cores idle); "
        f"OMP_PROC_BIND={os.environ['OMP_PROC_BIND']}"
    )
    results = {s: bench_shape(*s, reps=args.reps, collator=collator) for s in shapes}
    names = list(results[shapes[0]])
    header = f"{'method (Mtokens/s)':44s}" + "".join(f"{f'{B}x{L}':>12s}" for B, L in shapes)
    print(header)
    print("-" * len(header))
    for name in names:
        print(f"{name:44s}" + "".join(f"{results[s][name] / 1e6:12.1f}" for s in shapes))
    print("-" * len(header))
    for kind, short in (("mask", "mask"), ("pack + mask", "pack+mask")):
        for threads in ("1 thread", "2 threads"):
            ours = f"ours, {kind}, {threads}"
            hf = f"HF torch_mask_tokens, {threads}"
            for label, peer in (("HF", hf), ("numpy", "numpy (Generator draws)")):
                row = f"ratio {short} ({threads}) / {label}"
                print(f"{row:44s}" + "".join(f"{results[s][ours] / results[s][peer]:12.2f}" for s in shapes))
            # memcpy's best rate on up to as many threads as ours (two threads copy 256 KB slower
            # than one here). Bandwidth: the kernels move 12 bytes a token (mask: read ids, write
            # ids and labels; pack + mask: read the shard, write ids and labels), memcpy 8.
            up_to = list(MEMCPY.values())[: 1 if threads == "1 thread" else 2]
            best = {s: max(results[s][m] for m in up_to) for s in shapes}
            for label, scale in (("tokens", 1.0), ("bytes/s", 1.5)):
                row = f"ratio {short} ({threads}) / memcpy, {label}"
                print(f"{row:44s}" + "".join(f"{scale * results[s][ours] / best[s]:12.2f}" for s in shapes))


if __name__ == "__main__":
    main()

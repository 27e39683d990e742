"""The batch kernel (pack + mask in one call over a table of runs) equals the row-by-row path it
replaced: `LanguageStream.fill` per row, then `mask_tokens` over the batch, then cu_seqlens from
the rows' document starts. Shard corpora, virtual corpora, rows that cross blocks and epochs.
(The copy itself, `copy_run`, is held to a numpy reference in test_pack.py, and `fill` to
sequential reads of the stream in test_streams.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import RECIPES, SCALED_MMBERT
from curriculum.randomcorpus import write_random_corpus
from curriculum.recipe import load_recipe, parse_recipe
from sampler_server.kernels.assemble import assemble
from sampler_server.kernels.mask import mask_tokens
from sampler_server.kernels.rng import sequence_keys
from sampler_server.sampler import Sampler
from sampler_server.streams import LanguageStream, Runs


def rowwise(s: Sampler, step: int, rank: int = 0, world: int = 1):
    """The reference: what Sampler.batch computed before the batch kernel."""
    st = s._state
    reg = st.regimes[st.regime_index(step)]
    info = reg.timeline.locate(step)
    g0, g1 = reg.timeline.rank_slice(info, rank, world)
    p, L, n = info.phase_index, info.seq_len, g1 - g0
    langs, starts = s.assign(p, g0, g1)
    tok = s.tokenizer
    ids = np.empty((n, L), np.int32)
    doc_starts = np.empty(L, np.int32)
    bounds = []
    for r in range(n):
        m = s._streams[langs[r]].fill(int(starts[r]), ids[r], doc_starts, tok.cls_id, tok.sep_id)
        row = doc_starts[:m]
        if m == 0 or row[0] != 0:
            row = np.concatenate(([0], row))
        bounds.append(row.astype(np.int64) + r * L)
    bounds.append(np.array([n * L], np.int64))
    cu = np.concatenate(bounds).astype(np.int32)
    phase = reg.recipe.phases[p]
    gs = np.arange(g0, g1, dtype=np.int64)
    keys = np.empty(n, np.uint64)
    sequence_keys(np.uint64(s.seed), np.uint64(p), gs, keys)
    if isinstance(phase.mask_ratio, float):
        ratios = np.full(n, phase.mask_ratio)
    else:
        ratios = phase.mask_ratio.start + (phase.mask_ratio.end - phase.mask_ratio.start) * (gs / info.phase_sequences)
    labels = np.empty_like(ids)
    mask_tokens(ids, labels, keys, ratios, s._is_special, np.int32(tok.mask_id), s._random_pool, s._pool_run, s._free_range)
    return ids, labels, cu


def same(batch, ref) -> bool:
    ids, labels, cu = ref
    return (batch.input_ids.tobytes() == ids.tobytes() and batch.labels.tobytes() == labels.tobytes()
            and batch.cu_seqlens.tobytes() == cu.tobytes())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(11)
    # Small languages wrap many epochs per phase; 900-token blocks make 1,024-token rows cross
    # blocks and 8,192-token rows cross many.
    sizes = {f"l{i:02d}_Latn": int(s) for i, s in enumerate(np.exp(rng.uniform(np.log(500), np.log(2e5), 16)))}
    return write_random_corpus(tmp_path_factory.mktemp("asm") / "m", sizes, seed=5, mean_doc_tokens=120, shard_tokens=30_000)


@pytest.mark.parametrize("block_tokens", [900, 1 << 20])
def test_batches_equal_the_rowwise_path(corpus, block_tokens):
    s = Sampler(corpus, parse_recipe(SCALED_MMBERT), seed=3, chunk=64, block_tokens=block_tokens)
    rng = np.random.default_rng(0)
    steps = [0, 1, 39, 40, 41, 49, 50, 55, *rng.integers(0, 56, 6).tolist()]
    for step in steps:
        for rank, world in ((0, 1), (1, 2), (3, 4)):
            assert same(s.batch(step, rank, world), rowwise(s, step, rank, world)), (step, rank, world)


def test_two_threads_give_the_same_bytes(corpus):
    one = Sampler(corpus, parse_recipe(SCALED_MMBERT), seed=3, chunk=64, block_tokens=900)
    two = Sampler(corpus, parse_recipe(SCALED_MMBERT), seed=3, chunk=64, block_tokens=900, threads=2)
    for step in (2, 44, 52):
        a, b = one.batch(step), two.batch(step)
        assert a.input_ids.tobytes() == b.input_ids.tobytes() and a.cu_seqlens.tobytes() == b.cu_seqlens.tobytes()


def test_virtual_corpus_batches_equal_the_rowwise_path(synth_1833):
    r = load_recipe(RECIPES / "mmbert.toml")
    small = r.model_copy(update={"phases": [p.model_copy(update={"tokens": p.tokens / 1e4, "batch_warmup": None}) for p in r.phases]})
    s = Sampler(synth_1833, small, seed=1)
    for step in (0, 7, *s.timeline.phase_start[1:], s.total_steps - 1):
        assert same(s.batch(step, 2, 8), rowwise(s, step, 2, 8)), step


def test_runs_that_do_not_fill_a_row_are_refused(corpus):
    s = Sampler(corpus, parse_recipe(SCALED_MMBERT), seed=3, chunk=64)
    stream = next(x for x in s._streams if isinstance(x, LanguageStream))
    tok = s.tokenizer

    def call(n_tokens: int, L: int):
        runs = Runs()
        stream.add_runs(0, n_tokens, runs)
        runs.end_row()
        table = runs.table()
        ids, labels = np.empty((1, L), np.int32), np.empty((1, L), np.int32)
        return assemble(table, np.array(runs.row_first, np.int64), np.int64(tok.cls_id), np.int64(tok.sep_id), ids, labels,
                        np.zeros(1, np.uint64), np.full(1, 0.3), s._is_special, np.int32(tok.mask_id), s._random_pool,
                        s._pool_run, s._free_range)

    assert call(64, 64)[-1] == 64
    with pytest.raises(ValueError, match="do not add up"):
        call(60, 64)
    with pytest.raises(ValueError, match="do not add up"):
        call(70, 64)


def test_the_batch_kernel_loads_from_the_on_disk_cache(corpus, tmp_path):
    # A kernel whose cache key changes from process to process (e.g. a closure over a dispatcher)
    # recompiles in every server and trainer process: seconds before the first batch.
    import os
    import subprocess
    import sys

    code = (
        "import sys; from curriculum.recipe import parse_recipe; from conftest import SCALED_MMBERT\n"
        "from sampler_server.sampler import Sampler; from sampler_server.kernels.assemble import assemble\n"
        f"Sampler({str(corpus)!r}, parse_recipe(SCALED_MMBERT), seed=3, chunk=64).batch(1)\n"
        "print(sum(assemble.stats.cache_misses.values()), sum(assemble.stats.cache_hits.values()))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=300)
            for _ in range(2)]
    first, second = (tuple(map(int, r.stdout.split()[-2:])) for r in runs)
    assert first == (1, 0)  # compiled and saved
    assert second == (0, 1)  # loaded

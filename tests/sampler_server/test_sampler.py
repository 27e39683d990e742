"""Sampler: a pure function of (recipe, manifest, seed, step, rank, world size)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SCALED_MMBERT
from curriculum.randomcorpus import RANDOM_TOKENIZER, write_random_corpus
from curriculum.recipe import parse_recipe
from curriculum.schedule import ScheduleError
from sampler_server.sampler import Sampler



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(1)
    sizes = {f"l{i:02d}_Latn": int(s) for i, s in enumerate(np.exp(rng.uniform(np.log(3e3), np.log(4e5), 20)))}
    return write_random_corpus(tmp_path_factory.mktemp("corpus") / "m", sizes, seed=3, mean_doc_tokens=150, shard_tokens=60_000)


@pytest.fixture(scope="module")
def sampler(corpus):
    return Sampler(corpus, parse_recipe(SCALED_MMBERT), seed=7, chunk=64, block_tokens=4096)


def originals(b):
    return np.where(b.labels != -100, b.labels, b.input_ids)


def test_phase_boundary_changes_sequence_length(sampler):
    assert [sampler.schedule(s).seq_len for s in (0, 39, 40, 49, 50, 55)] == [1024, 1024, 8192, 8192, 8192, 8192]
    assert [sampler.schedule(s).phase for s in (39, 40, 50)] == ["pretrain", "midtrain", "decay"]
    b39, b40 = sampler.batch(39), sampler.batch(40)
    assert b39.input_ids.shape == (8, 1024) and b40.input_ids.shape == (8, 8192)
    assert sampler.schedule(55).lr_factor < sampler.schedule(50).lr_factor == 1.0
    with pytest.raises(ScheduleError, match="past the last phase"):
        sampler.batch(56)


def test_same_global_batch_for_every_world_size_and_rebuild(corpus, sampler):
    for step in (0, 17, 40, 53):
        ref = sampler.batch(step)
        for w in (2, 4, 8):
            parts = [sampler.batch(step, r, w) for r in range(w)]
            assert np.concatenate([p.input_ids for p in parts]).tobytes() == ref.input_ids.tobytes()
            assert np.concatenate([p.labels for p in parts]).tobytes() == ref.labels.tobytes()
            assert np.concatenate([p.lang for p in parts]).tobytes() == ref.lang.tobytes()
    again = Sampler(corpus, parse_recipe(SCALED_MMBERT), seed=7, chunk=64, block_tokens=4096)
    for step in (53, 3, 41):  # random order: no hidden state
        a, b = sampler.batch(step, 1, 2), again.batch(step, 1, 2)
        assert a.input_ids.tobytes() == b.input_ids.tobytes() and a.labels.tobytes() == b.labels.tobytes()
        assert a.cu_seqlens.tobytes() == b.cu_seqlens.tobytes()
    other = Sampler(corpus, parse_recipe(SCALED_MMBERT), seed=8, chunk=64, block_tokens=4096)
    assert other.batch(3).input_ids.tobytes() != sampler.batch(3).input_ids.tobytes()
    assert other.build_id != sampler.build_id


def test_build_id_names_the_masking_rule(corpus, sampler, monkeypatch):
    # Masks of another rule version are other batches: a checkpoint or a replica on that rule
    # must see another build id (the trainer then stops instead of mixing masks).
    import sampler_server.sampler as sampler_module

    monkeypatch.setattr(sampler_module, "MASK_RULE_VERSION", sampler_module.MASK_RULE_VERSION + 1)
    bumped = Sampler(corpus, parse_recipe(SCALED_MMBERT), seed=7, chunk=64, block_tokens=4096)
    assert bumped.build_id != sampler.build_id and bumped.run_id != sampler.run_id
    assert bumped.journal_owner == sampler.journal_owner  # amendments still belong to the run


def test_world_size_must_divide_the_batch(sampler):
    with pytest.raises(ScheduleError, match="does not divide the global batch of 8"):
        sampler.batch(0, 0, 3)
    with pytest.raises(ScheduleError, match="rank must be in"):
        sampler.batch(0, 4, 4)


def test_steps_ranks_and_seeds_must_be_integers(corpus, sampler):
    # 3.0 and "3" were served as step 3 or failed deep inside; True was step 1; 1.5 planned a step.
    ref = sampler.batch(3, 1, 2)
    same = sampler.batch(np.int64(3), np.int16(1), np.uint8(2))  # numpy integers are integers
    assert same.input_ids.tobytes() == ref.input_ids.tobytes()
    for call, arg in ((lambda v: sampler.batch(v), "Sampler.batch: step"), (lambda v: sampler.batch(0, v, 2), "rank"),
                      (lambda v: sampler.batch(0, 0, v), "world_size"), (lambda v: sampler.schedule(v), "schedule: step"),
                      (lambda v: sampler.build_id_at(v), "build_id_at: step")):
        for bad in (3.0, "3", True, np.bool_(True), None, 1.5):
            with pytest.raises(TypeError, match=f"{arg} must be an integer, got"):
                call(bad)
    recipe = parse_recipe(SCALED_MMBERT)
    for seed in (2**64, 2**64 + 7, -1):  # the kernels take the seed mod 2**64: same bytes, another build id
        with pytest.raises(ValueError, match=r"seed .* must lie in \[0, 2\*\*64\)"):
            Sampler(corpus, recipe, seed=seed, chunk=64, block_tokens=4096)
    for seed in (7.0, "7", True):
        with pytest.raises(TypeError, match="Sampler: seed must be an integer"):
            Sampler(corpus, recipe, seed=seed, chunk=64, block_tokens=4096)


def test_batch_structure_and_masking(sampler):
    tok = RANDOM_TOKENIZER
    b = sampler.batch(5)
    orig = originals(b)
    assert b.input_ids.dtype == np.int32 and b.labels.dtype == np.int32 and b.cu_seqlens.dtype == np.int32
    # cu_seqlens: starts at 0, ends at B*L, every row start and every CLS is a boundary.
    flat = orig.reshape(-1)
    cls_pos = set(np.flatnonzero(flat == tok.cls_id).tolist())
    row_starts = set(range(0, flat.size, b.input_ids.shape[1]))
    assert set(b.cu_seqlens[:-1].tolist()) == cls_pos | row_starts and b.cu_seqlens[-1] == flat.size
    assert np.all(np.diff(b.cu_seqlens) > 0) and b.max_seqlen <= b.input_ids.shape[1]
    # Specials never masked; masked positions hold MASK, a random id or the original.
    masked = b.labels != -100
    assert not np.isin(orig[masked], tok.special_ids).any()
    assert 0.2 < masked.sum() / (~np.isin(orig, tok.special_ids)).sum() < 0.4
    # The row is exactly the language's stream at its position.
    langs, starts = sampler.assign(0, 5 * 8, 6 * 8)
    assert np.array_equal(langs, b.lang)
    for r in range(8):
        row = np.empty(1024, np.int32)
        sampler._streams[langs[r]].fill(int(starts[r]), row, np.empty(1024, np.int32), tok.cls_id, tok.sep_id)
        assert np.array_equal(row, orig[r])


def test_prefix_counts_within_one_of_the_weights(sampler):
    plan = sampler.plans[2]
    n = plan.phase.steps * plan.phase.batch_sequences
    langs, _ = sampler.assign(2, 0, n)
    w = plan.table["weight"].to_numpy()
    idx = [sampler.languages.index(k) for k in plan.languages]
    counts = np.zeros(len(idx))
    for g, lang in enumerate(langs, start=1):
        counts[idx.index(lang)] += 1
        assert np.abs(counts - w * g).max() < 1.0


def test_streams_continue_across_phases_without_repeating(sampler):
    # Tokens served per language = sum over phases of its sequences x their length.
    last = sampler.total_steps
    used = np.zeros(len(sampler.languages), np.int64)
    for p, plan in enumerate(sampler.plans):
        n = plan.phase.steps * plan.phase.batch_sequences
        langs, starts = sampler.assign(p, 0, n)
        # Sequences of one language tile its stream: consecutive, no gap, no overlap.
        for lang in np.unique(langs):
            s = np.sort(starts[langs == lang])
            assert s[0] == used[lang] and np.all(np.diff(s) == plan.phase.seq_len)
            used[lang] = s[-1] + plan.phase.seq_len
    assert np.array_equal(used, sampler.consumed_tokens(last - 1) + np.bincount(
        sampler.assign(2, (sampler.plans[2].phase.steps - 1) * 8, sampler.plans[2].phase.steps * 8)[0],
        minlength=len(sampler.languages)) * 8192)


def test_epochs_at_the_end_of_the_run_count_every_served_token(corpus, sampler):
    # epochs(total_steps) raised "past the last phase": the end of the run could not be asked for.
    T = sampler.total_steps
    served = np.zeros(len(sampler.languages), np.int64)
    for step in range(T - 6, T):  # the last phase's steps
        b = sampler.batch(step)
        np.add.at(served, b.lang, b.input_ids.shape[1])
    before = sampler.consumed_tokens(T - 6)
    assert np.array_equal(sampler.consumed_tokens(T) - before, served)
    end = sampler.epochs(T)
    assert end and all(v >= sampler.epochs(T - 1).get(k, 0.0) for k, v in end.items())


def test_an_annealed_phase_keeps_every_language_within_one_sequence_of_its_target(corpus):
    # τ annealed over 16 segments: each segment's weights blend as one piece. Pieces used to start
    # fresh, each dropping the small languages' fractional share: the smallest of these 20
    # languages, planned ~6 sequences, was served 0-2 times. Each piece now continues from where
    # the phase stands, so the phase's counts follow the cumulative target of the segments' weights.
    r = {"name": "r", "phases": [{"name": "b", "tokens": 40 * 48 * 128, "batch_tokens": 48 * 128, "seq_len": 128,
                                  "languages": "all", "tau": {"start": 0.9, "end": 0.8}, "anneal_segments": 16}]}
    s = Sampler(corpus, parse_recipe(r), seed=5, block_tokens=2048)
    n = s.timeline.layouts[0].total_sequences
    plan = s.plans[0]
    L = len(s.languages)
    rows = [s.languages.index(k) for k in plan.languages]
    bounds = [-(-i * n // len(plan.segments)) for i in range(len(plan.segments) + 1)]
    rate = np.zeros((n, L))  # each sequence's target share per language
    for seg, a, b in zip(plan.segments, bounds, bounds[1:]):
        rate[a:b, rows] = seg.allocation.weights / seg.allocation.weights.sum()
    target = np.cumsum(rate, axis=0)
    langs, _ = s.assign(0, 0, n)
    counts = np.cumsum(np.eye(L)[langs], axis=0)
    assert len(plan.segments) == 16 and target[-1].min() > 3  # the smallest language is owed > 3 sequences
    assert np.abs(counts - target).max() <= 1.0


def test_plan_epochs_are_the_passes_the_sampler_makes(tmp_path):
    # An epoch is one pass over a language's stream, documents wrapped in [CLS] ... [SEP]. The plan
    # divided by the tokens alone, so with 20-token documents it overstated epochs by 10 % (and a
    # max_epochs cap allowed ~10 % fewer passes than it said).
    sizes = {"aaa_Latn": 40_000, "bbb_Latn": 20_000, "ccc_Cyrl": 8_000}
    m = write_random_corpus(tmp_path / "m", sizes, seed=2, mean_doc_tokens=20, shard_tokens=50_000)
    r = {"name": "r", "phases": [{"name": "p", "tokens": 200 * 1024, "batch_tokens": 1024, "seq_len": 128,
                                  "languages": "all", "tau": 0.5}]}
    s = Sampler(m, parse_recipe(r), seed=1, block_tokens=4096)
    plan = s.plans[0].table
    served = s.total_steps * 1024 / (200 * 1024)  # whole steps: served / budget
    used = s.epochs(s.total_steps)
    for row in plan.iter_rows(named=True):
        stream = s._streams[s.languages.index(row["language"])].stream_len
        # Within one sequence of the plan's share (the blend's bound), counted in passes.
        assert abs(used[row["language"]] - row["epochs"] * served) <= 128 / stream + 1e-9, row
        assert row["epochs"] > 1.5  # several passes: a 10 % unit error would be ~0.15


def test_a_damaged_index_file_is_ignored_with_a_warning_and_rewritten(corpus, tmp_path, caplog):
    # A truncated file in the index directory stopped the server at start-up with numpy's
    # "EOF: reading array header" (no path), and one met while applying an amendment made every
    # batch a 500 with /readyz still true. It is now skipped (the blend walks without it), named
    # in a warning, and written again by build_index.
    r = {"name": "r", "phases": [{"name": "b", "tokens": 20 * 48 * 128, "batch_tokens": 48 * 128, "seq_len": 128,
                                  "languages": "all", "tau": {"start": 0.9, "end": 0.5}, "anneal_segments": 4}]}
    index = tmp_path / "index"
    Sampler(corpus, parse_recipe(r), seed=5, block_tokens=2048, chunk=64, index_dir=index).build_index()
    files = sorted(index.glob("blend-*.npy"))
    assert len(files) == 4
    for f in files[1:3]:
        f.write_bytes(f.read_bytes()[:90])
    with caplog.at_level("WARNING", logger="sampler_server.sampler"):
        s = Sampler(corpus, parse_recipe(r), seed=5, block_tokens=2048, chunk=64, index_dir=index)
    named = {m for m in caplog.messages if "is unreadable" in m}
    assert {str(f) for f in files[1:3]} == {m.split("index file ")[1].split(" is unreadable")[0] for m in named}
    plain = Sampler(corpus, parse_recipe(r), seed=5, block_tokens=2048, chunk=64)
    steps = list(reversed(range(s.total_steps)))
    assert [s.batch(t).input_ids.tobytes() for t in steps] == [plain.batch(t).input_ids.tobytes() for t in steps]
    s.build_index()
    assert all(np.load(f).shape[0] > 1 for f in files)  # written again, whole


BOUND_BATCH = """
import json, os, sys, threading
from curriculum.recipe import parse_recipe
from sampler_server.sampler import Sampler

s = Sampler(sys.argv[1], parse_recipe(json.loads(sys.argv[2])), seed=7, chunk=64, block_tokens=4096)
out = {}

def serve():  # a server's batch thread: the first batch starts numba's pool on it
    s.batch(0)
    out["after"] = len(os.sched_getaffinity(0))

t = threading.Thread(target=serve)
t.start()
t.join()
print(len(os.sched_getaffinity(0)), out["after"])
"""


def test_a_batch_thread_is_not_left_pinned_under_openmp_binding(corpus, tmp_path):
    """OMP_PROC_BIND pins the thread that starts numba's pool to one CPU (the first of its mask):
    every replica's batch thread, and every `--workers` process's, would share that CPU."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    env.update(OMP_PROC_BIND="close", NUMBA_THREADING_LAYER="omp", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    p = subprocess.run([sys.executable, "-c", BOUND_BATCH, str(corpus), json.dumps(SCALED_MMBERT)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == [str(len(os.sched_getaffinity(0)))] * 2

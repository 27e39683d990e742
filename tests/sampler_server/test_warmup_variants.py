"""Batch-size warm-up and phase variants, end to end (recipe → schedule → plan → sampler)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import RECIPES, run_cli
from curriculum.randomcorpus import write_random_corpus
from curriculum.recipe import RecipeError, load_recipe, parse_recipe
from curriculum.schedule import ScheduleError, Timeline, phase_layout
from sampler_server.sampler import Sampler

RECIPE = {
    "name": "warm",
    "phases": [
        {"name": "pretrain", "tokens": 60 * 32 * 128, "batch_tokens": 32 * 128, "seq_len": 128, "languages": {"top": 4},
         "tau": 0.7, "mask_ratio": 0.3, "batch_warmup": {"tokens": 20 * 32 * 128, "min_sequences": 8}},
        {"name": "decay", "tokens": 10 * 16 * 256, "batch_tokens": 16 * 256, "seq_len": 256, "languages": "all",
         "tau": 0.3, "mask_ratio": 0.05,
         "variants": [{"name": "all"}, {"name": "eng", "languages": {"top": 3}, "language_weights": {"l06_Latn": 3.0}},
                      {"name": "mid", "languages": {"top": 5}, "tau": 0.5}]},
    ],
}


def expected_ramp(B: int, L: int, w_tokens: float, b_min: int, mult: int) -> list[int]:
    """The documented ramp, computed independently: linear in tokens, floored to the multiple."""
    sizes, done = [], 0
    while done * L < w_tokens:
        b = b_min + (B - b_min) * done * L / w_tokens
        b = min(B, max(b_min, mult * math.floor(b / mult)))
        sizes.append(b)
        done += b
    return sizes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    sizes = {f"l{i:02d}_Latn": 20_000 + 7_000 * i for i in range(8)}
    return write_random_corpus(tmp_path_factory.mktemp("c") / "m", sizes, mean_doc_tokens=100, shard_tokens=30_000)


def test_warmup_steps_have_the_documented_sizes():
    r = parse_recipe(RECIPE)
    tl = Timeline(r.resolve())
    ramp = expected_ramp(32, 128, 20 * 32 * 128, 8, 8)
    got = [tl.locate(s).global_batch for s in range(len(ramp) + 3)]
    assert got == ramp + [32, 32, 32]
    assert ramp[0] == 8 and all(b % 8 == 0 for b in ramp) and ramp == sorted(ramp)
    lay = tl.layouts[0]
    end = lay.first_sequence(lay.warm_steps) * 128  # tokens when the warm-up ends
    assert 20 * 32 * 128 <= end < 20 * 32 * 128 + 32 * 128  # the recipe's, to the batch
    assert lay.total_sequences * 128 >= 60 * 32 * 128  # the phase still serves its budget
    assert lay.total_sequences * 128 - 60 * 32 * 128 < 32 * 128


def test_mmbert_warmup_48_to_4608_over_60B():
    r = load_recipe(RECIPES / "mmbert.toml").resolve()
    lay = phase_layout(r.phases[0])
    tl = Timeline(r)
    assert tl.locate(0).global_batch == 48
    assert tl.locate(lay.warm_steps).global_batch == 4608 and tl.locate(lay.warm_steps - 1).global_batch < 4608
    end = lay.first_sequence(lay.warm_steps) * 1024
    assert 60e9 <= end < 60e9 + 4608 * 1024
    # The LR follows tokens, not steps: 4B-token warm-up ends within the batch ramp.
    s = next(i for i in range(lay.warm_steps) if tl.locate(i).tokens_before >= 4e9)
    assert tl.locate(s).lr_factor == 1.0 and tl.locate(s - 1).lr_factor < 1.0


def test_same_global_bytes_for_every_valid_world_size(corpus):
    s = Sampler(corpus, parse_recipe(RECIPE), seed=3, chunk=32, block_tokens=2048)
    for step in (0, 1, 5, 12, 30, 61):
        ref = s.batch(step)
        for w in (2, 4, 8):
            parts = [s.batch(step, r, w) for r in range(w)]
            assert np.concatenate([p.input_ids for p in parts]).tobytes() == ref.input_ids.tobytes()
            assert np.concatenate([p.labels for p in parts]).tobytes() == ref.labels.tobytes()
    with pytest.raises(ScheduleError, match="world_size 16 does not divide the global batch of 8"):
        s.batch(0, 0, 16)
    assert s.batch(60, 0, 16).input_ids.shape[0] == 2  # after the warm-up (50 steps), 16 ranks split 32


def test_variants_serve_their_languages_and_weights(corpus):
    r = parse_recipe(RECIPE)
    samplers = {v: Sampler(corpus, r, seed=3, variant=v, chunk=32, block_tokens=2048) for v in ("all", "eng", "mid")}
    default = Sampler(corpus, r, seed=3, chunk=32, block_tokens=2048)
    assert default.build_id == samplers["all"].build_id
    assert len({s.build_id for s in samplers.values()}) == 3
    first_decay = samplers["all"].timeline.phase_start[1]
    # Before the branch: the same bytes whatever the variant.
    for step in (0, first_decay - 1):
        a = [samplers[v].batch(step).input_ids.tobytes() for v in samplers]
        assert a[0] == a[1] == a[2]
    for v, s in samplers.items():
        plan = s.plans[1]
        langs, _ = s.assign(1, 0, s.timeline.layouts[1].total_sequences)
        names = np.array(s.languages)[langs]
        assert set(names) <= set(plan.languages)
        n = plan.available.astype(float)
        tau = plan.phase.tau
        m = np.array([3.0 if k == "l06_Latn" and v == "eng" else 1.0 for k in plan.languages])
        w = m * n**tau / np.sum(m * n**tau)
        np.testing.assert_allclose(plan.table["weight"].to_numpy(), w, rtol=1e-12)
        counts = np.array([(names == k).sum() for k in plan.languages])
        assert np.abs(counts - w * langs.size).max() < 1.0
    assert len(samplers["eng"].plans[1].languages) == 3 and len(samplers["mid"].plans[1].languages) == 5
    with pytest.raises(RecipeError, match="no variant 'nope'.*all, eng, mid"):
        Sampler(corpus, r, variant="nope")


def test_reference_manifest_is_reproducible_and_plans(tmp_path):
    run_cli("synth", "--from-mmbert-counts", "--out", str(tmp_path / "ref"))
    shipped = RECIPES.parent / "reference" / "mmbert"
    for f in ("languages.parquet", "shards.parquet", "manifest.json"):
        assert (tmp_path / "ref" / f).read_bytes() == (shipped / f).read_bytes(), f
    out = run_cli("plan", str(RECIPES / "mmbert.toml"), "--manifest", str(shipped))
    assert "decay:eng" in out.stdout and "batch warm-up: 48 → 4,608" in out.stdout


def test_first_unsplittable_step_of_a_range():
    """Ramp sizes 8, 16, 24 (multiples of 8) then 32: a world size of 16 splits steps of 16 and
    32 but not 8 or 24; the first step of a range it cannot split is found without a walk."""
    tl = Timeline(parse_recipe(RECIPE).resolve())
    sizes = [tl.locate(s).global_batch for s in range(tl.total_steps)]

    def brute(start: int, stop: int, world: int) -> int | None:
        return next((s for s in range(start, stop) if sizes[s] % world), None)

    for world in (1, 2, 4, 8, 16, 32, 3, 64):
        for start, stop in ((0, tl.total_steps), (1, 5), (5, 40), (30, tl.total_steps), (58, 63), (60, 61)):
            assert tl.first_unsplittable(start, stop, world) == brute(start, stop, world), (world, start, stop)


def test_a_stream_is_refused_up_front_when_a_later_warmup_step_cannot_split(corpus):
    # A stream starting at a ramp step of 16 sequences, over a later step of 24, for 16 ranks:
    # refused with a 400 naming that step, before any batch goes out (it used to be cut there).
    from fastapi.testclient import TestClient

    from sampler_server.app import create_app
    from sampler_server.settings import ServerSettings
    from test_app import write_recipe

    tl = Timeline(parse_recipe(RECIPE).resolve())
    sizes = [tl.locate(s).global_batch for s in range(tl.total_steps)]
    start = sizes.index(16)
    later = next(s for s in range(start, tl.total_steps) if sizes[s] % 16)
    recipe = write_recipe(corpus.parent / "warm.toml", RECIPE)
    settings = ServerSettings(manifest=corpus, recipe=recipe, seed=0, chunk=64, warmup=False,
                              journal=str(corpus.parent / "warm.amendments.jsonl"))
    with TestClient(create_app(settings)) as c:
        r = c.get("/v1/stream", params={"start": start, "count": later - start + 2, "rank": 0, "world_size": 16})
        assert r.status_code == 400 and f"at step {later}" in r.json()["message"], r.text
        ok = c.get("/v1/stream", params={"start": start, "count": later - start, "rank": 0, "world_size": 16})
        assert ok.status_code == 200

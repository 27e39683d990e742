"""1,833 languages: small random-token shards, random steps in every phase."""

from __future__ import annotations

import numpy as np
import pytest

from curriculum.randomcorpus import write_random_corpus
from curriculum.recipe import parse_recipe
from curriculum.synth import long_tail_tokens, mmbert_language_order
from sampler_server.sampler import Sampler

RECIPE = {
    "name": "mmbert-tiny-scale",
    "phases": [
        {"name": "pretrain", "tokens": 2e6, "batch_tokens": 16 * 512, "seq_len": 512, "languages": {"top": 60}, "tau": 0.7, "mask_ratio": 0.3},
        {"name": "midtrain", "tokens": 1e6, "batch_tokens": 8 * 2048, "seq_len": 2048, "languages": {"top": 110}, "tau": 0.5, "mask_ratio": 0.15},
        {"name": "decay", "tokens": 1e6, "batch_tokens": 8 * 2048, "seq_len": 2048, "languages": "all", "tau": 0.3, "mask_ratio": 0.05},
    ],
}


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    keys = mmbert_language_order()[:1833]
    tokens = long_tail_tokens(1833, 2e7)
    root = write_random_corpus(tmp_path_factory.mktemp("scale") / "m", dict(zip(keys, np.maximum(tokens, 50).tolist())),
                               mean_doc_tokens=120, shard_tokens=1 << 20)
    return Sampler(root, parse_recipe(RECIPE), seed=11, chunk=1024, block_tokens=1 << 16)


def test_random_steps_in_every_phase(sampler):
    assert len(sampler.languages) == 1833
    rng = np.random.default_rng(0)
    seen_phases = set()
    for p, plan in enumerate(sampler.plans):
        start = sum(q.phase.steps for q in sampler.plans[:p])
        for step in rng.integers(start, start + plan.phase.steps, 4):
            b = sampler.batch(int(step), rank=1, world_size=2)
            seen_phases.add(b.info.phase)
            assert b.input_ids.shape == (plan.phase.batch_sequences // 2, plan.phase.seq_len)
            assert set(np.array(sampler.languages)[b.lang]) <= set(plan.languages)
            assert (b.labels != -100).any()
    assert seen_phases == {"pretrain", "midtrain", "decay"}
    # The decay phase touches the long tail: tiny languages wrap their stream many times.
    epochs = sampler.epochs(sampler.total_steps - 1)
    assert len(epochs) > 300 and max(epochs.values()) > 10


def test_memory_is_per_language_and_block_not_per_token(sampler):
    # Streams built so far hold only block tables (O(blocks)); nothing the size of the corpus.
    touched = [s for s in sampler._streams if s is not None and s._table is not None]
    assert touched
    assert sum(s.table.tokens.size for s in touched) < 5 * len(touched)

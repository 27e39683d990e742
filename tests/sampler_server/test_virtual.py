"""Virtual corpora: generated streams behave like real ones (documents, epochs, determinism)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import RECIPES
from curriculum.recipe import load_recipe
from sampler_server.sampler import Sampler
from sampler_server.virtual import VirtualLanguageStream, virtual_doc_lengths

CLS, SEP = 2, 1


def test_doc_lengths_fill_the_block_exactly():
    rng = np.random.default_rng(0)
    for target in [3, 4, 10, 1000, 123_457]:
        for mean in (1.0, 50.0, 600.0):
            buf = np.empty(target // 3 + 1, np.int64)
            n = virtual_doc_lengths(np.uint64(rng.integers(1 << 62)), np.int64(target), np.float64(mean), buf)
            assert (buf[:n] + 2).sum() == target and buf[:n].min() >= 1


def test_virtual_stream_is_a_shuffled_stream_of_documents():
    st = VirtualLanguageStream("x_Latn", tokens=20_000, docs=100, seed=3, vocab=(5, 1000))
    S = st.stream_len
    assert S == 20_000 + 2 * 100 or abs(S - 20_200) == 0
    out = np.empty(2 * S, np.int32)
    m = st.fill(0, out, np.empty(2 * S, np.int32), CLS, SEP)
    assert (out == CLS).sum() == m == (out == SEP).sum()
    e0, e1 = out[:S], out[S:]
    docs0 = sorted(bytes(x) for x in np.split(e0, np.flatnonzero(e0 == CLS)[1:]))
    docs1 = sorted(bytes(x) for x in np.split(e1, np.flatnonzero(e1 == CLS)[1:]))
    assert docs0 == docs1 and e0.tobytes() != e1.tobytes()  # same documents, new order per epoch
    assert out[(out != CLS) & (out != SEP)].min() >= 5 and out.max() < 1000
    part = np.empty(777, np.int32)
    VirtualLanguageStream("x_Latn", 20_000, 100, 3, (5, 1000)).fill(S - 300, part, np.empty(777, np.int32), CLS, SEP)
    assert np.array_equal(part, out[S - 300 : S + 477])  # random access == sequential


def test_synthetic_1833_manifest_serves_every_phase_with_a_persisted_index(synth_1833, tmp_path):
    # mmBERT's shape scaled 10^4 down in tokens (same languages, τ, warm-up shape, variants).
    r = load_recipe(RECIPES / "mmbert.toml")
    phases = []
    for p in r.phases:
        upd = {"tokens": p.tokens / 1e4}
        if p.batch_warmup:
            upd["batch_warmup"] = p.batch_warmup.model_copy(update={"tokens": p.batch_warmup.tokens / 1e4})
        phases.append(p.model_copy(update=upd))
    small = r.model_copy(update={"phases": phases})
    s = Sampler(synth_1833, small, seed=0, index_dir=tmp_path / "index")
    info = s.build_index()
    assert info["files"] == 3 and info["bytes"] > 0
    for phase_start in s.timeline.phase_start:
        b = s.batch(phase_start, rank=3, world_size=8)
        assert b.input_ids.shape[1] == s.schedule(phase_start).seq_len
        assert (b.labels != -100).any()
    last = s.total_steps - 1
    again = Sampler(synth_1833, small, seed=0, index_dir=tmp_path / "index")  # reuses the index
    assert again.batch(last, 1, 2).input_ids.tobytes() == s.batch(last, 1, 2).input_ids.tobytes()
    fresh = Sampler(synth_1833, small, seed=0)  # no index: same bytes, computed from scratch
    assert fresh.batch(last, 1, 2).labels.tobytes() == s.batch(last, 1, 2).labels.tobytes()

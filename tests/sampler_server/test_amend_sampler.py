"""Amended runs: exact replay before from_step, new weights after it, continuous streams."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SCALED_MMBERT
from curriculum.amend import AmendmentError, parse_amendment
from curriculum.randomcorpus import write_random_corpus
from curriculum.recipe import parse_recipe
from sampler_server.sampler import Sampler

# Pretrain is steps 0..39 (8 sequences a step), midtrain 40..49, decay 50..55.
S = 23  # amendment step, inside pretrain


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(5)
    sizes = {f"l{i:02d}_Latn": int(s) for i, s in enumerate(np.exp(rng.uniform(np.log(3e3), np.log(4e5), 20)))}
    return write_random_corpus(tmp_path_factory.mktemp("corpus") / "m", sizes, seed=4, mean_doc_tokens=150, shard_tokens=60_000)


def make(corpus, amendments=()):
    return Sampler(corpus, parse_recipe(SCALED_MMBERT), seed=11, chunk=16, block_tokens=4096, amendments=list(amendments))


@pytest.fixture(scope="module")
def base(corpus):
    return make(corpus)


@pytest.fixture(scope="module")
def ranked(base):
    return base.manifest.languages.sort(["tokens", "language"], descending=[True, False])["language"].to_list()


@pytest.fixture(scope="module")
def AMEND(ranked):
    return parse_amendment({"from_step": S, "changes": {
        "pretrain": {"tau": 0.2, "languages": {"top": 9}, "language_weights": {ranked[7]: 3.0}, "mask_ratio": 0.2},
        "decay": {"tokens": 9 * 8 * 8192}}})


@pytest.fixture(scope="module")
def amended(corpus, AMEND):
    return make(corpus, [AMEND])


def same(a, b) -> bool:
    return all(x.tobytes() == y.tobytes() for x, y in
               ((a.input_ids, b.input_ids), (a.labels, b.labels), (a.lang, b.lang), (a.cu_seqlens, b.cu_seqlens)))


def test_steps_before_from_step_are_byte_identical(base, amended):
    for step in (0, 7, S - 1):
        for r, w in ((0, 1), (1, 2)):
            a, b = base.batch(step, r, w), amended.batch(step, r, w)
            assert same(a, b)
            assert a.build_id == b.build_id == base.run_id
    assert amended.batch(S).build_id != base.run_id
    assert amended.build_id_at(S - 1) == base.run_id and amended.build_id_at(S) == amended.build_id_at(55 + 3 * 1)
    assert not same(base.batch(S), amended.batch(S))
    assert amended.batch(S).journal_version == 1


def test_new_weights_hold_within_one_sequence_of_the_phase_target(amended):
    # The piece after from_step continues from where the phase stands (a language ahead of its
    # target is served a little less, one behind a little more), so every language stays within
    # one sequence of its cumulative target -- old weights up to the split, new ones after --
    # over the whole phase, and within two of the new weights counted from the split.
    info = amended.schedule(S)
    g_s = info.first_sequence
    n_seq = amended.timeline.layouts[0].total_sequences
    L = len(amended.languages)
    target_at = np.zeros((n_seq + 1, L))
    for k, plans in enumerate(amended.regime_plans()):
        plan = plans[0]
        w = np.zeros(L)
        w[[amended.languages.index(x) for x in plan.languages]] = plan.segments[0].allocation.weights
        a, b = (0, g_s) if k == 0 else (g_s, n_seq)
        target_at[a + 1 : b + 1] = target_at[a] + np.outer(np.arange(1, b - a + 1), w / w.sum())
    assert len(amended.regime_plans()[-1][0].languages) == 9
    langs, _ = amended.assign(0, 0, n_seq)
    counts_at = np.vstack([np.zeros(L), np.cumsum(np.eye(L)[langs], axis=0)])
    assert np.abs(counts_at - target_at).max() <= 1.0
    since = (counts_at[g_s:] - counts_at[g_s]) - (target_at[g_s:] - target_at[g_s])
    assert np.abs(since).max() <= 2.0
    # The schedule follows the amendment too: mask ratio from S on, decay's new budget.
    assert amended.schedule(S - 1).mask_ratio == 0.3 and amended.schedule(S).mask_ratio == 0.2
    assert amended.total_steps == 50 + 9 and amended.timeline.phase_start[:3] == [0, 40, 50]


def stream_runs(sampler):
    """Per language: sorted (start, length) of every sequence of the whole run."""
    runs: dict[int, list] = {}
    tl = sampler.timeline
    for p, lay in enumerate(tl.layouts):
        L = sampler.recipe.phases[p].seq_len
        langs, starts = sampler.assign(p, 0, lay.total_sequences)
        for lang, st in zip(langs.tolist(), starts.tolist()):
            runs.setdefault(lang, []).append((st, L))
    return runs


def test_streams_are_continuous_across_the_amendment(base, amended):
    for s in (base, amended):
        for lang, rs in stream_runs(s).items():
            rs.sort()
            assert rs[0][0] == 0, s.languages[lang]
            for (a, la), (b, _) in zip(rs, rs[1:]):
                assert b == a + la, (s.languages[lang], a, la, b)  # no token skipped or served twice


def test_new_language_starts_at_zero_and_dropped_language_keeps_its_place(corpus, ranked):
    # pretrain blends the top 6; from S on, only languages ranked 7..9 and the top 1 (a list).
    keep, new = ranked[0], ranked[6:9]
    a = parse_amendment({"from_step": S, "changes": {"pretrain": {"languages": [keep, *new]}}})
    s = make(corpus, [a])
    g_s = s.schedule(S).first_sequence
    n_seq = s.timeline.layouts[0].total_sequences
    langs, starts = s.assign(0, g_s, n_seq)
    names = [s.languages[x] for x in langs]
    assert set(names) == {keep, *new}
    for k in new:
        first = starts[np.array(names) == k].min()
        assert first == 0  # a language newly brought in starts at the beginning of its stream
    # A language dropped at S resumes in midtrain (top 12) exactly where pretrain left it.
    dropped = ranked[1]
    i = s.languages.index(dropped)
    used_before = s.consumed_tokens(S)[i]
    assert used_before > 0 and s.consumed_tokens(40)[i] == used_before
    ml, ms = s.assign(1, 0, s.timeline.layouts[1].total_sequences)
    assert ms[ml == i].min() == used_before


def test_fresh_sampler_replays_the_journal(corpus, amended, AMEND):
    again = make(corpus, [AMEND])
    for step in (S + 9, 3, S, 44, S - 1, 57):
        assert same(amended.batch(step, 1, 4), again.batch(step, 1, 4))
    assert again.build_id_at(57) == amended.build_id_at(57)


def test_amend_in_place_matches_a_fresh_sampler(corpus, amended, AMEND):
    live = make(corpus)
    before = [live.batch(s) for s in (5, S - 1)]  # built blends and bases are reused after amend
    live.amend([AMEND])
    assert same(before[0], live.batch(5)) and same(before[1], live.batch(S - 1))
    for step in (S, S + 4, 41, 52):
        assert same(live.batch(step), amended.batch(step))
    with pytest.raises(AmendmentError, match="no longer starts with"):
        live.amend([])


def test_amendment_of_a_later_phase_only_keeps_current_bytes(corpus, base):
    a = parse_amendment({"from_step": S, "changes": {"midtrain": {"tau": 0.9}}})
    s = make(corpus, [a])
    for step in (S, S + 5, 39):
        assert same(base.batch(step), s.batch(step))
    assert not same(base.batch(40), s.batch(40))


def test_amendment_that_cannot_be_planned_is_refused(corpus):
    bad = parse_amendment({"from_step": S, "changes": {"pretrain": {"languages": ["zzz_Latn"]}}})
    with pytest.raises(AmendmentError, match="zzz"):
        make(corpus, [bad])
    live = make(corpus)
    with pytest.raises(AmendmentError):
        live.amend([bad])
    assert live.journal_version == 0


def test_prepare_walks_amended_blends_and_persists_their_index(corpus, amended, AMEND, tmp_path):
    s = Sampler(corpus, parse_recipe(SCALED_MMBERT), seed=11, chunk=16, block_tokens=4096, amendments=[AMEND],
                index_dir=tmp_path / "index")
    s.prepare()
    st = s._state
    assert all((p, i) in st.bases for p, segs in enumerate(st.segments) for i in range(len(segs)))
    walked = [sg for segs in st.segments for sg in segs][:-1]  # the last piece is never walked to its end
    files = sorted((tmp_path / "index").glob("blend-*.npy"))
    assert len(files) == len({id(sg.blend) for sg in walked})
    again = Sampler(corpus, parse_recipe(SCALED_MMBERT), seed=11, chunk=16, block_tokens=4096, amendments=[AMEND],
                    index_dir=tmp_path / "index")
    pieces = [sg for segs in again._state.segments for sg in segs]
    assert all(sg.blend._matrix is not None for sg in pieces[:-1])  # attached: a restart does not walk them
    for step in (S, 41, 57):
        assert same(again.batch(step), amended.batch(step))


def test_pieces_with_equal_weights_over_other_languages_keep_their_own_index_files(tmp_path):
    # A piece's checkpoints depend on its weights, the pieces before it and its own languages (the
    # excess it starts from). Index files were named without the last: two runs sharing an index
    # directory, whose amended pieces had equal weights over other languages, shared one file, and
    # the second served other bytes than without the index.
    sizes = {f"l{i:02d}_Latn": 40_000 + 7_000 * i for i in range(4)}
    m = write_random_corpus(tmp_path / "m", sizes, seed=4, mean_doc_tokens=50, shard_tokens=60_000)
    r = {"name": "r", "phases": [{"name": "p", "tokens": 40 * 8 * 128, "batch_tokens": 8 * 128, "seq_len": 128,
                                  "languages": "all", "tau": 0.7}]}
    # τ = 0 and the same multiplier pattern: equal weight vectors over different language sets.
    a = parse_amendment({"from_step": 2, "changes": {"p": {"tau": 0.0, "languages": ["l00_Latn", "l01_Latn", "l02_Latn"],
                                                           "language_weights": {"l02_Latn": 2.3}}}})
    b = parse_amendment({"from_step": 2, "changes": {"p": {"tau": 0.0, "languages": ["l01_Latn", "l02_Latn", "l03_Latn"],
                                                           "language_weights": {"l03_Latn": 2.3}}}})

    def sampler(amendment, index=None):
        return Sampler(m, parse_recipe(r), seed=1, chunk=16, amendments=[amendment], index_dir=index)

    sa = sampler(a, tmp_path / "index")
    sa.build_index()
    sb, plain = sampler(b, tmp_path / "index"), sampler(b)
    pa_, pb = sa._state.segments[0][1], sb._state.segments[0][1]
    assert np.array_equal(pa_.blend.weights, pb.blend.weights) and not np.array_equal(pa_.blend.excess, pb.blend.excess)
    assert sa._index_path(pa_.blend) != sb._index_path(pb.blend)
    steps = list(reversed(range(plain.total_steps)))  # a resume: far steps first, through checkpoints
    assert [sb.batch(t).input_ids.tobytes() for t in steps] == [plain.batch(t).input_ids.tobytes() for t in steps]


def test_each_new_piece_walks_only_the_piece_before_it(tmp_path, monkeypatch):
    # Amendments one at a time (a feedback policy): the first batch of the k-th new piece walked
    # every earlier piece of the phase to its end again (k walks), and each blend kept its own copy
    # of the whole chain of counts alive.
    from sampler_server.kernels import blend as blend_module

    calls = []
    counts_at = blend_module.BlendIndex.counts_at
    monkeypatch.setattr(blend_module.BlendIndex, "counts_at", lambda self, g: calls.append(g) or counts_at(self, g))
    sizes = {f"l{i:02d}_Latn": 20_000 + 3_000 * i for i in range(6)}
    m = write_random_corpus(tmp_path / "m", sizes, seed=4, mean_doc_tokens=50, shard_tokens=60_000)
    r = {"name": "r", "phases": [{"name": "p", "tokens": 100 * 4 * 64, "batch_tokens": 4 * 64, "seq_len": 64,
                                  "languages": "all", "tau": 0.7}]}
    s = Sampler(m, parse_recipe(r), seed=1, chunk=16)
    rng = np.random.default_rng(0)
    journal, walks = [], []
    for k in range(1, 31):
        journal.append(parse_amendment({"from_step": 2 * k, "changes": {"p": {
            "language_weights": {f"l{i:02d}_Latn": float(np.round(rng.uniform(0.5, 2), 2)) for i in range(6)}}}}))
        s.amend(journal)
        calls.clear()
        s.batch(2 * k)  # the first batch of the new piece
        walks.append(len(calls))
    assert max(walks) <= 2, walks  # the piece before (and the stream base), whatever k
    fresh = Sampler(m, parse_recipe(r), seed=1, chunk=16, amendments=journal)
    assert all(fresh.batch(t).input_ids.tobytes() == s.batch(t).input_ids.tobytes() for t in range(0, 62, 3))


def test_an_amended_phase_reports_caps_of_every_piece_it_served(corpus):
    # /v1/mixture of an amended phase took `capped` from the last regime's plan alone: a language
    # held at its cap for the first half of the phase showed as uncapped once an amendment lifted it.
    from curriculum.plan import epoch_tokens
    from sampler_server.service import amended_mixture_json, phase_mixture_json

    r = {"name": "r", "phases": [{"name": "p", "tokens": 40 * 64 * 128, "batch_tokens": 64 * 128, "seq_len": 128,
                                  "languages": "all", "tau": 0.1, "max_epochs": 1.0}]}
    lift = parse_amendment({"from_step": 20, "changes": {"p": {"max_epochs": 100.0}}})
    s = Sampler(corpus, parse_recipe(r), seed=1, chunk=16, amendments=[lift])
    st = s._state
    first, last = st.plans[0][0], st.plans[-1][0]
    capped_first = {k for k, c in zip(first.languages, first.table["capped"].to_list()) if c}
    assert capped_first and not last.table["capped"].any()
    ml = s.manifest.languages
    available = {k: (int(t), src, int(e)) for k, t, src, e in zip(ml["language"].to_list(), ml["tokens"].to_list(),
                                                                   ml["source"].to_list(),
                                                                   epoch_tokens(ml["tokens"].to_numpy(), ml["docs"].to_numpy()))}
    view = amended_mixture_json(phase_mixture_json(last), st.regimes, st.plans, 0, available)
    assert {x["language"] for x in view["languages"] if x["capped"]} == capped_first

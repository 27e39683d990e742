"""Amendments: validation, applying to a recipe, regimes over a journal, pieces of a phase, `--set`."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

import numpy as np
import pytest

from conftest import SCALED_MMBERT
from curriculum.amend import (
    Amendment,
    AmendmentError,
    apply_amendment,
    parse_amendment,
    parse_sets,
    phase_allotments,
    phase_pieces,
    plan_regimes,
    regime_at,
    regimes,
    resolve_current,
    segment_bounds,
)
from curriculum.manifest import read_manifest
from curriculum.plan import plan_phase
from curriculum.randomcorpus import write_random_corpus
from curriculum.recipe import Anneal, TopN, parse_recipe
from curriculum.schedule import Timeline

# SCALED_MMBERT: pretrain steps 0..39 (8 × 1024-token sequences a step, 320 sequences),
# midtrain 40..49 (80 sequences of 8192), decay 50..55 (48 sequences); 56 steps in all.
PHASES = ["pretrain", "midtrain", "decay"]


@pytest.fixture(scope="module")
def recipe():
    return parse_recipe(SCALED_MMBERT)


def recipe_with(**pretrain) -> object:
    """SCALED_MMBERT with pretrain fields replaced."""
    data = copy.deepcopy(SCALED_MMBERT)
    data["phases"][0].update(pretrain)
    return parse_recipe(data)


def amend(recipe, from_step: int, **changes):
    return apply_amendment(recipe, parse_amendment({"from_step": from_step, "changes": changes}))


def error_of(fn, *args, **kwargs) -> AmendmentError:
    with pytest.raises(AmendmentError) as info:
        fn(*args, **kwargs)
    return info.value


# -- parse_amendment -------------------------------------------------------------------------

def test_parse_valid_dict_and_json_text():
    data = {"from_step": 12, "changes": {"pretrain": {"tau": 0.4, "languages": {"top": 3}},
                                         "decay": {"tokens": 1e6, "language_weights": {"l01_Latn": 2.5}}},
            "reason": "more low-resource", "source": "policy"}
    a = parse_amendment(data)
    assert a.from_step == 12 and a.reason == "more low-resource" and a.source == "policy" and a.created_at is None
    assert a.changes["pretrain"].tau == 0.4 and a.changes["pretrain"].languages == TopN(top=3)
    assert a.changes["decay"].tokens == 1e6 and a.changes["decay"].language_weights == {"l01_Latn": 2.5}
    assert a.changes["pretrain"].max_epochs is None
    assert parse_amendment(json.dumps(data)) == a
    assert parse_amendment(json.dumps(data).encode()) == a
    anneal = parse_amendment({"from_step": 0, "changes": {"current": {"tau": {"start": 0.7, "end": 0.3}}}})
    assert anneal.changes["current"].tau == Anneal(start=0.7, end=0.3)


@pytest.mark.parametrize("data, field", [
    ({"from_step": -1, "changes": {"pretrain": {"tau": 0.4}}}, "from_step"),
    ({"from_step": "soon", "changes": {"pretrain": {"tau": 0.4}}}, "from_step"),
    ({"changes": {"pretrain": {"tau": 0.4}}}, "from_step"),
    ({"from_step": 3, "changes": {"pretrain": {"tau_end": 1.5}}}, "changes.pretrain.tau_end"),
    ({"from_step": 3, "changes": {"pretrain": {"max_epochs": 0}}}, "changes.pretrain.max_epochs"),
    ({"from_step": 3, "changes": {"decay": {"tokens": -5}}}, "changes.decay.tokens"),
    ({"from_step": 3, "changes": {"pretrain": {"languages": {"top": 0}}}}, "changes.pretrain.languages.top"),
    ({"from_step": 3, "changes": {"pretrain": {"language_weights": {"l01_Latn": -1}}}},
     "changes.pretrain.language_weights.l01_Latn"),
    ({"from_step": 3, "changes": {"pretrain": {"tau": {"start": 0.5}}}}, "changes.pretrain.tau.end"),
    ({"from_step": 3, "changes": {"pretrain": {"tau": 0.4}}, "source": "x" * 201}, "source"),
])
def test_invalid_field_is_named(data, field):
    exc = error_of(parse_amendment, data, "POST /v1/amendments")
    assert field in exc.fields
    assert str(exc).startswith("POST /v1/amendments: ")
    assert f"{field}:" in str(exc) and "Value error" not in str(exc)  # pydantic's prefix before our own words


def test_a_validator_message_reads_as_written(recipe):
    exc = error_of(amend, recipe, 3, pretrain={"tau": 3.0})  # checked against the phase it changes
    assert "changes.pretrain.tau: tau must be in [0, 1], got 3.0" in str(exc), str(exc)


def test_unknown_fields_are_rejected():
    exc = error_of(parse_amendment, {"from_step": 3, "changes": {"pretrain": {"tau": 0.4, "temperature": 0.4}}})
    assert exc.fields == ["changes.pretrain.temperature"] and "Extra inputs are not permitted" in str(exc)
    exc = error_of(parse_amendment, {"from_step": 3, "changes": {"pretrain": {"tau": 0.4}}, "when": "now"})
    assert exc.fields == ["when"]


def test_empty_changes_are_rejected():
    exc = error_of(parse_amendment, {"from_step": 3, "changes": {}})
    assert exc.fields == ["changes"]
    exc = error_of(parse_amendment, {"from_step": 3, "changes": {"pretrain": {"tau": 0.4}, "decay": {}}})
    assert exc.fields == ["changes"] and "decay" in str(exc) and "pretrain" not in str(exc)


def test_invalid_json_text_is_an_amendment_error():
    exc = error_of(parse_amendment, '{"from_step": 3, "changes": ', "req")
    assert str(exc).startswith("req: ") and exc.fields


def test_field_path_keeps_phase_names_that_start_upper_case():
    # Recipe phase names may start with a capital (pattern ^[A-Za-z0-9_.-]+$); the path must keep them.
    exc = error_of(parse_amendment, {"from_step": 3, "changes": {"Pretrain": {"bogus": 1}}})
    assert exc.fields == ["changes.Pretrain.bogus"], str(exc)


def test_digest_covers_what_the_amendment_does_only():
    a = parse_amendment({"from_step": 5, "changes": {"pretrain": {"tau": 0.4}}})
    same = parse_amendment({"from_step": 5, "changes": {"pretrain": {"tau": 0.4}}, "reason": "r", "source": "policy",
                            "created_at": "2026-01-02T03:04:05Z"})
    assert a.digest() == same.digest() and len(a.digest()) == 16
    assert parse_amendment({"from_step": 6, "changes": {"pretrain": {"tau": 0.4}}}).digest() != a.digest()
    assert parse_amendment({"from_step": 5, "changes": {"pretrain": {"tau": 0.41}}}).digest() != a.digest()


def test_stamped_sets_created_at_once():
    a = parse_amendment({"from_step": 5, "changes": {"pretrain": {"tau": 0.4}}})
    t0 = datetime.now(timezone.utc).replace(microsecond=0)  # stamps may be whole seconds
    s = a.stamped()
    t1 = datetime.now(timezone.utc)
    assert a.created_at is None and s.created_at is not None and s.created_at.tzinfo is not None
    assert t0 <= s.created_at <= t1
    assert s.stamped() is s and s.digest() == a.digest()


# -- apply_amendment -------------------------------------------------------------------------

def test_apply_tau_constant_and_anneal(recipe):
    out = amend(recipe, 3, pretrain={"tau": 0.4})
    assert out.phases[0].tau == 0.4 and recipe.phases[0].tau == 0.7  # the input is not touched
    assert out.phases[1:] == recipe.phases[1:]
    out = amend(recipe, 3, pretrain={"tau": {"start": 0.7, "end": 0.2}})
    assert out.phases[0].tau == Anneal(start=0.7, end=0.2) and out.phases[0].annealed
    assert len(out.phases[0].segment_taus()) == out.phases[0].anneal_segments


def test_tau_end_keeps_an_annealed_start(recipe):
    annealed = recipe_with(tau={"start": 0.9, "end": 0.5})
    out = amend(annealed, 3, pretrain={"tau_end": 0.2})
    assert out.phases[0].tau == Anneal(start=0.9, end=0.2)
    exc = error_of(amend, recipe, 3, pretrain={"tau_end": 0.2})
    assert exc.fields == ["changes.pretrain.tau_end"] and "constant tau" in str(exc)
    exc = error_of(amend, annealed, 3, pretrain={"tau_end": 0.2, "tau": 0.3})
    assert exc.fields == ["changes.pretrain.tau_end"]


@pytest.mark.parametrize("languages, want", [
    ({"top": 2}, TopN(top=2)), ("all", "all"), (["l01_Latn", "l03_Latn"], ["l01_Latn", "l03_Latn"]),
])
def test_apply_language_selection(recipe, languages, want):
    out = amend(recipe, 3, pretrain={"languages": languages})
    assert out.phases[0].languages == want
    assert out.phases[1].languages == TopN(top=12)


def test_language_weights_merge_with_the_phase(recipe):
    base = recipe_with(language_weights={"l01_Latn": 2.0, "l02_Latn": 0.5})
    out = amend(base, 3, pretrain={"language_weights": {"l02_Latn": 1.0, "l03_Latn": 3.0}})
    assert out.phases[0].language_weights == {"l01_Latn": 2.0, "l02_Latn": 1.0, "l03_Latn": 3.0}
    assert base.phases[0].language_weights == {"l01_Latn": 2.0, "l02_Latn": 0.5}


def test_apply_max_epochs_and_mask_ratio(recipe):
    out = amend(recipe, 45, current={"max_epochs": 2.5, "mask_ratio": {"start": 0.2, "end": 0.1}})
    assert out.phases[1].max_epochs == 2.5 and out.phases[1].mask_ratio == Anneal(start=0.2, end=0.1)
    assert out.phases[0] == recipe.phases[0] and out.phases[2] == recipe.phases[2]
    exc = error_of(amend, recipe, 45, current={"mask_ratio": 1.0})
    assert exc.fields == ["changes.midtrain.mask_ratio"]


def test_tokens_only_for_later_phases(recipe):
    out = amend(recipe, 3, decay={"tokens": 9 * 8 * 8192}, midtrain={"tokens": 12 * 8 * 8192})
    assert out.phases[2].tokens == 9 * 8 * 8192 and out.phases[1].tokens == 12 * 8 * 8192
    tl = Timeline(out)
    assert tl.phase_start == [0, 40, 52] and tl.total_steps == 61
    exc = error_of(amend, recipe, 3, pretrain={"tokens": 30 * 8 * 1024})
    assert exc.fields == ["changes.pretrain.tokens"] and "contains from_step 3" in str(exc)
    exc = error_of(amend, recipe, 40, current={"tokens": 5 * 8 * 8192})  # first step of midtrain
    assert exc.fields == ["changes.midtrain.tokens"]
    exc = error_of(amend, recipe, 45, pretrain={"tokens": 30 * 8 * 1024})
    assert exc.fields == ["changes.pretrain"] and "ended before from_step 45" in str(exc)


def test_earlier_phase_cannot_change(recipe):
    exc = error_of(amend, recipe, 40, pretrain={"tau": 0.1})
    assert exc.fields == ["changes.pretrain"] and "'midtrain'" in str(exc)
    out = amend(recipe, 39, pretrain={"tau": 0.1})  # the last step of pretrain is still in it
    assert out.phases[0].tau == 0.1


def test_unknown_phase_lists_the_phases(recipe):
    exc = error_of(amend, recipe, 3, prettrain={"tau": 0.1})
    assert exc.fields == ["changes.prettrain"]
    assert "pretrain, midtrain, decay" in str(exc) and "'current'" in str(exc)


def test_current_is_the_phase_of_from_step(recipe):
    for step, i in ((0, 0), (39, 0), (40, 1), (49, 1), (50, 2), (55, 2)):
        a = parse_amendment({"from_step": step, "changes": {"current": {"tau": 0.25}}})
        r = resolve_current(a, Timeline(recipe))
        assert list(r.changes) == [PHASES[i]]
        out = apply_amendment(recipe, a)
        assert [p.tau for p in out.phases] == [0.25 if k == i else p.tau for k, p in enumerate(recipe.phases)]
    exc = error_of(amend, recipe, 3, current={"tau": 0.1}, pretrain={"mask_ratio": 0.2})
    assert exc.fields == ["changes.pretrain"] and "the same phase" in str(exc)


def test_out_of_range_values_name_the_phase_field(recipe):
    exc = error_of(amend, recipe, 3, pretrain={"tau": 1.5})
    assert exc.fields == ["changes.pretrain.tau"] and "changes.pretrain.tau:" in str(exc) and "1.5" in str(exc)
    exc = error_of(amend, recipe, 3, current={"tau": 1.5})
    assert exc.fields == ["changes.pretrain.tau"]
    exc = error_of(amend, recipe, 3, decay={"tau": {"start": 0.5, "end": -0.2}})
    assert exc.fields == ["changes.decay.tau"]


def test_from_step_past_the_end(recipe):
    assert amend(recipe, 55, current={"tau": 0.2}).phases[2].tau == 0.2
    for changes in ({"current": {"tau": 0.2}}, {"decay": {"tau": 0.2}}):
        exc = error_of(apply_amendment, recipe, parse_amendment({"from_step": 56, "changes": changes}))
        assert exc.fields == ["from_step"] and "(55)" in str(exc)


def test_unresolved_variants_are_refused():
    data = copy.deepcopy(SCALED_MMBERT)
    data["phases"][2]["variants"] = [{"name": "all"}, {"name": "few", "languages": {"top": 3}}]
    raw = parse_recipe(data)
    exc = error_of(amend, raw, 3, decay={"tau": 0.2})
    assert exc.fields == ["changes.decay"] and "variants" in str(exc)
    assert amend(raw.resolve("few"), 3, decay={"tau": 0.2}).phases[2].tau == 0.2


# -- regimes ---------------------------------------------------------------------------------

def A(from_step: int, **changes) -> Amendment:
    return parse_amendment({"from_step": from_step, "changes": changes})


def test_no_amendments_is_one_regime(recipe):
    (r,) = regimes(recipe, [])
    assert (r.from_step, r.applied, r.recipe) == (0, 0, recipe)
    assert r.timeline.total_steps == 56


def test_one_regime_per_distinct_step(recipe):
    js = [A(10, current={"tau": 0.5}), A(10, current={"mask_ratio": 0.2}), A(20, pretrain={"tau": 0.3}),
          A(45, current={"max_epochs": 4})]
    regs = regimes(recipe, js)
    assert [(r.from_step, r.applied) for r in regs] == [(0, 0), (10, 2), (20, 3), (45, 4)]
    assert regs[0].recipe == recipe
    assert (regs[1].recipe.phases[0].tau, regs[1].recipe.phases[0].mask_ratio) == (0.5, 0.2)  # merged
    assert (regs[2].recipe.phases[0].tau, regs[2].recipe.phases[0].mask_ratio) == (0.3, 0.2)
    assert regs[3].recipe.phases[1].max_epochs == 4 and regs[2].recipe.phases[1].max_epochs is None
    want = [0] * 10 + [1] * 10 + [2] * 25 + [3] * 11
    assert [regs.index(regime_at(regs, s)) for s in range(56)] == want
    assert regime_at(regs, 10_000) is regs[-1]


def test_an_amendment_at_step_zero_replaces_the_first_regime(recipe):
    regs = regimes(recipe, [A(0, current={"tau": 0.2})])
    assert [(r.from_step, r.applied) for r in regs] == [(0, 1)] and regs[0].recipe.phases[0].tau == 0.2


def test_entries_may_not_go_back_in_steps(recipe):
    exc = error_of(regimes, recipe, [A(20, current={"tau": 0.5}), A(19, current={"tau": 0.4})])
    assert exc.fields == ["from_step"] and "journal entry 2" in str(exc) and "20" in str(exc)


def test_entry_that_cannot_apply_is_named(recipe):
    exc = error_of(regimes, recipe, [A(20, current={"tau": 0.5}), A(45, pretrain={"tau": 0.4})])
    assert str(exc).startswith("journal entry 2 (from_step 45): ") and exc.fields == ["changes.pretrain"]


def test_budgets_change_the_timeline_after_the_amendment_phase_only(recipe):
    regs = regimes(recipe, [A(10, midtrain={"tokens": 20 * 8 * 8192}), A(45, decay={"tokens": 3 * 8 * 8192})])
    t0, t1, t2 = (r.timeline for r in regs)
    assert (t0.phase_start, t0.total_steps) == ([0, 40, 50], 56)
    assert (t1.phase_start, t1.total_steps) == ([0, 40, 60], 66)
    assert (t2.phase_start, t2.total_steps) == ([0, 40, 60], 63)
    # Every regime agrees with the one before on the steps before its from_step.
    for prev, reg in zip(regs, regs[1:]):
        for s in range(reg.from_step):
            a, b = prev.timeline.locate(s), reg.timeline.locate(s)
            assert (a.phase_index, a.first_sequence, a.global_batch, a.tokens_before) == \
                   (b.phase_index, b.first_sequence, b.global_batch, b.tokens_before)


def test_later_entries_apply_on_the_amended_timeline(recipe):
    # Step 58 exists only once decay has grown to 9 steps.
    regs = regimes(recipe, [A(10, decay={"tokens": 9 * 8 * 8192}), A(58, current={"tau": 0.1})])
    assert [r.from_step for r in regs] == [0, 10, 58] and regs[-1].recipe.phases[2].tau == 0.1
    exc = error_of(regimes, recipe, [A(58, current={"tau": 0.1})])
    assert exc.fields == ["from_step"]


# -- phase_pieces ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def languages(tmp_path_factory):
    rng = np.random.default_rng(1)
    sizes = {f"l{i:02d}_Latn": int(s) for i, s in enumerate(np.exp(rng.uniform(np.log(3e3), np.log(4e5), 16)))}
    root = write_random_corpus(tmp_path_factory.mktemp("corpus") / "m", sizes, seed=3, mean_doc_tokens=150,
                               shard_tokens=60_000)
    return read_manifest(root).languages


def pieces_of(recipe, journal, languages):
    """Regimes and, per phase, the pieces (plans built as the sampler builds them)."""
    regs = regimes(recipe, journal)
    plans = [[plan_phase(ph, i, languages, r.timeline.phase_start[i], float(r.timeline.tokens_start[i]))
              for i, ph in enumerate(r.recipe.phases)] for r in regs]
    return regs, plans, [phase_pieces(regs, plans, p) for p in range(len(regs[-1].recipe.phases))]


def spans(pieces):
    return [(p.start, p.stop) for p in pieces]


def check_pieces(regs, plans, pieces):
    """Pieces tile each phase exactly; each has the weights of the plan segment it names."""
    tl = regs[-1].timeline
    for p, ps in enumerate(pieces):
        assert ps and ps[0].start == 0 and ps[-1].stop == tl.layouts[p].total_sequences
        assert all(a.stop == b.start for a, b in zip(ps, ps[1:]))
        assert all(x.start < x.stop and x.phase == p for x in ps)
        for x in ps:
            plan = plans[x.regime][p]
            w = plan.segments[x.segment].allocation.weights
            keep = w > 0
            assert x.languages == tuple(np.asarray(plan.languages)[keep].tolist())
            np.testing.assert_array_equal(x.weights, w[keep] / w[keep].sum())
            assert x.start >= segment_bounds(tl.layouts[p].total_sequences, len(plan.segments))[x.segment]


def blend_at(pieces, seq):
    x = next(x for x in pieces if x.start <= seq < x.stop)
    return x.start, x.languages, x.weights.tobytes()


JOURNALS = {
    "none": [],
    "tau": [A(13, current={"tau": 0.2})],
    "later-only": [A(13, current={"mask_ratio": 0.2}, decay={"tokens": 9 * 8 * 8192})],
    "anneal": [A(11, current={"tau": {"start": 0.7, "end": 0.1}})],
    "anneal-then-end": [A(11, current={"tau": {"start": 0.7, "end": 0.1}}), A(27, current={"tau_end": 0.5})],
    "many": [A(5, current={"languages": {"top": 8}}, midtrain={"tokens": 12 * 8 * 8192}),
             A(5, current={"max_epochs": 50}), A(30, midtrain={"tau": {"start": 0.6, "end": 0.2}}),
             A(44, current={"mask_ratio": 0.1}), A(47, current={"language_weights": {"l06_Latn": 4.0}}),
             A(53, current={"languages": "all", "tau": 0.9})],
}


@pytest.mark.parametrize("name", list(JOURNALS))
def test_pieces_tile_every_phase(recipe, languages, name):
    regs, plans, pieces = pieces_of(recipe, JOURNALS[name], languages)
    check_pieces(regs, plans, pieces)


@pytest.mark.parametrize("name", [n for n in JOURNALS if JOURNALS[n]])
def test_steps_before_an_amendment_keep_their_blend(recipe, languages, name):
    """The exactness rule: with the journal cut before entry k, every sequence at a step before
    entry k's from_step sits in a piece with the same start and blend as with the whole journal."""
    journal = JOURNALS[name]
    _, _, full = pieces_of(recipe, journal, languages)
    for k, entry in enumerate(journal):
        regs, _, cut = pieces_of(recipe, journal[:k], languages)
        tl = regs[-1].timeline
        for p, lay in enumerate(tl.layouts):
            p0 = tl.phase_start[p]
            if entry.from_step <= p0:
                continue
            end = lay.total_sequences if entry.from_step >= p0 + lay.steps else lay.first_sequence(entry.from_step - p0)
            for seq in range(end):
                assert blend_at(cut[p], seq) == blend_at(full[p], seq), (k, p, seq)


def test_an_unchanged_blend_is_not_split(recipe, languages):
    _, _, base = pieces_of(recipe, [], languages)
    regs, plans, pieces = pieces_of(recipe, JOURNALS["later-only"], languages)
    assert spans(pieces[0]) == spans(base[0]) == [(0, 320)] and pieces[0][0].regime == 0
    assert spans(pieces[2]) == [(0, 72)]
    # The same inside an anneal: a mask-ratio change mid-segment leaves every piece as it was.
    annealed = recipe_with(tau={"start": 0.8, "end": 0.2})
    _, _, base = pieces_of(annealed, [], languages)
    _, _, pieces = pieces_of(annealed, [A(11, current={"mask_ratio": 0.25})], languages)
    assert spans(base[0]) == [(20 * s, 20 * s + 20) for s in range(16)]
    assert [(x.start, x.stop, x.languages, x.weights.tobytes()) for x in pieces[0]] == \
           [(x.start, x.stop, x.languages, x.weights.tobytes()) for x in base[0]]
    # And in midtrain, amended from its own step 5 (sequence 40).
    _, _, pieces = pieces_of(recipe, [A(45, current={"mask_ratio": 0.1})], languages)
    assert spans(pieces[1]) == [(0, 80)] and pieces[1][0].regime == 0


def test_a_tau_change_splits_at_the_first_sequence_of_from_step(recipe, languages):
    regs, plans, pieces = pieces_of(recipe, JOURNALS["tau"], languages)
    assert spans(pieces[0]) == [(0, 13 * 8), (13 * 8, 320)]
    assert [x.regime for x in pieces[0]] == [0, 1]
    assert not pieces[0][0].same_blend(pieces[0][1])
    _, _, pieces = pieces_of(recipe, [A(45, current={"tau": 0.9})], languages)
    assert spans(pieces[1]) == [(0, 40), (40, 80)]


def test_anneal_segments_are_clipped(recipe, languages):
    regs, plans, pieces = pieces_of(recipe, JOURNALS["anneal"], languages)
    # from_step 11 → sequence 88, inside segment 4 (80..100) of the 16-segment anneal.
    assert [(x.start, x.stop, x.regime, x.segment) for x in pieces[0]] == \
           [(0, 88, 0, 0), (88, 100, 1, 4)] + [(20 * s, 20 * s + 20, 1, s) for s in range(5, 16)]
    regs, plans, pieces = pieces_of(recipe, JOURNALS["anneal-then-end"], languages)
    # from_step 27 → sequence 216, inside segment 10 (200..220).
    assert [(x.start, x.stop, x.regime, x.segment) for x in pieces[0]] == \
           [(0, 88, 0, 0), (88, 100, 1, 4)] + [(20 * s, 20 * s + 20, 1, s) for s in range(5, 10)] + \
           [(200, 216, 1, 10), (216, 220, 2, 10)] + [(20 * s, 20 * s + 20, 2, s) for s in range(11, 16)]
    taus = [plans[x.regime][0].segments[x.segment].tau for x in pieces[0]]
    assert taus[0] == 0.7 and taus[-1] == pytest.approx(0.5 + (0.7 - 0.5) * 0.5 / 16)


def test_pieces_of_a_lengthened_later_phase(recipe, languages):
    regs, plans, pieces = pieces_of(recipe, [A(10, decay={"tokens": 9 * 8 * 8192}), A(52, current={"tau": 0.1})],
                                    languages)
    check_pieces(regs, plans, pieces)
    assert spans(pieces[2]) == [(0, 16), (16, 72)] and [x.regime for x in pieces[2]] == [1, 2]


def test_plan_regimes_matches_plans_built_by_hand(recipe, languages):
    journal = JOURNALS["many"]
    regs, plans, _ = pieces_of(recipe, journal, languages)

    class _Manifest:  # plan_regimes reads only `.languages`
        pass

    m = _Manifest()
    m.languages = languages
    got = plan_regimes(regs, m)
    assert len(got) == len(plans) and all(len(a) == len(b) for a, b in zip(got, plans))
    for row_got, row_want in zip(got, plans):
        for a, b in zip(row_got, row_want):
            assert (a.phase, a.index, a.start_step, a.languages) == (b.phase, b.index, b.start_step, b.languages)
            assert [s.allocation.weights.tobytes() for s in a.segments] == [s.allocation.weights.tobytes() for s in b.segments]
    # A phase that did not change (same phase, same start) is planned once and shared: decay
    # moves when entry 1 lengthens midtrain, then stays as it is until entry 6 (from step 53).
    assert got[0][2] is not got[1][2] and got[1][2] is got[2][2] is got[3][2] is got[4][2]


@pytest.mark.parametrize("name", list(JOURNALS))
def test_phase_allotments_add_up_to_the_phase(recipe, languages, name):
    regs, plans, pieces = pieces_of(recipe, JOURNALS[name], languages)
    tl = regs[-1].timeline
    for p, ps in enumerate(pieces):
        got = phase_allotments(regs, plans, p)
        L = regs[-1].recipe.phases[p].seq_len
        assert sum(got.values()) == pytest.approx(tl.layouts[p].total_sequences * L, rel=1e-12)
        want: dict[str, float] = {}
        for x in ps:
            for k, w in zip(x.languages, x.weights):
                want[k] = want.get(k, 0.0) + float(w) * (x.stop - x.start) * L
        assert got == pytest.approx(want, rel=1e-12)
    if name == "tau":
        base_regs, base_plans, _ = pieces_of(recipe, [], languages)
        before, after = phase_allotments(base_regs, base_plans, 0), phase_allotments(regs, plans, 0)
        assert before.keys() == after.keys() and before != pytest.approx(after)


# -- parse_sets ------------------------------------------------------------------------------

def test_parse_sets_syntax():
    got = parse_sets(["tau=0.4", "languages=top:200", "language_weights.swh_Latn=2", "language_weights.fra_Latn=0.5",
                      "decay.tokens=5e9", "decay.tau_end=0.2", "midtrain.languages=eng_Latn, fra_Latn",
                      "pretrain.mask_ratio=0.3:0.1", "current.max_epochs=3"], PHASES)
    assert got == {
        "current": {"tau": 0.4, "languages": {"top": 200}, "language_weights": {"swh_Latn": 2.0, "fra_Latn": 0.5},
                    "max_epochs": 3.0},
        "decay": {"tokens": 5e9, "tau_end": 0.2},
        "midtrain": {"languages": ["eng_Latn", "fra_Latn"]},
        "pretrain": {"mask_ratio": {"start": 0.3, "end": 0.1}},
    }
    assert parse_sets(["tau=0.7:0.3", "decay.languages=all"], PHASES) == {
        "current": {"tau": {"start": 0.7, "end": 0.3}}, "decay": {"languages": "all"}}
    assert parse_sets([], PHASES) == {}


def test_parse_sets_feeds_parse_amendment(recipe):
    changes = parse_sets(["tau=0.7:0.3", "languages=top:4", "decay.tokens=393216", "decay.language_weights.l01_Latn=3"],
                         PHASES)
    out = apply_amendment(recipe, parse_amendment({"from_step": 12, "changes": changes}))
    assert out.phases[0].tau == Anneal(start=0.7, end=0.3) and out.phases[0].languages == TopN(top=4)
    assert out.phases[2].language_weights == {"l01_Latn": 3.0}


@pytest.mark.parametrize("item, says", [
    ("tau", "expected FIELD=VALUE"), ("=0.4", "expected FIELD=VALUE"), ("tau=", "expected FIELD=VALUE"),
    ("temperature=0.4", "unknown field temperature"), ("decay=0.4", "unknown field (none)"),
    ("decay.temperature=0.4", "unknown field temperature"), ("language_weights=2", "language_weights.<language>"),
    ("language_weights.a.b=2", "language_weights.<language>"), ("tau.start=0.4", "takes no sub-key"),
    ("tau=abc", "'abc' is not a number"), ("tau=0.7:x", "'x' is not a number"), ("languages=top:many", "top:<N>"),
    ("nophase.tau=0.4", "unknown field nophase.tau"),
    # Other scripts' digits: float() and int() read them, and the journal then held numbers nobody typed.
    ("tau=\u0660.\u0665", "is not a number (ASCII digits"), ("languages=top:\u0661\u0662", "top:<N>"),
    ("decay.tokens=\uff11e9", "is not a number"),
])
def test_parse_sets_errors_name_set(item, says):
    exc = error_of(parse_sets, [item], PHASES)
    assert exc.fields == ["--set"] and str(exc).startswith("--set") and says in str(exc)
    assert item in str(exc) or item.partition("=")[2] in str(exc)


def test_parse_sets_unknown_field_lists_settable_and_phases():
    msg = str(error_of(parse_sets, ["temperature=0.4"], PHASES))
    assert "settable: tau, tau_end, languages, language_weights, max_epochs, mask_ratio, tokens" in msg
    assert "pretrain, midtrain, decay" in msg


def test_parse_sets_phase_name_with_a_dot():
    # Recipe phase names may contain '.' (pattern ^[A-Za-z0-9_.-]+$); `--set stage.2.tau=…` must reach that phase.
    assert parse_sets(["stage.2.tau=0.4"], ["stage.1", "stage.2"]) == {"stage.2": {"tau": 0.4}}


def test_a_phase_budget_past_the_limit_is_refused_in_an_amendment():
    # 1e30 was admitted over HTTP: 2·10^26 steps, and a far step's request hung the server.
    from curriculum.amend import AmendmentError, parse_amendment

    with pytest.raises(AmendmentError, match=r"tokens.*less than or equal to 1000000000000000"):
        parse_amendment({"from_step": 11, "changes": {"decay": {"tokens": 1e30}}}, "POST /v1/amendments")
    assert parse_amendment({"from_step": 11, "changes": {"decay": {"tokens": 1e15}}}, "t").changes["decay"].tokens == 1e15

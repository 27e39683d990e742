"""Fuzzing the live curriculum's inputs: `POST /v1/amendments` bodies, `curriculum amend --set`
strings and recipe TOML files (hypothesis, derandomized, bounded).

The contract held here (README "Live curriculum", "The journal"):
- bad input is a 4xx JSON error (HTTP) or a one-line error (CLI, recipe loading) that names the
  field, never a 500 or a traceback, and a refused amendment leaves the journal byte for byte;
- an admitted amendment never makes a later batch fail: every phase of the amended run is served,
  for world sizes 1 and 2, byte-identical to a Sampler rebuilt from recipe + manifest + journal,
  and the steps before `from_step` keep the bytes of the unamended run.

The regression tests at the end are inputs that once broke that contract.
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import RECIPES, ROOT, SCALED_MMBERT
from curriculum import cli
from curriculum.amend import AmendmentError, parse_amendment, parse_sets, plan_regimes, regimes
from curriculum.errors import CurriculumError, RecipeError
from curriculum.journal import Journal, journal_beside
from curriculum.manifest import read_manifest
from curriculum.plan import plan_all_variants
from curriculum.randomcorpus import write_random_corpus
from curriculum.recipe import load_recipe, parse_recipe
from curriculum.schedule import Timeline
from sampler_server.app import create_app
from sampler_server.sampler import Sampler
from trainer_client import wire

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sampler_server"))  # the server tests' helpers
from test_amend_http import AUTH, TOKEN, fetch, journal_bytes, reference  # noqa: E402
from test_app import SEED, make_corpus, same, settings_for, toml_value, write_recipe  # noqa: E402

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PHASES = ("pretrain", "midtrain", "decay")  # SCALED_MMBERT: steps 0..39, 40..49, 50..55
PHASE_START = (0, 40, 50)
TOTAL_STEPS = 56
BATCH_TOKENS = tuple(p["batch_tokens"] for p in SCALED_MMBERT["phases"])
NONFINITE = (math.nan, math.inf, -math.inf)
LONE = ("\ud800", "l01_Latn\udfff")  # lone surrogates: JSON's "\ud800" escape reads as one


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


def phase_at(step: int) -> str:
    return PHASES[sum(step >= s for s in PHASE_START) - 1]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """test_app's 20-language random-token manifest (l00_Latn .. l19_Latn)."""
    return make_corpus(tmp_path_factory.mktemp("amend-fuzz") / "m")


@pytest.fixture(scope="module")
def base(corpus):
    return reference(corpus)


@pytest.fixture(scope="module")
def ranked(base) -> list[str]:
    """The manifest's languages, largest first (pretrain blends the first 6, midtrain 12)."""
    return base.manifest.languages.sort(["tokens", "language"], descending=[True, False])["language"].to_list()


class Rig:
    """A server on a fresh recipe file (so a fresh journal beside it), replaced after anything
    that changed its state (an admitted amendment, a served step)."""

    def __init__(self, manifest: Path, root: Path):
        self.manifest, self.root, self.n = manifest, root, 0
        self.c: TestClient | None = None
        self.dirty = True

    def client(self) -> TestClient:
        if self.c is None or self.dirty:
            self.close()
            self.n += 1
            self.recipe = write_recipe(self.root / f"run{self.n}.toml", SCALED_MMBERT)
            self.c = TestClient(create_app(settings_for(self.manifest, self.recipe, amend_token=TOKEN, warmup=False)))
            self.c.__enter__()
            self.dirty = False
        return self.c

    def close(self) -> None:
        if self.c is not None:
            self.c.__exit__(None, None, None)
            self.c = None


@pytest.fixture(scope="module")
def rig(corpus, tmp_path_factory) -> Iterator[Rig]:
    r = Rig(corpus, tmp_path_factory.mktemp("runs"))
    try:
        yield r
    finally:
        r.close()


# -- the oracle for an admitted amendment --------------------------------------------------------


PROBE_STEPS = 1000  # probed steps lie this far into a phase at most, and below 10^6 overall: a
# budget amended to 1e300 tokens is admitted and served, but a first request far into it walks the blend there


def check_amended_run(c: TestClient, recipe: Path, manifest: Path, base, probe: float = 0.5) -> None:
    """The journal reads back; every phase of the amended run is served (its first and last steps,
    one between, and around each from_step) for world sizes 1 and 2, equal to a Sampler rebuilt
    from recipe + manifest + journal; steps before the first amendment equal the unamended run."""
    path = journal_beside(recipe)
    entries = Journal(path).read()
    assert entries, "an admitted amendment is in the journal"
    for line in path.read_bytes().splitlines():
        assert parse_amendment(line) in entries  # one valid amendment a line
    assert Journal(path).entries == entries  # the incremental reader agrees
    amended = reference(manifest, entries)
    tl = amended.timeline
    first = entries[0].from_step
    steps = set()
    for p, start in enumerate(tl.phase_start):
        n = min(tl.layouts[p].steps, PROBE_STEPS)
        steps |= {start, start + int(probe * (n - 1)), start + n - 1, start + tl.layouts[p].steps - 1}
    for s in (e.from_step for e in entries):
        steps |= {s - 1, s, s + 1}
    for step in sorted(s for s in steps if 0 <= s < min(tl.total_steps, 10**6)):
        for world in (1, 2):
            for rank in range(world):
                w = fetch(c, step, rank, world)
                assert same(w, amended.batch(step, rank, world)), (step, rank, world, entries)
                if step < first:
                    assert same(w, base.batch(step, rank, world)), (step, rank, world)
    for url in ("/v1/amendments", "/v1/dashboard", "/v1/recipe", f"/v1/schedule?step={min(tl.total_steps - 1, 10**6)}",
                "/v1/mixture", "/v1/progress"):
        r = c.get(url)
        assert r.status_code == 200, (url, r.text)


def assert_error(r, *needles: str) -> dict:
    """A 4xx with a JSON body whose message names each of `needles`."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    body = r.json()
    assert isinstance(body.get("message"), str) and body["message"] and isinstance(body.get("error"), str), body
    for n in needles:
        assert n in body["message"], (n, body)
    return body


# -- POST /v1/amendments: one defect in an otherwise valid amendment -----------------------------

# Out of range, not finite, or not a number. (pydantic's lax mode reads "0.4" and true as numbers:
# those are not defects.) None is not here: for an amendment field it means "unchanged".
BAD_UNIT = [-1.0, -1e-9, 1.0000001, 1.5, 2, 1e300, -1e300, *NONFINITE, "0.4x", [0.4], {"start": 0.2},
            {"start": 0.2, "end": 1.5}, {"start": math.nan, "end": 0.2}, {"start": 0.2, "end": 0.3, "mid": 0.1}]
JUNK = ["x", "", [], {}, [1, 2], {"a": 1}]


@st.composite
def defect(draw, ranked: list[str]) -> tuple[dict, list[str]]:
    """A valid amendment (fresh journal, nothing served) with one thing wrong, and the names its
    refusal must mention."""
    step = draw(st.integers(0, TOTAL_STEPS - 1))
    key = draw(st.sampled_from(["current", phase_at(step)]))
    body = {"from_step": step, "changes": {key: {"tau": draw(st.sampled_from([0.2, 0.5, 0.9]))}}}
    ch = body["changes"][key]
    name = phase_at(step)
    kind = draw(st.sampled_from(["tau", "mask_ratio", "tau_end", "max_epochs", "tokens-later", "tokens-current",
                                 "languages", "language_weights", "unknown-field", "unknown-phase", "empty-phase",
                                 "no-changes", "from_step", "earlier-phase", "current-and-name", "top-level"]))
    if kind == "tau":
        ch["tau"] = draw(st.sampled_from(BAD_UNIT))
        return body, ["tau"]
    if kind == "mask_ratio":
        ch["mask_ratio"] = draw(st.sampled_from([1.0, *BAD_UNIT]))
        return body, ["mask_ratio"]
    if kind == "tau_end":  # every phase of the recipe has a constant tau
        if draw(st.booleans()):
            del ch["tau"]
        ch["tau_end"] = draw(st.sampled_from([0.3, *BAD_UNIT]))
        return body, ["tau_end"]
    if kind == "max_epochs":
        ch["max_epochs"] = draw(st.sampled_from([0, -1, 1e-300, *NONFINITE, *JUNK]))
        return body, ["max_epochs"]
    if kind == "tokens-later":
        if step >= PHASE_START[-1]:
            body["from_step"], key, name = 5, "pretrain", "pretrain"
            body["changes"] = {key: {"tau": 0.4}}
        later = PHASES[PHASES.index(phase_at(body["from_step"])) + 1:]
        target = draw(st.sampled_from(later))
        body["changes"][target] = {"tokens": draw(st.sampled_from([0, -5, -1e300, *NONFINITE, *JUNK]))}
        return body, ["tokens"]
    if kind == "tokens-current":
        ch["tokens"] = BATCH_TOKENS[PHASES.index(name)] * draw(st.integers(1, 9))
        return body, [f"changes.{name}.tokens"]
    if kind == "languages":
        ch["languages"] = draw(st.sampled_from([
            {"top": 0}, {"top": -3}, {"top": "many"}, {"top": 2.5}, {"top": 10**30}, {"top": 3, "all": 1}, [], ["xx_Latn"],
            [ranked[0], "nope"], [ranked[0], ""], [ranked[0], LONE[1]], "some", "ALL", 5, [1], [None],
            [f"q{i:03d}_Latn" for i in range(3000)],
            {"all": True}]))
        return body, ["languages"]
    if kind == "language_weights":
        ch["language_weights"] = draw(st.sampled_from([
            {ranked[0]: -1}, {ranked[0]: math.nan}, {ranked[0]: math.inf}, {ranked[0]: "2x"}, {ranked[0]: None},
            {"zz_Latn": 2.0}, {"": 2.0}, {"not a language": 1.0}, {f"q{i:04d}_Latn": 1.0 for i in range(2000)},
            {LONE[0]: 2.0},
            [ranked[0]], "x", 3, {ranked[0]: [1]}]))
        return body, ["language_weights"]
    if kind == "unknown-field":
        field = draw(st.sampled_from(["taux", "seq_len", "batch_tokens", "name", "variants", "lr", "languages_",
                                      "Tau", "on_missing", "anneal_segments"]))
        ch[field] = draw(st.sampled_from([0.4, 1, "x", None, {}]))
        return body, [field]
    if kind == "unknown-phase":
        bad = draw(st.sampled_from(["nophase", "Pretrain", "pretrain ", "pretrain.tau", "all", "0", "decay:eng", "é", LONE[0]]))
        body["changes"][bad] = {"tau": 0.4}
        return body, [ascii(bad)[1:-1] if bad in LONE else bad]  # named escaped: JSON cannot carry it raw
    if kind == "empty-phase":
        body["changes"][draw(st.sampled_from(PHASES))] = {}
        return body, ["changes"]
    if kind == "no-changes":
        body["changes"] = draw(st.sampled_from([{}, [], None, "pretrain", {"pretrain": None}, {"pretrain": [0.4]}]))
        return body, ["changes"]
    if kind == "from_step":
        v = draw(st.sampled_from(["missing", -1, -(2**70), TOTAL_STEPS, TOTAL_STEPS + 7, 2**63, 10**40, 5.5, "five",
                                  None, [5], {"step": 5}, math.inf, math.nan]))
        if v == "missing":
            del body["from_step"]
        else:
            body["from_step"] = v
        body["changes"] = {"pretrain" if key == "pretrain" else "current": {"tau": 0.4}}
        return body, ["from_step"]
    if kind == "earlier-phase":
        if step < PHASE_START[1]:
            body["from_step"] = step = draw(st.integers(PHASE_START[1], TOTAL_STEPS - 1))
            body["changes"] = {"current": {"tau": 0.4}}
        earlier = PHASES[: PHASES.index(phase_at(step))]
        target = draw(st.sampled_from(earlier))
        body["changes"][target] = {"tau": 0.4}
        return body, [target]
    if kind == "current-and-name":
        body["changes"] = {"current": {"tau": 0.3}, name: {"mask_ratio": 0.2}}
        return body, [name]
    field, value = draw(st.sampled_from([("source", "s" * 201), ("reason", 5), ("reason", None), ("created_at", "soon"),
                                         ("when", "now"), ("changes_", {}), ("from", 3), ("source", []),
                                         ("reason", LONE[0]), ("source", LONE[1])]))
    body[field] = value
    return body, [field]


@fuzz(90)
@given(data=st.data())
def test_post_amendment_with_one_defect_names_the_field(rig, ranked, data):
    body, names = data.draw(defect(ranked))
    c = rig.client()
    before = journal_bytes(rig.recipe)
    text = json.dumps(body)  # NaN / Infinity as JavaScript writes them: Python's json reads them back
    r = c.post("/v1/amendments", content=text, headers={**AUTH, "Content-Type": "application/json"})
    if r.status_code == 201:
        rig.dirty = True
        pytest.fail(f"admitted an amendment with a defect ({names}): {text[:300]}")
    assert_error(r, *names)
    assert r.status_code == 422, r.text[:300]
    assert journal_bytes(rig.recipe) == before


# -- POST /v1/amendments: any body, any headers --------------------------------------------------

FIELDS = ["tau", "tau_end", "mask_ratio", "languages", "language_weights", "max_epochs", "tokens"]


def scalar() -> st.SearchStrategy:
    return st.one_of(st.floats(-0.5, 1.5), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**6),
                     st.sampled_from([0, 1, 0.999, 1e300, 10**30, 2**63, *NONFINITE, *LONE]), st.none(), st.booleans(),
                     st.text(max_size=5))


def valid(field: str, phase: int, ranked: list[str]) -> st.SearchStrategy:
    """Values of an amendment field that are in range for `phase` (planning may still refuse
    some: an infeasible cap, a multiplier for a language the phase no longer has)."""
    unit = st.floats(0, 1)
    return {
        "tau": st.one_of(unit, st.fixed_dictionaries({"start": unit, "end": unit})),
        "tau_end": unit,  # every phase's tau is constant: refused unless an earlier entry annealed it
        "mask_ratio": st.one_of(st.floats(0, 0.9), st.fixed_dictionaries({"start": st.floats(0, 0.9),
                                                                          "end": st.floats(0, 0.9)})),
        "languages": st.one_of(st.just("all"), st.builds(lambda n: {"top": n}, st.integers(1, 25)),
                               st.lists(st.sampled_from(ranked), min_size=1, max_size=5)),
        "language_weights": st.dictionaries(st.sampled_from(ranked[:6]), st.one_of(
            st.floats(0.05, 20), st.sampled_from([0.0, 1e-12, 1e6])), min_size=1, max_size=4),
        "max_epochs": st.floats(0.5, 1e4),
        "tokens": st.integers(1, 9).map(lambda n: float(n * BATCH_TOKENS[phase])),
    }[field]


@st.composite
def any_value(draw, field: str, phase: int, ranked: list[str]) -> object:
    """Half in range, half anything."""
    if field in FIELDS and draw(st.booleans()):
        return draw(valid(field, phase, ranked))
    langs = st.sampled_from([*ranked, "xx_Latn", "fr", "", "eng_Latn", "l00_Latn", *LONE])
    if field in ("tau", "mask_ratio", "tau_end"):
        return draw(st.one_of(scalar(), st.fixed_dictionaries({"start": scalar(), "end": scalar()})))
    if field == "languages":
        return draw(st.one_of(st.just("all"), st.fixed_dictionaries({"top": scalar()}),
                              st.lists(langs, max_size=6), scalar()))
    if field == "language_weights":
        return draw(st.one_of(st.dictionaries(langs, scalar(), max_size=5), scalar(),
                              st.integers(0, 4000).map(lambda n: {f"x{i}_Latn": 1.0 for i in range(n)})))
    return draw(scalar())


@st.composite
def any_body(draw, ranked: list[str]) -> tuple[bytes, str | None, dict]:
    """(body, content type, headers): mostly amendment-shaped JSON, some of it valid."""
    auth = "ok" if draw(st.integers(0, 4)) else draw(st.sampled_from(["none", "wrong", "basic", "empty"]))
    headers = {"ok": AUTH, "none": {}, "wrong": {"Authorization": "Bearer nope"},
               "basic": {"Authorization": f"Basic {TOKEN}"}, "empty": {"Authorization": "Bearer "}}[auth]
    ctype = draw(st.sampled_from(["application/json"] * 6 + [None, "text/plain", "application/x-www-form-urlencoded",
                                                             "application/json; charset=latin-1"]))
    kind = draw(st.sampled_from(["amendment"] * 4 + ["good"] * 3 + ["raw", "json"]))
    if kind == "raw":
        body = draw(st.one_of(st.binary(max_size=40), st.sampled_from([
            b"", b"null", b"[]", b"{", b"0", b'"x"', b'{"from_step": NaN, "changes": {"current": {"tau": 0.4}}}',
            b'{"from_step": 3, "changes": {"current": {"tau": Infinity}}}',
            b'{"from_step": 3, "changes": {"current": {"tau": 0.4}}, "from_step": 4}',
            b'{"from_step": 1' + b"0" * 5000 + b', "changes": {"current": {"tau": 0.4}}}',
            b'{"from_step": 3, "changes": {"current": {"tau": 1e999}}}',
            b"[" * 5000 + b"]" * 5000, b'{"from_step": 3, "changes": {"current": {"tau": 0.4}}}\xff',
            "{\"from_step\": 3, \"changes\": {\"current\": {\"tau\": 0.4}}, \"reason\": \"caf\u00e9\"}".encode("latin-1"),
        ])))
        return body, ctype, headers
    if kind == "json":
        leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6))
        doc = draw(st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                             st.dictionaries(st.text(max_size=6), kids, max_size=3)),
                                max_leaves=12))
        return json.dumps(doc).encode(), ctype, headers
    if kind == "good":  # in range, sometimes with one field anything
        step = draw(st.integers(0, TOTAL_STEPS - 1))
        body = {"from_step": step, "changes": draw(good_changes(step, ranked))}
        if draw(st.booleans()):
            key = draw(st.sampled_from(sorted(body["changes"])))
            field = draw(st.sampled_from([*FIELDS, "bogus"]))
            body["changes"][key][field] = draw(any_value(field, PHASES.index(phase_at(step)), ranked))
        return json.dumps(body).encode(), ctype, headers
    body: dict = {}
    if draw(st.integers(0, 9)):
        body["from_step"] = draw(st.one_of(st.integers(-3, TOTAL_STEPS + 3), st.integers(0, TOTAL_STEPS - 1), scalar()))
    changes = {}
    for key in draw(st.lists(st.sampled_from([*PHASES, "current", "current", "nophase", LONE[0]]), max_size=3, unique=True)):
        fields = draw(st.lists(st.sampled_from([*FIELDS, "bogus"]), max_size=3, unique=True))
        phase = PHASES.index(key) if key in PHASES else 0
        changes[key] = {f: draw(any_value(f, phase, ranked)) for f in fields}
    body["changes"] = changes
    if draw(st.booleans()):
        body[draw(st.sampled_from(["reason", "source", "created_at", "extra"]))] = draw(scalar())
    return json.dumps(body).encode(), ctype, headers


@fuzz(110)
@given(data=st.data())
def test_post_amendment_any_body_is_a_4xx_or_an_exact_amended_run(rig, corpus, base, ranked, data):
    content, ctype, headers = data.draw(any_body(ranked))
    c = rig.client()
    if data.draw(st.integers(0, 5), label="serve first") == 0:  # a served step: earlier from_steps are a 409
        fetch(c, data.draw(st.integers(0, TOTAL_STEPS - 1), label="served"))
        rig.dirty = True
    before = journal_bytes(rig.recipe)
    r = c.post("/v1/amendments", content=content, headers={**headers, **({"Content-Type": ctype} if ctype else {})})
    assert r.status_code < 500, (r.status_code, r.text[:500], content[:300])
    event(f"{r.status_code} {r.json().get('error', '')}")
    if r.status_code == 201:
        rig.dirty = True
        assert headers is AUTH
        check_amended_run(c, rig.recipe, corpus, base)
        return
    body = assert_error(r)
    if headers is not AUTH:
        assert r.status_code == 401 and "bearer token" in body["message"], body
    elif r.status_code == 422 and body["error"] == "invalid_amendment":
        # The field path (changes.<phase>.<field>), or for a run that does not plan on the
        # manifest the planner's words: the phase and its field.
        assert body.get("fields") or any(w in body["message"] for w in ("from_step", "changes.", "phase '")), body
    assert journal_bytes(rig.recipe) == before


# -- POST /v1/amendments: admitted amendments serve exactly ----------------------------------------


@st.composite
def good_changes(draw, step: int, ranked: list[str]) -> dict:
    """In-range changes for the phase of `step` and maybe later phases."""
    cur = PHASES.index(phase_at(step))
    out: dict = {}
    for i in sorted(draw(st.sets(st.integers(cur, 2), min_size=1, max_size=3))):
        fields = [f for f in FIELDS if f != "tau_end" and (f != "tokens" or i > cur)]
        chosen = draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True))
        out["current" if i == cur and draw(st.booleans()) else PHASES[i]] = {f: draw(valid(f, i, ranked)) for f in chosen}
    return out


@fuzz(22)
@given(data=st.data())
def test_admitted_amendments_serve_every_phase_exactly(rig, corpus, base, ranked, data):
    c = rig.client()
    rig.dirty = True
    served = data.draw(st.integers(-1, TOTAL_STEPS - 2), label="served before")
    if served >= 0:
        fetch(c, served)
    admitted = 0
    step = served + 1
    for _ in range(data.draw(st.integers(1, 3), label="amendments")):
        step = data.draw(st.integers(step, min(step + 20, TOTAL_STEPS - 1)), label="from_step")
        body = {"from_step": step, "changes": data.draw(good_changes(step, ranked)), "reason": "fuzz"}
        before = journal_bytes(rig.recipe)
        r = c.post("/v1/amendments", json=body, headers=AUTH)
        event(f"{r.status_code}")
        if r.status_code == 201:
            admitted += 1
            continue
        # In range, but not plannable on this manifest: a 422 that says why, journal untouched.
        assert_error(r)
        assert r.status_code == 422, r.text[:300]
        assert journal_bytes(rig.recipe) == before
    if admitted:
        check_amended_run(c, rig.recipe, corpus, base, probe=data.draw(st.floats(0, 1), label="probe"))


# -- `curriculum amend --set` --------------------------------------------------------------------

SET_VALUES = ["0.4", "0", "1", "-0", "0.7:0.3", "0.7:", ":0.3", "0.7:0.3:0.1", "1e309", "-1e309", "nan", "inf",
              "-inf", "1e-320", "1_000", " 0.4", "0x10", "٣", "top:3", "top:0", "top:-1", "top:", "top:1e3",
              "top:99999999999999999999999", "all", "l01_Latn,l03_Latn", "l01_Latn,,", ",", "xx_Latn", "fr",
              "65536", "393216", "1e300", "abc", "true", "=", "0.4=0.5", "\udcff", "l01_Latn,\udcff"]


SENSIBLE = {"tau": ["0.4", "0.7:0.3", "0", "1"], "tau_end": ["0.3"], "mask_ratio": ["0.2", "0.3:0.1", "0"],
            "languages": ["top:3", "all", "l01_Latn,l03_Latn", "l01_Latn"], "language_weights.l01_Latn": ["2", "0", "0.5"],
            "max_epochs": ["3", "1000"], "tokens": ["65536", "393216", "1e-3"]}


@st.composite
def set_item(draw) -> str:
    if draw(st.booleans()):  # a field with a value of its kind (some still refused: a phase, a step)
        field = draw(st.sampled_from(sorted(SENSIBLE)))
        prefix = draw(st.sampled_from(["", "current.", "midtrain.", "decay."] if field != "tokens" else ["midtrain.", "decay."]))
        return f"{prefix}{field}={draw(st.sampled_from(SENSIBLE[field]))}"
    prefix = draw(st.sampled_from(["", "", "", "pretrain.", "midtrain.", "decay.", "current.", "nophase.", "stage.2.",
                                   "pretrain..", "."]))
    field = draw(st.sampled_from(["tau", "tau_end", "mask_ratio", "languages", "language_weights.l01_Latn",
                                  "language_weights.xx_Latn", "language_weights", "language_weights.a.b",
                                  "max_epochs", "tokens", "temperature", "tau.start", ""]))
    value = draw(st.sampled_from(SET_VALUES))
    return draw(st.sampled_from([f"{prefix}{field}={value}"] * 8 + [f"{prefix}{field}", f"={value}", value]))


def run_cli(args: list[str]):
    """`curriculum ARGS` in this process, as `main` runs it: returns the exception a user would
    see as a one-line error or a usage message (None on success); anything else fails the test."""
    result = CliRunner().invoke(cli.app, args, standalone_mode=False)
    exc = result.exception
    usage = {"ClickException", "Abort"} & {k.__name__ for k in type(exc).__mro__}  # click's, or typer's copy of it
    if exc is None or isinstance(exc, CurriculumError) or usage:
        return exc
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return None
    raise AssertionError(f"curriculum {' '.join(args)}: uncaught {type(exc).__name__}: {exc}") from exc


PHASE_NAME = st.one_of(st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True),
                      st.sampled_from(["tau", "tokens", "a", "a.b", "a.tau", "tau.x", "language_weights", "x.y"]))


@fuzz(300)
@given(names=st.lists(PHASE_NAME, min_size=1, max_size=4, unique=True), i=st.integers(0, 3),
       field=st.sampled_from(["tau", "tau_end", "mask_ratio", "max_epochs", "tokens", "language_weights.l01_Latn"]),
       current=st.booleans())
def test_parse_sets_reaches_every_phase_and_field(names, i, field, current):
    """Any recipe's phase names (the recipe's pattern; some are field names, some hold dots):
    `FIELD=V` sets the current phase's field and `PHASE.FIELD=V` that phase's."""
    phase = names[i % len(names)]
    got = parse_sets([f"{field}=0.5" if current else f"{phase}.{field}=0.5"], names)
    key, _, sub = field.partition(".")
    assert got == {"current" if current else phase: {key: {sub: 0.5} if sub else 0.5}}


@pytest.fixture(scope="module")
def cli_recipe(tmp_path_factory) -> Path:
    return write_recipe(tmp_path_factory.mktemp("cli") / "run.toml", SCALED_MMBERT)


JOURNALS = count()


@fuzz(110)
@given(data=st.data())
def test_cli_amend_sets_are_applied_or_refused_in_one_line(cli_recipe, corpus, data):
    journal = cli_recipe.with_name(f"j{next(JOURNALS)}.amendments.jsonl")
    if data.draw(st.booleans(), label="journal has an entry"):
        Journal(journal).append(parse_amendment({"from_step": 10, "changes": {"pretrain": {"tau": 0.5}}}))
    before = journal.read_bytes() if journal.exists() else b""
    items = data.draw(st.lists(set_item(), min_size=1, max_size=3), label="sets")
    step = data.draw(st.sampled_from(["0", "3", "10", "12", "39", "40", "41", "50", "55", "56", "-1", "99999999999999999999",
                                      "x"]), label="step")
    with_manifest = data.draw(st.booleans(), label="--manifest")
    args = [str(cli_recipe), "--from-step", step, "--journal", str(journal)]
    args += ["--reason", data.draw(st.sampled_from(["", "more tail", "caf\u00e9\nline", "\udcff"]), label="reason")]
    args += [a for it in items for a in ("--set", it)]
    args += ["--manifest", str(corpus)] if with_manifest else []
    exc = run_cli(["amend", *args])
    event(type(exc).__name__ if exc is not None else "appended")
    after = journal.read_bytes() if journal.exists() else b""
    if exc is not None:
        assert after == before, args
        if isinstance(exc, CurriculumError):
            msg = str(exc)
            assert msg and "\n" not in msg and "Traceback" not in msg, msg
            assert any(w in msg for w in ("--set", "from_step", "changes", "step", "field ")), msg
        return
    entries = Journal(journal).read()
    assert len(entries) == len(Journal(journal).entries) and after.startswith(before) and len(after) > len(before)
    regs = regimes(load_recipe(cli_recipe), entries)
    if with_manifest:  # checked against the manifest on admission: the run must be servable
        plan_regimes(regs, read_manifest(corpus))
        amended = reference(corpus, entries)
        last = entries[-1].from_step
        for s in {last, TOTAL_STEPS - 1, *amended.timeline.phase_start}:
            if s < amended.total_steps:
                amended.batch(s, 1, 2)


def test_cli_amend_refusals_are_one_line_without_traceback(cli_recipe, corpus, tmp_path):
    journal = tmp_path / "j.amendments.jsonl"
    for sets, says in ((["decay.tokens=1e309"], "tokens"), (["max_epochs=inf"], "max_epochs"),
                       (["languages=top:99999999999999999999999"], "languages")):
        proc = subprocess.run([sys.executable, "-m", "curriculum.cli", "amend", str(cli_recipe), "--from-step", "5",
                               "--journal", str(journal), "--manifest", str(corpus), *[f"--set={s}" for s in sets]],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
            proc.stderr
        assert not journal.exists() or journal.read_bytes() == b""


# -- recipe TOML ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan_manifest(tmp_path_factory) -> Path:
    """A small built manifest whose keys include eng_Latn (mmbert.toml's decay variant weighs it)."""
    keys = ["eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "rus_Cyrl", "cmn_Hani", "jpn_Jpan", "arb_Arab",
            "hin_Deva", "swh_Latn", "yor_Latn", "isl_Latn"]
    sizes = {k: 4000 * (i + 1) ** 2 for i, k in enumerate(keys)}
    return write_random_corpus(tmp_path_factory.mktemp("plan") / "m", sizes, seed=2, mean_doc_tokens=120,
                               shard_tokens=1 << 20)


SHIPPED = {name: tomllib.loads((RECIPES / name).read_text()) for name in ("demo.toml", "mmbert.toml")}
PHASE_KEYS = ["name", "tokens", "batch_tokens", "seq_len", "languages", "on_missing", "tau", "mask_ratio", "max_epochs",
              "lr", "source_weights", "language_weights", "anneal_segments", "batch_warmup", "variants"]
NUMBERS = [0, -1, 1, 2, 3, 7, 0.5, 1.5, -0.25, 1e300, 1e-300, 2**40, 2**63 - 1, *NONFINITE, 4095, 48, 250]
VALUES = [*NUMBERS, "x", "", "all", True, [], {}, ["fr"], {"top": 3}, {"start": 0.7, "end": 0.3},
          {"start": 0.2, "end": 1.4}, [{"name": "v"}]]


def to_toml(data: dict) -> str:
    """A recipe dict as TOML (phases as [[phases]] tables when they are a list of tables)."""
    phases = data.get("phases")
    tables = isinstance(phases, list) and phases and all(isinstance(p, dict) for p in phases)
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in data.items() if not (k == "phases" and tables) and v is not None]
    for p in phases if tables else ():
        lines += ["", "[[phases]]"] + [f"{json.dumps(k)} = {toml_value(v)}" for k, v in p.items() if v is not None]
    return "\n".join(lines) + "\n"


@st.composite
def mutated_recipe(draw) -> tuple[str, dict, list[str]]:
    """(shipped file, mutated recipe dict, phase names touched)."""
    name = draw(st.sampled_from(sorted(SHIPPED)))
    data = copy.deepcopy(SHIPPED[name])
    touched = []
    for _ in range(draw(st.integers(1, 3))):
        phases = data.get("phases") if isinstance(data.get("phases"), list) else []
        i = draw(st.integers(0, max(0, len(phases) - 1)))
        ph = phases[i] if phases and isinstance(phases[i], dict) else None
        op = draw(st.sampled_from(["variants", "delete", "set", "tau", "shape", "budget", "warmup", "lr", "unknown",
                                   "variants", "phases", "top", "languages", "set", "variants"]))
        if ph is None or op == "top":
            key = draw(st.sampled_from(["name", "description", "phases", "bogus"]))
            if draw(st.booleans()):
                data.pop(key, None)
            else:
                data[key] = draw(st.sampled_from(VALUES))
            continue
        touched.append(str(ph.get("name")))
        if op == "delete":
            ph.pop(draw(st.sampled_from(PHASE_KEYS)), None)
        elif op == "set":
            ph[draw(st.sampled_from(PHASE_KEYS))] = draw(st.sampled_from(VALUES))
        elif op == "tau":
            field = draw(st.sampled_from(["tau", "mask_ratio"]))
            ph[field] = draw(st.sampled_from([-0.1, 1.0, 1.01, 0.0, 0.99, *NONFINITE, {"start": 0.5, "end": -0.5},
                                              {"start": 0.5}, {"start": 0.5, "end": 0.2, "x": 1}]))
        elif op == "shape":
            seq = ph.get("seq_len") if isinstance(ph.get("seq_len"), int) else 128
            ph[draw(st.sampled_from(["seq_len", "batch_tokens"]))] = draw(st.sampled_from(
                [seq + 1, seq - 1, 1, 2, 3, 0, -seq, seq * 3 + 5, 10**6 + 1, 2.0 * seq, str(seq)]))
        elif op == "budget":
            ph["tokens"] = draw(st.sampled_from([0, -1, 1, 1e-9, 1e300, math.inf, math.nan, 2**70, "1e6", 10]))
        elif op == "warmup":
            ph["batch_warmup"] = draw(st.sampled_from([
                {"tokens": 1e6, "min_sequences": 10**9}, {"tokens": 1e6, "min_sequences": 7},
                {"tokens": 1e6, "min_sequences": 8, "multiple": 3}, {"tokens": 1e30, "min_sequences": 1},
                {"tokens": 0, "min_sequences": 1}, {"tokens": 1e5, "min_sequences": 0}, {"min_sequences": 4},
                {"tokens": 1e5, "min_sequences": 4, "bogus": 1}, {"tokens": 2e4, "min_sequences": 2}, 5]))
        elif op == "lr":
            ph["lr"] = draw(st.sampled_from([
                {"warmup_tokens": 1e30}, {"warmup_tokens": -1}, {"decay": "cosine"}, {"final_factor": 0},
                {"final_factor": 2}, {"decay": "linear", "decay_tokens": 0}, {"decay_tokens": math.inf},
                {"warmup_tokens": math.nan}, {"bogus": 1}, "fast"]))
        elif op == "unknown":
            ph[draw(st.sampled_from(["bogus", "Tau", "seqlen", "variant_"]))] = draw(st.sampled_from(VALUES))
        elif op == "variants":
            v = {"name": draw(st.sampled_from(["a", "b", "all", "", "bad name", "eng"]))}
            field = draw(st.sampled_from(["tau", "mask_ratio", "tokens", "languages", "max_epochs", "language_weights",
                                          "on_missing", "description", "bogus", "seq_len"]))
            bad = {"tau": [1.5, -0.1, {"start": 0.2, "end": 2.0}], "mask_ratio": [1.0, 2.0], "tokens": [10, 1e3, 0],
                   "max_epochs": [1e-9, 0], "languages": [[], ["xx_Latn"], {"top": 0}],
                   "language_weights": [{"zz_Latn": 2.0}, {"eng_Latn": -1}]}.get(field, [])
            v[field] = draw(st.sampled_from([*bad, *VALUES]))
            ph["variants"] = [*(ph.get("variants") if isinstance(ph.get("variants"), list) else []),
                              v, *([dict(v)] if draw(st.booleans()) else [])]
        elif op == "phases":
            how = draw(st.sampled_from(["empty", "duplicate", "drop", "not a table"]))
            if how == "empty":
                data["phases"] = []
            elif how == "duplicate":
                phases.append(copy.deepcopy(ph))
            elif how == "drop":
                phases.pop(i)
            else:
                phases[i] = draw(st.sampled_from([5, "phase", [1]]))
        elif op == "languages":
            ph["languages"] = draw(st.sampled_from([{"top": 0}, {"top": 10**30}, [], ["xx_Latn"], ["fr", "fr"],
                                                    ["fr", "not a language"], "some", {"top": 2, "x": 1}]))
    return name, data, touched


def check_recipe_file(path: Path, manifest) -> None:
    """Load `path`: fine, then plan it on `manifest` (fine, or a CurriculumError naming the phase);
    or a RecipeError naming the file. Anything else fails the test."""
    try:
        rec = load_recipe(path)
    except RecipeError as exc:
        msg = str(exc)
        assert msg.startswith(f"recipe {path}: "), msg
        assert "\n" not in msg.strip() or "not valid TOML" in msg, msg
        return
    try:
        plan_all_variants(rec, manifest)
        for v in [None, *{v for vs in rec.variant_names().values() for v in vs}]:
            Timeline(rec.resolve(v))
    except CurriculumError as exc:
        assert "phase " in str(exc), str(exc)


@fuzz(140)
@given(m=mutated_recipe())
def test_recipe_mutations_load_and_plan_or_name_file_phase_and_field(plan_manifest, tmp_path_factory, m):
    name, data, touched = m
    path = tmp_path_factory.mktemp("recipe") / name
    path.write_text(to_toml(data))
    manifest = read_manifest(plan_manifest)
    try:
        rec = load_recipe(path)
    except RecipeError as exc:
        msg = str(exc)
        event("refused on load")
        assert msg.startswith(f"recipe {path}: "), msg
        if "not valid TOML" not in msg:
            # A phase's error names it (by name or index) and, for a field, the field.
            phase_err = re.findall(r"phase '([^']*)' \(phases\[\d+\]\)|phases\[(\d+)\]", msg)
            assert phase_err or "field " in msg or "recipe:" in msg or "unique" in msg, msg
        return
    try:
        plans = plan_all_variants(rec, manifest)
        assert plans and all(p.table.height for p in plans)
        for v in [None, *{v for vs in rec.variant_names().values() for v in vs}]:
            Timeline(rec.resolve(v))
        event("planned")
    except CurriculumError as exc:
        event("refused by plan")
        assert "phase " in str(exc), str(exc)
    exc = run_cli(["plan", str(path), "--manifest", str(plan_manifest)])  # the table too
    assert exc is None or ("phase " in str(exc) and "\n" not in str(exc)), exc


@fuzz(60)
@given(name=st.sampled_from(sorted(SHIPPED)), data=st.data())
def test_recipe_line_edits_load_or_name_the_file(plan_manifest, tmp_path_factory, name, data):
    lines = (RECIPES / name).read_text().splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["delete", "duplicate", "swap", "truncate"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        else:
            lines[i] = lines[i][: len(lines[i]) // 2]
    path = tmp_path_factory.mktemp("lines") / name
    path.write_text("\n".join(lines) + "\n")
    check_recipe_file(path, read_manifest(plan_manifest))


def test_cli_plan_of_a_bad_recipe_is_one_line(tmp_path, plan_manifest):
    data = copy.deepcopy(SHIPPED["mmbert.toml"])
    data["phases"][2]["variants"][1]["tau"] = 1.5
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(data))
    proc = subprocess.run([sys.executable, "-m", "curriculum.cli", "plan", str(path), "--manifest", str(plan_manifest)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert str(path) in proc.stderr and "decay" in proc.stderr and "'eng'" in proc.stderr and "tau" in proc.stderr


# -- regressions: inputs that once broke the contract --------------------------------------------


@pytest.mark.parametrize("body, field", [
    # An infinite budget: 500 (OverflowError computing the phase's steps).
    ('{"from_step": 3, "changes": {"decay": {"tokens": Infinity}}}', "changes.decay.tokens"),
    # An infinite cap or multiplier: admitted, then stored as null, a journal line that no longer reads.
    ('{"from_step": 3, "changes": {"pretrain": {"max_epochs": Infinity}}}', "changes.pretrain.max_epochs"),
    ('{"from_step": 3, "changes": {"pretrain": {"language_weights": {"l01_Latn": Infinity}}}}',
     "changes.pretrain.language_weights"),
    ('{"from_step": 3, "changes": {"pretrain": {"tau": NaN}}}', "changes.pretrain.tau"),
    # Bools and numeric strings were read as numbers (pydantic's lax mode): `true` as 1.0.
    ('{"from_step": 3, "changes": {"pretrain": {"tau": true}}}', "changes.pretrain.tau"),
    ('{"from_step": 3, "changes": {"pretrain": {"mask_ratio": "0.2"}}}', "changes.pretrain.mask_ratio"),
    ('{"from_step": true, "changes": {"pretrain": {"tau": 0.4}}}', "from_step"),
    ('{"from_step": "3", "changes": {"pretrain": {"tau": 0.4}}}', "from_step"),
    ('{"from_step": 3, "changes": {"pretrain": {"languages": {"top": true}}}}', "changes.pretrain.languages"),
    ('{"from_step": 3, "changes": {"decay": {"tokens": "1e9"}}}', "changes.decay.tokens"),
    ('{"from_step": 3, "changes": {"pretrain": {"language_weights": {"l01_Latn": false}}}}',
     "changes.pretrain.language_weights"),
    # top-N past an int64: 500 (OverflowError in the dataframe's head).
    ('{"from_step": 3, "changes": {"pretrain": {"languages": {"top": 1000000000000000000000000000000}}}}',
     "changes.pretrain.languages"),
    # Lone surrogates: 500 (the journal line or the error response cannot be encoded), or a 422
    # whose message was a serializer's UnicodeEncodeError naming no field.
    ('{"from_step": 3, "changes": {"pretrain": {"tau": 0.4}}, "reason": "\\ud800"}', "reason"),
    ('{"from_step": 3, "changes": {"\\ud800": {"tau": 0.4}}}', "changes"),
    ('{"from_step": 3, "changes": {"pretrain": {"languages": ["\\ud800"]}}}', "changes.pretrain.languages"),
])
def test_regression_post_amendment_refusals(rig, body, field):
    c = rig.client()
    r = c.post("/v1/amendments", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert_error(r, field)
    assert r.status_code == 422 and journal_bytes(rig.recipe) == b""


def test_regression_a_vanishing_share_blends(rig, corpus, base, ranked):
    # Planned fine, admitted, then every batch of the phase from from_step on was a 500:
    # "blend_run: a deadline overflows the heap packing; a weight is too small". The blend now
    # takes any share > 0 (one too small to come up never does), so nothing needs refusing --
    # which matters because `curriculum amend` writes journals with no server to check them.
    c = rig.client()
    rig.dirty = True
    body = {"from_step": 50, "changes": {"decay": {"language_weights": {ranked[0]: 1e-300, ranked[1]: 1e300}}}}
    assert c.post("/v1/amendments", json=body, headers=AUTH).status_code == 201
    check_amended_run(c, rig.recipe, corpus, base)
    amended = reference(corpus, Journal(journal_beside(rig.recipe)).read())
    tl = amended.timeline
    decay = tl.phase_start[-1]
    served = {amended.languages[i] for step in range(max(50, decay), tl.total_steps)
              for i in amended.batch(step).lang}
    assert ranked[1] in served and ranked[0] not in served


def test_regression_bad_variant_is_refused_on_load(tmp_path):
    # A variant's tau out of range (or a budget below the phase's warm-up) loaded, then `plan`
    # and the server died on pydantic's ValidationError when they resolved it.
    data = copy.deepcopy(SHIPPED["mmbert.toml"])
    data["phases"][0]["variants"] = [{"name": "short", "tokens": 1e9}]  # below the 4e9-token LR warm-up
    data["phases"][2]["variants"][2]["tau"] = -0.5
    path = tmp_path / "r.toml"
    path.write_text(to_toml(data))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert msg.startswith(f"recipe {path}: ")
    assert "phase 'pretrain' (phases[0])" in msg and "variant 'short'" in msg and "lr.warmup_tokens" in msg
    assert "phase 'decay' (phases[2])" in msg and "variant 'mid': tau: tau must be in [0, 1], got -0.5" in msg


@pytest.mark.parametrize("edit, field", [
    # An infinite budget loaded; `plan` died on OverflowError computing its steps.
    (("tokens = 150_000", "tokens = inf"), "'tokens'"),
    (("tau = 0.3", "tau = nan"), "'tau'"),
    # Loaded; `plan` died on OverflowError in the dataframe's head.
    (("languages = { top = 24 }", "languages = { top = 100000000000000000000 }"), "'languages.top'"),
    # A warm-up of ~10^9 steps: `plan` walked them one by one (minutes, gigabytes) before answering.
    (("tokens = 600_000", "tokens = 2e12\nbatch_warmup = { tokens = 1e12, min_sequences = 1 }"), "batch_warmup"),
])
def test_regression_recipe_values_refused_on_load(tmp_path, edit, field):
    text = (RECIPES / "demo.toml").read_text()
    assert edit[0] in text
    path = tmp_path / "demo.toml"
    path.write_text(text.replace(*edit, 1))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert msg.startswith(f"recipe {path}: phase '") and field in msg, msg


def test_regression_a_phase_named_like_a_field_or_current():
    # `--set tau=0.4` was refused ("unknown field (none)") when a phase was named `tau`,
    # `--set a.tau=0.4` when phases `a` and `a.tau` both existed, and
    # `--set language_weights.l01_Latn=2` when a phase was named `language_weights`.
    assert parse_sets(["tau=0.4", "tau.tokens=9"], ["tau", "b"]) == {"current": {"tau": 0.4}, "tau": {"tokens": 9.0}}
    assert parse_sets(["a.tau=0.4"], ["a", "a.tau"]) == {"a": {"tau": 0.4}}
    assert parse_sets(["language_weights.l01_Latn=2"], ["language_weights"]) == {
        "current": {"language_weights": {"l01_Latn": 2.0}}}
    with pytest.raises(AmendmentError, match=r"unknown field \(none\)"):
        parse_sets(["b=0.4"], ["tau", "b"])
    # A phase named `current` could not be amended by name: the key means "the phase of from_step".
    data = copy.deepcopy(SCALED_MMBERT)
    data["phases"][2]["name"] = "current"
    with pytest.raises(RecipeError, match="phase name 'current' is reserved"):
        parse_recipe(data)


def test_an_amendment_is_checked_against_variants_not_built_yet(corpus, tmp_path, ranked):
    # The default decay variant blends every language, `few` only the top 3: a multiplier for a
    # language outside the top 3 was admitted (checked against the default only), and from then
    # on every request for `few` was a 409 variant_unavailable. Now every variant is checked, and
    # a variant other than the default ignores multipliers of languages it does not select.
    data = copy.deepcopy(SCALED_MMBERT)
    data["phases"][2]["variants"] = [{"name": "all"}, {"name": "few", "languages": {"top": 3}}]
    recipe = write_recipe(tmp_path / "run.toml", data)
    with TestClient(create_app(settings_for(corpus, recipe, amend_token=TOKEN, warmup=False))) as c:
        r = c.post("/v1/amendments", json={"from_step": 3, "changes": {"decay": {"language_weights": {ranked[10]: 2.0}}}},
                   headers=AUTH)
        assert r.status_code == 201, r.text  # the default variant selects that language: it applies there
        # A multiplier no variant can use is still refused, by the default variant's check.
        typo = c.post("/v1/amendments", json={"from_step": 4, "changes": {"decay": {"language_weights": {"zzz_Latn": 2.0}}}},
                      headers=AUTH)
        assert typo.status_code == 422 and "zzz_Latn" in typo.json()["message"], typo.text
        after = c.get("/v1/batches/51", params={"variant": "few"})
        assert after.status_code == 200, after.text  # `few` does not select it: ignored there
        unamended = Sampler(corpus, parse_recipe(data), seed=SEED, variant="few", chunk=64, block_tokens=4096)
        assert same(wire.decode(after.content), unamended.batch(51))

"""The live curriculum over HTTP: POST/GET /v1/amendments, 401/409/422, replicas, the policy."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import SCALED_MMBERT
from curriculum.amend import phase_allotments, plan_regimes, regimes
from curriculum.journal import Journal, journal_beside
from curriculum.recipe import parse_recipe
from sampler_server.app import create_app
from sampler_server.service import StartupError
from sampler_server.policy import propose_multipliers
from sampler_server.sampler import Sampler
from test_app import SEED, make_corpus, same, settings_for, write_recipe
from trainer_client import wire

TOKEN = "amend-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("amend-http") / "m")


@pytest.fixture
def recipe(tmp_path) -> Path:
    return write_recipe(tmp_path / "run.toml", SCALED_MMBERT)  # a fresh journal per test


def client(manifest, recipe, **kw) -> TestClient:
    return TestClient(create_app(settings_for(manifest, recipe, amend_token=TOKEN, warmup=False, **kw)))


def fetch(c: TestClient, step: int, rank: int = 0, world: int = 1) -> wire.WireBatch:
    r = c.get(f"/v1/batches/{step}", params={"rank": rank, "world_size": world})
    assert r.status_code == 200, r.text
    return wire.decode(r.content)


def reference(manifest, amendments=()) -> Sampler:
    return Sampler(manifest, parse_recipe(SCALED_MMBERT), seed=SEED, chunk=64, block_tokens=4096,
                   amendments=list(amendments))


def journal_bytes(recipe: Path) -> bytes:
    p = journal_beside(recipe)
    return p.read_bytes() if p.exists() else b""


def test_a_remote_manifest_off_s3_has_no_default_journal(tmp_path, monkeypatch, caplog):
    """Only S3 can hold the replicas' shared journal: a gs:// manifest's default journal was a
    local folder `gs:/bucket/...` in the working directory, one per host."""
    from curriculum.journal import JournalLocationError
    from sampler_server.live import open_journal

    monkeypatch.chdir(tmp_path)
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text("")
    with caplog.at_level("WARNING"):
        assert open_journal(None, recipe_file, required=False, manifest="gs://bucket/m?retry_limit_seconds=1") is None
    assert "live amendments are off" in caplog.text and "gs://bucket/m " in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.toml"]
    with pytest.raises(JournalLocationError, match="gs://bucket/j: only a file"):
        open_journal("gs://bucket/j", recipe_file, required=True, manifest=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.toml"]


def test_another_run_cannot_take_over_a_journal(manifest, recipe):
    """Runs that share a recipe file share the journal beside it unless told otherwise: a server of
    another seed (another run) is refused at start-up, naming the journal; the same run restarts."""
    with client(manifest, recipe) as c:
        assert c.post("/v1/amendments", json={"from_step": 20, "changes": {"pretrain": {"tau": 0.2}}},
                      headers=AUTH).status_code == 201
    with pytest.raises(StartupError, match=rf"amendment journal {journal_beside(recipe)} belongs to another run.*seed {SEED}.*seed {SEED + 1}") as ei:
        create_app(settings_for(manifest, recipe, amend_token=TOKEN, warmup=False).model_copy(update={"seed": SEED + 1}))
    # It says what resetting would lose, and the exact files to delete.
    j = journal_beside(recipe)
    assert "(it holds 1 amendment(s) of that run, and its served steps)" in str(ei.value)
    assert f"rm -f {j} {j}.watermark {j}.run {j}.lock {j}.policy" in str(ei.value)
    with client(manifest, recipe) as c:  # the same run comes back to its journal
        assert c.get("/v1/amendments").json()["version"] == 1
    other = recipe.with_name("other.amendments.jsonl")
    own = settings_for(manifest, recipe, warmup=False, journal=str(other)).model_copy(update={"seed": SEED + 1})
    with TestClient(create_app(own)) as c:  # its own journal: fine
        assert c.get("/healthz").status_code == 200


def test_amend_over_http_serves_exactly_the_amended_run(manifest, recipe):
    base = reference(manifest)
    with client(manifest, recipe) as c:
        early = fetch(c, 12)
        assert same(early, base.batch(12)) and early.metadata["run_id"] == base.run_id
        body = {"from_step": 20, "changes": {"current": {"tau": 0.25, "languages": {"top": 8}}}, "reason": "more tail"}
        r = c.post("/v1/amendments", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
        stored = r.json()["stored"]
        assert stored["changes"] == {"pretrain": {"tau": 0.25, "languages": {"top": 8}}}  # `current` resolved
        assert stored["created_at"] and r.json()["version"] == 1
        listing = c.get("/v1/amendments").json()
        assert listing["version"] == 1 and listing["amendments"][0]["from_step"] == 20
        assert listing["amendments"][0]["phase"] == "pretrain" and listing["earliest_from_step"] == 20
        entries = Journal(journal_beside(recipe)).entries
        amended = reference(manifest, entries)
        for step in (13, 19):  # before from_step: the unamended bytes and build id
            w = fetch(c, step, 1, 2)
            assert same(w, base.batch(step, 1, 2)) and w.metadata["build_id"] == base.run_id
        for step in (20, 27, 45):
            w = fetch(c, step, 1, 2)
            assert same(w, amended.batch(step, 1, 2)) and not same(w, base.batch(step, 1, 2))
            assert w.metadata["build_id"] == amended.build_id_at(step) != base.run_id
            assert w.metadata["run_id"] == base.run_id and w.metadata["journal_version"] == 1
            # /v1/schedule names the build id the step's batches carry (it said the run id).
            assert c.get("/v1/schedule", params={"step": step}).json()["build_id"] == w.metadata["build_id"]
        assert c.get("/v1/schedule", params={"step": 13}).json()["build_id"] == base.run_id
        for path in ("/healthz", "/readyz", "/"):  # HEAD answered 405: uptime checkers marked the replica down
            assert c.head(path, headers=AUTH).status_code == 200, path
        # /v1/mixture of the amended phase: its pieces' tokens, as `curriculum plan --journal` counts
        # them (it showed the new plan as if it had run from step 0).
        regs = regimes(parse_recipe(SCALED_MMBERT), entries)
        expect = phase_allotments(regs, plan_regimes(regs, base.manifest), 0)
        mix = c.get("/v1/mixture", params={"phase": "pretrain"}).json()
        got = {x["language"]: x["allotted_tokens"] for x in mix["languages"]}
        assert got.keys() == expect.keys() and all(got[k] == pytest.approx(expect[k]) for k in expect)
        assert len(mix["segments"]) >= 2 and {x["regime"] for x in mix["segments"]} == {0, 1}
        assert sum(x["tokens"] for x in mix["segments"]) == pytest.approx(sum(expect.values()))
        dash = c.get("/v1/dashboard").json()
        assert dash["amendments"][0]["tokens_before"] == base.schedule(20).tokens_before
        assert dash["original_phases"] is not None and dash["phases"][0]["n_languages"] == 8
    # A fresh server from recipe + manifest + journal replays both sides.
    with client(manifest, recipe) as c2:
        for step in (19, 20, 33):
            assert same(fetch(c2, step), amended.batch(step))


def test_refused_amendments_leave_the_journal_untouched(manifest, recipe):
    with client(manifest, recipe) as c:
        fetch(c, 30)  # served: step 30 can no longer change
        ok = {"from_step": 35, "changes": {"pretrain": {"mask_ratio": 0.2}}}
        cases = [
            ({}, ok, 401, "bearer token"),
            ({"Authorization": "Bearer wrong"}, ok, 401, "invalid bearer token"),
            (AUTH, {"from_step": 30, "changes": {"pretrain": {"tau": 0.3}}}, 409, "earliest allowed from_step is 31"),
            (AUTH, {"from_step": 35, "changes": {"pretrain": {"tau": 3.0}}}, 422, "changes.pretrain.tau"),
            (AUTH, {"from_step": 35, "changes": {"pretrain": {"taux": 0.3}}}, 422, "taux"),
            (AUTH, {"from_step": 35, "changes": {"nophase": {"tau": 0.3}}}, 422, "no phase 'nophase'"),
            (AUTH, {"from_step": 35, "changes": {"pretrain": {"tokens": 1e6}}}, 422, "changes.pretrain.tokens"),
            (AUTH, {"from_step": 35, "changes": {"pretrain": {"languages": ["xx_Latn"]}}}, 422, "xx"),
            (AUTH, {"from_step": 9999, "changes": {"pretrain": {"tau": 0.3}}}, 422, "past the last step"),
        ]
        for headers, body, status, text in cases:
            r = c.post("/v1/amendments", json=body, headers=headers)
            assert r.status_code == status, (body, r.text)
            assert text in r.json()["message"], r.json()
            assert journal_bytes(recipe) == b""
        # The refused amendment is not in the journal: its error does not say "journal entry 1".
        r = c.post("/v1/amendments", json={"from_step": 35, "changes": {"pretrain": {"tau": 3.0}}}, headers=AUTH)
        assert r.json()["message"].startswith("changes.pretrain.tau: ") and r.json()["fields"] == ["changes.pretrain.tau"]
        # A language the manifest lacks names the field too (planning errors had no `fields`).
        for change, field in (({"languages": ["xx_Latn"]}, "changes.pretrain.languages"),
                              ({"language_weights": {"xx": 2.0}}, "changes.pretrain.language_weights")):
            r = c.post("/v1/amendments", json={"from_step": 35, "changes": {"pretrain": change}}, headers=AUTH)
            assert r.status_code == 422 and r.json()["fields"] == [field], r.json()
        r = c.post("/v1/amendments", json={"from_step": 30, "changes": {"pretrain": {"tau": 0.3}}}, headers=AUTH)
        assert r.json()["earliest_from_step"] == 31
        # A trainer's progress report counts as well as a fetch.
        assert c.post("/v1/progress", json={"step": 36, "tokens": 1}).status_code == 201
        r = c.post("/v1/amendments", json=ok, headers=AUTH)
        assert r.status_code == 409 and r.json()["earliest_from_step"] == 37
        assert c.post("/v1/amendments", json={**ok, "from_step": 37}, headers=AUTH).status_code == 201
        assert c.get("/v1/amendments").json()["accepts_posts"] is True
    with TestClient(create_app(settings_for(manifest, recipe, warmup=False))) as c:  # no token configured at all
        r = c.post("/v1/amendments", json={**ok, "from_step": 38}, headers=AUTH)
        assert r.status_code == 403 and "--amend-token" in r.json()["message"]
        listing = c.get("/v1/amendments").json()
        assert listing["enabled"] is True and listing["accepts_posts"] is False  # follows the journal, takes no POSTs


def test_two_replicas_never_serve_pre_amendment_bytes(manifest, recipe):
    base = reference(manifest)
    with client(manifest, recipe, journal_poll=3600) as a, client(manifest, recipe, journal_poll=3600) as b:
        fetch(b, 10)  # replica b has served up to step 10 (its watermark)
        assert a.post("/v1/amendments", json={"from_step": 15, "changes": {"pretrain": {"tau": 0.1}}},
                      headers=AUTH).status_code == 201
        amended = reference(manifest, Journal(journal_beside(recipe)).entries)
        # b never polled the journal (poll interval of an hour): its first request past its
        # watermark publishes the step and applies the journal first.
        for step in (11, 15, 16, 39):
            w = fetch(b, step)
            assert same(w, amended.batch(step)), step
        assert same(fetch(b, 12), base.batch(12))
        # A replica busy applying a journal change answers 503 (retryable) past its watermark.
        live = b.app.state.service.live
        with live._lock:
            live.applying = True
            r = b.get("/v1/batches/40")
            assert r.status_code == 503 and r.json()["error"] == "journal_behind" and r.headers["retry-after"] == "1"
            assert b.get("/v1/batches/39").status_code == 200  # at or below its watermark: fine
            live.applying = False
        # A holder that only publishes a step (not applying) is waited for: no 503.
        live._lock.acquire()
        threading.Timer(0.6, live._lock.release).start()
        assert b.get("/v1/batches/41").status_code == 200


def test_a_replica_that_has_not_polled_answers_a_served_steps_build_id_from_the_journal(manifest, recipe):
    # A trainer that fails over checks the last trained step's build id with the new replica
    # (trainer_client's journal check). Another process of that replica (--workers, a balancer)
    # may not have polled the journal yet: it answered the unamended id and stopped a healthy run.
    with client(manifest, recipe, journal_poll=3600) as a, client(manifest, recipe, journal_poll=3600) as b:
        assert b.get("/v1/schedule", params={"step": 16}).status_code == 200  # b's view before the amendment
        assert a.post("/v1/amendments", json={"from_step": 15, "changes": {"pretrain": {"tau": 0.1}}},
                      headers=AUTH).status_code == 201
        served = fetch(a, 16).metadata["build_id"]
        assert served != a.get("/v1/recipe").json()["run_id"]  # an amended step
        answer = b.get("/v1/schedule", params={"step": 16}).json()
        assert answer["build_id"] == served and answer["tau"] == pytest.approx(0.1)


def test_an_amendment_leaves_other_phases_mixtures_as_they_were_and_the_dashboard_shows_the_sums(manifest, recipe):
    # Any amendment re-summed every phase from served tokens (pretrain's numbers moved), and the
    # dashboard showed an amended phase's last plan, not what the phase serves.
    with client(manifest, recipe) as c:
        before = c.get("/v1/mixture", params={"phase": "pretrain"}).json()
        assert c.post("/v1/amendments", json={"from_step": 45, "changes": {"midtrain": {"tau": 0.2}}},
                      headers=AUTH).status_code == 201
        assert c.get("/v1/mixture", params={"phase": "pretrain"}).json() == before
        mid = c.get("/v1/mixture", params={"phase": "midtrain"}).json()
        assert len({seg["regime"] for seg in mid["segments"]}) == 2  # two pieces, summed
        dash = c.get("/v1/dashboard").json()["phases"][1]
        weights = {r["language"]: r["weight"] for r in mid["languages"]}
        assert all(r["weight"] == pytest.approx(weights[r["language"]]) for r in dash["top"])
        assert dash["max_epochs_used"] == pytest.approx(max(r["epochs"] for r in mid["languages"]))
        assert dash["warnings"] == mid["warnings"]


def test_a_variants_dashboard_card_follows_an_amendment(manifest, tmp_path):
    # The other variants' cards were planned once at start-up: after an amendment set decay's τ
    # to 0.5, `/v1/mixture?variant=` said 0.5 and the card still 0.3.
    variants = {**SCALED_MMBERT, "phases": SCALED_MMBERT["phases"][:2] + [
        {**SCALED_MMBERT["phases"][2], "variants": [{"name": "all"}, {"name": "top6", "languages": {"top": 6}}]}]}
    recipe = write_recipe(tmp_path / "variants.toml", variants)
    with client(manifest, recipe) as c:
        card = lambda: next(p for p in c.get("/v1/dashboard").json()["variant_phases"] if p["name"] == "decay:top6")  # noqa: E731
        assert card()["tau"] == pytest.approx(0.3)
        assert c.post("/v1/amendments", json={"from_step": 45, "changes": {"decay": {"tau": 0.5}}},
                      headers=AUTH).status_code == 201
        served = c.get("/v1/mixture", params={"phase": "decay", "variant": "top6"}).json()
        assert served["tau"] == pytest.approx(0.5) and card()["tau"] == pytest.approx(0.5)


def test_loss_balance_policy_amends_within_its_bounds_and_replays(manifest, recipe):
    with client(manifest, recipe, policy="loss-balance", policy_every=5, policy_lookahead=3) as c:
        plan = c.get("/v1/mixture", params={"phase": "pretrain"}).json()
        keys = [x["language"] for x in plan["languages"]]
        hot, cold = keys[-1], keys[0]  # the smallest language has a high loss, the largest a low one
        loss = {k: 3.0 for k in keys} | {hot: 6.0, cold: 1.5}
        served = {}
        for step in range(0, 24):
            served[step] = fetch(c, step)
            r = c.post("/v1/progress", json={"step": step, "tokens": (step + 1) * 8192, "loss": 3.0,
                                             "loss_by_language": loss})
            assert r.status_code == 201
        entries = Journal(journal_beside(recipe)).entries
        assert len(entries) >= 3 and all(e.source == "policy:loss-balance" for e in entries)
        m = [e.changes["pretrain"].language_weights for e in entries]
        assert m[0][hot] == pytest.approx(1.2) and m[0][cold] == pytest.approx(0.8)  # ±20 % per amendment
        for prev, cur in zip(m, m[1:]):
            for k in cur:
                assert 0.8 * prev.get(k, 1) - 1e-9 <= cur[k] <= 1.2 * prev.get(k, 1) + 1e-9
        assert all(0.5 - 1e-9 <= v <= 2.0 + 1e-9 for x in m for v in x.values())
        dash = c.get("/v1/dashboard").json()
        assert [a["source"] for a in dash["amendments"]] == [e.source for e in entries]
        for step in range(24, 35):
            served[step] = fetch(c, step)
    # Shares moved toward the high-loss language, and no language fell below 1/4 of its recipe share.
    regs = regimes(parse_recipe(SCALED_MMBERT), entries)
    last = plan_regimes(regs, reference(manifest).manifest)[-1][0]
    orig = plan_regimes(regs[:1], reference(manifest).manifest)[0][0]
    share = dict(zip(last.table["language"].to_list(), last.table["weight"].to_list()))
    share0 = dict(zip(orig.table["language"].to_list(), orig.table["weight"].to_list()))
    assert share[hot] > share0[hot] and share[cold] < share0[cold]
    assert all(share[k] >= share0[k] / 4 for k in share0)
    assert sum(phase_allotments(regs, plan_regimes(regs, reference(manifest).manifest), 0).values()) > 0
    # Replay without the policy: the journal alone gives every served byte.
    replay = reference(manifest, entries)
    for step, w in served.items():
        assert same(w, replay.batch(step)), step


def test_one_replica_at_a_time_runs_the_policy(manifest, recipe):
    """Two replicas started alike with --policy on one journal: reports reach both, but only the
    lease holder amends; when it stops renewing (lease lapsed), the other takes over."""
    kw = dict(policy="loss-balance", policy_every=4, policy_lookahead=3)
    with client(manifest, recipe, **kw) as a, client(manifest, recipe, **kw) as b:
        pa_, pb = a.app.state.service.policy, b.app.state.service.policy
        keys = [x["language"] for x in a.get("/v1/mixture", params={"phase": "pretrain"}).json()["languages"]]
        loss = {k: 3.0 for k in keys} | {keys[-1]: 6.0}

        def report(c, step):
            fetch(c, step)
            r = c.post("/v1/progress", json={"step": step, "tokens": (step + 1) * 8192, "loss_by_language": loss})
            assert r.status_code == 201, r.text
            return r.json().get("amendment")

        made = [(name, report(c, step)) for step in range(0, 12) for name, c in (("a", a), ("b", b))]
        holders = {name for name, amendment in made if amendment}
        assert len(holders) == 1  # one replica amended, whichever asked first
        first, other = (pa_, pb) if holders == {"a"} else (pb, pa_)
        assert other.standby_for["holder"] == first.holder and other.proposals == 0
        before = len(Journal(journal_beside(recipe)).entries)
        # The holder stops renewing: its lease lapses, and the next report to the other takes over.
        record = journal_beside(recipe).with_name(journal_beside(recipe).name + ".policy")
        record.write_text(json.dumps({"holder": first.holder, "seen": 0}))
        second = b if other is pb else a
        taken = [report(second, step) for step in range(12, 24)]
        assert other.standby_for is None and other.proposals >= 1 and any(taken)
        assert json.loads(record.read_text())["holder"] == other.holder
        assert len(Journal(journal_beside(recipe)).entries) > before


def test_propose_multipliers_rule():
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    out = propose_multipliers({"a": 2.0, "b": 2.0, "c": 8.0}, shares, {"c": 1.9}, {}, 0.2, (0.5, 2.0))
    # reference loss = 0.5*2 + 0.3*2 + 0.2*8 = 3.2: a, b fall by the full 20 %, c is capped at 2.
    assert out == {"a": 0.8, "b": 0.8, "c": 2.0}
    assert propose_multipliers({"a": 1.0}, shares, {}, {}, 0.2, (0.5, 2.0)) == {}  # alone: its own reference
    assert propose_multipliers({"zz": 9.0}, shares, {}, {}, 0.2, (0.5, 2.0)) == {}  # not in the phase
    floor = propose_multipliers({"a": 0.1, "b": 5.0}, shares, {"a": 0.55}, {"a": 1.0}, 0.2, (0.5, 2.0))
    assert floor["a"] == 0.5  # never below lo x the recipe's multiplier


def test_journal_poller_applies_amendments_made_elsewhere(manifest, recipe):
    with client(manifest, recipe, journal_poll=0.05) as c:
        fetch(c, 3)
        j = Journal(journal_beside(recipe))
        from curriculum.amend import parse_amendment

        j.append(parse_amendment({"from_step": 25, "changes": {"pretrain": {"tau": 0.4}}}))
        svc = c.app.state.service
        done = threading.Event()
        for _ in range(100):
            if svc.sampler.journal_version == 1:
                done.set()
                break
            threading.Event().wait(0.05)
        assert done.is_set()  # applied before any request needed it
        assert np.array_equal(fetch(c, 25).input_ids, reference(manifest, j.entries).batch(25).input_ids)


def test_trainer_client_retries_a_replica_that_is_applying_the_journal(manifest, recipe):
    from test_app import live_server
    from trainer_client.client import RetryPolicy, SamplerClient

    app = create_app(settings_for(manifest, recipe, amend_token=TOKEN, warmup=False))
    live = app.state.service.live
    with live_server(app) as url:
        client = SamplerClient([url], retry=RetryPolicy(attempts=20, base_delay=0.05, max_delay=0.2))
        client.get_batch(5)
        live._lock.acquire()  # as if a journal change were being applied
        live.applying = True

        def done() -> None:
            live.applying = False
            live._lock.release()

        threading.Timer(0.8, done).start()
        w = client.get_batch(9)  # past the watermark: 503 journal_behind until the lock is free
        assert same(w, reference(manifest).batch(9))
        assert client.stats.requests >= 3  # 503s were answered, and retried
        client.close()


def test_invalid_requests_do_not_raise_the_watermark(manifest, recipe):
    with client(manifest, recipe) as c:
        assert c.get("/v1/batches/99999").status_code == 400
        assert c.get("/v1/batches/30", params={"world_size": 3}).status_code == 400
        assert c.post("/v1/progress", json={"step": 99999, "tokens": 1}).status_code == 400
        assert c.get("/v1/amendments").json()["earliest_from_step"] == 0
        r = c.post("/v1/amendments", json={"from_step": 30, "changes": {"pretrain": {"tau": 0.3}}}, headers=AUTH)
        assert r.status_code == 201, r.text


def test_a_stream_publishes_its_steps_a_window_at_a_time(manifest, recipe, monkeypatch):
    # /v1/stream raises the watermark STREAM_PUBLISH_WINDOW of its steps at a time (one journal
    # round trip a window, not a step); amendments then start after the window, and the bytes are
    # those of the amended run from from_step on.
    from sampler_server.app import STREAM_PUBLISH_WINDOW as W

    published: list[int] = []
    real = Journal.publish
    monkeypatch.setattr(Journal, "publish", lambda self, step: published.append(step) or real(self, step))
    base = reference(manifest)
    with client(manifest, recipe) as c:
        r = c.get("/v1/stream", params={"start": 3, "count": W + 5})
        assert r.status_code == 200, r.text
        got = list(wire.decode_stream(r.content))
        assert [w.metadata["step"] for w in got] == list(range(3, 3 + W + 5))
        assert all(same(w, base.batch(3 + i)) for i, w in enumerate(got))
        assert published == [3 + W - 1, 3 + W + 4]  # two windows, the second cut at the stream's end
        assert c.get("/v1/amendments").json()["earliest_from_step"] == 3 + W + 5
        refused = c.post("/v1/amendments", json={"from_step": 3 + W + 4, "changes": {"pretrain": {"tau": 0.3}}}, headers=AUTH)
        assert refused.status_code == 409
        body = {"from_step": 3 + W + 5, "changes": {"pretrain": {"tau": 0.3}}}
        assert c.post("/v1/amendments", json=body, headers=AUTH).status_code == 201
        amended = reference(manifest, Journal(journal_beside(recipe)).entries)
        r = c.get("/v1/stream", params={"start": 3 + W + 3, "count": 4})
        steps = list(range(3 + W + 3, 3 + W + 7))
        for step, w in zip(steps, wire.decode_stream(r.content), strict=True):
            assert same(w, (base if step < 3 + W + 5 else amended).batch(step))


def test_nearing_a_phase_boundary_warms_the_next_phase_in_the_background(manifest, recipe):
    with client(manifest, recipe) as c:
        assert c.post("/v1/amendments", json={"from_step": 20, "changes": {"pretrain": {"tau": 0.2}}},
                      headers=AUTH).status_code == 201
        svc = c.app.state.service
        st = svc.sampler._state
        midtrain_first = (1, 0)
        assert midtrain_first not in st.bases
        fetch(c, 21)  # within the last 64 steps of pretrain (it has 40): the next phase is warmed
        for _ in range(200):
            if midtrain_first in st.bases:
                break
            threading.Event().wait(0.02)
        assert midtrain_first in st.bases
        amended = reference(manifest, Journal(journal_beside(recipe)).entries)
        assert np.array_equal(st.bases[midtrain_first], amended.consumed_tokens(40))


def test_a_journal_the_run_cannot_apply_is_shown_and_curriculum_amend_checks_the_runs_manifest(manifest, recipe, tmp_path):
    import subprocess
    import sys

    from curriculum.amend import parse_amendment
    from curriculum.synth import synth_long_tail

    path = journal_beside(recipe)
    with client(manifest, recipe) as c:
        fetch(c, 3)
        assert Journal(path).run_record()["manifest"]["root"] == str(manifest.resolve())
        # `curriculum amend` without --manifest checks against the run's (was: "ok", and every replica broke).
        bad = ["--from-step", "30", "--set", "languages=zzz_Latn,l01_Latn"]
        p = subprocess.run([sys.executable, "-m", "curriculum.cli", "amend", str(recipe), *bad], capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 2 and f"cannot be planned on {manifest.resolve()}" in p.stderr, p.stderr
        other = synth_long_tail(tmp_path / "other", 20, 1e8)
        p = subprocess.run([sys.executable, "-m", "curriculum.cli", "amend", str(recipe), "--from-step", "30", "--set",
                            "tau=0.3", "--manifest", str(other)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and "is not the manifest of the run this journal belongs to" in p.stderr, p.stderr
        assert Journal(path).entries == []
        # An entry written past every check (a hand edit, an old client): the server says why, where it is asked.
        Journal(path).append(parse_amendment({"from_step": 30, "changes": {"pretrain": {"languages": ["zzz_Latn"]}}}, "t"))
        r = c.get("/v1/batches/31")
        assert r.status_code == 503 and r.json()["error"] == "journal_broken"
        listing = c.get("/v1/amendments")  # was a plain-text 500
        assert listing.status_code == 200 and "zzz_Latn" in listing.json()["error"], listing.text
        ready = c.get("/readyz")  # was 200 {"ready": true}: a balancer kept routing to it
        assert ready.status_code == 503 and not ready.json()["ready"]
        assert any("cannot be applied" in x for x in ready.json()["problems"]), ready.json()
        assert "sampler_ready 0.0" in c.get("/metrics").text  # was 1.0 while /readyz said 503
        # A served step's schedule (a trainer's journal check after a failover) still answers.
        assert c.get("/v1/schedule", params={"step": 3}).status_code == 200


def test_a_failure_applying_the_journal_that_is_not_the_journals_is_a_503_not_500s(manifest, recipe, monkeypatch):
    # Any other error while applying (a damaged file met on the way, a full disk) escaped as a 500
    # for every batch, with /readyz still true: a balancer kept routing to the replica.
    from curriculum.amend import parse_amendment

    path = journal_beside(recipe)
    with client(manifest, recipe) as c:
        fetch(c, 3)

        def failing(self, entries):
            raise OSError("No space left on device")

        monkeypatch.setattr(Sampler, "amend", failing)
        Journal(path).append(parse_amendment({"from_step": 30, "changes": {"pretrain": {"tau": 0.4}}}, "t"))
        r = c.get("/v1/batches/31")
        assert r.status_code == 503 and r.json()["error"] == "journal_broken", r.text
        assert "could not be applied here: OSError: No space left on device" in r.json()["message"]
        ready = c.get("/readyz")
        assert ready.status_code == 503 and not ready.json()["ready"]
        monkeypatch.undo()  # the cause goes away: the next request applies the journal and serves
        assert fetch(c, 31).metadata["journal_version"] == 1
        assert c.get("/readyz").status_code == 200

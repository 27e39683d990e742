"""The amendment journal as one S3 object (conditional writes), on moto's server on 127.0.0.1."""

from __future__ import annotations

import threading
import uuid

import pytest
from fastapi.testclient import TestClient

from conftest import SCALED_MMBERT
from curriculum.amend import AmendmentConflict, AmendmentError, parse_amendment
from curriculum.journal import JournalOwnerError
from curriculum.journal_s3 import ObjectJournal
from sampler_server.app import create_app
from test_amend_http import AUTH, TOKEN, fetch, reference
from test_app import make_corpus, same, settings_for, write_recipe


def A(step: int, reason: str = ""):
    return parse_amendment({"from_step": step, "changes": {"pretrain": {"tau": 0.4}}, "reason": reason})


@pytest.fixture
def uri(s3) -> str:
    return s3.uri(f"journals/{uuid.uuid4().hex[:8]}/run.amendments.json")


def test_object_journal_appends_publishes_and_refuses_like_the_file_journal(s3, uri):
    a, b = ObjectJournal(uri), ObjectJournal(uri)
    assert a.entries == [] and a.watermark() == -1 and a.earliest_step() == 0
    a.append(A(5, "one"))
    assert b.refresh() and [e.reason for e in b.entries] == ["one"] and b.entries[0].created_at is not None
    assert not b.refresh()
    assert b.publish(9) is False and a.watermark() == 9 and a.publish(3) is False and b.watermark() == 9
    body = s3.client.get_object(Bucket=s3.bucket, Key=a.key)["Body"].read()
    with pytest.raises(AmendmentConflict) as exc:
        a.append(A(9))
    assert exc.value.earliest == 10

    def refuse(entries):
        raise AmendmentError("no")

    with pytest.raises(AmendmentError):
        a.append(A(12), refuse)
    assert s3.client.get_object(Bucket=s3.bucket, Key=a.key)["Body"].read() == body  # untouched by refusals
    b.append(A(12, "two"))
    assert a.publish(13) is True and [e.reason for e in a.entries] == ["one", "two"]  # saw b's entry


def test_object_journal_belongs_to_one_run(s3, uri):
    a = ObjectJournal(uri)
    a.append(A(5, "one"))
    a.claim("aaaa", "run A")
    ObjectJournal(uri).claim("aaaa", "run A")
    body = s3.client.get_object(Bucket=s3.bucket, Key=a.key)["Body"].read()
    with pytest.raises(JournalOwnerError, match=r"belongs to another run \(run A\); this server runs run B.*holds 1 "
                       r"amendment\(s\) of that run.*delete the object"):
        ObjectJournal(uri).claim("bbbb", "run B")
    assert s3.client.get_object(Bucket=s3.bucket, Key=a.key)["Body"].read() == body
    assert [e.reason for e in ObjectJournal(uri).entries] == ["one"]  # the owner fields leave entries alone


def test_object_journal_policy_lease(uri):
    a, b = ObjectJournal(uri), ObjectJournal(uri)
    a.append(A(5, "one"))
    assert a.hold_policy("A", 60) is None and b.hold_policy("B", 60)["holder"] == "A"
    assert b.hold_policy("B", 0.0) is None and a.hold_policy("A", 60)["holder"] == "B"
    assert [e.reason for e in ObjectJournal(uri).entries] == ["one"]  # the lease leaves entries alone


def test_concurrent_appends_all_land_through_conditional_writes(uri):
    writers = [ObjectJournal(uri) for _ in range(3)]
    errors = []

    def run(j: ObjectJournal, name: str) -> None:
        try:
            for i in range(6):
                j.append(A(20, f"{name}{i}"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(j, n)) for j, n in zip(writers, "xyz")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    reasons = [e.reason for e in ObjectJournal(uri).entries]
    assert sorted(reasons) == sorted(f"{n}{i}" for n in "xyz" for i in range(6))
    for n in "xyz":  # each writer's own order is kept
        mine = [r for r in reasons if r[0] == n]
        assert mine == sorted(mine)


def test_two_replicas_share_an_object_journal(tmp_path, uri):
    manifest = make_corpus(tmp_path / "m")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ra = write_recipe(tmp_path / "a" / "run.toml", SCALED_MMBERT)  # different hosts: no shared files
    rb = write_recipe(tmp_path / "b" / "run.toml", SCALED_MMBERT)
    base = reference(manifest)
    mk = lambda r: TestClient(create_app(settings_for(manifest, r, amend_token=TOKEN, warmup=False,  # noqa: E731
                                                      journal=uri, journal_poll=3600)))
    with mk(ra) as a, mk(rb) as b:
        fetch(b, 10)
        r = a.post("/v1/amendments", json={"from_step": 10, "changes": {"pretrain": {"tau": 0.1}}}, headers=AUTH)
        assert r.status_code == 409 and r.json()["earliest_from_step"] == 11  # b's fetch counts
        assert a.post("/v1/amendments", json={"from_step": 15, "changes": {"pretrain": {"tau": 0.1}}},
                      headers=AUTH).status_code == 201
        amended = reference(manifest, ObjectJournal(uri).entries)
        for step in (12, 15, 30):  # b never polled: it publishes and applies on demand
            w = fetch(b, step)
            assert same(w, amended.batch(step)) and (step >= 15 or same(w, base.batch(step)))
        assert b.get("/v1/amendments").json()["journal"].startswith("s3://")
        assert not (tmp_path / "a" / "run.amendments.jsonl").exists()


def test_cli_amends_and_plans_an_object_journal(tmp_path, uri):
    from conftest import run_cli

    manifest = make_corpus(tmp_path / "m")
    recipe = write_recipe(tmp_path / "run.toml", SCALED_MMBERT)
    r = run_cli("amend", str(recipe), "--from-step", "12", "--set", "tau=0.3", "--journal", uri, "--manifest", str(manifest))
    assert r.returncode == 0, r.stderr
    assert [e.from_step for e in ObjectJournal(uri).entries] == [12]
    r = run_cli("plan", str(recipe), "--manifest", str(manifest), "--journal", uri, "--json")
    assert r.returncode == 0, r.stderr
    import json

    out = json.loads(r.stdout)
    assert out["version"] == 1 and out["amendments"][0]["changes"] == {"pretrain": {"tau": 0.3}}


def test_an_object_store_outage_is_a_503_to_retry_and_readyz_says_so(tmp_path):
    # Was: a plain-text 500 per request (botocore's EndpointConnectionError), /readyz ready.
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    stopped = False
    try:
        _, port = server.get_host_and_port()
        with pytest.MonkeyPatch.context() as mp:
            for k, v in (("AWS_ACCESS_KEY_ID", "t"), ("AWS_SECRET_ACCESS_KEY", "t"), ("AWS_DEFAULT_REGION", "us-east-1")):
                mp.setenv(k, v)
            boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="journals")
            uri = f"s3://journals/run.amendments.json?endpoint_override=127.0.0.1:{port}&scheme=http"
            manifest = make_corpus(tmp_path / "m")
            recipe = write_recipe(tmp_path / "run.toml", SCALED_MMBERT)
            s = settings_for(manifest, recipe, amend_token=TOKEN, warmup=False, journal=uri, journal_poll=3600)
            with TestClient(create_app(s)) as c:
                early = fetch(c, 3)
                server.stop()
                stopped = True
                r = c.get("/v1/batches/10")
                assert r.status_code == 503 and r.json()["error"] == "journal_unavailable", r.text
                assert r.headers["retry-after"] == "1" and "unreachable" in r.json()["message"]
                ready = c.get("/readyz")
                assert ready.status_code == 503 and any("unreachable" in x for x in ready.json()["problems"])
                assert c.get("/v1/amendments").status_code == 503
                assert c.post("/v1/progress", json={"step": 5, "tokens": 10}).status_code == 201  # kept
                assert same(fetch(c, 3), early)  # a step published before is still served
    finally:
        if not stopped:
            server.stop()


def test_journal_uri_options_are_checked():
    # A misspelt option sent the journal to AWS itself (https://bucket.s3.amazonaws.com/...).
    from curriculum.journal_s3 import JournalStoreError

    with pytest.raises(JournalStoreError, match=r"unknown option\(s\) endpoint_overide; it takes endpoint_override"):
        ObjectJournal("s3://b/j.json?endpoint_overide=127.0.0.1:1&scheme=http")
    with pytest.raises(JournalStoreError, match=r"scheme='ftp'"):
        ObjectJournal("s3://b/j.json?endpoint_override=127.0.0.1:1&scheme=ftp")

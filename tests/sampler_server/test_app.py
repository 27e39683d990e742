"""The HTTP service: batches over real HTTP equal Sampler.batch byte for byte, errors are 4xx JSON,
a lost shard is a 503 (and /readyz false) while the process stays up, auth, replicas, CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from conftest import SCALED_MMBERT
from curriculum.randomcorpus import write_random_corpus
from curriculum.recipe import parse_recipe
from sampler_server.app import create_app
from sampler_server.progress import ProgressRecord
from sampler_server.sampler import Sampler
from sampler_server.settings import ServerSettings
from trainer_client import wire

ROOT = Path(__file__).resolve().parents[2]
SEED = 7
RECIPE = SCALED_MMBERT
TOTAL_STEPS = 56


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


def write_recipe(path: Path, recipe: dict) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in recipe.items() if k != "phases"]
    for p in recipe["phases"]:
        lines += ["", "[[phases]]"] + [f"{k} = {toml_value(v)}" for k, v in p.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_corpus(out: Path) -> Path:
    rng = np.random.default_rng(1)
    sizes = {f"l{i:02d}_Latn": int(s) for i, s in enumerate(np.exp(rng.uniform(np.log(3e3), np.log(4e5), 20)))}
    return write_random_corpus(out, sizes, seed=3, mean_doc_tokens=150, shard_tokens=60_000)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("app")
    return make_corpus(d / "m"), write_recipe(d / "recipe.toml", RECIPE)


@pytest.fixture(scope="module")
def reference(inputs) -> Sampler:
    return Sampler(inputs[0], parse_recipe(RECIPE), seed=SEED, chunk=64, block_tokens=4096)


def settings_for(manifest: Path, recipe: Path, **kw) -> ServerSettings:
    return ServerSettings(manifest=manifest, recipe=recipe, seed=SEED, chunk=64, block_tokens=4096, **kw)


@contextmanager
def live_server(app) -> Iterator[str]:
    """Run `app` under uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def server(inputs) -> Iterator[str]:
    with live_server(create_app(settings_for(*inputs))) as url:
        yield url


def same(w: wire.WireBatch, b) -> bool:
    return all(getattr(w, k).dtype == getattr(b, k).dtype and getattr(w, k).tobytes() == getattr(b, k).tobytes()
               for k in ("input_ids", "labels", "cu_seqlens", "lang"))


def test_batch_over_http_equals_sampler_byte_for_byte(server, reference):
    with httpx.Client(base_url=server, timeout=30) as c:
        for step, rank, world, labels, comp in ((0, 0, 1, "sparse", "none"), (17, 1, 2, "dense", "none"),
                                                (39, 3, 4, "sparse", "zstd"), (40, 0, 1, "dense", "zstd"),
                                                (55, 7, 8, "sparse", "none")):
            r = c.get(f"/v1/batches/{step}", params=dict(rank=rank, world_size=world, labels=labels, compression=comp))
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == wire.MEDIA_TYPE and r.headers["x-build-id"] == reference.build_id
            w = wire.decode(r.content)
            assert same(w, reference.batch(step, rank, world))
            assert w.metadata["build_id"] == reference.build_id and w.metadata["step"] == step
            assert w.metadata["phase"] == reference.schedule(step).phase
            assert w.languages == tuple(reference.languages)


def test_stream_over_http_crosses_a_phase_boundary(server, reference):
    with httpx.Client(base_url=server, timeout=30) as c:
        r = c.get("/v1/stream", params=dict(start=37, count=6, rank=1, world_size=2, compression="zstd"))
        assert r.status_code == 200 and r.headers["x-batch-count"] == "6"
        got = list(wire.decode_stream(r.content))
        assert [w.metadata["step"] for w in got] == list(range(37, 43))
        assert [w.input_ids.shape[1] for w in got] == [1024] * 3 + [8192] * 3
        assert all(same(w, reference.batch(37 + i, 1, 2)) for i, w in enumerate(got))
        # Without count: to the end of the schedule; streamed as it is read.
        with c.stream("GET", "/v1/stream", params=dict(start=52, labels="dense")) as resp:
            data = b"".join(resp.iter_bytes())
        assert [w.metadata["step"] for w in wire.decode_stream(data)] == [52, 53, 54, 55]


def test_concurrent_requests_all_match(server, reference):
    steps = [3, 44, 12, 51, 29, 40, 8, 33]

    def fetch(step: int) -> bool:
        r = httpx.get(f"{server}/v1/batches/{step}", params={"rank": 1, "world_size": 2}, timeout=30)
        return r.status_code == 200 and same(wire.decode(r.content), reference.batch(step, 1, 2))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(fetch, steps))


@pytest.mark.parametrize(("method", "url", "status", "message"), [
    ("GET", "/v1/batches/-1", 400, "step must be >= 0, got -1"),
    ("GET", "/v1/batches/56", 400, "step 56 is past the last phase"),
    ("GET", "/v1/batches/0?rank=2&world_size=2", 400, "rank must be in [0, world_size=2), got 2"),
    ("GET", "/v1/batches/0?rank=-1&world_size=2", 400, "rank must be in"),
    ("GET", "/v1/batches/0?world_size=3", 400, "world_size 3 does not divide the global batch of 8"),
    ("GET", "/v1/batches/0?world_size=0", 400, "world_size must be >= 1"),
    ("GET", "/v1/batches/abc", 422, "path parameter 'step': Input should be a valid integer"),
    ("GET", "/v1/batches/1.5", 422, "path parameter 'step'"),
    ("GET", "/v1/batches/0?rank=one", 422, "query parameter 'rank': Input should be a valid integer"),
    ("GET", "/v1/batches/0?labels=bits", 422, "query parameter 'labels'"),
    ("GET", "/v1/batches/0?compression=gzip", 422, "query parameter 'compression'"),
    ("GET", "/v1/stream?start=50&count=10", 400, "start 50 + count 10 runs to step 59, past the last step"),
    ("GET", "/v1/stream?count=0", 400, "count must be >= 1"),
    ("GET", "/v1/stream?start=38&count=4&world_size=16", 400, "world_size 16 does not divide the global batch of 8"),
    ("GET", "/v1/stream?start=-3", 400, "step must be >= 0"),
    ("GET", "/v1/schedule?step=99", 400, "past the last phase"),
    ("GET", "/v1/schedule?step=x", 422, "query parameter 'step'"),
    ("GET", "/v1/mixture?phase=warmup", 404, "no phase 'warmup'; phases: pretrain, midtrain, decay"),
    ("GET", "/v1/mixture?phase=7", 404, "no phase '7'"),
    ("GET", "/v1/progress?limit=0", 422, "query parameter 'limit'"),
    ("GET", "/v2/batches/0", 404, "no route GET /v2/batches/0"),
    ("DELETE", "/v1/recipe", 405, "DELETE is not allowed"),
])
def test_invalid_requests_get_4xx_json(server, method, url, status, message):
    r = httpx.request(method, server + url, timeout=30)
    assert r.status_code == status, r.text
    body = r.json()
    assert message in body["message"] and body["error"]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"tokens": 5}, 422, "body field 'step': Field required"),
    ({"step": -1, "tokens": 5}, 422, "body field 'step': Input should be greater than or equal to 0"),
    ({"step": "x", "tokens": 5}, 422, "body field 'step'"),
    ({"step": 1, "tokens": 5, "loss": "NaN"}, 422, "body field 'loss': Input should be a valid number (got 'NaN')"),  # a string is no number
    ({"step": 1, "tokens": 5, "loss_by_language": {"xx_Zzzz": 1.0}}, 422, "unknown language key(s) xx_Zzzz"),
    ({"step": 1, "tokens": 5, "colour": "red"}, 422, "body field 'colour': Extra inputs are not permitted"),
    ({"step": 56, "tokens": 5}, 400, "step 56 is past the last step (55)"),
    # Were stored: a negative loss, a time of 1e300 (the live tokens/s then came from it), rank 5,000,000.
    ({"step": 1, "tokens": 5, "loss": -1.0}, 422, "body field 'loss': loss must be a finite number >= 0"),
    ({"step": 1, "tokens": 5, "loss_by_language": {"l03_Latn": -0.5}}, 422, "losses must be finite numbers >= 0"),
    ({"step": 1, "tokens": 5, "time": 1e300}, 422, "body field 'time': time must be unix seconds"),
    ({"step": 1, "tokens": 5, "time": 5.0}, 422, "body field 'time'"),
    ({"step": 1, "tokens": 5, "rank": 5_000_000}, 422, "body field 'rank'"),
])
def test_invalid_progress_reports(server, body, status, message):
    r = httpx.post(server + "/v1/progress", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert message in r.json()["message"] and "Value error" not in r.text
    r = httpx.post(server + "/v1/progress", content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "invalid_body" and "JSON" in r.json()["message"]


def test_control_plane(server, reference):
    with httpx.Client(base_url=server, timeout=30) as c:
        info = c.get("/v1/schedule", params={"step": 41}).json()
        assert info == {"build_id": reference.build_id, **reference.schedule(41).to_dict()}
        table = c.get("/v1/schedule").json()
        assert [p["start_step"] for p in table["phases"]] == [0, 40, 50] and table["total_steps"] == TOTAL_STEPS
        rec = c.get("/v1/recipe").json()
        assert rec["fingerprint"] == reference.recipe.fingerprint() and rec["recipe"]["name"] == "mmbert-scaled"
        assert rec["tokenizer"]["vocab_size"] == 32_000 and rec["tokenizer"]["mask_id"] == 4 and rec["languages"] == 20
        mix = c.get("/v1/mixture", params={"phase": "midtrain"}).json()
        plan = reference.plans[1].table
        assert [x["language"] for x in mix["languages"]] == plan["language"].to_list()
        assert np.allclose([x["weight"] for x in mix["languages"]], plan["weight"].to_numpy(), rtol=0, atol=0)
        assert [x["epochs"] for x in mix["languages"]] == plan["epochs"].to_list()
        assert c.get("/v1/mixture", params={"phase": "1"}).json() == mix
        assert len(c.get("/v1/mixture").json()["phases"]) == 3
        assert c.get("/healthz").json()["status"] == "ok" and c.get("/readyz").json()["ready"] is True


def test_metrics_count_requests_bytes_latency_and_tokens(inputs):
    with TestClient(create_app(settings_for(*inputs, warmup=False))) as c:
        sizes = [len(c.get(f"/v1/batches/{s}").content) for s in (0, 1, 45)]
        assert c.get("/v1/batches/999").status_code == 400
        text = c.get("/metrics").text
    assert 'sampler_http_requests_total{method="GET",route="/v1/batches/{step}",status="200"} 3.0' in text
    assert 'sampler_http_requests_total{method="GET",route="/v1/batches/{step}",status="400"} 1.0' in text
    assert f'sampler_http_response_bytes_total{{route="/v1/batches/{{step}}"}} ' in text
    sent = [ln for ln in text.splitlines() if ln.startswith('sampler_http_response_bytes_total{route="/v1/batches/{step}"}')]
    assert float(sent[0].split()[-1]) > sum(sizes)  # plus the 400's JSON
    assert 'sampler_batch_seconds_count{phase="pretrain"} 2.0' in text
    tok = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("sampler_tokens_served_total")}
    assert tok['sampler_tokens_served_total{group="top",phase="pretrain"}'] == 2 * 8 * 1024  # 6 languages: all "top"
    assert tok['sampler_tokens_served_total{group="tail",phase="pretrain"}'] == 0
    assert sum(v for k, v in tok.items() if 'phase="midtrain"' in k) == 8 * 8192
    assert 'sampler_build_info{build_id="' in text and "sampler_ready 1.0" in text


def test_progress_is_bounded_and_survives_a_restart(inputs, tmp_path):
    log = tmp_path / "progress.jsonl"
    s = settings_for(*inputs, warmup=False, progress_log=log, progress_history=3)
    with TestClient(create_app(s)) as c:
        for i in range(4):
            r = c.post("/v1/progress", json={"step": i, "tokens": (i + 1) * 8192, "loss": 9.0 - i, "time": 1.7e9 + i,
                                             "loss_by_language": {"l03_Latn": 8.5 - i}})
            assert r.status_code == 201, r.text
        live = c.get("/v1/progress").json()
        assert live["reports"] == 3 and live["step"] == 3 and live["tokens_per_second"] == pytest.approx(8192.0)
        assert live["consumed_tokens"] == [4 * 8192, 0, 0] and live["language_loss"] == {"l03_Latn": 5.5}
    lines = log.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["step"] == 3
    # A torn last line and a record of another build are skipped on reload.
    other = ProgressRecord(step=1, tokens=1, time=1.0, received=1.0, build_id="someotherbuild")
    with log.open("a") as f:
        f.write(other.model_dump_json() + "\n" + '{"step": 4, "tok')
    with TestClient(create_app(s)) as c:
        live = c.get("/v1/progress").json()
        assert live["reports"] == 3 and [p["step"] for p in live["series"]] == [1, 2, 3]
        svc = c.app.state.service
        assert svc.progress.skipped_other_build == 1 and svc.progress.skipped_unreadable == 0  # torn line: not yet read
        dash = c.get("/v1/dashboard").json()
        assert dash["live"]["step"] == 3 and [p["name"] for p in dash["phases"]] == ["pretrain", "midtrain", "decay"]


def test_a_deleted_shard_gives_503_and_readyz_false_while_the_process_stays_up(inputs, reference, tmp_path):
    manifest = tmp_path / "m"
    shutil.copytree(inputs[0], manifest)
    step = 45
    lang = reference.languages[int(reference.batch(step).lang[0])]
    victims = sorted((manifest / lang).glob("*.arrow"))
    saved = {p: p.read_bytes() for p in victims}
    # A fresh Sampler (warm-up off): no shard of that language has been opened yet.
    with live_server(create_app(settings_for(manifest, inputs[1], warmup=False))) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/readyz").status_code == 200
        for p in victims:
            p.unlink()
        r = c.get(f"/v1/batches/{step}")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error"] == "shard_unavailable" and body["shard"].startswith(f"{lang}/") and "missing" in body["message"]
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False and lang in ready.json()["problems"][0]
        assert c.get("/healthz").status_code == 200
        assert c.get("/v1/schedule", params={"step": step}).status_code == 200
        assert c.get("/v1/stream", params={"start": step, "count": 2}).status_code == 503
        assert "sampler_ready 0.0" in c.get("/metrics").text
        for p, data in saved.items():  # the file comes back: ready again, the batch is served
            p.write_bytes(data)
        assert c.get("/readyz").status_code == 200
        r = c.get(f"/v1/batches/{step}")
        assert r.status_code == 200 and same(wire.decode(r.content), reference.batch(step))


def test_a_shard_lost_mid_stream_aborts_the_response(inputs, reference, tmp_path):
    manifest = tmp_path / "m"
    shutil.copytree(inputs[0], manifest)
    # A decay step whose batch needs a language that the two steps before it do not use.
    langs = {s: set(reference.batch(s).lang.tolist()) for s in range(50, 56)}
    start, lang = next((s, min(langs[s + 2] - langs[s] - langs[s + 1]))
                       for s in range(50, 54) if langs[s + 2] - langs[s] - langs[s + 1])
    with live_server(create_app(settings_for(manifest, inputs[1], warmup=False))) as url, httpx.Client(base_url=url, timeout=30) as c:
        for p in (manifest / reference.languages[lang]).glob("*.arrow"):
            p.unlink()
        with c.stream("GET", "/v1/stream", params={"start": start, "count": 3}) as r:
            assert r.status_code == 200  # the first batch was fine: headers went out
            with pytest.raises(httpx.RemoteProtocolError):
                b"".join(r.iter_bytes())  # ... then the body is cut: never a silently short stream
        assert c.get("/readyz").status_code == 503 and c.get("/healthz").status_code == 200


def test_serves_a_synthetic_manifest_as_generated_tokens(tmp_path, inputs):
    from curriculum.synth import synth_long_tail

    synth = synth_long_tail(tmp_path / "synth", 30, 1e9)
    # Another manifest is another run: it gets its own journal (the module's recipe's belongs to the first).
    with TestClient(create_app(settings_for(synth, inputs[1], warmup=False, journal=str(tmp_path / "synth.amendments.jsonl")))) as c:
        r = c.get("/v1/batches/41", params={"rank": 1, "world_size": 2})
        assert r.status_code == 200, r.text
        w = wire.decode(r.content)
        assert w.input_ids.shape == (4, 8192) and len(w.languages) == 30


VARIANTS = {**RECIPE, "phases": RECIPE["phases"][:2] + [{
    **RECIPE["phases"][2],
    "variants": [{"name": "top6", "languages": {"top": 6}, "tau": 0.5}, {"name": "all"}],
}]}


def test_phase_variants_are_served_on_request(tmp_path, inputs):
    recipe_path = write_recipe(tmp_path / "variants.toml", VARIANTS)
    recipe = parse_recipe(VARIANTS)
    with TestClient(create_app(settings_for(inputs[0], recipe_path, warmup=False))) as c:
        for variant in (None, "top6", "all"):
            ref = Sampler(inputs[0], recipe, seed=SEED, variant=variant, chunk=64, block_tokens=4096)
            params = {"variant": variant} if variant else {}
            r = c.get("/v1/batches/52", params={**params, "rank": 1, "world_size": 2})
            assert r.status_code == 200 and r.headers["x-build-id"] == ref.build_id
            w = wire.decode(r.content)
            assert same(w, ref.batch(52, 1, 2)) and w.metadata["build_id"] == ref.build_id
            mix = c.get("/v1/mixture", params={**params, "phase": "decay"}).json()
            assert len(mix["languages"]) == (6 if variant in (None, "top6") else 20)
            assert c.get("/v1/schedule", params={**params, "step": 52}).json()["build_id"] == ref.build_id
        # The default variant is each phase's first.
        assert c.get("/v1/batches/52").content == c.get("/v1/batches/52", params={"variant": "top6"}).content
        r = c.get("/v1/batches/52", params={"variant": "eng"})
        assert r.status_code == 404 and r.json()["message"] == "no variant 'eng'; variants: all, top6"
        assert c.get("/v1/stream", params={"variant": "eng"}).status_code == 404
        rec = c.get("/v1/recipe").json()
        assert rec["variants"] == {"decay": ["top6", "all"]} and rec["variant"] == "top6"
        dash = c.get("/v1/dashboard").json()
        assert [p["name"] for p in dash["phases"]] == ["pretrain", "midtrain", "decay:top6"]
        assert [p["name"] for p in dash["variant_phases"]] == ["decay:all"]


def test_docs_page_loads_nothing_from_outside(server):
    """/docs on an air-gapped cluster: FastAPI's page pulled Swagger UI from a CDN (blank there)."""
    with httpx.Client(base_url=server, timeout=30) as c:
        page = c.get("/docs")
        assert page.status_code == 200 and "SwaggerUIBundle" in page.text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ["']([^"']+)["']""", page.text)
        urls = [a or b for a, b in urls]
        assert {u.rsplit("/", 1)[-1] for u in urls} >= {"swagger-ui-bundle.js", "swagger-ui.css", "openapi.json"}
        for u in urls:
            assert u.startswith("/"), f"/docs loads {u} from outside the server"
            r = c.get(u)
            assert r.status_code == 200 and len(r.content) > 100, u
        ids = [op["operationId"] for ops in c.get("/openapi.json").json()["paths"].values() for op in ops.values()]
        assert len(ids) == len(set(ids))  # HEAD /healthz and /readyz had GET's operation id


def test_bearer_token_guards_all_but_health(inputs):
    app = create_app(settings_for(*inputs, warmup=False, token="s3cret-token"))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        for path in ("/v1/batches/0", "/v1/stream?count=1", "/v1/recipe", "/v1/schedule?step=1", "/v1/mixture",
                     "/v1/progress", "/v1/dashboard", "/metrics"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get(path, headers={"Authorization": "Basic czNjcmV0LXRva2Vu"}).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200, path
        assert c.post("/v1/progress", json={"step": 1, "tokens": 1}).status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        # The page is code, not data (its script fetches with the token and reports a 401): served
        # without one, so a reload after the script moved ?token= into sessionStorage works.
        for params in ({}, {"token": "wrong"}, {"token": "s3cret-token"}):
            page = c.get("/", params=params)
            assert page.status_code == 200 and "dashboard.js" in page.text
            assert app.state.service.sampler.build_id not in page.text
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404
        # The page's assets are code, not data: served without the token, from memory.
        assert c.get("/static/dashboard.js").status_code == 200
        assert c.get("/static/..%2F__init__.py").status_code == 404


def test_the_access_log_never_shows_a_token(inputs):
    # uvicorn logged `GET /?token=READSECRET HTTP/1.1`: the read token (also the default amend
    # token) in every log collector. The page now takes it as a #fragment, and old links are redacted.
    import logging

    from sampler_server.app import RedactTokens

    create_app(settings_for(*inputs, warmup=False, token="s3cret-token"))
    access = logging.getLogger("uvicorn.access")
    assert sum(isinstance(f, RedactTokens) for f in access.filters) == 1
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/?refresh=500&token=s3cret-token&x=1", "1.1", 200), None)
    assert access.filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /?refresh=500&token=***&x=1 HTTP/1.1" 200'
    page = (Path(__file__).resolve().parents[2] / "sampler_server/static/dashboard.js").read_text()
    assert 'hash.get("token")' in page and "/#token=YOUR_TOKEN" in page


def test_settings_from_environment(monkeypatch, inputs):
    monkeypatch.setenv("SAMPLER_MANIFEST", str(inputs[0]))
    monkeypatch.setenv("SAMPLER_RECIPE", str(inputs[1]))
    monkeypatch.setenv("SAMPLER_SEED", "11")
    monkeypatch.setenv("SAMPLER_TOKEN", "abc")
    s = ServerSettings()
    assert s.seed == 11 and s.token_value == "abc" and s.host == "127.0.0.1" and s.port == 8000
    assert ServerSettings(seed=3).seed == 3  # explicit values win over the environment


def test_local_path_settings_refuse_uris(inputs):
    """--recipe, --progress-log, SAMPLER_INDEX_DIR, SAMPLER_CACHE_DIR live on this host: a URI
    became a local folder named `s3:` (a Path folds `s3://b` into `s3:/b`)."""
    from pydantic import ValidationError

    for field in ("recipe", "progress_log", "index_dir", "cache_dir"):
        kw = {"manifest": str(inputs[0]), "recipe": str(inputs[1]), field: "s3://bucket/x?endpoint_override=h:9"}
        with pytest.raises(ValidationError, match="s3://bucket/x is a URI; this setting takes a local path"):
            ServerSettings(**kw)
    p = cli("serve", "--manifest", str(inputs[0]), "--recipe", "gs://bucket/r.toml", "--progress-log", "s3://b/p.jsonl")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert "--recipe (or SAMPLER_RECIPE): gs://bucket/r.toml is a URI" in err and "--progress-log" in err
    assert not (ROOT / "gs:").exists() and not (ROOT / "s3:").exists()


def test_workers_get_the_real_tokens_and_tokens_are_trimmed(monkeypatch, inputs):
    # --workers N exported SAMPLER_AMEND_TOKEN=********** (pydantic's mask): the real amend token
    # got 401, and the mask itself amended the run.
    from sampler_server.cli import worker_environment

    s = ServerSettings(manifest=inputs[0], recipe=inputs[1], token="rt", amend_token="at", workers=2)
    env = worker_environment(s)
    assert env["SAMPLER_TOKEN"] == "rt" and env["SAMPLER_AMEND_TOKEN"] == "at"
    assert "*" not in "".join(env.values())
    for k in list(os.environ):
        if k.startswith("SAMPLER_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    again = ServerSettings()  # what each spawned worker builds
    assert (again.token_value, again.amend_token_value, again.workers) == ("rt", "at", 2)
    # A secret mounted from a file ends with a newline: the server compared against "abc\n".
    monkeypatch.setenv("SAMPLER_TOKEN", "abc\n")
    assert ServerSettings().token_value == "abc"
    for bad in ("a b", "ab\tc", "a\x00b"):
        with pytest.raises(ValueError, match="cannot hold whitespace or control characters"):
            ServerSettings(manifest=inputs[0], recipe=inputs[1], token=bad)


# -- real processes: the CLI, replicas ------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sampler_server.cli", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


def test_two_replicas_return_identical_bytes(inputs, reference):
    ports = [free_port(), free_port()]
    procs = [cli("serve", "--manifest", str(inputs[0]), "--recipe", str(inputs[1]), "--port", str(p), "--no-access-log",
                 env={"SAMPLER_SEED": str(SEED), "SAMPLER_CHUNK": "64", "SAMPLER_BLOCK_TOKENS": "4096"}) for p in ports]
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for u, p in zip(urls, procs):
            wait_ready(u, p)
        bodies = {}
        for path in ("/v1/batches/44?rank=3&world_size=4", "/v1/batches/7?compression=zstd&labels=dense",
                     "/v1/stream?start=38&count=4&world_size=2&rank=1"):
            a, b = (httpx.get(u + path, timeout=30) for u in urls)
            assert a.status_code == b.status_code == 200
            assert a.content == b.content and a.headers["x-build-id"] == b.headers["x-build-id"] == reference.build_id
            bodies[path] = a.content
        # ... and the bytes are the in-process Sampler's batch.
        assert same(wire.decode(bodies["/v1/batches/44?rank=3&world_size=4"]), reference.batch(44, 3, 4))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)


def test_port_0_serves_on_the_port_the_banner_names(inputs):
    # The banner said http://127.0.0.1:0/ (uvicorn picked a port nobody was told).
    import re
    import selectors

    # The same run as the other servers of this module (their journal beside the recipe is bound to it).
    proc = cli("serve", "--manifest", str(inputs[0]), "--recipe", str(inputs[1]), "--port", "0", "--no-access-log",
               env={"SAMPLER_SEED": str(SEED), "SAMPLER_CHUNK": "64", "SAMPLER_BLOCK_TOKENS": "4096"})
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline, port, said = time.monotonic() + 90, None, []
        while port is None and time.monotonic() < deadline:
            if not sel.select(timeout=1):
                continue
            line = proc.stderr.readline()
            said.append(line)
            if not line and proc.poll() is not None:
                break
            if m := re.search(r"on http://127\.0\.0\.1:(\d+)/ ", line):
                port = int(m.group(1))
        assert port is not None and port > 0, "".join(said)
        wait_ready(f"http://127.0.0.1:{port}", proc)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)


def test_cli_refuses_to_start_on_bad_inputs(inputs, tmp_path):
    manifest = tmp_path / "m"
    shutil.copytree(inputs[0], manifest)
    shard = sorted(manifest.glob("l05_Latn/*.arrow"))[0]
    raw = bytearray(shard.read_bytes())
    raw[-200] ^= 0xFF  # same size, different bytes: only --verify sees it
    shard.write_bytes(bytes(raw))
    other = sorted(manifest.glob("l07_Latn/*.arrow"))[0]
    runs = {
        "verify": cli("serve", "--manifest", str(manifest), "--recipe", str(inputs[1]), "--verify", "--port", str(free_port())),
        "missing": cli("serve", "--manifest", str(tmp_path / "nope"), "--recipe", str(inputs[1])),
        "no-recipe": cli("serve", "--manifest", str(manifest)),
    }
    outs = {k: p.communicate(timeout=120) for k, p in runs.items()}
    assert runs["verify"].returncode == 2 and f"shard {shard.relative_to(manifest)} (l05_Latn): checksum mismatch" in outs["verify"][1]
    assert runs["missing"].returncode == 2 and "not a directory" in outs["missing"][1]
    assert runs["no-recipe"].returncode == 2 and "--recipe (or SAMPLER_RECIPE): Field required" in outs["no-recipe"][1]
    other.unlink()
    p = cli("serve", "--manifest", str(manifest), "--recipe", str(inputs[1]), "--port", str(free_port()))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and f"shard {other.relative_to(manifest)} (l07_Latn): missing" in err
    assert "Traceback" not in err
    # --verify lists every problem at once (it stopped at the missing shard, hiding the corrupt one).
    p = cli("serve", "--manifest", str(manifest), "--recipe", str(inputs[1]), "--verify", "--port", str(free_port()))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "2 problem(s)" in err, err
    assert f"shard {other.relative_to(manifest)} (l07_Latn): missing" in err
    assert f"shard {shard.relative_to(manifest)} (l05_Latn): checksum mismatch" in err


def test_request_bodies_are_bounded(inputs):
    """A body past MAX_BODY_BYTES is refused with a JSON 413 before any route or token check reads
    it — declared (Content-Length) or streamed (chunked) — and the server goes on serving."""
    from sampler_server.limits import MAX_BODY_BYTES

    app = create_app(settings_for(*inputs, warmup=False, token="s3cret-token"))
    auth = {"Authorization": "Bearer s3cret-token"}
    big = b'{"step": 1, "tokens": 1, "run": "' + b"x" * MAX_BODY_BYTES + b'"}'
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        for headers in ({}, auth):  # with or without the token: the size is checked first
            r = c.post("/v1/progress", content=big, headers={**headers, "Content-Type": "application/json"})
            assert r.status_code == 413 and r.json()["error"] == "body_too_large", r.text
            assert f"{len(big):,} bytes declared" in r.json()["message"]

        def chunks():
            for _ in range(40):
                yield b" " * (64 << 10)

        r = c.post("/v1/progress", content=chunks(), headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 413 and "more than" in r.json()["message"]
        ok = c.post("/v1/progress", json={"step": 1, "tokens": 1}, headers=auth)
        assert ok.status_code == 201, ok.text
        assert c.get("/healthz").status_code == 200


def test_security_edges_credentials_method_labels_and_open_binds(tmp_path, inputs):
    # Found by a security review: user:password in a store URI was used by pyarrow and then shown
    # in 503 bodies, /readyz and logs; made-up HTTP method names (h11 accepts them) each became a
    # metrics label for good; a server bound to every address without a token said nothing.
    from curriculum.storage import StorageError, display, resolve
    from sampler_server.cli import _loopback, open_bind_warning
    from sampler_server.metrics import _METHODS

    with pytest.raises(StorageError, match="credentials in the URI .* are refused") as err:
        resolve("s3://AKIAFAKE:TOPSECRET@bkt/m?endpoint_override=127.0.0.1:9")
    assert "TOPSECRET" not in str(err.value) and "AKIAFAKE" not in str(err.value)
    assert display("s3://AKIAFAKE:TOPSECRET@bkt/m/x.arrow?region=a") == "s3://bkt/m/x.arrow"
    assert {"GET", "POST", "HEAD"} <= _METHODS
    with TestClient(create_app(settings_for(*inputs, warmup=False))) as c:
        for i in range(3):
            c.request(f"FROBNICATE{i}", "/nope")
        text = c.get("/metrics").text
    assert 'method="OTHER"' in text and "FROBNICATE" not in text
    assert [_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "0.0.0.0", "10.0.0.5", "example.org")] == \
        [True, True, True, True, False, False, False]
    # What `serve` prints at start-up on such a host (a test may not bind beyond 127.0.0.1 to see it printed).
    for host in ("0.0.0.0", "10.0.0.5", "example.org", "::"):
        w = open_bind_warning(host, None)
        assert w is not None and f"serving on {host} without a token" in w and "SAMPLER_TOKEN" in w
        assert open_bind_warning(host, "s3cret") is None
    assert all(open_bind_warning(h, None) is None for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))

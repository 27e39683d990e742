"""The batch routes' fast paths: the plain-parameter lane answers exactly as FastAPI's route does
(body, headers, errors, metrics), /v1/stream's zero-copy framing gives the wire bytes, and the
CLI picks httptools + uvloop when installed, h11 + asyncio when asked, and says which."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from hypothesis import given, settings, strategies as st

from conftest import SCALED_MMBERT
from curriculum.recipe import parse_recipe
from sampler_server.app import create_app
from sampler_server.lane import plain_batch_args
from sampler_server.cli import resolve_stack
from sampler_server.sampler import Sampler
from test_app import cli, free_port, live_server, make_corpus, same, settings_for, wait_ready, write_recipe
from trainer_client import wire

SEED = 7
FAST_INSTALLED = importlib.util.find_spec("httptools") is not None and importlib.util.find_spec("uvloop") is not None
HEADERS = ("content-type", "content-length", "x-build-id", "x-run-id", "x-journal-version", "cache-control")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("speed")
    return make_corpus(d / "m"), write_recipe(d / "recipe.toml", SCALED_MMBERT)


@pytest.fixture(scope="module")
def reference(inputs) -> Sampler:
    return Sampler(inputs[0], parse_recipe(SCALED_MMBERT), seed=SEED, chunk=64, block_tokens=4096)


# -- the lane's parser -----------------------------------------------------------------------

def test_plain_parameters_are_parsed_like_fastapi_defaults():
    assert plain_batch_args("/v1/batches/12", b"") == (12, 0, 1, "sparse", "none", None)
    assert plain_batch_args("/v1/batches/007", b"rank=3&world_size=4&labels=dense&compression=zstd&variant=eng") \
        == (7, 3, 4, "dense", "zstd", "eng")
    assert plain_batch_args("/v1/batches/5", b"labels=%64ense") == (5, 0, 1, "dense", "none", None)  # percent-decoded


@pytest.mark.parametrize("path, query", [
    ("/v1/batches/-1", b""), ("/v1/batches/1.5", b""), ("/v1/batches/", b""), ("/v1/batches/5/", b""),
    ("/v1/batches/\u0663", b""),  # a non-ASCII digit
    ("/v1/batches/5", b"rank=-1"), ("/v1/batches/5", b"rank=+1"), ("/v1/batches/5", b"world_size="),
    ("/v1/batches/5", b"labels=Sparse"), ("/v1/batches/5", b"compression=gzip"), ("/v1/batches/5", b"variant="),
    ("/v1/batches/5", b"rank=1&rank=2"), ("/v1/batches/5", b"unknown=1"),
])
def test_anything_not_plain_goes_to_fastapi(path, query):
    assert plain_batch_args(path, query) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.binary(max_size=40))
def test_the_parser_never_raises(step, query):
    out = plain_batch_args("/v1/batches/" + step, query)
    assert out is None or (out[0] >= 0 and out[1] >= 0 and out[2] >= 0)


# -- the lane against FastAPI's route, same app, same requests ----------------------------------

def test_lane_and_route_answer_identically(inputs, reference, monkeypatch):
    # With `slow` set the lane's parser declines every request, which then goes to FastAPI.
    import sampler_server.lane as lane_module

    taken, slow_path = [], [False]

    def parse(*a):
        taken.append(None if slow_path[0] else plain_batch_args(*a))
        return taken[-1]

    monkeypatch.setattr(lane_module, "plain_batch_args", parse)
    app = create_app(settings_for(*inputs, warmup=False))

    def get_slow(c, path):
        slow_path[0] = True
        try:
            return c.get(path)
        finally:
            slow_path[0] = False

    with TestClient(app) as c:
        for path in ("/v1/batches/0", "/v1/batches/44?rank=3&world_size=4", "/v1/batches/7?labels=dense&compression=zstd",
                     "/v1/batches/999", "/v1/batches/3?world_size=3", "/v1/batches/3?variant=nope"):
            fast, slow = c.get(path), get_slow(c, path)
            assert fast.status_code == slow.status_code, path
            assert fast.content == slow.content, path
            assert {h: fast.headers.get(h) for h in HEADERS} == {h: slow.headers.get(h) for h in HEADERS}, path
        assert same(wire.decode(c.get("/v1/batches/44?rank=3&world_size=4").content), reference.batch(44, 3, 4))
        assert c.get("/v1/batches/999").json()["error"] == "invalid_step"
        text = c.get("/metrics").text
    assert sum(t is not None for t in taken) == 8 and sum(t is None for t in taken) == 6  # both paths were taken
    with TestClient(app) as c:  # a second lifespan: the batch pool closed with the first starts anew
        assert c.get("/v1/batches/1").status_code == 200
    # Both paths count under the route's template, by status.
    assert 'sampler_http_requests_total{method="GET",route="/v1/batches/{step}",status="200"} 7.0' in text
    assert 'sampler_http_requests_total{method="GET",route="/v1/batches/{step}",status="400"} 5.0' in text
    assert 'sampler_http_requests_total{method="GET",route="/v1/batches/{step}",status="404"} 2.0' in text


def test_lane_checks_the_token(inputs):
    app = create_app(settings_for(*inputs, warmup=False, token="t0ken"))
    with TestClient(app) as c:
        # The lane, and FastAPI (a repeated parameter: the lane declines it); the token comes first.
        for path, ok in (("/v1/batches/1", 200), ("/v1/batches/1?rank=0&rank=0", 422)):
            assert c.get(path).status_code == 401 and c.get(path).json()["error"] == "unauthorized"
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer t0ken"}).status_code == ok


def test_stream_bytes_are_the_wire_encoding(inputs, reference):
    # Crosses the pretrain -> decay boundary (a new IPC stream: EOS + header in the middle).
    start, count = 36, 6
    with TestClient(create_app(settings_for(*inputs, warmup=False))) as c:
        for labels in ("sparse", "dense"):
            r = c.get("/v1/stream", params=dict(start=start, count=count, labels=labels))
            assert r.status_code == 200
            svc = c.app.state.service
            expected = wire.encode(
                [(b, wire.batch_metadata(b.build_id, b.info, 0, 1, run_id=reference.run_id, journal_version=b.journal_version))
                 for b in (reference.batch(s) for s in range(start, start + count))],
                svc.dictionary, labels=labels)
            assert r.content == expected
            assert [w.metadata["step"] for w in wire.decode_stream(r.content)] == list(range(start, start + count))


# -- the uvicorn stack ---------------------------------------------------------------------------

def test_resolve_stack():
    # The `server` extra (what the Makefile installs) brings httptools and uvloop: without them the
    # default stack would silently be h11 + asyncio and the fast one go untested.
    assert FAST_INSTALLED, "httptools and uvloop come with the `server` extra: pip install -e '.[server]'"
    assert resolve_stack("h11", "asyncio") == ("h11", "asyncio")
    assert resolve_stack("auto", "auto") == ("httptools", "uvloop")
    assert resolve_stack("httptools", "uvloop") == ("httptools", "uvloop")


@pytest.mark.parametrize("flags, stack", [((), ("httptools", "uvloop")),
                                          (("--http", "h11", "--loop", "asyncio"), ("h11", "asyncio"))])
def test_cli_serves_on_the_stack_it_names(inputs, reference, flags, stack):
    port = free_port()
    p = cli("serve", "--manifest", str(inputs[0]), "--recipe", str(inputs[1]), "--port", str(port), "--no-access-log",
            *flags, env={"SAMPLER_SEED": str(SEED), "SAMPLER_CHUNK": "64", "SAMPLER_BLOCK_TOKENS": "4096"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, p)
        r = httpx.get(url + "/v1/batches/44?rank=3&world_size=4", timeout=30)
        assert r.status_code == 200 and same(wire.decode(r.content), reference.batch(44, 3, 4))
        s = httpx.get(url + "/v1/stream", params=dict(start=38, count=4), timeout=30)
        assert [w.metadata["step"] for w in wire.decode_stream(s.content)] == [38, 39, 40, 41]
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert f"HTTP {stack[0]}, event loop {stack[1]}" in err
    assert f"event loop {stack[1]}" in err.split("sampler ready", 1)[1].splitlines()[0]  # the app's own view


def test_cli_refuses_a_missing_c_stack(inputs, monkeypatch):
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "httptools" else real(name, *a))
    with pytest.raises(typer.Exit) as exc:
        resolve_stack("httptools", "auto")
    assert exc.value.exit_code == 2
    assert resolve_stack("auto", "auto")[0] == "h11"  # auto falls back


def test_live_server_with_the_lane_under_uvicorn(inputs, reference):
    with live_server(create_app(settings_for(*inputs, warmup=False))) as url, httpx.Client(base_url=url, timeout=30) as c:
        for step in (0, 37, 55):
            r = c.get(f"/v1/batches/{step}")
            assert r.status_code == 200 and same(wire.decode(r.content), reference.batch(step))
            assert r.headers["x-build-id"] == reference.build_id


@pytest.mark.parametrize("threads", [1, 3])
def test_batch_threads_bound_the_pool_and_bytes_do_not_depend_on_it(inputs, reference, threads):
    import threading

    app = create_app(settings_for(*inputs, warmup=False, batch_threads=threads))
    with TestClient(app) as c:
        r = c.get("/v1/stream", params={"start": 5, "count": 6})
        assert r.status_code == 200
        for i, w in enumerate(wire.decode_stream(r.content)):
            assert same(w, reference.batch(5 + i))
        names = {t.name for t in threading.enumerate() if t.name.startswith("batch")}
        assert 1 <= len(names) <= threads

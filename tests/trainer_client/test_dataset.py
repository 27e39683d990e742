"""Client and SamplerDataset: retries, failover, build-id check, zero-copy tensors, resumable state.

Most tests run against an in-process fake (httpx.MockTransport) that speaks the real wire format,
so failures can be injected exactly; one test runs a real `sampler-server` on 127.0.0.1 and holds
the dataset's tensors equal to the Sampler's batches byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch

import trainer_client.client
from trainer_client import wire
from trainer_client.client import (
    BuildIdMismatch, JournalMismatch, RetryPolicy, SamplerClient, SamplerRequestError, SamplerUnavailable, normalize_urls,
)
from trainer_client.dataset import SamplerDataset, to_train_batch

ROOT = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002, cooldown=60.0)
LANGS = ["deu_Latn", "fra_Latn", "rus_Cyrl"]
TOTAL = 12
# The tensors are read-only views on purpose; pytest resets the dataset module's own filter.
pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


@dataclass
class FakeBatch:
    input_ids: np.ndarray
    labels: np.ndarray
    cu_seqlens: np.ndarray
    lang: np.ndarray


def fake_batch(step: int, rank: int, world: int) -> FakeBatch:
    B, L = 4 // world, 16 if step < 8 else 32  # a phase boundary at step 8
    ids = (np.arange(B * L, dtype=np.int32).reshape(B, L) + 1000 * step + 100 * rank) % 50_000
    labels = np.where(ids % 3 == 0, ids, -100).astype(np.int32)
    cu = np.array(sorted({r * L for r in range(B)} | {r * L + 5 for r in range(B)} | {B * L}), np.int32)
    return FakeBatch(ids, labels, cu, (np.arange(B, dtype=np.int32) + step) % len(LANGS))


class FakeServer:
    """What a replica answers; `fail` maps a host to what goes wrong there."""

    def __init__(self, build_ids: dict[str, str]):
        self.build_ids = build_ids
        self.fail: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.amended: dict[str, int] = {}  # host -> from_step of an amendment in that host's journal

    def step_build(self, host: str, step: int) -> str:
        """A step's own build id: the run id, or the run id with the journal prefix in force."""
        bid = self.build_ids[host]
        return f"{bid}+j1" if host in self.amended and step >= self.amended[host] else bid

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        self.calls.append((host, path))
        mode = self.fail.get(host)
        if mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if mode == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if mode == "503":
            return httpx.Response(503, json={"error": "shard_unavailable", "message": "shard x missing"})
        bid = self.build_ids[host]
        if path == "/healthz":
            return httpx.Response(200, json={"status": "ok", "build_id": bid})
        if path == "/v1/recipe":
            return httpx.Response(200, json={"build_id": bid, "total_steps": TOTAL, "languages": len(LANGS), "phases": []},
                                  headers={"X-Build-Id": bid})
        if path == "/v1/schedule" and "step" in request.url.params:
            return httpx.Response(200, json={"build_id": self.step_build(host, int(request.url.params["step"]))})
        if path == "/v1/schedule":  # a server without variants: the variant= parameter is ignored
            return httpx.Response(200, json={"build_id": bid, "total_steps": TOTAL, "phases": [{"name": "a", "variant": None}]})
        if path == "/v1/progress":
            return httpx.Response(201, json={"reports": 1})
        if path.startswith("/v1/batches/"):
            step = int(path.rsplit("/", 1)[1])
            q = request.url.params
            rank, world = int(q.get("rank", 0)), int(q.get("world_size", 1))
            if step >= TOTAL:
                return httpx.Response(400, json={"error": "invalid_step", "message": f"step {step} is past the last phase"})
            if mode == "garbage":
                return httpx.Response(200, content=b"not arrow", headers={"X-Build-Id": bid})
            b = fake_batch(step, rank, world)
            info = SimpleNamespace(phase="a" if step < 8 else "b", phase_index=int(step >= 8), tau=0.7, mask_ratio=0.3,
                                   seq_len=b.input_ids.shape[1], lr_factor=0.5, global_batch=4, tokens_before=0, step=step)
            data = wire.encode([(b, wire.batch_metadata(self.step_build(host, step), info, rank, world, run_id=bid))], LANGS)
            return httpx.Response(200, content=data, headers={"X-Build-Id": bid, "Content-Type": wire.MEDIA_TYPE})
        return httpx.Response(404, json={"error": "not_found", "message": path})


def client_for(server: FakeServer, hosts: list[str], **kw) -> SamplerClient:
    return SamplerClient([f"http://{h}:1" for h in hosts], transport=httpx.MockTransport(server), retry=kw.pop("retry", FAST),
                         seed=0, **kw)


# -- import hygiene ------------------------------------------------------------------------------

def test_trainer_client_imports_neither_numba_fastapi_curriculum_nor_sampler_server():
    code = (
        "import sys\n"
        "import trainer_client, trainer_client.wire, trainer_client.client, trainer_client.dataset\n"
        "import trainer_client.model, trainer_client.train, trainer_client.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'numba', 'fastapi', 'curriculum', 'sampler_server', 'uvicorn', 'polars'})\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- client --------------------------------------------------------------------------------------

def test_backoff_grows_exponentially_with_bounded_jitter():
    p = RetryPolicy(base_delay=0.5, max_delay=4.0, jitter=0.5)
    rng = random.Random(0)
    for attempt, cap in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        ds = [p.delay(attempt, rng) for _ in range(200)]
        assert min(ds) >= cap * 0.5 and max(ds) <= cap
        assert max(ds) - min(ds) > cap * 0.3  # jittered, not a constant


def test_urls_are_validated():
    assert normalize_urls("http://a:1/, http://b:2") == ["http://a:1", "http://b:2"]
    with pytest.raises(ValueError, match="must look like http://HOST:PORT"):
        normalize_urls("a:1")
    with pytest.raises(ValueError, match="at least one server URL"):
        normalize_urls(" , ")


def test_failover_to_the_next_url_and_stay_there():
    srv = FakeServer({"a": "B1", "b": "B1"})
    c = client_for(srv, ["a", "b"])
    assert c.get_batch(0).metadata["step"] == 0 and c.active_url == "http://a:1"
    srv.fail["a"] = "down"
    b = c.get_batch(1)
    assert b.input_ids.tobytes() == fake_batch(1, 0, 1).input_ids.tobytes()
    assert c.active_url == "http://b:1" and c.stats.failovers == 1
    srv.fail.pop("a")  # back up, but `a` is cooling down and `b` works: no flapping
    srv.calls.clear()
    c.get_batch(2)
    assert [h for h, _ in srv.calls] == ["b"]


def test_another_service_on_a_port_is_a_failed_replica_named_in_one_line():
    # python -m http.server on a replica's port: its HTML 404 page was raised at once (8 lines of
    # HTML), and the healthy replica after it was never tried.
    srv = FakeServer({"b": "B1"})

    def with_a_web_server(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            return httpx.Response(404, text="<!DOCTYPE HTML>\n<html>\n<body>\n<h1>Not Found</h1>\n</body>\n</html>\n",
                                  headers={"Content-Type": "text/html; charset=utf-8"})
        return srv(request)

    c = SamplerClient(["http://a:1", "http://b:1"], transport=httpx.MockTransport(with_a_web_server), retry=FAST, seed=0)
    assert c.get_batch(2).metadata["step"] == 2 and c.active_url == "http://b:1"
    only_a = SamplerClient(["http://a:1"], transport=httpx.MockTransport(with_a_web_server), retry=FAST, seed=0)
    with pytest.raises(SamplerUnavailable) as err:
        only_a.get_batch(2)
    assert "\n" not in str(err.value)
    assert "HTTP 404 error: not a sampler-server's answer (text/html: '<!DOCTYPE HTML> <html>" in str(err.value)
    assert "is a sampler-server running there?" in str(err.value)


def test_a_refused_token_says_how_to_pass_one():
    def auth(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "unauthorized", "message": "this server requires a bearer token"})

    c = SamplerClient(["http://a:1"], transport=httpx.MockTransport(auth), retry=FAST, seed=0)
    with pytest.raises(SamplerRequestError, match=r"HTTP 401 unauthorized: .*\(trainer-client: --token or SAMPLER_TOKEN\)"):
        c.get_batch(0)


def test_a_replica_unreachable_at_start_up_is_tried_last_and_timeout_is_the_read_timeout():
    srv = FakeServer({"a": "B1", "b": "B1"})
    srv.fail["a"] = "down"
    c = client_for(srv, ["a", "b"])
    assert c.check_replicas()["http://a:1"].startswith("unreachable")
    srv.calls.clear()
    c.get_batch(0)
    assert [h for h, _ in srv.calls] == ["b"]  # not another connect attempt (and timeout) on a first
    # --timeout 20: reads wait 20 s, connecting still gives up after 5 s (a black-holed replica
    # cost 2 x 20 s before failover).
    t = SamplerClient("http://a:1", timeout=20.0)._http.timeout
    assert (t.connect, t.read) == (5.0, 20.0)
    assert SamplerClient("http://a:1", timeout=2.0)._http.timeout.connect == 2.0


@pytest.mark.parametrize("mode", ["timeout", "503", "garbage"])
def test_timeouts_5xx_and_undecodable_bodies_are_retried_elsewhere(mode):
    srv = FakeServer({"a": "B1", "b": "B1"})
    srv.fail["a"] = mode
    c = client_for(srv, ["a", "b"])
    assert c.get_batch(3, 1, 2).input_ids.tobytes() == fake_batch(3, 1, 2).input_ids.tobytes()
    assert c.active_url == "http://b:1" and c.stats.failures == 1


def test_all_down_raises_unavailable_after_every_round_with_backoff(monkeypatch):
    srv = FakeServer({"a": "B1", "b": "B1"})
    srv.fail.update(a="down", b="503")
    slept: list[float] = []
    monkeypatch.setattr(trainer_client.client.time, "sleep", slept.append)
    c = client_for(srv, ["a", "b"], retry=RetryPolicy(attempts=3, base_delay=0.02, max_delay=0.5, jitter=0.0))
    with pytest.raises(SamplerUnavailable, match=r"after 3 round\(s\) over 2 URL\(s\).*http://a:1: ConnectError.*HTTP 503"):
        c.get_batch(0)
    assert len(srv.calls) == 6 and slept == [0.02, 0.04]  # exponential backoff between the three rounds


def test_client_errors_are_raised_at_once_with_the_server_message():
    srv = FakeServer({"a": "B1", "b": "B1"})
    c = client_for(srv, ["a", "b"])
    with pytest.raises(SamplerRequestError, match="HTTP 400 invalid_step: step 99 is past the last phase"):
        c.get_batch(99)
    assert len(srv.calls) == 1  # not retried, not failed over


def test_a_replica_with_another_build_stops_the_client():
    srv = FakeServer({"a": "B1", "b": "OTHER"})
    c = client_for(srv, ["a", "b"])
    c.get_batch(0)
    srv.fail["a"] = "down"
    with pytest.raises(BuildIdMismatch, match="server http://b:1 serves build OTHER, but this run uses build B1"):
        c.get_batch(1)
    with pytest.raises(BuildIdMismatch, match="serves build OTHER"):
        client_for(srv, ["a", "b"], build_id="B1").check_replicas()


def test_failover_onto_a_replica_with_another_journal_stops_the_client():
    # Replica a amended the run from step 3, b never saw it (another --journal): same run id, but
    # b serves steps 3.. unamended. Training on would switch curricula mid-run without a word.
    srv = FakeServer({"a": "B1", "b": "B1"})
    srv.amended["a"] = 3
    c = client_for(srv, ["a", "b"])
    assert [c.get_batch(s).metadata["build_id"] for s in range(5)] == ["B1"] * 3 + ["B1+j1"] * 2
    srv.fail["a"] = "down"
    with pytest.raises(JournalMismatch, match=r"server http://b:1 serves step 4 as build B1, but this run trained it "
                                              r"as build B1\+j1 \(served by http://a:1\).*same --journal"):
        c.get_batch(5)


def test_failover_between_replicas_sharing_a_journal_is_checked_once():
    srv = FakeServer({"a": "B1", "b": "B1"})
    srv.amended.update(a=3, b=3)
    c = client_for(srv, ["a", "b"])
    for s in range(5):
        c.get_batch(s)
    assert not [p for _, p in srv.calls if p == "/v1/schedule"]  # one replica: nothing to check
    srv.fail["a"] = "down"
    srv.calls.clear()
    assert [c.get_batch(s).metadata["step"] for s in (5, 6, 7)] == [5, 6, 7]
    assert [(h, p) for h, p in srv.calls if p == "/v1/schedule"] == [("b", "/v1/schedule")]  # step 4, once


def test_variant_the_server_ignores_is_an_error_not_silently_the_main_line():
    c = client_for(FakeServer({"a": "B1"}), ["a"])
    with pytest.raises(SamplerRequestError, match="asked for variant 'english-heavy', the schedule has none"):
        c.info("english-heavy")


@pytest.mark.parametrize("body", [[1, 2], {"status": "ok"}, "text"])
def test_a_server_answering_json_that_is_not_a_sampler_object_is_named_not_a_traceback(body):
    # A JSON list (another service on that port) was an AttributeError traceback from the trainer.
    def other_service(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if request.url.path != "/v1/nope" else 404, json=body)

    c = SamplerClient(["http://a:1"], transport=httpx.MockTransport(other_service), retry=FAST, seed=0)
    why = "not an object" if not isinstance(body, dict) else "without build_id, total_steps"
    with pytest.raises(SamplerUnavailable, match=f"http://a:1/v1/recipe answered .*{why}: is a sampler-server running"):
        c.info()
    with pytest.raises(SamplerUnavailable, match="/v1/schedule answered"):
        c.schedule(0) if not isinstance(body, dict) else c.info("v")
    out = c.check_replicas()
    expect = "HTTP 200 without a build id: not a sampler-server?" if isinstance(body, dict) else "unreachable (ValueError)"
    assert out == {"http://a:1": expect}
    with pytest.raises(SamplerUnavailable, match="HTTP 404 error: not a sampler-server's answer"):
        c.request("GET", "/v1/nope")  # another service: a failed replica, not the caller's mistake


def test_progress_reports_never_raise():
    srv = FakeServer({"a": "B1"})
    c = client_for(srv, ["a"])
    assert c.post_progress({"step": 3, "tokens": 10, "loss": 1.0}) is True
    srv.fail["a"] = "down"
    assert c.post_progress({"step": 4, "tokens": 20, "loss": 1.0}) is False


# -- dataset -------------------------------------------------------------------------------------

def dataset(srv: FakeServer, rank=0, world=2, **kw) -> SamplerDataset:
    return SamplerDataset(["http://a:1"], rank, world, client=client_for(srv, ["a"]), **kw)


def test_dataset_yields_every_step_in_order_through_a_phase_boundary():
    ds = dataset(FakeServer({"a": "B1"}), rank=1, prefetch=3, threads=2)
    got = list(ds)
    assert [b.step for b in got] == list(range(TOTAL))
    assert [b.seq_len for b in got] == [16] * 8 + [32] * 4
    for b in got:
        ref = fake_batch(b.step, 1, 2)
        assert b.input_ids.dtype == torch.int32 and b.input_ids.shape == ref.input_ids.shape
        assert b.input_ids.numpy().tobytes() == ref.input_ids.tobytes()
        assert b.labels.numpy().tobytes() == ref.labels.tobytes()
        assert b.cu_seqlens.numpy().tolist() == ref.cu_seqlens.tolist()
        assert b.lang.numpy().tolist() == ref.lang.tolist() and b.languages == tuple(LANGS)
    assert ds.stats.batches == TOTAL and ds.state_dict()["next_step"] == TOTAL


def test_input_ids_are_zero_copy_views_of_the_arrow_buffer():
    wb = client_for(FakeServer({"a": "B1"}), ["a"]).get_batch(0)
    assert not wb.input_ids.flags.writeable and not wb.input_ids.flags.owndata  # a view of the response body
    tb = to_train_batch(wb)
    assert tb.input_ids.data_ptr() == wb.input_ids.ctypes.data  # the tensor shares that memory
    assert tb.lang.data_ptr() == wb.lang.ctypes.data


def test_state_dict_resumes_exactly_after_the_last_batch_handed_out():
    srv = FakeServer({"a": "B1"})
    ds = dataset(srv, prefetch=4)
    it = iter(ds)
    first = [next(it).step for _ in range(5)]
    state = ds.state_dict()  # 4 more batches were prefetched: they must not count
    it.close()
    assert first == [0, 1, 2, 3, 4] and state["next_step"] == 5 and state["build_id"] == "B1"
    fresh = dataset(srv)
    fresh.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON round trip
    assert [b.step for b in fresh] == list(range(5, TOTAL))
    other = dataset(FakeServer({"a": "B2"}))
    other.load_state_dict(state)
    with pytest.raises(BuildIdMismatch, match="serves build B2, but this run uses build B1 .from the loaded dataset state"):
        next(iter(other))


def test_resuming_on_a_replica_with_another_journal_stops():
    # The state names the last batch's own build id: a replica whose journal lacks the amendment
    # in force there (or has another) is refused at the first batch, not trained on.
    srv = FakeServer({"a": "B1"})
    srv.amended["a"] = 2
    ds = dataset(srv, prefetch=2)
    it = iter(ds)
    assert [next(it).step for _ in range(4)] == [0, 1, 2, 3]
    state = json.loads(json.dumps(ds.state_dict()))
    it.close()
    assert state["last_step"] == 3 and state["last_build_id"] == "B1+j1"
    same = dataset(srv)
    same.load_state_dict(state)
    assert next(iter(same)).step == 4
    unamended = dataset(FakeServer({"a": "B1"}))
    unamended.load_state_dict(state)
    with pytest.raises(JournalMismatch, match=r"serves step 3 as build B1, but this run trained it as build B1\+j1 "
                                              r"\(served by the loaded dataset state\)"):
        next(iter(unamended))


def test_stop_step_and_a_torch_dataloader():
    ds = dataset(FakeServer({"a": "B1"}), start_step=3, stop_step=6)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)
    assert [b.step for b in loader] == [3, 4, 5]


def test_a_dataloader_worker_process_is_refused():
    # In a worker process the position advances there, and state_dict() here stays at the start:
    # a resume would repeat every batch. (num_workers=1 used to be allowed.)
    ds = dataset(FakeServer({"a": "B1"}), start_step=3, stop_step=6)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)
    with pytest.raises(RuntimeError, match=r"num_workers=0"):
        list(loader)


def test_dataset_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size=2\)"):
        SamplerDataset("http://a:1", rank=2, world_size=2)
    with pytest.raises(ValueError, match="prefetch and threads must be >= 1"):
        SamplerDataset("http://a:1", prefetch=0)


# -- against a real server -----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_server_batches_equal_the_sampler_byte_for_byte(tmp_path):
    from curriculum.randomcorpus import write_random_corpus
    from sampler_server.sampler import Sampler

    manifest = write_random_corpus(tmp_path / "m", {"aaa_Latn": 20_000, "bbb_Latn": 8_000, "ccc_Cyrl": 3_000},
                                   seed=1, mean_doc_tokens=60, shard_tokens=10_000)
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'name = "t"\n'
        '[[phases]]\nname = "a"\ntokens = 3072\nbatch_tokens = 512\nseq_len = 64\nlanguages = "all"\ntau = 0.7\nmask_ratio = 0.3\n'
        '[[phases]]\nname = "b"\ntokens = 2048\nbatch_tokens = 512\nseq_len = 128\nlanguages = "all"\ntau = 0.3\nmask_ratio = 0.15\n'
        '[[phases.variants]]\nname = "v1"\n[[phases.variants]]\nname = "v2"\nlanguages = { top = 1 }\n')
    port = _free_port()
    env = dict(os.environ, NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba")),
               NUMBA_THREADING_LAYER="omp")
    proc = subprocess.Popen([sys.executable, "-m", "sampler_server.cli", "serve", "--manifest", str(manifest), "--recipe",
                             str(recipe), "--seed", "5", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            assert proc.poll() is None, proc.stderr.read().decode()
        sampler = Sampler(manifest, recipe, seed=5)
        for rank in (0, 1):
            ds = SamplerDataset(url, rank, 2, start_step=3, prefetch=3)
            got = list(ds)
            assert [b.step for b in got] == list(range(3, sampler.total_steps))
            assert {b.seq_len for b in got} == {64, 128}
            for b in got:
                ref = sampler.batch(b.step, rank, 2)
                assert b.input_ids.numpy().tobytes() == ref.input_ids.tobytes()
                assert b.labels.numpy().tobytes() == ref.labels.tobytes()
                assert b.cu_seqlens.numpy().tobytes() == ref.cu_seqlens.tobytes()
                assert b.lang.numpy().tolist() == ref.lang.tolist()
                assert b.lr_factor == ref.info.lr_factor and b.build_id == sampler.build_id
        # A variant is its own build: its batches differ from the default's in its phase only.
        v = SamplerDataset(url, 1, 2, start_step=sampler.total_steps - 3, variant="v2")
        vs = Sampler(manifest, recipe, seed=5, variant="v2")
        assert v.total_steps() == vs.total_steps and vs.build_id != sampler.build_id
        for b in v:
            assert b.build_id == vs.build_id
            assert b.input_ids.numpy().tobytes() == vs.batch(b.step, 1, 2).input_ids.tobytes()
            assert b.input_ids.numpy().tobytes() != sampler.batch(b.step, 1, 2).input_ids.tobytes()
        with pytest.raises(SamplerRequestError, match="HTTP 404 unknown_variant"):
            next(iter(SamplerDataset(url, 0, 1, variant="no-such-variant")))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_token_is_trimmed_and_whitespace_inside_is_refused_at_once():
    # SAMPLER_TOKEN from a secret file ("abc\n") made every request fail in httpx with
    # LocalProtocolError, retried for 8 rounds, then reported as "no sampler server answered".
    seen = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"status": "ok", "build_id": "B1"})

    c = SamplerClient(["http://a:1"], token="abc\n", transport=httpx.MockTransport(server), retry=FAST, seed=0)
    assert c.check_replicas() == {"http://a:1": "B1"} and seen == ["Bearer abc"]
    for bad in ("a b", "ab\tc", "a\x00b"):
        with pytest.raises(ValueError, match="holds whitespace or control characters"):
            SamplerClient(["http://a:1"], token=bad, transport=httpx.MockTransport(server))

"""Prometheus metrics of one app, in a registry of its own (two apps in a process never mix)."""

from __future__ import annotations

import time

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE  # noqa: F401  (re-exported)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOP_GROUP = 10  # a phase's top languages by weight form the "top" group, the rest the "tail"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class Metrics:
    """Request, byte, latency and token counters of a sampler server."""

    def __init__(self, build_id: str, recipe: str):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("sampler_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.bytes = Counter("sampler_http_response_bytes", "Response body bytes sent, by route template", ["route"], registry=r)
        self.batch_seconds = Histogram("sampler_batch_seconds", "Time to assemble and encode one batch (worker thread)",
                                       ["phase"], buckets=LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("sampler_http_request_seconds", "Request handling time to the last body byte",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("sampler_tokens_served", "Tokens served, by phase (phase:variant for variants) and "
                              f"language group (top = the phase's {TOP_GROUP} heaviest languages, tail = the rest)",
                              ["phase", "group"], registry=r)
        self.batches = Counter("sampler_batches_served", "Batches served, by phase", ["phase"], registry=r)
        self.shard_errors = Counter("sampler_shard_errors", "Batches that failed on a missing or corrupt shard", registry=r)
        self.ready = Gauge("sampler_ready", "1 when the server can serve batches (see /readyz)", registry=r)
        self.progress_step = Gauge("sampler_trainer_step", "Last global step a trainer reported", registry=r)
        self.progress_tokens = Gauge("sampler_trainer_tokens", "Tokens consumed, as last reported by a trainer", registry=r)
        info = Gauge("sampler_build_info", "Build served by this process (value 1)", ["build_id", "recipe"], registry=r)
        info.labels(build_id=build_id, recipe=recipe).set(1)
        self.ready.set(1)

    def observe_batch(self, phase: str, top_mask: np.ndarray, lang: np.ndarray, seq_len: int, seconds: float) -> None:
        """Count one batch: tokens per group (`top_mask` marks the phase's top languages)."""
        n_top = int(top_mask[lang].sum())
        self.tokens.labels(phase=phase, group="top").inc(n_top * seq_len)
        self.tokens.labels(phase=phase, group="tail").inc((lang.size - n_top) * seq_len)
        self.batches.labels(phase=phase).inc()
        self.batch_seconds.labels(phase=phase).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests and response bytes by route template (never the raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        sent = 0
        t0 = time.perf_counter()

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            m = self.metrics
            # Only known methods: a client's made-up method names (h11 accepts them) grew the registry for good.
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            m.requests.labels(route=route, method=method, status=str(status)).inc()
            m.bytes.labels(route=route).inc(sent)
            m.request_seconds.labels(route=route).observe(time.perf_counter() - t0)

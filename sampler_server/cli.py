"""`sampler-server` command line: parse options (or SAMPLER_* variables), check the inputs, run uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Optional

import typer
from pydantic import SecretStr, ValidationError

from trainer_client.typer_main import run_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Serve curriculum batches over HTTP.")
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _state["debug"] = debug


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"sampler-server: {message}", err=True)
    raise typer.Exit(code)


# The C implementations that `uvicorn[standard]` brings (this package's `server` extra pins them):
# per request they cost the event loop a fraction of h11 + asyncio (see the README's benchmarks).
FAST_STACK = {"http": "httptools", "loop": "uvloop"}
FALLBACK_STACK = {"http": "h11", "loop": "asyncio"}


def resolve_stack(http: str, loop: str) -> tuple[str, str]:
    """(HTTP implementation, event loop) uvicorn runs: "auto" picks httptools / uvloop when they
    can be imported, h11 / asyncio otherwise; a C implementation asked for by name must be there."""
    import importlib.util

    chosen = {}
    for kind, want in (("http", http), ("loop", loop)):
        fast = FAST_STACK[kind]
        present = importlib.util.find_spec(fast) is not None
        if want == fast and not present:
            _fail(f"--{kind} {fast}: the {fast} package is not installed; install it (pip install "
                  f"'language-curriculum[server]' or 'uvicorn[standard]') or pass --{kind} {FALLBACK_STACK[kind]}")
        chosen[kind] = want if want != "auto" else fast if present else FALLBACK_STACK[kind]
    return chosen["http"], chosen["loop"]


@app.command()
def serve(
    manifest: Optional[str] = typer.Option(None, "--manifest", help="Built manifest directory or URI, e.g. s3://bucket/m (env SAMPLER_MANIFEST)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe TOML file (env SAMPLER_RECIPE)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed (default 0) (env SAMPLER_SEED)."),
    host: Optional[str] = typer.Option(None, "--host", help="Bind address (default 127.0.0.1) (env SAMPLER_HOST)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (default 8000) (env SAMPLER_PORT)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="uvicorn worker processes, spawned (default 1)."),
    token: Optional[str] = typer.Option(None, "--token", help="Require 'Authorization: Bearer TOKEN' (all but health) "
                                        "(env SAMPLER_TOKEN: prefer it, a flag shows in `ps`)."),
    verify: Optional[bool] = typer.Option(None, "--verify/--no-verify", help="Check every shard's sha256 at start-up."),
    progress_log: Optional[str] = typer.Option(None, "--progress-log", help="JSONL file keeping trainer progress across restarts."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Phase variant served by default (requests may name another)."),
    access_log: Optional[bool] = typer.Option(None, "--access-log/--no-access-log", help="uvicorn access log (default on)."),
    http: Optional[str] = typer.Option(None, "--http", help="HTTP parser: auto (default: httptools when installed), "
                                       "httptools or h11 (env SAMPLER_HTTP)."),
    loop: Optional[str] = typer.Option(None, "--loop", help="Event loop: auto (default: uvloop when installed), uvloop "
                                       "or asyncio (env SAMPLER_LOOP)."),
    journal: Optional[str] = typer.Option(None, "--journal", help="Amendment journal shared by the replicas: a file "
                                          "(default: <recipe>.amendments.jsonl) or s3://bucket/key (default for a "
                                          "remote manifest) (env SAMPLER_JOURNAL)."),
    amend_token: Optional[str] = typer.Option(None, "--amend-token", help="Bearer token for POST /v1/amendments "
                                              "(default: --token) (env SAMPLER_AMEND_TOKEN)."),
    journal_poll: Optional[float] = typer.Option(None, "--journal-poll", help="Seconds between checks of the journal "
                                                 "for other replicas' amendments (default 1) (env SAMPLER_JOURNAL_POLL)."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Feedback policy: none (default) or loss-balance "
                                         "(amends the mixture from reported per-language loss)."),
    policy_every: Optional[int] = typer.Option(None, "--policy-every", help="Steps between policy amendments (default 200)."),
    policy_lookahead: Optional[int] = typer.Option(None, "--policy-lookahead", help="Steps ahead of the served "
                                                   "watermark a policy amendment starts (default 8)."),
) -> None:
    """Check the manifest and recipe, then serve batches, the control plane and the dashboard."""
    for flag, value in (("--token", token), ("--amend-token", amend_token)):
        if value is not None and not value.strip():  # e.g. --token "$UNSET": an open server by accident
            _fail(f"{flag} is empty: give a token, or leave the flag out to serve without one")
    # Strings, not Paths, up to the settings: a Path made "s3://b/x" into "s3:/b/x" before any check.
    if progress_log is not None and Path(progress_log).is_dir():
        _fail(f"--progress-log {progress_log}: is a directory; give a file path (it is created if missing)")
    options = dict(manifest=manifest, recipe=recipe, seed=seed, host=host, port=port, workers=workers, token=token,
                   verify=verify, progress_log=progress_log, variant=variant, access_log=access_log, http=http, loop=loop,
                   journal=journal, amend_token=amend_token, journal_poll=journal_poll, policy=policy,
                   policy_every=policy_every, policy_lookahead=policy_lookahead)
    given = {k: v for k, v in options.items() if v is not None}
    from sampler_server.settings import ServerSettings

    try:
        settings = ServerSettings(**given)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            name = ".".join(str(x) for x in e["loc"])
            env = f"SAMPLER_{name.upper()}"
            # Settings without a flag (cache_bytes, cache_dir, ...) come from the environment only.
            where = f"--{name.replace('_', '-')} (or {env})" if name in options else env
            problems.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")  # pydantic's prefix for a validator's own message
        _fail("; ".join(problems))
    from sampler_server.app import LOG_FORMAT

    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    if settings.policy != "none" and settings.workers > 1:
        _fail(f"--policy {settings.policy} runs in one process: with --workers {settings.workers} every worker would "
              "propose its own amendments; run the policy on a single-worker replica (the one trainers report to)")

    import uvicorn

    from curriculum.errors import CurriculumError
    from curriculum.shards import ShardError
    from sampler_server.app import create_app
    from sampler_server.service import open_sampler

    busy, port = _bind_probe(settings.host, settings.port)
    if busy is not None:
        _fail(busy)  # before start-up (planning, warm-up) rather than after it
    if port != settings.port:  # --port 0: the port the OS gave the probe, so the URL printed is real
        settings = settings.model_copy(update={"port": port})
    try:
        if settings.workers == 1:
            application = create_app(settings)
        else:
            open_sampler(settings)  # check once here, so a bad input fails before any worker starts
            application = None
    except (CurriculumError, ShardError) as exc:
        if _state["debug"]:
            raise
        _fail(str(exc))
    http_impl, loop_impl = resolve_stack(settings.http, settings.loop)
    warning = open_bind_warning(settings.host, settings.token_value)
    if warning:
        typer.echo(warning, err=True)
    url = f"http://{settings.host}:{settings.port}/"
    typer.echo(f"sampler-server: serving {settings.recipe} on {url} (dashboard: {url}"
               f"{'#token=…' if settings.token_value else ''}; HTTP {http_impl}, event loop {loop_impl})", err=True)
    common = dict(host=settings.host, port=settings.port, log_level=settings.log_level, access_log=settings.access_log,
                  http=http_impl, loop=loop_impl)
    if application is not None:
        uvicorn.run(application, **common)
        return
    # Workers are separate processes started with `spawn` (uvicorn's multiprocess mode; the omp
    # threading layer is not fork-safe); each builds its app from the SAMPLER_* environment.
    os.environ.update(worker_environment(settings))
    uvicorn.run("sampler_server.app:create_app_from_env", factory=True, workers=settings.workers, **common)


def open_bind_warning(host: str, token: str | None) -> str | None:
    """The start-up warning for a server others can reach without a token (e.g. the image's
    0.0.0.0, published with -p); None on loopback or with a token."""
    if token or _loopback(host):
        return None
    return (f"sampler-server: warning: serving on {host} without a token: anyone who can reach this port reads "
            "every batch and can move the amendment watermark; set SAMPLER_TOKEN (or --token)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def worker_environment(settings) -> dict[str, str]:
    """The SAMPLER_* variables a spawned worker builds its settings from (`create_app_from_env`)."""
    env = {}
    for key, value in settings.model_dump(mode="json").items():
        raw = getattr(settings, key)
        if isinstance(raw, SecretStr):  # model_dump masks secrets as "**********": pass the value itself
            value = raw.get_secret_value()
        if value is not None:
            env[f"SAMPLER_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _bind_probe(host: str, port: int) -> tuple[str | None, int]:
    """(why the server could not listen on (host, port) or None, the port bound). A bind-and-release
    probe (as uvicorn binds: SO_REUSEADDR); port 0 gets a free port from the OS, which the server
    then uses. Another process can still take the port in between, which uvicorn then reports."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        return f"--host {host}: cannot resolve it ({getattr(exc, 'strerror', None) or exc})", port
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            return (f"--port {port} on {host}: cannot listen there ({exc.strerror or exc}); another process may hold "
                    "it: pick another --port, or stop that process"), port
        return None, probe.getsockname()[1]


def main() -> None:
    """Console entry point `sampler-server`."""
    run_app(app)


if __name__ == "__main__":
    main()

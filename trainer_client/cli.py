"""`trainer-client` command line: parse, call `train`, format errors as one line.

    trainer-client train --server http://127.0.0.1:8000[,http://host2:8000] --model tiny --steps 200 \
        [--checkpoint-dir DIR] [--start-step N] [--variant NAME] [--nproc-per-node 2]

Several ranks: `torchrun --standalone --nproc-per-node 2 -m trainer_client.cli train ...`, or
`--nproc-per-node N`, which starts N local rank processes itself (same environment variables as
torchrun; they share this process's process group, so stopping it stops them).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from trainer_client.typer_main import run_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train a ModernBERT MLM on batches from the sampler service.")
_state: dict = {"debug": False, "argv": None}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _state["debug"] = debug


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the launcher dies, so no rank outlives it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_LAUNCHED = "TRAINER_CLIENT_LAUNCHED"  # set in the ranks launch_local starts


def resume_hint(argv: list[str]) -> str:
    """How to go on after the run stopped, from its own --checkpoint-dir."""
    ckpt = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--checkpoint-dir"),
                next((a.split("=", 1)[1] for a in argv if a.startswith("--checkpoint-dir=")), None))
    if ckpt is None:
        return "no --checkpoint-dir was given, so a rerun starts from the beginning"
    return f"rerun the same command to resume from the newest checkpoint in {ckpt}"


def _how_it_ended(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with code {rc}"


_URI_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # what Path() leaves of scheme://


def usable_cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's
    /sys/fs/cgroup/cpu.max). The trainer image ships without `curriculum`, whose
    `resources.usable_cores` also reads cgroup v1 and nested groups."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()
        cores = min(cores, -(-int(quota) // int(period)))
    except (OSError, ValueError):  # no such file, or "max": no quota
        pass
    return max(1, cores)


def launch_env(nproc: int, port: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every rank of a local launch shares (each adds RANK and LOCAL_RANK)."""
    env = dict(os.environ if environ is None else environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc), **{_LAUNCHED: "1"})
    # The cores this process may use (affinity, cgroup CPU quota), shared by the ranks: in a 4-CPU
    # pod of a 64-core host os.cpu_count() gave each of 2 ranks 32 torch threads.
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // nproc)))
    return env


def launch_local(nproc: int, argv: list[str]) -> int:
    """Start `nproc` ranks of `trainer-client <argv>` on this machine; the first failure stops the
    rest and is reported (which rank, how, and how to resume)."""
    env = launch_env(nproc, _free_port())
    procs = []
    for r in range(nproc):
        e = dict(env, RANK=str(r), LOCAL_RANK=str(r))
        procs.append(subprocess.Popen([sys.executable, "-m", "trainer_client.cli", *argv], env=e,
                                      preexec_fn=_die_with_parent))
    code = 0
    ranks = {p.pid: r for r, p in enumerate(procs)}
    try:
        while procs:
            for p in list(procs):
                rc = p.poll()
                if rc is None:
                    continue
                procs.remove(p)
                if rc != 0 and code == 0:
                    code = rc if rc > 0 else 128 - rc  # a signal: the shell's convention
                    for q in procs:
                        q.terminate()
                    if rc < 0:  # a rank that exits with a code has said why itself
                        print(f"trainer-client: rank {ranks[p.pid]} (pid {p.pid}) {_how_it_ended(rc)}; stopped the "
                              f"other ranks; {resume_hint(argv)}", file=sys.stderr)
            time.sleep(0.1)
    except KeyboardInterrupt:
        for q in procs:
            q.send_signal(signal.SIGINT)
        for q in procs:
            q.wait()
        print(f"trainer-client: interrupted; {resume_hint(argv)}", file=sys.stderr)
        return 130
    return code


def _strip_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def _unwritable(paths: list[tuple[str, Path | None, bool]]) -> list[str]:
    """Problems with the paths the run will write (flag, path, is a file): each folder is made
    and a temporary file created in it, as the run would."""
    problems = []
    for flag, path, is_file in paths:
        if path is None:
            continue
        if path.is_dir() if is_file else (path.exists() and not path.is_dir()):
            problems.append(f"{flag} {path}: " + ("is a directory; give the path of the file to write" if is_file
                                                  else "exists and is not a directory"))
            continue
        folder = path.parent if is_file else path
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            problems.append(f"{flag} {path}: cannot write in {folder} ({exc.strerror or exc})")
    return problems


@app.command()
def train(
    server: str = typer.Option(..., "--server", help="Sampler URL(s), comma-separated: replicas of one build, tried in order on failure."),
    model: str = typer.Option("tiny", "--model", help="Preset: tiny (CPU tests), small or base (mmBERT sizes)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Stop before this global step (default: the recipe's end). "
                                        "Rerunning the same command after a crash finishes the run."),
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="Save here; resume from the newest checkpoint in it."),
    start_step: Optional[int] = typer.Option(None, "--start-step", help="First step of a fresh run (default 0)."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Phase variant to train (passed to the server as variant=)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start a fresh run from this checkpoint's weights "
                                             "(a step_N dir or a checkpoint dir), e.g. to branch a variant."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (the batch's LR factor scales it)."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Max global gradient norm."),
    weight_decay: float = typer.Option(0.01, "--weight-decay"),
    report_every: int = typer.Option(10, "--report-every", help="Steps between progress reports (stdout and POST /v1/progress)."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Steps between checkpoints."),
    keep: int = typer.Option(2, "--keep", help="Checkpoints to keep."),
    log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="Write metrics.jsonl and per-rank step -> batch sha256 logs here."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Vocabulary size, when the server does not report it."),
    token: Optional[str] = typer.Option(None, "--token", envvar="SAMPLER_TOKEN", help="Bearer token of the server (env SAMPLER_TOKEN)."),
    prefetch: int = typer.Option(4, "--prefetch", help="Batches fetched ahead of the one training."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for a server's answer before the request is retried elsewhere (connecting gives up after at most 5 s)."),
    attn: str = typer.Option("auto", "--attn", help="auto | flash_attention_2 | sdpa | eager."),
    seed: int = typer.Option(0, "--seed", help="Model initialisation seed."),
    run_name: str = typer.Option("", "--run-name", help="Shown with progress reports on the dashboard."),
    summary: Optional[Path] = typer.Option(None, "--summary", help="Write a JSON summary (rank 0) here at the end."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", min=1, help="Start this many local ranks (CPU: gloo; GPU: one per device)."),
) -> None:
    """Train (or resume) until --steps, following the recipe's phases from the server."""
    # Checked before any rank starts: an unwritable --checkpoint-dir used to fail at the first
    # checkpoint, and an unwritable --summary after the whole run.
    problems = [f"{flag} {str(p).replace(':/', '://', 1)}: takes a local path here, not a URI"
                for flag, p in (("--checkpoint-dir", checkpoint_dir), ("--log-dir", log_dir), ("--summary", summary),
                                ("--init-from", init_from))
                if p is not None and _URI_PATH.match(str(p))]  # Path() folded s3://b/ck into a local s3:/b/ck
    problems = problems or _unwritable([("--checkpoint-dir", checkpoint_dir, False), ("--log-dir", log_dir, False),
                                        ("--summary", summary, True)])
    if problems:
        typer.echo(f"trainer-client: {'; '.join(problems)}", err=True)
        raise typer.Exit(2)
    if nproc_per_node > 1 and "RANK" not in os.environ:
        argv = _strip_option(_state.get("argv") or sys.argv[1:], "--nproc-per-node")
        raise typer.Exit(launch_local(nproc_per_node, argv))
    logging.basicConfig(level=logging.WARNING, format=f"[rank {os.environ.get('RANK', '0')}] %(levelname)s %(name)s: %(message)s")
    from trainer_client.client import SamplerError, SamplerUnavailable
    from trainer_client.train import TrainConfig, TrainError, shutdown, summary_json
    from trainer_client.train import train as run_train

    rank = os.environ.get("RANK", "0")
    try:
        cfg = TrainConfig(
            servers=[s for s in server.split(",") if s.strip()], model=model, steps=steps, checkpoint_dir=checkpoint_dir,
            start_step=start_step, init_from=init_from, variant=variant, lr=lr, grad_clip=grad_clip,
            weight_decay=weight_decay, report_every=report_every, checkpoint_every=checkpoint_every, keep_checkpoints=keep,
            log_dir=log_dir, vocab_size=vocab_size, token=token, prefetch=prefetch, timeout=timeout, attn=attn, seed=seed,
            run_name=run_name,
        )
        result = run_train(cfg)
    except (SamplerError, TrainError, ValueError) as exc:
        if _state["debug"]:
            raise
        # Mid-run, no replica answered: the run is resumable, so say how.
        hint = f"; {resume_hint(_state.get('argv') or sys.argv[1:])}" if isinstance(exc, SamplerUnavailable) else ""
        typer.echo(f"trainer-client [rank {rank}]: {exc}{hint}", err=True)
        raise typer.Exit(2)
    except KeyboardInterrupt:
        if rank == "0" and _LAUNCHED not in os.environ:  # under launch_local, the launcher says it once
            typer.echo(f"trainer-client: interrupted; {resume_hint(_state.get('argv') or sys.argv[1:])}", err=True)
        raise typer.Exit(130)
    finally:
        shutdown()
    if summary is not None and rank == "0":
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps(summary_json(result), indent=2))


def main(argv: list[str] | None = None) -> None:
    """Console entry point `trainer-client`."""
    _state["argv"] = list(argv) if argv is not None else sys.argv[1:]
    run_app(app, argv)


if __name__ == "__main__":
    main()

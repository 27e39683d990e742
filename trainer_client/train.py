"""The FSDP2 train loop: ModernBERT MLM on batches from the sampler service.

One process per rank (`torchrun`, or `trainer-client train --nproc-per-node N`); NCCL on GPUs,
gloo on CPU. Each rank fetches its own slice (rank, world size) of every global step; the model is
sharded with `fully_shard` per encoder layer and then at the root. The schedule comes with the
data: a batch carries its phase, sequence length (which changes at phase boundaries without a
restart) and LR factor (lr = peak × factor). The loss is the mean over all masked tokens of all
ranks; per-language losses go to `POST /v1/progress` every `report_every` steps.

Checkpoints (`torch.distributed.checkpoint`: model, optimizer) are written to `step_N.tmp/` and
renamed to `step_N/` once every rank has finished and `trainer.json` (next step, build id,
dataset state, tokens) is in place, so a directory named `step_N` is always complete. A restarted
run continues from the newest one with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from trainer_client.client import RetryPolicy, SamplerClient
from trainer_client.dataset import SamplerDataset, TrainBatch
from trainer_client.model import DEFAULT_PEAK_LR, PackedMaskedLM, TokenizerSpec, build_model, parameter_count

log = logging.getLogger("trainer_client")

CHECKPOINT_RE = re.compile(r"^step_(\d{8})$")
TRAINER_JSON = "trainer.json"


class TrainError(RuntimeError):
    """A run that cannot start or continue as asked; the message says what to change."""


@dataclass
class TrainConfig:
    """Everything `trainer-client train` takes."""

    servers: list[str]
    model: str = "tiny"
    steps: int | None = None  # stop before this global step (default: the recipe's end)
    checkpoint_dir: Path | None = None
    start_step: int | None = None  # where a fresh run starts (default 0); a checkpoint wins otherwise
    init_from: Path | None = None  # a fresh run starts from these weights (e.g. branch a phase variant)
    variant: str | None = None
    lr: float | None = None  # peak LR (default per preset)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 1.0
    report_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_dir: Path | None = None  # metrics.jsonl (rank 0) and batches.rank{r}.tsv (step → sha256)
    vocab_size: int | None = None  # when the server does not report its tokenizer
    token: str | None = None
    prefetch: int = 4
    timeout: float = 60.0
    attn: str = "auto"
    seed: int = 0
    run_name: str = ""
    quiet: bool = False

    def __post_init__(self) -> None:
        """Refuse settings that cannot work before anything starts (named as the CLI flags)."""
        from trainer_client.model import PRESETS

        problems = []
        if not self.servers:
            problems.append("--server: give at least one sampler URL")
        if self.model not in PRESETS:
            problems.append(f"--model {self.model!r}: choose one of {', '.join(PRESETS)}")
        if self.attn not in ("auto", "flash_attention_2", "sdpa", "eager"):
            problems.append(f"--attn {self.attn!r}: choose one of auto, flash_attention_2, sdpa, eager")
        for flag, value, least in (("--steps", self.steps, 1), ("--start-step", self.start_step, 0),
                                   ("--report-every", self.report_every, 1), ("--checkpoint-every", self.checkpoint_every, 1),
                                   ("--keep", self.keep_checkpoints, 1), ("--prefetch", self.prefetch, 1),
                                   ("--vocab-size", self.vocab_size, 1)):
            if value is not None and value < least:
                problems.append(f"{flag} {value}: must be >= {least}")
        for flag, value in (("--lr", self.lr), ("--timeout", self.timeout), ("--grad-clip", self.grad_clip)):
            if value is not None and not (math.isfinite(value) and value > 0):
                problems.append(f"{flag} {value}: must be a positive number")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            problems.append(f"--weight-decay {self.weight_decay}: must be >= 0")
        for flag, path in (("--checkpoint-dir", self.checkpoint_dir), ("--log-dir", self.log_dir)):
            if path is not None and Path(path).exists() and not Path(path).is_dir():
                problems.append(f"{flag} {path}: exists and is not a directory")
        if self.init_from is not None and not Path(self.init_from).is_dir():
            problems.append(f"--init-from {self.init_from}: no such checkpoint directory")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class PhaseSummary:
    phase: str
    steps: int = 0
    first_loss: float = math.nan  # mean of the phase's first steps in this run
    last_loss: float = math.nan  # mean of its last steps
    losses: list[float] = field(default_factory=list, repr=False)


@dataclass
class TrainResult:
    start_step: int
    next_step: int
    losses: dict[int, float]  # step → global loss
    phases: list[PhaseSummary]
    data_wait_seconds: float
    step_seconds: float
    decode_seconds: float
    tokens: int

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_seconds / self.step_seconds if self.step_seconds > 0 else 0.0


# -- distributed set-up ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from the torchrun environment; a single process without one."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        if world == 1 and "MASTER_ADDR" not in os.environ:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group(backend, rank=rank, world_size=world)
    return dist.get_rank(), dist.get_world_size(), device


def shard_model(model: PackedMaskedLM, device: torch.device, world: int) -> PackedMaskedLM:
    """FSDP2: each encoder layer its own unit, then the root (embeddings, head, tied decoder)."""
    mesh = init_device_mesh(device.type, (world,))
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, peak_lr: float) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and the (tied) embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embeddings" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=peak_lr, betas=cfg.betas, eps=cfg.eps)


# -- checkpoints ----------------------------------------------------------------------------------

def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete `step_N/` under `root` (temp dirs of a killed save are ignored)."""
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if CHECKPOINT_RE.match(p.name) and (p / TRAINER_JSON).is_file()]
    return max(done, key=lambda p: p.name) if done else None


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(root: Path, model: torch.nn.Module, optim: torch.optim.Optimizer, meta: dict[str, Any],
                    keep: int) -> Path:
    """Write step_{next_step}/ atomically (temp dir, then rename) and keep the newest `keep`."""
    rank = dist.get_rank()
    final = root / f"step_{meta['next_step']:08d}"
    tmp = root / f"{final.name}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    msd, osd = get_state_dict(model, optim)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp))
    _barrier()  # every rank's shards are on disk
    if rank == 0:
        data = json.dumps(meta, indent=2, sort_keys=True)
        with open(tmp / TRAINER_JSON, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        complete = sorted((p for p in root.iterdir() if CHECKPOINT_RE.match(p.name)), key=lambda p: p.name)
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: Path, model: torch.nn.Module, optim: torch.optim.Optimizer) -> dict[str, Any]:
    """Load model and optimizer in place (resharded to this world size); returns trainer.json.

    The optimizer's moments and step counts come from the checkpoint, its hyperparameters
    (weight decay, betas, eps) from this run's flags: loading the state would otherwise restore
    the saved param_groups over them, and `--init-from CKPT --weight-decay X` (a decay variant)
    silently trained with the parent run's decay."""
    meta = read_trainer_json(path)
    flags = [{k: v for k, v in g.items() if k != "params"} for g in optim.param_groups]
    msd, osd = get_state_dict(model, optim)
    state = {"model": msd, "optim": osd}
    try:
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
    except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
        # A damaged save (a file cut short or missing) gives EOFError, AssertionError, a zip error
        # wrapped in CheckpointException...; other failures (out of memory, a collective timing
        # out, another model shape) reach here too, so deletion is advice for the first kind only.
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise TrainError(f"checkpoint {path}: could not be loaded ({type(exc).__name__}: {first}); if it is damaged "
                         "(a file cut short or missing: compare it with the one before), delete that directory to "
                         "resume from the one before") from None
    for g, f in zip(optim.param_groups, flags):
        g.update(f)
    return meta


def read_trainer_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / TRAINER_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainError(f"checkpoint {path}: unreadable {TRAINER_JSON} ({exc}); delete that directory to resume "
                         "from the one before") from None


# -- logging --------------------------------------------------------------------------------------

def batch_digest(b: TrainBatch) -> str:
    """sha256 of the batch's input_ids and labels bytes (what the resume test compares)."""
    h = hashlib.sha256(b.input_ids.numpy().tobytes())
    h.update(b.labels.numpy().tobytes())
    return h.hexdigest()


class _Logs:
    """metrics.jsonl (rank 0) and batches.rank{r}.tsv; line-buffered so a kill -9 loses nothing written.

    Each step is logged once: a run starting (or resuming) at step `start` first drops the lines
    of steps >= start that an earlier run wrote (they are trained again), and a cut last line."""

    def __init__(self, log_dir: Path | None, rank: int, start: int = 0):
        self.metrics: TextIO | None = None
        self.batches: TextIO | None = None
        if log_dir is None:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        batches = log_dir / f"batches.rank{rank}.tsv"
        _keep_steps_before(batches, start, lambda line: int(line.split("\t", 1)[0]))
        self.batches = open(batches, "a", encoding="utf-8", buffering=1)
        if rank == 0:
            metrics = log_dir / "metrics.jsonl"
            _keep_steps_before(metrics, start, lambda line: int(json.loads(line)["step"]))
            self.metrics = open(metrics, "a", encoding="utf-8", buffering=1)

    def close(self) -> None:
        for f in (self.metrics, self.batches):
            if f is not None:
                f.close()


def _keep_steps_before(path: Path, start: int, step_of) -> None:
    """Rewrite `path` (atomically) without its lines of steps >= start and its unfinished last line."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    lines = text[: text.rfind("\n") + 1].splitlines()  # a kill mid-write leaves a cut last line
    kept = []
    for line in lines:
        try:
            if step_of(line) < start:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # not a step line (edited by hand): keep it
            kept.append(line)
    if len(kept) == len(lines) and text.endswith("\n") or not text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
    os.replace(tmp, path)


def _say(cfg: TrainConfig, rank: int, msg: str) -> None:
    if rank == 0 and not cfg.quiet:
        print(msg, flush=True)


# -- the loop -------------------------------------------------------------------------------------

def resolve_tokenizer(cfg: TrainConfig, server_tok: dict[str, Any] | None) -> TokenizerSpec:
    """The vocabulary: --vocab-size wins, else what `GET /v1/recipe` reports."""
    if server_tok and "vocab_size" in server_tok:
        spec = TokenizerSpec(int(server_tok["vocab_size"]), int(server_tok.get("pad_id", 0) or 0),
                             server_tok.get("cls_id"), server_tok.get("sep_id"), server_tok.get("mask_id"))
        if cfg.vocab_size is not None and cfg.vocab_size != spec.vocab_size:
            raise TrainError(f"--vocab-size {cfg.vocab_size} differs from the server's tokenizer "
                             f"({spec.vocab_size} tokens); drop --vocab-size")
        return spec
    if cfg.vocab_size is None:
        raise TrainError("the server does not report its tokenizer's vocabulary size (GET /v1/recipe has no "
                         "'tokenizer'); pass --vocab-size (manifest.json: tokenizer.vocab_size)")
    return TokenizerSpec(cfg.vocab_size)


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) training until `cfg.steps` or the recipe's end; every rank calls this."""
    rank, world, device = init_distributed()
    client = SamplerClient(cfg.servers, token=cfg.token, timeout=cfg.timeout, retry=RetryPolicy(), seed=rank)
    ckpt = latest_checkpoint(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    resume: dict[str, Any] | None = None
    if ckpt is not None:
        resume = read_trainer_json(ckpt)
        client.expect_build(resume["build_id"], f"the build checkpoint {ckpt} was trained on")
        for key, want in (("model", cfg.model), ("variant", cfg.variant)):
            if resume.get(key) != want:
                raise TrainError(f"checkpoint {ckpt} was trained with {key}={resume.get(key)!r}, this run asks for "
                                 f"{want!r}; use the same setting or a fresh --checkpoint-dir")
        # The same command again (its --start-step is where the run began) continues; another start does not.
        if cfg.start_step is not None and cfg.start_step not in (resume["next_step"], resume.get("start_step")):
            raise TrainError(f"--start-step {cfg.start_step}, but checkpoint {ckpt} continues at step "
                             f"{resume['next_step']}; drop --start-step or use a fresh --checkpoint-dir")
    client.check_replicas(cfg.variant)
    info = client.info(cfg.variant)
    tok = resolve_tokenizer(cfg, info.tokenizer)
    init = None
    if resume is None and cfg.init_from is not None:
        init = cfg.init_from if (cfg.init_from / TRAINER_JSON).is_file() else latest_checkpoint(cfg.init_from)
        if init is None:
            raise TrainError(f"--init-from {cfg.init_from}: no complete checkpoint (step_N/ with {TRAINER_JSON}) there")
    for src, meta in ((ckpt, resume), (init, read_trainer_json(init) if init else None)):
        if meta is not None and (meta.get("vocab_size"), meta.get("model")) != (tok.vocab_size, cfg.model):
            raise TrainError(f"checkpoint {src} is a {meta.get('model')!r} model over {meta.get('vocab_size')} tokens; "
                             f"this run builds {cfg.model!r} over the server's {tok.vocab_size}")
    if cfg.start_step is not None and cfg.start_step >= info.total_steps:
        # An explicit start past the run is a mistake (a resumed run at its end says "nothing to do").
        raise TrainError(f"--start-step {cfg.start_step}: the run has {info.total_steps:,} steps "
                         f"(0..{info.total_steps - 1:,}); give a step inside it")
    if cfg.steps is not None and cfg.steps > info.total_steps:  # was clamped to the run's end without a word
        raise TrainError(f"--steps {cfg.steps}: the run has {info.total_steps:,} steps; give at most that, or leave "
                         "--steps out to train to the end")
    stop = info.total_steps if cfg.steps is None else cfg.steps
    if resume is None and cfg.start_step is not None and cfg.start_step >= stop:
        raise TrainError(f"--start-step {cfg.start_step} is not before --steps {stop}: nothing would be trained")
    first = (resume["next_step"] if resume is not None else cfg.start_step if cfg.start_step is not None
             else int(read_trainer_json(init)["next_step"]) if init is not None else 0)
    run_start = resume.get("start_step") if resume is not None else first  # recorded in every checkpoint
    check_world_size(info.phases, world, first, stop)
    peak_lr = cfg.lr if cfg.lr is not None else DEFAULT_PEAK_LR.get(cfg.model, 8e-4)

    model = build_model(cfg.model, tok, attn=cfg.attn, device=device, seed=cfg.seed)  # type: ignore[arg-type]
    n_params = parameter_count(model)
    model = shard_model(model, device, world)
    optim = make_optimizer(model, cfg, peak_lr)
    ds = SamplerDataset(cfg.servers, rank, world, start_step=cfg.start_step or 0, stop_step=stop,
                        prefetch=cfg.prefetch, variant=cfg.variant, client=client)
    tokens_seen = 0
    if ckpt is not None:
        resume = load_checkpoint(ckpt, model, optim)
        ds.load_state_dict(resume["dataset"])
        tokens_seen = int(resume.get("tokens", 0))
    elif init is not None:
        # Weights and optimizer state of another run (another build, e.g. the main line before a
        # variant's phase); the data continues at its next step unless --start-step says otherwise.
        meta = load_checkpoint(init, model, optim)
        ds = SamplerDataset(cfg.servers, rank, world, start_step=cfg.start_step if cfg.start_step is not None
                            else int(meta["next_step"]), stop_step=stop, prefetch=cfg.prefetch, variant=cfg.variant,
                            client=client)
        tokens_seen = int(meta.get("tokens", 0))
    start = ds.next_step
    span = (f"steps {start}..{stop - 1} of {info.total_steps}" if start < stop
            else f"already at step {start}, --steps is {stop}")
    _say(cfg, rank, f"trainer: build {client.build_id} from {client.active_url}; model {cfg.model} "
                    f"({n_params / 1e6:.2f}M parameters, attention {model.config._attn_implementation}) on "
                    f"{world} x {device.type}; {span}"
                    + (f"; resumed from {ckpt}" if ckpt else f"; initialised from {init}" if init else ""))

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    logs = _Logs(cfg.log_dir, rank, start)
    reporter = ThreadPoolExecutor(1, thread_name_prefix="progress") if rank == 0 else None
    lang_stats: torch.Tensor | None = None  # [K, 2]: loss sum, count since the last report
    window = [0.0, 0.0, 0.0, 0]  # loss sum, count, seconds, tokens
    losses: dict[int, float] = {}
    phases: dict[str, PhaseSummary] = {}
    wait_total = step_total = 0.0
    last_saved = start
    it = iter(ds)
    t_prev = time.perf_counter()
    try:
        while True:
            t0 = time.perf_counter()
            try:
                cpu_batch = next(it)
            except StopIteration:
                break
            wait = time.perf_counter() - t0
            b = cpu_batch.to(device, non_blocking=True) if device.type == "cuda" else cpu_batch
            lr = peak_lr * b.lr_factor
            for g in optim.param_groups:
                g["lr"] = lr
            with autocast:
                tok_loss = model(b.input_ids, b.labels, b.cu_seqlens, b.max_seqlen)
            # Normalise by the masked tokens of *all* ranks: FSDP averages gradients over ranks, so
            # the local sum is scaled by world / global count to give the global token mean.
            tot = torch.stack([tok_loss.detach().sum(), torch.tensor(float(tok_loss.numel()), device=device)])
            dist.all_reduce(tot)
            loss = tok_loss.sum() * (world / tot[1].clamp_min(1.0))
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
            # Both values are global (all-reduced), so every rank stops here together, before
            # the step is applied: an inf gradient with a finite loss made the clip factor 0 and
            # the weights NaN, and the next checkpoint then poisoned every resume.
            step_loss = float(tot[0] / tot[1].clamp_min(1.0))
            if not math.isfinite(step_loss) or not math.isfinite(float(gnorm)):
                what = f"loss is {step_loss}" if not math.isfinite(step_loss) else f"gradient norm is {float(gnorm)}"
                raise TrainError(f"step {b.step}: {what}, so the step was not applied; lower --lr (peak {peak_lr}) "
                                 "or check the data, then rerun to resume from the last checkpoint")
            optim.step()
            optim.zero_grad(set_to_none=True)
            if lang_stats is None:
                lang_stats = torch.zeros(len(b.languages), 2, dtype=torch.float64, device=device)
            rows = torch.nonzero(b.labels.reshape(-1) != -100, as_tuple=True)[0] // b.seq_len
            lang_of = b.lang.long().index_select(0, rows)
            lang_stats[:, 0].index_add_(0, lang_of, tok_loss.detach().double())
            lang_stats[:, 1].index_add_(0, lang_of, torch.ones_like(lang_of, dtype=torch.float64))

            now = time.perf_counter()
            step_time, t_prev = now - t_prev, now
            wait_total += wait
            step_total += step_time
            tokens_seen = b.tokens_before + b.tokens
            losses[b.step] = step_loss
            ph = phases.setdefault(b.phase, PhaseSummary(b.phase))
            ph.steps += 1
            ph.losses.append(step_loss)
            window[0] += float(tot[0])
            window[1] += float(tot[1])
            window[2] += step_time
            window[3] += b.tokens
            if logs.batches is not None:
                logs.batches.write(f"{b.step}\t{batch_digest(cpu_batch)}\n")
            if logs.metrics is not None:
                logs.metrics.write(json.dumps({
                    "step": b.step, "phase": b.phase, "seq_len": b.seq_len, "loss": step_loss, "lr": lr,
                    "grad_norm": float(gnorm), "masked_tokens": int(tot[1]), "tokens": tokens_seen,
                    "data_wait": wait, "step_time": step_time}) + "\n")

            done = b.step + 1
            if done % cfg.report_every == 0 or done == stop:
                dist.all_reduce(lang_stats)
                if rank == 0:
                    mean = window[0] / max(window[1], 1.0)
                    tps = window[3] / window[2] if window[2] > 0 else 0.0
                    by_lang = {b.languages[i]: float(s / c) for i, (s, c) in enumerate(lang_stats.tolist()) if c > 0}
                    report = {"step": b.step, "tokens": tokens_seen, "loss": mean, "loss_by_language": by_lang,
                              "tokens_per_second": tps, "rank": 0, "run": cfg.run_name[:128]}
                    reporter.submit(client.post_progress, report)
                    _say(cfg, rank, f"step {b.step:>6}  {b.phase:<10} L={b.seq_len:<5} loss {mean:7.4f}  "
                                    f"lr {lr:.2e}  {tps:8.0f} tok/s  data wait {wait_total / step_total:6.2%}")
                lang_stats.zero_()
                window = [0.0, 0.0, 0.0, 0]
            if cfg.checkpoint_dir is not None and (done % cfg.checkpoint_every == 0 or done == stop) and done != last_saved:
                meta = {"next_step": done, "start_step": run_start, "build_id": client.build_id, "variant": cfg.variant,
                        "model": cfg.model,
                        "vocab_size": tok.vocab_size, "world_size": world, "tokens": tokens_seen,
                        "dataset": ds.state_dict(), "time": time.time(), "servers": client.urls}
                path = save_checkpoint(cfg.checkpoint_dir, model, optim, meta, cfg.keep_checkpoints)
                last_saved = done
                _say(cfg, rank, f"checkpoint {path}")
    finally:
        logs.close()
        if reporter is not None:
            reporter.shutdown(wait=True)
    for ph in phases.values():
        k = max(1, min(10, len(ph.losses) // 4))
        ph.first_loss = sum(ph.losses[:k]) / k
        ph.last_loss = sum(ph.losses[-k:]) / k
    result = TrainResult(start, ds.next_step, losses, list(phases.values()), wait_total, step_total,
                         ds.stats.decode_seconds, tokens_seen)
    if phases:
        _say(cfg, rank, "loss per phase (mean of its first / last steps in this run):")
        for ph in result.phases:
            _say(cfg, rank, f"  {ph.phase:<12} {ph.steps:>5} steps   {ph.first_loss:7.4f} -> {ph.last_loss:7.4f}")
        _say(cfg, rank, f"data wait {result.data_wait_fraction:.2%} of step time; decode "
                        f"{1e3 * result.decode_seconds / max(ds.stats.batches, 1):.2f} ms/batch; "
                        f"{ds.stats.batches} batches; client failovers {client.stats.failovers}")
    else:
        _say(cfg, rank, f"nothing to do: the run is already at step {start} (stop at {stop})")
    client.close()
    # Every rank finishes its last collective before any rank tears the process group down: a
    # rank that destroys it (or exits, taking the store with it) while a peer is still inside
    # gloo can abort that peer at exit ("terminate called without an active exception").
    _barrier()
    return result


def check_world_size(phases: list[dict], world: int, first: int, stop: int) -> None:
    """Refuse at start-up a world size that does not divide the global batch of some step in
    [first, stop): the server would refuse that step, days into a run (the last checkpoint
    before it is all that is kept). Uses each phase's batch and its warm-up's batch sizes."""
    for p in phases:
        s0, n = int(p.get("start_step", 0)), int(p.get("steps", 0))
        if s0 + n <= first or s0 >= stop:
            continue
        full = p.get("batch_sequences", p.get("global_batch"))  # older servers' variant tables: global_batch only
        if full is None:  # skipping the check would let the run fail at that step, days in
            raise TrainError(f"the server's phase table gives no batch size for phase {p.get('name')!r}, so the world "
                             "size cannot be checked: run a sampler-server of this trainer's version")
        warm = int(p.get("warmup_steps", 0))
        sizes = ([int(b) for b in p.get("warmup_batch_sizes", [])] if first < s0 + warm else []) + [int(full)]
        bad = [b for b in sizes if b % world]
        if bad:
            common = math.gcd(*sizes)
            raise TrainError(f"{world} ranks do not divide the global batch of {bad[0]} sequences of phase {p.get('name')!r}"
                             + (" (a batch warm-up step)" if bad[0] != int(full) else "")
                             + f", steps {s0}..{s0 + n - 1}; use a world size that divides {common}")


def summary_json(result: TrainResult) -> dict[str, Any]:
    d = asdict(result)
    d["losses"] = {str(k): v for k, v in result.losses.items()}
    for p in d["phases"]:
        p.pop("losses", None)
    d["data_wait_fraction"] = result.data_wait_fraction
    return d


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["TrainConfig", "TrainError", "TrainResult", "batch_digest", "latest_checkpoint",
           "load_checkpoint", "save_checkpoint", "shutdown", "train"]

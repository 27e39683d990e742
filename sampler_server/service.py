"""The service behind the HTTP routes: the samplers of every phase variant, their derived plans,
batch assembly and encoding in a bounded thread pool, readiness, the live journal and progress.

`sampler_server.app` turns requests into calls on `Service` and results into responses; this
module knows nothing of HTTP beyond the status an `ApiError` carries.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import numpy as np
import polars as pl
import pyarrow as pa

from curriculum import storage
from curriculum.amend import Amendment, AmendmentError, phase_allotments, phase_pieces
from curriculum.errors import CurriculumError, RecipeError
from curriculum.plan import PhasePlan, allotment_warnings, epoch_tokens, phase_summary
from curriculum.recipe import Recipe, load_recipe
from curriculum.schedule import ScheduleError
from curriculum.shards import ShardError, open_shard
from sampler_server.kernels.wire_parts import wire_parts
from sampler_server.live import Behind, JournalBroken, JournalUnavailable, Live, claim_journal, open_journal
from sampler_server.metrics import TOP_GROUP, Metrics
from sampler_server.progress import ProgressStore, consumed_per_phase, progress_summary
from sampler_server.sampler import Sampler
from sampler_server.settings import ServerSettings
from trainer_client import wire

log = logging.getLogger("sampler_server")

MIXTURE_BARS = 10  # the dashboard's mixture chart: top languages, then the rest as one bar
SERIES_POINTS = 400  # progress points sent to the dashboard (older history is thinned)


class StartupError(CurriculumError):
    """The server cannot start on these inputs; the message lists what to fix."""


class ApiError(Exception):
    """A request the server refuses: becomes `{"error": code, "message": ...}` with `status`."""

    def __init__(self, status: int, code: str, message: str, **extra: object):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


# -- start-up ---------------------------------------------------------------------------------

def make_sampler(settings: ServerSettings, manifest: object, recipe: Recipe, variant: str | None,
                 amendments: list[Amendment] | tuple[Amendment, ...] = ()) -> Sampler:
    """A Sampler of `variant` with the server's settings (manifest: a path or a read Manifest).
    Variants other than the server's default ignore an amendment's multipliers of languages they
    do not select (`Sampler.strict_weights`)."""
    return Sampler(manifest, recipe, settings.seed, variant=variant, chunk=settings.chunk,
                   block_tokens=settings.block_tokens, threads=settings.kernel_threads, index_dir=settings.index_dir,
                   cache_dir=settings.cache_dir, cache_bytes=settings.cache_bytes, amendments=amendments,
                   strict_weights=variant == settings.variant)


def open_sampler(settings: ServerSettings) -> Sampler:
    """Build the Sampler of the default variant, amended by the journal, and check the manifest
    (every shard present with its recorded size; every checksum with `verify`); raise
    StartupError listing the problems. Then bind the journal to this run (`Journal.claim`)."""
    try:
        journal = open_journal(settings.journal, settings.recipe, required=settings.journal is not None,
                               manifest=settings.manifest)
        entries = journal.entries if journal is not None else []
        sampler = make_sampler(settings, settings.manifest, load_recipe(settings.recipe), settings.variant, entries)
    except AmendmentError as exc:
        raise StartupError(f"{exc}; fix the journal or move it aside to serve the recipe unamended") from None
    except RecipeError as exc:  # planning on the manifest: name the file, as loading it does
        raise StartupError(str(exc) if str(exc).startswith("recipe ") else f"recipe {settings.recipe}: {exc}") from None
    except (ValueError, OSError, CurriculumError) as exc:  # e.g. a manifest without tokenizer metadata
        raise StartupError(str(exc)) from None
    sampler.journal = journal
    m = sampler.manifest
    if m.meta.kind != "built":
        log.warning("manifest %s is %r: serving generated random tokens of its sizes (for scale tests, not training)",
                    m.root, m.meta.kind)
        _claim(journal, sampler)
        return sampler
    problems = []
    for r in m.shards.iter_rows(named=True):
        size = storage.file_size(m.shard_location(r["path"]))  # local file or object store
        if size is None:
            problems.append(f"shard {r['path']} ({r['language']}): missing; rerun `curriculum build` with the same settings")
            continue
        if size != r["bytes"]:
            problems.append(f"shard {r['path']} ({r['language']}): {size} bytes, the manifest says {r['bytes']}; "
                            "delete it and rerun `curriculum build` with the same settings to rewrite it")
    if settings.verify:  # every problem at once: checksums of the shards that are there too
        from curriculum.verify import verify_manifest

        _, problems = verify_manifest(m.root)
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise StartupError(f"{len(problems)} problem(s) in manifest {storage.display(m.root)}:\n  " + "\n  ".join(problems[:20]) + more)
    _claim(journal, sampler)
    return sampler


def _claim(journal, sampler: Sampler) -> None:
    """Bind the journal to this run, once the server is known to be able to serve it."""
    try:
        claim_journal(journal, sampler)
    except CurriculumError as exc:
        raise StartupError(str(exc)) from None


def phase_plan_json(plan: PhasePlan, planned_tokens: int) -> dict:
    s = phase_summary(plan)
    t = plan.table.sort("weight", descending=True)
    top, rest = t.head(MIXTURE_BARS), t.slice(MIXTURE_BARS)
    by_size = t.sort(["available_tokens", "language"], descending=[True, False])
    return {
        **{k: s[k] for k in ("name", "tokens", "start_step", "steps", "batch_tokens", "batch_sequences", "seq_len",
                             "tau", "mask_ratio", "max_epochs", "n_languages", "top10_share", "max_epochs_used",
                             "capped_languages", "warnings")},
        "index": plan.index,
        "phase": plan.phase.name,
        "variant": plan.phase.variant,
        "planned_tokens": planned_tokens,  # what the schedule serves: whole batches, warm-up included
        "top": [{k: (float(v) if isinstance(v, float) else v) for k, v in r.items() if k != "source"}
                for r in top.iter_rows(named=True)],
        "tail": None if rest.height == 0 else {
            "languages": rest.height, "weight": float(rest["weight"].sum()),
            "allotted_tokens": float(rest["allotted_tokens"].sum()),
        },
        # Columnar, largest language first: the epochs chart plots thousands of points.
        "epochs": {
            "language": by_size["language"].to_list(),
            "available_tokens": by_size["available_tokens"].to_list(),
            "epochs": [float(x) for x in by_size["epochs"].to_list()],
            "capped": by_size["capped"].to_list(),
        },
    }


def phase_mixture_json(plan: PhasePlan) -> dict:
    p, summary = plan.phase, phase_summary(plan)
    return {
        "phase": p.name, "variant": p.variant, "index": plan.index, "tokens": p.tokens, "seq_len": p.seq_len,
        "tau": summary["tau"], "mask_ratio": summary["mask_ratio"],
        "max_epochs": p.max_epochs, "n_languages": len(plan.languages),
        "segments": [{"tau": seg.tau, "tokens": seg.tokens} for seg in plan.segments],
        "languages": [
            {"language": r["language"], "source": r["source"], "available_tokens": int(r["available_tokens"]),
             "weight": float(r["weight"]), "allotted_tokens": float(r["allotted_tokens"]),
             "epochs": float(r["epochs"]), "capped": bool(r["capped"])}
            for r in plan.table.iter_rows(named=True)
        ],
        "warnings": plan.warnings,
    }


def amended_mixture_json(view: dict, regs: list, plans: list, phase: int,
                         available: dict[str, tuple[int, str, int]]) -> dict:
    """`phase_mixture_json` of a phase as the amended run serves it: each language's tokens summed
    over the phase's pieces (the regimes' plans, each over its own steps), as `curriculum plan
    --journal` counts them; `segments` lists the pieces (τ, tokens, first step's regime)."""
    allot = phase_allotments(regs, plans, phase)
    total = sum(allot.values()) or 1.0
    rows = {r["language"]: r for r in view["languages"]}
    # Capped: in any piece the phase served (the last regime's flag alone hid caps of earlier ones).
    capped = set()
    for pc in phase_pieces(regs, plans, phase):
        plan = plans[pc.regime][phase]
        capped.update(k for k, c in zip(plan.languages, plan.segments[pc.segment].allocation.capped) if c)
    langs = []
    for k in sorted(allot, key=lambda k: (-allot[k], k)):
        have, source, epoch = available.get(k, (0, "web", 0))  # epoch: see curriculum.plan.epoch_tokens
        r = rows.get(k, {"language": k, "source": source})
        langs.append({**r, "available_tokens": have, "weight": allot[k] / total, "allotted_tokens": allot[k],
                      "epochs": allot[k] / epoch if epoch else 0.0, "capped": k in capped})
    L = regs[-1].recipe.phases[phase].seq_len
    pieces = [{"tau": plans[pc.regime][phase].segments[pc.segment].tau, "tokens": float((pc.stop - pc.start) * L),
               "regime": pc.regime} for pc in phase_pieces(regs, plans, phase)]
    last = plans[-1][phase]  # its allotment warnings are the last regime's alone: recomputed from the sums
    stale = set(allotment_warnings(last.phase.label, L, last.table))
    fresh = allotment_warnings(last.phase.label, L, pl.DataFrame(
        {"language": [r["language"] for r in langs], "allotted_tokens": [r["allotted_tokens"] for r in langs],
         "epochs": [r["epochs"] for r in langs]}, schema={"language": pl.String, "allotted_tokens": pl.Float64,
                                                          "epochs": pl.Float64}))
    warnings = [w for w in view.get("warnings", []) if w not in stale] + fresh
    return {**view, "n_languages": len(langs), "languages": langs, "segments": pieces, "warnings": warnings}


def amended_plan_json(plan_json: dict, mixture: dict) -> dict:
    """`phase_plan_json` of an amended phase, from its `amended_mixture_json` (the dashboard
    showed the last regime's plan over the whole phase: other shares, epochs and warnings)."""
    rows = mixture["languages"]  # heaviest first
    top, rest = rows[:MIXTURE_BARS], rows[MIXTURE_BARS:]
    by_size = sorted(rows, key=lambda r: (-r["available_tokens"], r["language"]))
    epochs = [r["epochs"] for r in rows]
    return {
        **plan_json,
        "n_languages": len(rows), "top10_share": float(sum(r["weight"] for r in rows[:10])),
        "max_epochs_used": max(epochs, default=0.0), "capped_languages": sum(bool(r["capped"]) for r in rows),
        "warnings": mixture["warnings"],
        "top": [{k: v for k, v in r.items() if k != "source"} for r in top],
        "tail": None if not rest else {"languages": len(rest), "weight": float(sum(r["weight"] for r in rest)),
                                       "allotted_tokens": float(sum(r["allotted_tokens"] for r in rest))},
        "epochs": {"language": [r["language"] for r in by_size], "available_tokens": [r["available_tokens"] for r in by_size],
                   "epochs": [float(r["epochs"]) for r in by_size], "capped": [bool(r["capped"]) for r in by_size]},
    }


RECHECK_SECONDS = 30.0  # a failed shard is tried again (by /readyz) at most this often


class Build:
    """One variant of the recipe as served: its Sampler and what the routes derive from its plan."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.original_plans = sampler.regime_plans()[0]  # the recipe's own plans, for comparison
        self._derive()

    def refresh(self) -> Build:
        """Recompute what derives from the plans when the sampler was amended since."""
        if self.version != self.sampler.journal_version:
            self._derive()
        return self

    def _derive(self) -> None:
        # Built in locals and assigned at the end: request threads read these while a background
        # thread re-derives them after an amendment.
        sampler = self.sampler
        st = sampler._state  # one consistent state for everything below
        version, plans, recipe, tl = len(st.amendments), st.plans[-1], st.regimes[-1].recipe, st.regimes[-1].timeline
        index = {k: i for i, k in enumerate(sampler.languages)}
        top_masks = []  # per phase: the TOP_GROUP heaviest languages (metrics' "top" group)
        for plan in plans:
            mask = np.zeros(len(sampler.languages), np.bool_)
            heavy = plan.table.sort("weight", descending=True)["language"].head(TOP_GROUP).to_list()
            mask[[index[k] for k in heavy]] = True
            top_masks.append(mask)
        ends = list(tl.tokens_start[1:]) + [tl.total_tokens]
        plans_json = [phase_plan_json(p, int(b - a)) for p, a, b in zip(plans, tl.tokens_start, ends)]
        mixture_json = {p.phase.name: phase_mixture_json(p) for p in plans}
        if version:  # an amended phase blends its pieces: the last regime's plan alone is not what it serves
            ml = sampler.manifest.languages
            epochs_of = epoch_tokens(ml["tokens"].to_numpy(), ml["docs"].to_numpy()).tolist()
            available = {k: (int(t), src, e) for k, t, src, e in zip(ml["language"].to_list(), ml["tokens"].to_list(),
                                                                   ml["source"].to_list(), epochs_of)}
            for i, p in enumerate(plans):
                if len({pc.regime for pc in phase_pieces(st.regimes, st.plans, i)}) < 2:
                    continue  # one regime's plan serves it all: its own numbers (re-summing moved an
                    # untouched phase from budget to served tokens)
                mixture_json[p.phase.name] = amended_mixture_json(mixture_json[p.phase.name], st.regimes, st.plans, i,
                                                                  available)
                plans_json[i] = amended_plan_json(plans_json[i], mixture_json[p.phase.name])
        t0 = st.regimes[0].timeline  # the recipe's own timeline: what each phase would have served
        ends0 = list(t0.tokens_start[1:]) + [t0.total_tokens]
        original_json = ([phase_plan_json(p, int(b - a)) for p, a, b in zip(self.original_plans, t0.tokens_start, ends0)]
                         if version else None)
        self.top_masks, self.labels = top_masks, [p.label for p in recipe.phases]
        self.plans_json, self.mixture_json, self.original_json = plans_json, mixture_json, original_json
        self.version = version

    def consumed(self, step: int) -> list[int]:
        """Tokens of each phase served through global `step` (the schedule's own token count)."""
        tl = self.sampler.timeline
        info = self.sampler.schedule(min(step, self.sampler.total_steps - 1))
        return consumed_per_phase(info.tokens_before + info.global_batch * info.seq_len, list(tl.tokens_start),
                                  tl.total_tokens)


class Service:
    """Per-app state: the builds (default variant first), metrics, progress, readiness."""

    def __init__(self, settings: ServerSettings, sampler: Sampler, recipe: Recipe):
        self.settings = settings
        self.recipe = recipe  # with its variants; each Sampler holds a resolved copy
        self.default = Build(sampler)
        self.sampler = sampler
        self.variants = sorted({v for vs in recipe.variant_names().values() for v in vs})
        self._builds: dict[str | None, Build] = {None: self.default, sampler.variant: self.default}
        self._builds_lock = threading.Lock()
        self.token = settings.token_value.encode() if settings.token_value else None
        self.dictionary = pa.array(sampler.languages, pa.string())
        self.language_set = frozenset(sampler.languages)
        self.metrics = Metrics(sampler.build_id, sampler.recipe.name)
        self.progress = ProgressStore(sampler.build_id, settings.progress_history, settings.progress_log)
        self.failed_shards: dict[str, str] = {}
        self._recheck_at: dict[str, float] = {}  # shard → monotonic time it may be rechecked
        self.started = time.time()
        self.amend_token = settings.amend_token_value.encode() if settings.amend_token_value else None
        self.live = Live(getattr(sampler, "journal", None), self.samplers, self.refresh_builds,
                         check_samplers=self.every_sampler)
        self.policy = None
        self._pool: ThreadPoolExecutor | None = None

    def refresh_builds(self) -> None:
        for b in list(self._builds.values()):
            b.refresh()

    def every_sampler(self) -> list[Sampler]:
        """Every variant's Sampler, building those not built yet: an amendment is admitted only
        if every variant can serve it (a variant first asked for later must not find it broken)."""
        for v in self.variants:
            self.build(v)
        return self.samplers()

    def samplers(self) -> list[Sampler]:
        """Every Sampler this process serves (the default and the variants built so far)."""
        seen: dict[int, Sampler] = {}
        for b in list(self._builds.values()):
            seen.setdefault(id(b.sampler), b.sampler)
        return list(seen.values())

    def build(self, variant: str | None) -> Build:
        """The build of `variant` (made on first use: call from a worker thread)."""
        hit = self._builds.get(variant)
        if hit is not None:
            return hit
        if variant not in self.variants:
            raise ApiError(404, "unknown_variant", f"no variant {variant!r}; variants: "
                           + (", ".join(self.variants) or "none (the recipe's phases have no variants)"))
        with self._builds_lock:
            if variant not in self._builds:
                try:
                    s = make_sampler(self.settings, self.sampler.manifest, self.recipe, variant, self.sampler.amendments)
                except (CurriculumError, ValueError) as exc:  # start-up planned every variant: rare
                    raise ApiError(409, "variant_unavailable", f"variant {variant!r} cannot be served: {exc}") from None
                self._builds[variant] = Build(s)
                log.info("variant %r: build %s", variant, s.build_id)
        return self._builds[variant]

    def built(self, variant: str | None) -> Build | None:
        """The build of `variant` if one was made (never makes one)."""
        return self._builds.get(variant)

    async def build_async(self, variant: str | None) -> Build:
        hit = self._builds.get(variant)
        return hit if hit is not None else await anyio.to_thread.run_sync(self.build, variant)

    # -- readiness -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self.failed_shards

    def shard_failed(self, exc: ShardError) -> ApiError:
        """Record a shard problem (the server stays up, /readyz false) and make the 503."""
        msg = str(exc)
        shard = next((r for r in self.sampler.manifest.shards["path"].to_list() if r in msg), None)
        self.failed_shards[shard or msg] = msg
        self.metrics.shard_errors.inc()
        self.metrics.ready.set(0)
        log.error("serving failed on a shard: %s", msg)
        return ApiError(503, "shard_unavailable", f"{msg}; the server stays up and /readyz is false until it is fixed",
                        shard=shard)

    def recheck(self) -> None:
        """Clear shard failures whose file opens again (rebuilt or restored): a remote shard only
        once downloaded and verified again (that it exists said nothing of a checksum mismatch,
        and /readyz flapped), each shard at most every RECHECK_SECONDS (a probe every few seconds
        must not download it each time). Runs in a worker thread: the calls block."""
        m = self.sampler.manifest
        rows = {r["path"]: r for r in m.shards.select("path", "sha256", "bytes").iter_rows(named=True)}
        now = time.monotonic()
        for key in list(self.failed_shards):
            if key not in rows or now < self._recheck_at.get(key, 0.0):
                continue
            if m.is_remote:  # a local recheck is a cheap open
                self._recheck_at[key] = now + RECHECK_SECONDS
            loc = m.shard_location(key)
            try:
                if m.is_remote and self.sampler.shard_cache is not None:
                    self.sampler.shard_cache.open(loc, rows[key]["sha256"], rows[key]["bytes"])
                else:
                    open_shard(loc)
            except (ShardError, OSError, storage.StorageError):
                continue
            self.failed_shards.pop(key, None)
            self._recheck_at.pop(key, None)
        if self.ready:
            self.metrics.ready.set(1)

    # -- batches ---------------------------------------------------------------------------

    def check_range(self, build: Build, start: int, count: int, rank: int, world_size: int) -> None:
        """Raise ApiError(400) unless every step of the range can be served to this rank: the
        first and last exist, and `world_size` divides each step's batch (warm-up steps vary),
        so a stream is refused up front instead of cut partway."""
        s = build.sampler
        try:
            s.timeline.rank_slice(s.schedule(start), rank, world_size)
            last = start + count - 1
            if last >= s.total_steps:  # name what the client sent, not a step it never asked for
                raise ApiError(400, "invalid_step", f"start {start} + count {count} runs to step {last}, past the last "
                               f"step {s.total_steps - 1:,} of this run: from start {start}, count can be at most "
                               f"{s.total_steps - start:,}")
            bad = s.timeline.first_unsplittable(start, start + count, world_size)
            if bad is not None:
                s.timeline.rank_slice(s.schedule(bad), rank, world_size)  # raises, naming the step
        except ScheduleError as exc:
            raise ApiError(400, "invalid_step", str(exc)) from None

    def _check_step(self, sampler: Sampler, step: int, rank: int, world_size: int) -> None:
        try:
            sampler.timeline.rank_slice(sampler.schedule(step), rank, world_size)
        except ScheduleError:
            # A journal change this replica has not seen may have lengthened the run.
            if not self.live.enabled or not self.live.sync():
                raise
            sampler.timeline.rank_slice(sampler.schedule(step), rank, world_size)

    def encode(self, variant: str | None, step: int, rank: int, world_size: int, labels: str,
               compression: str | None, publish_to: int | None = None) -> wire.EncodedBatch:
        """Assemble and encode one batch (worker thread); counted in the metrics. ScheduleError
        becomes a 400, ShardError a 503 (and /readyz false), a journal this replica has not
        applied yet a 503 to retry."""
        build = self.build(variant)
        t0 = time.perf_counter()
        try:
            # Validate before publishing the step: a bad request must not raise the watermark.
            self._check_step(build.sampler, step, rank, world_size)
            self.live.ensure(step, publish_to)
            b = build.sampler.batch(step, rank, world_size)
        except ScheduleError as exc:
            raise ApiError(400, "invalid_step", str(exc)) from None
        except ShardError as exc:
            raise self.shard_failed(exc) from None
        except Behind as exc:
            raise ApiError(503, "journal_behind", str(exc), journal_version=exc.version) from None
        except JournalBroken as exc:
            raise ApiError(503, "journal_broken", str(exc)) from None
        except JournalUnavailable as exc:
            raise ApiError(503, "journal_unavailable", f"{exc}; retry (steps published before are still served)") from None
        md = wire.batch_metadata(b.build_id, b.info, b.rank, b.world_size, run_id=build.sampler.run_id,
                                 journal_version=b.journal_version)
        # The variable-length columns in one kernel call (numpy took ~0.1 ms a batch, GIL held).
        parts = wire_parts(b.labels, b.cu_seqlens)
        enc = wire.encode_batch(b, md, self.dictionary, labels=labels, compression=compression, parts=parts)
        p = b.info.phase_index
        self.metrics.observe_batch(build.labels[p], build.top_masks[p], b.lang, b.info.seq_len, time.perf_counter() - t0)
        return enc

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The threads that assemble batches (`batch_threads`), awaited with `run_in_executor`:
        half the event-loop cost of anyio's thread hop, and a bound on batches in flight (each
        holds its arrays) however many clients wait. Few: most of a batch's CPU time is Python
        (GIL held), and three threads took twice the CPU per batch of one (GIL hand-offs)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.settings.batch_threads, thread_name_prefix="batch")
        return self._pool

    def close_pool(self) -> None:
        """Let the batch threads end (the app's shutdown; a later request starts a new pool)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def encode_future(self, variant: str | None, step: int, rank: int, world_size: int, labels: str,
                      compression: str | None, publish_to: int | None = None) -> asyncio.Future[wire.EncodedBatch]:
        """`encode` started in the batch pool (call on the event loop); await or cancel the future."""
        return asyncio.get_running_loop().run_in_executor(self.pool, self.encode, variant, step, rank, world_size,
                                                          labels, compression, publish_to)

    async def encode_async(self, variant: str | None, step: int, rank: int, world_size: int, labels: str,
                           compression: str | None) -> wire.EncodedBatch:
        return await self.encode_future(variant, step, rank, world_size, labels, compression)

    # -- progress --------------------------------------------------------------------------

    def progress_summary(self, limit: int = SERIES_POINTS) -> dict:
        recs = self.progress.records()
        consumed = self.default.refresh().consumed(recs[-1].step) if recs else [0] * len(self.sampler.plans)
        return {**progress_summary(recs, self.progress.language_loss(), limit), "consumed_tokens": consumed,
                "ready": self.ready}

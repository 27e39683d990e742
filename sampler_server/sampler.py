"""`Sampler`: every batch a pure function of (recipe, manifest, seed, step, rank, world size).

Sequence g of a phase is assigned a language by the blend of its segment (one segment per
phase, or `anneal_segments` when τ is annealed); it is that language's k-th sequence, i.e. the
language's stream tokens [base + k·L, base + (k+1)·L), where k is the language's count before g
and `base` the tokens it served in earlier segments. The whole state at any g is therefore the
count vector, which the blend index checkpoints; a restarted Sampler recomputes the same bytes.

Amendments (`curriculum.amend`) split a phase at their `from_step`: the sequences before it keep
their pieces (so their bytes), the ones after it are blended by new pieces with the amended
weights, each continuing from the phase's counts and cumulative targets where it starts (as the
segments of an annealed τ do), and every language's stream continues from `base`, the
tokens it served before — nothing skipped, nothing repeated. `amend` swaps in the new state in
one reference assignment; a batch in flight finishes on the state it started with.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

import curriculum.numba_boot  # noqa: F401  (before any kernel runs: numba without scipy.linalg)
from curriculum.amend import Amendment, AmendmentError, Piece, Regime, phase_pieces, regimes
from curriculum.errors import CurriculumError
from curriculum.manifest import Manifest, read_manifest
from curriculum.plan import PhasePlan, plan_phase
from curriculum.recipe import Phase, Recipe, load_recipe
from curriculum.resources import set_kernel_threads
from curriculum.schedule import StepInfo, Timeline
from curriculum.shards import ShardError, open_shard
from sampler_server.cache import DEFAULT_CACHE_BYTES, ShardCache
from sampler_server.kernels.blend import BLEND_RULE_VERSION, BlendIndex, adaptive_chunk
from sampler_server.kernels.assemble import assemble
from sampler_server.kernels.mask import MASK_RULE_VERSION, free_range, pool_run
from sampler_server.kernels.rng import sequence_keys
from sampler_server.streams import DEFAULT_BLOCK_TOKENS, LanguageStream, Runs

log = logging.getLogger("sampler_server.sampler")


@dataclass(frozen=True)
class Batch:
    """One rank's batch. Document boundaries follow FlashAttention-2 varlen: `cu_seqlens` indexes
    the flattened [B·L] tokens; every sequence start is a boundary, and so is every [CLS]."""

    input_ids: np.ndarray  # int32[B, L]
    labels: np.ndarray  # int32[B, L], -100 where not masked
    cu_seqlens: np.ndarray  # int32[n_docs + 1]
    lang: np.ndarray  # int32[B], index into Sampler.languages
    info: StepInfo
    rank: int
    world_size: int
    build_id: str = ""  # the run id hashed with the journal prefix in force at the step
    journal_version: int = 0  # journal entries the sampler had loaded when it made the batch

    @property
    def max_seqlen(self) -> int:
        return int(np.diff(self.cu_seqlens).max()) if self.cu_seqlens.size > 1 else 0


class _PhaseAt:
    """A phase's count and cumulative target per language (global index) where a piece starts:
    its blend continues from them (see sampler_server.kernels.blend). Computed on first use, by
    walking the pieces before it to their ends."""

    def __init__(self, n_languages: int, prev: _Segment | None):
        self._n, self._prev, self._first = n_languages, prev, prev is None
        self._value: tuple[np.ndarray, np.ndarray] | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts int64[L], targets float64[L]); iterative, so thousands of pieces (a feedback
        policy's amendments) need no deep recursion. No lock: the value is a pure function of
        the pieces, so threads racing compute the same arrays."""
        todo: list[_PhaseAt] = []
        at: _PhaseAt | None = self
        while at is not None and at._value is None:
            todo.append(at)
            prev = at._prev  # None: the phase's first piece, or computed meanwhile by another thread
            at = prev.phase_at if prev is not None else None
        for a in reversed(todo):
            if a._first:
                a._value = (np.zeros(a._n, np.int64), np.zeros(a._n, np.float64))
                continue
            prev = a._prev  # read before _value: another thread sets _value, then clears _prev
            if prev is None:
                continue
            counts, target = prev.phase_at.arrays()
            n = prev.stop - prev.start
            counts, target = counts.copy(), target.copy()
            counts[prev.lang] += prev.blend.counts_at(n)
            target[prev.lang] += prev.blend.weights * n
            a._value = (counts, target)
            a._prev = None  # known now: let the pieces before go (a long policy run makes thousands)
        return self._value  # type: ignore[return-value]

    def excess(self, lang: np.ndarray) -> np.ndarray:
        """Count minus target of the languages `lang` (the blend's `excess`)."""
        counts, target = self.arrays()
        return counts[lang] - target[lang]


@dataclass(frozen=True)
class _Segment:
    start: int  # first phase sequence of the piece (the blend's position 0)
    stop: int
    lang: np.ndarray  # int32 global language index of each blended language
    blend: BlendIndex
    phase_at: _PhaseAt  # where the phase stands at `start`


def _same_segment(a: _Segment, b: _Segment) -> bool:
    return a.start == b.start and a.stop == b.stop and a.blend is b.blend and np.array_equal(a.lang, b.lang)


class _State:
    """The run as amended by a journal prefix: regimes, their plans and every phase's blend
    pieces. Immutable once made (batches read one state start to end); `bases` fills lazily."""

    def __init__(self, amendments: tuple[Amendment, ...], regs: list[Regime], build_ids: list[str],
                 plans: list[list[PhasePlan]], segments: list[list[_Segment]], hasher):
        self.amendments, self.regimes, self.build_ids = amendments, regs, build_ids
        self.hasher = hasher  # sha256(run id + every entry's digest): extended by the next amendment
        self.plans, self.segments = plans, segments
        self.bases: dict[tuple[int, int], np.ndarray] = {}
        self._starts = [r.from_step for r in regs]

    def regime_index(self, step: int) -> int:
        return max(0, bisect.bisect_right(self._starts, step) - 1)



def _integer(name: str, value: object) -> int:
    """`value` as an int when it is one (Python or numpy integer, not a bool); TypeError naming
    the argument otherwise (3.0, "3" and True were taken as 3, 3 and 1, or failed deep inside)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")

class Sampler:
    """Deterministic batches over a built manifest, optionally amended by a journal."""

    def __init__(
        self,
        manifest: str | Path | Manifest,
        recipe: str | Path | Recipe,
        seed: int = 0,
        *,
        variant: str | None = None,
        chunk: int | None = None,
        block_tokens: int = DEFAULT_BLOCK_TOKENS,
        threads: int = 1,
        index_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        amendments: list[Amendment] | tuple[Amendment, ...] = (),
        strict_weights: bool | None = None,
    ):
        # Whether multipliers of languages a phase does not select are refused (True) or ignored.
        # A server's default variant refuses them, so a typo'd amendment is refused at admission;
        # its other variants ignore them (an amendment written for the default names languages
        # they may not select). Default: strict for the default variant, lenient for a named one,
        # so replaying any variant from its journal works.
        self.strict_weights = variant is None if strict_weights is None else bool(strict_weights)
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        # Shards of a remote manifest (s3://…) are served from a verified local cache.
        self.shard_cache = ShardCache(cache_dir, cache_bytes) if self.manifest.is_remote else None
        full = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        # Variants branch from the same start: the resolved recipe replaces each phase that has
        # variants by the chosen one (default: its first).
        self.base_recipe = full.resolve(variant)
        self.variant = variant or next((p.variant for p in self.base_recipe.phases if p.variant), None)
        self.seed = _integer("Sampler: seed", seed)
        if not 0 <= self.seed < 2**64:  # the kernels take it mod 2**64: two seeds would serve the same bytes
            raise ValueError(f"Sampler: seed {self.seed} must lie in [0, 2**64)")
        # Kernel threads per batch call. 1 by default: a server runs many requests at once (each
        # on its own thread), and a per-rank batch (~64K tokens) masks in ~0.1 ms on one core,
        # less than an OpenMP launch costs.
        self.threads = int(threads)
        tok = self.manifest.meta.tokenizer
        if tok is None:
            raise ValueError(f"manifest {self.manifest.root}: no tokenizer metadata; rebuild it with `curriculum build`")
        self.tokenizer = tok
        self.languages: list[str] = self.manifest.languages["language"].to_list()
        self._lang_index = {k: i for i, k in enumerate(self.languages)}
        # block_tokens shapes the shuffle of a built corpus, so it is part of what a batch is.
        layout = "" if self.manifest.meta.kind == "synthetic" else f":b{block_tokens}"
        # The journal's owner: manifest + recipe (every variant) + seed, what a run's amendments
        # and served steps belong to (curriculum.journal.Journal.claim).
        recipe_fp, manifest_fp = full.fingerprint(), self.manifest.fingerprint
        self.journal_owner = hashlib.sha256(f"{recipe_fp}:{manifest_fp}:{self.seed}".encode()).hexdigest()[:16]
        self.journal_owner_about = f"manifest {manifest_fp} at {self.manifest.root}, recipe {recipe_fp}, seed {self.seed}"
        # The run id: manifest + recipe + seed (+ variant, block size, masking and blend rules). A step no
        # amendment reaches has it as its build id; amended steps hash it with the journal prefix.
        self.build_id = self.run_id = hashlib.sha256(
            f"{self.base_recipe.fingerprint()}:{manifest_fp}:{self.seed}:{self.variant or ''}{layout}"
            f":m{MASK_RULE_VERSION}:x{BLEND_RULE_VERSION}".encode()
        ).hexdigest()[:16]
        self._streams = self._make_streams(block_tokens)
        self._chunk = chunk
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self._plan_cache: dict[str, PhasePlan] = {}
        self._blends: dict[tuple, BlendIndex] = {}  # reused across amendments: built checkpoints survive
        self._phase_ats: dict[tuple, _PhaseAt] = {}  # where each blend's piece starts, keyed alike
        self._amend_lock = threading.Lock()
        self._state = self._make_state(tuple(amendments))
        specials = np.array(sorted({tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id, *tok.special_ids}), np.int64)
        self._is_special = np.zeros(tok.vocab_size, np.bool_)
        self._is_special[specials[specials < tok.vocab_size]] = True
        self._random_pool = np.flatnonzero(~self._is_special).astype(np.int32)
        self._pool_run = pool_run(self._random_pool)
        self._free_range = free_range(self._is_special)

    # -- the run as amended ---------------------------------------------------------------

    @property
    def recipe(self) -> Recipe:
        """The effective recipe after every amendment loaded (steps before an amendment's
        from_step use the regime in force there: see `schedule`)."""
        return self._state.regimes[-1].recipe

    @property
    def timeline(self) -> Timeline:
        """Phase step ranges of the run as amended (the same as the recipe's when unamended)."""
        return self._state.regimes[-1].timeline

    @property
    def plans(self) -> list[PhasePlan]:
        """Per phase, the plan of the last regime (the phase as it will run from now on)."""
        return self._state.plans[-1]

    @property
    def amendments(self) -> tuple[Amendment, ...]:
        return self._state.amendments

    @property
    def journal_version(self) -> int:
        return len(self._state.amendments)

    @property
    def regimes(self) -> list[Regime]:
        return self._state.regimes

    def regime_plans(self) -> list[list[PhasePlan]]:
        """Plans of every regime (regime k: the recipe with its journal prefix)."""
        return self._state.plans

    def amend(self, amendments: list[Amendment] | tuple[Amendment, ...]) -> None:
        """Serve the run amended by `amendments` (the whole journal, which must extend the one
        loaded). Raises AmendmentError, leaving the sampler as it was, when it cannot apply."""
        amendments = tuple(amendments)
        with self._amend_lock:
            old = self._state
            if amendments[: len(old.amendments)] != old.amendments:
                raise AmendmentError("the journal no longer starts with the entries this sampler applied: "
                                     "entries were edited or removed; restart the server on the journal")
            if amendments == old.amendments:
                return
            new = self._make_state(amendments)
            # Bases of pieces unchanged from the start of the run carry over.
            for p, (a, b) in enumerate(zip(old.segments, new.segments)):
                same = 0
                while same < min(len(a), len(b)) and _same_segment(a[same], b[same]):
                    same += 1
                for s in range(same + 1):
                    if (p, s) in old.bases:
                        new.bases[(p, s)] = old.bases[(p, s)]
                if same < max(len(a), len(b)):
                    break
            self._state = new  # one reference swap: a batch in flight keeps the state it started on
            # Forget blends no piece uses any more (a long run with a feedback policy makes many).
            live = {id(sg.blend) for segs in new.segments for sg in segs}
            self._blends = {k: b for k, b in self._blends.items() if id(b) in live}
            self._phase_ats = {k: a for k, a in self._phase_ats.items() if k in self._blends}

    def check_amendments(self, amendments: list[Amendment] | tuple[Amendment, ...]) -> None:
        """Raise AmendmentError unless the run amended by `amendments` can be served."""
        self._make_state(tuple(amendments), dry_run=True)

    def _plan(self, phase: Phase, index: int, timeline: Timeline) -> PhasePlan:
        key = f"{index}:{timeline.phase_start[index]}:{timeline.tokens_start[index]}:{phase.model_dump_json()}"
        hit = self._plan_cache.get(key)
        if hit is None:
            hit = self._plan_cache[key] = plan_phase(phase, index, self.manifest.languages, timeline.phase_start[index],
                                                     float(timeline.tokens_start[index]),
                                                     ignore_unselected_weights=not self.strict_weights)
        return hit

    def _make_state(self, amendments: tuple[Amendment, ...], dry_run: bool = False) -> _State:
        old = getattr(self, "_state", None)
        # Extend the current regimes when the journal extends the one applied (the usual case).
        prior = old.regimes if old is not None and amendments[: len(old.amendments)] == old.amendments else None
        regs = regimes(self.base_recipe, list(amendments), prior)
        try:
            known = {id(r): row for r, row in zip(old.regimes, old.plans)} if prior else {}
            plans = [known.get(id(r)) or [self._plan(ph, i, r.timeline) for i, ph in enumerate(r.recipe.phases)]
                     for r in regs]
        except (CurriculumError, ValueError) as exc:
            if not amendments:  # the recipe itself does not plan on this manifest: no journal to blame
                raise
            phase, field = getattr(exc, "phase", None), getattr(exc, "field", None)
            where = [f"changes.{phase}" + (f".{field}" if field else "")] if phase else []
            raise AmendmentError(f"the amended recipe cannot be planned on this manifest: {exc}", where) from None
        if dry_run:
            return None  # type: ignore[return-value]
        # build id of regime k = sha256(run id + digests of its journal prefix), hashed
        # incrementally, and continued from the applied state when the journal extends it.
        hasher = old.hasher.copy() if prior else hashlib.sha256(self.run_id.encode())
        done = len(old.amendments) if prior else 0
        build_ids = []
        for i, r in enumerate(regs):
            if prior and i < len(old.regimes) and r is old.regimes[i]:
                build_ids.append(old.build_ids[i])  # a regime the new entries left alone
                continue
            for a in amendments[done : r.applied]:
                hasher.update(a.digest().encode())
            done = max(done, r.applied)
            build_ids.append(self.run_id if r.applied == 0 else hasher.copy().hexdigest()[:16])
        for a in amendments[done:]:
            hasher.update(a.digest().encode())
        # Phases before the first new entry's are unchanged: keep their pieces (and blends).
        first_changed = 0
        if prior:
            new_from = amendments[len(old.amendments)].from_step if len(amendments) > len(old.amendments) else None
            first_changed = (old.regimes[-1].timeline.phase_of(new_from) if new_from is not None
                             and new_from < old.regimes[-1].timeline.total_steps else len(old.segments))
        segments = [old.segments[p] if p < first_changed else self._make_segments(phase_pieces(regs, plans, p))
                    for p in range(len(regs[-1].recipe.phases))]
        return _State(amendments, regs, build_ids, plans, segments, hasher)

    def _make_segments(self, pieces: list[Piece]) -> list[_Segment]:
        """A phase's pieces as blends, each continuing from where the pieces before it left the
        phase. A blend is therefore a function of its weights and of every piece before it in
        the phase (`history`); blends of equal history are shared across amendments."""
        out: list[_Segment] = []
        history = ""  # digest of the pieces before (languages, weights, lengths); "" for the first
        for pc in pieces:
            lang = np.array([self._lang_index[k] for k in pc.languages], np.int32)
            key = (pc.phase, pc.start, pc.languages, pc.weights.tobytes(), history)
            # One _PhaseAt per key, as one blend: a piece an amendment left alone keeps the counts
            # already computed where it starts, so the next piece's excess is one walk (of the
            # piece before it), not a walk of every piece since the phase began.
            at = self._phase_ats.get(key)
            if at is None:
                at = self._phase_ats[key] = _PhaseAt(len(self.languages), out[-1] if out else None)
            blend = self._blends.get(key)
            if blend is None:
                c = self._chunk or adaptive_chunk(pc.stop - pc.start, len(pc.languages))
                excess = None if not out else (lambda at=at, lang=lang: at.excess(lang))
                # The excess depends on the pieces before and on this piece's languages: both name
                # its index file (a first piece's blend depends on its weights alone).
                tag = "" if not out else f"{history}:{lang.tobytes().hex()}"
                blend = BlendIndex(pc.weights, c, excess, tag=tag)
                if self.index_dir is not None:
                    self._attach(blend, self._index_path(blend))
                self._blends[key] = blend
            out.append(_Segment(pc.start, pc.stop, lang, blend, at))
            history = hashlib.sha256(f"{history}:{lang.tobytes().hex()}:{pc.weights.tobytes().hex()}:"
                                     f"{pc.stop - pc.start}".encode()).hexdigest()
        return out

    @property
    def _segments(self) -> list[list[_Segment]]:
        return self._state.segments

    def _raise_bad_shard(self, langs: np.ndarray, exc: ValueError) -> None:
        """A batch read a token id past the vocabulary: name the shard (ShardError: the server's
        503 and /readyz false, as for any shard that breaks while serving). Only on this error
        path are the shards' tokens scanned; checking every shard as it opens would read whole
        files where a batch reads a few pages."""
        V = self.tokenizer.vocab_size
        for i in sorted(set(langs.tolist())):
            found = self._streams[i].token_at_least(V) if self._streams[i] is not None else None
            if found is not None:
                raise ShardError(f"shard {found[0]}: token id {found[1]} is not below the tokenizer's vocabulary size "
                                 f"{V} (damaged, or built with another tokenizer); run `curriculum verify` and rebuild "
                                 f"{self.languages[i]}") from exc

    def _make_streams(self, block_tokens: int) -> list[LanguageStream | None]:
        if self.manifest.meta.kind == "synthetic":
            # No shards: a virtual corpus of the manifest's sizes, generated on read.
            from sampler_server.virtual import VirtualLanguageStream

            tok = self.tokenizer
            lo = max([tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id, *tok.special_ids]) + 1
            rows = self.manifest.languages.iter_rows(named=True)
            return [
                VirtualLanguageStream(r["language"], r["tokens"], r["docs"], self.seed, (lo, tok.vocab_size)) if r["tokens"] > 0 else None
                for r in rows
            ]
        shards = self.manifest.shards
        by_lang: dict[str, list[Path | str]] = {}
        for r in shards.sort(["language", "index"]).iter_rows(named=True):
            by_lang.setdefault(r["language"], []).append(self.manifest.shard_location(r["path"]))
        opener = open_shard
        if self.shard_cache is not None:
            known = {self.manifest.shard_location(r["path"]): (r["sha256"], r["bytes"]) for r in shards.iter_rows(named=True)}
            opener = lambda loc: self.shard_cache.open(loc, *known[loc])  # noqa: E731
        return [
            LanguageStream(k, by_lang[k], self.seed, block_tokens, opener=opener) if k in by_lang else None for k in self.languages
        ]

    # -- the persisted index ---------------------------------------------------------------

    def _index_path(self, blend: BlendIndex) -> Path:
        # A blend is a function of its weights and of the pieces before it in its phase (none for
        # a phase's first piece), and its chunk shapes the checkpoints, so index files are named
        # by content: amended runs share them with the unamended one.
        digest = hashlib.sha256(blend.weights.tobytes() + (b"|" + blend.tag.encode() if blend.tag else b"")).hexdigest()[:20]
        return self.index_dir / f"blend-{digest}-c{blend.chunk}.npy"

    @staticmethod
    def _index_matrix(path: Path) -> np.ndarray | None:
        """An index file's checkpoints, memory-mapped; None when it is missing or unreadable (a
        damaged file is a warning naming it, not an error: the blend walks without it, and
        `build_index` / `prepare` write it again)."""
        if not path.exists():
            return None
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:
            log.warning("index file %s is unreadable (%s); ignored (the blend walks without it; building the index "
                        "writes it again)", path, exc)
            return None

    def _attach(self, blend: BlendIndex, path: Path, rows: int = 0) -> bool:
        """Attach the index file at `path` to `blend` if it is readable, fits it and has at least
        `rows` rows; False (a warning for a file that does not fit) otherwise."""
        m = self._index_matrix(path)
        if m is None or m.shape[0] < rows:
            return False
        try:
            blend.attach(m)
        except ValueError as exc:
            log.warning("index file %s does not fit its blend (%s); ignored (building the index writes it again)",
                        path, exc)
            return False
        return True

    def build_index(self, progress=None) -> dict:
        """Build every blend checkpoint of the run and write them to `index_dir` (one .npy per
        blend, memory-mapped on load): after this, any step of any phase is O(chunk) away, and a
        restarted server reuses it. Returns sizes and timings."""
        import os
        import time

        if self.index_dir is None:
            raise ValueError("Sampler.build_index needs index_dir")
        self.index_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        total, files = 0, set()
        for p, segs in enumerate(self._segments):
            for s, segm in enumerate(segs):
                path = self._index_path(segm.blend)
                rows = (segm.stop - segm.start) // segm.blend.chunk + 1
                if not self._attach(segm.blend, path, rows):
                    matrix = segm.blend.checkpoint_matrix(segm.stop - segm.start)
                    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
                    np.save(tmp, matrix)
                    os.replace(tmp, path)
                    segm.blend.attach(np.load(path, mmap_mode="r"))
                if path not in files:
                    files.add(path)
                    total += path.stat().st_size
                if progress:
                    progress(p, s)
        return {"seconds": time.perf_counter() - t0, "bytes": total, "files": len(files)}

    def prepare(self, phase: int | None = None) -> float:
        """Compute the stream bases through the first piece of `phase` (default: every piece),
        walking the blends before it to their ends, and, with `index_dir`, save the checkpoints
        of the walked blends that have no (long enough) index file yet, so that a restarted or
        added replica attaches them instead of walking. Meant for a background thread as a run
        nears a phase boundary (see sampler_server.live). Returns the seconds it took."""
        import os
        import time

        t0 = time.perf_counter()
        st = self._state
        order = [(p, s) for p, segs in enumerate(st.segments) for s in range(len(segs))]
        target = order[-1] if phase is None else next(((p, s) for p, s in order if p >= phase), order[-1])
        self._base(st, *target)
        if self.index_dir is not None:
            self.index_dir.mkdir(parents=True, exist_ok=True)
            for p, s in order[: order.index(target)]:
                segm = st.segments[p][s]
                path = self._index_path(segm.blend)
                rows = (segm.stop - segm.start) // segm.blend.chunk + 1
                if self._attach(segm.blend, path, rows):
                    continue
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp.npy")
                np.save(tmp, segm.blend.checkpoint_matrix(segm.stop - segm.start))
                os.replace(tmp, path)
                segm.blend.attach(np.load(path, mmap_mode="r"))
        return time.perf_counter() - t0

    # -- schedule -------------------------------------------------------------------------

    def schedule(self, step: int) -> StepInfo:
        """The step's phase, τ, mask ratio, sequence length and LR factor (cheap), under the
        regime in force at `step`."""
        step = _integer("Sampler.schedule: step", step)
        st = self._state
        return st.regimes[st.regime_index(max(step, 0))].timeline.locate(step)

    def build_id_at(self, step: int) -> str:
        """Build id of the batches of `step`: the run id hashed with the journal prefix in force."""
        step = _integer("Sampler.build_id_at: step", step)
        st = self._state
        return st.build_ids[st.regime_index(max(step, 0))]

    @property
    def total_steps(self) -> int:
        return self.timeline.total_steps

    # -- stream positions -----------------------------------------------------------------

    def _base(self, st: _State, phase: int, seg: int) -> np.ndarray:
        """Tokens each language served before piece `seg` of `phase` (int64[K]).

        Walks on from the latest base known before the piece. No lock: a base is a pure function
        of the state, so two threads racing compute the same array, and a long walk (an amended
        blend to the end of its phase, in `prepare`'s background thread) never blocks a request
        that needs an earlier base."""
        key = (phase, seg)
        hit = st.bases.get(key)
        if hit is not None:
            return hit
        order = [(p, s) for p in range(len(st.segments)) for s in range(len(st.segments[p]))]
        at = order.index(key)
        first = next((i for i in range(at, -1, -1) if order[i] in st.bases), None)
        if first is None:
            first = 0
            st.bases.setdefault(order[0], np.zeros(len(self.languages), np.int64))
        cur = st.bases[order[first]]
        for i in range(first, at):
            p, s = order[i]
            segm = st.segments[p][s]
            nxt = cur.copy()
            nxt[segm.lang] += segm.blend.counts_at(segm.stop - segm.start) * st.regimes[-1].recipe.phases[p].seq_len
            cur = st.bases.setdefault(order[i + 1], nxt)
        return cur

    def consumed_tokens(self, step: int) -> np.ndarray:
        """Tokens of each language served before `step` (int64[K]); `step` may be `total_steps`
        (the whole run: what a user checking the epoch caps at the end asks for)."""
        st = self._state
        step = _integer("Sampler.consumed_tokens: step", step)
        if step == self.total_steps and step > 0:
            info = self.schedule(step - 1)  # the end of the last step: its phase, past its last sequence
            g = info.first_sequence + info.global_batch
        else:
            info = self.schedule(step)
            g = info.first_sequence
        segs = st.segments[info.phase_index]
        for s, segm in enumerate(segs):
            if segm.start <= g < segm.stop or s == len(segs) - 1:
                out = self._base(st, info.phase_index, s).copy()
                out[segm.lang] += segm.blend.counts_at(g - segm.start) * info.seq_len
                return out
        raise AssertionError("unreachable")

    def epochs(self, step: int) -> dict[str, float]:
        """Epochs of its stream each language has used before `step`."""
        used = self.consumed_tokens(step)
        return {
            k: float(used[i]) / st.stream_len
            for i, (k, st) in enumerate(zip(self.languages, self._streams))
            if st is not None and used[i] > 0
        }

    # -- batches --------------------------------------------------------------------------

    def assign(self, phase: int, g0: int, g1: int) -> tuple[np.ndarray, np.ndarray]:
        """Global language index and stream start token of phase sequences [g0, g1)."""
        return self._assign(self._state, phase, g0, g1)

    def _assign(self, st: _State, phase: int, g0: int, g1: int) -> tuple[np.ndarray, np.ndarray]:
        L = st.regimes[-1].recipe.phases[phase].seq_len
        langs = np.empty(g1 - g0, np.int32)
        starts = np.empty(g1 - g0, np.int64)
        for s, segm in enumerate(st.segments[phase]):
            a, b = max(g0, segm.start), min(g1, segm.stop)
            if a >= b:
                continue
            before, local = segm.blend.slice(a - segm.start, b - a)
            # k = count of the language before this sequence: counts at `a` plus earlier
            # occurrences inside [a, b).
            order = np.argsort(local, kind="stable")
            sorted_l = local[order]
            first = np.searchsorted(sorted_l, sorted_l, side="left")
            occ = np.empty(b - a, np.int64)
            occ[order] = np.arange(b - a) - first
            k = before[local] + occ
            glob = segm.lang[local]
            langs[a - g0 : b - g0] = glob
            starts[a - g0 : b - g0] = self._base(st, phase, s)[glob] + k * L
        return langs, starts

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> Batch:
        """The batch of `rank` of `world_size` at global `step`."""
        step = _integer("Sampler.batch: step", step)
        rank = _integer("Sampler.batch: rank", rank)
        world_size = _integer("Sampler.batch: world_size", world_size)
        st = self._state  # one state for the whole batch, whatever amendments land meanwhile
        k = st.regime_index(max(step, 0))
        reg = st.regimes[k]
        info = reg.timeline.locate(step)
        g0, g1 = reg.timeline.rank_slice(info, rank, world_size)
        p, L, n = info.phase_index, info.seq_len, g1 - g0
        langs, starts = self._assign(st, p, g0, g1)
        tok = self.tokenizer
        runs = Runs()
        streams = self._streams
        for r in range(n):  # where each row's tokens live; the kernel copies them
            streams[langs[r]].add_runs(int(starts[r]), L, runs)
            runs.end_row()
        table = runs.table()
        row_first = np.array(runs.row_first, np.int64)

        phase = reg.recipe.phases[p]
        gs = np.arange(g0, g1, dtype=np.int64)
        keys = np.empty(n, np.uint64)
        sequence_keys(np.uint64(self.seed & 0xFFFFFFFFFFFFFFFF), np.uint64(p), gs, keys)
        if isinstance(phase.mask_ratio, float):
            ratios = np.full(n, phase.mask_ratio, np.float64)
        else:  # annealed linearly in the phase, per sequence
            frac = gs / info.phase_sequences
            ratios = phase.mask_ratio.start + (phase.mask_ratio.end - phase.mask_ratio.start) * frac
        input_ids = np.empty((n, L), np.int32)
        labels = np.empty((n, L), np.int32)
        prev = numba.get_num_threads()
        # This thread only; unpinned under OMP_PROC_BIND (else each --workers process's batch thread
        # sits on the same CPU).
        set_kernel_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        try:
            cu = assemble(table, row_first, np.int64(tok.cls_id), np.int64(tok.sep_id), input_ids, labels, keys,
                          ratios, self._is_special, np.int32(tok.mask_id), self._random_pool, self._pool_run,
                          self._free_range)
        except ValueError as exc:
            if "token id lies outside" in str(exc):
                self._raise_bad_shard(langs, exc)
            raise
        finally:
            numba.set_num_threads(prev)
        del runs  # the arrays the runs pointed into may go now
        return Batch(input_ids, labels, cu, langs, info, rank, world_size, st.build_ids[k], len(st.amendments))

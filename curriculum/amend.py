"""Amendments: changes to a running curriculum from a given step on, as data.

An amendment `{from_step, changes, reason, source, created_at}` sets, for the phase containing
`from_step` and/or later phases (by name), any of: τ (or an annealed τ's end), the language
selection, per-language weight multipliers, `max_epochs`, the mask ratio, and — for phases that
start after `from_step` only — the token budget. Changed phases are re-validated by the recipe's
own `Phase` model, so an amended recipe is a recipe.

The effective curriculum at step s is the recipe plus every amendment with `from_step <= s`, in
journal order. Journals are kept with non-decreasing `from_step` (a later entry may not start
before an earlier one; to override a pending amendment, add one at the same step), so the
amendments that apply to a step are always a *prefix* of the journal. Each distinct `from_step`
opens a `Regime`: the recipe with that prefix applied and its timeline.

Why this is exact: an amendment never changes a phase that started before it, nor the budget of
the phase it starts in, so every regime agrees with the ones before it on all steps before its
`from_step` (the same phases, steps and sequences); only the future is recomputed.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from curriculum.errors import CurriculumError
from curriculum.recipe import MAX_PHASE_TOKENS, Anneal, LanguageSelection, Number, Phase, Recipe, Scalar, TopN
from curriculum.schedule import Timeline

CURRENT = "current"  # phase key meaning "the phase containing from_step" (resolved on admission)


class AmendmentError(CurriculumError):
    """An amendment that cannot apply; the message names the field (`changes.<phase>.<field>`)."""

    def __init__(self, message: str, fields: list[str] | None = None, *, entry: int | None = None,
                 bare: str | None = None):
        super().__init__(message)
        self.fields = fields or []
        # Raised for journal entry `entry` (1-based); `bare`: the message without that prefix.
        self.entry, self.bare = entry, bare if bare is not None else message

    def as_new_entry(self, n: int) -> AmendmentError:
        """This error as the answer to the amendment being added as entry `n`: without the
        'journal entry n (from_step …):' prefix, which reads as if it were in the journal already."""
        return AmendmentError(self.bare, self.fields) if self.entry == n else self


class AmendmentConflict(AmendmentError):
    """An amendment that would change steps already served or trained on (HTTP 409)."""

    def __init__(self, message: str, earliest: int):
        super().__init__(message)
        self.earliest = earliest


class _Model(BaseModel):
    # Finite numbers only: an entry is stored as JSON, where NaN and Infinity become null, so a
    # journal line with one would no longer read back (and an infinite budget has no schedule).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _unicode(text: str, what: str) -> str:
    """`text`, unless it holds a lone surrogate (JSON's "\\ud800" reads as one): such a string
    cannot be written to the journal or put in an error response (UTF-8 has no encoding for it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {ascii(text)[:80]} is not valid Unicode (a lone surrogate); send UTF-8 text") from None
    return text


class PhaseChanges(_Model):
    """What an amendment sets for one phase; unset fields keep their value."""

    tau: Scalar | None = None
    tau_end: Annotated[Number, Field(ge=0, le=1)] | None = Field(
        None, description="end of an annealed τ (its start is kept)")
    languages: LanguageSelection | None = None
    language_weights: dict[str, Annotated[Number, Field(ge=0)]] | None = Field(
        None, description="weight multipliers merged into the phase's (1 resets a language)")
    max_epochs: Annotated[Number, Field(gt=0)] | None = None
    mask_ratio: Scalar | None = None
    tokens: Annotated[Number, Field(gt=0, le=MAX_PHASE_TOKENS)] | None = Field(None, description="budget; phases after "
                                                                                   "from_step's only")

    @field_validator("languages", "language_weights")
    @classmethod
    def _language_text(cls, v: object) -> object:
        for label in v if isinstance(v, (list, dict)) else ():
            _unicode(label, "language")
        return v

    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True)


class Amendment(_Model):
    """One journal entry."""

    from_step: Annotated[int, Strict(), Field(ge=0)]
    changes: Annotated[dict[str, PhaseChanges], Field(min_length=1)]
    reason: str = ""
    source: Annotated[str, Field(max_length=200)] = "manual"
    created_at: datetime | None = None

    @field_validator("reason", "source")
    @classmethod
    def _text(cls, v: str) -> str:
        return _unicode(v, "text")

    @field_validator("changes")
    @classmethod
    def _non_empty(cls, v: dict[str, PhaseChanges]) -> dict[str, PhaseChanges]:
        for name in v:
            _unicode(name, "phase")
        empty = [k for k, c in v.items() if c.is_empty()]
        if empty:
            raise ValueError(f"no change given for phase(s) {', '.join(empty)}")
        return v

    def digest(self) -> str:
        """Hash of what the amendment does (from_step + changes; not reason, source or time)."""
        body = {"from_step": self.from_step,
                "changes": {k: c.model_dump(mode="json", exclude_none=True) for k, c in self.changes.items()}}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def stamped(self) -> Amendment:
        """A copy with `created_at` set (now, UTC) when missing."""
        if self.created_at is not None:
            return self
        return self.model_copy(update={"created_at": datetime.now(timezone.utc)})


def parse_amendment(data: object, source: str = "amendment") -> Amendment:
    """Validate an amendment (a dict or JSON text); errors name `source` and each bad field."""
    try:
        if isinstance(data, (str, bytes)):
            return Amendment.model_validate_json(data)
        return Amendment.model_validate(data)
    except ValidationError as exc:
        fields, parts = _describe(exc)
        raise AmendmentError(f"{source}: " + "; ".join(parts), fields) from None


_UNION_TAGS = frozenset({"TopN", "Anneal", "float", "int", "str", "list[str]", "literal['all']"})


def _describe(exc: ValidationError, prefix: tuple = ()) -> tuple[list[str], list[str]]:
    fields, parts = [], []
    for e in exc.errors():
        # Drop pydantic's union-branch tags (e.g. 'TopN', 'float') from the field path; phase
        # names and language keys (which may start upper-case) stay.
        loc = [str(x) for x in (*prefix, *e["loc"]) if not (isinstance(x, str) and x in _UNION_TAGS)]
        name = ".".join(loc) or "(amendment)"
        if name not in fields:
            fields.append(name)
            parts.append(f"{name}: {e['msg'].removeprefix('Value error, ')}")  # pydantic's prefix for our own words
    return fields, parts


# -- applying -------------------------------------------------------------------------------

def resolve_current(amendment: Amendment, timeline: Timeline) -> Amendment:
    """Replace the phase key `current` by the name of the phase that contains `from_step`."""
    if CURRENT not in amendment.changes:
        return amendment
    name = timeline.recipe.phases[_phase_of(amendment, timeline)].name
    changes = dict(amendment.changes)
    cur = changes.pop(CURRENT)
    if name in changes:
        raise AmendmentError(f"changes: both {CURRENT!r} and {name!r} (the same phase) given; use one", [f"changes.{name}"])
    return amendment.model_copy(update={"changes": {name: cur, **changes}})


def _phase_of(amendment: Amendment, timeline: Timeline) -> int:
    s = amendment.from_step
    if s >= timeline.total_steps:
        raise AmendmentError(
            f"from_step: {s} is past the last step of the run ({timeline.total_steps - 1})", ["from_step"])
    return timeline.phase_of(s)


def apply_amendment(recipe: Recipe, amendment: Amendment, timeline: Timeline | None = None) -> Recipe:
    """`recipe` (resolved: no variants left to choose) with `amendment` applied. Raises
    AmendmentError naming `changes.<phase>.<field>` for anything that cannot apply."""
    timeline = timeline or Timeline(recipe)
    amendment = resolve_current(amendment, timeline)
    current = _phase_of(amendment, timeline)
    names = [p.name for p in recipe.phases]
    phases = list(recipe.phases)
    for name, ch in amendment.changes.items():
        where = f"changes.{name}"
        if name not in names:
            raise AmendmentError(f"{where}: no phase {name!r}; phases: {', '.join(names)} (or {CURRENT!r})", [where])
        i = names.index(name)
        if i < current:
            raise AmendmentError(
                f"{where}: phase {name!r} ended before from_step {amendment.from_step} (in phase {names[current]!r}); "
                "an amendment changes the phase containing from_step and later ones", [where])
        if ch.tokens is not None and i == current:
            raise AmendmentError(
                f"{where}.tokens: phase {name!r} contains from_step {amendment.from_step}; only the budgets of later "
                "phases can change", [f"{where}.tokens"])
        phases[i] = _apply_phase(phases[i], ch, where)
    try:
        return recipe.model_copy(update={"phases": phases})
    except ValidationError as exc:  # pragma: no cover - phases were validated one by one
        raise AmendmentError(str(exc)) from None


def _apply_phase(phase: Phase, ch: PhaseChanges, where: str) -> Phase:
    if phase.variants:
        raise AmendmentError(f"{where}: resolve the recipe's variants before amending", [where])
    upd = ch.model_dump(exclude_none=True, exclude={"tau_end", "language_weights", "tau", "mask_ratio", "languages"})
    # Keep the models (not their dicts) for union fields, so validation sees the same types.
    for key in ("tau", "mask_ratio", "languages"):
        v = getattr(ch, key)
        if v is not None:
            upd[key] = v.model_dump() if isinstance(v, (Anneal, TopN)) else v
    if ch.tau_end is not None:
        if ch.tau is not None:
            raise AmendmentError(f"{where}: give tau or tau_end, not both", [f"{where}.tau_end"])
        if not isinstance(phase.tau, Anneal):
            raise AmendmentError(f"{where}.tau_end: phase {phase.name!r} has a constant tau ({phase.tau}); set tau instead",
                                 [f"{where}.tau_end"])
        upd["tau"] = {"start": phase.tau.start, "end": ch.tau_end}
    if ch.language_weights is not None:
        upd["language_weights"] = {**phase.language_weights, **ch.language_weights}
    data = {**phase.model_dump(exclude={"variants"}), **upd}
    try:
        return Phase.model_validate(data)
    except ValidationError as exc:
        fields, parts = _describe(exc, (where,))
        raise AmendmentError("; ".join(parts), fields) from None


# -- regimes --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Regime:
    """The curriculum in force from `from_step` until the next regime: the recipe with the first
    `applied` journal entries."""

    from_step: int
    applied: int
    recipe: Recipe
    timeline: Timeline


def regimes(recipe: Recipe, amendments: list[Amendment], prior: list[Regime] | None = None) -> list[Regime]:
    """One regime per distinct `from_step` (the first from step 0, the recipe itself). Raises
    AmendmentError when an entry cannot apply or starts before the previous one.

    `prior`: the regimes of a prefix of `amendments` (of the same recipe), continued from
    instead of re-applying that prefix: a growing journal costs O(new entries) per extension."""
    out = list(prior) if prior else [Regime(0, 0, recipe, Timeline(recipe))]
    cur = out[-1].recipe
    for n, a in enumerate(amendments[out[-1].applied :], out[-1].applied + 1):
        last = out[-1]
        if a.from_step < last.from_step:
            raise AmendmentError(
                f"journal entry {n}: from_step {a.from_step} is before entry {last.applied}'s ({last.from_step}); "
                "entries must not go back in steps (to override a pending amendment, add one at the same step)",
                ["from_step"])
        try:
            cur = apply_amendment(cur, a)
        except AmendmentError as exc:
            raise AmendmentError(f"journal entry {n} (from_step {a.from_step}): {exc}", exc.fields, entry=n,
                                 bare=str(exc)) from None
        reg = Regime(a.from_step, n, cur, Timeline(cur))
        if a.from_step == last.from_step:
            out[-1] = reg  # the same step: one regime with every entry so far
        else:
            out.append(reg)
    return out


def regime_at(regs: list[Regime], step: int) -> Regime:
    """The regime in force at `step`."""
    return regs[max(0, bisect.bisect_right([r.from_step for r in regs], step) - 1)]


# -- pieces: what each stretch of a phase blends ---------------------------------------------

@dataclass(frozen=True)
class Piece:
    """Phase sequences [start, stop) blended with one set of weights, continuing from the phase's
    counts and targets at `start` (sampler_server.kernels.blend). A segment that an amendment
    leaves alone stays one piece, so its bytes do not change."""

    phase: int
    start: int
    stop: int
    regime: int  # index of the regime whose plan gave the weights
    segment: int  # segment index in that regime's phase plan
    languages: tuple[str, ...]  # keys with weight > 0, in plan order
    weights: np.ndarray  # normalized, > 0

    def same_blend(self, other: Piece) -> bool:
        return self.languages == other.languages and np.array_equal(self.weights, other.weights)


def segment_bounds(n_sequences: int, n_segments: int) -> list[int]:
    """Phase-sequence boundaries of a phase's blend segments (equal parts)."""
    return [-(-s * n_sequences // n_segments) for s in range(n_segments + 1)]


def phase_pieces(regs: list[Regime], plans: list[list], phase: int) -> list[Piece]:
    """The pieces of `phase`, given each regime's phase plans (`plans[k][phase]`: a PhasePlan).

    The phase's layout (steps, sequences) is the same in every regime that reaches it, so the
    last regime's timeline converts regime step ranges to sequence ranges."""
    tl = regs[-1].timeline
    lay = tl.layouts[phase]
    p0, p1 = tl.phase_start[phase], tl.phase_start[phase] + lay.steps
    out: list[Piece] = []
    for k, reg in enumerate(regs):
        s0 = max(reg.from_step, p0)
        s1 = min(regs[k + 1].from_step if k + 1 < len(regs) else p1, p1)
        if s0 >= s1:
            continue
        g0, g1 = lay.first_sequence(s0 - p0), (lay.first_sequence(s1 - p0) if s1 < p1 else lay.total_sequences)
        plan = plans[k][phase]
        bounds = segment_bounds(lay.total_sequences, len(plan.segments))
        for s, seg in enumerate(plan.segments):
            a, b = max(g0, bounds[s]), min(g1, bounds[s + 1])
            if a >= b:
                continue
            w = seg.allocation.weights
            keep = w > 0
            piece = Piece(phase, a, b, k, s,
                          tuple(np.asarray(plan.languages)[keep].tolist()), w[keep] / w[keep].sum())
            prev = out[-1] if out else None
            if prev is not None and prev.stop == a and prev.same_blend(piece) and a != bounds[s]:
                # An amendment that left this segment's weights alone: the blend runs on.
                out[-1] = Piece(phase, prev.start, b, prev.regime, prev.segment, prev.languages, prev.weights)
            else:
                out.append(piece)
    return out


# -- CLI `--set` ----------------------------------------------------------------------------

SETTABLE = tuple(PhaseChanges.model_fields)


def parse_sets(items: list[str], phase_names: list[str]) -> dict[str, dict]:
    """`--set` items → changes by phase: `tau=0.4`, `tau=0.7:0.3` (anneal), `languages=top:200`,
    `languages=all`, `languages=eng_Latn,fra_Latn`, `language_weights.swh_Latn=2`,
    `decay.tokens=5e9`, `decay.tau_end=0.2`. Without a phase prefix a field is for `current`."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or not raw:
            raise AmendmentError(f"--set {item!r}: expected FIELD=VALUE, e.g. tau=0.4 or decay.tokens=5e9", ["--set"])
        # The phase prefix (phase names may contain dots, or be field names): the longest one that
        # a field follows; none when the key starts with a field; else the longest (the error
        # then names the unknown field after it).
        prefixes = [n for n in sorted([*phase_names, CURRENT], key=len, reverse=True) if key.startswith(n + ".")]
        fits = [n for n in prefixes if key[len(n) + 1:].split(".")[0] in SETTABLE]
        chosen = fits[0] if fits else None if key.split(".")[0] in SETTABLE else next(iter(prefixes), None)
        phase, rest = (chosen, key[len(chosen) + 1:]) if chosen else (CURRENT, key)
        # A bare phase name sets nothing; a field name is a field even when a phase has that name.
        parts = [] if chosen is None and key in (*phase_names, CURRENT) and key not in SETTABLE else rest.split(".")
        if not parts or parts[0] not in SETTABLE:
            raise AmendmentError(f"--set {item!r}: unknown field {'.'.join(parts) or '(none)'}; settable: {', '.join(SETTABLE)} "
                                 f"(prefix a phase name for another phase: {', '.join(phase_names)})", ["--set"])
        field = parts[0]
        ch = out.setdefault(phase, {})
        if field == "language_weights":
            if len(parts) != 2:
                raise AmendmentError(f"--set {item!r}: use language_weights.<language>=<multiplier>", ["--set"])
            ch.setdefault("language_weights", {})[parts[1]] = _number(raw, item)
        elif len(parts) != 1:
            raise AmendmentError(f"--set {item!r}: field {field} takes no sub-key", ["--set"])
        elif field == "languages":
            ch[field] = _languages(raw)
        elif field in ("tau", "mask_ratio") and ":" in raw:
            a, _, b = raw.partition(":")
            ch[field] = {"start": _number(a, item), "end": _number(b, item)}
        else:
            ch[field] = _number(raw, item)
    return out


def _number(raw: str, item: str) -> float:
    # ASCII only, as the HTTP API wants its integers: float() also reads '٠.٥' and '１' (other
    # scripts' digits), which then sit in the journal as numbers nobody typed.
    try:
        if not raw.isascii():
            raise ValueError
        return float(raw)
    except ValueError:
        raise AmendmentError(f"--set {item!r}: {raw!r} is not a number (ASCII digits, e.g. 0.5 or 1.2e11)",
                             ["--set"]) from None


def _languages(raw: str) -> object:
    if raw == "all":
        return "all"
    if raw.startswith("top:"):
        try:
            if not raw.isascii():
                raise ValueError
            return {"top": int(raw[4:])}
        except ValueError:
            raise AmendmentError(f"--set languages={raw}: expected top:<N>", ["--set"]) from None
    return [x.strip() for x in raw.split(",") if x.strip()]



# -- the amended plan -----------------------------------------------------------------------

def plan_regimes(regs: list[Regime], manifest) -> list[list]:
    """Per regime, the plan of every phase (curriculum.plan.plan_phase on the regime's recipe)."""
    from curriculum.plan import plan_phase

    cache: dict[str, object] = {}
    out = []
    for r in regs:
        row = []
        for i, ph in enumerate(r.recipe.phases):
            key = f"{i}:{r.timeline.phase_start[i]}:{ph.model_dump_json()}"
            if key not in cache:
                cache[key] = plan_phase(ph, i, manifest.languages, r.timeline.phase_start[i], float(r.timeline.tokens_start[i]))
            row.append(cache[key])
        out.append(row)
    return out


def phase_allotments(regs: list[Regime], plans: list[list], phase: int) -> dict[str, float]:
    """Tokens each language is expected to get in `phase` of the amended run: every piece's
    sequences times the sequence length, split by the piece's weights."""
    L = regs[-1].recipe.phases[phase].seq_len
    out: dict[str, float] = {}
    for pc in phase_pieces(regs, plans, phase):
        tokens = (pc.stop - pc.start) * L
        for k, w in zip(pc.languages, pc.weights):
            out[k] = out.get(k, 0.0) + float(w) * tokens
    return out

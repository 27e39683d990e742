"""The recipe: a curriculum of training phases, as typed data loaded from TOML.

A recipe is validated once, at the edge (`load_recipe`); everything downstream takes the typed
models. Validation errors name the file, the phase and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from curriculum.errors import RecipeError


class _Model(BaseModel):
    # No NaN / Infinity: TOML and JSON both spell them, and an infinite budget or cap has no
    # schedule (an infinite phase has no step count; JSON would write it back as null).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# A number, never a bool or a numeric string: pydantic's lax mode reads JSON `true` as 1.0 and
# "0.4" as 0.4, so a UI's checkbox or a quoted value in an amendment would change a phase.
Number = Annotated[float, Strict()]
Count = Annotated[int, Strict()]  # likewise: `true` is not 1, "64" is not 64


class Anneal(_Model):
    """A value that moves linearly from `start` to `end` across a phase."""

    start: Number
    end: Number


Scalar = Union[Number, Anneal]


class TopN(_Model):
    """The N languages with the most available tokens (ties broken by key)."""

    # Bounded: more than any manifest has (mmBERT's run: 1,833), and small enough for the
    # dataframe `head` that takes it (an int64).
    top: Annotated[int, Strict(), Field(gt=0, le=1_000_000)]


LanguageSelection = Union[Literal["all"], TopN, Annotated[list[str], Field(min_length=1)]]


class LRSchedule(_Model):
    """Learning-rate shape of a phase, as a factor of the peak LR, in tokens of the phase.

    warmup: linear from 0 to 1 over `warmup_tokens`; then stable at 1; then, over the last
    `decay_tokens` of the phase (the whole phase when unset), a decay to `final_factor`:
    `linear` 1 - (1-f)x, `one_minus_sqrt` 1 - (1-f)sqrt(x), `inv_sqrt` 1/sqrt(1 + x(1/f^2 - 1)),
    with x in [0, 1] the fraction of the decay done. Every shape ends exactly at `final_factor`.
    """

    warmup_tokens: Annotated[Number, Field(ge=0)] = 0.0
    decay: Literal["none", "linear", "one_minus_sqrt", "inv_sqrt"] = "none"
    decay_tokens: Annotated[Number, Field(gt=0)] | None = None
    final_factor: Annotated[Number, Field(gt=0, le=1)] = 0.02

    @model_validator(mode="before")
    @classmethod
    def _decay_settings_need_a_decay(cls, data: Any) -> Any:
        # decay_tokens / final_factor under the default decay = "none" were accepted and ignored.
        if isinstance(data, dict) and data.get("decay", "none") == "none":  # (a dumped phase carries the defaults)
            given = [k for k, default in (("decay_tokens", None), ("final_factor", 0.02)) if data.get(k, default) != default]
            if given:
                raise ValueError(f"{' and '.join(given)} set, but decay is \"none\": they would be ignored; set decay "
                                 "to \"linear\", \"one_minus_sqrt\" or \"inv_sqrt\", or drop them")
        return data

    def factor(self, tokens_done: float, phase_tokens: float) -> float:
        """LR factor after `tokens_done` tokens of a phase of `phase_tokens`."""
        if self.warmup_tokens > 0 and tokens_done < self.warmup_tokens:
            return tokens_done / self.warmup_tokens
        if self.decay == "none":
            return 1.0
        span = min(self.decay_tokens or phase_tokens, phase_tokens)
        start = phase_tokens - span
        if tokens_done <= start:
            return 1.0
        x = min(1.0, (tokens_done - start) / span)
        f = self.final_factor
        if self.decay == "linear":
            return 1.0 - (1.0 - f) * x
        if self.decay == "one_minus_sqrt":
            return 1.0 - (1.0 - f) * math.sqrt(x)
        return 1.0 / math.sqrt(1.0 + x * (1.0 / (f * f) - 1.0))


MAX_PHASE_TOKENS = 1e15
MAX_WARMUP_STEPS = 1_000_000  # the schedule keeps one entry per warm-up step (mmBERT's ramp: ~66k steps)


class BatchWarmup(_Model):
    """The global batch grows linearly in tokens from `min_sequences` to the phase's full batch
    over the first `tokens` tokens of the phase. Each step's size is rounded down to a multiple
    of `multiple` (default: `min_sequences`), so any world size dividing `multiple` (and the full
    batch) splits every step of the ramp."""

    tokens: Annotated[Number, Field(gt=0)]
    min_sequences: Annotated[Count, Field(gt=0)]
    multiple: Annotated[Count, Field(gt=0)] | None = None

    @property
    def step_multiple(self) -> int:
        return self.multiple or self.min_sequences


class PhaseVariant(_Model):
    """A named alternative of a phase that branches from the same start; unset fields inherit."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    tokens: Annotated[Number, Field(gt=0)] | None = None
    languages: LanguageSelection | None = None
    on_missing: Literal["error", "skip"] | None = None
    tau: Scalar | None = None
    mask_ratio: Scalar | None = None
    # 0: no cap, removing the phase's (TOML has no null to unset an inherited field).
    max_epochs: Annotated[Number, Field(ge=0)] | None = None
    source_weights: dict[str, Annotated[Number, Field(ge=0)]] | None = None
    language_weights: dict[str, Annotated[Number, Field(ge=0)]] | None = None


class Phase(_Model):
    """One phase of the curriculum."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    # At most 10^15 (mmBERT's whole run is 3·10^12): 1e30 was accepted, gave 2·10^26 steps, and a
    # request for a far step then walked the blend for hours and raised the watermark for good.
    tokens: Annotated[Number, Field(gt=0, le=MAX_PHASE_TOKENS, description="token budget of the phase")]
    batch_tokens: Annotated[Count, Field(gt=0, description="global batch size in tokens")]
    seq_len: Annotated[Count, Field(gt=1)]
    languages: LanguageSelection = "all"
    on_missing: Literal["error", "skip"] = "error"
    tau: Scalar = 1.0
    mask_ratio: Scalar = 0.15
    max_epochs: Annotated[Number, Field(gt=0)] | None = None
    lr: LRSchedule = LRSchedule()
    source_weights: dict[str, Annotated[Number, Field(ge=0)]] = Field(default_factory=dict)
    language_weights: dict[str, Annotated[Number, Field(ge=0)]] = Field(default_factory=dict)
    anneal_segments: Annotated[Count, Field(ge=1, le=4096)] = 16
    batch_warmup: BatchWarmup | None = None
    variants: list[PhaseVariant] = Field(default_factory=list)
    variant: str | None = Field(None, description="set on a resolved phase: which variant it is")

    @field_validator("tau")
    @classmethod
    def _tau_range(cls, v: Scalar) -> Scalar:
        for x in (v.start, v.end) if isinstance(v, Anneal) else (v,):
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"tau must be in [0, 1], got {x}")
        return v

    @field_validator("mask_ratio")
    @classmethod
    def _mask_range(cls, v: Scalar) -> Scalar:
        for x in (v.start, v.end) if isinstance(v, Anneal) else (v,):
            if not 0.0 <= x < 1.0:
                raise ValueError(f"mask_ratio must be in [0, 1), got {x}")
        return v

    @model_validator(mode="after")
    def _batch_shape(self) -> Phase:
        if self.batch_tokens % self.seq_len:
            raise ValueError(
                f"batch_tokens ({self.batch_tokens}) must be a multiple of seq_len ({self.seq_len})"
            )
        if self.lr.warmup_tokens > self.tokens:
            raise ValueError("lr.warmup_tokens exceeds the phase's tokens")
        if self.lr.decay_tokens is not None and self.lr.decay_tokens > self.tokens:  # was clipped to the phase, silently
            raise ValueError(f"lr.decay_tokens ({self.lr.decay_tokens:.6g}) exceeds the phase's tokens ({self.tokens:.6g}); "
                             "leave it out to decay over the whole phase")
        w = self.batch_warmup
        if w is not None:
            B, m = self.batch_sequences, w.step_multiple
            if w.min_sequences > B:
                raise ValueError(f"batch_warmup.min_sequences ({w.min_sequences}) exceeds the batch of {B} sequences")
            if B % m or w.min_sequences % m:
                raise ValueError(
                    f"batch_warmup: the batch ({B} sequences) and min_sequences ({w.min_sequences}) must be multiples of {m}"
                )
            if w.tokens > self.tokens:
                raise ValueError("batch_warmup.tokens exceeds the phase's tokens")
            # Steps of the ramp, integrated in tokens (the schedule rounds each batch down, so a
            # few more): refused before the schedule walks them one by one, a hang for a typo.
            L, b0 = self.seq_len, w.min_sequences
            steps = w.tokens / (b0 * L) if B == b0 else w.tokens / ((B - b0) * L) * math.log(B / b0)
            if steps > MAX_WARMUP_STEPS:
                raise ValueError(
                    f"batch_warmup: a ramp over {w.tokens:.4g} tokens from {b0} to {B} sequences takes about "
                    f"{steps:,.0f} steps, more than {MAX_WARMUP_STEPS:,}; lower batch_warmup.tokens or raise "
                    "batch_warmup.min_sequences"
                )
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique; got {names}")
        # Each variant must make a valid phase too (a tau out of range, a budget below the
        # warm-up): found here, naming the variant, not when a plan or a server first resolves it.
        for v in self.variants:
            try:
                self.resolve(v.name)
            except ValidationError as exc:
                raise ValueError(f"variant {v.name!r}: " + "; ".join(
                    f"{_field_path(e['loc']) or 'phase'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
                )) from None
        return self

    def resolve(self, variant: str | None = None) -> Phase:
        """This phase as variant `variant` (default: the first); a phase without variants is itself."""
        if not self.variants:
            return self
        chosen = self.variants[0] if variant is None else next((v for v in self.variants if v.name == variant), None)
        if chosen is None:
            raise RecipeError(
                f"phase {self.name!r} has no variant {variant!r}; variants: {', '.join(v.name for v in self.variants)}"
            )
        over = {k: v for k, v in chosen.model_dump(exclude={"name", "description"}).items() if v is not None}
        if over.get("max_epochs") == 0:
            over["max_epochs"] = None
        data = {**self.model_dump(exclude={"variants"}), **over, "variant": chosen.name}
        return Phase.model_validate(data)

    @property
    def batch_sequences(self) -> int:
        return self.batch_tokens // self.seq_len

    @property
    def steps(self) -> int:
        """Optimizer steps in the phase (the batch warm-up's smaller steps included)."""
        from curriculum.schedule import phase_layout

        return phase_layout(self).steps

    @property
    def label(self) -> str:
        return f"{self.name}:{self.variant}" if self.variant else self.name

    @property
    def annealed(self) -> bool:
        return isinstance(self.tau, Anneal)

    def tau_at(self, fraction: float) -> float:
        return _interp(self.tau, fraction)

    def mask_ratio_at(self, fraction: float) -> float:
        return _interp(self.mask_ratio, fraction)

    def segment_taus(self) -> list[float]:
        """τ of each blend segment: constant τ is one segment; an anneal is piecewise constant
        over `anneal_segments` equal parts, each at the τ of its midpoint."""
        if not isinstance(self.tau, Anneal):
            return [float(self.tau)]
        n = self.anneal_segments
        return [self.tau_at((s + 0.5) / n) for s in range(n)]


def _interp(v: Scalar, fraction: float) -> float:
    if isinstance(v, Anneal):
        x = min(1.0, max(0.0, fraction))
        return v.start + (v.end - v.start) * x
    return float(v)


class Recipe(_Model):
    """A named sequence of phases."""

    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    phases: Annotated[list[Phase], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        names = [p.name for p in self.phases]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"phase names must be unique; repeated: {', '.join(dup)}")
        if "current" in names:  # curriculum.amend.CURRENT: an amendment's key for the phase of its from_step
            raise ValueError("phase name 'current' is reserved (amendments use it for the phase containing their "
                             "from_step); rename the phase")
        # A variant's own length moves every later phase's start step, per variant: the plan shows
        # one schedule for the phases after it, so that would be wrong there (found by an audit).
        for p in self.phases[:-1]:
            longer = [v.name for v in p.variants if v.tokens is not None and v.tokens != p.tokens]
            if longer:
                raise ValueError(f"phase {p.name!r}: variant(s) {', '.join(longer)} set their own tokens, but phases "
                                 "follow it, which would start at another step in each variant; give variants their "
                                 "own tokens only in the last phase")
        return self

    def variant_names(self) -> dict[str, list[str]]:
        """Phase name → its variant names, for phases that have variants."""
        return {p.name: [v.name for v in p.variants] for p in self.phases if p.variants}

    def resolve(self, variant: str | None = None) -> Recipe:
        """The recipe with every phase that has variants replaced by `variant` (default: each
        phase's first). A name no phase has is an error that lists the variants."""
        names = {v for vs in self.variant_names().values() for v in vs}
        if variant is not None and variant not in names:
            raise RecipeError(
                f"recipe {self.name!r} has no variant {variant!r}; variants: {', '.join(sorted(names)) or 'none'}"
            )
        phases = [p.resolve(variant if variant in [v.name for v in p.variants] else None) for p in self.phases]
        return self.model_copy(update={"phases": phases})

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        raise RecipeError(
            f"recipe {self.name!r} has no phase {name!r}; phases: {', '.join(p.name for p in self.phases)}"
        )

    @property
    def total_tokens(self) -> float:
        """Tokens of the run as served by default: each phase with variants as its first variant
        (a variant may set its own `tokens`; the phase's own is then only a template)."""
        return sum(p.resolve().tokens for p in self.phases)

    def fingerprint(self) -> str:
        """Stable hash of the recipe's content (part of a batch's build id)."""
        blob = json.dumps(self.model_dump(mode="json", exclude_defaults=True), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_recipe(data: dict, source: str = "<recipe>") -> Recipe:
    """Validate a recipe dict; errors name `source`, the phase and the field."""
    phases = data.get("phases") if isinstance(data, dict) else None
    for i, p in enumerate(phases if isinstance(phases, list) else []):
        if isinstance(p, dict) and "variant" in p:  # set on a resolved phase only; [[phases.variant]] is a typo
            raise RecipeError(f"recipe {source}: phase {p.get('name', i)!r} (phases[{i}]), field 'variant': not a recipe "
                              "field (a resolved phase's label); variants are declared as [[phases.variants]]")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_describe(exc, data, source)) from None


def load_recipe(path: str | Path) -> Recipe:
    """Load and validate a TOML recipe."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise RecipeError(f"recipe {p}: cannot read ({exc.strerror}); check the path") from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))  # a byte-order mark (some Windows editors) is not TOML
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe {p}: not valid TOML: {exc}") from None
    return parse_recipe(data, str(p))


def _field_path(loc: tuple) -> str:
    """A pydantic error location as a dotted field path, without pydantic's union-branch tags
    (e.g. 'TopN', 'float')."""
    return ".".join(
        str(x) for x in loc if not (isinstance(x, str) and (x[:1].isupper() or x in {"float", "int", "list[str]", "literal['all']"}))
    )


def _describe(exc: ValidationError, data: dict, source: str) -> str:
    phases = data.get("phases") if isinstance(data, dict) else None
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "phases" and isinstance(loc[1], int):
            idx = loc[1]
            name = None
            if isinstance(phases, list) and idx < len(phases) and isinstance(phases[idx], dict):
                name = phases[idx].get("name")
            where = f"phase {name!r} (phases[{idx}])" if name else f"phases[{idx}]"
            loc = loc[2:]
        field = _field_path(loc)
        msg = err["msg"].removeprefix("Value error, ")
        if len(loc) >= 3 and loc[0] == "variants" and isinstance(loc[1], int) and err["type"] == "extra_forbidden":
            allowed = ", ".join(k for k in PhaseVariant.model_fields if k != "name")
            msg = f"a variant cannot set {loc[2]!r}; it may set {allowed} (the rest is the phase's)"
        parts = [p for p in (where, f"field {field!r}" if field else "") if p]
        key = f"{where}/{field.split('.')[0]}"
        lines.append((key, len(field.split(".")) if field else 0, f"{', '.join(parts) or 'recipe'}: ", msg,
                      err["type"] in _WRONG_TYPE))
    # A union reports one error per branch; keep only the deepest (most specific) per field, and
    # where several branches failed at the same depth, say what the field takes, once.
    best: dict[str, int] = {}
    for key, depth, *_ in lines:
        best[key] = max(best.get(key, 0), depth)
    kept = [(key, head, msg, wrong) for key, depth, head, msg, wrong in lines if depth == best[key]]
    out = []
    for key in dict.fromkeys(k for k, *_ in kept):
        mine = [x for x in kept if x[0] == key]
        if len(mine) > 1 and not all(w for *_, w in mine):  # a branch of the right type said what is wrong
            mine = [x for x in mine if not x[3]]
        texts = list(dict.fromkeys(head + msg for _, head, msg, _ in mine))
        field = key.rsplit("/", 1)[1]
        if len(texts) > 1 and field in _UNION_HELP:
            texts = [f"{mine[0][1]}expected {_UNION_HELP[field]}"]  # "phase 'p' (phases[0]), field 'tau': "
        out += texts
    return f"recipe {source}: " + "; ".join(out)


# pydantic error types that only say "not this branch's type" (a union tries every branch)
_WRONG_TYPE = frozenset({"literal_error", "model_type", "model_attributes_type", "dict_type", "list_type",
                         "float_type", "int_type", "string_type", "float_parsing", "int_parsing", "is_instance_of",
                         "bool_type"})


_UNION_HELP = {  # what a field with several accepted forms takes (recipe fields and their variants')
    "languages": '"all", { top = N } or a list of language codes',
    "tau": "a number in [0, 1] or { start = …, end = … }",
    "mask_ratio": "a number in [0, 1) or { start = …, end = … }",
}

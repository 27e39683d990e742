"""What a recipe does with a manifest: per phase, the languages, weights, tokens and epochs.

Pure functions over the recipe and the manifest's language table; `curriculum plan`, the
sampler and the dashboard all call `plan_recipe` / `phase_segments`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from curriculum.errors import RecipeError
from curriculum.languages import UnknownLanguageError, normalize_language
from curriculum.manifest import Manifest
from curriculum.mixture import Allocation, allocate
from curriculum.recipe import Phase, Recipe, TopN

EPOCH_WARNING = 5.0  # a language repeated more than this many times in a phase is flagged


@dataclass(frozen=True)
class Segment:
    """A stretch of a phase with constant language weights (one blend segment)."""

    tau: float
    tokens: float
    allocation: Allocation


@dataclass(frozen=True)
class PhasePlan:
    phase: Phase
    index: int
    start_step: int
    start_tokens: float
    languages: list[str]
    available: np.ndarray  # int64 tokens per language
    segments: list[Segment]
    table: pl.DataFrame  # language, source, available_tokens, weight, allotted_tokens, epochs, capped
    warnings: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return self.phase.steps


def _key(label: str, known, phase: Phase, field: str) -> str:
    """A recipe's language label as a manifest key: used as is when the manifest has it
    (custom keys like `code`), else normalized (`fr` → `fra_Latn`)."""
    if label in known:
        return label
    try:
        return normalize_language(label)
    except UnknownLanguageError as exc:
        raise RecipeError(f"phase {phase.label!r}, field {field!r}: {exc}", phase=phase.name, field=field) from None


def select_languages(phase: Phase, languages: pl.DataFrame) -> tuple[list[str], list[str]]:
    """Language keys a phase uses (manifest order for `all`, size order for top-N), and warnings."""
    present = languages.filter(pl.col("tokens") > 0)
    all_keys = set(languages["language"].to_list())
    sel = phase.languages
    warnings: list[str] = []
    if present.height == 0:  # every document dropped (or an empty synthetic table): nothing to mix
        raise RecipeError(f"phase {phase.name!r}: the manifest has no language with tokens ({languages.height} "
                          "language(s), none with a kept document); see `curriculum inspect` for what was dropped",
                          phase=phase.name, field="languages")
    if sel == "all":
        return present["language"].to_list(), warnings
    if isinstance(sel, TopN):
        ranked = present.sort(["tokens", "language"], descending=[True, False])
        if sel.top > ranked.height:
            warnings.append(f"phase {phase.name!r}: top {sel.top} asked, the manifest has {ranked.height} languages")
        return ranked["language"].head(sel.top).to_list(), warnings
    have = set(present["language"].to_list())
    keys: list[str] = []
    named: dict[str, str] = {}
    for label in sel:
        key = _key(label, all_keys, phase, "languages")
        if key in named:  # `en` and `eng_Latn` both: was merged silently (two weights for one are refused)
            raise RecipeError(f"phase {phase.name!r}, field 'languages': {named[key]!r} and {label!r} are both {key}; "
                              "list each language once", phase=phase.name, field="languages")
        named[key] = label
        if key not in have:
            msg = f"phase {phase.name!r}: language {label!r} ({key}) is not in the manifest (or has no tokens)"
            if phase.on_missing == "error":
                raise RecipeError(msg + "; remove it from the recipe or set on_missing = \"skip\"", phase=phase.name,
                                  field="languages")
            warnings.append(msg + "; skipped")
            continue
        keys.append(key)
    if not keys:
        raise RecipeError(f"phase {phase.name!r}: none of its languages is in the manifest", phase=phase.name,
                          field="languages")
    return keys, warnings


def _multipliers(phase: Phase, keys: list[str], sources: list[str], manifest_keys: set[str],
                 ignore_unselected: bool = False, warnings: list[str] | None = None) -> np.ndarray | None:
    if not phase.source_weights and not phase.language_weights:
        return None
    m = np.array([phase.source_weights.get(s, 1.0) for s in sources], dtype=np.float64)
    index = {k: i for i, k in enumerate(keys)}
    seen: dict[str, str] = {}
    for label, w in phase.language_weights.items():
        key = _key(label, manifest_keys, phase, "language_weights")
        if key in seen:  # `en` and `eng_Latn` both: the two weights multiplied, silently
            raise RecipeError(f"phase {phase.name!r}, field 'language_weights': {seen[key]!r} and {label!r} are both "
                              f"{key}; give one weight per language", phase=phase.name, field="language_weights")
        seen[key] = label
        if key in index:
            m[index[key]] *= w
        elif phase.on_missing == "error" and not ignore_unselected:
            raise RecipeError(
                f"phase {phase.name!r}, field 'language_weights': {label!r} ({key}) is not among the phase's languages",
                phase=phase.name, field="language_weights")
        elif warnings is not None and not ignore_unselected:  # on_missing = "skip": said, as for `languages`
            warnings.append(f"phase {phase.name!r}: language_weights names {label!r} ({key}), which is not among "
                            "the phase's languages; ignored")
    return m


def epoch_tokens(tokens: np.ndarray, docs: np.ndarray | None) -> np.ndarray:
    """Stream tokens of one epoch of each language: its tokens plus [CLS] and [SEP] per document
    (what the sampler serves of it; a phase's budget counts the same tokens)."""
    t = np.asarray(tokens, dtype=np.int64)
    return t if docs is None else t + 2 * np.asarray(docs, dtype=np.int64)


def phase_segments(phase: Phase, available: np.ndarray, multipliers: np.ndarray | None = None,
                   epoch: np.ndarray | None = None) -> list[Segment]:
    """Blend segments of a phase: one for constant τ, `anneal_segments` for an annealed τ.

    Each segment gets an equal share of the budget; an epoch cap applies per segment (so over the
    phase too). `epoch`: see `epoch_tokens` (default: the available tokens)."""
    taus = phase.segment_taus()
    seg_tokens = phase.tokens / len(taus)
    cap = phase.max_epochs / len(taus) if phase.max_epochs is not None else None
    out = []
    for tau in taus:
        try:
            alloc = allocate(available, tau, seg_tokens, cap, multipliers, epoch)
        except Exception as exc:  # MixtureError: say which phase, in the phase's own numbers
            if cap is not None and "infeasible" in str(exc):
                raise RecipeError(
                    f"phase {phase.label!r}: max_epochs={phase.max_epochs} is infeasible: the phase's {phase.tokens:.4g} tokens "
                    f"exceed max_epochs x its languages' {float(np.sum(available if epoch is None else epoch)):.4g} "
                    "tokens a pass (documents with [CLS]/[SEP]); raise max_epochs, "
                    f"add languages or lower the phase's tokens", phase=phase.name, field="max_epochs"
                ) from None
            raise RecipeError(f"phase {phase.label!r}: {exc}", phase=phase.name) from None
        out.append(Segment(tau=tau, tokens=seg_tokens, allocation=alloc))
    return out


def plan_phase(phase: Phase, index: int, languages: pl.DataFrame, start_step: int = 0, start_tokens: float = 0.0,
               ignore_unselected_weights: bool = False) -> PhasePlan:
    """The plan of one phase. `ignore_unselected_weights`: multipliers of manifest languages the
    phase does not select are ignored instead of refused (a server's other phase variants, under
    amendments written for its default one; the default keeps the check, so typos are refused)."""
    keys, warnings = select_languages(phase, languages)
    sub = pl.DataFrame({"language": keys}).join(languages, on="language", how="left", maintain_order="left")
    available = sub["tokens"].to_numpy().astype(np.int64)
    epoch = epoch_tokens(available, sub["docs"].to_numpy() if "docs" in sub.columns else None)
    sources = sub["source"].to_list()
    mult = _multipliers(phase, keys, sources, set(languages["language"].to_list()), ignore_unselected_weights, warnings)
    known = set(languages["source"].to_list())
    unknown = sorted(set(phase.source_weights) - known)
    if unknown:  # a typo, or a recipe written for a corpus with sources this one lacks
        warnings.append(f"phase {phase.name!r}: source_weights names {', '.join(map(repr, unknown))}, a source no "
                        f"language of the manifest has (its sources: {', '.join(sorted(known))}); ignored")
    segments = phase_segments(phase, available, mult, epoch)
    allotted = np.sum([s.allocation.allotted for s in segments], axis=0)
    capped = np.any([s.allocation.capped for s in segments], axis=0)
    table = pl.DataFrame(
        {
            "language": keys,
            "source": sources,
            "available_tokens": available,
            "weight": allotted / allotted.sum(),
            "allotted_tokens": allotted,
            "epochs": allotted / epoch,
            "capped": capped,
        }
    )
    warnings += allotment_warnings(phase.label, phase.seq_len, table)
    return PhasePlan(phase, index, start_step, start_tokens, keys, available, segments, table, warnings)


def allotment_warnings(label: str, seq_len: int, table: pl.DataFrame) -> list[str]:
    """Warnings about a phase's allotments (columns language, allotted_tokens, epochs): languages
    allotted less than one sequence, and languages repeated past EPOCH_WARNING epochs."""
    out = []
    tiny = table.filter(pl.col("allotted_tokens") < seq_len)
    if tiny.height:
        out.append(
            f"phase {label!r}: {tiny.height} language(s) are allotted less than one {seq_len}-token sequence; "
            f"each sequence holds one language, so the sampler may serve them nothing"
        )
    over = table.filter(pl.col("epochs") > EPOCH_WARNING).sort("epochs", descending=True)
    if over.height:
        names = ", ".join(f"{r['language']} ({r['epochs']:.1f})" for r in over.head(5).iter_rows(named=True))
        out.append(
            f"phase {label!r}: {over.height:,} language(s) repeated more than {EPOCH_WARNING:g} epochs: {names}"
            + (" ..." if over.height > 5 else "")
        )
    return out


def plan_recipe(recipe: Recipe, manifest: Manifest) -> list[PhasePlan]:
    """One plan per phase of the resolved recipe (each phase's first variant unless resolved)."""
    from curriculum.schedule import Timeline

    recipe = recipe.resolve() if recipe.variant_names() else recipe
    tl = Timeline(recipe)
    return [
        plan_phase(phase, i, manifest.languages, tl.phase_start[i], float(tl.tokens_start[i]))
        for i, phase in enumerate(recipe.phases)
    ]


def plan_all_variants(recipe: Recipe, manifest: Manifest) -> list[PhasePlan]:
    """Plans of every phase and, for phases with variants, of every variant (same start)."""
    plans = plan_recipe(recipe, manifest)
    out = []
    for i, phase in enumerate(recipe.phases):
        if not phase.variants:
            out.append(plans[i])
            continue
        for v in phase.variants:
            out.append(plan_phase(phase.resolve(v.name), i, manifest.languages, plans[i].start_step, plans[i].start_tokens))
    return out


def phase_summary(plan: PhasePlan) -> dict:
    """Headline numbers of a phase plan (for tables, JSON and the report)."""
    t = plan.table.sort("weight", descending=True)
    w = t["weight"].to_numpy()
    top10 = float(w[:10].sum())
    tail_n = max(0, t.height - 10)
    p = plan.phase
    tau = p.tau if isinstance(p.tau, float) else {"start": p.tau.start, "end": p.tau.end}
    mask = p.mask_ratio if isinstance(p.mask_ratio, float) else {"start": p.mask_ratio.start, "end": p.mask_ratio.end}
    w = p.batch_warmup
    return {
        "name": p.label,
        "phase": p.name,
        "variant": p.variant,
        "tokens": p.tokens,
        "batch_warmup": {"tokens": w.tokens, "min_sequences": w.min_sequences, "multiple": w.step_multiple} if w else None,
        "start_step": plan.start_step,
        "steps": p.steps,
        "batch_tokens": p.batch_tokens,
        "batch_sequences": p.batch_sequences,
        "seq_len": p.seq_len,
        "tau": tau,
        "mask_ratio": mask,
        "max_epochs": p.max_epochs,
        "lr": p.lr.model_dump(),
        "anneal_segments": p.anneal_segments if p.annealed else 1,
        "n_languages": t.height,
        "top10_share": top10,
        "tail_share": max(0.0, 1.0 - top10) if tail_n else 0.0,  # no tail: 0, not 1 - 1.0000000002
        "tail_languages": tail_n,
        "max_epochs_used": float(t["epochs"].max()),
        "capped_languages": int(t["capped"].sum()),
        "warnings": plan.warnings,
    }


def plan_to_json(recipe: Recipe, manifest: Manifest, plans: list[PhasePlan]) -> dict:
    """Machine-readable plan: phases → languages → available, weight, allotted, epochs."""
    return {
        "recipe": recipe.name,
        "recipe_fingerprint": recipe.fingerprint(),
        "manifest": str(manifest.root),
        "manifest_fingerprint": manifest.fingerprint,
        "total_tokens": recipe.total_tokens,
        "phases": [
            {
                **phase_summary(pl_),
                # The parts an annealed τ (or a cap) is applied in: each its own τ, tokens and cap
                # (max_epochs / parts), so the numbers below can be recomputed from this JSON.
                "segments": [{"tau": seg.tau, "tokens": seg.tokens,
                              "max_epochs": pl_.phase.max_epochs / len(pl_.segments) if pl_.phase.max_epochs is not None
                              else None} for seg in pl_.segments],
                "languages": [
                    {
                        "language": r["language"],
                        "available_tokens": int(r["available_tokens"]),
                        "weight": float(r["weight"]),
                        "allotted_tokens": float(r["allotted_tokens"]),
                        "epochs": float(r["epochs"]),
                        "capped": bool(r["capped"]),
                    }
                    for r in pl_.table.iter_rows(named=True)
                ],
            }
            for pl_ in plans
        ],
    }

"""How close a plan comes to a published run: per phase, set overlap, the log-log fit of planned
vs published tokens per language, the total-variation distance of the two mixtures, and the
languages planned furthest above or below what was published.

The published table is a CSV with a `language` column (ISO 639-3 codes or keys) and one column of
tokens per phase. A plan phase is matched to a column by its label with ':' → '-'
(`decay:eng` → `decay-eng`), then by its name, then by ALIASES (`midtrain` → `ext`, `decay` →
`decay-all`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from curriculum.csvfile import read_user_csv
from curriculum.errors import CurriculumError
from curriculum.languages import UnknownLanguageError, default_key_for_iso3, normalize_language
from curriculum.plan import PhasePlan

ALIASES = {"midtrain": "ext", "mid-train": "ext", "context": "ext", "decay": "decay-all"}


@dataclass(frozen=True)
class PhaseFidelity:
    phase: str
    column: str
    n_both: int
    only_planned: list[str]
    only_published: list[str]
    slope: float  # log planned = a + slope · log published, over languages in both
    r2: float
    tvd: float  # total-variation distance of the two mixtures over the union of languages
    published_exponent: float  # log published = a + x · log available: the run's effective τ
    published_exponent_r2: float
    most_over: list[tuple[str, float]]  # largest planned / published
    most_under: list[tuple[str, float]]

    def to_dict(self) -> dict:
        return asdict(self)


def load_published(path: str | Path) -> pl.DataFrame:
    """The published table with language keys (`language`) and float token columns."""
    df = read_user_csv(path, "--compare", "a CSV of language,<phase>,<phase>,...")
    if "language" not in df.columns:
        raise CurriculumError(f"{path}: no `language` column; expected language,<phase>,<phase>,...")
    keys = []
    for line, label in enumerate(df["language"].cast(pl.String).to_list(), 2):  # line 1 is the header
        if not label:
            raise CurriculumError(f"{path}, line {line}: no language")
        try:
            keys.append(label if label == "code" else (default_key_for_iso3(label) if len(label) == 3 else normalize_language(label)))
        except UnknownLanguageError as exc:
            raise CurriculumError(f"{path}, line {line}: {exc}") from None
    out = df.with_columns(pl.Series("language", keys))
    cols = [c for c in df.columns if c != "language"]
    for c in cols:
        as_float = pl.col(c).cast(pl.Float64, strict=False)
        # nan, inf and negative counts parse as floats but are no token counts (nan made the fit a
        # LinAlgError traceback).
        bad = out.filter(pl.col(c).is_not_null() & (as_float.is_null() | ~as_float.is_finite() | (as_float < 0)))
        if bad.height:
            raise CurriculumError(f"{path}: column {c!r} holds {bad[c].cast(pl.String)[0]!r}, not a token count "
                                  f"(language {bad['language'][0]}); give finite numbers >= 0")
    return out.group_by("language").agg([pl.col(c).cast(pl.Float64).sum() for c in cols]).sort("language")


def column_for(plan: PhasePlan, columns: list[str]) -> str | None:
    for cand in (plan.phase.label.replace(":", "-"), plan.phase.name, ALIASES.get(plan.phase.name)):
        if cand in columns:
            return cand
    return None


def loglog_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, R²) of the least-squares line log y = a + slope · log x."""
    lx, ly = np.log(x), np.log(y)
    if lx.size < 2 or np.ptp(lx) == 0:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + slope * lx)
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    return float(slope), float(1.0 - np.sum(resid**2) / ss_tot) if ss_tot > 0 else float("nan")


def compare_phase(plan: PhasePlan, published: pl.DataFrame, column: str, top: int = 5) -> PhaseFidelity:
    pub = published.filter(pl.col(column) > 0).select("language", pl.col(column).alias("published"))
    planned = plan.table.filter(pl.col("allotted_tokens") > 0).select("language", "available_tokens", pl.col("allotted_tokens").alias("planned"))
    both = planned.join(pub, on="language", how="inner").sort("language")
    union = planned.join(pub, on="language", how="full", coalesce=True).fill_null(0.0)
    p = union["planned"].to_numpy() / max(union["planned"].sum(), 1e-300)
    q = union["published"].to_numpy() / max(union["published"].sum(), 1e-300)
    slope, r2 = loglog_fit(both["published"].to_numpy(), both["planned"].to_numpy())
    x, xr2 = loglog_fit(both["available_tokens"].cast(pl.Float64).to_numpy(), both["published"].to_numpy())
    ratio = both.with_columns((pl.col("planned") / pl.col("published")).alias("ratio")).sort("ratio")
    pairs = list(zip(ratio["language"].to_list(), ratio["ratio"].to_list()))
    return PhaseFidelity(
        phase=plan.phase.label,
        column=column,
        n_both=both.height,
        only_planned=sorted(set(planned["language"].to_list()) - set(pub["language"].to_list())),
        only_published=sorted(set(pub["language"].to_list()) - set(planned["language"].to_list())),
        slope=slope,
        r2=r2,
        tvd=float(0.5 * np.abs(p - q).sum()),
        published_exponent=x,
        published_exponent_r2=xr2,
        # Disjoint: with fewer than 2·top languages, each end takes half (one language is neither).
        most_over=[(k, float(v)) for k, v in reversed(pairs[len(pairs) - min(top, len(pairs) // 2):])],
        most_under=[(k, float(v)) for k, v in pairs[: min(top, len(pairs) // 2)]],
    )


def compare(plans: list[PhasePlan], published_csv: str | Path) -> list[PhaseFidelity]:
    pub = load_published(published_csv)
    cols = [c for c in pub.columns if c != "language"]
    out = []
    for plan in plans:
        col = column_for(plan, cols)
        if col is not None:
            out.append(compare_phase(plan, pub, col))
    if not out:
        raise CurriculumError(f"{published_csv}: no column matches a phase ({', '.join(p.phase.label for p in plans)}); columns: {', '.join(cols)}")
    return out

"""Self-contained HTML report of a plan: inline SVG charts and tables, no network needed."""

from __future__ import annotations

import datetime as _dt
from html import escape

from curriculum.plan import EPOCH_WARNING, PhasePlan, phase_summary
from curriculum.recipe import Recipe
from curriculum.svg import HOT_COLOR, PALETTE, TAIL_COLOR, fmt_tokens, hbar_chart, log_scatter

TOP_BARS = 15

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1360px;color:#1d2733;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde3ea;padding-bottom:4px}
.sub{color:#5b6878}.grid{display:flex;flex-wrap:wrap;gap:18px}.card{border:1px solid #e1e6ec;border-radius:8px;padding:12px;background:#fff}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;text-align:right;border-bottom:1px solid #eef1f4}
th{color:#5b6878;font-weight:600}td:first-child,th:first-child{text-align:left}
.warn{color:#8a3b12;background:#fff4e5;border:1px solid #f5d0a9;border-radius:6px;padding:6px 10px;margin:6px 0}
.ct{font:600 13px system-ui,sans-serif;fill:#1d2733}.cl{font:11px system-ui,sans-serif;fill:#45505c}.cv{font:11px system-ui,sans-serif;fill:#1d2733}
"""


def _scalar(v) -> str:
    if isinstance(v, dict):
        return f"{v['start']:g} → {v['end']:g}"
    return f"{v:g}"


def _batch(s: dict) -> str:
    full = f"{s['batch_sequences']:,} × {s['seq_len']:,}"
    w = s["batch_warmup"]
    return f"{w['min_sequences']:,}→{full} over {fmt_tokens(w['tokens'])}" if w else full


def _summary_table(plans: list[PhasePlan]) -> str:
    rows = []
    for p in plans:
        s = phase_summary(p)
        rows.append(
            "<tr>"
            f"<td>{escape(s['name'])}</td><td>{fmt_tokens(s['tokens'])}</td><td>{s['steps']:,}</td>"
            f"<td>{s['start_step']:,}</td><td>{_batch(s)}</td>"
            f"<td>{s['n_languages']:,}</td><td>{_scalar(s['tau'])}</td><td>{_scalar(s['mask_ratio'])}</td>"
            f"<td>{s['top10_share']:.1%}</td><td>{s['tail_share']:.1%}</td><td>{s['max_epochs_used']:.2f}</td>"
            "</tr>"
        )
    head = (
        "<tr><th>phase</th><th>tokens</th><th>steps</th><th>first step</th><th>batch (seq × len)</th>"
        "<th>languages</th><th>τ</th><th>mask</th><th>top-10 share</th><th>tail share</th><th>max epochs used</th></tr>"
    )
    return f'<table id="summary">{head}{"".join(rows)}</table>'


def _mixture_chart(p: PhasePlan) -> str:
    t = p.table.sort("weight", descending=True)
    labels = t["language"].head(TOP_BARS).to_list()
    values = t["weight"].head(TOP_BARS).to_list()
    colors = [HOT_COLOR if e > EPOCH_WARNING else PALETTE[0] for e in t["epochs"].head(TOP_BARS).to_list()]
    if t.height > TOP_BARS:
        labels.append(f"tail ({t.height - TOP_BARS:,} langs)")
        values.append(float(t["weight"].slice(TOP_BARS).sum()))
        colors.append(TAIL_COLOR)
    return hbar_chart(
        labels, values, title=f"{p.phase.label}: mixture (share of tokens)", value_fmt=lambda v: f"{v:.2%}",
        colors=colors, chart_id=f"mixture-{p.phase.label}",
    )


def _epochs_chart(p: PhasePlan) -> str:
    t = p.table
    return log_scatter(
        t["available_tokens"].cast(float).to_list(),
        t["epochs"].to_list(),
        title=f"{p.phase.label}: epochs per language (red: > {EPOCH_WARNING:g})",
        x_label="available tokens",
        y_label="epochs",
        hot=[e > EPOCH_WARNING for e in t["epochs"].to_list()],
        labels=t["language"].to_list(),
        hline=EPOCH_WARNING,
        chart_id=f"epochs-{p.phase.label}",
    )


def _oversampled_table(p: PhasePlan, n: int = 8) -> str:
    t = p.table.sort("epochs", descending=True).head(n)
    rows = "".join(
        f"<tr><td>{escape(r['language'])}</td><td>{fmt_tokens(r['available_tokens'])}</td>"
        f"<td>{fmt_tokens(r['allotted_tokens'])}</td><td>{r['weight']:.3%}</td><td>{r['epochs']:.2f}</td></tr>"
        for r in t.iter_rows(named=True)
    )
    return (
        "<table><tr><th>most repeated</th><th>available</th><th>allotted</th><th>share</th><th>epochs</th></tr>"
        f"{rows}</table>"
    )


def render_report(recipe: Recipe, manifest_label: str, plans: list[PhasePlan], extra_sections: list[str] | None = None) -> str:
    """The whole report as one HTML string."""
    budgets = hbar_chart(
        [p.phase.label for p in plans],
        [p.phase.tokens for p in plans],
        title="token budget per phase",
        value_fmt=fmt_tokens,
        colors=[PALETTE[i % len(PALETTE)] for i in range(len(plans))],
        chart_id="budgets",
    )
    sections = []
    for p in plans:
        warns = "".join(f'<div class="warn">{escape(w)}</div>' for w in p.warnings)
        sections.append(
            f'<h2 id="phase-{escape(p.phase.label)}">Phase {p.index + 1}: {escape(p.phase.label)}</h2>{warns}'
            f'<div class="grid"><div class="card">{_mixture_chart(p)}</div>'
            f'<div class="card">{_epochs_chart(p)}</div><div class="card">{_oversampled_table(p)}</div></div>'
        )
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Curriculum plan: {escape(recipe.name)}</title><style>{CSS}</style></head><body>"
        f"<h1>Curriculum plan: {escape(recipe.name)}</h1>"
        f'<div class="sub">manifest {escape(manifest_label)} · {fmt_tokens(recipe.total_tokens)} tokens in '
        f"{len(recipe.phases)} phases" + (f" ({len(plans)} with variants)" if len(plans) != len(recipe.phases) else "")
        + f" · generated {now}</div>"
        f'<h2>Phases</h2>{_summary_table(plans)}<div class="grid" style="margin-top:12px"><div class="card">{budgets}</div></div>'
        + "".join(sections)
        + "".join(extra_sections or [])
        + "</body></html>"
    )


def fidelity_section(plans: list[PhasePlan], fidelity, published: object) -> str:
    """Planned vs published tokens per language (log axes), one scatter per compared phase."""
    import polars as pl

    from curriculum.fidelity import load_published

    pub = load_published(published)
    by_label = {p.phase.label: p for p in plans}
    rows, charts = [], []
    for f in fidelity:
        p = by_label[f.phase]
        both = p.table.join(pub.select("language", pl.col(f.column).alias("published")), on="language", how="inner").filter(
            pl.col("published") > 0
        )
        charts.append(
            '<div class="card">'
            + log_scatter(
                both["published"].to_list(), both["allotted_tokens"].to_list(),
                title=f"{f.phase} vs published {f.column}: slope {f.slope:.2f}, R² {f.r2:.2f}",
                x_label="published tokens", y_label="planned tokens", labels=both["language"].to_list(),
                diagonal=True, chart_id=f"compare-{f.phase}",
            )
            + "</div>"
        )
        rows.append(
            f"<tr><td>{escape(f.phase)}</td><td>{escape(f.column)}</td><td>{f.n_both}</td><td>{len(f.only_planned)}</td>"
            f"<td>{len(f.only_published)}</td><td>{f.slope:.3f}</td><td>{f.r2:.3f}</td><td>{f.tvd:.3f}</td>"
            f"<td>{f.published_exponent:.3f}</td></tr>"
        )
    table = (
        '<table id="compare"><tr><th>phase</th><th>published column</th><th>in both</th><th>only planned</th>'
        "<th>only published</th><th>log-log slope</th><th>R²</th><th>TVD</th><th>published ∝ n^x</th></tr>"
        + "".join(rows) + "</table>"
    )
    return f'<h2 id="compare-section">Against {escape(str(published))}</h2>{table}<div class="grid">{"".join(charts)}</div>'

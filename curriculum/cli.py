"""`curriculum` command line: thin layer that parses, calls the core, and formats."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from curriculum.errors import CurriculumError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build, plan and verify language-curriculum corpora.")
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _state["debug"] = debug


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Directory to write the manifest to."),
    languages: int = typer.Option(1833, "--languages", min=1, help="Number of languages."),
    total_tokens: float = typer.Option(3e12, "--total-tokens", min=1, help="Total available tokens."),
) -> None:
    """Write a synthetic manifest (no shards) with a realistic long tail, for planning at scale."""
    from curriculum.synth import synth_long_tail

    synth_long_tail(out, languages, total_tokens)
    console.print(f"wrote synthetic manifest: {out} ({languages:,} languages, {total_tokens:.3g} tokens)")


def _fmt(x: float) -> str:
    from curriculum.svg import fmt_tokens

    return fmt_tokens(x)


@app.command()
def plan(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    manifest: Path = typer.Option(..., "--manifest", help="Manifest directory (built or synthetic)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML report here."),
    top: int = typer.Option(10, "--top", min=1, help="Languages to list per phase."),
) -> None:
    """Show what a recipe does with a manifest: per phase languages, shares, tokens, epochs."""
    from curriculum.manifest import read_manifest
    from curriculum.plan import phase_summary, plan_recipe, plan_to_json
    from curriculum.recipe import load_recipe

    rec = load_recipe(recipe)
    man = read_manifest(manifest)
    plans = plan_recipe(rec, man)
    if html is not None:
        from curriculum.report import render_report

        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_report(rec, str(manifest), plans), encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(plan_to_json(rec, man, plans), indent=1) + "\n")
        return
    for p in plans:
        s = phase_summary(p)
        tau = s["tau"] if isinstance(s["tau"], float) else f"{s['tau']['start']}→{s['tau']['end']}"
        console.rule(f"[bold]{s['name']}[/]  {_fmt(s['tokens'])} tokens · {s['steps']:,} steps from {s['start_step']:,}")
        console.print(
            f"{s['n_languages']:,} languages · τ={tau} · batch {s['batch_sequences']:,}×{s['seq_len']:,} · "
            f"top-10 share {s['top10_share']:.1%} · tail ({s['tail_languages']:,} langs) {s['tail_share']:.1%} · "
            f"max epochs {s['max_epochs_used']:.2f}" + (f" · {s['capped_languages']} capped" if s["capped_languages"] else "")
        )
        table = Table(show_header=True, header_style="bold", box=None)
        for col in ("language", "available", "share", "allotted", "epochs"):
            table.add_column(col, justify="left" if col == "language" else "right")
        t = p.table.sort("weight", descending=True)
        for r in t.head(top).iter_rows(named=True):
            table.add_row(r["language"], _fmt(r["available_tokens"]), f"{r['weight']:.3%}", _fmt(r["allotted_tokens"]), f"{r['epochs']:.3f}")
        console.print(table)
        worst = p.table.sort("epochs", descending=True).head(3)
        console.print(
            "most over-sampled: " + ", ".join(f"{r['language']} ({r['epochs']:.2f} ep)" for r in worst.iter_rows(named=True))
        )
        for w in p.warnings:
            err_console.print(f"[yellow]warning:[/] {w}")
    if html is not None:
        console.print(f"report: {html}")


def main() -> None:
    """Console-script entry: CurriculumError → one line on stderr and exit 2 (traceback with --debug)."""
    try:
        app(standalone_mode=False)
    except CurriculumError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()

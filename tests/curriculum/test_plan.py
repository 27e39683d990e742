"""`curriculum synth` + `curriculum plan`: the mmBERT recipe at full scale, language selection."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest

from conftest import RECIPES, run_cli
from curriculum.errors import RecipeError
from curriculum.manifest import read_manifest
from curriculum.plan import plan_recipe
from curriculum.recipe import parse_recipe


def test_synth_long_tail_is_realistic(synth_1833):
    m = read_manifest(synth_1833)
    tokens = m.languages["tokens"].to_numpy()
    assert m.meta.kind == "synthetic" and m.languages.height == 1833
    assert tokens.sum() == 3_000_000_000_000
    assert 2 <= (tokens >= 1e11).sum() <= 12  # a few with hundreds of billions
    assert (tokens < 1e7).sum() >= 1000  # a thousand-plus with under ten million
    assert tokens.min() >= 1


def test_plan_json_matches_the_mixture_rule(synth_1833):
    out = run_cli("plan", str(RECIPES / "mmbert.toml"), "--manifest", str(synth_1833), "--json")
    plan = json.loads(out.stdout)
    assert [p["name"] for p in plan["phases"]] == ["pretrain", "midtrain", "decay:all", "decay:eng", "decay:mid"]
    assert [p["n_languages"] for p in plan["phases"]] == [60, 110, 1833, 110, 110]
    ml = read_manifest(synth_1833).languages
    avail = dict(zip(ml["language"].to_list(), ml["tokens"].to_list()))
    docs = dict(zip(ml["language"].to_list(), ml["docs"].to_list()))
    for phase, tau, budget in zip(plan["phases"][:3], (0.7, 0.5, 0.3), (2.3e12, 6e11, 1e11)):
        langs = phase["languages"]
        n = np.array([avail[x["language"]] for x in langs], dtype=np.float64)
        assert [x["available_tokens"] for x in langs] == n.astype(np.int64).tolist()
        w = np.array([x["weight"] for x in langs])
        np.testing.assert_allclose(w, n**tau / np.sum(n**tau), rtol=0, atol=1e-9)
        allotted = np.array([x["allotted_tokens"] for x in langs])
        assert allotted.sum() == pytest.approx(budget, rel=1e-12)
        # An epoch is a pass over the language's stream: its tokens plus [CLS] and [SEP] per document.
        stream = n + 2 * np.array([docs[x["language"]] for x in langs], dtype=np.float64)
        np.testing.assert_allclose([x["epochs"] for x in langs], allotted / stream, rtol=1e-12)
    # The top-N phases are nested: the 60 are among the 110.
    first, second = ({x["language"] for x in p["languages"]} for p in plan["phases"][:2])
    assert first < second


def test_plan_table_output_and_html(synth_1833, tmp_path):
    html = tmp_path / "report.html"
    out = run_cli("plan", str(RECIPES / "mmbert.toml"), "--manifest", str(synth_1833), "--html", str(html))
    assert "pretrain" in out.stdout and "most over-sampled" in out.stdout and "1,833 languages" in out.stdout
    text = html.read_text()
    assert text.count('class="chart"') == 1 + 2 * 5  # budgets + mixture and epochs per phase / variant
    assert "tokens in 3 phases (5 with variants)" in text  # it said "in 5 phases": variants counted as phases
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text  # offline


def test_explicit_languages_missing_is_error_or_skip(synth_1833):
    full = read_manifest(synth_1833)
    m = dataclasses.replace(full, languages=full.languages.filter(pl.col("language") != "tlh_Latn"))
    base = {"name": "x", "phases": [{"name": "p", "tokens": 1e9, "batch_tokens": 1024, "seq_len": 128, "languages": ["fr", "zz_Latn_not"]}]}
    with pytest.raises(RecipeError, match="zz_Latn_not"):
        plan_recipe(parse_recipe(base), m)
    base["phases"][0]["languages"] = ["fr", "de", "tlh"]
    with pytest.raises(RecipeError, match="'tlh'.*not in the manifest.*on_missing"):
        plan_recipe(parse_recipe(base), m)
    base["phases"][0]["on_missing"] = "skip"
    (p,) = plan_recipe(parse_recipe(base), m)
    assert p.languages == ["fra_Latn", "deu_Latn"] and any("tlh" in w for w in p.warnings)


def test_cli_errors_are_one_line_with_exit_2(tmp_path, synth_1833):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "b"\n[[phases]]\nname = "p"\ntokens = 1e6\nbatch_tokens = 1000\nseq_len = 128\n')
    proc = run_cli("plan", str(bad), "--manifest", str(synth_1833), check=False)
    assert proc.returncode == 2
    assert "multiple of seq_len" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("plan", str(RECIPES / "mmbert.toml"), "--manifest", str(tmp_path / "none"), check=False)
    assert proc.returncode == 2 and "not a directory" in proc.stderr


def test_annealed_tau_and_cap_in_plan(synth_1833):
    m = read_manifest(synth_1833)
    r = parse_recipe({"name": "a", "phases": [{
        "name": "p", "tokens": 1e11, "batch_tokens": 8192, "seq_len": 1024, "languages": "all",
        "tau": {"start": 0.7, "end": 0.3}, "anneal_segments": 4, "max_epochs": 5.0}]})
    (p,) = plan_recipe(r, m)
    assert [round(s.tau, 3) for s in p.segments] == [0.65, 0.55, 0.45, 0.35]
    assert p.table["allotted_tokens"].sum() == pytest.approx(1e11, rel=1e-9)
    assert p.table["epochs"].max() <= 5.0 * (1 + 1e-9) and p.table["capped"].any()


def test_source_weights_for_a_source_the_manifest_lacks_are_named(synth_1833):
    # Were ignored without a word (a typo such as `cod` weighed nothing).
    m = read_manifest(synth_1833)
    phase = {"name": "p", "tokens": 1e11, "batch_tokens": 8192, "seq_len": 1024, "languages": {"top": 50}, "tau": 0.5}
    (p,) = plan_recipe(parse_recipe({"name": "a", "phases": [{**phase, "source_weights": {"cod": 0.5, "code": 0.5}}]}), m)
    assert [w for w in p.warnings if "source_weights" in w] == [
        "phase 'p': source_weights names 'cod', a source no language of the manifest has (its sources: code, web); ignored"]
    (base,) = plan_recipe(parse_recipe({"name": "a", "phases": [phase]}), m)
    code = p.table.filter(pl.col("language") == "code")["allotted_tokens"][0]
    assert code < base.table.filter(pl.col("language") == "code")["allotted_tokens"][0]  # `code` itself still applies
    assert not [w for w in base.warnings if "source_weights" in w]


def test_two_weights_for_one_language_are_refused(synth_1833):
    # `en` and `eng_Latn` both named English: the multipliers were multiplied (x6), silently.
    phase = {"name": "p", "tokens": 1e11, "batch_tokens": 8192, "seq_len": 1024, "languages": {"top": 50}, "tau": 0.5,
             "language_weights": {"en": 2.0, "eng_Latn": 3.0}}
    with pytest.raises(RecipeError, match=r"'en' and 'eng_Latn' are both eng_Latn; give one weight per language"):
        plan_recipe(parse_recipe({"name": "a", "phases": [phase]}), read_manifest(synth_1833))
    # The same language twice in a list was merged without a word; it is refused the same way.
    listed = {**phase, "language_weights": {}, "languages": ["eng_Latn", "fra_Latn", "en"]}
    with pytest.raises(RecipeError, match=r"field 'languages': 'eng_Latn' and 'en' are both eng_Latn; list each language once"):
        plan_recipe(parse_recipe({"name": "a", "phases": [listed]}), read_manifest(synth_1833))


def test_plan_json_lists_the_segments_and_skipped_weights_are_named(synth_1833, tmp_path):
    # anneal_segments and the per-part cap were not in the JSON, so its numbers could not be
    # recomputed; a weight for a language the phase skips was dropped without a word.
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "a"\n[[phases]]\nname = "p"\ntokens = 1e11\nbatch_tokens = 8192\nseq_len = 1024\n'
                      'languages = ["en", "fr", "yor_Arab"]\non_missing = "skip"\ntau = { start = 0.7, end = 0.3 }\n'
                      'anneal_segments = 4\nmax_epochs = 8.0\nlanguage_weights = { fr = 2.0, de = 3.0 }\n')
    out = json.loads(run_cli("plan", str(recipe), "--manifest", str(synth_1833), "--json").stdout)
    (p,) = out["phases"]
    assert [s["tau"] for s in p["segments"]] == pytest.approx([0.65, 0.55, 0.45, 0.35])
    assert all(s["tokens"] == pytest.approx(2.5e10) and s["max_epochs"] == 2.0 for s in p["segments"])
    assert any("language_weights names 'de' (deu_Latn), which is not among the phase's languages; ignored" in w
               for w in p["warnings"]), p["warnings"]


def test_the_plan_table_shows_mask_lr_and_how_a_cap_applies(synth_1833, tmp_path):
    # The text plan showed τ but not the mask ratio, never the LR schedule, and "max epochs"
    # (the most used) read like the recipe's cap, which an annealed τ applies per segment.
    from conftest import run_cli

    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[[phases]]\nname = "p"\ntokens = 1e10\nbatch_tokens = 1048576\nseq_len = 1024\n'
                      'languages = { top = 20 }\ntau = { start = 0.7, end = 0.3 }\nmask_ratio = 0.3\nmax_epochs = 2\n'
                      'anneal_segments = 4\nlr = { warmup_tokens = 1e9, decay = "linear", final_factor = 0.1 }\n')
    out = run_cli("plan", str(recipe), "--manifest", str(synth_1833)).stdout
    assert "mask 0.3" in out and "max epochs used" in out
    assert "(cap 2, 0.5 in each of the 4 τ segments)" in out
    assert "LR (× peak): linear warm-up over 1B tokens; linear decay to 0.1× over the whole phase" in out

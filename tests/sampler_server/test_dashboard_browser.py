"""The dashboard in a real headless Chromium against a real server: charts drawn from live data."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from test_app import RECIPE, live_server, make_corpus, settings_for, write_recipe

from sampler_server.app import create_app

TOKEN = "dash-token"
# Decay has two variants; the served one (the first) has τ = 0: every language gets the same share,
# so the smallest are repeated > 5 times.
DASH_RECIPE = {**RECIPE, "phases": RECIPE["phases"][:2] + [{
    **RECIPE["phases"][2], "variants": [{"name": "uniform", "tau": 0.0}, {"name": "top6", "languages": {"top": 6}}],
}]}


AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The journal of the amended run: the current phase (midtrain; the trainer is at step 44) gets a
# lower τ and fewer languages from step 45; the policy moves weight and lengthens decay from 47.
AMENDMENTS = [
    {"from_step": 45, "changes": {"current": {"tau": 0.2, "languages": {"top": 8}}}, "reason": "more of the tail"},
    {"from_step": 47, "changes": {"decay": {"tokens": 8 * 8 * 8192, "language_weights": {"l09_Latn": 0.6, "l00_Latn": 1.2}}},
     "reason": "loss-balance: l00_Latn above the reference loss", "source": "policy:loss-balance"},
]


@contextmanager
def serve_dashboard(tmp_path: Path, amendments: list[dict] = ()) -> Iterator[str]:
    """A real server on 127.0.0.1 with `amendments` posted to its journal, then 45 trainer
    progress reports (steps 0-44: pretrain done, midtrain under way, ~50k tokens/s, loss falling)."""
    manifest = make_corpus(tmp_path / "m")
    recipe = write_recipe(tmp_path / "recipe.toml", DASH_RECIPE)
    app = create_app(settings_for(manifest, recipe, warmup=False, token=TOKEN))
    with live_server(app) as url:
        for body in amendments:
            r = httpx.post(url + "/v1/amendments", json=body, headers=AUTH)
            assert r.status_code == 201, r.text
        langs = [x["language"] for x in httpx.get(url + "/v1/mixture?phase=midtrain", headers=AUTH).json()["languages"]]
        tokens, t0 = 0, time.time() - 30
        for step in range(0, 45):
            tokens += 8 * 1024 if step < 40 else 8 * 8192
            report = {"step": step, "tokens": tokens, "time": t0 + step * 0.5,
                      "loss": 10.0 * math.exp(-step / 20) + 2.0,
                      "loss_by_language": {k: 2.0 + 0.3 * i + 5 * math.exp(-step / 15) for i, k in enumerate(langs[:8])}}
            assert httpx.post(url + "/v1/progress", json=report, headers=AUTH).status_code == 201
        yield url


@pytest.fixture
def dashboard_url(tmp_path):
    with serve_dashboard(tmp_path) as url:
        yield url


@pytest.fixture
def amended_url(tmp_path):
    with serve_dashboard(tmp_path, AMENDMENTS) as url:
        yield url


def test_dashboard_renders_live_data(dashboard_url, chromium, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    chromium.get(f"{dashboard_url}/?refresh=500#token={TOKEN}")  # a fragment: never sent to the server
    # Live charts are redrawn when a report arrives: a node found just before may go stale.
    wait = WebDriverWait(chromium, 20, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, 'svg[data-chart="loss"] path.series')))
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, 'svg[data-chart="epochs-decay:uniform"] circle.pt')))
    # The token left the address bar (kept for the tab) and the page keeps polling with it.
    assert "token=" not in chromium.current_url
    wait.until(lambda d: d.find_element(By.ID, "ready").text == "ready")

    budgets = chromium.find_elements(By.CSS_SELECTOR, 'svg[data-chart="budgets"] rect.consumed')
    assert len(budgets) == 3
    used = [float(b.get_attribute("data-value")) for b in budgets]
    assert used == [40 * 8 * 1024, 5 * 8 * 8192, 0]
    widths = [b.size["width"] for b in budgets]
    planned = chromium.find_elements(By.CSS_SELECTOR, 'svg[data-chart="budgets"] rect.planned')
    assert widths[0] == pytest.approx(planned[0].size["width"], abs=1) and 0 < widths[1] < planned[1].size["width"]
    assert widths[2] == 0

    loss = chromium.find_element(By.CSS_SELECTOR, 'svg[data-chart="loss"] path.series')
    assert loss.get_attribute("data-points") == "45"
    tput = chromium.find_element(By.CSS_SELECTOR, 'svg[data-chart="throughput"] path.series')
    assert int(tput.get_attribute("data-points")) == 44
    kpi = chromium.find_element(By.CSS_SELECTOR, '[data-kpi="tokens / s"] .v').text
    assert kpi.endswith("K") and 60 < float(kpi[:-1]) < 140  # last 10 reports: 8 Ki then 64 Ki tokens / 0.5 s
    assert chromium.find_element(By.CSS_SELECTOR, '[data-kpi="phase"] .v').text == "midtrain"

    lang_bars = chromium.find_elements(By.CSS_SELECTOR, 'svg[data-chart="language-loss"] rect.bar')
    assert len(lang_bars) == 8 and all(b.size["width"] > 0 for b in lang_bars)
    # Mixture: the 6-language pretrain has no tail; decay (all 20) shows its top 10 and the tail bar.
    assert len(chromium.find_elements(By.CSS_SELECTOR, 'svg[data-chart="mixture-pretrain"] rect.bar')) == 6
    decay = chromium.find_elements(By.CSS_SELECTOR, 'svg[data-chart="mixture-decay:uniform"] rect.bar')
    assert len(decay) == 11 and decay[-1].get_attribute("fill") == "#a9b4c2"
    assert len(chromium.find_elements(By.CSS_SELECTOR, 'svg[data-chart="epochs-decay:uniform"] circle.pt')) == 20
    # The variant not served by default is shown too.
    assert len(chromium.find_elements(By.CSS_SELECTOR, 'svg[data-chart="mixture-decay:top6"] rect.bar')) == 6
    assert "?variant=top6" in chromium.find_element(By.ID, "mixtures").text
    # Over-sampled languages (epochs > 5) are drawn red, and the phase says so.
    hot = chromium.find_elements(By.CSS_SELECTOR, "svg[data-chart='epochs-decay:uniform'] circle.hot")
    assert len(hot) >= 1 and all(c.get_attribute("fill") == "#c0392b" for c in hot)
    assert not chromium.find_elements(By.CSS_SELECTOR, "svg[data-chart='epochs-pretrain'] circle.hot")
    assert "repeated more than 5 epochs" in chromium.find_element(By.ID, "mixtures").text
    # No amendments: the list says so and nothing is marked.
    assert chromium.find_element(By.ID, "amendments-none").text == "none"
    assert not chromium.find_elements(By.CSS_SELECTOR, "[data-amendment], .original-budget, .orig-share, [data-amended]")

    # Live refresh: a new report shows up without reloading the page.
    httpx.post(dashboard_url + "/v1/progress", json={"step": 46, "tokens": 10**6, "loss": 2.5},
               headers={"Authorization": f"Bearer {TOKEN}"})
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-kpi="step"] .v').text == "46")

    shot = tmp_path / "dashboard.png"
    assert chromium.save_screenshot(str(shot))
    assert shot.stat().st_size > 30_000


def test_dashboard_marks_amendments(amended_url, chromium, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    dash = httpx.get(amended_url + "/v1/dashboard", headers=AUTH).json()
    journal = dash["amendments"]
    assert [a["phase"] for a in journal] == ["midtrain", "midtrain"] and dash["original_phases"] is not None

    chromium.get(f"{amended_url}/?token={TOKEN}&refresh=500")
    wait = WebDriverWait(chromium, 20, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, 'svg[data-chart="budgets"] g.amendment-marker')))
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, 'svg[data-chart="loss"] path.series')))
    wait.until(lambda d: d.find_element(By.ID, "ready").text == "ready")
    css = chromium.find_elements

    # Budgets: one marker per amendment, labelled, placed on the run's token axis in order.
    marks = css(By.CSS_SELECTOR, 'svg[data-chart="budgets"] g.amendment-marker')
    assert [m.get_attribute("data-amendment") for m in marks] == ["1", "2"]
    assert [m.find_element(By.CSS_SELECTOR, "text.amend-label").text for m in marks] == ["A1", "A2"]
    assert [int(m.get_attribute("data-tokens-before")) for m in marks] == [a["tokens_before"] for a in journal]
    xs = [m.find_element(By.CSS_SELECTOR, "line.amend-line:not(.phase)").location["x"] for m in marks]
    run = css(By.CSS_SELECTOR, 'svg[data-chart="budgets"] rect.run-phase')
    assert len(run) == 3 and run[1].location["x"] < xs[0] < xs[1] < run[2].location["x"]  # both inside midtrain
    # Each also marks its phase's own row, and its tooltip tells the story.
    assert all(m.find_element(By.CSS_SELECTOR, "line.amend-line.phase").get_attribute("data-phase") == "midtrain" for m in marks)
    tips = [m.find_element(By.XPATH, "./*[local-name()='title']").get_attribute("textContent") for m in marks]
    assert "from step 45" in tips[0] and "midtrain: τ 0.2, languages top 8" in tips[0] and "source: manual" in tips[0]
    assert "source: policy:loss-balance" in tips[1] and "decay: " in tips[1] and "tokens 524K" in tips[1]
    assert "reason: loss-balance: l00_Latn above" in tips[1]
    # Decay's budget grew from 6 to 8 batches: the recipe's budget is the dashed outline, shorter.
    orig = css(By.CSS_SELECTOR, 'svg[data-chart="budgets"] rect.original-budget[data-phase="decay:uniform"]')
    assert len(orig) == 1 and float(orig[0].get_attribute("data-value")) == 6 * 8 * 8192
    planned = css(By.CSS_SELECTOR, 'svg[data-chart="budgets"] rect.planned')
    assert [float(p.get_attribute("data-value")) for p in planned] == [40 * 8 * 1024, 10 * 8 * 8192, 8 * 8 * 8192]
    assert orig[0].size["width"] < planned[2].size["width"] and planned[0].size["width"] == pytest.approx(planned[2].size["width"], abs=1)
    assert len(css(By.CSS_SELECTOR, 'svg[data-chart="budgets"] rect.original-budget')) == 2  # decay + the whole run

    # Mixtures: midtrain carries both badges (A2 also sets decay, whose card carries A2), and the
    # recipe's share of each language is a tick beside its amended bar.
    mid = chromium.find_element(By.CSS_SELECTOR, '#mixtures .card[data-phase="midtrain"]')
    assert [b.text for b in mid.find_elements(By.CSS_SELECTOR, ".amend-badge")] == ["A1"]
    decay = chromium.find_element(By.CSS_SELECTOR, '#mixtures .card[data-phase="decay:uniform"]')
    badge = decay.find_elements(By.CSS_SELECTOR, ".amend-badge")
    assert [b.text for b in badge] == ["A2"] and "policy" in badge[0].get_attribute("class")
    assert not css(By.CSS_SELECTOR, '#mixtures .card[data-phase="pretrain"] .amend-badge')
    assert not css(By.CSS_SELECTOR, '#mixtures .card[data-phase="decay:top6"] [data-amendment]')  # planned from the recipe
    bars = mid.find_elements(By.CSS_SELECTOR, 'svg[data-chart="mixture-midtrain"] rect.bar')
    ticks = mid.find_elements(By.CSS_SELECTOR, 'svg[data-chart="mixture-midtrain"] line.orig-share')
    # The phase as served: its 12 languages before A1 and its top 8 after, summed over both pieces
    # as /v1/mixture and `plan --journal` count them (it showed the last plan's 8 alone): the top
    # 10 and the rest as one bar, a tick for each of them that was among the recipe's top 10.
    assert len(bars) == 11 and 8 <= len(ticks) <= 10
    mixture = {r["language"]: r["weight"] for r in httpx.get(amended_url + "/v1/mixture", params={"phase": "midtrain"},
                                                               headers=AUTH).json()["languages"]}
    top = {r["language"]: r["weight"] for r in dash["phases"][1]["top"]}
    assert len(top) == 10 and all(top[k] == pytest.approx(mixture[k]) for k in top)
    orig_mid = {r["language"]: r["weight"] for r in dash["original_phases"][1]["top"]}
    for t in ticks:
        assert float(t.get_attribute("data-value")) == pytest.approx(orig_mid[t.get_attribute("data-language")])
    assert "recipe: 12 languages · τ 0.5" in mid.find_element(By.CSS_SELECTOR, ".amend-note").text
    # τ 0.5 → 0.2 flattens the mixture: the largest language's bar is now shorter than its tick.
    first_tick = next(t for t in ticks if t.get_attribute("data-language") == bars[0].get_attribute("data-language"))
    assert bars[0].size["width"] + bars[0].location["x"] < first_tick.location["x"]

    # The list: one row per amendment with its step, phase, source, reason and changes.
    rows = css(By.CSS_SELECTOR, "#amendments tr[data-amendment]")
    assert [r.get_attribute("data-amendment") for r in rows] == ["1", "2"]
    cells = [{c: r.find_element(By.CSS_SELECTOR, "td." + c).text for c in ("index", "from-step", "phase", "source", "reason", "changes")}
             for r in rows]
    assert cells[0] == {"index": "A1", "from-step": "45", "phase": "midtrain", "source": "manual",
                        "reason": "more of the tail", "changes": "midtrain: τ 0.2, languages top 8"}
    assert cells[1]["source"] == "policy:loss-balance" and cells[1]["from-step"] == "47"
    assert cells[1]["changes"] == "decay: weights l09_Latn×0.6, l00_Latn×1.2, tokens 524K"
    assert not css(By.ID, "amendments-none")

    # A new amendment while the page is open is drawn without a reload.
    r = httpx.post(amended_url + "/v1/amendments", headers=AUTH, json={
        "from_step": 48, "changes": {"decay": {"tau": 0.1}}, "reason": "sharper decay", "source": "cli"})
    assert r.status_code == 201, r.text
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, 'svg[data-chart="budgets"] g.amendment-marker')) == 3)
    wait.until(lambda d: [b.text for b in d.find_elements(By.CSS_SELECTOR, '#mixtures .card[data-phase="decay:uniform"] .amend-badge')]
               == ["A2", "A3"])
    assert len(css(By.CSS_SELECTOR, "#amendments tr[data-amendment]")) == 3
    assert chromium.execute_script("return document.body.dataset.amendments") == "3"

    shot = tmp_path / "dashboard-amended.png"
    assert chromium.save_screenshot(str(shot))
    assert shot.stat().st_size > 30_000


def test_api_docs_render_with_no_network(tmp_path, chromium):
    """/docs draws every route from files the server itself serves (FastAPI's page took Swagger UI
    from a CDN: blank on an air-gapped cluster; the browser here resolves no host name)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(settings_for(make_corpus(tmp_path / "m"), write_recipe(tmp_path / "recipe.toml", RECIPE), warmup=False))
    with live_server(app) as url:
        chromium.get(url + "/docs")
        WebDriverWait(chromium, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 8)
        paths = {e.text.replace("\u200b", "") for e in chromium.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/v1/batches/{step}", "/v1/stream", "/v1/amendments", "/healthz"} <= paths
        assert chromium.find_element(By.CSS_SELECTOR, ".info .title").text.startswith("language-curriculum sampler")

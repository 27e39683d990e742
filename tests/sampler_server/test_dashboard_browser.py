"""The dashboard in a real headless Chromium against a real server: charts drawn from live data."""

from __future__ import annotations

import math
import time

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


@pytest.fixture
def dashboard_url(tmp_path):
    manifest = make_corpus(tmp_path / "m")
    recipe = write_recipe(tmp_path / "recipe.toml", DASH_RECIPE)
    app = create_app(settings_for(manifest, recipe, warmup=False, token=TOKEN))
    with live_server(app) as url:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        langs = [x["language"] for x in httpx.get(url + "/v1/mixture?phase=midtrain", headers=auth).json()["languages"]]
        # A trainer 44 steps in (pretrain done, midtrain under way), ~50k tokens/s, loss falling.
        tokens, t0 = 0, time.time() - 30
        for step in range(0, 45):
            tokens += 8 * 1024 if step < 40 else 8 * 8192
            report = {"step": step, "tokens": tokens, "time": t0 + step * 0.5,
                      "loss": 10.0 * math.exp(-step / 20) + 2.0,
                      "loss_by_language": {k: 2.0 + 0.3 * i + 5 * math.exp(-step / 15) for i, k in enumerate(langs[:8])}}
            assert httpx.post(url + "/v1/progress", json=report, headers=auth).status_code == 201
        yield url


def test_dashboard_renders_live_data(dashboard_url, chromium, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    chromium.get(f"{dashboard_url}/?token={TOKEN}&refresh=500")
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

    # Live refresh: a new report shows up without reloading the page.
    httpx.post(dashboard_url + "/v1/progress", json={"step": 46, "tokens": 10**6, "loss": 2.5},
               headers={"Authorization": f"Bearer {TOKEN}"})
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-kpi="step"] .v').text == "46")

    shot = tmp_path / "dashboard.png"
    assert chromium.save_screenshot(str(shot))
    assert shot.stat().st_size > 30_000

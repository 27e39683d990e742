"""The plan's HTML report opens in headless Chromium, offline, with its charts drawn."""

from __future__ import annotations

from conftest import RECIPES, run_cli


def test_report_renders_in_chromium(synth_1833, tmp_path, chromium):
    from selenium.webdriver.common.by import By

    html = tmp_path / "report.html"
    run_cli("plan", str(RECIPES / "mmbert.toml"), "--manifest", str(synth_1833), "--html", str(html))
    chromium.get(html.as_uri())
    charts = chromium.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 11  # budgets + (mixture, epochs) x (pretrain, midtrain, 3 decay variants)
    ids = {c.get_attribute("data-chart") for c in charts}
    assert {"budgets", "mixture-pretrain", "mixture-decay:all", "mixture-decay:eng", "epochs-decay:all"} <= ids
    # Bars have real, positive sizes once laid out (the browser drew them).
    bars = chromium.find_elements(By.CSS_SELECTOR, 'svg[data-chart="mixture-decay:all"] rect.bar')
    assert len(bars) == 16  # top 15 + the tail bar
    assert all(b.size["width"] > 0 for b in bars)
    points = chromium.find_elements(By.CSS_SELECTOR, 'svg[data-chart="epochs-decay:all"] circle.pt')
    assert len(points) == 1833
    rows = chromium.find_elements(By.CSS_SELECTOR, "#summary tr")
    assert len(rows) == 6
    shot = tmp_path / "report.png"
    assert chromium.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000  # a blank page is a few KB

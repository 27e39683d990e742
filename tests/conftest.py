"""Shared fixtures: paths, the CLI runner, a headless Chromium driver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "manifests" / "recipes"
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")


def run_cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m curriculum.cli ARGS` as a user would, capturing output."""
    proc = subprocess.run(
        [sys.executable, "-m", "curriculum.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"curriculum {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def synth_1833(tmp_path_factory) -> Path:
    """The full-scale synthetic manifest: 1,833 languages, 3T tokens."""
    out = tmp_path_factory.mktemp("synth") / "m1833"
    run_cli("synth", "--languages", "1833", "--total-tokens", "3e12", "--out", str(out))
    return out


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium (Debian's chromium + chromium-driver) driven by selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(binary).exists() and Path(driver_path).exists()):
        pytest.fail("chromium / chromedriver missing: run `make system-deps` (installs Debian's chromium + chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1400,2000",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        yield driver
    finally:
        driver.quit()

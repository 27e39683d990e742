"""Shared fixtures: paths, the CLI runner, a headless Chromium driver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
# Property tests draw the same examples on every run and machine (a failure reproduces), and write
# no example database into the working tree. Tests may still widen or narrow their own settings.
settings.register_profile("project", derandomize=True, database=None)
settings.load_profile("project")
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
        # No host name resolves but 127.0.0.1: a page that needs anything from outside fails here
        # as it would on an air-gapped cluster, whether or not this machine has a network.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1400,2000",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory) -> Path:
    """A byte-level BPE (vocab 4,000) trained offline on the demo corpus text."""
    from curriculum.democorpus import demo_documents
    from curriculum.tokenize import train_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    texts = [t for docs in demo_documents().values() for t in docs]
    train_tokenizer(texts, 4000, path)
    return path


def write_text_corpus(root: Path, n_files: int, docs_per_file: int, seed: int = 0) -> Path:
    """FineWeb-2-style Parquet folders of real sentences (gflanguages) shuffled into distinct
    documents, plus one unlabeled JSONL.zst: enough volume for multi-task builds."""
    import json as _json

    import numpy as np
    import polars as pl
    import zstandard

    from curriculum.democorpus import demo_documents

    rng = np.random.default_rng(seed)
    docs = demo_documents()
    langs = ["fra_Latn", "deu_Latn", "rus_Cyrl", "spa_Latn", "ita_Latn", "pol_Latn"]
    for i in range(n_files):
        lang = langs[i % len(langs)]
        words = " ".join(docs[lang]).split()
        texts = [" ".join(rng.choice(words, size=int(rng.integers(30, 120)))) for _ in range(docs_per_file)]
        d = root / lang / "train"
        d.mkdir(parents=True, exist_ok=True)
        pl.DataFrame({"text": texts}).write_parquet(d / f"{i:04d}.parquet")
    # Exact duplicates across files: the first copies of file 0 repeated in a later file.
    first = pl.read_parquet(root / langs[0] / "train" / "0000.parquet")["text"].head(5).to_list()
    pl.DataFrame({"text": first}).write_parquet(root / langs[0] / "train" / "9999.parquet")
    u = root / "unlabeled"
    u.mkdir(exist_ok=True)
    lines = "".join(_json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs["ukr_Cyrl"] + docs["ell_Grek"])
    (u / "mixed.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    return root


class S3:
    """A bucket on the test S3 server: `uri(prefix)` is how the project addresses it."""

    def __init__(self, port: int, client, bucket: str):
        self.port, self.client, self.bucket = port, client, bucket

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}?endpoint_override=127.0.0.1:{self.port}&scheme=http"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (a free port), fake credentials in the environment (inherited
    by CLI subprocesses), one bucket; stopped at the end."""
    import uuid

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        assert host == "127.0.0.1"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
            bucket = f"shards-{uuid.uuid4().hex[:8]}"
            client.create_bucket(Bucket=bucket)
            yield S3(port, client, bucket)
    finally:
        server.stop()


# mmBERT's three phases scaled to a small random-token corpus (8-sequence batches; 1,024 → 8,192).
SCALED_MMBERT = {
    "name": "mmbert-scaled",
    "phases": [
        {"name": "pretrain", "tokens": 40 * 8 * 1024, "batch_tokens": 8 * 1024, "seq_len": 1024,
         "languages": {"top": 6}, "tau": 0.7, "mask_ratio": 0.3},
        {"name": "midtrain", "tokens": 10 * 8 * 8192, "batch_tokens": 8 * 8192, "seq_len": 8192,
         "languages": {"top": 12}, "tau": 0.5, "mask_ratio": 0.15},
        {"name": "decay", "tokens": 6 * 8 * 8192, "batch_tokens": 8 * 8192, "seq_len": 8192,
         "languages": "all", "tau": 0.3, "mask_ratio": 0.05, "lr": {"decay": "inv_sqrt", "final_factor": 0.02}},
    ],
}

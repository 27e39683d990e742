"""Real tokenizers fetched offline from a package registry into a git-ignored cache.

The PyPI wheel `maxtext==0.2.5` (Apache-2.0) ships two tokenizers this project tests and
benchmarks with:
- Gemma 2's SentencePiece model `tokenizer.gemma` (the mmBERT tokenizer: BPE, 256,000 pieces).
  Licence: the Gemma Terms of Use (https://ai.google.dev/gemma/terms), not Apache. This module
  fetches it onto the user's machine from the registry; the project never commits or redistributes
  it, and a built manifest records only its hash.
- Qwen3's HF `tokenizer.json` (byte-level BPE, 151,669 ids; Apache-2.0), for the HF path.

The wheel says Python >= 3.12, so it is downloaded without installing (`pip download --no-deps
--python-version 3.12 --only-binary=:all:`), and only the wanted members are read from it (a wheel
is a zip). Every file is checked against a pinned size and sha256 and written atomically (temp
file + rename), so concurrent first uses (test workers, build processes) are safe.

Cache folder: the `cache_dir` argument, else `$CURRICULUM_CACHE/assets`, else `<repo>/.cache/assets`
in a source checkout (git-ignored), else `~/.cache/curriculum/assets`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from curriculum.errors import CurriculumError
from curriculum.tokenize import write_file_atomic

MAXTEXT_REQUIREMENT = "maxtext==0.2.5"
PIP_TIMEOUT_S = 600


class AssetError(CurriculumError):
    """A pinned asset could not be fetched or failed its checksum."""


@dataclass(frozen=True)
class Asset:
    """One file inside the maxtext wheel, pinned by size and sha256."""

    name: str  # file name in the cache
    member: str  # path inside the wheel
    size: int
    sha256: str


GEMMA2 = Asset(
    name="tokenizer.gemma",
    member="maxtext/assets/tokenizers/tokenizer.gemma",
    size=4_241_003,
    sha256="61a7b147390c64585d6c3543dd6fc636906c9af3865a5548f27f31aee1d4c8e2",
)
QWEN3 = Asset(
    name="qwen3-tokenizer.json",
    member="maxtext/assets/tokenizers/qwen3-tokenizer/tokenizer.json",
    size=11_422_654,
    sha256="aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
)
ASSETS = (GEMMA2, QWEN3)


def default_cache_dir() -> Path:
    """The assets folder used when no `cache_dir` is given (see the module docstring)."""
    env = os.environ.get("CURRICULUM_CACHE")
    if env:
        return Path(env).expanduser() / "assets"
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file():  # a source checkout: `.cache/` is git-ignored
        return repo / ".cache" / "assets"
    return Path.home() / ".cache" / "curriculum" / "assets"


def gemma2_tokenizer_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of Gemma 2's SentencePiece `tokenizer.gemma`, fetched on first use."""
    return ensure_asset(GEMMA2, cache_dir)


def qwen3_tokenizer_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of Qwen3's HF `tokenizer.json`, fetched on first use."""
    return ensure_asset(QWEN3, cache_dir)


def ensure_asset(asset: Asset, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the cached, verified file of `asset`, downloading the wheel if it is missing or bad."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / asset.name
    if _matches(path, asset):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="maxtext-wheel-", dir=folder) as tmp:
        wheel = _download_wheel(Path(tmp), asset)
        # One download serves every pinned asset: fill in the others that are missing too.
        with zipfile.ZipFile(wheel) as zf:
            for other in ASSETS:
                if other is asset or not _matches(folder / other.name, other):
                    _extract(zf, wheel, other, folder / other.name)
    return path


def _matches(path: Path, asset: Asset) -> bool:
    try:
        if path.stat().st_size != asset.size:
            return False
    except FileNotFoundError:
        return False
    return _sha256_file(path) == asset.sha256


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_wheel(dest: Path, asset: Asset) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.12",
        "--only-binary=:all:", "--disable-pip-version-check", "--quiet", "-d", str(dest), MAXTEXT_REQUIREMENT,
    ]
    hint = (
        f"without registry access, get {asset.name} another way and pass it with --tokenizer PATH "
        f"(or copy it to {dest.parent / asset.name}, where it is checked against sha256 {asset.sha256})"
    )
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AssetError(f"fetching {asset.name}: `{' '.join(cmd)}` failed ({exc}); {hint}") from exc
    wheels = sorted(dest.glob("maxtext-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise AssetError(
            f"fetching {asset.name}: pip could not download {MAXTEXT_REQUIREMENT} from the package registry "
            f"(exit {proc.returncode}: {' | '.join(tail) or 'no output'}); {hint}"
        )
    return wheels[0]


def _extract(zf: zipfile.ZipFile, wheel: Path, asset: Asset, path: Path) -> None:
    try:
        data = zf.read(asset.member)
    except KeyError as exc:
        raise AssetError(f"{wheel.name}: no member {asset.member}; the pinned wheel changed, pass --tokenizer PATH") from exc
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != asset.size or digest != asset.sha256:
        raise AssetError(
            f"{wheel.name}:{asset.member}: {len(data):,} bytes, sha256 {digest}; expected {asset.size:,} bytes, "
            f"sha256 {asset.sha256}. Refusing to use it; pass a trusted copy with --tokenizer PATH"
        )
    write_file_atomic(path, data)  # temp + rename, mode 0644: other users of the cache read it

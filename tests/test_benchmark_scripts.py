"""The benchmark scripts compile (they run only under `make bench`, not in this suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_script_compiles(path: Path):
    # A `global` after the name's first use in a function is a SyntaxError only at compile time:
    # `make bench` stopped there while every test passed.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an invalid escape in a docstring is a warning today, an error tomorrow
        compile(path.read_text(encoding="utf-8"), str(path), "exec")

"""Reading a user's CSV (published counts, FineWeb-2's statistics): one line naming the flag and file."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from curriculum.errors import CurriculumError


def read_user_csv(path: str | Path, flag: str, expected: str) -> pl.DataFrame:
    """The CSV at `path`; CurriculumError naming `flag` when it is missing or not readable as CSV."""
    if not Path(path).is_file():
        raise CurriculumError(f"{flag} {path}: no such file; give {expected}")
    try:
        return pl.read_csv(path)
    except (pl.exceptions.PolarsError, UnicodeDecodeError, OSError) as exc:
        raise CurriculumError(f"{flag} {path}: not a readable CSV ({str(exc).splitlines()[0][:200]})") from None

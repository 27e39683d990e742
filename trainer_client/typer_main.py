"""Running a typer app as a console script: click's plain usage errors, exit codes passed through.

typer draws a rich box around a usage error in standalone mode; run without it, a usage error is
raised to the caller, which prints click's plain lines here. Shared by `trainer-client` and
`sampler-server` (this package is the one both may import: it needs neither numba nor FastAPI).
"""

from __future__ import annotations

import sys
from typing import Any


def run_app(app: Any, args: list[str] | None = None) -> None:
    """Run `app` and exit with its code; Ctrl-C exits 130, a usage error prints click's lines."""
    try:
        rc = app(args=args, standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - usage errors only; the rest re-raised
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":  # Ctrl-C as click reports it
            sys.exit(130)
        raise

"""Permissions of the files the project writes atomically (temp file + rename).

`tempfile.mkstemp` creates its file 0600 whatever the umask, and a rename keeps that: shards,
manifests and tokenizers came out readable by their owner only, so a sampler or trainer running
as another user (or over NFS) could not read the corpus. A file written here gets the mode an
ordinary `open(path, "w")` would give it: 0666 less the process's umask.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    try:  # Linux 4.7+: read it without changing it (os.umask sets it, racing other threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(fd: int) -> None:
    """Give a file made by mkstemp the mode `open()` would have given it (0666 & ~umask)."""
    os.fchmod(fd, 0o666 & ~_umask())


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """`write(tmp)` to a fresh temp file beside `path` (mkstemp: an unpredictable name, created
    exclusively, so nobody can plant a symlink there), shared as `open()` would, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    share(fd)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

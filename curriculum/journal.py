"""The amendment journal: an append-only JSONL file beside the recipe, and the served-step watermark.

`<recipe>.amendments.jsonl` holds one amendment per line. Appends are single `write` calls on an
O_APPEND descriptor followed by fsync, made under an exclusive `flock` of `<journal>.lock`, so a
line is either wholly there or (after a crash mid-write) a torn tail without its newline, which
readers ignore and the next append cuts off.

`<journal>.watermark` holds the highest step any replica has served or any trainer reported,
`<journal>.run` the run the journal belongs to (manifest + recipe + seed; see `claim`), and
`<journal>.policy` which replica runs the feedback policy (a lease; see `hold_policy`).
The protocol that keeps replicas from ever serving a step >= an amendment's `from_step` with
the old bytes:
- a replica, before it first serves a step above its own watermark, takes the lock, raises the
  shared watermark to that step and re-reads the journal (`publish`), and applies what it read
  before serving;
- an amendment is admitted only under the same lock, and only when its `from_step` is above the
  shared watermark (`append`).
So every admitted amendment starts after every step any replica served without it; a replica
that has published step s has seen every amendment that could touch s. Steps at or below a
replica's own watermark need no check: amendments admitted after its publish start above it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from curriculum.amend import Amendment, AmendmentConflict, AmendmentError, parse_amendment
from curriculum.fileperm import atomic_write
from curriculum.errors import CurriculumError

SUFFIX = ".amendments.jsonl"


class JournalOwnerError(CurriculumError):
    """The journal belongs to another run (another manifest, recipe or seed)."""


def owner_refusal(where: str, theirs: dict, owner: str, about: str, reset: str, amendments: int) -> JournalOwnerError:
    held = (f"it holds {amendments} amendment(s) of that run, and its served steps" if amendments else
            "it holds no amendment, only that run's served steps, so resetting it loses nothing")
    return JournalOwnerError(
        f"amendment journal {where} belongs to another run ({theirs.get('run') or theirs.get('owner')}); this server "
        f"runs {about}. The journal is bound to one run ({held}): give each run its own journal (--journal "
        f"PATH), or, if that run is over, {reset} to start this run's journal empty")


def earliest_step(watermark: int, entries: list[Amendment]) -> int:
    """The smallest `from_step` admissible after `entries` with `watermark` served."""
    return max(watermark + 1, entries[-1].from_step if entries else 0)


def admissible(a: Amendment, watermark: int, entries: list[Amendment]) -> None:
    """Raise AmendmentConflict (with the earliest allowed step) unless `a` may join `entries`."""
    earliest = earliest_step(watermark, entries)
    if a.from_step < earliest:
        why = (f"step {watermark} has already been served or reported" if watermark + 1 == earliest
               else f"the journal's last entry starts at step {earliest}")
        raise AmendmentConflict(
            f"from_step {a.from_step} is too early: {why}; the earliest allowed from_step is {earliest}", earliest)


class JournalLocationError(CurriculumError):
    """A journal location no journal can live at (a URI other than s3://)."""


def journal_location(location: str | Path) -> str | Path:
    """`location` as a journal can live there: an `s3://` URI as given, a file path (a `file://`
    URI becomes its path). Any other URI is refused: appends need a filesystem's locks or S3's
    conditional writes (a `gs://` one became a local folder named `gs:` in the working directory)."""
    from curriculum import storage

    if isinstance(location, Path) or not storage.is_uri(location):
        return Path(location)
    if str(location).lower().startswith("s3://"):
        return str(location)
    if not storage.is_remote(location):
        return storage.local_path(location)
    raise JournalLocationError(f"amendment journal {storage.display(location)}: only a file (on a filesystem every "
                               "replica shares) or an s3:// object can hold the journal; pass --journal FILE or "
                               "--journal s3://bucket/key")


def open_any(location: str | Path):
    """A journal by location: `s3://bucket/key?...` (curriculum.journal_s3) or a file."""
    where = journal_location(location)
    if isinstance(where, str):
        from curriculum.journal_s3 import ObjectJournal

        return ObjectJournal(where)
    return Journal(where)


def journal_beside(recipe: str | Path) -> Path:
    """The default journal path of a recipe: `mmbert.toml` → `mmbert.amendments.jsonl`."""
    p = Path(recipe)
    return p.with_name(p.stem + SUFFIX)


class Journal:
    """One journal file; `entries` is what was last read (call `refresh`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise CurriculumError(f"amendment journal {self.path}: is a directory; give the path of a file, e.g. "
                                  f"{self.path / ('run' + SUFFIX)}")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.watermark_path = self.path.with_name(self.path.name + ".watermark")
        self.entries: list[Amendment] = []
        self._sig: tuple | None = None
        self._offset = 0  # bytes of complete lines read
        self._lines = 0
        self._tail = b""  # the last (up to) 4 KiB before _offset
        self.refresh()

    @property
    def version(self) -> int:
        """Number of entries read (the journal version)."""
        return len(self.entries)

    # -- reading --------------------------------------------------------------------------

    def _signature(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def refresh(self) -> bool:
        """Re-read the file if it changed since the last read; True when it did. An append
        (same file, grown) is read from where the last read stopped: O(new lines)."""
        sig = self._signature()
        if sig == self._sig:
            return False
        old = self._sig
        if old is not None and sig is not None and sig[0] == old[0] and sig[1] >= self._offset and self._tail_intact():
            new, self._offset, self._lines = self._parse(self._offset, self._lines)
            self.entries = [*self.entries, *new]
        else:  # a new file, or one edited rather than appended to: read it all
            self.entries, self._offset, self._lines = self._parse(0, 0)
        self._sig = sig
        return True

    def _tail_intact(self) -> bool:
        """The last line read is still where it was (cheap guard against an in-place edit)."""
        if self._offset == 0:
            return True
        start = max(0, self._offset - 4096)
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                return f.read(self._offset - start) == self._tail
        except FileNotFoundError:
            return False

    def read(self) -> list[Amendment]:
        """Every complete entry; a bad line is an AmendmentError naming file and line."""
        return self._parse(0, 0)[0]

    def _parse(self, offset: int, lines_before: int) -> tuple[list[Amendment], int, int]:
        """Complete entries from byte `offset` on, the offset after the last complete line, and
        the number of lines up to it."""
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], 0, 0
        end = data.rfind(b"\n") + 1  # a last piece without its newline is torn (or being written)
        out = []
        lines = data[:end].split(b"\n")[:-1]
        for n, line in enumerate(lines, lines_before + 1):
            if not line.strip():
                continue
            try:
                out.append(parse_amendment(line, f"journal {self.path}, line {n}"))
            except AmendmentError as exc:
                raise AmendmentError(f"{exc}; fix or remove that line (the journal is plain JSONL)", exc.fields) from None
        new_offset = offset + end
        if end:  # remember the bytes before the new offset, for `_tail_intact`
            start = max(0, new_offset - 4096)
            self._tail = (data[start - offset : end] if start >= offset
                          else self._tail[len(self._tail) - (offset - start):] + data[:end])
        return out, new_offset, lines_before + len(lines)

    # -- the owner, the lock and the watermark ---------------------------------------------

    @property
    def run_path(self) -> Path:
        return self.path.with_name(self.path.name + ".run")

    def run_record(self) -> dict | None:
        """What the server that bound the journal recorded (`claim`): owner, run, and the manifest
        ({"root", "fingerprint"}) for `curriculum amend` to check against; None before any server."""
        try:
            rec = json.loads(self.run_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def claim(self, owner: str, about: str, manifest: dict | None = None) -> None:
        """Bind the journal to one run: the first server to open it records `owner` (the hash of
        manifest + recipe + seed) and `about` (the same in words); a server of another run is
        refused (JournalOwnerError). Runs that share a recipe file would otherwise share the
        journal beside it, and a new run would inherit the last run's amendments and served steps.
        A journal from before `.run` files existed is adopted by the first server to open it."""
        with self.locked():
            try:
                theirs = json.loads(self.run_path.read_text())
            except FileNotFoundError:
                _write_json(self.run_path, {"owner": owner, "run": about, **({"manifest": manifest} if manifest else {})})
                return
            except ValueError:
                theirs = {"owner": None, "run": f"unreadable {self.run_path}"}
            if isinstance(theirs, dict) and theirs.get("owner") == owner and manifest and theirs.get("manifest") != manifest:
                _write_json(self.run_path, {**theirs, "manifest": manifest})  # recorded before the field, or moved
            if not isinstance(theirs, dict) or theirs.get("owner") != owner:
                theirs = theirs if isinstance(theirs, dict) else {"run": f"unreadable {self.run_path}"}
                self.refresh()
                raise owner_refusal(str(self.path), theirs, owner, about,
                                    "delete it and its side files (rm -f " + " ".join(shlex.quote(str(self.path) + x) for x in
                                    ("", ".watermark", ".run", ".lock", ".policy")) + ")", len(self.entries))

    @property
    def policy_path(self) -> Path:
        return self.path.with_name(self.path.name + ".policy")

    def hold_policy(self, holder: str, ttl: float) -> dict | None:
        """Take or renew the lease on running the feedback policy: None when `holder` holds it
        now, else the record of the replica that does (renewed less than `ttl` seconds ago).
        Replicas started alike all ask; one runs the policy, and another takes over `ttl` after
        it stops renewing (it died, or progress reports stopped reaching it)."""
        with self.locked():
            try:
                theirs = json.loads(self.policy_path.read_text())
            except (FileNotFoundError, ValueError):
                theirs = None
            return lease(theirs, holder, ttl, lambda rec: _write_json(self.policy_path, rec))

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def watermark(self) -> int:
        """Highest step served or reported so far (-1: none)."""
        try:
            text = self.watermark_path.read_text().strip()
        except FileNotFoundError:
            return -1
        try:
            return int(text)
        except ValueError:
            raise AmendmentError(f"watermark file {self.watermark_path}: {text[:40]!r} is not a step; "
                                 "delete it only if no trainer has started") from None

    def publish(self, step: int) -> bool:
        """Raise the shared watermark to `step` and re-read the journal, atomically with respect
        to `append`. True when the journal changed (apply `entries` before serving `step`)."""
        with self.locked():
            if step > self.watermark():
                atomic_write(self.watermark_path, lambda p: Path(p).write_text(f"{int(step)}\n"))
            return self.refresh()

    def earliest_step(self) -> int:
        """The smallest `from_step` an amendment may have now."""
        return earliest_step(self.watermark(), self.entries)

    # -- appending ------------------------------------------------------------------------

    def append(self, amendment: Amendment, check: Callable[[list[Amendment]], None] | None = None) -> Amendment:
        """Admit `amendment` (stamped with created_at) after `check(entries + [it])` passes.
        Raises AmendmentConflict (with the earliest allowed step) when it starts at or before a
        served step or before the last entry; the file is untouched by any refusal."""
        a = amendment.stamped()
        with self.locked():
            self.refresh()
            admissible(a, self.watermark(), self.entries)
            if check is not None:
                check([*self.entries, a])
            line = (a.model_dump_json(exclude_none=True) + "\n").encode()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                _cut_torn_tail(fd)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self.path.parent)
            self.refresh()
        return a


def lease(theirs: object, holder: str, ttl: float, write: Callable[[dict], None]) -> dict | None:
    """The lease rule, for both journal kinds: `theirs` (the stored record, if any) stands while
    it is another holder's and fresh; otherwise `holder` takes it (`write`) and None is returned."""
    now = time.time()
    if isinstance(theirs, dict) and theirs.get("holder") != holder:
        try:
            if now - float(theirs.get("seen", 0)) < ttl:
                return theirs
        except (TypeError, ValueError):
            pass  # an unreadable record does not hold the lease
    write({"holder": holder, "seen": now})
    return None


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(data) + "\n"))


def _cut_torn_tail(fd: int) -> None:
    """Drop a last line without its newline (a write cut short by a crash)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) == b"\n":
        return
    block = min(size, 1 << 20)
    tail = os.pread(fd, block, size - block)
    cut = tail.rfind(b"\n")
    os.ftruncate(fd, 0 if cut < 0 else size - block + cut + 1)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

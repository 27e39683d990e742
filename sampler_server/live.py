"""The live curriculum on a server: the journal, the served-step watermark, and the samplers'
amended state kept in step with both.

Guarantee (with `curriculum.journal`'s protocol): this replica never serves a step >= an
amendment's `from_step` with the bytes of the run without it.
- `ensure(step, upto)`: before the first request for a step above this replica's watermark,
  publish that step (or `upto`, the end of a /v1/stream window the replica is about to serve) to
  the shared watermark under the journal lock and apply any journal change. Steps at or below
  it need nothing: amendments admitted since start above it.
- If another thread is applying a journal change and the step needs the new state, the request
  gets `Behind` (HTTP 503, retryable) instead of queueing behind it.
- A poller (`sync`, every `poll` seconds) applies journal changes made by other replicas or by
  `curriculum amend` ahead of time, so a trainer reaching `from_step` finds the new state ready.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


from curriculum.amend import Amendment, AmendmentError, resolve_current
from curriculum.journal import Journal
from sampler_server.sampler import Sampler

log = logging.getLogger("sampler_server.live")

APPLY_WAIT = 0.25  # seconds a request waits for an in-progress journal apply before a 503
WARM_STEPS = 64  # `warm`: start on the next phase's stream bases this many steps before it (at least)
WARM_FRACTION = 0.02  # ... or this fraction of the phase, if longer


class Behind(Exception):
    """This replica has not applied the journal version a step needs yet (retry shortly)."""

    def __init__(self, message: str, version: int):
        super().__init__(message)
        self.version = version


class JournalBroken(Exception):
    """The journal on disk cannot be applied (edited by hand?); the message says which entry."""


class JournalUnavailable(Exception):
    """The journal cannot be read or written now (its object store is down, a disk error):
    retryable; steps this replica has published already are still served."""


@contextmanager
def _journal_io(live: "Live") -> Iterator[None]:
    """Journal reads and writes: a store or disk failure becomes JournalUnavailable (a 503 to
    retry, /readyz false) instead of a 500 with a traceback per request."""
    from curriculum.journal_s3 import JournalStoreError

    try:
        yield
    except (JournalStoreError, OSError) as exc:
        live.unavailable = f"amendment journal {getattr(live.journal, 'path', '?')} is unreachable: {exc}"
        log.warning("%s", live.unavailable)
        raise JournalUnavailable(live.unavailable) from None
    live.unavailable = None


class Live:
    """One server process's view of the journal; `samplers()` lists every build to keep amended."""

    def __init__(self, journal: Journal | None, samplers: Callable[[], list[Sampler]],
                 on_applied: Callable[[], None] | None = None,
                 check_samplers: Callable[[], list[Sampler]] | None = None):
        self.journal = journal
        self._samplers = samplers
        # What an admission checks (default: `samplers`, the builds made so far). A server with
        # variants passes one that builds every variant: an amendment must apply to all of them.
        self._check_samplers = check_samplers or samplers
        self._on_applied = on_applied
        self._preparing: threading.Thread | None = None
        self._prepare_again = False
        self._warm_phases: set[int] = set()
        self._warmed: set[tuple[int, int]] = set()
        self.prepare_seconds: float | None = None
        self._lock = threading.Lock()  # one journal apply at a time
        self._lock_prepare = threading.Lock()
        self.served = -1  # this replica's watermark (published)
        self.applying = False  # a journal change is being applied (under the lock)
        self.error: str | None = None  # the journal cannot be applied: serving past it is refused
        self.unavailable: str | None = None  # the last journal read or write failed (cleared by the next success)
        self.apply_seconds: float | None = None

    @property
    def enabled(self) -> bool:
        return self.journal is not None

    @property
    def version(self) -> int:
        return self.journal.version if self.journal is not None else 0

    # -- keeping samplers in step ---------------------------------------------------------

    def _apply(self) -> None:
        """Amend every sampler to the journal's entries (lock held)."""
        entries = self.journal.entries
        t0 = time.perf_counter()
        self.applying = True
        try:
            for s in self._samplers():
                if s.journal_version != len(entries) or s.amendments != tuple(entries):
                    s.amend(entries)
        except AmendmentError as exc:
            self.error = f"journal {self.journal.path} cannot be applied: {exc}"
            log.error("%s", self.error)
            raise JournalBroken(self.error) from None
        except Exception as exc:  # not the journal's fault (a full disk, a bug): 503 and /readyz false, not 500s
            self.error = f"journal {self.journal.path} could not be applied here: {type(exc).__name__}: {exc}"
            log.exception("%s", self.error)
            raise JournalBroken(self.error) from None
        finally:
            self.applying = False
        self.error = None
        self.apply_seconds = time.perf_counter() - t0
        log.info("journal version %d applied in %.3f s", len(entries), self.apply_seconds)
        self.prepare_in_background()

    def prepare_in_background(self, phase: int | None = None) -> None:
        """Off the request path: refresh what the dashboard derives from the plans and, with
        `phase`, compute the stream bases of that phase's first piece (see `warm`)."""
        with self._lock_prepare:
            if phase is not None:
                self._warm_phases.add(phase)
            if self._preparing is not None and self._preparing.is_alive():
                self._prepare_again = True
                return
            self._preparing = threading.Thread(target=self._prepare, name="journal-prepare", daemon=True)
            self._preparing.start()

    def _prepare(self) -> None:
        while True:
            t0 = time.perf_counter()
            with self._lock_prepare:
                phases = sorted(self._warm_phases)
                self._warm_phases.clear()
            try:
                if self._on_applied is not None:
                    self._on_applied()
                for s in self._samplers():
                    for p in phases:
                        s.prepare(p)
            except Exception:  # noqa: BLE001 - a failure here only costs the first request its walk
                log.exception("preparing the amended run failed")
            self.prepare_seconds = time.perf_counter() - t0
            with self._lock_prepare:
                if not self._prepare_again:
                    self._preparing = None
                    return
                self._prepare_again = False

    def warm(self, step: int, timeline) -> None:
        """As the run nears the end of a phase (its last WARM_FRACTION, at least WARM_STEPS
        steps), compute the next phase's stream bases in the background: after an amendment, a
        replica that did not serve the rest of the amended piece (restarted, added later) would
        otherwise walk it, up to ~10^9 sequences, on the first request of the next phase."""
        p = bisect.bisect_right(timeline.phase_start, step) - 1
        if p + 1 >= len(timeline.phase_start):
            return
        nxt = timeline.phase_start[p + 1]
        span = max(WARM_STEPS, int(WARM_FRACTION * (nxt - timeline.phase_start[p])))
        key = (self.version, p + 1)
        if nxt - span <= step < nxt and key not in self._warmed:
            self._warmed.add(key)
            self.prepare_in_background(p + 1)

    def sync(self) -> bool:
        """Apply journal changes (poller and admissions); True when something changed."""
        if self.journal is None:
            return False
        with self._lock:
            with _journal_io(self):
                changed = self.journal.refresh()
            if changed or any(s.journal_version != self.journal.version for s in self._samplers()):
                self._apply()
                return True
            return False

    def ensure(self, step: int, upto: int | None = None) -> None:
        """Make serving `step` safe (see the module docstring). Raises Behind or JournalBroken.

        `upto` (>= step): publish up to that step at once, when the caller is about to serve the
        steps in between too (a /v1/stream window): one journal round trip for all of them."""
        if self.journal is None or step <= self.served:
            if self.error is not None and step > self.served:
                raise JournalBroken(self.error)
            return
        # Wait while the lock holder only publishes a step (~0.1 ms of work, but under load its
        # thread may wait for the GIL); answer 503 when it is applying a journal change.
        while not self._lock.acquire(timeout=APPLY_WAIT):
            if self.applying:
                raise Behind(f"this replica is applying a change of the amendment journal; step {step} will be "
                             "served with it in a moment: retry", self.version)
        try:
            if step <= self.served:
                return
            top = max(step, upto if upto is not None else step)
            with _journal_io(self):
                changed = self.journal.publish(top)
            if changed or self.error is not None or any(s.journal_version != self.journal.version for s in self._samplers()):
                self._apply()
            self.served = max(self.served, top)
            if self.version:
                self.warm(step, self._samplers()[0].timeline)
        finally:
            self._lock.release()

    def note_reported(self, step: int) -> None:
        """A trainer reported `step` done: amendments must start after it (raise the watermark)."""
        if self.journal is None or step <= self.served:
            return
        with self._lock:
            if step > self.served:
                with _journal_io(self):
                    changed = self.journal.publish(step)
                if changed:
                    self._apply()
                self.served = step

    # -- admitting ------------------------------------------------------------------------

    def admit(self, amendment: Amendment) -> Amendment:
        """Append `amendment` to the journal after checking that every build can serve the run
        with it, then apply it here. AmendmentConflict (409) / AmendmentError (422) refuse it and
        leave the journal as it was."""
        if self.journal is None:
            raise AmendmentError("this server has no amendment journal (see --journal)")
        samplers = self._check_samplers()
        amendment = resolve_current(amendment, samplers[0].timeline)

        def check(entries: list[Amendment]) -> None:
            for s in samplers:
                try:
                    s.check_amendments(entries)
                except AmendmentError as exc:
                    exc = exc.as_new_entry(len(entries))
                    if s.variant is None:
                        raise exc from None
                    raise AmendmentError(f"variant {s.variant!r}: {exc}", exc.fields) from None

        with _journal_io(self):
            stored = self.journal.append(amendment, check)
        self.sync()
        return stored

    def describe(self) -> dict:
        """The journal as `GET /v1/amendments` shows it."""
        if self.journal is None:
            return {"enabled": False, "journal": None, "version": 0, "amendments": []}
        s = self._samplers()[0]
        entries = list(s.amendments)
        tl = s.timeline
        out = []
        for i, a in enumerate(entries):
            try:
                info = s.schedule(a.from_step)
                where = {"phase": info.phase, "tokens_before": info.tokens_before}
            except Exception:  # noqa: BLE001 - a step past a shortened run still lists
                where = {"phase": None, "tokens_before": None}
            out.append({"index": i + 1, "digest": a.digest(), "build_id": s.build_id_at(a.from_step),
                        **where, **a.model_dump(mode="json", exclude_none=True)})
        with _journal_io(self):
            watermark, earliest = self.journal.watermark(), self.journal.earliest_step()
        return {
            "enabled": True, "journal": str(self.journal.path), "version": self.version, "applied": s.journal_version,
            "watermark": watermark, "earliest_from_step": earliest,
            "total_steps": tl.total_steps, "error": self.error, "amendments": out,
        }


def claim_journal(journal, sampler) -> None:
    """Bind `journal` (if any) to `sampler`'s run; JournalOwnerError when another run holds it."""
    if journal is not None:
        from curriculum import storage

        root = str(sampler.manifest.root)
        # Where `curriculum amend` finds the run's manifest to check an amendment against.
        journal.claim(sampler.journal_owner, sampler.journal_owner_about,
                      {"root": root if storage.is_remote(root) else os.path.abspath(root),
                       "fingerprint": sampler.manifest.fingerprint})


def open_journal(path: str | Path | None, recipe: Path, *, required: bool, manifest: object = None):
    """The journal at `path`: a file (default: beside the recipe) or an `s3://` object (default
    when the manifest is remote: `<manifest>/<recipe stem>.amendments.json`, shared by replicas
    on any host). Without an explicit path, a recipe in a read-only directory runs without live
    amendments (logged)."""
    from curriculum import storage
    from curriculum.journal import journal_beside, journal_location

    if path is None and manifest is not None and storage.is_remote(str(manifest)):
        parts = urlsplit(str(manifest))
        if parts.scheme.lower() != "s3":
            # Replicas of a remote manifest run on many hosts: a journal beside each one's recipe
            # would let an amendment reach one replica only, and the replicas serve other bytes.
            log.warning("live amendments are off: the manifest %s is not on S3, so there is no default journal "
                        "every replica shares; pass --journal FILE (on a shared filesystem) or s3://bucket/key",
                        storage.display(str(manifest)))
            return None
        path = urlunsplit(parts._replace(path=parts.path.rstrip("/") + f"/{Path(recipe).stem}.amendments.json"))
    where = journal_location(path) if path is not None else journal_beside(recipe)
    if isinstance(where, str):  # s3://
        from curriculum.journal_s3 import ObjectJournal

        return ObjectJournal(where)
    target = where
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = target.with_name(target.name + ".lock")
        with open(probe, "a"):
            pass
    except OSError as exc:
        if required:
            raise OSError(f"amendment journal {target}: not writable ({exc.strerror}); pass --journal PATH "
                          "on a writable (shared) filesystem") from None
        log.warning("amendment journal %s is not writable (%s): live amendments are off; pass --journal PATH",
                    target, exc.strerror)
        return None
    return Journal(target)

"""Trainer progress: what `POST /v1/progress` accepts, a bounded in-memory history, and an
optional JSONL log that survives restarts and is shared by the workers of one server.

With a log, the log is the source of truth: a report is appended as one line (one `write` on a
file opened in append mode, so lines of concurrent workers do not interleave) and every reader
first reads the lines appended since it last looked. Lines of another build (other manifest,
recipe or seed) and unreadable lines (a torn last line after a crash) are skipped and counted.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger("sampler_server.progress")

MAX_LANGUAGES_PER_REPORT = 4096


class ProgressReport(BaseModel):
    """One report from a trainer (usually rank 0, after an optimizer step)."""

    # strict: JSON `true` is not step 1, "5" is not 5 (lax mode reads both as numbers).
    model_config = ConfigDict(extra="forbid", strict=True)

    step: Annotated[int, Field(ge=0, description="last completed global step")]
    # int64 at most: the metrics keep counts as floats, and a bigger count stored here would break
    # every later read of the history.
    tokens: Annotated[int, Field(ge=0, le=2**63 - 1, description="tokens the job has consumed so far, all ranks")]
    loss: float | None = Field(default=None, description="MLM loss of the step (all languages)")
    loss_by_language: dict[str, float] = Field(default_factory=dict, description="language key -> loss")
    tokens_per_second: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    time: Annotated[float, Field(gt=0, allow_inf_nan=False, description="unix seconds; the server's clock when omitted")] | None = None
    rank: Annotated[int, Field(ge=0)] = 0
    run: Annotated[str, Field(max_length=128)] = ""

    @field_validator("loss")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("loss must be a finite number")
        return v

    @field_validator("loss_by_language")
    @classmethod
    def _finite_map(cls, v: dict[str, float]) -> dict[str, float]:
        if len(v) > MAX_LANGUAGES_PER_REPORT:
            raise ValueError(f"at most {MAX_LANGUAGES_PER_REPORT} languages per report")
        bad = [k for k, x in v.items() if not math.isfinite(x)]
        if bad:
            raise ValueError(f"losses must be finite numbers; not finite for {', '.join(sorted(bad)[:5])}")
        return v


class ProgressRecord(ProgressReport):
    """A stored report: the report plus the build it belongs to and when it arrived."""

    time: float  # always set when stored
    received: float
    build_id: str


class ProgressStore:
    """Bounded history of progress records (oldest dropped first), optionally backed by a JSONL log."""

    def __init__(self, build_id: str, history: int = 10_000, path: str | Path | None = None):
        self.build_id = build_id
        self.path = Path(path) if path is not None else None
        self._records: deque[ProgressRecord] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._offset = 0
        self.skipped_other_build = 0
        self.skipped_unreadable = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch(exist_ok=True)
            self.sync()
            if self._records or self.skipped_other_build or self.skipped_unreadable:
                log.info(
                    "progress log %s: %d record(s) reloaded, %d of other builds and %d unreadable line(s) skipped",
                    self.path, len(self._records), self.skipped_other_build, self.skipped_unreadable,
                )

    def add(self, report: ProgressReport) -> ProgressRecord:
        """Store a report (and append it to the log); returns the stored record."""
        now = time.time()
        rec = ProgressRecord(**{**report.model_dump(), "time": report.time or now}, received=now, build_id=self.build_id)
        if self.path is None:
            with self._lock:
                self._records.append(rec)
            return rec
        line = rec.model_dump_json() + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
        self.sync()
        return rec

    def sync(self) -> None:
        """Read the log lines appended since the last call (by this or another worker)."""
        if self.path is None:
            return
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                return
            if size < self._offset:  # truncated or replaced: read it again from the start
                self._offset = 0
                self._records.clear()
            if size == self._offset:
                return
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(size - self._offset)
            end = data.rfind(b"\n") + 1  # a line still being written waits for the next sync
            for raw in data[:end].splitlines():
                if not raw.strip():
                    continue
                try:
                    rec = ProgressRecord.model_validate_json(raw)
                except ValidationError:
                    self.skipped_unreadable += 1
                    continue
                if rec.build_id != self.build_id:
                    self.skipped_other_build += 1
                    continue
                self._records.append(rec)
            self._offset += end

    def records(self, limit: int | None = None) -> list[ProgressRecord]:
        """The most recent records, oldest first."""
        self.sync()
        with self._lock:
            out = list(self._records)
        return out[-limit:] if limit else out

    def __len__(self) -> int:
        return len(self.records())


def tokens_per_second(records: list[ProgressRecord], window: float = 60.0, reports: int = 10) -> float | None:
    """Live throughput: the latest trainer-measured value when the trainer sends one, else
    Δtokens / Δtime over the last `reports` reports within `window` seconds (a count that drops,
    i.e. a restart from a checkpoint, starts the window again)."""
    if not records:
        return None
    last = records[-1]
    if last.tokens_per_second is not None:
        return last.tokens_per_second
    first = last
    for r in reversed(records[-reports:-1]):
        if r.tokens > first.tokens or last.time - r.time > window:
            break
        first = r
    dt = last.time - first.time
    return (last.tokens - first.tokens) / dt if dt > 0 else None


def latest_language_loss(records: list[ProgressRecord]) -> dict[str, float]:
    """Each language's loss from the most recent report that carried it."""
    out: dict[str, float] = {}
    for r in records:
        out.update(r.loss_by_language)
    return out


def consumed_per_phase(tokens_through: int, phase_tokens_start: list[int], total_tokens: int) -> list[int]:
    """Tokens of each phase served when the schedule has served `tokens_through` tokens in all."""
    ends = phase_tokens_start[1:] + [total_tokens]
    return [int(min(max(tokens_through - a, 0), b - a)) for a, b in zip(phase_tokens_start, ends)]


def progress_json(records: list[ProgressRecord]) -> list[dict]:
    return [json.loads(r.model_dump_json(exclude={"build_id"})) for r in records]


def progress_summary(records: list[ProgressRecord], points: int = 400) -> dict:
    """What the dashboard shows: the latest report, live throughput, each language's latest loss
    and a series of at most `points` reports (older history thinned evenly, the latest kept)."""
    last = records[-1] if records else None
    stride = max(1, math.ceil(len(records) / points))
    picked = records[::-1][::stride][::-1]
    series = []
    prev = None
    for r in picked:
        tps = r.tokens_per_second
        if tps is None and prev is not None and r.time > prev.time and r.tokens >= prev.tokens:
            tps = (r.tokens - prev.tokens) / (r.time - prev.time)
        series.append({"step": r.step, "tokens": r.tokens, "loss": r.loss, "time": r.time, "tokens_per_second": tps})
        prev = r
    return {
        "reports": len(records),
        "latest": progress_json([last])[0] if last else None,
        "step": last.step if last else None,
        "tokens": last.tokens if last else None,
        "tokens_per_second": tokens_per_second(records),
        "language_loss": latest_language_loss(records),
        "series": series,
        "server_time": time.time(),
    }

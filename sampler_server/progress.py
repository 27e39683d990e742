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


MIN_REPORT_TIME = 946_684_800.0  # 2000-01-01 UTC


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
    rank: Annotated[int, Field(ge=0, le=1 << 20)] = 0  # a million ranks; 5,000,000 was stored
    run: Annotated[str, Field(max_length=128)] = ""

    @field_validator("loss")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v >= 0):  # a cross-entropy: finite and >= 0
            raise ValueError("loss must be a finite number >= 0")
        return v

    @field_validator("time")
    @classmethod
    def _plausible_time(cls, v: float | None) -> float | None:
        # 1e300 was stored, and the live tokens/s computed from it; a clock a day off is a bug.
        if v is not None and not (MIN_REPORT_TIME <= v <= time.time() + 86_400):
            raise ValueError("time must be unix seconds (from 2000 to a day past this server's clock)")
        return v

    @field_validator("loss_by_language")
    @classmethod
    def _finite_map(cls, v: dict[str, float]) -> dict[str, float]:
        if len(v) > MAX_LANGUAGES_PER_REPORT:
            raise ValueError(f"at most {MAX_LANGUAGES_PER_REPORT} languages per report")
        bad = [k for k, x in v.items() if not (math.isfinite(x) and x >= 0)]
        if bad:
            raise ValueError(f"losses must be finite numbers >= 0; not for {', '.join(sorted(bad)[:5])}")
        return v


class ProgressRecord(ProgressReport):
    """A stored report: the report plus the build it belongs to and when it arrived."""

    time: float  # always set when stored
    received: float
    build_id: str

    @field_validator("time")
    @classmethod
    def _plausible_time(cls, v: float | None) -> float | None:  # a stored record is read back as it was
        return v


class ProgressStore:
    """Bounded history of progress records (oldest dropped first), optionally backed by a JSONL log.

    Memory stays bounded however long the run: a report's per-language losses (up to one entry
    per language: ~100 KB as Python objects at 1,833 languages) are kept for the newest
    `loss_records` reports only, beside a running map of each language's latest loss; older
    records keep their step, tokens, loss and rates. A log is read in bounded chunks, and at
    start-up only its last `history` records are parsed."""

    CHUNK = 8 << 20  # bytes of log read at a time

    def __init__(self, build_id: str, history: int = 10_000, path: str | Path | None = None, loss_records: int = 256):
        self.build_id = build_id
        self.path = Path(path) if path is not None else None
        self.loss_records = max(1, loss_records)
        self._records: deque[ProgressRecord] = deque(maxlen=history)
        self._language_loss: dict[str, float] = {}
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

    def _keep(self, rec: ProgressRecord) -> None:
        """Append `rec` (lock held); drop the per-language losses of the record that leaves the newest window."""
        self._language_loss.update(rec.loss_by_language)
        self._records.append(rec)
        n = self.loss_records
        if len(self._records) > n and self._records[-n - 1].loss_by_language:
            self._records[-n - 1] = self._records[-n - 1].model_copy(update={"loss_by_language": {}})

    def add(self, report: ProgressReport) -> ProgressRecord:
        """Store a report (and append it to the log); returns the stored record."""
        now = time.time()
        rec = ProgressRecord(**{**report.model_dump(), "time": report.time or now}, received=now, build_id=self.build_id)
        if self.path is None:
            with self._lock:
                self._keep(rec)
            return rec
        line = rec.model_dump_json() + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
        self.sync()
        return rec

    def _tail_start(self, f, size: int) -> int:
        """Offset of the first line of the last `history` lines of this build (0 when there are
        fewer), found by a scan that parses no JSON: this store writes `build_id` as a record's
        last field, so a line of this build ends with it."""
        suffix = b'"build_id":' + json.dumps(self.build_id).encode() + b"}"
        starts: deque[int] = deque(maxlen=self._records.maxlen)
        f.seek(0)
        offset, rest = 0, b""
        while offset + len(rest) < size:
            data = rest + f.read(min(self.CHUNK, size - offset - len(rest)))
            end = data.rfind(b"\n") + 1
            if end == 0 and offset + len(data) >= size:
                break  # a last line still being written
            pos = 0
            for line in data[:end].split(b"\n")[:-1]:
                if line.rstrip().endswith(suffix):
                    starts.append(offset + pos)
                pos += len(line) + 1
            offset += end
            rest = data[end:]
        return starts[0] if starts else 0

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
                self._language_loss.clear()
            if size == self._offset:
                return
            with open(self.path, "rb") as f:
                if self._offset == 0:
                    self._offset = self._tail_start(f, size)
                f.seek(self._offset)
                rest = b""
                while self._offset + len(rest) < size:
                    data = rest + f.read(min(self.CHUNK, size - self._offset - len(rest)))
                    end = data.rfind(b"\n") + 1  # a line still being written waits for the next sync
                    if end == 0 and self._offset + len(data) >= size:
                        break
                    for raw in data[:end].splitlines():
                        self._read_line(raw)
                    self._offset += end
                    rest = data[end:]

    def _read_line(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            rec = ProgressRecord.model_validate_json(raw)
        except ValidationError:
            self.skipped_unreadable += 1
            return
        if rec.build_id != self.build_id:
            self.skipped_other_build += 1
            return
        self._keep(rec)

    def records(self, limit: int | None = None) -> list[ProgressRecord]:
        """The most recent records, oldest first (per-language losses only on the newest `loss_records`)."""
        self.sync()
        with self._lock:
            out = list(self._records)
        return out[-limit:] if limit else out

    def language_loss(self) -> dict[str, float]:
        """Each language's latest reported loss, over every report read (not only the history kept)."""
        self.sync()
        with self._lock:
            return dict(self._language_loss)

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


def consumed_per_phase(tokens_through: int, phase_tokens_start: list[int], total_tokens: int) -> list[int]:
    """Tokens of each phase served when the schedule has served `tokens_through` tokens in all."""
    ends = phase_tokens_start[1:] + [total_tokens]
    return [int(min(max(tokens_through - a, 0), b - a)) for a, b in zip(phase_tokens_start, ends)]


def progress_json(records: list[ProgressRecord]) -> list[dict]:
    return [json.loads(r.model_dump_json(exclude={"build_id"})) for r in records]


def progress_summary(records: list[ProgressRecord], language_loss: dict[str, float], points: int = 400) -> dict:
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
        "language_loss": language_loss,
        "series": series,
        "server_time": time.time(),
    }

"""The amendment journal as one S3 object, for replicas that share no filesystem.

The object holds `{"watermark": int, "entries": [amendment, ...], "owner": str, "run": str,
"policy": {"holder": str, "seen": float}}` (the run it belongs to, `Journal.claim`; the replica
running the feedback policy, `Journal.hold_policy`). Every change — raising the
served-step watermark (`publish`) or admitting an amendment (`append`) — is a read, then a PUT
conditional on the ETag just read (`If-Match`; `If-None-Match: *` to create it): S3's
compare-and-swap. A writer that lost the race re-reads and tries again. So publish and append
are linearized through the object exactly as the file journal's lock linearizes them, and the
protocol of `curriculum.journal` holds unchanged: every admitted amendment starts after every
step any replica served without it. (S3 has offered conditional writes since 2024; MinIO and
moto do too.) Same interface as `curriculum.journal.Journal`.

URI: `s3://bucket/key?endpoint_override=HOST:PORT&scheme=http&region=...` — the query options of
`curriculum.storage`; credentials come from the environment.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from curriculum.amend import Amendment, parse_amendment
from curriculum.errors import CurriculumError
from curriculum.journal import admissible, earliest_step, lease, owner_refusal

CAS_ATTEMPTS = 64


class JournalStoreError(CurriculumError):
    """The journal object cannot be read or written."""


# The query options `curriculum.storage` takes for an s3:// manifest that mean something here; a
# misspelt one (`endpoint_overide`) sent the journal to AWS itself, silently.
_OPTIONS = ("endpoint_override", "scheme", "region", "tls_ca_file_path", "tls_verify_certificates")


def _client(uri: str):
    try:
        import boto3  # only servers with a remote journal need it
    except ImportError:
        raise JournalStoreError(f"journal {uri}: an s3:// journal needs boto3: pip install 'language-curriculum[curriculum]' "
                                "(or boto3)") from None
    from botocore.config import Config

    parts = urlsplit(uri)
    q = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(q) - set(_OPTIONS))
    if unknown:
        raise JournalStoreError(f"journal {uri}: unknown option(s) {', '.join(unknown)}; it takes "
                                f"{', '.join(_OPTIONS)}")
    if q.get("scheme", "https") not in ("http", "https"):
        raise JournalStoreError(f"journal {uri}: scheme={q['scheme']!r}; use http or https")
    endpoint = q.get("endpoint_override")
    url = f"{q.get('scheme', 'https')}://{endpoint}" if endpoint else None
    verify: bool | str = q.get("tls_ca_file_path") or q.get("tls_verify_certificates", "true").lower() not in ("0", "false")
    # Bounded: an unreachable endpoint is an error in seconds, not a stall of every request.
    cfg = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=url, region_name=q.get("region"), verify=verify, config=cfg)


class ObjectJournal:
    """The journal at an `s3://` URI; `entries` is what was last read (call `refresh`)."""

    def __init__(self, uri: str):
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc or not parts.path.strip("/"):
            raise JournalStoreError(f"journal {uri!r}: expected s3://bucket/key[?endpoint_override=...]")
        self.uri = uri
        self.path = f"s3://{parts.netloc}{parts.path}"  # shown in messages (no query)
        self.bucket, self.key = parts.netloc, parts.path.lstrip("/")
        self._s3 = _client(uri)
        self.entries: list[Amendment] = []
        self._etag: str | None = None
        self._watermark = -1
        self.refresh()

    @property
    def version(self) -> int:
        return len(self.entries)

    # -- the object -----------------------------------------------------------------------

    def _get(self) -> tuple[dict, str | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            r = self._s3.get_object(Bucket=self.bucket, Key=self.key)
            body = r["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return {"watermark": -1, "entries": []}, None
            raise JournalStoreError(f"journal {self.path}: cannot read ({exc})") from None
        except BotoCoreError as exc:  # the endpoint down, DNS, credentials missing, a timeout
            raise JournalStoreError(f"journal {self.path}: cannot read ({exc})") from None
        try:
            state = json.loads(body)
        except ValueError as exc:
            raise JournalStoreError(f"journal {self.path}: not JSON ({exc}); restore it from a backup") from None
        return state, r["ETag"]

    def _put(self, state: dict, etag: str | None) -> str | None:
        """The new ETag, or None when another writer changed the object since `etag`."""
        from botocore.exceptions import BotoCoreError, ClientError

        cond = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            r = self._s3.put_object(Bucket=self.bucket, Key=self.key, Body=json.dumps(state).encode(),
                                    ContentType="application/json", **cond)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412) or exc.response.get("Error", {}).get("Code") in (
                    "PreconditionFailed", "ConditionalRequestConflict"):
                return None
            raise JournalStoreError(f"journal {self.path}: cannot write ({exc})") from None
        except BotoCoreError as exc:
            raise JournalStoreError(f"journal {self.path}: cannot write ({exc})") from None
        return r["ETag"]

    def _adopt(self, state: dict, etag: str | None) -> bool:
        """Take `state` as read; True when the entries changed."""
        self._watermark = int(state.get("watermark", -1))
        if etag == self._etag and etag is not None:
            return False
        raw = state.get("entries", [])
        entries = [parse_amendment(e, f"journal {self.path}, entry {i + 1}") for i, e in enumerate(raw)]
        self._etag = etag
        changed = entries != self.entries
        self.entries = entries
        return changed

    def _cas(self, change: Callable[[dict], bool]) -> bool:
        """Read, apply `change` (False: nothing to write), write conditionally; retry on a lost
        race. Returns whether the entries read changed since the last read."""
        changed = False
        for attempt in range(CAS_ATTEMPTS):
            state, etag = self._get()
            changed |= self._adopt(state, etag)
            if not change(state):
                return changed
            new = self._put(state, etag)
            if new is not None:
                self._watermark = int(state.get("watermark", -1))
                changed |= self._adopt(state, new)
                return changed
            time.sleep(min(0.2, 0.002 * 2 ** attempt) * random.random())
        raise JournalStoreError(f"journal {self.path}: {CAS_ATTEMPTS} conditional writes lost to other writers; "
                                "retry")

    # -- the Journal interface ------------------------------------------------------------

    def refresh(self) -> bool:
        state, etag = self._get()
        return self._adopt(state, etag)

    def read(self) -> list[Amendment]:
        state, _ = self._get()
        return [parse_amendment(e, f"journal {self.path}, entry {i + 1}") for i, e in enumerate(state.get("entries", []))]

    def watermark(self) -> int:
        state, etag = self._get()
        self._adopt(state, etag)
        return self._watermark

    def earliest_step(self) -> int:
        return earliest_step(self.watermark(), self.entries)

    def run_record(self) -> dict | None:
        """`Journal.run_record`: from the object."""
        state, _ = self._get()
        return {k: state[k] for k in ("owner", "run", "manifest") if k in state} if state.get("owner") else None

    def claim(self, owner: str, about: str, manifest: dict | None = None) -> None:
        """`Journal.claim`: the owner lives in the object, written by compare-and-swap."""
        def take(state: dict) -> bool:
            if state.get("owner") is None:
                state["owner"], state["run"] = owner, about
                if manifest:
                    state["manifest"] = manifest
                return True
            if state["owner"] == owner and manifest and state.get("manifest") != manifest:
                state["manifest"] = manifest
                return True
            if state["owner"] != owner:
                raise owner_refusal(self.path, state, owner, about, f"delete the object {self.path}",
                                    len(state.get("entries", [])))
            return False

        self._cas(take)

    def hold_policy(self, holder: str, ttl: float) -> dict | None:
        """`Journal.hold_policy`: the lease lives in the object, taken by compare-and-swap."""
        held: list[dict | None] = [None]

        def take(state: dict) -> bool:
            written: list[dict] = []
            held[0] = lease(state.get("policy"), holder, ttl, written.append)
            if written:
                state["policy"] = written[0]
            return bool(written)

        self._cas(take)
        return held[0]

    def publish(self, step: int) -> bool:
        def raise_watermark(state: dict) -> bool:
            if step <= int(state.get("watermark", -1)):
                return False
            state["watermark"] = int(step)
            return True

        return self._cas(raise_watermark)

    def append(self, amendment: Amendment, check: Callable[[list[Amendment]], None] | None = None) -> Amendment:
        a = amendment.stamped()

        def add(state: dict) -> bool:
            entries = self.entries  # adopted from `state` by _cas just before
            admissible(a, int(state.get("watermark", -1)), entries)
            if check is not None:
                check([*entries, a])
            state["entries"] = [*state.get("entries", []), json.loads(a.model_dump_json(exclude_none=True))]
            return True

        self._cas(add)
        return a

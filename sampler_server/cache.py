"""A bounded local cache of shards that live in an object store (any `pyarrow.fs` location).

Shards are memory-mapped, so a remote shard must be a local file before it can be served. The
cache downloads it on first use and keeps it under `cache_dir` as `<sha256>.arrow`:

- **verified**: the sha256 is computed while streaming and compared with the manifest's before the
  file is renamed into place, so a file this process downloaded is a verified copy; a mismatch
  deletes the download and raises `ShardError` naming the shard and both digests. A file found in
  the directory at start-up (an earlier run's) is hashed once on its first open in this process:
  the disk may have changed it since (a flipped byte served wrong bytes silently, a truncated file
  failed every start). A damaged or wrong-size cached file is deleted and downloaded again.
- **atomic**: the download goes to a temporary file in the same directory, then `os.replace`;
  readers never see a partial shard, and two processes filling one directory at once only race to
  rename identical verified bytes.
- **coalesced**: concurrent requests for the same shard wait on one download (a future per shard).
- **bounded, LRU by bytes**: after a fill, the least recently opened shards are deleted until the
  total is within `max_bytes`. Shards being filled or opened, and shards whose `ShardView` (returned
  by this cache) is still alive, are not evicted: deleting them would free nothing, since a mapped
  file keeps its disk blocks until it is unmapped. So the cache can exceed `max_bytes` by what is
  mapped at that moment. A caller may still hold numpy views (`view.tokens`) of a shard after
  dropping the `ShardView`; if that shard is evicted, the views stay valid — on Linux (POSIX)
  unlinking a mapped file removes only its name — and its blocks are freed when they go.
  A `LanguageStream` keeps the views of its language's shards for its whole life, so size the
  cache to the shards of the languages served (shards.parquet `bytes`) to avoid re-downloads.

The order of use survives restarts: opening a shard touches its mtime, and a new cache orders the
files it finds by mtime. `max_bytes` is a per-process budget; share a directory between processes
only if the sum of their budgets fits the disk.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path

from curriculum import storage
from curriculum.shards import ShardError, ShardView, open_shard, sha256_file

log = logging.getLogger("sampler_server.cache")

DEFAULT_CACHE_BYTES = 64 << 30
_NAME = re.compile(r"^[0-9a-f]{64}\.arrow$")
_TMP = re.compile(r"^\.[0-9a-f]{64}\.(\d+)\.\d+\.tmp$")


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/language-curriculum/shards` (else ~/.cache/…)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "language-curriculum" / "shards"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ShardCache:
    """Local copies of remote shards, verified, LRU-evicted by bytes; local shards pass through."""

    def __init__(self, cache_dir: str | Path | None = None, max_bytes: int = DEFAULT_CACHE_BYTES):
        if max_bytes <= 0:
            raise ValueError(f"ShardCache max_bytes must be > 0, got {max_bytes}")
        self.dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.max_bytes = int(max_bytes)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # was "[Errno 20] Not a directory: ...", nothing said what the path is for
            raise ShardError(f"shard cache {self.dir}: cannot use it as a directory ({exc.strerror}); set "
                             "SAMPLER_CACHE_DIR (Sampler(cache_dir=...)) to a writable directory") from None
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()  # sha256 → bytes, least recently opened first
        self._inflight: dict[str, Future] = {}
        self._pins: dict[str, int] = {}  # opens in progress per shard: never evicted meanwhile
        # Views handed out per shard (weak: the cache does not keep them alive; ShardView is not
        # hashable, so a list of refs rather than a WeakSet; dead refs are pruned on eviction).
        self._views: dict[str, list[weakref.ref]] = {}
        self.stats = {"downloads": 0, "downloaded_bytes": 0, "hits": 0, "coalesced": 0, "evictions": 0, "repaired": 0}
        self._unverified: set[str] = set()  # adopted from disk, not hashed in this process yet
        self._scan()

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(self._entries.values())

    def _scan(self) -> None:
        """Adopt the verified files of an earlier run (oldest use first); remove temporary files
        left by dead processes."""
        found = []
        for p in self.dir.iterdir():
            if _NAME.match(p.name):
                st = p.stat()
                found.append((st.st_mtime_ns, p.name[:64], st.st_size))
            elif (m := _TMP.match(p.name)) and not _pid_alive(int(m.group(1))):
                p.unlink(missing_ok=True)
        for _, key, size in sorted(found):
            self._entries[key] = size
            self._unverified.add(key)
        with self._lock:
            self._evict()

    def path_of(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.arrow"

    def open(self, location: str | Path, sha256: str, size: int) -> ShardView:
        """Memory-map a shard: a local path directly (no copy), a remote one from the cache,
        downloading and verifying it first if needed."""
        if not storage.is_remote(location):
            return open_shard(storage.local_path(location))
        key = sha256.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ShardError(f"shard {storage.display(location)}: manifest sha256 {sha256!r} is not a sha256 hex digest")
        with self._lock:
            self._pins[key] = self._pins.get(key, 0) + 1
        try:
            for attempt in (0, 1):
                path = self._fetch(key, location, int(size))
                try:
                    self._check_adopted(key, path, int(size))
                    view = open_shard(path)
                    break
                except ShardError:
                    # Deleted under us (another process sharing the directory evicted it), or a
                    # damaged file on disk: fetch again once; a second failure is a real problem.
                    if attempt:
                        raise
                    with self._lock:
                        self._entries.pop(key, None)
                        self._unverified.discard(key)
                    if path.exists():
                        path.unlink(missing_ok=True)
                        self.stats["repaired"] += 1
                        log.warning("shard cache: %s was damaged on disk; downloading %s again", path,
                                    storage.display(location))
            with self._lock:
                self._views.setdefault(key, []).append(weakref.ref(view))
            return view
        finally:
            with self._lock:
                self._pins[key] -= 1
                if not self._pins[key]:
                    del self._pins[key]

    def _check_adopted(self, key: str, path: Path, size: int) -> None:
        """A file adopted from disk must still be the verified copy (hashed once per process)."""
        if key not in self._unverified:
            return
        try:
            ok = path.stat().st_size == size and sha256_file(path) == key
        except OSError:
            ok = False
        if not ok:
            raise ShardError(f"shard cache {path}: not the verified copy any more")
        with self._lock:
            self._unverified.discard(key)

    def _fetch(self, key: str, location: str | Path, size: int) -> Path:
        path = self.path_of(key)
        with self._lock:
            if key in self._entries and path.exists():
                self._entries.move_to_end(key)
                self.stats["hits"] += 1
                owner, fut = False, None
            elif key in self._inflight:
                fut, owner = self._inflight[key], False
                self.stats["coalesced"] += 1
            else:
                fut, owner = Future(), True
                self._inflight[key] = fut
        if fut is None:
            _touch(path)
            return path
        if not owner:
            return fut.result()
        try:
            self._download(location, key, size, path)
            with self._lock:
                self._entries[key] = size
                self._entries.move_to_end(key)
                self._evict()
            fut.set_result(path)
            return path
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _download(self, location: str | Path, key: str, size: int, path: Path) -> None:
        """Stream to a temporary file, check size and sha256, rename into place."""
        tmp = self.dir / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        shown = storage.display(location)
        try:
            try:
                digest = storage.download(location, tmp, limit=size)  # a bigger object: stop at size + 1
            except FileNotFoundError:
                raise ShardError(f"shard {shown}: missing in the object store; rerun `curriculum build --out` "
                                 "to publish it, or check the manifest location") from None
            except (OSError, storage.StorageError) as exc:
                raise ShardError(f"shard {shown}: download failed ({exc})") from None
            got = tmp.stat().st_size
            if digest != key or got != size:
                raise ShardError(
                    f"shard {shown}: checksum mismatch after download (manifest sha256 {key}, {size} bytes; "
                    f"downloaded sha256 {digest}, {got} bytes); the object was changed or corrupted: rebuild "
                    "that language or run `curriculum verify` on the manifest"
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self.stats["downloads"] += 1
            self.stats["downloaded_bytes"] += size

    def _evict(self) -> None:
        """Delete least recently opened shards until within budget (call with the lock held)."""
        total = sum(self._entries.values())
        if total <= self.max_bytes:
            return
        for key in list(self._entries):
            if total <= self.max_bytes:
                break
            if self._pins.get(key) or key in self._inflight or self._in_use(key):
                continue
            size = self._entries.pop(key)
            self._views.pop(key, None)
            self.path_of(key).unlink(missing_ok=True)
            self.stats["evictions"] += 1
            total -= size

    def _in_use(self, key: str) -> bool:
        refs = [r for r in self._views.get(key, ()) if r() is not None]
        if refs:
            self._views[key] = refs
        else:
            self._views.pop(key, None)
        return bool(refs)


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache still serves

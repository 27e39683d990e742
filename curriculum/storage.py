"""Where manifests and shards live: a local directory or any `pyarrow.fs` filesystem by URI.

A *location* is a local path (`demo-out/manifest`, `file:///data/m`) or a URI that
`pyarrow.fs.FileSystem.from_uri` understands: `s3://bucket/prefix`, `gs://bucket/prefix`,
`hdfs://host:port/path`, `abfs://…`. S3 takes these query options (pyarrow 26; anything else is
rejected by pyarrow): `region`, `scheme` (http | https), `endpoint_override` (host:port of an
S3-compatible server such as MinIO or moto), `allow_bucket_creation`, `allow_bucket_deletion`,
`tls_ca_file_path`, `tls_verify_certificates`; a `gs://` URI takes `retry_limit_seconds` (default
here `GCS_RETRY_LIMIT_S`, 30, not the client's 15 minutes). Credentials never go in the URI: pyarrow reads
them from the environment (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`,
`AWS_PROFILE`, instance metadata, …).

Writes are atomic per object: locally a temp file renamed into place; on an object store a PUT
(or a completed multipart upload) makes the object appear whole or not at all.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from curriculum.errors import CurriculumError
from curriculum.fileperm import share

CHUNK = 8 << 20
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Environment variables that change what a filesystem built from a URI authenticates as: part of
# the filesystem cache key, so changed credentials give a new client.
_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS_", "AZURE_", "HADOOP_", "ARROW_")


class StorageError(CurriculumError):
    """A location cannot be resolved, read or written."""


def is_uri(location: str | Path) -> bool:
    """True for `scheme://…` strings (including `file://`)."""
    return isinstance(location, str) and bool(_SCHEME.match(location))


def is_remote(location: str | Path) -> bool:
    """True for a URI that is not `file://` (reads go through pyarrow.fs, not the local disk)."""
    return is_uri(location) and not str(location).lower().startswith("file://")


def local_path(location: str | Path) -> Path:
    """The local path of a plain path or `file://` URI; StorageError for a remote URI."""
    if isinstance(location, Path):
        return location
    if is_remote(location):
        raise StorageError(f"{location}: not a local path")
    if is_uri(location):
        _, path = _from_uri(location)
        return Path(path)
    return Path(location)


def display(location: str | Path) -> str:
    """The location without its query string (for messages: short, and the same for every
    endpoint) and without any user:password in it."""
    s = str(location)
    if not is_remote(s):
        return s
    s = s.split("?", 1)[0]
    scheme, sep, rest = s.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}" if "@" in host else s


def join(location: str | Path, rel: str) -> str | Path:
    """`location / rel`: a Path for local locations, a URI (query kept at the end) for remote ones."""
    if not is_remote(location):
        return local_path(location) / rel
    parts = urlsplit(str(location))
    path = posixpath.join(parts.path or "/", rel.lstrip("/")) if parts.path.strip("/") else "/" + rel.lstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


_FS_CACHE: dict[tuple, pafs.FileSystem] = {}
_FS_LOCK = threading.Lock()


def _env_key() -> tuple:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))


# Google Cloud Storage retries a failing call for 15 minutes by default, so a machine without
# credentials or network waited that long per call before any message; a limit the URI does not
# set is this many seconds (`?retry_limit_seconds=N` in the URI overrides it).
GCS_RETRY_LIMIT_S = 30


def _with_default_retry_limit(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("gs", "gcs") or "retry_limit_seconds=" in parts.query:
        return uri
    query = "&".join(q for q in (parts.query, f"retry_limit_seconds={GCS_RETRY_LIMIT_S}") if q)
    return urlunsplit(parts._replace(query=query))


def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(_with_default_retry_limit(uri))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OSError) as exc:
        raise StorageError(
            f"{display(uri)}: not a usable location ({exc}); give a local path or a pyarrow.fs URI such as "
            "s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http (credentials come from the environment, "
            "e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        ) from None


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it). One filesystem object is shared per scheme, host, query and
    credential environment, so its connection pool is reused across shards."""
    if not is_remote(location):
        return pafs.LocalFileSystem(), str(local_path(location).absolute())
    parts = urlsplit(str(location))
    if parts.username is not None or parts.password is not None:  # pyarrow would use them, and messages show URIs
        raise StorageError(f"{display(location)}: credentials in the URI (user:password@) are refused: they would "
                           "appear in logs, error bodies and the journal's run record; use the store's environment "
                           "variables or credential files (AWS_ACCESS_KEY_ID, ...)")
    if "//" in parts.path:  # pyarrow failed later, mid-build, with "Empty path component"
        raise StorageError(f"{display(location)}: an empty path component (a double slash); write the prefix with "
                           "single slashes")
    fs, path = _from_uri(str(location))
    key = (parts.scheme.lower(), parts.netloc, parts.query, _env_key())
    with _FS_LOCK:
        return _FS_CACHE.setdefault(key, fs), path


# -- reads ----------------------------------------------------------------------------------------


def _missing(location: str | Path) -> StorageError:
    return StorageError(f"{display(location)}: missing")


def file_size(location: str | Path) -> int | None:
    """Size in bytes of a file, None if there is none."""
    fs, path = resolve(location)
    info = fs.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


def exists(location: str | Path) -> bool:
    return file_size(location) is not None


def delete_file(location: str | Path) -> bool:
    """Delete one file; False if there was none."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return False
    fs.delete_file(path)
    return True


def read_bytes(location: str | Path) -> bytes:
    """The whole file; FileNotFoundError if there is none (so callers can say what is missing)."""
    with _open_input(location) as f:
        return f.read()


def _open_input(location: str | Path):
    """An input stream; FileNotFoundError if missing, StorageError naming the location otherwise."""
    fs, path = resolve(location)
    try:
        return fs.open_input_stream(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{display(location)}: missing") from None
        raise StorageError(f"{display(location)}: cannot read ({exc})") from None


def list_files(location: str | Path) -> dict[str, int]:
    """Every file under a directory / prefix, recursively: relative POSIX path → size."""
    return {rel: size for rel, (size, _) in list_files_with_mtime(location).items()}


def list_files_with_mtime(location: str | Path) -> dict[str, tuple[int, int | None]]:
    """Every file under a directory / prefix, recursively: relative POSIX path → (size, mtime in
    ns or None). An object store's mtime is its last write: an object overwritten since is seen."""
    fs, base = resolve(location)
    base = base.rstrip("/")
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            out[posixpath.relpath(info.path, base) if base else info.path] = (info.size, info.mtime_ns)
    return out


def mtime_ns(location: str | Path) -> int | None:
    """Last write of a file or object in ns (None if missing or not known)."""
    fs, path = resolve(location)
    info = fs.get_file_info(path)
    return info.mtime_ns if info.type == pafs.FileType.File else None


def download(location: str | Path, dest: str | Path, chunk: int = CHUNK, limit: int | None = None) -> str:
    """Stream a file to a local path (written in place: callers rename it); returns its sha256,
    computed on the way. FileNotFoundError if the source is missing. With `limit`, stops after
    limit + 1 bytes (a caller that knows the size then sees a mismatch without filling its disk
    with an object that was replaced by a bigger one)."""
    h = hashlib.sha256()
    src = _open_input(location)
    left = None if limit is None else limit + 1
    with src, open(dest, "wb") as out:
        while left is None or left > 0:
            block = src.read(chunk if left is None else min(chunk, left))
            if not block:
                break
            h.update(block)
            out.write(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


def sha256_of(location: str | Path, chunk: int = CHUNK) -> str:
    """sha256 of a file, streamed (nothing kept)."""
    fs, path = resolve(location)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as src:
        while block := src.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- writes ---------------------------------------------------------------------------------------


def _write_stream(location: str | Path, fill: Callable[[pa.NativeFile], None]) -> None:
    if not is_remote(location):
        path = local_path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        share(fd)
        os.close(fd)
        try:
            with pa.OSFile(tmp, "wb") as out:
                fill(out)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    fs, path = resolve(location)
    # An object store has no directories to create, and the object appears only when the stream
    # is closed without error (a failed multipart upload is aborted): atomic per object.
    try:
        with fs.open_output_stream(path) as out:
            fill(out)
    except OSError as exc:
        raise StorageError(f"{display(location)}: cannot write ({exc}); does the bucket exist and may these "
                           "credentials write to it?") from None


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write a whole file atomically."""
    _write_stream(location, lambda out: out.write(data))


def upload_file(src: str | Path, location: str | Path, chunk: int = CHUNK) -> None:
    """Copy a local file to a location, atomically, streaming."""

    def fill(out: pa.NativeFile) -> None:
        with open(src, "rb") as f:
            while block := f.read(chunk):
                out.write(block)

    _write_stream(location, fill)


def upload_tree(
    local_dir: str | Path,
    location: str | Path,
    rels: Iterable[str] | None = None,
    skip: Callable[[str], bool] | None = None,
    workers: int = 8,
    done: Callable[[str], None] | None = None,
) -> list[str]:
    """Upload files of `local_dir` (all, or the relative paths `rels`, in that order of priority)
    to `location`; `skip(rel)` true leaves one out; `done(rel)` runs after each upload. Returns the
    relative paths uploaded. Uploads run on `workers` threads (pyarrow releases the GIL)."""
    local_dir = Path(local_dir)
    if rels is None:
        rels = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
    todo = [r for r in rels if not (skip and skip(r))]

    def one(rel: str) -> str:
        upload_file(local_dir / rel, join(location, rel))
        if done:
            done(rel)
        return rel

    if workers <= 1 or len(todo) <= 1:
        return [one(r) for r in todo]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, todo))

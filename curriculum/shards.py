"""Token shards: one language per Arrow IPC file, memory-mapped with no copy of the tokens.

A shard holds one record batch with columns
  tokens: large_list<uint32>   the document's token ids (no special tokens)
  source: string               provenance: input file
  row:    int64                provenance: row / line in that file
so the token buffer is one contiguous uint32 array and the document boundaries one int64
offsets array; `open_shard` hands both out as numpy views of the memory map.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curriculum.errors import CurriculumError
from curriculum.fileperm import share

SHARD_SCHEMA = pa.schema(
    [
        pa.field("tokens", pa.large_list(pa.uint32())),
        pa.field("source", pa.string()),
        pa.field("row", pa.int64()),
    ]
)
DEFAULT_SHARD_BYTES = 256 << 20


class ShardError(CurriculumError):
    """A shard file is missing, corrupt or not in the shard format (a CurriculumError, so every
    command reports it in one line)."""


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    docs: int
    tokens: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardView:
    """Zero-copy views of a memory-mapped shard. Keep the view alive while using the arrays."""

    offsets: np.ndarray  # int64[docs + 1]
    tokens: np.ndarray  # uint32[total tokens]
    _source: pa.RecordBatch

    @property
    def docs(self) -> int:
        return int(self.offsets.size - 1)


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_shard(path: str | Path, tokens: np.ndarray, offsets: np.ndarray, sources: list[str], rows: np.ndarray) -> ShardInfo:
    """Write one shard atomically (temp file + rename) and return its stats and checksum."""
    path = Path(path)
    tokens = np.ascontiguousarray(tokens, dtype=np.uint32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    n = offsets.size - 1
    if n < 0 or offsets[0] != 0 or offsets[-1] != tokens.size or len(sources) != n or len(rows) != n:
        raise ValueError(f"shard {path}: inconsistent offsets / provenance for {n} documents")
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(tokens, pa.uint32()))
    batch = pa.record_batch([lists, pa.array(sources, pa.string()), pa.array(rows, pa.int64())], schema=SHARD_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        share(fd)
        # The checksum is taken from the bytes as they are written (the IPC writer only appends),
        # instead of reading the file back.
        with os.fdopen(fd, "wb", buffering=0) as raw:
            sink = _HashingSink(raw)
            with pa.PythonFile(sink, mode="w") as out, pa.ipc.new_file(out, SHARD_SCHEMA) as writer:
                writer.write_batch(batch)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ShardInfo(path, n, int(tokens.size), sink.size, sink.sha256.hexdigest())


class _HashingSink:
    """A write-only file object that feeds sha256 with every byte it writes."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        while view.nbytes:  # an unbuffered write may be partial
            k = self.raw.write(view)
            view = view[k:]
            self.size += k
        return len(data) if isinstance(data, bytes) else memoryview(data).nbytes

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True


def open_shard(path: str | Path) -> ShardView:
    """Memory-map a shard; the returned arrays are views of the file, nothing is copied. Raises
    ShardError naming the file for anything that is not a well-formed shard: the offsets are
    validated (monotone, inside the token buffer) before the kernels read through them."""
    path = Path(path)
    try:
        source = pa.memory_map(str(path), "r")
        reader = pa.ipc.open_file(source)
        schema = reader.schema
        i = schema.get_field_index("tokens")  # -1 when absent or repeated
        if i < 0 or schema.field(i).type != SHARD_SCHEMA.field("tokens").type or reader.num_record_batches != 1:
            raise ShardError(f"shard {path}: unexpected layout (schema {schema}); rebuild it")
        batch = reader.get_batch(0)
        col = batch.column(i)
        col.validate(full=True)  # Arrow's checks of untrusted offsets: O(docs), ~1 ms a million
        offsets = np.frombuffer(col.buffers()[1], dtype=np.int64, count=len(col) + 1, offset=col.offset * 8)
        values = col.values
        tokens = np.frombuffer(values.buffers()[1], dtype=np.uint32, count=len(values), offset=values.offset * 4)
    except FileNotFoundError:
        raise ShardError(f"shard {path}: missing; rerun `curriculum build` or check the manifest path") from None
    except (pa.ArrowException, OSError, ValueError) as exc:  # corrupt, truncated, a directory, ...
        raise ShardError(f"shard {path}: not a readable Arrow IPC file ({exc}); rebuild it") from None
    if offsets[0] != 0 or offsets[-1] != tokens.size:
        raise ShardError(f"shard {path}: offsets do not match the token buffer; rebuild it")
    return ShardView(offsets=offsets, tokens=tokens, _source=batch)

"""Tokenization: load an HF `tokenizer.json` or a SentencePiece model, encode batches to uint32.

- `load_tokenizer(path)` sniffs the file (JSON → HF `tokenizers`, else SentencePiece), hashes it,
  and resolves the CLS / SEP / MASK / PAD ids the packer and the mask kernel need (flags override).
- `Tokenizer.encode_batch(texts)` returns a flat uint32 id buffer and int64 offsets (n + 1), no
  special tokens added: the packer adds CLS/SEP itself. `encode_arrow(array)` does the same for
  an Arrow string array; SentencePiece then reads the UTF-8 bytes as they are (no Python strings). Token ids are uint32 because real
  vocabularies pass 65,536 (Gemma 2: 256,000).
- `train_tokenizer(texts, ...)` trains a small HF tokenizer offline (demo, tests, new languages).

Threads: SentencePiece takes a thread count per call (`num_threads`). HF `tokenizers` runs batches
on the Rust rayon pool, sized once per process by `RAYON_NUM_THREADS` (all cores by default) and
switched off by `TOKENIZERS_PARALLELISM=false`: `thread_env(n)` gives the environment for a worker
process that should use n threads.

Literal special-token text in a document (say "[MASK]" in a web page) is tokenized as text on the
HF path (`encode_special_tokens`), so data cannot inject control tokens. SentencePiece always
matches its user-defined symbols, which cannot be switched off, and a role may be one (Gemma 2's
MASK is the user-defined `<mask>`), as it may be a non-special added token on the HF path: then
"<mask>" in a document came out as the MASK id, an input the model must read as "predict here"
at a position it is never asked to predict. So where text can produce a role's id, each such id
in an encoded document is replaced by the encoding of its first character followed by that of
the rest ("<" + "mask>": `<`, `mask`, `>` in Gemma 2), the text as ordinary pieces; documents
without one are the library's encoding unchanged.
"""

from __future__ import annotations

import array
import hashlib
import os
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from curriculum.errors import CurriculumError
from curriculum.fileperm import share
from curriculum.resources import usable_cores

TokenizerKind = Literal["hf", "sentencepiece"]
ROLES = ("cls", "sep", "mask", "pad")
# Conventional names per role, most specific first. Only tokens declared outside the learned
# vocabulary count, control tokens first (see `_Backend.find`): Gemma 2 has a user-defined `<s>`
# (HTML strikethrough, id 204) beside its control `<bos>` (id 2).
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "cls": ("[CLS]", "<cls>", "<s>", "<bos>"),
    "sep": ("[SEP]", "<sep>", "</s>", "<eos>"),
    "mask": ("[MASK]", "<mask>"),
    "pad": ("[PAD]", "<pad>"),
}
UNK_NAMES = ("[UNK]", "<unk>")
TRAIN_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in a trained tokenizer
_BYTE_ALPHABET = 256
_UINT_CODE = "I"  # array's C unsigned int: 4 bytes on mainstream platforms (_as_uint32 copes otherwise)


class TokenizerError(CurriculumError):
    """A tokenizer file cannot be loaded, trained, or lacks a special token."""


@dataclass(frozen=True)
class TokenizerInfo:
    """What a manifest records about the tokenizer a corpus was built with."""

    path: str
    kind: TokenizerKind
    sha256: str
    vocab_size: int
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    unk_id: int | None
    special_ids: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict; its keys fit `curriculum.manifest.TokenizerMeta`."""
        d = asdict(self)
        d["special_ids"] = list(self.special_ids)
        return {"name": Path(self.path).name, **d}


class Tokenizer:
    """A loaded tokenizer with resolved special ids; build it with `load_tokenizer`."""

    def __init__(self, info: TokenizerInfo, backend: _Backend, num_threads: int) -> None:
        self.info = info
        self._be = backend
        self._num_threads = num_threads
        self._literal: dict[int, np.ndarray] = {}
        self.literal_roles = 0  # role ids that text produced and were spelled out (see the module docstring)
        producible = sorted({info.cls_id, info.sep_id, info.mask_id, info.pad_id} - backend.control)
        for rid in producible:
            piece = backend.tok.id_to_token(rid) if backend.kind == "hf" else backend.tok.id_to_piece(rid)
            parts = [self._encode_raw([piece[:1]]), self._encode_raw([piece[1:]])] if len(piece) > 1 else []
            ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.uint32)
            if np.isin(ids, producible).any():  # the pieces spell a role again: an unknown token instead
                ids = np.array([] if info.unk_id is None else [info.unk_id], np.uint32)
            self._literal[rid] = ids

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size

    def special_ids(self) -> np.ndarray:
        """Sorted uint32 ids the mask kernel must never mask (control/special tokens + the four roles)."""
        return np.asarray(self.info.special_ids, dtype=np.uint32)

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat uint32 ids of all texts (no special tokens added) and int64 offsets, len(texts) + 1."""
        return self._spell_roles(*self._encode_raw(list(texts)))

    def _encode_raw(self, texts: list) -> tuple[np.ndarray, np.ndarray]:
        return self._encode_hf(texts) if self.info.kind == "hf" else self._encode_sp(texts)

    def _spell_roles(self, flat: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Replace each role id that text produced by its literal pieces (see the module docstring)."""
        if not self._literal:
            return flat, offsets
        hit = np.zeros(flat.size, dtype=bool)
        for rid in self._literal:
            hit |= flat == rid
        if not hit.any():  # nearly always: one vectorized pass per role
            return flat, offsets
        pos = np.flatnonzero(hit)
        parts, prev = [], 0
        for p in pos.tolist():
            parts += [flat[prev:p], self._literal[int(flat[p])]]
            prev = p + 1
        parts.append(flat[prev:])
        grow = np.array([self._literal[int(flat[p])].size - 1 for p in pos], dtype=np.int64)
        shift = np.concatenate(([0], np.cumsum(grow)))[np.searchsorted(pos, offsets)]
        self.literal_roles += int(pos.size)
        return np.concatenate(parts).astype(np.uint32, copy=False), offsets + shift

    def encode_arrow(self, texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """`encode_batch` of an Arrow (large_)string array (nulls encode as empty texts).

        SentencePiece encodes bytes objects as their UTF-8 (the same ids as the str), so its
        input is the array's bytes, copied per document, never decoded: Python strings made
        from UTF-8 cost a decode here and a re-encode inside the library (~5% of tokenizing,
        measured on the build's benchmark text). HF `tokenizers` takes str only.
        """
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            raise TypeError(f"texts: expected an Arrow string or large_string array, got {texts.type}")
        if texts.null_count:
            texts = texts.fill_null("")
        if self.info.kind == "hf":
            return self._spell_roles(*self._encode_hf(texts.to_pylist()))
        binary = pa.large_binary() if pa.types.is_large_string(texts.type) else pa.binary()
        return self._spell_roles(*self._encode_sp(texts.view(binary).to_pylist()))  # a view: same buffers, no copy

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` (special tokens kept)."""
        ids = [int(i) for i in ids]
        if self.info.kind == "hf":
            return self._be.tok.decode(ids, skip_special_tokens=False)
        return self._be.tok.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, or None."""
        return self._be.id_of(token)

    def _encode_hf(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        # encode_batch_fast skips char offsets (we never use them); both run on the rayon pool.
        hf = self._be.tok
        encode = getattr(hf, "encode_batch_fast", hf.encode_batch)
        encs = encode(texts, add_special_tokens=False)
        offsets = np.zeros(len(encs) + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(e) for e in encs), dtype=np.int64, count=len(encs)), out=offsets[1:])
        # array.extend is the cheapest way from Encoding.ids (a fresh Python list) to a C buffer.
        buf = array.array(_UINT_CODE)
        for e in encs:
            buf.extend(e.ids)
        return _as_uint32(buf), offsets

    def _encode_sp(self, texts: list[str] | list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        sp = self._be.tok
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        if not texts:
            return np.zeros(0, dtype=np.uint32), offsets
        try:  # recent sentencepiece returns int32 buffers: no Python ints at all
            parts = sp.encode(texts, num_threads=self._num_threads, return_type="numpy")
            lens = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
            np.cumsum(lens, out=offsets[1:])
            # ids are in [0, vocab) < 2^31, so the int32 bits are the uint32 value.
            return np.concatenate(parts).view(np.uint32), offsets
        except (TypeError, ValueError):
            lists = sp.encode(texts, num_threads=self._num_threads, out_type=int)
        np.cumsum(np.fromiter((len(p) for p in lists), dtype=np.int64, count=len(lists)), out=offsets[1:])
        buf = array.array(_UINT_CODE)
        for p in lists:
            buf.extend(p)
        return _as_uint32(buf), offsets


def _as_uint32(buf: array.array) -> np.ndarray:
    """uint32 view of an array('I') (a copy only where a C unsigned int is not 4 bytes)."""
    return np.frombuffer(buf, dtype=np.dtype(f"u{buf.itemsize}")).astype(np.uint32, copy=False)


def thread_env(num_threads: int) -> dict[str, str]:
    """Environment variables that make a fresh process's HF tokenizers use `num_threads` threads."""
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return {"RAYON_NUM_THREADS": str(num_threads), "TOKENIZERS_PARALLELISM": "true" if num_threads > 1 else "false"}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_tokenizer(
    path: str | os.PathLike[str],
    cls_id: int | None = None,
    sep_id: int | None = None,
    mask_id: int | None = None,
    pad_id: int | None = None,
    num_threads: int | None = None,
) -> Tokenizer:
    """Load an HF tokenizer.json or a SentencePiece model and resolve its special ids.

    `num_threads` is SentencePiece's thread count per call (default: the cores this process may
    use, affinity and cgroup CPU quota counted: in a container limited to 2 CPUs on a 64-core host,
    2); HF tokenizers use the process's rayon pool (see `thread_env`).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"--tokenizer {p}: cannot read it ({exc.strerror}); give the path of a tokenizer.json or a SentencePiece .model") from exc
    digest = sha256_bytes(data)
    threads = num_threads if num_threads is not None else usable_cores()
    be = _load_hf(p, data) if data.lstrip()[:1] == b"{" else _load_sp(p, data)
    given = {"cls": cls_id, "sep": sep_id, "mask": mask_id, "pad": pad_id}
    ids: dict[str, int] = {}
    missing: list[str] = []
    for role in ROLES:
        if given[role] is not None:
            ids[role] = _check_id(p, role, int(given[role]), be)
            continue
        found = be.find(ROLE_NAMES[role])
        if found is None:
            missing.append(role)
        else:
            ids[role] = found
    if missing:
        looked = "; ".join(f"{r.upper()}: {', '.join(ROLE_NAMES[r])}" for r in missing)
        flags = " ".join(f"--{r}-id ID" for r in missing)
        kwargs = ", ".join(f"{r}_id=ID" for r in missing)
        raise TokenizerError(
            f"tokenizer {p}: no {', '.join(r.upper() for r in missing)} token (looked for {looked} among its "
            f"special/added tokens); pass {flags} (load_tokenizer({kwargs})) with ids this tokenizer reserves"
        )
    for role in ("cls", "sep", "pad"):
        if ids["mask"] == ids[role]:
            raise TokenizerError(
                f"tokenizer {p}: MASK id {ids['mask']} equals the {role.upper()} id; masked positions would be "
                f"indistinguishable, pass a distinct --mask-id"
            )
    unk_id = be.unk_id if be.unk_id is not None else be.find(UNK_NAMES)
    specials = be.control | set(ids.values()) | ({unk_id} if unk_id is not None else set())
    info = TokenizerInfo(
        path=str(p.resolve()), kind=be.kind, sha256=digest, vocab_size=be.vocab_size,
        cls_id=ids["cls"], sep_id=ids["sep"], mask_id=ids["mask"], pad_id=ids["pad"], unk_id=unk_id,
        special_ids=tuple(sorted(specials)),
    )
    return Tokenizer(info, be, threads)


@dataclass(frozen=True)
class _Backend:
    """A loaded library tokenizer and what special-id resolution needs to know about it."""

    tok: object
    kind: TokenizerKind
    vocab_size: int
    control: frozenset[int]  # never produced from text: HF added tokens marked special; SP control/unknown
    reserved: frozenset[int]  # control plus tokens declared outside the learned vocabulary
    unk_id: int | None

    def id_of(self, name: str) -> int | None:
        if self.kind == "hf":
            return self.tok.token_to_id(name)
        i = self.tok.piece_to_id(name)
        return i if self.tok.id_to_piece(i) == name else None  # SP maps unknown strings to unk

    def find(self, names: Sequence[str]) -> int | None:
        """First name that is a control token, else the first that is reserved; learned pieces never count.

        Learned pieces can spell a special name as plain text: Qwen3's byte-level BPE has `<s>` and
        `</s>` (ids 128245, 128247) from HTML, and Gemma 2 a user-defined `<s>` beside its control `<bos>`.
        """
        hits = [i for i in map(self.id_of, names) if i is not None]
        for pool in (self.control, self.reserved):
            for i in hits:
                if i in pool:
                    return i
        return None


def _check_id(path: Path, role: str, value: int, be: _Backend) -> int:
    if not 0 <= value < be.vocab_size:
        raise TokenizerError(f"tokenizer {path}: --{role}-id {value} is outside the vocabulary [0, {be.vocab_size})")
    if value not in be.reserved:  # a learned piece: text produces it, and it would never be masked
        piece = be.tok.id_to_token(value) if be.kind == "hf" else be.tok.id_to_piece(value)
        some = ", ".join(str(i) for i in sorted(be.reserved)[:8]) + (", ..." if len(be.reserved) > 8 else "")
        raise TokenizerError(f"tokenizer {path}: --{role}-id {value} is the learned piece {piece!r}, which text "
                             f"produces; give the id of a token the tokenizer reserves ({some or 'it reserves none'})")
    return value


def _load_hf(path: Path, data: bytes) -> _Backend:
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise TokenizerError(f"--tokenizer {path}: not a valid HF tokenizers JSON ({exc})") from exc
    # Literal special-token strings in documents stay text (see the module docstring).
    tok.encode_special_tokens = True
    added = tok.get_added_tokens_decoder()
    control = frozenset(i for i, t in added.items() if t.special)
    # The embedding table must cover every id, also when added tokens leave gaps.
    max_id = max([*tok.get_vocab(with_added_tokens=True).values(), -1])
    vocab_size = max(tok.get_vocab_size(with_added_tokens=True), max_id + 1)
    unk = getattr(tok.model, "unk_token", None)
    unk_id = tok.token_to_id(unk) if isinstance(unk, str) else None
    return _Backend(tok, "hf", vocab_size, control, control | frozenset(added), unk_id)


# SentencePiece piece types (sentencepiece_model.proto): what is not NORMAL(1)/UNUSED(5)/BYTE(6).
_SP_RESERVED_TYPES = (2, 3, 4)  # UNKNOWN, CONTROL, USER_DEFINED


def _load_sp(path: Path, data: bytes) -> _Backend:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except Exception as exc:  # sentencepiece raises RuntimeError/OSError depending on version
        raise TokenizerError(
            f"--tokenizer {path}: neither an HF tokenizer.json nor a SentencePiece model ({exc}); "
            f"give a tokenizer.json (HF tokenizers) or a .model file (sentencepiece)"
        ) from exc
    n = sp.get_piece_size()
    # Control and unknown pieces never come out of text; user-defined pieces (Gemma 2: newlines,
    # space runs, HTML tags) do, so they are content and stay maskable.
    # One call each over all ids (sentencepiece >= 0.2 takes a list): 2.5x faster than a call
    # per id, which was ~0.1 s of every process that loads Gemma 2's 256k vocabulary.
    ids = list(range(n))
    control = frozenset(i for i, (c, u) in enumerate(zip(sp.IsControl(ids), sp.IsUnknown(ids))) if c or u)
    names = [*UNK_NAMES, *(name for names in ROLE_NAMES.values() for name in names)]
    candidates = {sp.piece_to_id(name) for name in names}
    types = _sp_piece_types(data, candidates)
    reserved = control | frozenset(i for i, t in types.items() if t in _SP_RESERVED_TYPES)
    unk = sp.unk_id()
    return _Backend(sp, "sentencepiece", n, control, reserved, unk if 0 <= unk < n else None)


def _sp_piece_types(model: bytes, wanted: set[int]) -> dict[int, int]:
    """Types of the `wanted` piece ids, read from the ModelProto wire format (no protobuf needed).

    ModelProto field 1 is `repeated SentencePiece pieces` (length-delimited, in id order); in a
    SentencePiece message field 3 is the `type` enum (varint), NORMAL (1) when absent.
    """
    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            b = model[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value, pos
            shift += 7

    out: dict[int, int] = {}
    last = max(wanted, default=-1)
    pos, idx = 0, 0
    while pos < len(model) and idx <= last:
        tag, pos = varint(pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = varint(pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = varint(pos)
            if field == 1:
                if idx in wanted:
                    out[idx] = _piece_type(model, pos, pos + size, varint)
                idx += 1
            pos += size
        else:  # groups (3/4) are not used by sentencepiece_model.proto
            raise TokenizerError(f"SentencePiece model: unexpected wire type {wire} at byte {pos}")
    return out


def _piece_type(model: bytes, pos: int, end: int, varint) -> int:
    piece_type = 1
    while pos < end:
        tag, pos = varint(pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = varint(pos)
            if field == 3:
                piece_type = value
        elif wire == 2:
            size, pos = varint(pos)
            pos += size
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise TokenizerError(f"SentencePiece model: unexpected wire type {wire} at byte {pos}")
    return piece_type


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_path: str | os.PathLike[str],
    kind: Literal["bpe", "unigram"] = "bpe",
) -> TokenizerInfo:
    """Train an HF tokenizer offline, write its tokenizer.json atomically, return its info.

    Specials: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4; NFC normalizer. `bpe` is byte-level
    (every string encodes and decodes back to its NFC form) and deterministic: the same texts give
    the same file bytes whatever the thread count or process (checked in the tests). `unigram`
    (Metaspace, unknown characters → [UNK]) is NOT reproducible in tokenizers 0.23: its EM sums
    run in hash-map order, which Rust seeds randomly per process, so piece scores and the order of
    tied pieces differ between runs even on one thread. The manifest records the file's hash, so a
    build stays reproducible given the trained file; train once and keep it.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind not in ("bpe", "unigram"):
        raise TokenizerError(f"--kind {kind!r}: must be 'bpe' or 'unigram'")
    floor = len(TRAIN_SPECIALS) + (_BYTE_ALPHABET if kind == "bpe" else 1)
    if vocab_size <= floor:
        raise TokenizerError(f"--vocab-size {vocab_size}: must exceed {floor} (specials + base alphabet) for --kind {kind}")
    specials = list(TRAIN_SPECIALS)
    if kind == "bpe":
        tok = HFTokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
    else:
        tok = HFTokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token="[UNK]", show_progress=False,
        )
    tok.normalizer = normalizers.NFC()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    chars: set[str] = set()
    count = [0]

    def feed() -> Iterator[str]:
        for t in texts:
            if not isinstance(t, str):
                raise TokenizerError(f"train_tokenizer: texts must be str, got {type(t).__name__} at item {count[0]}")
            count[0] += 1
            if kind == "unigram":  # only to explain the trainer's "vocabulary too small" error
                chars.update(unicodedata.normalize("NFC", t))
            yield t

    try:
        tok.train_from_iterator(feed(), trainer=trainer)
    except TokenizerError:
        raise
    except Exception as exc:  # tokenizers raises bare Exceptions
        if "not large enough to contain all chars" in str(exc):
            raise TokenizerError(
                f"train_tokenizer: vocab_size {vocab_size} is smaller than the {len(chars):,} distinct characters "
                f"of the texts plus {len(specials)} specials; raise vocab_size or use kind='bpe' (byte-level)"
            ) from exc
        raise TokenizerError(f"train_tokenizer: tokenizers training failed: {exc}") from exc
    if count[0] == 0:
        raise TokenizerError("train_tokenizer: no texts given")
    placed = [tok.token_to_id(name) for name in specials]
    if placed != list(range(len(specials))):  # the documented ids are a contract of trained tokenizers
        raise TokenizerError(f"train_tokenizer: specials {specials} landed at ids {placed}, expected 0..{len(specials) - 1}")
    out = Path(out_path)
    write_file_atomic(out, tok.to_str(pretty=False).encode("utf-8"))
    return load_tokenizer(out).info


def write_file_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        share(fd)  # mkstemp makes 0600; a tokenizer file is meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


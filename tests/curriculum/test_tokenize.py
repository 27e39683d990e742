"""Tokenization: trained HF tokenizers, Gemma 2 through SentencePiece and HF, Qwen3 through HF, assets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curriculum import assets
from curriculum.manifest import TokenizerMeta
from curriculum.tokenize import (
    TokenizerError,
    TokenizerInfo,
    load_tokenizer,
    thread_env,
    train_tokenizer,
)

ROOT = Path(__file__).resolve().parents[2]
CJK_KEYS = ("zh_Hans", "zh_Hant", "ja_Jpan", "ko_Kore")


def _gflanguages_texts() -> dict[str, list[str]]:
    """Sample texts per language key from PyPI's gflanguages (mostly UDHR excerpts), sorted."""
    import gflanguages

    out: dict[str, list[str]] = {}
    for key, lang in sorted(gflanguages.LoadLanguages().items()):
        s = lang.sample_text
        texts = list(dict.fromkeys(t for t in (s.specimen_16, s.specimen_21, s.tester) if t))
        if texts:
            out[key] = texts
    return out


@pytest.fixture(scope="module")
def by_lang() -> dict[str, list[str]]:
    return _gflanguages_texts()


@pytest.fixture(scope="module")
def texts(by_lang) -> list[str]:
    return [t for ts in by_lang.values() for t in ts]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory, texts):
    out = tmp_path_factory.mktemp("tok") / "bpe" / "tokenizer.json"
    info = train_tokenizer(texts, 4000, out, kind="bpe")
    return info, load_tokenizer(out)


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    return assets.gemma2_tokenizer_path()


@pytest.fixture(scope="session")
def qwen3_path() -> Path:
    return assets.qwen3_tokenizer_path()


def _check_layout(ids: np.ndarray, offsets: np.ndarray, n: int) -> None:
    assert ids.dtype == np.uint32 and ids.ndim == 1
    assert offsets.dtype == np.int64 and offsets.shape == (n + 1,)
    assert offsets[0] == 0 and offsets[-1] == len(ids) and np.all(np.diff(offsets) >= 0)


# ---- trained tokenizers -------------------------------------------------------------------


def test_trained_bpe_round_trip_and_layout(bpe, texts):
    info, tok = bpe
    assert info.kind == "hf" and info.vocab_size == 4000
    ids, offsets = tok.encode_batch(texts)
    _check_layout(ids, offsets, len(texts))
    for i, t in enumerate(texts):
        assert tok.decode(ids[offsets[i] : offsets[i + 1]]) == unicodedata.normalize("NFC", t)
    # The flat buffer is exactly the concatenation of single-text encodes.
    for i in (0, 17, len(texts) - 1):
        one, off1 = tok.encode_batch([texts[i]])
        assert np.array_equal(one, ids[offsets[i] : offsets[i + 1]]) and off1.tolist() == [0, len(one)]
    assert int(ids.max()) < info.vocab_size


def test_trained_bpe_specials_and_manifest_fields(bpe):
    info, tok = bpe
    assert (info.pad_id, info.unk_id, info.cls_id, info.sep_id, info.mask_id) == (0, 1, 2, 3, 4)
    assert tok.special_ids().dtype == np.uint32 and tok.special_ids().tolist() == [0, 1, 2, 3, 4]
    # Literal special-token text in a document is text, never a control token.
    ids, _ = tok.encode_batch(["a [MASK] b [CLS][SEP] [PAD]"])
    assert not np.isin(ids, tok.special_ids()).any()
    meta = TokenizerMeta(**json.loads(json.dumps(info.to_dict())))
    assert (meta.cls_id, meta.sep_id, meta.mask_id, meta.pad_id, meta.vocab_size) == (2, 3, 4, 0, 4000)
    assert meta.special_ids == [0, 1, 2, 3, 4] and meta.sha256 == info.sha256


def test_empty_inputs(bpe):
    _, tok = bpe
    ids, offsets = tok.encode_batch([])
    assert ids.dtype == np.uint32 and ids.size == 0 and offsets.tolist() == [0]
    ids, offsets = tok.encode_batch(["", "x", ""])
    _check_layout(ids, offsets, 3)
    assert offsets[1] == 0 and offsets[3] == offsets[2]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=6))
def test_trained_bpe_round_trips_any_text(bpe, batch):
    _, tok = bpe
    ids, offsets = tok.encode_batch(batch)
    _check_layout(ids, offsets, len(batch))
    for i, t in enumerate(batch):
        assert tok.decode(ids[offsets[i] : offsets[i + 1]]) == unicodedata.normalize("NFC", t)


def test_bpe_training_is_deterministic(tmp_path, bpe, texts):
    """Same texts, same bytes: in this process, and in a fresh one restricted to one rayon thread."""
    info, _ = bpe
    again = train_tokenizer(texts, 4000, tmp_path / "again.json")
    assert again.sha256 == info.sha256
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    code = (
        "import json, sys; from curriculum.tokenize import train_tokenizer;"
        "texts = json.load(open(sys.argv[1], encoding='utf-8'));"
        "print(train_tokenizer(texts, 4000, sys.argv[2]).sha256)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "texts.json"), str(tmp_path / "fresh.json")],
        capture_output=True, text=True, env={**os.environ, **thread_env(1)}, cwd=ROOT, timeout=120, check=True,
    )
    assert out.stdout.strip() == info.sha256


def test_unigram_trains_and_round_trips(tmp_path, texts):
    sample = texts[::4]  # ~4,800 distinct characters: every one needs a piece
    info = train_tokenizer(sample, 8000, tmp_path / "uni.json", kind="unigram")
    tok = load_tokenizer(tmp_path / "uni.json")
    assert info.vocab_size == 8000 and (info.pad_id, info.unk_id, info.cls_id, info.sep_id, info.mask_id) == (0, 1, 2, 3, 4)
    ids, offsets = tok.encode_batch(sample)
    _check_layout(ids, offsets, len(sample))
    # Every character was seen in training, so no [UNK] and an exact round trip.
    assert not (ids == info.unk_id).any()
    for i, t in enumerate(sample):
        assert tok.decode(ids[offsets[i] : offsets[i + 1]]) == unicodedata.normalize("NFC", t)


def test_unigram_too_small_vocab_says_what_to_do(tmp_path, texts):
    with pytest.raises(TokenizerError, match=r"distinct characters.*raise vocab_size or use kind='bpe'"):
        train_tokenizer(texts, 1000, tmp_path / "small.json", kind="unigram")
    assert not (tmp_path / "small.json").exists()


def test_train_argument_errors(tmp_path):
    with pytest.raises(TokenizerError, match="--vocab-size 200: must exceed 261"):
        train_tokenizer(["abc"], 200, tmp_path / "t.json")
    with pytest.raises(TokenizerError, match="--kind 'wordpiece': must be"):
        train_tokenizer(["abc"], 1000, tmp_path / "t.json", kind="wordpiece")  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="no texts"):
        train_tokenizer([], 1000, tmp_path / "t.json")


def _hf_without_mask(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tr = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world"] * 10, tr)
    tok.save(str(path))
    return path


def test_missing_special_token_names_the_flag(tmp_path):
    path = _hf_without_mask(tmp_path / "nomask.json")
    with pytest.raises(TokenizerError, match=r"no MASK token \(looked for MASK: \[MASK\], <mask> among its special/added tokens\); pass --mask-id ID") as e:
        load_tokenizer(path)
    assert "CLS" not in str(e.value).split("looked for")[0]
    # Its learned pieces cannot stand in (a text token as [MASK] is masked and unmasked alike).
    with pytest.raises(TokenizerError, match=r"--mask-id 260 is the learned piece .* reserves \(0, 1, 2\)"):
        load_tokenizer(path, mask_id=260)


def test_flags_override_and_are_checked(bpe):
    info, _ = bpe
    tok = load_tokenizer(info.path, cls_id=3, sep_id=2, mask_id=1, pad_id=0)  # other reserved ids
    assert (tok.info.cls_id, tok.info.sep_id, tok.info.mask_id, tok.info.pad_id) == (3, 2, 1, 0)
    assert {0, 1, 2, 3, 4} <= set(tok.special_ids().tolist())
    # A learned piece is refused: text produces it, and as MASK or PAD it would never be masked.
    piece = tok.decode([9])
    with pytest.raises(TokenizerError, match=r"--mask-id 9 is the learned piece .*, which text produces; give the id "
                                             r"of a token the tokenizer reserves \(0, 1, 2, 3, 4\)"):
        load_tokenizer(info.path, mask_id=9)
    assert piece  # (a real piece of the trained vocabulary)
    with pytest.raises(TokenizerError, match=r"--mask-id 4000 is outside the vocabulary \[0, 4000\)"):
        load_tokenizer(info.path, mask_id=4000)
    with pytest.raises(TokenizerError, match="MASK id 2 equals the CLS id"):
        load_tokenizer(info.path, mask_id=2)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(TokenizerError, match=r"--tokenizer .*nope\.json: cannot read it"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "junk.model").write_bytes(b"\x00\x01 not a model")
    with pytest.raises(TokenizerError, match="neither an HF tokenizer.json nor a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")
    (tmp_path / "bad.json").write_text('{"version": "1.0"}')
    with pytest.raises(TokenizerError, match="not a valid HF tokenizers JSON"):
        load_tokenizer(tmp_path / "bad.json")


def test_sentencepiece_model_control_and_user_defined(tmp_path):
    """A SentencePiece model trained here: [CLS]/[SEP] control, [MASK] user-defined, <s>/</s> control too."""
    import sentencepiece as spm

    model = tmp_path / "sp.model"
    with open(model, "wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(["hello world foo bar"] * 50 + ["Grüße aus Köln"] * 20), model_writer=f,
            vocab_size=40, hard_vocab_limit=False, model_type="unigram", user_defined_symbols=["[MASK]"],
            control_symbols=["[CLS]", "[SEP]"], pad_id=3, minloglevel=2,
        )
    tok = load_tokenizer(model, num_threads=1)
    i = tok.info
    assert i.kind == "sentencepiece"
    # ids: <unk>=0 <s>=1 </s>=2 <pad>=3 [CLS]=4 [SEP]=5 [MASK]=6; [CLS] beats the control <s>.
    assert (i.unk_id, i.cls_id, i.sep_id, i.pad_id, i.mask_id) == (0, 4, 5, 3, 6)
    assert tok.special_ids().tolist() == [0, 1, 2, 3, 4, 5, 6]
    ids, offsets = tok.encode_batch(["hello Köln", "", "foo"])
    _check_layout(ids, offsets, 3)
    assert tok.decode(ids[offsets[0] : offsets[1]]) == "hello Köln"


def test_sp_wire_types_agree_with_sentencepiece(gemma_path):
    import sentencepiece as spm

    from curriculum.tokenize import _sp_piece_types

    data = gemma_path.read_bytes()
    sp = spm.SentencePieceProcessor(model_proto=data)
    types = _sp_piece_types(data, set(range(sp.get_piece_size())))
    assert len(types) == 256_000
    for i, t in types.items():
        assert (t == 2) == sp.is_unknown(i) and (t == 3) == sp.is_control(i), i
        assert (t == 5) == sp.is_unused(i) and (t == 6) == sp.is_byte(i), i
    user = [sp.id_to_piece(i) for i, t in types.items() if t == 4]
    assert user[:3] == ["<mask>", "<2mass>", "[@BOS@]"] and "<s>" in user and "\n" in user and len(user) == 245


def test_thread_env():
    assert thread_env(1) == {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    assert thread_env(4)["TOKENIZERS_PARALLELISM"] == "true"
    with pytest.raises(ValueError):
        thread_env(0)


# ---- Gemma 2 (SentencePiece, and the same model converted to HF) ------------------------------


def test_gemma2_sentencepiece(gemma_path, by_lang, texts):
    tok = load_tokenizer(gemma_path, num_threads=2)
    info = tok.info
    assert info.kind == "sentencepiece" and info.sha256 == assets.GEMMA2.sha256
    assert info.vocab_size == 256_000
    assert (info.pad_id, info.sep_id, info.cls_id, info.mask_id, info.unk_id) == (0, 1, 2, 4, 3)
    # Gemma's `<s>` (id 204) is an HTML tag, not BOS; `\n` (108) is content, so both stay maskable.
    assert tok.special_ids().tolist() == [0, 1, 2, 3, 4]
    assert (tok.token_to_id("<s>"), tok.token_to_id("<bos>"), tok.token_to_id("no such piece")) == (204, 2, None)
    ids, offsets = tok.encode_batch(texts)
    _check_layout(ids, offsets, len(texts))
    for i, t in enumerate(texts):  # identity normalizer + byte fallback: exact round trip
        assert tok.decode(ids[offsets[i] : offsets[i + 1]]) == t
    cjk = [t for k in CJK_KEYS for t in by_lang[k]]
    cids, _ = tok.encode_batch(cjk)
    assert int(cids.max()) >= 65_536  # why tokens are uint32, not uint16
    assert int(ids.max()) < 256_000 and not np.isin(ids, [0, 1, 2, 3]).any()


def test_gemma2_hf_agrees_with_sentencepiece(tmp_path, gemma_path, texts):
    """transformers' converter turns the same model into a tokenizer.json; the HF path must give the same ids."""
    from transformers import GemmaTokenizer

    (tmp_path / "spm").mkdir()
    shutil.copyfile(gemma_path, tmp_path / "spm" / "tokenizer.model")
    GemmaTokenizer.from_pretrained(str(tmp_path / "spm")).backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    hf = load_tokenizer(tmp_path / "tokenizer.json")
    sp = load_tokenizer(gemma_path)
    assert hf.info.kind == "hf" and hf.info.vocab_size == 256_000
    for f in ("cls_id", "sep_id", "mask_id", "pad_id", "unk_id", "special_ids"):
        assert getattr(hf.info, f) == getattr(sp.info, f), f
    hids, hoff = hf.encode_batch(texts)
    sids, soff = sp.encode_batch(texts)
    assert np.array_equal(hoff, soff) and np.array_equal(hids, sids)
    for i in range(0, len(texts), 50):
        assert hf.decode(hids[hoff[i] : hoff[i + 1]]) == texts[i]


# ---- Qwen3 tokenizer.json (HF path, no MLM specials) --------------------------------------------


def test_qwen3_needs_flags_then_round_trips(qwen3_path, by_lang, texts):
    with pytest.raises(TokenizerError, match=r"no CLS, SEP, MASK, PAD token .*pass --cls-id ID --sep-id ID --mask-id ID --pad-id ID"):
        load_tokenizer(qwen3_path)
    eot, vision_pad = 151_643, 151_654
    tok = load_tokenizer(qwen3_path, cls_id=eot, sep_id=eot, pad_id=eot, mask_id=vision_pad)
    info = tok.info
    assert info.sha256 == assets.QWEN3.sha256 and info.vocab_size == 151_669 and info.unk_id is None
    assert tok.special_ids().tolist() == list(range(151_643, 151_657))  # the added tokens marked special
    sample = texts[::5]
    ids, offsets = tok.encode_batch(sample)
    _check_layout(ids, offsets, len(sample))
    for i, t in enumerate(sample):  # byte-level BPE with NFC normalizer
        assert tok.decode(ids[offsets[i] : offsets[i + 1]]) == unicodedata.normalize("NFC", t)
    cids, _ = tok.encode_batch([t for k in CJK_KEYS for t in by_lang[k]])
    assert int(cids.max()) >= 65_536


def test_role_ids_that_text_produces_are_spelled_out(gemma_path, qwen3_path):
    # Gemma 2's MASK is the user-defined piece `<mask>`, which SentencePiece always matches in text:
    # "<mask>" in a web page became the MASK id, never a prediction target yet read as one.
    sp = load_tokenizer(gemma_path)
    raw = sp._be.tok
    docs = ["a <mask> b", "no role here", "<mask><mask>", "", "x<mask>"]
    ids, offsets = sp.encode_batch(docs)
    _check_layout(ids, offsets, len(docs))
    spelled = raw.encode("<") + raw.encode("mask>")
    assert [raw.id_to_piece(i) for i in spelled] == ["<", "mask", ">"]
    for d, doc in enumerate(docs):
        got = ids[offsets[d] : offsets[d + 1]].tolist()
        expect = []
        for i in raw.encode(doc):  # the library's own ids, with each 4 spelled out
            expect += spelled if i == sp.info.mask_id else [i]
        assert got == expect and sp.info.mask_id not in got, doc
        assert sp.decode(got) == doc  # the same text, as ordinary pieces
    assert sp.literal_roles == 4
    arrow_ids, arrow_offsets = sp.encode_arrow(pa.array(docs))
    assert np.array_equal(arrow_ids, ids) and np.array_equal(arrow_offsets, offsets)
    # HF: a mask id given by flag that is an added, non-special token (text produces it).
    eot, fim_prefix = 151_643, 151_659
    qw = load_tokenizer(qwen3_path, cls_id=eot, sep_id=eot, pad_id=eot, mask_id=fim_prefix)
    assert qw._be.tok.encode("<|fim_prefix|>", add_special_tokens=False).ids == [fim_prefix]
    ids, offsets = qw.encode_batch(["def f(): <|fim_prefix|> pass"])
    assert fim_prefix not in ids.tolist() and qw.decode(ids) == "def f(): <|fim_prefix|> pass"


# ---- assets ------------------------------------------------------------------------------------


def test_asset_cache_hit_needs_no_network(tmp_path, gemma_path, monkeypatch):
    shutil.copyfile(gemma_path, tmp_path / assets.GEMMA2.name)

    def no_pip(*_a, **_k):
        raise AssertionError("a verified cached file must not trigger a download")

    monkeypatch.setattr(assets, "_download_wheel", no_pip)
    assert assets.gemma2_tokenizer_path(tmp_path) == tmp_path / assets.GEMMA2.name
    monkeypatch.setenv("CURRICULUM_CACHE", str(tmp_path / "root"))
    assert assets.default_cache_dir() == tmp_path / "root" / "assets"


def test_corrupt_cache_without_registry_says_what_to_do(tmp_path, gemma_path, monkeypatch):
    data = bytearray(gemma_path.read_bytes())
    data[1000] ^= 0xFF  # right size, wrong hash: must not be used
    (tmp_path / assets.GEMMA2.name).write_bytes(bytes(data))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds no registry, as on an offline machine
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(assets.AssetError, match=r"could not download maxtext==0\.2\.5.*--tokenizer PATH"):
        assets.gemma2_tokenizer_path(tmp_path)


def test_default_cache_is_git_ignored(monkeypatch):
    monkeypatch.delenv("CURRICULUM_CACHE", raising=False)
    folder = assets.default_cache_dir()
    assert folder == ROOT / ".cache" / "assets"
    rel = str(folder.relative_to(ROOT) / assets.GEMMA2.name)
    ignored = subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT).returncode
    assert ignored == 0, f"{rel} must be git-ignored (Gemma terms: never commit it)"


def test_info_is_frozen(bpe):
    info, _ = bpe
    assert isinstance(info, TokenizerInfo)
    with pytest.raises(AttributeError):
        info.vocab_size = 1  # type: ignore[misc]

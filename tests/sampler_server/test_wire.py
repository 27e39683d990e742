"""The wire format: encode(Batch) -> decode gives the Batch back byte for byte."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curriculum.randomcorpus import write_random_corpus
from curriculum.recipe import parse_recipe
from sampler_server.sampler import Sampler
from trainer_client import wire

RECIPE = {
    "name": "wire-test",
    "phases": [
        {"name": "short", "tokens": 6 * 8 * 512, "batch_tokens": 8 * 512, "seq_len": 512,
         "languages": {"top": 4}, "tau": 0.7, "mask_ratio": 0.3},
        {"name": "long", "tokens": 4 * 4 * 2048, "batch_tokens": 4 * 2048, "seq_len": 2048,
         "languages": "all", "tau": {"start": 0.5, "end": 0.3}, "mask_ratio": 0.05, "anneal_segments": 2,
         "lr": {"decay": "inv_sqrt"}},
    ],
}


@pytest.fixture(scope="module")
def sampler(tmp_path_factory) -> Sampler:
    sizes = {"aaa_Latn": 60_000, "bbb_Latn": 30_000, "ccc_Cyrl": 12_000, "ddd_Arab": 5_000, "eee_Latn": 2_000}
    root = write_random_corpus(tmp_path_factory.mktemp("wire") / "m", sizes, seed=2, mean_doc_tokens=150, shard_tokens=20_000)
    return Sampler(root, parse_recipe(RECIPE), seed=7, chunk=64, block_tokens=4096)


def one(sampler: Sampler, step: int, rank: int = 0, world: int = 1, **kw) -> tuple[bytes, object]:
    b = sampler.batch(step, rank, world)
    md = wire.batch_metadata(sampler.build_id, b.info, rank, world)
    return wire.encode([(b, md)], sampler.languages, **kw), b


def assert_same(w: wire.WireBatch, b) -> None:
    for name in ("input_ids", "labels", "cu_seqlens", "lang"):
        got, want = getattr(w, name), getattr(b, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name


@pytest.mark.parametrize("labels", ["sparse", "dense"])
@pytest.mark.parametrize("compression", [None, "zstd"])
def test_round_trip_is_byte_identical(sampler, labels, compression):
    for step, rank, world in ((0, 0, 1), (3, 1, 2), (6, 0, 1), (8, 3, 4), (9, 0, 2)):
        data, b = one(sampler, step, rank, world, labels=labels, compression=compression)
        w = wire.decode(data)
        assert_same(w, b)
        assert w.max_seqlen == b.max_seqlen
        assert w.languages == tuple(sampler.languages)
        assert w.lang_names == [sampler.languages[i] for i in b.lang]
        info = b.info
        assert w.metadata == {
            "build_id": sampler.build_id, "step": step, "phase": info.phase, "phase_index": info.phase_index,
            "tau": info.tau, "mask_ratio": info.mask_ratio, "seq_len": info.seq_len, "lr_factor": info.lr_factor,
            "rank": rank, "world_size": world, "global_batch": info.global_batch, "tokens_before": info.tokens_before,
        }
        # Floats come back as the same doubles, not approximations.
        assert w.metadata["lr_factor"] == info.lr_factor and isinstance(w.metadata["tau"], float)
        # The server's one-batch body is the same bytes as `encode`, and stream pieces tile it.
        md = wire.batch_metadata(sampler.build_id, b.info, rank, world)
        enc = wire.encode_batch(b, md, sampler.languages, labels=labels, compression=compression)
        assert bytes(enc.standalone()) == data == bytes(enc.header) + bytes(enc.body) + wire.EOS


def test_input_ids_are_a_zero_copy_view_of_the_response(sampler):
    data, b = one(sampler, 2)
    buf = pa.py_buffer(data)
    w = wire.decode(buf)
    assert not w.input_ids.flags.owndata and not w.input_ids.flags.writeable
    lo = w.input_ids.__array_interface__["data"][0]
    assert buf.address <= lo and lo + w.input_ids.nbytes <= buf.address + buf.size
    dense = pa.py_buffer(one(sampler, 2, labels="dense")[0])
    wd = wire.decode(dense)
    lo = wd.labels.__array_interface__["data"][0]
    assert dense.address <= lo < dense.address + dense.size


def test_schema_is_the_documented_one(sampler):
    data, b = one(sampler, 0)
    reader = pa.ipc.open_stream(pa.py_buffer(data))
    s = reader.schema
    assert s.names == ["input_ids", "mask_pos", "mask_label", "doc_starts", "lang"]
    assert s.field("input_ids").type == pa.list_(pa.int32(), 512)
    assert s.field("mask_pos").type == pa.list_(pa.int32()) == s.field("doc_starts").type
    assert s.field("lang").type == pa.dictionary(pa.int32(), pa.string())
    assert s.metadata == {b"lc.wire": b"1", b"lc.labels": b"sparse"}
    rb = reader.read_next_batch()
    # Sparse labels: positions ascending inside each row, ids are the originals.
    pos = rb.column("mask_pos")[0].values.to_numpy()
    assert np.all(np.diff(pos) > 0)
    assert np.array_equal(rb.column("mask_label")[0].values.to_numpy(), b.labels[0, pos])
    assert rb.column("doc_starts")[0].values.to_numpy()[0] == 0
    dense = pa.ipc.open_stream(pa.py_buffer(one(sampler, 0, labels="dense")[0])).schema
    assert dense.names == ["input_ids", "labels", "doc_starts", "lang"] and dense.metadata[b"lc.labels"] == b"dense"


def test_sizes_sparse_and_zstd_buy_bytes(sampler):
    sizes = {(lab, c): len(one(sampler, 7, labels=lab, compression=c)[0]) for lab in ("sparse", "dense") for c in (None, "zstd")}
    B, L = 4, 2048
    assert sizes[("dense", None)] > 2 * 4 * B * L  # two int32 matrices
    assert sizes[("sparse", None)] < 1.3 * 4 * B * L  # mask ratio 5 %: labels nearly free
    assert sizes[("sparse", "zstd")] < sizes[("sparse", None)]
    assert sizes[("dense", "zstd")] < sizes[("dense", None)]


def test_stream_across_a_sequence_length_change(sampler):
    steps = range(4, 9)  # phase "short" ends at step 6 (L 512 -> 2048)
    batches = [sampler.batch(s) for s in steps]
    data = wire.encode([(b, wire.batch_metadata(sampler.build_id, b.info, 0, 1)) for b in batches], sampler.languages,
                       compression="zstd")
    for source in (data, io.BufferedReader(io.BytesIO(data))):
        got = list(wire.decode_stream(source))
        assert [w.metadata["step"] for w in got] == list(steps)
        assert [w.input_ids.shape[1] for w in got] == [512, 512, 2048, 2048, 2048]
        for w, b in zip(got, batches):
            assert_same(w, b)
    # Two IPC streams back to back: the first is closed by its end-of-stream marker.
    assert data.count(b"\xff\xff\xff\xff\x00\x00\x00\x00") >= 2
    with pytest.raises(wire.WireError, match="expected one batch, the stream holds 5"):
        wire.decode(data)


def test_bad_input_is_refused(sampler):
    with pytest.raises(wire.WireError, match="not an Arrow IPC stream"):
        wire.decode(b"\x00\x01garbage" * 10 + wire.EOS)
    with pytest.raises(wire.WireError, match="without the end-of-stream marker"):
        wire.decode(b"\x00\x01garbage" * 10)
    with pytest.raises(wire.WireError, match="empty response"):
        wire.decode(b"")
    with pytest.raises(TypeError, match="expected bytes"):
        wire.decode("abc")  # was AttributeError: 'str' object has no attribute 'tell'
    data, b = one(sampler, 0)
    # A /v1/stream body cut right after a whole batch decoded as a shorter stream, silently.
    two = wire.encode([(b, {"step": 0}), (b, {"step": 1})], sampler.languages)
    with pytest.raises(wire.WireError, match="truncated response"):
        list(wire.decode_stream(two[: len(two) - len(wire.EOS)]))
    with pytest.raises(ValueError, match="every row start"):
        bad = Fake(b.input_ids, b.labels, np.array([0, 5, b.input_ids.size], np.int32), b.lang)
        wire.encode([(bad, {})], sampler.languages)
    with pytest.raises(ValueError, match="rise strictly"):
        wire.encode([(Fake(b.input_ids, b.labels, np.array([0, 3], np.int32), b.lang), {})], sampler.languages)
    with pytest.raises(ValueError, match="labels must be one of"):
        wire.encode([(b, {})], sampler.languages, labels="bits")
    with pytest.raises(ValueError, match="indexing a dictionary of 2"):
        wire.encode([(b, {})], ["a", "b"])
    no_meta = wire.encode([(b, {"step": "0"})], sampler.languages)
    with pytest.raises(wire.WireError, match="lacks build_id"):
        wire.decode(no_meta)


@dataclass
class Fake:
    input_ids: np.ndarray
    labels: np.ndarray
    cu_seqlens: np.ndarray
    lang: np.ndarray


@st.composite
def fake_batches(draw):
    B = draw(st.integers(1, 6))
    L = draw(st.integers(2, 64))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 1000, (B, L)).astype(np.int32)
    ratio = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    labels = np.where(rng.random((B, L)) < ratio, rng.integers(0, 1000, (B, L)), -100).astype(np.int32)
    starts = [r * L + np.flatnonzero(np.r_[True, rng.random(L - 1) < 0.2]) for r in range(B)]
    cu = np.concatenate(starts + [np.array([B * L])]).astype(np.int32)
    lang = rng.integers(0, 3, B).astype(np.int32)
    return Fake(ids, labels, cu, lang)


@settings(max_examples=60, deadline=None)
@given(fake_batches(), st.sampled_from(["sparse", "dense"]), st.sampled_from([None, "zstd"]))
def test_round_trip_property(b, labels, compression):
    md = {k: "0" for k in wire.METADATA_FIELDS}
    w = wire.decode(wire.encode([(b, md)], ["x_Latn", "y_Latn", "z_Latn"], labels=labels, compression=compression))
    assert_same(w, b)


def test_language_names_are_kept_across_responses_and_follow_a_new_dictionary():
    b = Fake(np.zeros((2, 4), np.int32), np.full((2, 4), -100, np.int32), np.array([0, 4, 8], np.int32),
             np.array([0, 2], np.int32))
    md = {k: "0" for k in wire.METADATA_FIELDS}
    one = ["x_Latn", "y_Latn", "z_Latn"]
    first = wire.decode(wire.encode([(b, md)], one))
    second = wire.decode(wire.encode([(b, md)], one))  # another response, same dictionary
    assert first.languages == second.languages == tuple(one)
    assert second.languages is first.languages  # kept, not rebuilt
    assert second.lang_names == ["x_Latn", "z_Latn"]
    response = pa.py_buffer(wire.encode([(b, md)], ["a_Latn", "b_Latn", "c_Latn"]))
    other = wire.decode(response)
    assert other.languages == ("a_Latn", "b_Latn", "c_Latn") and other.lang_names == ["a_Latn", "c_Latn"]
    # What is kept is a copy: it does not pin the response's buffer.
    kept = wire._LAST_NAMES[0][0]
    assert kept.equals(pa.array(["a_Latn", "b_Latn", "c_Latn"]))
    for buf in kept.buffers():
        if buf is not None:
            assert not response.address <= buf.address < response.address + response.size


def test_wire_module_needs_only_numpy_and_pyarrow():
    code = (
        "import sys, trainer_client.wire;"
        "heavy = {'numba', 'fastapi', 'starlette', 'curriculum', 'sampler_server', 'polars', 'pydantic', 'torch'};"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

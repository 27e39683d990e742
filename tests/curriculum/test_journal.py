"""The amendment journal: append-only JSONL beside the recipe, torn tails, the watermark, conflicts."""

from __future__ import annotations

import json
import multiprocessing as mp
import traceback
from pathlib import Path

import pytest

from curriculum.amend import AmendmentConflict, AmendmentError, parse_amendment
from curriculum.journal import Journal, JournalLocationError, JournalOwnerError, journal_beside, journal_location, open_any


def A(from_step: int, reason: str = "", **changes):
    return parse_amendment({"from_step": from_step, "changes": changes or {"current": {"tau": 0.4}}, "reason": reason})


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "recipes" / "run.amendments.jsonl"


def snapshot(p: Path) -> bytes | None:
    return p.read_bytes() if p.exists() else None


def test_journal_locations(tmp_path):
    assert journal_location(str(tmp_path / "j.jsonl")) == tmp_path / "j.jsonl"
    assert journal_location(f"file://{tmp_path}/j.jsonl") == tmp_path / "j.jsonl"
    assert journal_location("s3://b/run.amendments.json?endpoint_override=127.0.0.1:9") == \
        "s3://b/run.amendments.json?endpoint_override=127.0.0.1:9"
    # Any other store: refused, naming it (it became a local folder `gs:` in the working directory).
    for uri in ("gs://bucket/m/run.amendments.json?retry_limit_seconds=1", "hdfs://h:9000/j"):
        with pytest.raises(JournalLocationError, match=r"amendment journal \S+: only a file .* or an s3:// object"):
            journal_location(uri)
        with pytest.raises(JournalLocationError):
            open_any(uri)
    assert isinstance(open_any(f"file://{tmp_path}/k.jsonl"), Journal)


def test_journal_beside_the_recipe():
    assert journal_beside("conf/mmbert.toml") == Path("conf/mmbert.amendments.jsonl")
    assert journal_beside(Path("/a/b/run.v2.toml")) == Path("/a/b/run.v2.amendments.jsonl")


def test_missing_and_empty_file(path):
    j = Journal(path)
    assert j.entries == [] and j.version == 0 and j.read() == [] and j.watermark() == -1 and j.earliest_step() == 0
    assert j.refresh() is False and not path.exists()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert Journal(path).entries == []
    path.write_bytes(b"\n\n")  # blank lines are skipped
    assert Journal(path).entries == []


def test_append_then_a_fresh_journal_reads_the_same(path):
    j = Journal(path)
    a = j.append(A(5, "first", pretrain={"tau": 0.4, "languages": {"top": 3}}))
    assert a.created_at is not None and a.created_at.tzinfo is not None
    assert j.version == 1 and j.entries == [a]
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    line = json.loads(raw)
    assert line["from_step"] == 5 and line["reason"] == "first" and "tau_end" not in line["changes"]["pretrain"]
    fresh = Journal(path)
    assert fresh.entries == [a] and fresh.version == 1
    assert fresh.entries[0].digest() == a.digest()


def test_append_keeps_a_given_created_at(path):
    a = parse_amendment({"from_step": 3, "changes": {"current": {"tau": 0.4}}, "created_at": "2026-01-02T03:04:05Z"})
    got = Journal(path).append(a)
    assert got.created_at == a.created_at and Journal(path).entries[0].created_at == a.created_at


def test_several_appends(path):
    j = Journal(path)
    got = [j.append(A(s, f"n{i}")) for i, s in enumerate((3, 3, 7, 20))]
    assert j.version == 4 and j.entries == got
    assert [e.reason for e in Journal(path).entries] == ["n0", "n1", "n2", "n3"]
    assert path.read_bytes().count(b"\n") == 4


def test_refresh_sees_another_writer(path):
    reader, writer = Journal(path), Journal(path)
    writer.append(A(4))
    assert reader.version == 0  # what it last read
    assert reader.refresh() is True and reader.version == 1
    assert reader.refresh() is False
    writer.append(A(9))
    assert reader.refresh() is True and [e.from_step for e in reader.entries] == [4, 9]


def test_a_torn_tail_is_ignored_then_cut(path):
    j = Journal(path)
    first = j.append(A(2, "whole"))
    with open(path, "ab") as f:
        f.write(b'{"from_step": 6, "changes": {"curr')  # a crash mid-write: no newline
    assert [e.reason for e in Journal(path).entries] == ["whole"]
    assert j.refresh() is True and j.entries == [first]
    j.append(A(6, "after"))
    raw = path.read_bytes()
    assert b'{"from_step": 6' not in raw and raw.count(b"\n") == 2  # the torn text is gone
    assert all(json.loads(x) for x in raw.splitlines())
    assert [e.reason for e in Journal(path).entries] == ["whole", "after"]


def test_a_torn_first_line_is_cut(path):
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"from_step": 1')
    j = Journal(path)
    assert j.entries == []
    j.append(A(1, "only"))
    assert [json.loads(x)["reason"] for x in path.read_bytes().splitlines()] == ["only"]


def test_a_malformed_line_names_file_and_line(path):
    path.parent.mkdir(parents=True)
    good = A(1).stamped().model_dump_json(exclude_none=True)
    path.write_text(f"{good}\n\n{{not json}}\n{good}\n")
    with pytest.raises(AmendmentError) as info:
        Journal(path)
    assert f"journal {path}, line 3" in str(info.value) and "fix or remove that line" in str(info.value)
    path.write_text(f'{good}\n{{"from_step": -4, "changes": {{"current": {{"tau": 0.4}}}}}}\n')
    with pytest.raises(AmendmentError) as info:
        Journal(path).read()
    assert "line 2" in str(info.value) and info.value.fields == ["from_step"]


def test_watermark_rises_monotonically(path):
    j = Journal(path)
    assert j.watermark() == -1
    assert j.publish(5) is False and j.watermark() == 5
    j.publish(3)
    assert j.watermark() == 5 and Journal(path).watermark() == 5
    j.publish(12)
    assert j.watermark() == 12 and j.watermark_path.read_text().strip() == "12"
    assert j.earliest_step() == 13
    assert not [p for p in j.watermark_path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_publish_reports_a_changed_journal(path):
    server, admin = Journal(path), Journal(path)
    assert server.publish(0) is False
    admin.append(A(10))
    assert server.publish(4) is True and server.version == 1
    assert server.publish(5) is False
    admin.append(A(11))
    assert server.publish(5) is True and [e.from_step for e in server.entries] == [10, 11]
    assert admin.publish(6) is False  # its own append was already read


def test_corrupt_watermark_is_named(path):
    j = Journal(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    j.watermark_path.write_text("lots\n")
    with pytest.raises(AmendmentError, match=str(j.watermark_path)):
        j.watermark()


def test_append_at_or_before_the_watermark_is_a_conflict(path):
    j = Journal(path)
    j.publish(9)
    for step in (0, 5, 9):
        before = snapshot(path)
        with pytest.raises(AmendmentConflict) as info:
            j.append(A(step))
        assert info.value.earliest == 10 and "earliest allowed from_step is 10" in str(info.value)
        assert "step 9 has already been served" in str(info.value)
        assert snapshot(path) == before and j.version == 0
    j.append(A(10))
    assert j.version == 1


def test_a_stale_object_sees_the_shared_watermark(path):
    stale, server = Journal(path), Journal(path)
    server.publish(30)
    with pytest.raises(AmendmentConflict) as info:
        stale.append(A(25))
    assert info.value.earliest == 31 and not path.exists()


def test_append_before_the_last_entry_is_a_conflict(path):
    j, other = Journal(path), Journal(path)
    other.append(A(20))
    before = snapshot(path)
    with pytest.raises(AmendmentConflict) as info:
        j.append(A(15))  # j has not read other's entry: append re-reads under the lock
    assert info.value.earliest == 20 and "starts at step 20" in str(info.value)
    assert snapshot(path) == before
    j.append(A(20, "same step overrides"))
    assert [e.reason for e in Journal(path).entries] == ["", "same step overrides"]


def test_a_failing_check_leaves_the_journal_unchanged(path):
    j = Journal(path)
    first = j.append(A(3))
    seen = []

    def refuse(entries):
        seen.append(list(entries))
        raise AmendmentError("cannot plan", ["changes.pretrain.languages"])

    before = snapshot(path)
    with pytest.raises(AmendmentError, match="cannot plan"):
        j.append(A(8, "refused"), check=refuse)
    assert snapshot(path) == before and j.entries == [first]
    (entries,) = seen
    assert entries[0] == first and entries[1].reason == "refused" and entries[1].created_at is not None
    ok = j.append(A(8, "accepted"), check=lambda entries: None)
    assert [e.reason for e in Journal(path).entries] == ["", "accepted"] and j.entries[-1] == ok


def test_a_conflict_does_not_call_check(path):
    j = Journal(path)
    j.publish(4)
    called = []
    with pytest.raises(AmendmentConflict):
        j.append(A(2), check=called.append)
    assert called == []


def _append_many(path: str, who: int, n: int, start, errors: str) -> None:
    """Child process: wait for the start signal, then append `n` entries at the same step."""
    try:
        j = Journal(path)
        start.wait(30)
        for i in range(n):
            j.append(A(7, f"p{who}-{i:02d}"))
    except BaseException:
        Path(errors, f"{who}.txt").write_text(traceback.format_exc())
        raise


def test_concurrent_appends_from_two_processes(path, tmp_path):
    path.parent.mkdir(parents=True)
    errors = tmp_path / "errors"
    errors.mkdir()
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 20, start, str(errors))) for w in range(2)]
    for p in procs:
        p.start()
    start.set()
    try:
        for p in procs:
            p.join(60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    problems = {f.name: f.read_text() for f in errors.iterdir()}
    assert not problems, "\n".join(problems.values())
    assert [p.exitcode for p in procs] == [0, 0]
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 40
    reasons = [json.loads(x)["reason"] for x in raw.splitlines()]
    for w in range(2):
        mine = [r for r in reasons if r.startswith(f"p{w}-")]
        assert mine == [f"p{w}-{i:02d}" for i in range(20)]  # each writer's order kept, nothing lost
    j = Journal(path)
    assert j.version == 40 and all(e.from_step == 7 for e in j.entries)


def test_refresh_reads_appends_incrementally_and_rereads_an_edited_file(path):
    j = Journal(path)
    j.append(A(3, "one"))
    j.append(A(4, "two"))
    other = Journal(path)
    other.append(A(5, "three"))
    assert j.refresh() and [e.reason for e in j.entries] == ["one", "two", "three"]
    # An in-place edit (same file, not an append) is noticed and read whole.
    lines = path.read_bytes().split(b"\n")
    lines[0] = lines[0].replace(b'"one"', b'"uno"')
    with open(path, "r+b") as f:
        f.write(b"\n".join(lines))
    assert j.refresh() and [e.reason for e in j.entries] == ["uno", "two", "three"]


def test_a_journal_belongs_to_one_run(path):
    """The first claim records the run; the same run claims again freely; another is refused with
    a message naming the journal, both runs and what to do. A journal with entries from before
    `.run` files existed is adopted by the first claim."""
    j = Journal(path)
    j.append(A(3, "old run's"))
    j.publish(40)
    assert not j.run_path.exists()
    j.claim("aaaa", "run A (seed 0)")  # adopted
    assert json.loads(j.run_path.read_text()) == {"owner": "aaaa", "run": "run A (seed 0)"}
    Journal(path).claim("aaaa", "run A (seed 0)")
    with pytest.raises(JournalOwnerError) as exc:
        Journal(path).claim("bbbb", "run B (seed 1)")
    msg = str(exc.value)
    assert str(path) in msg and "run A (seed 0)" in msg and "run B (seed 1)" in msg and "--journal" in msg
    assert json.loads(j.run_path.read_text())["owner"] == "aaaa"  # a refusal changes nothing
    j.run_path.write_text("{torn")
    with pytest.raises(JournalOwnerError, match="unreadable"):
        j.claim("aaaa", "run A (seed 0)")
    # A journal with no amendment (the usual case when a server is restarted with another seed)
    # says that resetting it loses nothing.
    empty = path.with_name("empty.amendments.jsonl")
    Journal(empty).claim("aaaa", "run A (seed 0)")
    Journal(empty).publish(7)
    with pytest.raises(JournalOwnerError, match=r"it holds no amendment, only that run's served steps, so resetting it "
                                                r"loses nothing\).*rm -f .*empty\.amendments\.jsonl\.watermark"):
        Journal(empty).claim("bbbb", "run B (seed 1)")


def test_the_policy_lease_goes_to_one_holder_at_a_time(path):
    j = Journal(path)
    assert j.hold_policy("A", ttl=60) is None  # A takes it
    assert j.hold_policy("A", ttl=60) is None  # and renews it
    theirs = Journal(path).hold_policy("B", ttl=60)
    assert theirs["holder"] == "A"  # B stands by while A's lease is fresh
    assert json.loads(j.policy_path.read_text())["holder"] == "A"  # asking changed nothing
    assert Journal(path).hold_policy("B", ttl=0.0) is None  # lapsed (ttl 0): B takes over
    assert j.hold_policy("A", ttl=60)["holder"] == "B"
    j.policy_path.write_text("{torn")
    assert j.hold_policy("A", ttl=60) is None  # an unreadable record holds nothing


def test_the_watermark_is_written_through_a_fresh_temp_file(tmp_path):
    # It went through `.NAME.PID`: in a shared directory another user could plant a symlink under
    # that predictable name and have a replica write through it.
    import os

    path = tmp_path / "j.jsonl"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    planted = tmp_path / f".{path.name}.watermark.{os.getpid()}"
    planted.symlink_to(victim)
    j = Journal(path)
    j.publish(7)
    assert victim.read_text() == "keep me\n" and j.watermark() == 7
    umask = os.umask(0)
    os.umask(umask)
    assert (j.watermark_path.stat().st_mode & 0o777) == 0o666 & ~umask  # readable by other users' replicas
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".j.jsonl.watermark.")) == [planted.name]

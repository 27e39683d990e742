"""ProgressStore: bounded memory over a long run, and a log reread from its tail at start-up."""

from __future__ import annotations

import pytest

from sampler_server.progress import ProgressRecord, ProgressReport, ProgressStore

LANGS = [f"l{i:03d}_Latn" for i in range(40)]


def report(step: int, langs: list[str] | None = None) -> ProgressReport:
    langs = LANGS[step % 7 : step % 7 + 5] if langs is None else langs
    return ProgressReport(step=step, tokens=1000 * step, loss=1.0 + step / 1e4, time=1e9 + step,
                          loss_by_language={k: step + i / 100 for i, k in enumerate(langs)})


def reference_latest(reports: list[ProgressReport]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in reports:
        out.update(r.loss_by_language)
    return out


@pytest.mark.parametrize("on_disk", [False, True])
def test_history_and_per_language_losses_are_bounded(tmp_path, on_disk):
    store = ProgressStore("B", history=50, path=tmp_path / "p.jsonl" if on_disk else None, loss_records=8)
    sent = [report(s) for s in range(120)]
    for r in sent:
        store.add(r)
    recs = store.records()
    assert [r.step for r in recs] == list(range(70, 120))  # the newest `history`, oldest first
    assert all(r.loss_by_language == sent[r.step].loss_by_language for r in recs[-8:])  # the newest 8 keep theirs
    assert all(r.loss_by_language == {} for r in recs[:-8])
    assert all((r.loss, r.tokens) == (sent[r.step].loss, sent[r.step].tokens) for r in recs)
    assert store.language_loss() == reference_latest(sent)  # every report read, not only the history


def test_a_restart_reads_only_the_logs_tail(tmp_path, monkeypatch):
    path = tmp_path / "p.jsonl"
    writer = ProgressStore("B", history=10_000, path=path)
    sent = [report(s) for s in range(3_000)]
    for r in sent[:1000]:
        writer.add(r)
    # Another build's lines, an unreadable line, and a line still being written.
    with open(path, "a") as f:
        other = ProgressRecord(**report(5).model_dump(), received=1.0, build_id="OTHER")
        f.write(other.model_dump_json() + "\n" + "{not json\n")
    for r in sent[1000:]:
        writer.add(r)
    with open(path, "a") as f:
        f.write('{"step": 9')  # a partial line: waits for the next read
    monkeypatch.setattr(ProgressStore, "CHUNK", 4096)  # many chunks, lines across chunk edges
    lines_read = []
    real = ProgressStore._read_line
    monkeypatch.setattr(ProgressStore, "_read_line", lambda self, raw: lines_read.append(raw) or real(self, raw))
    store = ProgressStore("B", history=100, path=path, loss_records=10)
    assert [r.step for r in store.records()] == list(range(2900, 3000))
    assert len(lines_read) == 100  # only the tail: not the 3,002 complete lines before
    assert store.language_loss() == reference_latest(sent[2900:])
    # Appends by another writer arrive on the next read; the partial line completes.
    with open(path, "a") as f:
        f.write("\n")  # the partial line ends: unreadable, counted
    writer.add(report(3000))
    assert store.records()[-1].step == 3000 and store.skipped_unreadable >= 1


def test_the_tail_holds_history_records_of_this_build_whatever_is_interleaved(tmp_path):
    path = tmp_path / "p.jsonl"
    with open(path, "w") as f:
        for s in range(40):
            f.write(ProgressRecord(**report(s).model_dump(), received=1.0, build_id="B" if s % 4 == 0 else "A")
                    .model_dump_json() + "\n")
    store = ProgressStore("B", history=3, path=path)
    assert [r.step for r in store.records()] == [28, 32, 36]
    assert store.skipped_other_build == 9  # only those after the first record kept were read


def test_skipped_lines_are_counted(tmp_path):
    path = tmp_path / "p.jsonl"
    with open(path, "w") as f:
        for s in range(5):
            f.write(ProgressRecord(**report(s).model_dump(), received=1.0, build_id="B" if s % 2 else "A").model_dump_json()
                    + "\n")
        f.write("garbage\n")
    store = ProgressStore("B", history=100, path=path)
    assert [r.step for r in store.records()] == [1, 3]
    assert store.skipped_other_build == 2 and store.skipped_unreadable == 1  # from the first record of this build on


def test_a_truncated_log_is_read_again(tmp_path):
    path = tmp_path / "p.jsonl"
    store = ProgressStore("B", history=100, path=path)
    for s in range(5):
        store.add(report(s))
    path.write_text("")
    store.add(report(7, ["l001_Latn"]))
    assert [r.step for r in store.records()] == [7] and store.language_loss() == {"l001_Latn": 7.0}

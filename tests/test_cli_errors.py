"""Every console command answers bad arguments with one line that names the flag or path, and an
exit code of 2 — never a traceback. Run as a user runs them (subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RECIPES, ROOT


def run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    (d / "file.txt").write_text("hello\n")
    (d / "emptydir").mkdir()
    (d / "binary.bin.txt").write_bytes(bytes(range(256)) * 4)
    return d


CURRICULUM = [
    (["plan", str(RECIPES / "demo.toml")], "Missing option '--manifest'"),
    (["build", "file.txt", "--out", "file.txt", "--tokenizer", "file.txt"], "--out file.txt: exists and is not a directory"),
    (["build", "file.txt", "--out", "o", "--tokenizer", "file.txt", "--workers", "0"], "'--workers'"),
    (["build", "file.txt", "--out", "o", "--tokenizer", "file.txt", "--dedup-threshold", "2"], "--dedup-threshold: Input should be less than or equal to 1"),
    (["tokenizer", "train", "nope", "--out", "t.json"], "nope: input 'nope' does not exist"),
    (["tokenizer", "train", "file.txt", "--out", "emptydir"], "--out emptydir: is a directory"),
    (["tokenizer", "train", "file.txt", "--out", "t.json", "--vocab-size", "0"], "'--vocab-size'"),
    (["demo-corpus", "file.txt"], "file.txt: exists and is not a directory"),
    (["tokenizer", "train", "file.txt", "--out", "t.json", "--vocab-size", "200"], "--vocab-size 200: must exceed 261"),
    # Were ignored (built locally), a traceback, or minutes of "Failed to connect to GCS".
    (["build", "file.txt", "--out", "o", "--tokenizer", "file.txt", "--ray-address", "127.0.0.1:1"],
     "'--ray-address': is for --executor ray"),
    (["build", "file.txt", "--out", "o", "--tokenizer", "file.txt", "--executor", "ray", "--ray-address", "127.0.0.1:1",
      "--workers", "2"], "'--workers': sets the local worker count"),
    # Were "train_tokenizer: no texts given", whatever had been dropped.
    (["tokenizer", "train", "binary.bin.txt", "--out", "t.json"], "no text to train on in 1 input file(s): no documents "
     "(binary.bin.txt: not text: NUL bytes"),
    (["tokenizer", "train", "emptydir", "--out", "t.json"], "no input files to train on under emptydir"),
    # Was a traceback (and --out defaulted to a path relative to the working directory).
    (["tokenizer", "bytes-per-token", "--out", "emptydir"], "--out emptydir: is a directory"),
    (["tokenizer", "bytes-per-token"], "Missing option '--out'"),
    (["synth", "s", "--languages", "0"], "'--languages'"),
    (["amend", str(RECIPES / "demo.toml"), "--from-step", "-1", "--set", "tau=0.5"], "'--from-step'"),
    (["amend", str(RECIPES / "demo.toml"), "--from-step", "1", "--set", "tau=0.5", "--journal", "emptydir"],
     "amendment journal emptydir: is a directory"),
    (["verify", "file.txt"], "manifest file.txt: not a directory"),
    (["verify", "a[/]b"], "manifest a[/]b: not a directory"),  # printed as text, never read as rich markup
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    # Path() folded s3://b/x into the local s3:/b/x: --work-dir made a folder named "s3:" here.
    (["build", "file.txt", "--out", "s3://b/m", "--tokenizer", "file.txt", "--work-dir", "s3://b/work"],
     "--work-dir s3://b/work: takes a local path here, not a URI"),
    (["build", "gs://b/in", "--out", "o", "--tokenizer", "file.txt"], "input gs://b/in: takes a local path here, not a URI"),
    (["demo-corpus", "s3://b/corpus"], "OUT s3://b/corpus: takes a local path here, not a URI"),
    (["tokenizer", "train", "file.txt", "--out", "s3://b/t.json"], "--out s3://b/t.json: takes a local path here"),
    (["synth", "--out", "gs://b/m"], "--out gs://b/m: takes a local path here, not a URI"),
    (["verify", "x:smile:"], "manifest x:smile:: not a directory"),  # was printed as "x😄"
    (["amend", str(RECIPES / "demo.toml"), "--from-step", "1", "--set", "languages=top:abc", "--dry-run"],
     "--set languages=top:abc: expected top:<N>"),  # was "top🔤"
    # Were tracebacks, or a build of nothing that exited 0.
    (["build", "file.txt", "--out", "o", "--tokenizer", "file.txt", "--executor", "dask"], "'--executor'"),
    (["build", "nope", "--out", "o", "--tokenizer", "file.txt"],
     "no input files found under nope: input 'nope' does not exist"),
    # Were silently ignored.
    (["plan", str(RECIPES / "demo.toml"), "--manifest", "emptydir", "--variant", "nope"], "'--variant': goes with --journal"),
    (["plan", str(RECIPES / "demo.toml"), "--manifest", "emptydir", "--journal", "nope.jsonl"],
     "--journal nope.jsonl: no such file"),
    (["synth", "--out", "s", "--from-mmbert-counts", "--languages", "5"], "'--languages' / '--total-tokens'"),
    (["synth", "--out", "s", "--from-mmbert-counts", "--from-stats", "file.txt"], "give one of --from-stats and"),
    # Were tracebacks, or accepted.
    (["synth", "--out", "s", "--from-stats", "nope.csv"], "--from-stats nope.csv: no such file"),
    (["synth", "--out", "s", "--from-stats", "file.txt"], "--from-stats file.txt: no column(s)"),
    (["synth", "--out", "s", "--total-tokens", "inf"], "'--total-tokens'"),
    (["inspect", "emptydir", "--top", "99999999999999999999"], "'--top'"),
    (["build", "file.txt", "--out", "o", "--tokenizer", "file.txt", "--min-chars", "100", "--max-chars", "10"],
     "'--min-chars': 100 is above --max-chars 10"),
    # Was reported after the whole build of labeled input, its shards written and no manifest.
    (["build", "file.txt", "--out", "o", "--tokenizer", "file.txt", "--lid-model", "nope.ftz"],
     "--lid-model nope.ftz: no such file"),
]


@pytest.mark.parametrize("args,says", CURRICULUM, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in enumerate(CURRICULUM)])
def test_curriculum_cli_errors(place, args, says):
    p = run("curriculum.cli", *args, cwd=place)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and says in p.stderr, p.stderr
    assert not (place / "file.txt").is_dir() and (place / "file.txt").read_text() == "hello\n"  # nothing clobbered
    assert not (place / "s3:").exists() and not (place / "gs:").exists()


def test_dry_run_json_is_never_wrapped(tmp_path):
    # Was hard-wrapped at the terminal's width mid-word ("langu" / "age_weights"), even piped.
    import json
    import os
    import shutil

    recipe = tmp_path / "demo.toml"
    shutil.copy(RECIPES / "demo.toml", recipe)
    reason = "a long reason [bold]with[/bold] :smile: markup " * 4
    p = subprocess.run([sys.executable, "-m", "curriculum.cli", "amend", str(recipe), "--from-step", "1", "--set",
                        "language_weights.fra_Latn=2", "--reason", reason, "--dry-run"], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env={**os.environ, "COLUMNS": "40"})
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("ok (dry run): would append "))
    entry = json.loads(line.removeprefix("ok (dry run): would append "))
    assert entry["reason"] == reason and entry["changes"] == {"pretrain": {"language_weights": {"fra_Latn": 2.0}}}


def test_plan_errors_name_the_recipe_file(tmp_path):
    # Was "phase 'pretrain', field 'languages': unknown language label 'xx'", no file named.
    recipe = tmp_path / "r.toml"
    recipe.write_text((RECIPES / "demo.toml").read_text().replace("languages = { top = 24 }", 'languages = ["xx"]', 1))
    p = run("curriculum.cli", "plan", str(recipe), "--manifest", str(ROOT / "manifests" / "reference" / "mmbert"),
            cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"recipe {recipe}: phase 'pretrain', field 'languages': " in p.stderr, p.stderr


@pytest.mark.parametrize("csv, says", [
    (None, "--compare {path}: no such file"),  # were tracebacks
    ('language,pretrain\nfra,abc\n', "column 'pretrain' holds 'abc', not a token count"),
    ('language,pretrain\nfra,5\n,3\n', "{path}, line 3: no language"),
    ('language,pretrain\nfra,5\nzzzz,3\n', "{path}, line 3: unknown language label 'zzzz'"),
    ('language,pretrain\n"fra,5\n', "--compare {path}: not a readable CSV"),
    ('"unterminated\n\x00', "{path}: no `language` column"),
    # Parsed as floats, no token counts: nan was a LinAlgError traceback from the fit.
    ('language,pretrain\nfra,5\nrus,nan\n', "column 'pretrain' holds 'nan', not a token count (language rus_Cyrl)"),
    ('language,pretrain\nfra,inf\n', "column 'pretrain' holds 'inf', not a token count"),
    ('language,pretrain\nfra,-3\n', "column 'pretrain' holds '-3', not a token count"),
])
def test_compare_tables_are_checked(tmp_path, csv, says):
    path = tmp_path / "published.csv"
    if csv is not None:
        path.write_text(csv)
    p = run("curriculum.cli", "plan", str(RECIPES / "mmbert.toml"), "--manifest",
            str(ROOT / "manifests" / "reference" / "mmbert"), "--compare", str(path), cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr and says.format(path=path) in p.stderr, p.stderr


def test_private_helpers_are_not_commands():
    import typer

    from curriculum.cli import app

    assert set(typer.main.get_command(app).commands) == {"synth", "amend", "plan", "build", "verify", "inspect",
                                                          "demo-corpus", "tokenizer"}


def test_trainer_settings_are_checked_before_anything_starts(place):
    from trainer_client.train import TrainConfig

    TrainConfig(servers=["http://127.0.0.1:1"])  # the defaults are fine
    bad = {"model": "huge", "steps": -1, "prefetch": 0, "timeout": 0.0, "lr": float("nan"), "attn": "xx",
           "checkpoint_dir": place / "file.txt", "init_from": place / "nope", "keep_checkpoints": 0}
    with pytest.raises(ValueError) as exc:
        TrainConfig(servers=["http://127.0.0.1:1"], **bad)
    for flag in ("--model 'huge'", "--steps -1", "--prefetch 0", "--timeout 0.0", "--lr nan", "--attn 'xx'",
                 "--checkpoint-dir", "--init-from", "--keep 0"):
        assert flag in str(exc.value), flag
    # Through the console command: one line, exit 2, before any server is contacted.
    p = run("trainer_client.cli", "train", "--server", "http://127.0.0.1:1", "--steps", "-1", cwd=place)
    assert p.returncode == 2 and "--steps -1: must be >= 1" in p.stderr and "Traceback" not in p.stderr
    assert "Connection refused" not in p.stderr
    # Paths the run writes are tried first: these failed at the first checkpoint, after the whole
    # run (--summary), or as a traceback (--log-dir under a file).
    p = run("trainer_client.cli", "train", "--server", "http://127.0.0.1:1", "--checkpoint-dir", "file.txt/ck",
            "--log-dir", "file.txt/logs", "--summary", "emptydir", cwd=place)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "Connection refused" not in p.stderr, p.stderr
    for says in ("--checkpoint-dir file.txt/ck: cannot write in file.txt/ck (Not a directory)",
                 "--log-dir file.txt/logs: cannot write in file.txt/logs (Not a directory)",
                 "--summary emptydir: is a directory"):
        assert says in p.stderr, (says, p.stderr)
    # Path() folded s3://b/ck into s3:/b/ck: checkpoints went to a local folder named "s3:".
    p = run("trainer_client.cli", "train", "--server", "http://127.0.0.1:1", "--checkpoint-dir", "s3://b/ck",
            "--log-dir", "gs://b/logs", "--summary", "s3://b/s.json", "--init-from", "s3://b/step_5", cwd=place)
    assert p.returncode == 2 and "Connection refused" not in p.stderr, p.stderr
    for flag, uri in (("--checkpoint-dir", "s3://b/ck"), ("--log-dir", "gs://b/logs"), ("--summary", "s3://b/s.json"),
                      ("--init-from", "s3://b/step_5")):
        assert f"{flag} {uri}: takes a local path here, not a URI" in p.stderr, p.stderr
    assert not (place / "s3:").exists() and not (place / "gs:").exists()
    p = run("trainer_client.cli", "train", "--server", "http://127.0.0.1:1", "--nproc-per-node", "0", cwd=place)
    assert p.returncode == 2 and "'--nproc-per-node'" in p.stderr, p.stderr  # ran one rank
    assert "╭" not in p.stderr and p.stderr.startswith("Usage: ")  # plain lines, as curriculum's (was a rich box)
    assert "Error: Invalid value for '--nproc-per-node': Input should be greater than or equal to 1" in p.stderr


def test_sampler_server_usage_errors_are_plain_lines(place):
    p = run("sampler_server.cli", "serve", "--bogus", cwd=place)  # was a rich box
    assert p.returncode == 2 and "╭" not in p.stderr and "Error: No such option: --bogus" in p.stderr, p.stderr


def test_sampler_server_cli_errors(place):
    p = run("sampler_server.cli", "serve", "--manifest", str(ROOT / "nope"), "--recipe", str(RECIPES / "demo.toml"),
            "--journal", "emptydir", cwd=place)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "journal emptydir: is a directory" in p.stderr, p.stderr
    p = run("sampler_server.cli", "serve", "--manifest", "m", "--recipe", "r.toml", "--journal-poll", "0", cwd=place)
    assert p.returncode == 2 and "--journal-poll (or SAMPLER_JOURNAL_POLL): Input should be greater than 0" in p.stderr
    # A port in use is refused before start-up (it used to be found after planning and warm-up).
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        p = run("sampler_server.cli", "serve", "--manifest", "m", "--recipe", "r.toml", "--port", str(port), cwd=place)
    assert p.returncode == 2 and f"--port {port} on 127.0.0.1: cannot listen there" in p.stderr, p.stderr
    for flag in ("--token", "--amend-token"):  # an empty token served an open server
        p = run("sampler_server.cli", "serve", "--manifest", "m", "--recipe", "r.toml", flag, "", cwd=place)
        assert p.returncode == 2 and f"{flag} is empty" in p.stderr, p.stderr
    p = run("sampler_server.cli", "serve", "--manifest", "m", "--recipe", "r.toml", "--progress-log", "emptydir", cwd=place)
    assert p.returncode == 2 and "--progress-log emptydir: is a directory" in p.stderr, p.stderr


def test_a_build_that_keeps_nothing_fails_and_its_manifest_is_refused_in_one_line(tmp_path, small_tokenizer):
    # Was exit 0; then `plan` and `sampler-server` died on a polars SchemaError traceback and
    # `inspect` counted the language whose every document was dropped as one of the manifest's.
    (tmp_path / "fw" / "fra_Latn" / "train").mkdir(parents=True)
    (tmp_path / "fw" / "fra_Latn" / "train" / "a.txt").write_text("trop court\n\ncourt\n")
    p = run("curriculum.cli", "build", "fw", "--out", "out", "--tokenizer", str(small_tokenizer), cwd=tmp_path)
    assert p.returncode == 1 and "error: no document was kept, out of 2" in p.stderr, p.stderr
    assert "dropped: too_short 2" in p.stdout
    p = run("curriculum.cli", "inspect", "out", cwd=tmp_path)
    assert p.returncode == 0 and "0 languages (+1 with every document dropped)" in p.stdout, p.stdout
    msg = "phase 'pretrain': the manifest has no language with tokens (1 language(s), none with a kept document)"
    p = run("curriculum.cli", "plan", str(RECIPES / "demo.toml"), "--manifest", "out", cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr and msg in p.stderr, p.stderr
    (tmp_path / "demo.toml").write_text((RECIPES / "demo.toml").read_text())  # its journal would go beside it
    p = run("sampler_server.cli", "serve", "--manifest", "out", "--recipe", "demo.toml", "--port", "0", cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr and msg in p.stderr, p.stderr
    assert "amended" not in p.stderr  # no journal involved


def test_compare_json_is_strict_json_and_the_table_fits_80_columns(tmp_path):
    import json
    import os

    one = tmp_path / "one.csv"
    one.write_text("language,pretrain\neng,1e9\n")  # one language: no fit (was NaN, which JSON.parse refuses)
    p = run("curriculum.cli", "plan", str(RECIPES / "mmbert.toml"), "--manifest",
            str(ROOT / "manifests" / "reference" / "mmbert"), "--compare", str(one), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    (pre,) = [f for f in out["compare"]["phases"] if f["phase"] == "pretrain"]
    assert pre["slope"] is None and pre["r2"] is None and pre["most_over"] == pre["most_under"] == []
    p = subprocess.run([sys.executable, "-m", "curriculum.cli", "plan", str(RECIPES / "mmbert.toml"), "--manifest",
                        str(ROOT / "manifests" / "reference" / "mmbert"), "--compare",
                        str(ROOT / "curriculum" / "data" / "mmbert_language_counts.csv")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    rows = [line for line in p.stdout.splitlines() if line.lstrip().startswith(("pretrain ", "decay:all "))]
    assert len(rows) == 2 and "…" not in "".join(rows), p.stdout  # TVD was cut to "0.0…"
    assert all(len(r) <= 80 for r in rows) and rows[1].split()[:3] == ["decay:all", "decay-all", "1834"]


def test_ctrl_c_says_the_finished_work_is_kept(place, small_tokenizer):
    # typer answers Ctrl-C in a command with exit code 130 and no word; the promised line was
    # never printed. The interrupt is raised where a real one lands: inside the build.
    code = ("import sys, curriculum.build as b, curriculum.cli as c\n"
            "def interrupted(*a, **k):\n    raise KeyboardInterrupt\n"
            "b.build = interrupted\n"
            f"sys.argv = ['curriculum', 'build', 'file.txt', '--out', 'o', '--tokenizer', {str(small_tokenizer)!r}]\n"
            "c.main()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=place)
    assert p.returncode == 130 and "interrupted; finished work is kept: rerun the same command to resume" in p.stderr, p.stderr


def test_paths_for_the_cache_the_staging_dir_and_the_report_say_what_they_are(place, small_tokenizer):
    import os

    # `--html s3://b/r.html` wrote a local folder named "s3:".
    p = run("curriculum.cli", "plan", str(RECIPES / "demo.toml"), "--manifest", str(ROOT / "manifests" / "reference" /
            "mmbert"), "--html", "s3://b/r.html", cwd=place)
    assert p.returncode == 2 and "--html s3://b/r.html: takes a local path here, not a URI" in p.stderr
    assert not (place / "s3:").exists()
    # The staging directory of a remote --out (under ~/.cache): was "error: /proc/.cache: No such file or directory".
    env = {**os.environ, "HOME": "/proc/nope"}
    p = subprocess.run([sys.executable, "-m", "curriculum.cli", "build", "file.txt", "--out", "s3://b/m", "--tokenizer",
                        str(small_tokenizer)], capture_output=True, text=True, timeout=300, cwd=place, env=env)
    assert p.returncode == 2 and "staging directory" in p.stderr and "pass --work-dir DIR" in p.stderr, p.stderr
    # A settings value without a flag is named by its variable (there is no --cache-bytes).
    env = {**os.environ, "SAMPLER_CACHE_BYTES": "10G"}
    p = subprocess.run([sys.executable, "-m", "sampler_server.cli", "serve", "--manifest", "m", "--recipe", "r.toml"],
                       capture_output=True, text=True, timeout=300, cwd=place, env=env)
    assert p.returncode == 2 and "sampler-server: SAMPLER_CACHE_BYTES: " in p.stderr and "--cache-bytes" not in p.stderr


def test_a_ray_address_nothing_answers_at_is_refused_in_seconds(place, small_tokenizer):
    import os

    for extra, env in ((["--ray-address", "127.0.0.1:1"], {}), ([], {"RAY_ADDRESS": "127.0.0.1:1"})):
        p = subprocess.run([sys.executable, "-m", "curriculum.cli", "build", "file.txt", "--out", "o", "--tokenizer",
                            str(small_tokenizer), "--executor", "ray", *extra], capture_output=True, text=True,
                           timeout=120, cwd=place, env={**os.environ, **env})
        assert p.returncode == 2 and "--ray-address 127.0.0.1:1 (or RAY_ADDRESS): nothing answers there" in p.stderr, p.stderr


def test_amend_on_a_journal_no_server_bound_needs_the_manifest(tmp_path):
    # Was a warning and an unchecked append: one entry that did not plan (here an unknown language)
    # then kept every server on the journal from starting.
    import shutil

    recipe = tmp_path / "demo.toml"
    shutil.copy(RECIPES / "demo.toml", recipe)
    args = [sys.executable, "-m", "curriculum.cli", "amend", str(recipe), "--from-step", "10", "--set",
            "language_weights.nope_Latn=2"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 2 and "no server has bound it yet" in p.stderr and "pass --manifest DIR" in p.stderr, p.stderr
    assert not (tmp_path / "demo.amendments.jsonl").exists() or (tmp_path / "demo.amendments.jsonl").read_bytes() == b""
    p = subprocess.run([*args, "--dry-run"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0 and "dry run not checked against a manifest" in p.stderr, p.stderr

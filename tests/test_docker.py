"""Container images, checked without a Docker engine.

Each Dockerfile in docker/ is parsed (parser directives, comments, line continuations, exec and
shell forms, ARG/ENV substitution) and what it names is held against the repository: COPY sources
exist, base images are pinned by a tag other than `latest`, pip installs the project with extras
that pyproject.toml declares and with the pins of constraints.txt (minus torch where the base image
brings a CUDA torch), ENTRYPOINT/CMD name console scripts the image installs with subcommands and
options those CLIs accept, `python -m` modules exist, the user is not root, the sampler has a
HEALTHCHECK on a route the app serves, and images that run numba set NUMBA_CACHE_DIR and the `omp`
threading layer. compose.yaml (PyYAML) and nginx.conf are checked against the Dockerfiles and each
other. Every rule has a test that breaks a copy of a file and expects the problem to be named.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
FILES = ("docker/sampler.Dockerfile", "docker/trainer.Dockerfile", "docker/build.Dockerfile",
         "docker/compose.yaml", "docker/nginx.conf")
# Wheels that only a torch wheel pulls in: they may leave the trainer's constraints with torch.
TORCH_ONLY = re.compile(r"^(torch|triton|nvidia-[a-z0-9-]+)$")


def read_files() -> dict[str, str]:
    return {f: (ROOT / f).read_text() for f in FILES}


# -- Dockerfile parser --------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    value: str  # arguments, continuation lines joined
    line: int  # first line, 1-based

    def split_flags(self) -> tuple[dict[str, str], str]:
        """Leading `--name=value` / `--name` flags (COPY --from, HEALTHCHECK --interval, ...)."""
        flags: dict[str, str] = {}
        rest = self.value
        while rest.startswith("--"):
            tok, _, rest = rest.partition(" ")
            name, _, val = tok[2:].partition("=")
            flags[name] = val
            rest = rest.lstrip()
        return flags, rest

    def exec_form(self, text: str | None = None) -> list[str] | None:
        """The JSON array of an exec-form instruction, else None (shell form)."""
        text = self.value if text is None else text
        if text.startswith("["):
            try:
                arr = json.loads(text)
            except json.JSONDecodeError:
                return None
            if isinstance(arr, list) and all(isinstance(a, str) for a in arr):
                return arr
        return None


_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$")


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions as Docker's parser reads them: directives only before anything else,
    comment lines dropped even inside a continuation, a trailing escape char continues."""
    lines = text.splitlines()
    escape = "\\"
    i = 0
    while i < len(lines):  # parser directives: `# syntax=...`, `# escape=...`
        m = _DIRECTIVE.match(lines[i])
        if not m:
            break
        if m.group(1).lower() == "escape":
            escape = m.group(2)
        i += 1
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for n in range(i, len(lines)):
        raw = lines[n]
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue
        if not stripped:  # an empty line inside a continuation is ignored
            continue
        if not parts:
            start = n + 1
        body = raw.rstrip()
        if body.endswith(escape):
            parts.append(body[: -len(escape)].strip())
            continue
        parts.append(body.strip())
        joined = " ".join(p for p in parts if p)
        keyword, _, value = joined.partition(" ")
        out.append(Instruction(keyword.upper(), value.strip(), start))
        parts = []
    if parts:
        raise ValueError(f"line {start}: the file ends inside a line continuation")
    return out


_VAR = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")


def expand(text: str, env: dict[str, str]) -> str:
    """Docker's (and compose's) variable substitution: $V, ${V}, ${V:-default}, ${V:+alt}."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        val = env.get(name, "")
        if m.group(2) == "-":
            return val or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if val else ""
        return val

    return _VAR.sub(sub, text)


def parse_env(value: str) -> dict[str, str]:
    """ENV k=v k2="v 2" (or the legacy `ENV k v`)."""
    toks = shlex.split(value)
    if toks and "=" not in toks[0]:
        return {toks[0]: " ".join(toks[1:])}
    return dict(t.split("=", 1) for t in toks)


# -- shell commands in RUN ----------------------------------------------------------------------


@dataclass
class ShellCommand:
    argv: list[str]
    stdout: str | None = None  # `> FILE`


def shell_commands(script: str) -> list[ShellCommand]:
    """Simple commands of a shell script, split at && || ; | with their `>` redirections."""
    lex = shlex.shlex(script, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    cmds = [ShellCommand([])]
    redirect = False
    for tok in lex:
        if tok in ("&&", "||", ";", "|", "&", "(", ")"):
            cmds.append(ShellCommand([]))
        elif tok in (">", ">>"):
            redirect = True
        elif redirect:
            cmds[-1].stdout, redirect = tok, False
        else:
            cmds[-1].argv.append(tok)
    return [c for c in cmds if c.argv]


PIP_VALUE_OPTIONS = {"-c", "--constraint", "-r", "--requirement", "-e", "--editable", "-i", "--index-url",
                     "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix", "--root",
                     "--upgrade-strategy", "--platform", "--python-version", "--implementation", "--abi",
                     "--progress-bar", "--cache-dir", "--src", "--config-settings", "-C"}


@dataclass
class PipInstall:
    requirements: list[str]
    constraints: list[str]
    options: list[str]


def pip_install(argv: list[str]) -> PipInstall | None:
    """`pip install ...` / `python -m pip install ...`, else None."""
    if argv[:1] and PurePosixPath(argv[0]).name in ("pip", "pip3"):
        rest = argv[1:]
    elif len(argv) > 2 and PurePosixPath(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "pip"]:
        rest = argv[3:]
    else:
        return None
    if not rest or rest[0] != "install":
        return None
    reqs, cons, opts = [], [], []
    it = iter(rest[1:])
    for tok in it:
        if tok.startswith("-"):
            name, eq, val = tok.partition("=")
            if name in PIP_VALUE_OPTIONS:
                val = val if eq else next(it, "")
                if name in ("-c", "--constraint"):
                    cons.append(val)
                opts.append(f"{name}={val}")
            else:
                opts.append(tok)
        else:
            reqs.append(tok)
    return PipInstall(reqs, cons, opts)


# -- the project --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    pyproject: dict
    constraints: dict[str, str]  # canonical name -> pinned version
    constraint_lines: tuple[str, ...]
    routes: frozenset[str]  # paths the sampler app serves

    @property
    def name(self) -> str:
        return canonicalize_name(self.pyproject["project"]["name"])

    @property
    def extras(self) -> dict[str, list[str]]:
        return self.pyproject["project"].get("optional-dependencies", {})

    @property
    def scripts(self) -> dict[str, str]:
        return self.pyproject["project"].get("scripts", {})

    def requirements(self, extras: list[str]) -> set[str]:
        """Canonical names of what `pip install .[extras]` pulls directly (self-references
        such as language-curriculum[curriculum] followed)."""
        names: set[str] = set()
        seen = set(extras)
        todo = list(self.pyproject["project"].get("dependencies", []))
        todo += [r for e in extras for r in self.extras.get(e, [])]
        while todo:
            req = Requirement(todo.pop())
            name = canonicalize_name(req.name)
            if name != self.name:
                names.add(name)
                continue
            for e in set(req.extras) - seen:
                seen.add(e)
                todo += self.extras.get(e, [])
        return names


@lru_cache(maxsize=1)
def project() -> Project:
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = tuple(l.strip() for l in (ROOT / "constraints.txt").read_text().splitlines())
    pins = {}
    for l in lines:
        if l and not l.startswith("#"):
            name, _, ver = l.partition("==")
            pins[canonicalize_name(name)] = ver
    app = (ROOT / "sampler_server" / "app.py").read_text()
    routes = frozenset(re.findall(r"@(?:app|api)\.(?:get|post|api_route)\(\s*\"([^\"]+)\"", app))
    return Project(py, pins, lines, routes)


@lru_cache(maxsize=None)
def cli_of(entry: str):
    """The click command behind a console-script entry point (`module:function`): the module's
    typer app or click group, or the function itself when it is a click command. (Typer ships its
    own copy of click, so commands are recognised by shape, not by class.)"""
    import typer.main

    module, _, attr = entry.partition(":")
    mod = importlib.import_module(module)
    for cand in (getattr(mod, attr.split(".")[0], None), getattr(mod, "app", None), getattr(mod, "cli", None)):
        if isinstance(cand, typer.Typer):
            return typer.main.get_command(cand)
        if hasattr(cand, "params") and hasattr(cand, "main"):
            return cand
    return None


def _options(cmd) -> dict[str, object]:
    return {o: p for p in cmd.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}


def cli_problems(script: str, cmd, args: list[str]) -> list[str]:
    """Subcommands and options in `args` that the CLI lacks; required options and arguments missing."""
    problems = []
    path = script
    i = 0
    while isinstance(getattr(cmd, "commands", None), dict):  # a group: options, then a subcommand
        while i < len(args) and args[i].startswith("-"):
            if args[i] != "--help" and args[i].split("=")[0] not in _options(cmd):
                problems.append(f"`{path}` has no option {args[i]}")
            i += 1
        if i == len(args):
            return problems
        sub = cmd.commands.get(args[i])
        if sub is None:
            return problems + [f"`{path}` has no subcommand {args[i]!r} (has: {', '.join(sorted(cmd.commands))})"]
        path, cmd, i = f"{path} {args[i]}", sub, i + 1
    opts = _options(cmd)
    given, positional = set(), 0
    rest = iter(args[i:])
    for tok in rest:
        if tok == "--help":
            return problems
        if tok.startswith("-") and len(tok) > 1:
            name, eq, _ = tok.partition("=")
            given.add(name)
            opt = opts.get(name)
            if opt is None:
                problems.append(f"`{path}` has no option {name}")
            elif not eq and not (getattr(opt, "is_flag", False) or getattr(opt, "count", False)):
                next(rest, None)  # its value
        else:
            positional += 1
    for p in cmd.params:
        if p.param_type_name == "option" and p.required and not p.envvar and not set(p.opts) & given:
            problems.append(f"`{path}` needs {p.opts[0]}")
    required_args = [p for p in cmd.params if p.param_type_name == "argument" and p.required]
    if positional < len(required_args):
        problems.append(f"`{path}` needs {', '.join(p.name.upper() for p in required_args)}")
    return problems


def _module_file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.exists():
            return f
    return None


@lru_cache(maxsize=None)
def module_level_imports(path: Path) -> tuple[str, ...]:
    """Dotted names a module imports at module level: what loading it needs. (Imports inside
    functions or try blocks are optional paths, such as ray in curriculum/executors.py.)"""
    names: list[str] = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]  # `from pkg import module`
    return tuple(names)


@lru_cache(maxsize=1)
def distributions_of_modules() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@lru_cache(maxsize=None)
def console_script(name: str) -> tuple[str, str] | None:
    """(distribution, entry point) of an installed console script."""
    for ep in importlib.metadata.entry_points(group="console_scripts", name=name):
        return canonicalize_name(ep.dist.name) if ep.dist else "", ep.value
    return None


@lru_cache(maxsize=None)
def installed_closure(names: frozenset[str]) -> frozenset[str]:
    """These distributions and everything they require (versions as installed in this venv)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        try:
            reqs = importlib.metadata.requires(n) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for r in reqs:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return frozenset(seen)


def import_problems(img: Image, package: str, where: str) -> list[str]:
    """Loading any module of the package, and the project modules those import, needs only what
    the image has: project packages copied in, third-party ones installed by its extras
    (directly or as a dependency of one)."""
    proj = project()
    have = installed_closure(frozenset(proj.requirements(img.installed_extras())))
    problems: list[str] = []
    todo = sorted((ROOT / package).rglob("*.py"))
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        rel = path.relative_to(ROOT).as_posix()
        for name in module_level_imports(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if (ROOT / top / "__init__.py").exists():
                if top not in img.project_packages():
                    problems.append(f"{where}: {rel} imports {name}, but package {top!r} is not copied into the image")
                    continue
                parts = name.split(".")
                todo += [f for k in range(1, len(parts) + 1) if (f := _module_file(".".join(parts[:k])))]
                continue
            owners = {canonicalize_name(d) for d in distributions_of_modules().get(top, [])}
            if owners and not owners & have:
                problems.append(f"{where}: {rel} imports {top} ({', '.join(sorted(owners))}), which the image's "
                                f"extras {img.installed_extras()} do not install")
    return sorted(set(problems))


# -- a parsed image -----------------------------------------------------------------------------


def local_requirement(req: str) -> tuple[str, list[str]] | None:
    """(path, extras) of a pip requirement that installs a local folder: `.[a,b]`, `/app[a]`."""
    m = re.fullmatch(r"(\.|\.?/[^\[\]]*)(?:\[([\w,\s-]+)\])?", req)
    if not m:
        return None
    return m.group(1), [e.strip() for e in (m.group(2) or "").split(",") if e.strip()]


@dataclass
class Image:
    name: str  # file name
    instructions: list[Instruction]
    bases: list[str] = field(default_factory=list)  # resolved FROM images of every stage
    stages: set[str] = field(default_factory=set)
    env: dict[str, str] = field(default_factory=dict)  # final stage
    files: dict[str, Path] = field(default_factory=dict)  # image path -> repo path (COPY)
    runs: list[tuple[int, str, str]] = field(default_factory=list)  # (line, workdir, script)
    user: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    healthcheck: list[str] | None = None  # None: absent; []: NONE
    problems: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.bases[-1] if self.bases else ""

    @property
    def argv(self) -> list[str]:
        """What the container runs by default (Docker's ENTRYPOINT + CMD rule, exec forms)."""
        return (self.entrypoint or []) + (self.cmd or [])

    def in_image(self, path: str, workdir: str) -> Path | None:
        """The repo file or folder that an image path (absolute or relative to workdir) came from."""
        norm = PurePosixPath(path if path.startswith("/") else f"{workdir}/{path}")
        for dest, src in self.files.items():
            d = PurePosixPath(dest)
            if norm == d:
                return src
            if src.is_dir() and d in norm.parents:
                return src / norm.relative_to(d)
        return None

    def pip_installs(self) -> list[tuple[int, str, PipInstall, list[ShellCommand]]]:
        out = []
        for line, workdir, script in self.runs:
            cmds = shell_commands(script)
            for c in cmds:
                pi = pip_install(c.argv)
                if pi is not None:
                    out.append((line, workdir, pi, cmds))
        return out

    def installed_extras(self) -> list[str]:
        """Extras of the project's own `pip install PATH[extras]`."""
        return [e for _, _, pi, _ in self.pip_installs() for r in pi.requirements
                if (local := local_requirement(r)) for e in local[1]]

    def project_packages(self) -> set[str]:
        """Top-level project packages copied into the image (installed from there)."""
        return {src.name for src in self.files.values() if src.is_dir() and (src / "__init__.py").exists()}


def load_image(name: str, text: str) -> Image:
    img = Image(name, [])
    try:
        img.instructions = parse_dockerfile(text)
    except ValueError as exc:
        img.problems.append(f"{name}: {exc}")
        return img
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    workdir = "/"
    for ins in img.instructions:
        where = f"{name}:{ins.line}"
        k = ins.keyword
        if k == "ARG":
            key, _, default = ins.value.partition("=")
            args[key.strip()] = expand(default.strip().strip('"'), {**args, **env})
        elif k == "FROM":
            flags, rest = ins.split_flags()
            toks = expand(rest, args).split()
            img.bases.append(toks[0])
            if len(toks) >= 3 and toks[1].upper() == "AS":
                img.stages.add(toks[2])
            env, workdir = {}, "/"
            img.files, img.user, img.entrypoint, img.cmd, img.healthcheck = {}, None, None, None, None
        elif k == "ENV":
            for key, val in parse_env(ins.value).items():
                env[key] = expand(val, {**args, **env})
            img.env = dict(env)
        elif k == "WORKDIR":
            wd = expand(ins.value, {**args, **env})
            workdir = wd if wd.startswith("/") else f"{workdir.rstrip('/')}/{wd}"
        elif k in ("COPY", "ADD"):
            flags, rest = ins.split_flags()
            parts = ins.exec_form(rest) or shlex.split(rest)
            parts = [expand(p, {**args, **env}) for p in parts]
            *srcs, dest = parts
            if not srcs:
                img.problems.append(f"{where}: {k} needs a source and a destination")
                continue
            if k == "ADD" and any(re.match(r"^[a-z]+://", s) for s in srcs):
                img.problems.append(f"{where}: ADD of a URL; download in a RUN with a checksum, or COPY")
            if "from" in flags:
                continue
            dest_abs = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"
            as_dir = dest.endswith("/") or len(srcs) > 1
            for s in srcs:
                if s.strip("./") == "":
                    img.problems.append(f"{where}: {k} {s} copies the whole build context (.venv, demo-out, ...); "
                                        "name the files and folders")
                    continue
                matches = sorted(ROOT.glob(s)) if any(c in s for c in "*?[") else [ROOT / s]
                matches = [m for m in matches if m.exists()]
                if not matches:
                    img.problems.append(f"{where}: {k} source {s!r} does not exist in the repository")
                for m in matches:
                    target = f"{dest_abs.rstrip('/')}/{m.name}" if as_dir and not m.is_dir() else dest_abs.rstrip("/")
                    img.files[str(PurePosixPath(target))] = m
        elif k == "RUN":
            flags, rest = ins.split_flags()
            # Not expanded: in a RUN, the shell (not Docker) substitutes variables.
            arr = ins.exec_form(rest)
            img.runs.append((ins.line, workdir, rest if arr is None else " ".join(shlex.quote(a) for a in arr)))
        elif k == "USER":
            img.user = expand(ins.value, {**args, **env})
        elif k in ("ENTRYPOINT", "CMD"):
            arr = ins.exec_form()
            if arr is None:
                arr = ["/bin/sh", "-c", ins.value]  # shell form
            setattr(img, k.lower(), arr)
            if k == "ENTRYPOINT":
                img.cmd = None  # Docker resets CMD when ENTRYPOINT is set after it
        elif k == "HEALTHCHECK":
            flags, rest = ins.split_flags()
            if rest.upper() == "NONE":
                img.healthcheck = []
            elif rest.upper().startswith("CMD"):
                body = rest[3:].strip()
                img.healthcheck = ins.exec_form(body) or ["/bin/sh", "-c", body]
            else:
                img.problems.append(f"{where}: HEALTHCHECK must be `CMD ...` or `NONE`")
    return img


# -- checks on one image ------------------------------------------------------------------------


def pinned_tag_problem(image: str) -> str | None:
    if "@sha256:" in image:
        return None
    tag = image.rpartition(":")[2] if ":" in image.split("/")[-1] else ""
    if not tag:
        return f"base image {image!r} has no tag (pin one other than latest)"
    if tag == "latest":
        return f"base image {image!r} is pinned to latest (pin a version tag)"
    return None


def command_problems(img: Image, argv: list[str], where: str) -> list[str]:
    """What the command names must be in the image: a console script it installs (ours from
    [project.scripts], or a dependency's), or python -m/-c on code that exists."""
    proj = project()
    if not argv:
        return [f"{where}: no command"]
    exe = PurePosixPath(argv[0]).name
    if exe in ("sh", "bash") and argv[1:2] == ["-c"]:
        return [f"{where}: shell-form command {argv[2]!r}; use the exec form (signals reach the process)"]
    if re.fullmatch(r"python(3(\.\d+)?)?", exe):
        if argv[1:2] == ["-c"]:
            try:
                compile(argv[2], where, "exec")
            except SyntaxError as exc:
                return [f"{where}: python -c does not compile: {exc}"]
            return []
        if argv[1:2] == ["-m"]:
            module = argv[2]
            top = module.split(".")[0]
            if (ROOT / top / "__init__.py").exists():
                base = ROOT / Path(*module.split("."))
                if not (base.with_suffix(".py").exists() or (base / "__main__.py").exists()):
                    return [f"{where}: python -m {module}: no such module in the repository"]
                if top not in img.project_packages():
                    return [f"{where}: python -m {module}: package {top!r} is not copied into the image"]
                return import_problems(img, top, f"{where}: python -m {module}")
            return [] if importlib.util.find_spec(top) else [f"{where}: python -m {module}: no such module"]
        return [f"{where}: python runs neither -m MODULE nor -c CODE"]
    if exe in proj.scripts:
        entry = proj.scripts[exe]
        module = entry.split(":")[0]
        top = module.split(".")[0]
        if not (ROOT / Path(*module.split("."))).with_suffix(".py").exists():
            return [f"{where}: console script {exe!r} points at {entry}, which does not exist"]
        if top not in img.project_packages():
            return [f"{where}: console script {exe!r} needs package {top!r}, which is not copied into the image"]
        if not img.installed_extras():
            return [f"{where}: console script {exe!r}: the image never pip-installs the project with extras"]
        problems = import_problems(img, top, f"{where}: {exe!r}")
        cli = cli_of(entry)
        return problems + ([f"{where}: {p}" for p in cli_problems(exe, cli, argv[1:])] if cli else [])
    found = console_script(exe)
    if found:
        dist, entry = found
        if dist not in proj.requirements(img.installed_extras()):
            return [f"{where}: {exe!r} comes from {dist!r}, which the image's extras "
                    f"{img.installed_extras()} do not install"]
        cli = cli_of(entry)
        return [f"{where}: {p}" for p in cli_problems(exe, cli, argv[1:])] if cli else []
    return [f"{where}: {exe!r} is neither a console script of the project ([project.scripts]) nor of "
            "a dependency the image installs"]


def constraint_problems(img: Image, line: int, workdir: str, pi: PipInstall, cmds: list[ShellCommand]) -> list[str]:
    """The project is installed with the pins of constraints.txt: as is, or filtered in the same
    RUN by `grep -v` that drops only torch and the wheels only torch pulls."""
    proj = project()
    where = f"{img.name}:{line}"
    extras = img.installed_extras()
    needed = proj.requirements(extras)
    cuda_base = img.base.startswith("pytorch/pytorch:") and "cuda" in img.base
    if not pi.constraints:
        return [f"{where}: pip install without --constraint: versions are not pinned (use constraints.txt)"]
    problems = []
    for c in pi.constraints:
        src = img.in_image(c, workdir)
        if src is not None and src.resolve() == (ROOT / "constraints.txt").resolve():
            effective = set(proj.constraints)
        else:
            made = [x for x in cmds if x.stdout and PurePosixPath(x.stdout) == PurePosixPath(c)]
            if not made or made[0].argv[0] != "grep":
                problems.append(f"{where}: constraint file {c!r} is neither the copied constraints.txt nor "
                                "made from it by grep in the same RUN")
                continue
            g = made[0].argv
            flags = "".join(t[1:] for t in g[1:] if re.fullmatch(r"-[viE]+", t))
            rest = [t for t in g[1:] if not re.fullmatch(r"-[viE]+", t)]
            pattern, inputs = rest[0], rest[1:]
            if [img.in_image(i, workdir) for i in inputs] != [ROOT / "constraints.txt"]:
                problems.append(f"{where}: {c!r} is not made from the copied constraints.txt")
                continue
            rx = re.compile(pattern, re.I if "i" in flags else 0)
            kept = [l for l in proj.constraint_lines if bool(rx.search(l)) != ("v" in flags)]
            effective = {canonicalize_name(l.partition("==")[0]) for l in kept if l and not l.startswith("#")}
            dropped = sorted(set(proj.constraints) - effective)
            wrong = [d for d in dropped if not TORCH_ONLY.match(d)]
            if wrong:
                problems.append(f"{where}: {c!r} drops pins other than torch's: {wrong}")
        if "torch" in needed and cuda_base and "torch" in effective:
            problems.append(f"{where}: constraints pin torch=={proj.constraints['torch']} (the CPU build): pip "
                            f"would replace the CUDA torch of {img.base}; drop torch from the constraints")
        unpinned = sorted(n for n in needed - effective if not (n == "torch" and cuda_base))
        if unpinned:
            problems.append(f"{where}: not pinned by the constraints: {unpinned}")
    return problems


def image_problems(img: Image) -> list[str]:
    proj = project()
    problems = list(img.problems)
    name = img.name
    if not img.bases:
        return problems + [f"{name}: no FROM"]
    for b in img.bases:
        if b in img.stages or b == "scratch":
            continue
        p = pinned_tag_problem(b)
        if p:
            problems.append(f"{name}: {p}")
    extras = img.installed_extras()
    if not img.pip_installs():
        problems.append(f"{name}: never runs pip install")
    for line, workdir, pi, cmds in img.pip_installs():
        for r in pi.requirements:
            local = local_requirement(r)
            if local is None:
                problems.append(f"{name}:{line}: pip install {r!r}: install the project with its extras "
                                "(.[extra]) so that every dependency comes pinned from constraints.txt")
                continue
            path, wanted = local
            for f in ("pyproject.toml", proj.pyproject["project"].get("readme")):
                if isinstance(f, str) and img.in_image(f"{path.rstrip('/')}/{f}", workdir) != ROOT / f:
                    why = "" if f == "pyproject.toml" else " (pyproject.toml names it as readme: the build fails)"
                    problems.append(f"{name}:{line}: pip install {r}: {f} is not copied to {path} "
                                    f"(workdir {workdir}){why}")
            if not wanted:
                problems.append(f"{name}:{line}: pip install {r}: no extras; the base install lacks the CLIs' deps")
            for e in wanted:
                if e not in proj.extras:
                    problems.append(f"{name}:{line}: extra {e!r} is not in pyproject.toml "
                                    f"[project.optional-dependencies] ({', '.join(sorted(proj.extras))})")
        problems += constraint_problems(img, line, workdir, pi, cmds)
    # The user the container runs as.
    if img.user is None:
        problems.append(f"{name}: no USER: the container would run as root")
    else:
        user = img.user.split(":")[0]
        if user in ("root", "0"):
            problems.append(f"{name}: USER {img.user} is root")
        elif not user.isdigit():
            made = any(re.search(rf"\b(useradd|adduser)\b[^&;|]*\s{re.escape(user)}(\s|$)", s) for _, _, s in img.runs)
            if not made:
                problems.append(f"{name}: USER {user} is never created (useradd/adduser in a RUN)")
    # What it runs.
    if img.entrypoint is None and img.cmd is None:
        problems.append(f"{name}: neither ENTRYPOINT nor CMD")
    else:
        problems += command_problems(img, img.argv, f"{name} ENTRYPOINT/CMD")
    serves = bool(img.argv) and PurePosixPath(img.argv[0]).name == "sampler-server"
    if serves:
        if not img.healthcheck:
            problems.append(f"{name}: the sampler has no HEALTHCHECK")
        else:
            problems += command_problems(img, img.healthcheck, f"{name} HEALTHCHECK")
            problems += url_problems(img.healthcheck, int(img.env.get("SAMPLER_PORT", "8000")), proj.routes,
                                     f"{name} HEALTHCHECK")
    elif img.healthcheck:
        problems += command_problems(img, img.healthcheck, f"{name} HEALTHCHECK")
    # numba: writable cache, omp layer, and the OpenMP runtime that layer loads.
    needed = proj.requirements(extras)
    if "numba" in needed:
        cache = img.env.get("NUMBA_CACHE_DIR")
        if not cache or not cache.startswith("/"):
            problems.append(f"{name}: installs numba but sets no absolute NUMBA_CACHE_DIR (DEPENDENCIES.md trap 3)")
        elif not cache.startswith("/tmp/") and not any(re.search(rf"mkdir[^&;|]*\s{re.escape(cache)}(\s|/|$)", s)
                                                       for _, _, s in img.runs):
            problems.append(f"{name}: NUMBA_CACHE_DIR {cache} is never created (mkdir) in a RUN")
        if img.env.get("NUMBA_THREADING_LAYER") != "omp":
            problems.append(f"{name}: installs numba but NUMBA_THREADING_LAYER is "
                            f"{img.env.get('NUMBA_THREADING_LAYER')!r}, not 'omp' (DEPENDENCIES.md trap 2)")
        if "slim" in img.base and not any(re.search(r"apt-get install[^&;|]*\blibgomp1\b", s) for _, _, s in img.runs):
            problems.append(f"{name}: numba's omp layer needs libgomp1, which {img.base} lacks (apt-get install it)")
    if "torch" in needed and not (img.base.startswith("pytorch/pytorch:") and "cuda" in img.base):
        problems.append(f"{name}: installs torch on {img.base}; a trainer image starts from a pytorch/pytorch CUDA tag")
    return problems


def url_problems(argv: list[str], port: int, routes: frozenset[str], where: str) -> list[str]:
    """A health-check URL must hit 127.0.0.1 on the port the service listens on, on a route it serves."""
    text = " ".join(argv)
    urls = re.findall(r"https?://127\.0\.0\.1:(%s|\d+)(/[\w/-]*)", text)
    if not urls:
        return [f"{where}: no http://127.0.0.1:PORT/PATH URL in {text!r}"]
    problems = []
    for p, path in urls:
        if p == "%s" and "SAMPLER_PORT" not in text:
            problems.append(f"{where}: the port comes from an unknown variable")
        elif p != "%s" and int(p) != port:
            problems.append(f"{where}: probes port {p}, the server listens on {port}")
        if path not in routes:
            problems.append(f"{where}: route {path} is not served by sampler_server/app.py ({sorted(routes)})")
    return problems


# -- nginx.conf ---------------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None
    line: int

    def find(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def walk(self):
        yield self
        for d in self.block or []:
            yield from d.walk()


def parse_nginx(text: str) -> Directive:
    """nginx's grammar: directives end with `;`, blocks in braces, `#` comments, quoted strings."""
    toks: list[tuple[str, int]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        for m in re.finditer(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|#.*$|[{};]|[^\s{};#"\']+', raw):
            t = m.group(0)
            if not t.startswith("#"):
                toks.append((t.strip("\"'") if t[0] in "\"'" else t, n))
    pos = 0

    def block(top: bool) -> list[Directive]:
        nonlocal pos
        out: list[Directive] = []
        words: list[str] = []
        line = 0
        while pos < len(toks):
            t, n = toks[pos]
            pos += 1
            if t == ";":
                if not words:
                    raise ValueError(f"nginx.conf:{n}: empty directive")
                out.append(Directive(words[0], words[1:], None, line))
                words = []
            elif t == "{":
                if not words:
                    raise ValueError(f"nginx.conf:{n}: block without a name")
                out.append(Directive(words[0], words[1:], block(False), line))
                words = []
            elif t == "}":
                if top:
                    raise ValueError(f"nginx.conf:{n}: unbalanced }}")
                if words:
                    raise ValueError(f"nginx.conf:{n}: directive {words[0]!r} misses its ;")
                return out
            else:
                if not words:
                    line = n
                words.append(t)
        if not top or words:
            raise ValueError("nginx.conf: unexpected end of file (missing } or ;)")
        return out

    return Directive("main", [], block(True), 0)


# -- compose.yaml -------------------------------------------------------------------------------


def compose_problems(texts: dict[str, str]) -> list[str]:
    proj = project()
    problems: list[str] = []
    try:
        compose = yaml.safe_load(texts["docker/compose.yaml"])
    except yaml.YAMLError as exc:
        return [f"compose.yaml does not parse: {exc}"]
    try:
        nginx = parse_nginx(texts["docker/nginx.conf"])
    except ValueError as exc:
        return [str(exc)]
    services: dict[str, dict] = compose.get("services") or {}
    declared_volumes = set((compose.get("volumes") or {}).keys())
    images: dict[str, Image] = {}
    used: set[str] = set()
    for name, svc in services.items():
        where = f"compose.yaml service {name!r}"
        b = svc.get("build")
        if b is not None:
            b = {"context": b} if isinstance(b, str) else b
            ctx = (DOCKER / b.get("context", ".")).resolve()
            if ctx != ROOT:
                problems.append(f"{where}: build context {b.get('context')} is not the repository root")
            df = b.get("dockerfile", "Dockerfile")
            full = (ctx / df).resolve()
            rel = full.relative_to(ROOT).as_posix() if full.is_relative_to(ROOT) else df
            if rel not in texts:
                have = ", ".join(f for f in texts if f.endswith(".Dockerfile"))
                problems.append(f"{where}: dockerfile {df} does not exist (have {have})")
            else:
                used.add(rel)
                images[name] = load_image(Path(rel).name, texts[rel])
        image = svc.get("image")
        if image:
            p = pinned_tag_problem(image)
            if p:
                problems.append(f"{where}: {p.replace('base image', 'image')}")
        elif b is None:
            problems.append(f"{where}: neither image nor build")
        for vol in svc.get("volumes") or []:
            spec = expand(vol, {}) if isinstance(vol, str) else ""
            src = spec.split(":")[0]
            if src and not src.startswith((".", "/", "~")) and src not in declared_volumes:
                problems.append(f"{where}: named volume {src!r} is not declared under top-level volumes")
    for df in (f for f in texts if f.endswith(".Dockerfile")):
        if df not in used:
            problems.append(f"compose.yaml: no service builds {df}")
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep, cond in (deps.items() if isinstance(deps, dict) else [(d, {}) for d in deps]):
            if dep not in services:
                problems.append(f"compose.yaml service {name!r}: depends_on {dep!r}, which is not a service")
            elif (cond or {}).get("condition") == "service_healthy" and not has_healthcheck(services[dep],
                                                                                             images.get(dep)):
                problems.append(f"compose.yaml service {name!r}: waits for {dep!r} to be healthy, which has no "
                                "health check")
    # Services whose image is built here: commands and health checks name real CLIs.
    for name, img in images.items():
        svc = services[name]
        where = f"compose.yaml service {name!r}"
        if "command" in svc:
            cmd = svc["command"]
            if isinstance(cmd, str):
                problems.append(f"{where}: command as a string runs through a shell; use a list")
                continue
            argv = (img.entrypoint or []) + list(cmd)
            problems += command_problems(img, argv, f"{where} command")
        hc = (svc.get("healthcheck") or {}).get("test")
        if hc:
            if hc[0] not in ("CMD", "NONE"):
                problems.append(f"{where}: healthcheck test should be [\"CMD\", ...] (exec form), got {hc[0]!r}")
            else:
                problems += command_problems(img, hc[1:], f"{where} healthcheck")
    # Roles: the sampler replicas, the load balancer in front of them, the trainer behind it.
    samplers = [n for n, img in images.items() if img.argv[:1] == ["sampler-server"]]
    trainers = [n for n, img in images.items() if img.argv[:1] == ["trainer-client"]]
    lbs = [n for n, s in services.items() if "nginx" in str(s.get("image", ""))]
    if len(samplers) != 1:
        problems.append(f"compose.yaml: expected one sampler service (with replicas), found {samplers}")
    if len(lbs) != 1:
        problems.append(f"compose.yaml: expected one nginx load balancer, found {lbs}")
    if not trainers:
        problems.append("compose.yaml: no trainer service")
    if len(samplers) != 1 or len(lbs) != 1:
        return problems
    sampler, lb = samplers[0], lbs[0]
    s_svc, lb_svc = services[sampler], services[lb]
    replicas = (s_svc.get("deploy") or {}).get("replicas", 1)
    if replicas < 2:
        problems.append(f"compose.yaml service {sampler!r}: deploy.replicas is {replicas}; run two sampler replicas")
    if not has_healthcheck(s_svc, images[sampler]):
        problems.append(f"compose.yaml service {sampler!r}: no health check")
    s_env = {**images[sampler].env, **{k: str(v) for k, v in (s_svc.get("environment") or {}).items()}}
    s_port = int(s_env.get("SAMPLER_PORT", "8000"))
    hc = (s_svc.get("healthcheck") or {}).get("test")
    if hc:
        problems += url_problems(hc[1:], s_port, proj.routes, f"compose.yaml service {sampler!r} healthcheck")
    # The load balancer: our nginx.conf mounted, health-checked, in front of healthy samplers.
    mounts = [expand(v, {}) for v in lb_svc.get("volumes") or [] if isinstance(v, str)]
    conf_mounts = [m for m in mounts if m.split(":")[1:2] == ["/etc/nginx/nginx.conf"]]
    if not conf_mounts:
        problems.append(f"compose.yaml service {lb!r}: docker/nginx.conf is not mounted at /etc/nginx/nginx.conf")
    elif (DOCKER / conf_mounts[0].split(":")[0]).resolve() != (DOCKER / "nginx.conf").resolve() \
            or not (DOCKER / conf_mounts[0].split(":")[0]).exists():
        problems.append(f"compose.yaml service {lb!r}: mounts {conf_mounts[0].split(':')[0]}, not the existing "
                        "docker/nginx.conf")
    dep = (lb_svc.get("depends_on") or {}).get(sampler) if isinstance(lb_svc.get("depends_on"), dict) else None
    if (dep or {}).get("condition") != "service_healthy":
        problems.append(f"compose.yaml service {lb!r}: must depend on {sampler!r} with condition: service_healthy")
    http = nginx.find("http")
    servers = [s for h in http for s in h.find("server")]
    listen = [int(d.args[0].rsplit(":", 1)[-1]) for s in servers for d in s.find("listen")]
    if not listen:
        problems.append("nginx.conf: no server listens")
        return problems
    lb_port = listen[0]
    upstreams = {u.args[0]: u for h in http for u in h.find("upstream")}
    for u in upstreams.values():
        for srv in u.find("server"):
            host, _, port = srv.args[0].partition(":")
            if host != sampler:
                problems.append(f"nginx.conf:{srv.line}: upstream server {host!r} is not the sampler service "
                                f"{sampler!r}")
            if int(port or 80) != s_port:
                problems.append(f"nginx.conf:{srv.line}: upstream port {port or 80} is not the sampler's {s_port}")
    for d in nginx.walk():
        if d.name == "proxy_pass":
            target = re.sub(r"^https?://", "", d.args[0]).split("/")[0]
            if target not in upstreams:
                problems.append(f"nginx.conf:{d.line}: proxy_pass to {target!r}, which is no upstream")
    for pub in lb_svc.get("ports") or []:
        parts = str(pub).split(":")
        if len(parts) != 3 or parts[0] != "127.0.0.1":
            problems.append(f"compose.yaml service {lb!r}: publishes {pub} on every interface; "
                            f"use 127.0.0.1:HOST:{lb_port}")
        elif int(parts[2]) != lb_port:
            problems.append(f"compose.yaml service {lb!r}: publishes container port {parts[2]}, "
                            f"nginx listens on {lb_port}")
    lb_hc = (lb_svc.get("healthcheck") or {}).get("test")
    if not lb_hc:
        problems.append(f"compose.yaml service {lb!r}: no healthcheck")
    else:
        locations = {d.args[-1] for s in servers for d in s.find("location")}
        for p, path in re.findall(r"https?://127\.0\.0\.1:(\d+)(/[\w/-]*)", " ".join(lb_hc)):
            if int(p) != lb_port:
                problems.append(f"compose.yaml service {lb!r}: healthcheck probes port {p}, nginx listens on {lb_port}")
            if path not in locations:
                problems.append(f"compose.yaml service {lb!r}: healthcheck path {path} is no location in nginx.conf")
    # Trainers reach the samplers through the load balancer, once it is healthy.
    ports = {lb: lb_port, sampler: s_port}
    for t in trainers:
        t_svc = services[t]
        dep = (t_svc.get("depends_on") or {}).get(lb) if isinstance(t_svc.get("depends_on"), dict) else None
        if (dep or {}).get("condition") != "service_healthy":
            problems.append(f"compose.yaml service {t!r}: must depend on {lb!r} with condition: service_healthy")
        argv = list(t_svc.get("command") or [])
        urls = argv[argv.index("--server") + 1].split(",") if "--server" in argv else []
        if not urls:
            problems.append(f"compose.yaml service {t!r}: no --server")
        for url in urls:
            m = re.match(r"^https?://([\w.-]+):(\d+)/?$", url)
            if not m or m.group(1) not in ports:
                problems.append(f"compose.yaml service {t!r}: --server {url} is not the load balancer or a sampler")
            elif int(m.group(2)) != ports[m.group(1)]:
                problems.append(f"compose.yaml service {t!r}: --server {url}: {m.group(1)} listens on "
                                f"{ports[m.group(1)]}")
    return problems


def has_healthcheck(svc: dict, img: Image | None) -> bool:
    hc = svc.get("healthcheck") or {}
    if hc.get("disable") or (hc.get("test") or [None])[0] == "NONE":
        return False
    return bool(hc.get("test")) or bool(img and img.healthcheck)


def all_problems(texts: dict[str, str]) -> list[str]:
    problems = []
    for f in FILES:
        if f.endswith(".Dockerfile"):
            problems += image_problems(load_image(Path(f).name, texts[f]))
    return problems + compose_problems(texts)


# -- tests --------------------------------------------------------------------------------------


def test_parser_reads_continuations_comments_directives_and_forms():
    text = (
        "# syntax=docker/dockerfile:1\n"
        "# escape=`\n"
        "ARG BASE=python:3.11.14-slim\n"
        "from ${BASE} AS base\n"
        "RUN apt-get update `\n"
        "# a comment inside the continuation is dropped\n"
        "\n"
        " && apt-get install -y libgomp1\n"
        'ENV A=1 B="two words"\n'
        'CMD ["curriculum", "--help"]\n'
        "ENTRYPOINT echo hi\n"
    )
    ins = parse_dockerfile(text)
    assert [i.keyword for i in ins] == ["ARG", "FROM", "RUN", "ENV", "CMD", "ENTRYPOINT"]
    assert ins[2].value == "apt-get update && apt-get install -y libgomp1" and ins[2].line == 5
    assert ins[4].exec_form() == ["curriculum", "--help"] and ins[5].exec_form() is None
    assert parse_env(ins[3].value) == {"A": "1", "B": "two words"}
    assert expand("${BASE}", {"BASE": "x:1"}) == "x:1" and expand("${U:-d}/$V", {"V": "v"}) == "d/v"
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("RUN a \\\n")
    cmds = shell_commands("grep -v -E '^(torch)==' c.txt > /tmp/c && python -m pip install -c /tmp/c '.[x,y]'")
    assert cmds[0].argv == ["grep", "-v", "-E", "^(torch)==", "c.txt"] and cmds[0].stdout == "/tmp/c"
    pi = pip_install(cmds[1].argv)
    assert pi.requirements == [".[x,y]"] and pi.constraints == ["/tmp/c"]


def test_nginx_parser_and_its_errors():
    conf = parse_nginx('http { upstream u { server a:1; } server { listen 80; location = /x { return 200 "a;b"; } } }')
    http = conf.find("http")[0]
    assert http.find("upstream")[0].find("server")[0].args == ["a:1"]
    assert http.find("server")[0].find("location")[0].args == ["=", "/x"]
    for bad in ("http { listen 80 }", "http { listen 80; ", "listen 80; }"):
        with pytest.raises(ValueError):
            parse_nginx(bad)


@pytest.mark.parametrize("dockerfile", [f for f in FILES if f.endswith(".Dockerfile")])
def test_dockerfile_names_only_what_exists(dockerfile):
    img = load_image(Path(dockerfile).name, (ROOT / dockerfile).read_text())
    assert image_problems(img) == []


def test_images_have_the_expected_shape():
    imgs = {f: load_image(Path(f).name, (ROOT / f).read_text()) for f in FILES if f.endswith(".Dockerfile")}
    sampler, trainer, builder = (imgs[f"docker/{n}.Dockerfile"] for n in ("sampler", "trainer", "build"))
    assert sampler.argv[:2] == ["sampler-server", "serve"] and sampler.healthcheck
    assert "server" in sampler.installed_extras() and {"curriculum", "sampler_server"} <= sampler.project_packages()
    assert trainer.argv[0] == "trainer-client" and trainer.base.startswith("pytorch/pytorch:")
    assert "cuda" in trainer.base and trainer.project_packages() == {"trainer_client"}
    assert project().requirements(trainer.installed_extras()) >= {"torch", "transformers", "httpx"}
    assert "numba" not in project().requirements(trainer.installed_extras())
    assert {"curriculum", "ray"} <= set(builder.installed_extras())
    # Multi-node Ray: the variable that pins Ray to 127.0.0.1 must not be baked into the image.
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in builder.env


def test_compose_and_nginx_match_the_images():
    assert compose_problems(read_files()) == []
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert compose["services"]["sampler"]["deploy"]["replicas"] == 2
    assert {"sampler", "lb", "trainer"} <= set(compose["services"])


# (file, text to replace, replacement, a phrase the reported problem must contain)
BREAKS = [
    ("docker/sampler.Dockerfile", "COPY sampler_server ./sampler_server", "COPY sampler_srv ./sampler_server",
     "'sampler_srv' does not exist"),
    ("docker/build.Dockerfile", "COPY curriculum ./curriculum", "COPY curriculum/cli.py ./cli.py",
     "needs package 'curriculum'"),
    ("docker/sampler.Dockerfile", "COPY pyproject.toml README.md constraints.txt ./",
     "COPY pyproject.toml constraints.txt ./", "README.md is not copied"),
    ("docker/sampler.Dockerfile", "USER app", "USER root", "is root"),
    ("docker/sampler.Dockerfile", "USER app", "USER svc", "USER svc is never created"),
    ("docker/trainer.Dockerfile", "USER app\n", "", "no USER"),
    ("docker/sampler.Dockerfile", "FROM python:3.11.14-slim-bookworm", "FROM python:latest", "pinned to latest"),
    ("docker/trainer.Dockerfile", "ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime",
     "ARG BASE_IMAGE=pytorch/pytorch", "has no tag"),
    ("docker/sampler.Dockerfile", "'.[server]'", "'.[servr]'", "extra 'servr'"),
    ("docker/sampler.Dockerfile", "--constraint constraints.txt '.[server]'", "'.[server]'", "without --constraint"),
    ("docker/sampler.Dockerfile", 'ENTRYPOINT ["sampler-server"]', 'ENTRYPOINT ["sampler-srv"]', "'sampler-srv'"),
    ("docker/sampler.Dockerfile", 'CMD ["serve"]', 'CMD ["serve", "--bind", "0.0.0.0"]', "no option --bind"),
    ("docker/sampler.Dockerfile", 'CMD ["serve"]', 'CMD ["run"]', "no subcommand 'run'"),
    ("docker/build.Dockerfile", 'CMD ["curriculum", "--help"]', 'CMD ["python", "-m", "curriculum.main"]',
     "no such module"),
    ("docker/build.Dockerfile", 'CMD ["curriculum", "--help"]', "CMD curriculum --help", "shell-form command"),
    ("docker/build.Dockerfile", "COPY curriculum ./curriculum", "COPY . .", "copies the whole build context"),
    ("docker/sampler.Dockerfile", "/healthz", "/health", "route /health"),
    ("docker/sampler.Dockerfile", "HEALTHCHECK", "# HEALTHCHECK", "no HEALTHCHECK"),
    ("docker/sampler.Dockerfile", "NUMBA_THREADING_LAYER=omp", "NUMBA_THREADING_LAYER=workqueue",
     "NUMBA_THREADING_LAYER"),
    ("docker/build.Dockerfile", "ENV NUMBA_CACHE_DIR=/var/cache/numba \\\n    NUMBA_THREADING_LAYER",
     "ENV NUMBA_THREADING_LAYER", "no absolute NUMBA_CACHE_DIR"),
    ("docker/sampler.Dockerfile", "libgomp1", "libgomp-dev", "needs libgomp1"),
    ("docker/trainer.Dockerfile", "--constraint /tmp/constraints-trainer.txt", "--constraint constraints.txt",
     "would replace the CUDA torch"),
    ("docker/trainer.Dockerfile", "'^(torch|triton|nvidia-[a-z0-9-]+)=='", "'^(torch|numpy|nvidia-[a-z0-9-]+)=='",
     "drops pins other than torch's: ['numpy']"),
    ("docker/trainer.Dockerfile", "'.[trainer]'", "'.[server]'", "imports torch (torch), which the image's extras"),
    ("docker/sampler.Dockerfile", "COPY trainer_client ./trainer_client", "",
     "sampler_server/app.py imports trainer_client.wire, but package 'trainer_client' is not copied"),
    ("docker/compose.yaml", "dockerfile: docker/sampler.Dockerfile", "dockerfile: docker/sampler.dockerfile",
     "sampler.dockerfile does not exist"),
    ("docker/compose.yaml", '"--checkpoint-dir"', '"--checkpoint-path"', "no option --checkpoint-path"),
    ("docker/compose.yaml", '"--server", "http://lb:8080", ', "", "needs --server"),
    ("docker/compose.yaml", '"build", "/data/corpus", "--out"', '"build", "--out"', "needs INPUTS"),
    ("docker/compose.yaml", "http://lb:8080", "http://lb:8000", "lb listens on 8080"),
    ("docker/compose.yaml", "replicas: 2\n    environment:\n      SAMPLER_MANIFEST",
     "replicas: 1\n    environment:\n      SAMPLER_MANIFEST", "deploy.replicas is 1"),
    ("docker/compose.yaml", "./nginx.conf:/etc/nginx/nginx.conf:ro", "./nginx.cfg:/etc/nginx/nginx.conf:ro",
     "not the existing docker/nginx.conf"),
    ("docker/compose.yaml", "127.0.0.1:8080:8080", "8080:8080", "every interface"),
    ("docker/compose.yaml", "/readyz", "/ready", "route /ready"),
    ("docker/compose.yaml", "    depends_on:\n      sampler:\n        condition: service_healthy\n", "",
     "must depend on 'sampler'"),
    ("docker/compose.yaml", '["ray", "start", "--head"', '["ray", "begin", "--head"', "no subcommand 'begin'"),
    ("docker/compose.yaml", "checkpoints:/checkpoints", "ckpt:/checkpoints", "named volume 'ckpt'"),
    ("docker/build.Dockerfile", "'.[curriculum,ray]'", "'.[curriculum]'", "'ray' comes from 'ray'"),
    ("docker/nginx.conf", "server sampler:8000 resolve", "server sampler:8001 resolve", "upstream port 8001"),
    ("docker/nginx.conf", "location = /lb-health", "location = /health", "path /lb-health is no location"),
    ("docker/nginx.conf", "proxy_pass http://sampler_control;\n        }\n\n        location /v1/dashboard",
     "proxy_pass http://sampler_ctl;\n        }\n\n        location /v1/dashboard",
     "'sampler_ctl', which is no upstream"),
    ("docker/nginx.conf", "    }\n}\n", "    }\n", "unexpected end of file"),
]


@pytest.mark.parametrize("path, old, new, expected", BREAKS, ids=[f"{Path(b[0]).name}:{b[3]}" for b in BREAKS])
def test_a_broken_file_is_reported(path, old, new, expected):
    texts = read_files()
    assert old in texts[path], f"{path} no longer contains {old!r}: update this case"
    texts[path] = texts[path].replace(old, new)
    problems = all_problems(texts)
    assert any(expected in p for p in problems), f"expected a problem with {expected!r}, got: {problems}"

"""pytest plugin for testing engine and its plugins (DESIGN §6).

Loaded through the ``pytest11`` entry point (or ``-p engine.testing``). It
imports only the standard library and pytest, so it costs nothing to
projects that do not use it.

Fixtures:

* ``build_target(name, variant=None) -> Path`` compiles
  ``tests/targets/NAME.c`` with the flags of its header, once per session;
  ``NAME.py`` is returned as is.
* ``target_runner.start(exe, *args) -> Target`` runs a target with
  ``--ready``/``--result`` in a fresh directory and waits for "ready".
* ``engine_cli(*args, check=True) -> CompletedProcess`` runs
  ``python -m engine`` with plugin autoload disabled.
* ``dump_restore(target, images_dir) -> str`` dumps, reaps, restores and
  returns the target's verdict.

Session-wide, the pytest process becomes a child subreaper, so restored
tasks whose engine parent exits are reparented to it and can be reaped, and
processes a test leaves behind are killed and reaped after it.

Target header, the first comment holding ``engine-target:`` (like zdtm's
``.desc``); fields are ``key=value`` or ``key: value``, separated by ``;``::

    /* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 -mavx2 ;
     * needs=avx2 ; args: --mib N ; what: what the target proves */

``variants`` (first is the default) come from VARIANTS, ``flags`` are extra
gcc flags, ``needs`` are skipped with a reason when unmet (NEEDS);
``interpreter`` is for ``.py`` targets.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

AUTOLOAD_ENV = "ENGINE_DISABLE_PLUGIN_AUTOLOAD"
TARGETS_ENV = "ENGINE_TARGETS_DIR"
READY_TIMEOUT = 10.0
REPO_ROOT = Path(__file__).resolve().parents[1]

# gcc flags per link mode; the header picks which ones a target is built in.
VARIANTS = {
    "dynamic-pie": ["-fPIE", "-pie"],
    "dynamic-nopie": ["-fno-pie", "-no-pie"],
    "static-pie": ["-fPIE", "-static-pie"],
    "static-nopie": ["-fno-pie", "-no-pie", "-static"],
}
BASE_CFLAGS = ["-g", "-Wall", "-Wextra", "-std=gnu11"]


# --- targets: headers and builds ---

@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """What a target's header says about it."""

    name: str
    source: Path
    variants: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    what: str = ""
    args: str = ""
    interpreter: str = ""

    @property
    def compiled(self) -> bool:
        return self.source.suffix == ".c"


def targets_dir() -> Path:
    """tests/targets of this checkout, or $ENGINE_TARGETS_DIR."""
    return Path(os.environ.get(TARGETS_ENV) or REPO_ROOT / "tests" / "targets")


_HEADER = re.compile(r"engine-target:(.*?)(?:\*/|\n(?!\s*[#*]))", re.S)


def parse_header(source: Path) -> TargetSpec:
    """Read the ``engine-target:`` header of a .c or .py target."""
    head = source.read_text()[:4096]
    m = _HEADER.search(head)
    if not m:
        raise ValueError(f"{source}: no 'engine-target:' header")
    # Drop comment leaders so fields may span lines.
    text = re.sub(r"\n\s*[#*]+ ?", " ", m.group(1))
    # "what" comes last and is prose: it may hold ';' and ':'.
    parts = re.split(r"(?:^|;)\s*what\s*[:=]", text, maxsplit=1)
    text, what = parts if len(parts) == 2 else (text, "")
    fields = {"what": " ".join(what.split())} if what else {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = re.match(r"([\w-]+)\s*([=:])?\s*(.*)", part).groups()
        if not sep:
            raise ValueError(f"{source}: header field without value: {part!r}")
        fields[key] = " ".join(value.split())
    known = {f.name for f in dataclasses.fields(TargetSpec)}
    unknown = set(fields) - (known - {"name", "source"})
    if unknown:
        raise ValueError(f"{source}: unknown header keys {sorted(unknown)}")
    spec = TargetSpec(
        # counter.c is "counter", counter.py keeps its suffix.
        name=source.stem if source.suffix == ".c" else source.name,
        source=source,
        variants=_split(fields.get("variants", ""), ",")
        or (("dynamic-pie",) if source.suffix == ".c" else ()),
        flags=_split(fields.get("flags", "")),
        needs=_split(fields.get("needs", ""), ","),
        what=fields.get("what", ""),
        args=fields.get("args", ""),
        interpreter=fields.get("interpreter", ""),
    )
    bad = set(spec.variants) - set(VARIANTS)
    if bad:
        raise ValueError(f"{source}: unknown variants {sorted(bad)}")
    bad = set(spec.needs) - set(NEEDS)
    if bad:
        raise ValueError(f"{source}: unknown needs {sorted(bad)}")
    return spec


def _split(value: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(sep) if v.strip())


def list_targets(directory: Path | None = None) -> list[TargetSpec]:
    """Every target (.c and .py) in the targets directory, by name."""
    directory = directory or targets_dir()
    return [parse_header(p) for p in sorted(directory.iterdir())
            if p.suffix in (".c", ".py") and not p.name.startswith(".")]


def _has_cpu_flag(flag: str) -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and flag in line.split()
               for line in text.splitlines())


# need -> (is it met?, reason for the skip)
NEEDS = {
    "root": (lambda: os.geteuid() == 0, "needs root"),
    "avx2": (lambda: _has_cpu_flag("avx2"), "CPU lacks AVX2"),
}


def unmet_needs(spec: TargetSpec) -> list[str]:
    """Reasons the target cannot run here (empty when it can)."""
    return [NEEDS[n][1] for n in spec.needs if not NEEDS[n][0]()]


def compile_target(spec: TargetSpec, variant: str, outdir: Path) -> Path:
    """gcc SOURCE -> OUTDIR/NAME-VARIANT; usable outside pytest (bench)."""
    exe = outdir / f"{spec.name}-{variant}"
    cmd = ["gcc", *BASE_CFLAGS, *VARIANTS[variant], *spec.flags,
           "-I", str(spec.source.parent), str(spec.source), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"building {spec.name} ({variant}) failed:\n"
                           f"$ {' '.join(cmd)}\n{proc.stderr}")
    return exe


class TargetBuilder:
    """Builds targets into one directory, once per (name, variant)."""

    def __init__(self, outdir: Path, directory: Path | None = None):
        self.outdir = outdir
        self.directory = directory or targets_dir()
        self._built: dict[tuple[str, str], Path] = {}

    def spec(self, name: str) -> TargetSpec:
        source = self.directory / (name if "." in name else name + ".c")
        if not source.exists():
            raise FileNotFoundError(f"no target {source}")
        return parse_header(source)

    def __call__(self, name: str, variant: str | None = None) -> Path:
        """Path of the built target; skips when its needs are unmet."""
        spec = self.spec(name)
        reasons = unmet_needs(spec)
        if reasons:
            pytest.skip(f"target {name}: {', '.join(reasons)}")
        if not spec.compiled:
            return spec.source
        variant = variant or spec.variants[0]
        if variant not in spec.variants:
            raise ValueError(f"target {name} has no variant {variant!r} "
                             f"(header: {', '.join(spec.variants)})")
        key = (spec.name, variant)
        if key not in self._built:
            try:
                self._built[key] = compile_target(spec, variant, self.outdir)
            except RuntimeError as e:
                pytest.fail(str(e), pytrace=False)
        return self._built[key]


# --- running targets ---

def _pid_state(pid: int) -> str | None:
    """State letter from /proc/PID/stat, None when there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _wait_gone(pid: int, timeout: float) -> bool:
    """Reap pid if it is our child; True once it is reaped or gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            # Not (or not yet) our child: e.g. its engine parent still runs.
            # A zombie of another parent is as good as gone for us.
            if _pid_state(pid) in (None, "Z"):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


class Target:
    """A started target: its pid, directory and protocol files."""

    def __init__(self, proc: subprocess.Popen, workdir: Path):
        self.proc = proc
        self.pid = proc.pid
        self.workdir = workdir
        self.ready_path = workdir / "ready"
        self.result_path = workdir / "result"
        self.log_path = workdir / "target.log"
        self.info: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<Target pid={self.pid} {self.workdir}>"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                lines = self.ready_path.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if lines and lines[0] == "ready":
                self.info = dict(line.split("=", 1)
                                 for line in lines[1:] if "=" in line)
                return
            rc = self.proc.poll()
            if rc is not None:
                pytest.fail(f"target {self.proc.args} exited with {rc} "
                            f"before ready:\n{self.log()}", pytrace=False)
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"target {self.proc.args} not ready after "
                            f"{timeout} s:\n{self.log()}", pytrace=False)
            time.sleep(0.005)

    def addr(self, key: str) -> int:
        """An address (or number) the target put in its ready file."""
        return int(self.info[key], 0)

    def reap(self, timeout: float = 10.0) -> int:
        """Wait for the original process to exit (e.g. killed by dump)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"target {self.pid} still alive after {timeout} s "
                        f"(state {_pid_state(self.pid)})", pytrace=False)

    def assert_gone(self) -> None:
        """The pid is free: killed and reaped, not even a zombie."""
        state = _pid_state(self.pid)
        assert state is None, f"pid {self.pid} still exists (state {state})"

    def verdict(self, timeout: float = 10.0) -> str:
        """SIGTERM the pid (original or restored); its result, stripped."""
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pytest.fail(f"pid {self.pid} does not exist: nothing to SIGTERM",
                        pytrace=False)
        deadline = time.monotonic() + timeout
        while not self.result_path.exists():
            # Check the result again: it may have come just before exit.
            if (_pid_state(self.pid) in (None, "Z")
                    and not self.result_path.exists()):
                pytest.fail(f"pid {self.pid} died without a result:\n"
                            f"{self.log()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"no result from pid {self.pid} after {timeout} "
                            f"s (state {_pid_state(self.pid)}):\n{self.log()}",
                            pytrace=False)
            time.sleep(0.005)
        result = self.result_path.read_text().strip()
        self._wait_exit(max(deadline - time.monotonic(), 1.0))
        return result

    def _wait_exit(self, timeout: float) -> None:
        if self.proc.returncode is None:
            # Still the process we started: let Popen reap it, so it never
            # reaps a restored process with the same pid later.
            try:
                self.proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        elif _wait_gone(self.pid, timeout):
            return
        self.kill()
        pytest.fail(f"pid {self.pid} wrote its result but did not exit",
                    pytrace=False)

    def kill(self) -> None:
        """SIGKILL whatever runs under our pid now, and reap it."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.returncode is None:
            self.proc.wait()
        else:
            _wait_gone(self.pid, 5.0)


class TargetRunner:
    """Starts targets in fresh directories under base."""

    def __init__(self, base: Path):
        self.base = base
        self.targets: list[Target] = []

    def start(self, exe: os.PathLike | str, *args: str,
              timeout: float = READY_TIMEOUT, close_stdio: bool = False,
              interpreter: str | None = None) -> Target:
        """Run exe --ready R --result S ARGS; return once it is ready.

        stdin is /dev/null and stdout/stderr go to target.log in the
        target's directory; close_stdio makes the target close fds 0-2
        after ready (for dumps before any fd plugin exists). The target is
        its own session leader, so the dumped tree is self-contained.
        """
        exe = Path(exe)
        workdir = self.base / f"{exe.name}-{len(self.targets)}"
        workdir.mkdir(parents=True)
        argv = [str(exe)]
        if exe.suffix == ".py":
            argv = [_interpreter(exe, interpreter), "-I", str(exe)]
        argv += ["--ready", str(workdir / "ready"),
                 "--result", str(workdir / "result"),
                 *(["--close-stdio"] if close_stdio else []), *map(str, args)]
        with open(workdir / "target.log", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, cwd=workdir,
                                    start_new_session=True)
        target = Target(proc, workdir)
        self.targets.append(target)
        target._wait_ready(timeout)
        return target

    def cleanup(self) -> None:
        for t in self.targets:
            if t.proc.returncode is None or _pid_state(t.pid) is not None:
                t.kill()


def _interpreter(script: Path, override: str | None) -> str:
    if override:
        return override
    wanted = parse_header(script).interpreter
    return wanted if wanted and os.access(wanted, os.X_OK) else sys.executable


# --- the engine command ---

def engine_command(*args, autoload: bool = False, env: dict | None = None
                   ) -> tuple[list[str], dict]:
    """The command line and environment of ``python -m engine ARGS``, for
    engine_cli or a test that runs the engine in the background.

    Plugin autoload is disabled unless autoload=True; the checkout is put
    on PYTHONPATH so this works without ``pip install``.
    """
    env = dict(os.environ if env is None else env)
    if autoload:
        env.pop(AUTOLOAD_ENV, None)
    else:
        env[AUTOLOAD_ENV] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "engine", *map(str, args)], env


def engine_cli(*args: str, check: bool = True, autoload: bool = False,
               timeout: float = 120.0, env: dict | None = None,
               ) -> subprocess.CompletedProcess:
    """``python -m engine ARGS`` (engine_command), output captured."""
    cmd, env = engine_command(*args, autoload=autoload, env=env)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=timeout)
    if check and proc.returncode:
        pytest.fail(f"$ engine {' '.join(map(str, args))}\nexit status "
                    f"{proc.returncode}\n--- stdout\n{proc.stdout}"
                    f"--- stderr\n{proc.stderr}", pytrace=False)
    return proc


def dump_restore(target: Target, images_dir: os.PathLike | str,
                 dump_args=(), restore_args=()) -> str:
    """DESIGN §6: dump, make sure it is gone, restore, return the verdict."""
    dump_to(target, images_dir, dump_args)
    engine_cli("restore", "-D", str(images_dir), *restore_args)
    return target.verdict()


def dump_to(target: Target, images_dir: os.PathLike | str, dump_args=()):
    """Dump `target`, make sure it and its tree are gone (their pids free),
    and return the image set, for a test to restore or to spoil."""
    from engine.images import ImageDir
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    engine_cli("dump", "-t", str(target.pid), "-D", str(images_dir), *dump_args)
    target.reap()
    target.assert_gone()
    reap_dumped_tree(images_dir)
    return ImageDir(str(images_dir))


def reap_dumped_tree(images_dir: os.PathLike | str, timeout: float = 10.0) -> None:
    """Wait until every task of a dumped tree is gone. The descendants that
    `engine dump` killed with the root come to us (the subreaper): reap them,
    so their pids are free for the restore."""
    from engine.images import ImageDir
    pids = [e.pid for e in ImageDir(str(images_dir)).read("pstree")]
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        left = [pid for pid in pids if _pid_state(pid) is not None]
        if not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"dumped tasks {left} still exist after the dump", pytrace=False)
        time.sleep(0.005)


def engine_fails(*args: str, **kw) -> str:
    """Run ``engine ARGS`` expecting failure: non-zero exit and exactly one
    line on stderr, which is returned for the caller to check."""
    proc = engine_cli(*args, check=False, **kw)
    assert proc.returncode != 0, f"engine {' '.join(map(str, args))} succeeded"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"want one line on stderr, got:\n{proc.stderr}"
    return lines[0]


def task_gone(pid: int) -> bool:
    """No such process, or only a zombie left (nothing runs under that pid)."""
    state = _pid_state(pid)
    return state is None or state == "Z"


# --- process hygiene: subreaper and leftovers ---

def become_subreaper() -> None:
    """Orphans below us (restored tasks) get reparented to us, not pid 1."""
    import ctypes

    from engine import libc
    if libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0):
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_CHILD_SUBREAPER: {os.strerror(err)}")


def is_subreaper() -> bool:
    import ctypes

    from engine import libc
    flag = ctypes.c_int(0)
    libc.prctl(libc.PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
    return bool(flag.value)


def children() -> set[int]:
    """Pids whose parent is us (walks /proc: /proc/PID/task/*/children is
    not built into every kernel, this one included)."""
    me, found = os.getpid(), set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.add(int(entry.name))
    return found


def kill_children(keep: set[int] = frozenset(), rounds: int = 50) -> list[int]:
    """SIGKILL and reap our children except keep, then the grandchildren
    reparented to us by their death, until none are left."""
    killed = []
    for _ in range(rounds):
        pids = children() - set(keep)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed.append(pid)
        for pid in pids:
            _wait_gone(pid, 5.0)
    return killed


def pytest_configure(config):
    os.environ[AUTOLOAD_ENV] = "1"
    try:
        become_subreaper()
    except OSError as e:  # not Linux or prctl refused: tests will show it
        warnings.warn(f"engine.testing: {e}")


def pytest_unconfigure(config):
    kill_children()


@pytest.fixture(autouse=True)
def _engine_reap_leftovers():
    """Kill and reap what a test leaves behind, so pids do not leak."""
    before = children()
    yield
    leftovers = kill_children(keep=before)
    if leftovers:
        warnings.warn(pytest.PytestWarning(
            f"engine.testing killed leftover processes {sorted(leftovers)}"))


# --- fixtures ---

@pytest.fixture(scope="session")
def _engine_target_builder(tmp_path_factory) -> TargetBuilder:
    return TargetBuilder(tmp_path_factory.mktemp("engine-targets"))


@pytest.fixture
def build_target(_engine_target_builder) -> TargetBuilder:
    """build_target(name, variant=None) -> Path of the built target."""
    return _engine_target_builder


@pytest.fixture
def target_runner(tmp_path):
    """target_runner.start(exe, *args) -> Target, killed at teardown."""
    runner = TargetRunner(tmp_path / "targets")
    yield runner
    runner.cleanup()


@pytest.fixture(name="engine_cli")
def _engine_cli_fixture():
    """engine_cli(*args, check=True) -> CompletedProcess."""
    return engine_cli


@pytest.fixture
def dumped_counter(build_target, target_runner, tmp_path):
    """A static counter target dumped to tmp_path/img, killed and reaped:
    an image set for tests to restore or to spoil."""
    target = target_runner.start(build_target("counter", "static-nopie"))
    img = tmp_path / "img"
    dump_to(target, img)
    return target, img


@pytest.fixture(name="dump_restore")
def _dump_restore_fixture():
    """dump_restore(target, images_dir, dump_args=(), restore_args=())."""
    return dump_restore

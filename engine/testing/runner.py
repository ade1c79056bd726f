"""Running targets: each in a fresh directory, with the ``--ready`` /
``--result`` protocol, waited for until ready, and asked for its verdict."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.testing.reaper import pid_state, wait_gone
from engine.testing.targets import parse_header

READY_TIMEOUT = 10.0


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
                        f"(state {pid_state(self.pid)})", pytrace=False)

    def assert_gone(self) -> None:
        """The pid is free: killed and reaped, not even a zombie."""
        state = pid_state(self.pid)
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
            if (pid_state(self.pid) in (None, "Z")
                    and not self.result_path.exists()):
                pytest.fail(f"pid {self.pid} died without a result:\n"
                            f"{self.log()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"no result from pid {self.pid} after {timeout} "
                            f"s (state {pid_state(self.pid)}):\n{self.log()}",
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
        elif wait_gone(self.pid, timeout):
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
            wait_gone(self.pid, 5.0)


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
            if t.proc.returncode is None or pid_state(t.pid) is not None:
                t.kill()


def _interpreter(script: Path, override: str | None) -> str:
    if override:
        return override
    wanted = parse_header(script).interpreter
    return wanted if wanted and os.access(wanted, os.X_OK) else sys.executable

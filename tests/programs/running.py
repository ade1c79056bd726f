"""What the real programs' tests share: a free loopback port, a program
started in the foreground as its own session (so the dumped tree is
self-contained) and waited for until it serves, and the check that a
restore refused on purpose leaves nothing behind."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from engine.testing import Target, children, engine_fails, pid_state, wait_gone

SERVE_TIMEOUT = 10.0


def need(program: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.skip(f"{program} is not installed (scripts/setup.sh installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], workdir: Path, port: int) -> Target:
    """Run argv in workdir as a new session (setsid), stdio to target.log,
    and return once 127.0.0.1:port accepts a connection."""
    with open(workdir / "target.log", "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd=workdir, start_new_session=True)
    target = Target(proc, workdir)
    deadline = time.monotonic() + SERVE_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return target
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            target.kill()
            pytest.fail(f"{argv[0]} does not serve port {port} (exit {proc.returncode}):\n"
                        f"{target.log()}", pytrace=False)
        time.sleep(0.01)


def wait_closed(port: int, timeout: float = 10.0) -> None:
    """Until the program has closed every connection to `port` our clients
    closed: one left in CLOSE_WAIT, its peer outside the tree, would be
    refused at dump."""
    deadline = time.monotonic() + timeout
    while subprocess.run(["ss", "-tnH", "state", "established", "state", "close-wait",
                          "sport", "=", f":{port}"],
                         capture_output=True, text=True, check=True).stdout.strip():
        if time.monotonic() > deadline:
            pytest.fail(f"connections to port {port} still open after {timeout} s",
                        pytrace=False)
        time.sleep(0.01)


class Restored:
    """A restored program's root, our child as subreaper (not Popen's): for
    engine.testing.dump_to to dump it again."""

    def __init__(self, pid: int):
        self.pid = pid

    def reap(self) -> None:
        assert wait_gone(self.pid, 10.0), f"pid {self.pid} still runs after the dump"

    def assert_gone(self) -> None:
        assert pid_state(self.pid) is None, f"pid {self.pid}: {pid_state(self.pid)}"


def dumped_pids(images) -> list[int]:
    return [e.pid for e in images.read("pstree")]


def spoil_listener(images, port: int) -> None:
    """The listener on `port` bound to 192.0.2.1 (TEST-NET-1, on no interface
    here): well formed, so the restore starts the tree and fails in the
    task binding it, late."""
    from plugins.sk_inet.inet import words
    files = images.read("files")
    listener = next(e for e in files if e.HasField("isk") and e.isk.src_port == port
                    and e.isk.state == 10)                   # TCP_LISTEN
    listener.isk.src_addr[:] = words(socket.AF_INET, "192.0.2.1")
    images.write("files", files)


def refused_restore_leaves_nothing(images_dir: Path, pids: list[int], port: int) -> str:
    """Restore a spoilt image set: one line on stderr, a non-zero exit, no
    task of the tree left (not even a zombie) and the port free again."""
    before = children()
    line = engine_fails("restore", "-D", images_dir, "--verify")
    assert line.startswith("engine: error: "), line
    left = {pid: pid_state(pid) for pid in pids if pid_state(pid) is not None}
    assert not left, f"tasks left after a failed restore: {left}"
    assert children() <= before, "the failed restore left children behind"
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))        # what the program would do to start again
        s.listen()
    _unlock(images_dir)
    return line


def _unlock(images_dir: Path) -> None:
    """Whatever the dump left in the network lock, lifted for the next tests
    (a restore that fails at collect leaves it, as sk_inet's tests show)."""
    from engine.images import ImageDir
    from plugins.sk_inet import netlock
    from plugins.sk_inet.inet import connections
    netlock.unlock(connections(ImageDir(str(images_dir)).read("files")))

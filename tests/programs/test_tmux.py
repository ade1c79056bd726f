"""tmux: a server with a shell counting in a pane (a pty pair, the shell's
controlling terminal, libevent's epoll, the server's unix socket) is
dumped, killed and restored; the pane counts on."""
import os
import re
import shutil
import subprocess
import time

import pytest

from engine.testing import children, engine_cli, engine_fails, reap_dumped_tree, task_gone

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None,
                                 reason="tmux is installed by scripts/setup.sh")]

LOOP = "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done"


def _tmux(sock, *args, check=True) -> str:
    return subprocess.run(["tmux", "-S", str(sock), *args], capture_output=True, text=True,
                          check=check, timeout=10, env=dict(os.environ, TERM="xterm")).stdout


def _last_tick(sock) -> int:
    ticks = re.findall(r"tick (\d+)", _tmux(sock, "capture-pane", "-p"))
    return int(ticks[-1]) if ticks else 0


def _wait_tick_over(sock, n: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _last_tick(sock)
        if now > n:
            return now
        time.sleep(0.05)
    return _last_tick(sock)


@pytest.fixture
def tmux_server(tmp_path):
    sock = tmp_path / "tmux.sock"
    _tmux(sock, "-f", "/dev/null", "new-session", "-d", "-x", "91", "-y", "23", f"sh -c '{LOOP}'")
    pid = int(_tmux(sock, "display", "-p", "#{pid}"))
    _wait_tick_over(sock, 3)
    yield sock, pid
    _tmux(sock, "kill-server", check=False)
    # The server, its shell and the shell's last `sleep` come to us (the
    # subreaper) to be reaped.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (task_gone(pid) and not children()):
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.02)


def test_tmux_pane_counts_on(tmux_server, tmp_path):
    sock, pid = tmux_server
    img = tmp_path / "img"
    img.mkdir()
    engine_cli("dump", "-t", pid, "-D", img)
    reap_dumped_tree(img)
    before = _tmux(sock, "display", "-p", "x", check=False)
    assert "no server running" in _tmux(sock, "ls", check=False) + before or before == ""
    engine_cli("restore", "-D", img, "--verify")
    assert int(_tmux(sock, "display", "-p", "#{pid}")) == pid
    last = _last_tick(sock)
    assert last > 3
    # The shell's loop runs on in its pane, and the pane's size came back.
    assert _wait_tick_over(sock, last + 5) > last + 5
    assert _tmux(sock, "display", "-p", "#{pane_width}x#{pane_height}").strip() == "91x23"


def test_tmux_spoilt_image_leaves_nothing(tmux_server, tmp_path):
    """A pty index over kernel.pty.max: one line, no task left, and the
    socket's name does not answer."""
    from engine.images import ImageDir
    sock, pid = tmux_server
    img = tmp_path / "img"
    img.mkdir()
    engine_cli("dump", "-t", pid, "-D", img)
    reap_dumped_tree(img)
    images = ImageDir(str(img))
    infos = images.read("tty-info")
    infos[0].pty.index = 1 << 30
    images.write("tty-info", infos)
    line = engine_fails("restore", "-D", img)
    assert "tty-info.img: entry 0" in line and "kernel.pty.max" in line, line
    assert task_gone(pid)
    assert _tmux(sock, "ls", check=False) == ""

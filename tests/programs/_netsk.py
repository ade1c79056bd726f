"""Running a real program for the network acceptance tests (ping, ip
monitor, tcpdump): started by hand in its own session (setsid), its output
in a file, dumped, gone, restored with --verify under the test's subreaper."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.testing import engine_cli, reap_dumped_tree, wait_gone


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (scripts/setup.sh installs it)")
    return path


class Program:
    """A program started as a session leader, stdout and stderr to `out`."""

    def __init__(self, argv: list[str], out: Path, **popen):
        self.out = out
        with open(out, "wb") as f:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                         start_new_session=True, **popen)
        self.pid = self.proc.pid

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match:
        """The first match of `pattern` in the output past offset `start`."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.compile(pattern, re.M).search(self.text(), start)
            if m:
                return m
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} in the output of {self.pid} after {timeout} s:\n"
                            f"{self.text()[-2000:]}", pytrace=False)
            time.sleep(0.05)

    def dump(self, img: Path, *args: str) -> None:
        """engine dump; the program is gone and reaped after it."""
        img.mkdir(parents=True, exist_ok=True)
        engine_cli("dump", "-t", str(self.pid), "-D", str(img), *args)
        self.proc.wait(timeout=10)
        reap_dumped_tree(img)

    def restore(self, img: Path) -> None:
        engine_cli("restore", "-D", str(img), "--verify")

    def spoiled_restore_fails(self, img: Path, spoil) -> str:
        """Restore a copy of the images whose files.img `spoil(entries)` edited:
        it must fail in one line and leave nothing running; that line."""
        from engine.images import ImageDir
        from engine.testing import engine_fails, task_gone
        copy = img.with_name(img.name + "-spoiled")
        shutil.copytree(img, copy)
        images = ImageDir(str(copy))
        files = images.read("files")
        spoil(files)
        images.write("files", files)
        line = engine_fails("restore", "-D", str(copy))
        assert task_gone(self.pid), f"{self.pid} runs after a failed restore"
        return line

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> None:
        """Signal the (restored) program and reap it: we are its subreaper."""
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return
        if not wait_gone(self.pid, timeout):
            os.kill(self.pid, signal.SIGKILL)
            wait_gone(self.pid, timeout)

"""tty: pty pairs, the controlling terminal of a session, /dev/tty, and
tty images that must be refused."""
import os

import pytest

from engine.testing import dump_to


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_pty_pair_and_controlling_terminal(build_target, target_runner, dump_restore, tmp_path,
                                           variant):
    """Master with packet mode and the lock, a session leader's controlling
    terminal with its foreground group, /dev/tty, termios, window size,
    exclusive mode and the bytes the master had not read."""
    target = target_runner.start(build_target("tty", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"

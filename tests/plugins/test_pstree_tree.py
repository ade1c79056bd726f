"""pstree: whole trees come back with every pid, parent, session and group."""
import os

import pytest


def _reap_orphans():
    """The dumped tree's children were killed with it and reparented to us
    (the subreaper): reap them so their pids are free again."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                import time
                time.sleep(0.01)
        except ChildProcessError:
            return


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_tree_with_sessions_groups_and_grandchild(build_target, target_runner, engine_cli,
                                                  tmp_path, variant):
    target = target_runner.start(build_target("tree", variant))
    img = tmp_path / "img"
    engine_cli("dump", "-t", target.pid, "-D", img)
    target.reap()
    _reap_orphans()
    engine_cli("restore", "-D", img)
    assert target.verdict() == "PASS"

"""Namespaces a task made (uts, ipc, net, mnt), alone or owned by a user
namespace of the tree: made again by the task that owned them, joined by its
child, their contents back (tests/targets/nsmix.c checks from inside)."""
import os

import pytest

from engine.images import ImageDir
from engine.testing import engine_fails, reap_dumped_tree, task_gone


@pytest.mark.parametrize("user", [False, True], ids=["owned-by-init", "owned-by-userns"])
@pytest.mark.parametrize("kinds", ["uts", "ipc", "net", "mnt", "uts,ipc,net,mnt"])
def test_namespaces_made_by_their_task(build_target, target_runner, dump_restore, tmp_path,
                                       kinds, user):
    args = ["--kinds", kinds] + (["--user", "1"] if user else [])
    if user:
        # Inside its user namespace the target is uid 100000: let it reach
        # its directory (pytest's are 0700).
        _open_up(tmp_path / "targets")
    target = target_runner.start(build_target("nsmix"), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS", target.log()


def _open_up(path):
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    for parent in path.parents:
        if str(parent) in ("/", "/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o711)

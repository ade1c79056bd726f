"""Namespaces a task made (uts, ipc, net, mnt), alone or owned by a user
namespace of the tree: made again by the task that owned them, joined by its
child, their contents back (tests/targets/nsmix.c checks from inside)."""
import os

import pytest

from engine.testing import dump_to, engine_fails, task_gone


@pytest.mark.parametrize("user", [False, True], ids=["owned-by-init", "owned-by-userns"])
@pytest.mark.parametrize("kinds", ["uts", "ipc", "net", "mnt", "uts,ipc,net,mnt"])
def test_namespaces_made_by_their_task(build_target, target_runner, open_runner, dump_restore,
                                       tmp_path, kinds, user):
    args = ["--kinds", kinds] + (["--user", "1"] if user else [])
    runner = open_runner if user else target_runner
    target = runner.start(build_target("nsmix"), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS", target.log()



@pytest.fixture
def open_runner():
    """Targets in a directory anyone may enter: inside its user namespace
    the target is uid 100000, and pytest keeps its own directories 0700
    (resetting them at every session start, so chmod would race)."""
    import shutil
    import tempfile
    from pathlib import Path

    from engine.testing import TargetRunner
    base = Path(tempfile.mkdtemp(prefix="engine-ns-"))
    os.chmod(base, 0o755)
    runner = TargetRunner(base)
    yield runner
    runner.cleanup()
    shutil.rmtree(base, ignore_errors=True)


def _dumped(build_target, target_runner, engine_cli, tmp_path, kinds):
    target = target_runner.start(build_target("nsmix"), "--kinds", kinds)
    img = tmp_path / "img"
    return target, img, dump_to(target, img)


def _ns_id(images, target, kind):
    return getattr(images.read_one("ids", id=target.addr("c")), f"{kind}_ns_id")


def test_ns_images_hold_what_was_set(build_target, target_runner, engine_cli, tmp_path):
    target, img, images = _dumped(build_target, target_runner, engine_cli, tmp_path,
                                  "uts,ipc,net,mnt")
    uts = images.read_one("utsns", id=_ns_id(images, target, "uts"))
    assert (uts.nodename, uts.domainname, uts.owner_id) == ("nsmix-host", "nsmix.dom", 0)
    assert images.read_one("ipcns-var", id=_ns_id(images, target, "ipc")).msg_ctlmax == 12345
    net_id = _ns_id(images, target, "net")
    assert [d.name for d in images.read("netdev", id=net_id)] == ["lo"]
    mounts = images.read("mountpoints", id=_ns_id(images, target, "mnt"))
    assert mounts[0].mountpoint == "/" and mounts[1].fsname == "tmpfs"
    assert mounts[1].mountpoint == str(target.workdir / "mnt")
    # The task's child shares them all: one image each.
    for kind in ("uts", "ipc", "net", "mnt"):
        assert getattr(images.read_one("ids", id=target.addr("g")), f"{kind}_ns_id") == \
            _ns_id(images, target, kind)


@pytest.mark.parametrize("kind, image, edit, words", [
    ("uts", "utsns", lambda e: setattr(e, "nodename", "x" * 65), "nodename is longer"),
    ("ipc", "ipcns-var", lambda e: e.sem_ctls.append(1), "sem_ctls has 5"),
    ("net", "netdev", lambda e: setattr(e, "type", 2), "only the loopback"),
    ("mnt", "mountpoints", lambda e: setattr(e, "mountpoint", "/tmp/../etc"), "clean absolute"),
    ("mnt", "mountpoints", lambda e: setattr(e, "fstype", 1), "only tmpfs"),
], ids=["uts-name", "ipc-sem", "net-veth", "mnt-path", "mnt-proc"])
def test_bad_ns_images_are_refused_before_anything_starts(build_target, target_runner,
                                                           engine_cli, tmp_path, kind, image,
                                                           edit, words):
    target, img, images = _dumped(build_target, target_runner, engine_cli, tmp_path, kind)
    ns_id = _ns_id(images, target, kind)
    entries = images.read(image, id=ns_id)
    edit(entries[-1])
    images.write(image, entries, id=ns_id)
    line = engine_fails("restore", "-D", img)
    assert f"{image}-{ns_id}.img" in line and words in line, line
    for key in ("c", "g"):
        assert task_gone(target.addr(key))
    assert task_gone(target.pid)

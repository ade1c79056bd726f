"""A root that is the init of a pid namespace of its own (a container's
init): imaged at that namespace's level, as CRIU images it, and restored
as the init of a new one (plugins/pstree/own_ns.py)."""
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from engine.testing import dump_to, engine_cli, engine_command, engine_fails, wait_gone

CRIU_IMAGES = Path(__file__).resolve().parents[1] / "fixtures" / "criu-pidns"


def _init_target(build_target, target_runner, *args):
    target = target_runner.start(build_target("pidinit"), *args)
    target.pid = target.addr("init")       # the init is what is dumped
    return target


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested-below"])
def test_init_of_its_own_pid_namespace_comes_back(build_target, target_runner, dump_restore,
                                                  tmp_path, nested):
    target = _init_target(build_target, target_runner, *(["--nested", "1"] if nested else []))
    assert dump_restore(target, tmp_path / "img") == "PASS", target.log()
    if nested:
        # pidns-ID.img, relative to the root's namespace: parent 0, pids from there
        from engine.images import ImageDir
        images = ImageDir(str(tmp_path / "img"))
        (ns_id,) = images.ids("pidns")
        entry = images.read_one("pidns", id=ns_id)
        assert entry.parent_id == 0
        assert [(t.pid, list(t.ns_pid)) for t in entry.tasks] == [(200, [200, 1])]


@pytest.mark.parametrize("edit, words", [
    (lambda e: e.tasks[0].ns_pid.append(7), "3 levels, the namespace is at depth 1"),
    (lambda e: (setattr(e.tasks[0], "pid", 201), e.tasks[0].ns_pid.__setitem__(0, 201)),
     "task 201 is not in pstree.img"),
], ids=["levels", "pid-not-in-pstree"])
def test_hostile_pidns_below_the_init_is_refused(build_target, target_runner, tmp_path, edit,
                                                 words):
    target = _init_target(build_target, target_runner, "--nested", "1")
    images = dump_to(target, tmp_path / "img")
    (ns_id,) = images.ids("pidns")
    entry = images.read_one("pidns", id=ns_id)
    edit(entry)
    images.write("pidns", [entry], id=ns_id)
    line = engine_fails("restore", "-D", str(tmp_path / "img"))
    assert f"pidns-{ns_id}.img" in line and words in line, line


def test_images_hold_pids_at_the_namespace_level_as_criu(build_target, target_runner,
                                                         tmp_path):
    target = _init_target(build_target, target_runner)
    images = dump_to(target, tmp_path / "img")
    tree = [(e.pid, e.ppid, e.pgid, e.sid, list(e.threads)) for e in images.read("pstree")]
    assert tree[0] == (1, 0, 1, 1, [1])
    assert sorted(tree) == [(1, 0, 1, 1, [1]), (100, 1, 100, 1, [100]),
                            (200, 100, 100, 1, [200]), (300, 1, 1, 1, [])]
    for pid in (1, 100, 200, 300):
        assert images.exists("core", id=pid)
    # root_ids are the dumper's, as CRIU writes them: CRIU makes anew what
    # the root does not share with it (its pid namespace), keeps the rest
    ids, root_ids = images.read_one("ids", id=1), images.read_one("inventory").root_ids
    assert root_ids.pid_ns_id != ids.pid_ns_id
    assert images.read_one("ids", id=100).pid_ns_id == ids.pid_ns_id
    assert (root_ids.net_ns_id, root_ids.mnt_ns_id) == (ids.net_ns_id, ids.mnt_ns_id)
    assert root_ids.files_id != ids.files_id and root_ids.vm_id != ids.vm_id
    assert not images.ids("pidns"), "the root's own namespace needs no pidns image"
    # crit reads it as CRIU's own
    crit = shutil.which("crit")
    if crit:
        import subprocess
        out = subprocess.run([crit, "decode", "-i", str(tmp_path / "img" / "pstree.img")],
                             capture_output=True, text=True, check=True).stdout
        assert '"pid": 100' in out


@pytest.mark.parametrize("arg, words", [
    ("--thread", "threads in a pid namespace of its own are not supported"),
    ("--outside", "its session is outside its pid namespace"),
], ids=["thread", "session-outside"])
def test_refused_at_dump_and_left_running(build_target, target_runner, tmp_path, arg, words):
    target = _init_target(build_target, target_runner, arg, "1")
    line = engine_fails("dump", "-t", str(target.pid), "-D", str(tmp_path / "img"))
    assert f"task {target.pid}: {words}" in line, line
    assert _status(target.pid, "State")[0] in "SR", "the dump did not leave it running"
    assert not (tmp_path / "img" / "inventory.img").exists()


def test_criu_image_set_of_a_pid_namespace_init_restores(tmp_path):
    """CRIU 4.2's dump of `setsid unshare -pf setsid sh -c 'while :; do sleep
    0.3; done'`: sh is pid 1 there, a sleep pid 4."""
    img = tmp_path / "img"
    shutil.copytree(CRIU_IMAGES, img)
    pidfile = tmp_path / "pid"
    engine_cli("restore", "-D", img, "--pidfile", pidfile)
    root = int(pidfile.read_text())
    try:
        assert _status(root, "NSpid")[-1] == "1"
        assert _status(root, "NSsid")[-1] == "1"
        # It runs on: new sleeps, pids of its namespace, under it.
        deadline = time.monotonic() + 5
        while not (kids := _children(root)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kids, "the restored shell forks no sleep"
        assert len(_status(kids[0], "NSpid")) == 2
    finally:
        os.kill(root, signal.SIGKILL)
        wait_gone(root, 5.0)


def test_plan_of_a_containers_images(tmp_path):
    """`engine plan` used to say "pstree.img: entry 0: pid 1 is in use"."""
    out = engine_cli("plan", "-D", CRIU_IMAGES).stdout
    first = out.splitlines()[0]
    assert "fork task" in first and "(pid 1 in its pid namespace)" in first, out
    assert "(pid 4 in its pid namespace)" in out, out


def test_rpc_and_criu_command_give_the_roots_host_pid(tmp_path):
    """runc adopts the pid of the RPC answer and of the post-restore notify,
    the `criu` command writes it to --pidfile: the host's, of pid 1 there."""
    from engine.images.proto import rpc_pb2 as pb
    from tests.engine.test_rpc import Swrk, _opts
    img = tmp_path / "img"
    shutil.copytree(CRIU_IMAGES, img)
    fd = os.open(img, os.O_RDONLY | os.O_DIRECTORY)
    swrk = Swrk()
    try:
        resp = swrk.call(pb.criu_req(type=pb.RESTORE, opts=_opts(fd, notify_scripts=True,
                                                                 rst_sibling=True)))
    finally:
        os.close(fd)
        _, err = swrk.finish()
    assert resp.success, f"{resp.cr_errmsg}\n{err}"
    root = resp.restore.pid
    try:
        assert dict(swrk.notifies)["post-restore"] == root
        assert _status(root, "NSpid") == [str(root), "1"]
    finally:
        os.kill(root, signal.SIGKILL)
        wait_gone(root, 5.0)
    shutil.rmtree(img)
    shutil.copytree(CRIU_IMAGES, img)
    _, env = engine_command()
    import subprocess
    import sys
    subprocess.run([sys.executable, "-m", "engine.criu_cli", "restore", "-D", str(img), "-d",
                    "--pidfile", str(tmp_path / "pid")], env=env, check=True, timeout=120)
    root = int((tmp_path / "pid").read_text())
    try:
        assert _status(root, "NSpid") == [str(root), "1"]
    finally:
        os.kill(root, signal.SIGKILL)
        wait_gone(root, 5.0)


def _hostile(tmp_path, edit):
    img = tmp_path / "img"
    shutil.copytree(CRIU_IMAGES, img)
    from engine.images import ImageDir
    images = ImageDir(str(img))
    entries = images.read("pstree")
    edit(entries)
    images.write("pstree", entries)
    return img


@pytest.mark.parametrize("edit, words", [
    (lambda e: setattr(e[1], "pid", 0), "entry 1: pid 0 out of range"),
    (lambda e: setattr(e[1], "pid", 1 << 22), "entry 1: pid 4194304 out of range"),
    (lambda e: setattr(e[1], "sid", 1 << 22), "entry 1: sid 4194304 out of range"),
    (lambda e: (e.append(type(e[1])()), e[2].CopyFrom(e[1])), "entry 2: pid 4 listed twice"),
    (lambda e: setattr(e[0], "pid", 4), "entry 0: pid 4: the root of a pid namespace of its "
                                        "own must be its init, pid 1"),
    (lambda e: e[1].threads.append(5), "entry 1: task 4 has threads [4, 5]"),
], ids=["pid-0", "pid-over-pid-max", "sid-over-pid-max", "one-pid-twice", "root-not-1", "threads"])
def test_hostile_pids_of_the_namespace_are_refused(tmp_path, edit, words):
    img = _hostile(tmp_path, edit)
    line = engine_fails("restore", "-D", str(img))
    assert "pstree.img" in line and words in line, line
    left = [p for p in _children(os.getpid()) if len(_status(p, "NSpid")) > 1]
    assert not left, f"tasks left behind: {left}"


def _status(pid, name):
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1:] for line in f if line.startswith(name + ":"))


def _children(ppid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                        out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out

"""Hostile images (issue 20), as root restoring a uid-1000 user's image: a
ghost file no more privileged than the tasks holding it, made through no
link the engine did not make; a bound unix socket name that replaces only a
stale socket."""
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from engine.testing import (Target, dump_to, engine_cli, engine_fails, reap_dumped_tree,
                            task_gone, wait_gone)
from tests.plugins.test_rootless import UID, _as_user, user_dir  # noqa: F401 (fixture)


def _start_user_ghost(build_target, user_dir: Path, sub: Path) -> Target:
    """The ghost target as uid 1000, its deleted file in `sub` (a directory
    uid 1000 owns, as it owns user_dir above it); cwd user_dir."""
    exe = shutil.copy(build_target("ghost"), user_dir / "ghost")
    sub.mkdir()
    os.chown(sub, UID, UID)
    with open(user_dir / "target.log", "wb") as log:     # only the ghost in sub
        os.chown(user_dir / "target.log", UID, UID)
        proc = subprocess.Popen(_as_user(False) + [str(exe), "--ready", str(sub / "ready"),
                                                   "--result", str(sub / "result")],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd=user_dir, start_new_session=True)
    target = Target(proc, sub)
    target._wait_ready(10.0)
    return target


def _dump_user_ghost(build_target, user_dir):
    target = _start_user_ghost(build_target, user_dir, user_dir / "sub")
    img = user_dir / "img"
    images = dump_to(target, img)
    target.reap()
    (ghost_id,) = [int(p.name[len("ghost-file-"):-4]) for p in img.glob("ghost-file-*.img")]
    return target, img, images, ghost_id


@pytest.mark.parametrize("uid, gid, mode, want", [
    (0, UID, 0o104755, "uid 0: task {pid} (fsuid 1000, fsgid 1000) holding it could not own"),
    (UID, 0, 0o102755, "gid 0: task {pid} (fsuid 1000, fsgid 1000) holding it is not in"),
    (UID, UID, 0o020644, "mode 20644 is not a regular file's"),
])
def test_ghost_more_privileged_than_its_holder_is_refused(build_target, user_dir,
                                                          uid, gid, mode, want):
    """A uid-1000 task's deleted file, edited to root's and set-id (issue 20:
    run through /proc/PID/fd/N it gave euid 0): refused before anything
    starts, one line naming the ghost image and the field."""
    target, img, images, ghost_id = _dump_user_ghost(build_target, user_dir)
    g, *chunks = images.read("ghost-file", id=ghost_id)
    g.uid, g.gid, g.mode = uid, gid, mode
    images.write("ghost-file", [g, *chunks], id=ghost_id)
    line = engine_fails("restore", "-D", img)
    assert f"ghost-file-{ghost_id}.img" in line and want.format(pid=target.pid) in line, line
    assert task_gone(target.pid)
    assert not [p for p in (user_dir / "sub").iterdir() if p.name.startswith("result.ghost")]


def test_ghost_of_a_user_image_restored_as_root(build_target, user_dir):
    """The unedited image: the task is uid 1000 again, its deleted file too."""
    target, img, _, _ = _dump_user_ghost(build_target, user_dir)
    engine_cli("restore", "-D", img, "--verify")
    assert os.stat(f"/proc/{target.pid}").st_uid == UID
    fd3 = os.stat(f"/proc/{target.pid}/fd/3")
    assert (fd3.st_uid, fd3.st_nlink, stat.S_IMODE(fd3.st_mode)) == (UID, 0, 0o640)
    assert target.verdict() == "PASS", target.log()


def _swap_in_loop(sub: Path, secret_dir: Path, stop: threading.Event) -> None:
    """What the owner of `sub` may do: every other millisecond, put a
    symlink to a directory it may not write where `sub` was; every other
    round, a symlink at the ghost's name."""
    moved, name = sub.with_name("sub.moved"), sub / "result.ghost"
    rounds = 0
    while not stop.is_set():
        rounds += 1
        try:
            if rounds % 2:
                os.symlink(secret_dir / "made-by-root", name)
            os.rename(sub, moved)
            os.symlink(secret_dir, sub)
            time.sleep(0.001)
            os.unlink(sub)
            os.rename(moved, sub)
            time.sleep(0.001)
            if name.is_symlink():
                name.unlink()
        except OSError:
            pass


def test_ghost_not_redirected_by_symlinks_swapped_in(build_target, user_dir, tmp_path):
    """While the image is restored (as root, ten times), the ghost's
    directory and its name are swapped with symlinks to a root-only
    directory: nothing there is made, unlinked or changed; each restore
    either fails in one line or gives the task its own deleted file."""
    target, img, _, _ = _dump_user_ghost(build_target, user_dir)
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir(mode=0o700)
    secret = secret_dir / "result.ghost"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    before, dir_before = os.stat(secret), os.stat(secret_dir)
    sub, stop = user_dir / "sub", threading.Event()
    racer = threading.Thread(target=_swap_in_loop, args=(sub, secret_dir, stop))
    racer.start()
    outcomes = []
    try:
        for _ in range(10):
            proc = engine_cli("restore", "-D", img, check=False)
            if proc.returncode == 0:
                outcomes.append("restored")
                fd = os.stat(f"/proc/{target.pid}/fd/3")
                assert (fd.st_ino, fd.st_nlink) != (before.st_ino, before.st_nlink)
                assert (fd.st_uid, fd.st_nlink) == (UID, 0)
                os.kill(target.pid, signal.SIGKILL)
                wait_gone(target.pid, 10.0)
            else:
                assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
                outcomes.append(proc.stderr.strip())
                assert task_gone(target.pid)
    finally:
        stop.set()
        racer.join()
    now = os.stat(secret)
    assert (now.st_ino, now.st_uid, now.st_mode, now.st_size) == \
        (before.st_ino, before.st_uid, before.st_mode, before.st_size), outcomes
    assert os.listdir(secret_dir) == ["result.ghost"], outcomes
    # nothing was even made there and unlinked again
    assert os.stat(secret_dir).st_mtime_ns == dir_before.st_mtime_ns, outcomes
    assert secret.read_text() == "root only\n"


# --- unix sockets: a name that exists at restore --------------------------------

def _dumped_unixbound(build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("unixbound"))
    img = tmp_path / "img"
    dump_to(target, img)
    target.reap()
    return target, img


def _socket_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_socket())


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_a_live_socket_at_a_bound_name_is_refused(build_target, target_runner, tmp_path, kind):
    """Another program bound at the name (issue 20: it was unlinked and the
    program stopped answering, exit 0): refused in one line, before anything
    starts; that program still answers."""
    target, img = _dumped_unixbound(build_target, target_runner, tmp_path)
    name = target.workdir / ("listen.sock" if kind == socket.SOCK_STREAM else "dgram.sock")
    name.unlink()
    other = socket.socket(socket.AF_UNIX, kind)
    other.bind(str(name))
    if kind == socket.SOCK_STREAM:
        other.listen()
    try:
        line = engine_fails("restore", "-D", img)
        assert f"{name} is a live socket" in line and "files.img: unix socket id" in line, line
        assert task_gone(target.pid)
        probe = socket.socket(socket.AF_UNIX, kind)
        probe.connect(str(name))          # it still answers
        probe.close()
    finally:
        other.close()


@pytest.mark.parametrize("points_to", ["a file", "a stale socket"])
def test_a_symlink_at_a_bound_name_is_not_followed(build_target, target_runner, tmp_path,
                                                   points_to):
    """A symlink at the name is no socket: refused, and neither it nor what
    it points to is unlinked or changed."""
    target, img = _dumped_unixbound(build_target, target_runner, tmp_path)
    name = target.workdir / "dgram.sock"
    name.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    there = elsewhere / "x"
    if points_to == "a file":
        there.write_text("keep me")
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(str(there))
        s.close()
    name.symlink_to(there)
    before = os.lstat(there)
    line = engine_fails("restore", "-D", img)
    assert f"{name} exists and is not a socket" in line, line
    assert task_gone(target.pid)
    assert name.is_symlink()
    now = os.lstat(there)
    assert (now.st_ino, now.st_mode, now.st_uid, now.st_mtime_ns) == \
        (before.st_ino, before.st_mode, before.st_uid, before.st_mtime_ns)


def test_a_failed_restore_leaves_no_socket_file(build_target, target_runner, tmp_path):
    """The restore fails after the sockets were bound (a file of the fd
    table is gone): the names it bound are not left behind (issue 20: 83 of
    1000 runs left one)."""
    target, img = _dumped_unixbound(build_target, target_runner, tmp_path)
    assert _socket_files(target.workdir)         # the dumped ones' stale files
    (target.workdir / "target.log").unlink()     # opened by the fd table, after the sockets
    line = engine_fails("restore", "-D", img)
    assert "target.log" in line, line
    assert task_gone(target.pid)
    assert _socket_files(target.workdir) == []


def test_a_failed_rootless_restore_leaves_no_zombie(build_target, user_dir):
    """issue 20: every failed --rootless restore left the engine's pid 1 of
    the new pid namespace to the caller's reaper, a zombie."""
    from engine.testing.reaper import children, pid_state
    from tests.plugins.test_rootless import engine_as_user, start_as_user
    exe = shutil.copy(build_target("tree"), user_dir / "tree")
    target = start_as_user(exe, user_dir)
    img = user_dir / "img"
    engine_as_user("dump", "-t", target.pid, "-D", img)
    target.reap()
    reap_dumped_tree(img)
    from engine.images import ImageDir
    images = ImageDir(img)
    core = images.read_one("core", id=target.pid)
    core.thread_core.pdeath_sig = 99
    images.write("core", [core], id=target.pid)
    before = children()
    proc = engine_as_user("restore", "-D", img, "--rootless", caps=False, check=False)
    assert proc.returncode != 0 and "pdeath_sig 99" in proc.stderr, proc.stderr
    time.sleep(0.5)
    zombies = [pid for pid in children() - before if pid_state(pid) == "Z"]
    assert zombies == [], zombies


def test_pstree_cut_at_an_entry_boundary_is_refused(build_target, target_runner, tmp_path):
    """issue 20: pstree.img cut after its first entry restored the root
    alone, exit 0."""
    target = target_runner.start(build_target("sharedfd"))
    images = dump_to(target, tmp_path / "img")
    entries = images.read("pstree")
    assert len(entries) == 2
    images.write("pstree", entries[:1])
    line = engine_fails("restore", "-D", tmp_path / "img")
    assert f"pstree.img: no task or thread {entries[1].pid}, whose core-" in line, line
    assert task_gone(target.pid)


def test_a_fifo_named_as_a_regular_file_does_not_hang_the_restore(build_target, target_runner,
                                                                  tmp_path):
    """files.img edited to name a FIFO nobody writes, read-only: its open
    blocked the task, and the engine waiting for it, forever. Opened
    O_NONBLOCK, it ends: here --verify refuses the fd that is no file."""
    target = target_runner.start(build_target("files"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    entries = images.read("files")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o644)
    (reg,) = [e.reg for e in entries if e.HasField("reg") and "/data" in e.reg.name][:1]
    reg.name, reg.mode, reg.flags, reg.pos = str(fifo), stat.S_IFIFO | 0o644, os.O_RDONLY, 0
    reg.ClearField("size")
    images.write("files", entries)
    proc = engine_cli("restore", "-D", img, "--verify", check=False, timeout=60)
    lines = [line for line in proc.stderr.strip().splitlines() if "verify: task" not in line]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "fds:" in lines[0] and str(fifo) in lines[0], lines[0]
    assert task_gone(target.pid)


@pytest.mark.parametrize("caps", [False, True], ids=["rootless", "checkpoint_restore"])
def test_ghost_more_privileged_than_its_holder_is_refused_as_the_user(build_target, user_dir,
                                                                      caps):
    """The same spoilt ghost restored by uid 1000 itself (--rootless, or
    with CAP_CHECKPOINT_RESTORE only): refused alike, nothing gained."""
    from tests.plugins.test_rootless import engine_as_user
    target, img, images, ghost_id = _dump_user_ghost(build_target, user_dir)
    g, *chunks = images.read("ghost-file", id=ghost_id)
    g.uid, g.mode = 0, 0o104755
    images.write("ghost-file", [g, *chunks], id=ghost_id)
    for path in [img, *img.iterdir()]:
        os.chown(path, UID, UID)
    args = ("restore", "-D", img, *(() if caps else ("--rootless",)))
    proc = engine_as_user(*args, caps=caps, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert f"ghost-file-{ghost_id}.img: uid 0: task {target.pid}" in lines[0], lines[0]
    assert task_gone(target.pid)
    assert not [p for p in (user_dir / "sub").iterdir() if p.name.startswith("result.ghost")]


@pytest.mark.parametrize("name, want", [
    ("/tmp/a\0b", "name holds a NUL"),
    ("../../etc/shadow", "name is not an absolute path"),
])
def test_a_regular_file_name_no_dump_holds_is_refused(build_target, target_runner, tmp_path,
                                                      name, want):
    """issue 20: a NUL in a name gave 'embedded null byte', raw."""
    target = target_runner.start(build_target("files"))
    images = dump_to(target, tmp_path / "img")
    entries = images.read("files")
    entry = next(e for e in entries if e.HasField("reg"))
    entry.reg.name = name
    images.write("files", entries)
    line = engine_fails("restore", "-D", tmp_path / "img")
    assert f"files.img: file id {entry.id} ({name!r}): {want}" in line, line
    assert task_gone(target.pid)

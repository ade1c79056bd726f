"""file_locks: flock, POSIX and OFD locks come back, checked from outside
the tree (this test is the other process), the sqlite WAL case of issue 15,
and what is refused: at dump (leases, a task waiting for a lock), at
collect (hostile filelocks.img) and at restore (a lock someone else holds)."""
import fcntl
import os
import re
import signal
import sqlite3
import struct
import time

import pytest

from engine.testing import dump_to, engine_cli, engine_fails, task_gone

FLOCK = "hhxxxxqqixxxx"                 # struct flock on x86-64
F_RDLCK, F_WRLCK, F_UNLCK = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
FL_POSIX, FL_FLOCK, FL_OFD = 1, 2, 4


def _getlk(path, start, length, want=F_WRLCK, cmd=fcntl.F_GETLK):
    """(type, pid) of the lock that would stop `want` on the range, or None."""
    with open(path, "r+b") as f:
        arg = struct.pack(FLOCK, want, os.SEEK_SET, start, length, 0)
        ltype, _, _, _, pid = struct.unpack(FLOCK, fcntl.fcntl(f, cmd, arg))
    return None if ltype == F_UNLCK else (ltype, pid)


def _ofd_getlk(path, start, length, want=F_WRLCK):
    return _getlk(path, start, length, want, fcntl.F_OFD_GETLK)


def _flock_nb(path, op) -> bool:
    """Whether this process could take flock `op` on `path` now."""
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, op | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _proc_locks_on(path) -> list[str]:
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        return [line.split(None, 1)[1].strip() for line in f if f" {dev} " in line]


def _expected_entries(parent, child):
    out = [(FL_FLOCK, F_RDLCK, parent, 0, 0)]
    for pid in (parent, child):
        out += [(FL_POSIX, F_WRLCK, pid, 100, 100), (FL_POSIX, F_RDLCK, pid, 300, 0),
                (FL_OFD, F_WRLCK, pid, 200, 50)]
    return sorted(out)


def _check_from_outside(workdir, parent, child):
    for pid, name in ((parent, "parent.db"), (child, "child.db")):
        path = workdir / name
        assert _getlk(path, 100, 100) == (F_WRLCK, pid), name
        assert _getlk(path, 0, 100) is None, f"{name}: 0-99 must be free"
        assert _getlk(path, 250, 50, cmd=fcntl.F_GETLK) is None, f"{name}: 250-299 free"
        assert _getlk(path, 300, 0) == (F_RDLCK, pid), f"{name}: read lock to EOF"
        assert _getlk(path, 1 << 40, 1) == (F_RDLCK, pid), f"{name}: ... up to EOF"
        assert _getlk(path, 300, 0, want=F_RDLCK) is None, f"{name}: a read lock is shared"
        assert _ofd_getlk(path, 200, 50) == (F_WRLCK, -1), f"{name}: the OFD lock"
        assert _ofd_getlk(path, 150, 10, want=F_RDLCK) == (F_WRLCK, pid)
    shared = workdir / "shared.db"
    assert not _flock_nb(shared, fcntl.LOCK_EX), "the shared flock is gone"
    assert _flock_nb(shared, fcntl.LOCK_SH), "the shared flock is not a shared one"
    assert len([line for line in _proc_locks_on(shared) if "FLOCK" in line]) == 1, \
        "one flock for the open file both tasks hold"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_locks_of_a_parent_and_its_child_come_back(build_target, target_runner, tmp_path,
                                                   variant):
    """Each range locked by the right kind and owner, seen from outside the
    tree; each task finds its own fdinfo lock lines; --verify compares them."""
    target = target_runner.start(build_target("file_locks", variant))
    child = target.addr("child")
    _check_from_outside(target.workdir, target.pid, child)       # the checks are real
    img = tmp_path / "img"
    images = dump_to(target, img)
    got = sorted((e.flag, e.type, e.pid, e.start, e.len) for e in images.read("filelocks"))
    assert got == _expected_entries(target.pid, child)     # as CRIU 4.2 --file-locks writes
    assert _getlk(target.workdir / "parent.db", 100, 100) is None      # gone with the tree
    engine_cli("restore", "-D", img, "--verify")
    _check_from_outside(target.workdir, target.pid, child)
    assert target.verdict() == "PASS"


def test_a_lock_someone_else_holds_now_fails_the_restore(build_target, target_runner,
                                                         tmp_path):
    """Never waited for: one line naming the task, fd, file and range; no
    task left. A read lock beside it would have been fine."""
    target = target_runner.start(build_target("file_locks"))
    img = tmp_path / "img"
    dump_to(target, img)
    path = target.workdir / "parent.db"
    with open(path, "r+b") as f:
        fcntl.fcntl(f, fcntl.F_SETLK, struct.pack(FLOCK, F_RDLCK, os.SEEK_SET, 150, 1, 0))
        line = engine_fails("restore", "-D", img)
    assert re.search(rf"task {target.pid}: fd \d+ \({re.escape(str(path))}\): POSIX write "
                     r"lock on bytes 100-199: someone else holds a conflicting lock now$",
                     line), line
    assert task_gone(target.pid)
    assert _getlk(path, 0, 0) is None, "no lock left behind"


# --- refused at dump, the target left running as it was ---------------------------

def test_a_lease_is_refused_and_kept(build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("locks"), "--lease")
    line = engine_fails("dump", "-t", str(target.pid), "-D", str(tmp_path / "img"))
    assert not task_gone(target.pid)
    assert re.search(rf"task {target.pid}: fd \d+ \(.*/lease\.db\): file lease or delegation "
                     r"\(LEASE ACTIVE READ .*\): not supported$", line), line
    assert target.verdict() == "PASS"


def _wait_until_waiting(path):
    deadline = time.monotonic() + 10
    while not any(line.startswith("->") for line in _proc_locks_on(path)):
        assert time.monotonic() < deadline, "the target never waited"
        time.sleep(0.01)


@pytest.mark.parametrize("kind, lock, want", [
    ("flock", lambda f: fcntl.flock(f, fcntl.LOCK_EX), r"flock on fd \d+"),
    ("posix", lambda f: fcntl.lockf(f, fcntl.LOCK_EX), r"F_SETLKW on fd \d+"),
    ("ofd", lambda f: fcntl.fcntl(f, fcntl.F_OFD_SETLK,
                                  struct.pack(FLOCK, F_WRLCK, 0, 0, 0, 0)),
     r"F_OFD_SETLKW on fd \d+"),
])
def test_a_task_waiting_for_a_lock_is_refused(build_target, target_runner, tmp_path,
                                              kind, lock, want):
    """The freeze takes it out of its wait (no /proc file shows it then): its
    registers say it; left running, it gets the lock once this test lets go."""
    path = tmp_path / "wait.db"
    with open(path, "w+b") as f:
        lock(f)
        target = target_runner.start(build_target("locks"), f"--wait-{kind}", str(path))
        _wait_until_waiting(path)
        line = engine_fails("dump", "-t", str(target.pid), "-D", str(tmp_path / "img"))
        assert not task_gone(target.pid)
        assert re.search(rf"task {target.pid}: blocked waiting for a file lock \({want}\): "
                         "not supported$", line), line
    assert target.verdict() == "PASS"


def test_a_lock_no_fd_shows_is_refused(build_target, target_runner, tmp_path):
    """A flock whose open file only a mapping keeps (its fd closed): no fd
    to take it back through."""
    target = target_runner.start(build_target("locks"), "--mapped")
    line = engine_fails("dump", "-t", str(target.pid), "-D", str(tmp_path / "img"))
    assert not task_gone(target.pid)
    assert re.search(rf"task {target.pid}: a file lock \(FLOCK ADVISORY WRITE {target.pid} "
                     r"\S+ 0 EOF\) that no fd of the tree shows \(its file is held by a "
                     r"mapping or a unix socket queue\): not supported$", line), line
    assert target.verdict() == "PASS"


def test_another_process_lock_on_a_file_the_task_has_open_is_not_its(
        build_target, target_runner, tmp_path):
    """Only the task's own locks count: the other process's lock on a file
    both have open (the other sqlite connection) stays where it is."""
    target = target_runner.start(build_target("files"))
    with open(target.workdir / "data.txt") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        images = dump_to(target, tmp_path / "img")
        assert not images.exists("filelocks")
        assert _proc_locks_on(target.workdir / "data.txt")     # still ours
    engine_cli("restore", "-D", tmp_path / "img", "--verify")
    assert target.verdict() == "PASS"


# --- hostile images: refused before any task exists --------------------------------

def _spoil(entries, how):
    e = entries[-1]
    if how == "fd":
        e.fd = 999
    elif how == "len":
        e.len = -5
    elif how == "kind":
        e.flag = 16
    elif how == "lease":
        e.flag = 8
    elif how == "pid":
        e.pid = 1
    elif how == "type":
        e.type = 2
    elif how == "twice":
        entries.append(entries[-1])
    elif how == "past":
        e.start, e.len = 1 << 62, (1 << 62) + 1


@pytest.mark.parametrize("how, want", [
    ("fd", "fd 999 is not in the fd table of task {pid}"),
    ("len", "start 200, len -5: negative"),
    ("kind", "flag 16 is no lock kind"),
    ("lease", "flag 8 (a lease): leases are not restored"),
    ("pid", "pid 1 is not a live task of pstree.img"),
    ("type", "type 2 is neither F_RDLCK (0) nor F_WRLCK (1)"),
    ("twice", "a second entry for the OFD lock of file id"),
    ("past", "past the largest file offset"),
])
def test_hostile_filelocks_are_refused(build_target, target_runner, tmp_path, how, want):
    """filelocks.img edited with the protobuf classes: one line naming the
    image, the entry and the field; no task left."""
    target = target_runner.start(build_target("file_locks"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    entries = images.read("filelocks")
    _spoil(entries, how)
    images.write("filelocks", entries)
    line = engine_fails("restore", "-D", img)
    pid = entries[-1].pid
    assert "filelocks.img: entry " in line and want.format(pid=pid) in line, line
    assert task_gone(target.pid) and task_gone(target.addr("child"))


# --- sqlite in WAL mode, the real case -----------------------------------------------

def _wait_for(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never came"
        time.sleep(0.01)


def test_sqlite_wal_beside_another_process(build_target, target_runner, tmp_path):
    """The restored connection keeps its locks: the other one, closing,
    cannot take the database for itself, so it neither checkpoints nor
    deletes -wal and -shm; each then sees the other's writes."""
    target = target_runner.start(build_target("file_locks_sqlite.py"))
    db = target.workdir / "wal.db"
    other = sqlite3.connect(db, isolation_level=None)
    try:
        assert [r[0] for r in other.execute("SELECT x FROM t")] == ["before"]
        img = tmp_path / "img"
        images = dump_to(target, img)
        assert {e.flag for e in images.read("filelocks")} == {FL_POSIX}
        engine_cli("restore", "-D", img, "--verify")
    finally:
        other.close()                  # sqlite's last connection deletes -wal, -shm
    for suffix in ("-wal", "-shm"):
        assert (target.workdir / f"wal.db{suffix}").exists(), f"{suffix} deleted"
    os.kill(target.pid, signal.SIGUSR1)
    _wait_for(target.workdir / "wrote")
    other = sqlite3.connect(db, isolation_level=None)
    try:
        assert sorted(r[0] for r in other.execute("SELECT x FROM t")) == ["after", "before"]
        other.execute("INSERT INTO t VALUES ('from-test')")
    finally:
        other.close()
    (target.workdir / "expect").write_text("from-test\n")
    assert target.verdict() == "PASS"


# --- CRIU's option: always on --------------------------------------------------------

def test_criu_file_locks_flag_and_rpc_option_are_always_on(build_target, target_runner,
                                                           tmp_path):
    """`criu dump/restore --file-locks` (the shim) and criu_opts.file_locks
    (the RPC) ask for what the engine always does: accepted, locks kept."""
    import subprocess
    import sys

    from engine.images.proto import rpc_pb2
    from engine.rpc import options
    from engine.testing import engine_command, reap_dumped_tree
    notes = []
    argv = options.to_argv(rpc_pb2.criu_opts(images_dir_fd=-1, file_locks=True),
                           options.RESTORE, "/img", notes)
    assert argv == ["-D", "/img"] and "file_locks=True" in notes[0]
    target = target_runner.start(build_target("file_locks"))
    img = tmp_path / "img"
    img.mkdir()
    _, env = engine_command()
    for args in (("dump", "-t", target.pid, "-D", img, "--file-locks"),
                 ("restore", "-D", img, "-d", "--file-locks")):
        proc = subprocess.run([sys.executable, "-m", "engine.criu_cli", *map(str, args)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        if args[0] == "dump":
            target.reap()
            reap_dumped_tree(img)
    _check_from_outside(target.workdir, target.pid, target.addr("child"))
    assert target.verdict() == "PASS"

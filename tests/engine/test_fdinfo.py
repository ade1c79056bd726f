"""engine.images.fdinfo on real fds of this process, one kernel format each."""
import ctypes
import fcntl
import os
import select
import signal
import struct
import time

import pytest

from engine.images import fdinfo

libc = ctypes.CDLL(None, use_errno=True)
libc.signalfd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
libc.inotify_init1.argtypes = [ctypes.c_int]
libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                               ctypes.c_char_p]

TFD_TIMER_ABSTIME = 1
IN_MODIFY, IN_DELETE = 0x2, 0x200
FAN_CLASS_NOTIF, FAN_MARK_ADD, FAN_MARK_MOUNT, FAN_OPEN = 0, 0x1, 0x10, 0x20
AT_FDCWD = -100


def _checked(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


@pytest.fixture
def fds():
    opened = []
    yield opened
    for fd in opened:
        os.close(fd)


def _read(fd: int) -> dict:
    return fdinfo.read(os.getpid(), fd)


def test_common_lines_of_every_fd(tmp_path, fds):
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR | os.O_APPEND, 0o600)
    fds.append(fd)
    os.write(fd, b"12345")
    info = _read(fd)
    assert info["pos"] == 5 and info["flags"] & os.O_APPEND and info["flags"] & os.O_RDWR
    assert info["ino"] == os.fstat(fd).st_ino and info["mnt_id"] > 0
    assert fdinfo.read_common(os.getpid(), fd) == {
        "pos": 5, "flags": info["flags"], "mnt_id": info["mnt_id"]}


def test_eventfd(fds):
    fd = os.eventfd(0x1234, os.EFD_SEMAPHORE | os.EFD_NONBLOCK)
    fds.append(fd)
    info = _read(fd)
    assert info["eventfd-count"] == 0x1234 and info["eventfd-semaphore"] == 1
    assert isinstance(info["eventfd-id"], int)


def test_epoll_lists_each_watched_fd(tmp_path, fds):
    with select.epoll() as ep:
        ep_fd = os.dup(ep.fileno())
    r, w = os.pipe()
    fds += [ep_fd, r, w]
    # select.epoll's register gives no data word: epoll_ctl through ctypes.
    event = struct.pack("=IQ", select.EPOLLIN | select.EPOLLET, 0xDEADBEEF00000001)
    _checked(libc.epoll_ctl(ep_fd, 1, r, event))                    # EPOLL_CTL_ADD
    event = struct.pack("=IQ", select.EPOLLOUT, 7)
    _checked(libc.epoll_ctl(ep_fd, 1, w, event))
    tfds = {t["tfd"]: t for t in _read(ep_fd)["tfd"]}
    assert set(tfds) == {r, w}
    assert tfds[r]["events"] & select.EPOLLIN and tfds[r]["events"] & select.EPOLLET
    assert tfds[r]["data"] == 0xDEADBEEF00000001 and tfds[w]["data"] == 7
    assert tfds[r]["ino"] == os.fstat(r).st_ino and tfds[r]["pos"] == 0
    assert isinstance(tfds[r]["sdev"], int)


def test_signalfd_sigmask(fds):
    mask = (1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGTERM - 1))
    sigset = (ctypes.c_uint64 * 16)(mask)                           # glibc's 1024-bit sigset_t
    fds.append(_checked(libc.signalfd(-1, sigset, os.O_NONBLOCK | os.O_CLOEXEC)))
    assert _read(fds[-1])["sigmask"] == mask


def test_timerfd(fds):
    fd = _checked(libc.timerfd_create(1, os.O_NONBLOCK))            # CLOCK_MONOTONIC
    fds.append(fd)
    at = int(time.clock_gettime(time.CLOCK_MONOTONIC)) + 3600
    spec = struct.pack("=qqqq", 5, 250, at, 0)                      # interval 5.00000025 s
    _checked(libc.timerfd_settime(fd, TFD_TIMER_ABSTIME, spec, None))
    info = _read(fd)
    assert info["clockid"] == 1 and info["ticks"] == 0
    assert info["settime flags"] == TFD_TIMER_ABSTIME
    assert info["it_interval"] == (5, 250)
    assert 3500 < info["it_value"][0] <= 3600                       # the time left


def test_inotify_lists_each_watch(tmp_path, fds):
    fd = _checked(libc.inotify_init1(os.O_NONBLOCK))
    fds.append(fd)
    (tmp_path / "a").write_bytes(b"")
    wd_dir = _checked(libc.inotify_add_watch(fd, bytes(tmp_path), IN_DELETE))
    wd_file = _checked(libc.inotify_add_watch(fd, bytes(tmp_path / "a"), IN_MODIFY))
    watches = {w["wd"]: w for w in _read(fd)["inotify"]}
    assert set(watches) == {wd_dir, wd_file}
    assert watches[wd_dir]["ino"] == os.stat(tmp_path).st_ino
    assert watches[wd_file]["ino"] == os.stat(tmp_path / "a").st_ino
    assert watches[wd_file]["mask"] & IN_MODIFY and watches[wd_dir]["mask"] & IN_DELETE
    assert watches[wd_file]["ignored_mask"] == 0
    # The file handle the kernel would reopen the inode by.
    handle = watches[wd_file]["f_handle"]
    assert isinstance(handle, bytes) and len(handle) == watches[wd_file]["fhandle-bytes"]


def test_fanotify_group_and_marks(tmp_path, fds):
    fd = libc.fanotify_init(FAN_CLASS_NOTIF, os.O_RDONLY)
    if fd < 0:
        pytest.skip(f"fanotify_init: {os.strerror(ctypes.get_errno())}")
    fds.append(fd)
    _checked(libc.fanotify_mark(fd, FAN_MARK_ADD, FAN_OPEN, AT_FDCWD, bytes(tmp_path)))
    _checked(libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN, AT_FDCWD, b"/"))
    info = _read(fd)
    assert info["fanotify"]["flags"] == FAN_CLASS_NOTIF
    # The kernel adds O_LARGEFILE to the event fds' flags (Python's
    # os.O_LARGEFILE is 0 on 64-bit: the kernel's own value here).
    assert info["fanotify"]["event-flags"] & ~0o100000 == os.O_RDONLY
    by_kind = {"inode" if "ino" in m else "mount": m for m in info["fanotify-marks"]}
    assert by_kind["inode"]["ino"] == os.stat(tmp_path).st_ino
    assert by_kind["inode"]["mask"] & FAN_OPEN
    fds.append(os.open("/", os.O_RDONLY))
    assert by_kind["mount"]["mnt_id"] == _read(fds[-1])["mnt_id"]
    assert by_kind["mount"]["mask"] & FAN_OPEN


def test_pidfd_of_a_live_and_a_gone_process(fds):
    fds.append(os.pidfd_open(os.getpid()))
    info = _read(fds[-1])
    assert info["Pid"] == os.getpid() and info["NSpid"][-1] == os.getpid()
    child = os.fork()
    if child == 0:
        os._exit(0)
    fds.append(os.pidfd_open(child))
    os.waitpid(child, 0)
    assert _read(fds[-1])["Pid"] == -1


def test_pty_master_tty_index(fds):
    master, slave = os.openpty()
    fds += [master, slave]
    assert _read(master)["tty-index"] == int(os.ttyname(slave).rsplit("/", 1)[1])


def test_locks_are_listed(tmp_path, fds):
    fd = os.open(tmp_path / "locked", os.O_CREAT | os.O_RDWR, 0o600)
    fds.append(fd)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    (lock,) = _read(fd)["lock"]
    assert "POSIX" in lock and "WRITE" in lock and str(os.getpid()) in lock


def test_unknown_lines_stay_text():
    info = fdinfo.parse(b"pos:\t0\nflags:\t02\nmnt_id:\t9\nino:\t4\nsome-new-key:\tab c\n")
    assert info == {"pos": 0, "flags": 2, "mnt_id": 9, "ino": 4, "some-new-key": "ab c"}

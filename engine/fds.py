"""Reading another task's fds (/proc/PID/fdinfo, pidfd_getfd) and keeping
a restoring task's helper fds out of its image's way (park).

Shared by every plugin that dumps or restores an fd and by the restore's fd
sharing.
"""
from __future__ import annotations

import ctypes
import fcntl
import os

from engine.images.fdinfo import read_common
from engine.stash import StashKey



def fdinfo(pid: int, fd: int) -> dict[str, int]:
    """pos, flags (octal in the file) and mnt_id of one fd (the fast path
    of engine.images.fdinfo: a dump reads this for every fd). The lines a
    file kind adds (epoll's tfd:, eventfd-count...) are fdinfo.read's."""
    return read_common(pid, fd)


# Dump: (pid, fd, fdinfo) of the fd being offered to engine_dump_fd, read
# once by the files plugin for the plugins that claim it.
CLAIMING = StashKey()


def claiming_fdinfo(ctx, pid: int, fd: int) -> dict[str, int]:
    """fdinfo(pid, fd), without reading it again while the fd is being claimed."""
    last = ctx.stash.get(CLAIMING, None)
    if last is not None and last[0] == pid and last[1] == fd:
        return last[2]
    return fdinfo(pid, fd)


def pidfd_getfd(pid: int, fd: int) -> int:
    """A copy of fd `fd` of task `pid` (the same open file), ours to close."""
    from engine import libc
    pidfd = os.pidfd_open(pid)
    try:
        copy = libc.syscall("pidfd_getfd", pidfd, fd, 0)
        if copy < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd of fd {fd} of {pid}: {os.strerror(err)}")
        return copy
    finally:
        os.close(pidfd)


# pid -> the first fd number above every fd of the task's image, set at
# collect by the plugin that restores fd tables, for park().
FD_FLOORS = StashKey()


def park(ctx, fd: int) -> int:
    """Move `fd`, a helper a restoring task keeps open (a pipe's other end,
    a FIFO holder), above every fd of the task's image, so that installing
    the image's fds never closes it; returns its new number (close-on-exec).

    Without this, a pipe made while fds 5 and 6 are free holds them, and the
    image's own fd 6 is later dup2'd over the pipe's write end.
    """
    floor = ctx.stash.get(FD_FLOORS, {}).get(ctx.self_pid, 0)
    room_for(floor + 64)
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    os.close(fd)
    return high


def room_for(fds: int) -> None:
    """Raise this task's soft RLIMIT_NOFILE (never past the hard one, checked
    at collect) so `fds` fds fit: its image's and the helpers parked above
    them (a node parking one may run before the fd table's), as CRIU raises
    its own before prepare_fds."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < fds and soft != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(fds, hard), hard))


KCMP_FILES, KCMP_FS = 2, 3


def kcmp_sharer(seen: list, pid: int, what: int) -> int | None:
    """The task in `seen` sharing kernel object `what` (KCMP_FILES: its fd
    table, KCMP_FS: cwd, root and umask) with task pid, or None, pid then
    inserted: `seen` is kept in kcmp's order, one binary search a task.
    Threads share theirs with their leader: one task here."""
    from engine import libc
    lo, hi = 0, len(seen)
    while lo < hi:
        mid = (lo + hi) // 2
        r = libc.syscall("kcmp", pid, seen[mid], what, 0, 0)
        if r < 0:
            raise OSError(ctypes.get_errno(), f"kcmp of tasks {pid} and {seen[mid]}")
        if r == 0:
            return seen[mid]
        if r == 1:
            hi = mid
        else:
            lo = mid + 1
    seen.insert(lo, pid)
    return None

"""Reading another task's fds: /proc/PID/fdinfo and pidfd_getfd.

Shared by every plugin that dumps an fd and by the restore's fd sharing.
"""
from __future__ import annotations

import ctypes
import os

SYS_PIDFD_GETFD = 438


def fdinfo(pid: int, fd: int) -> dict[str, int]:
    """pos, flags (octal in the file) and mnt_id of one fd."""
    out = {}
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("pos", "flags", "mnt_id"):
                out[key] = int(value.strip(), 8 if key == "flags" else 10)
    return out


def pidfd_getfd(pid: int, fd: int) -> int:
    """A copy of fd `fd` of task `pid` (the same open file), ours to close."""
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if copy < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd of fd {fd} of {pid}: {os.strerror(err)}")
        return copy
    finally:
        os.close(pidfd)

"""signalfd: the signals a signalfd reads and its status flags (criu/signalfd.c).

Dump: an fd whose link is ``anon_inode:[signalfd]`` becomes a SIGNALFD file
entry (files.img body ``sgfd``): its f_flags (O_NONBLOCK is the one status
flag it takes), the mask (fdinfo ``sigmask``, hex, bit N-1 for signal N, as
CRIU writes it) and its SIGIO owner (fown, filled by the files plugin).

A signalfd holds no signals of its own: read(2) takes them from the
reading thread's pending signals and its process's shared ones. Those are
the task's, dumped and queued back (with their siginfo) by the core plugin,
so a signal pending before the dump is read through the restored signalfd.

Restore: signalfd4(-1, mask, 8, 0), then F_SETFL back to the dumped
O_NONBLOCK. Close-on-exec is the fd table's (the files plugin).

Refused at collect (files.img, naming the field): flag bits other than
O_RDWR, O_NONBLOCK and O_CLOEXEC; a mask holding SIGKILL or SIGSTOP, which
the kernel takes out of every signalfd's mask (no dump holds them).
Dropped: nothing.
"""
from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import struct

from engine import hookimpl
from engine.images.entries import file_entry
from engine.fds import claiming_fdinfo
from engine.images import ImageError

log = logging.getLogger("engine.plugins.signalfd")

LINK = "anon_inode:[signalfd]"
KNOWN_FLAGS = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
# The kernel deletes these from a signalfd's mask (fs/signalfd.c).
NEVER = (1 << (signal.SIGKILL - 1)) | (1 << (signal.SIGSTOP - 1))
SIGSET_SIZE = 8                          # the kernel's sigset_t on x86-64


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if link != LINK:
        return None
    from engine.images import fdinfo
    flags = claiming_fdinfo(ctx, task.pid, fd)["flags"] & ~os.O_CLOEXEC
    info = fdinfo.read(task.pid, fd)
    if "sigmask" not in info:
        raise ValueError(f"task {task.pid}: fd {fd} ({link}): fdinfo shows no sigmask")
    return file_entry("SIGNALFD", "sgfd", flags=flags, sigmask=info["sigmask"])


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    for file_id, entry in ctx.provided("files").items():
        if entry.HasField("sgfd"):
            _check(file_id, entry.sgfd)


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("sgfd"):
        return None
    from engine import libc
    sgfd = entry.sgfd
    fd = libc.syscall("signalfd4", -1, struct.pack("Q", sgfd.sigmask), SIGSET_SIZE, 0)
    if fd < 0:
        err = ctypes.get_errno()
        raise ImageError("files.img", f"SIGNALFD id {entry.id}: sigmask {sgfd.sigmask:#x}: "
                                      f"{os.strerror(err)}")
    status = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, (status & ~os.O_NONBLOCK) | (sgfd.flags & os.O_NONBLOCK))
    return fd


# --- helpers -----------------------------------------------------------------

def _check(file_id: int, sgfd) -> None:
    where = f"files.img: SIGNALFD id {file_id}"
    if sgfd.flags & ~KNOWN_FLAGS:
        raise ImageError(where, f"flags {sgfd.flags:#o} hold unknown bits "
                                f"{sgfd.flags & ~KNOWN_FLAGS:#o}")
    if sgfd.sigmask & NEVER:
        raise ImageError(where, f"sigmask {sgfd.sigmask:#x} holds SIGKILL or SIGSTOP, "
                                "which no signalfd's mask keeps")

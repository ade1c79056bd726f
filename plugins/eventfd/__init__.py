"""eventfd: event counters, their semaphore mode and status flags (criu/eventfd.c).

Dump: an fd whose link is ``anon_inode:[eventfd]`` becomes an EVENTFD file
entry (files.img body ``efd``): its f_flags (O_NONBLOCK is the one status
flag an eventfd takes), the counter (fdinfo ``eventfd-count``) and its
SIGIO owner (fown, filled by the files plugin). EFD_SEMAPHORE lives in the
eventfd itself, not in f_flags, and CRIU's image has no field for it
(CRIU 4.2 drops it): fdinfo's ``eventfd-semaphore`` is kept in bit 0 of
``flags`` (EFD_SEMAPHORE's own value), which is O_WRONLY and so never set
in an eventfd's f_flags (always O_RDWR). CRIU restoring such an image sets
the flags with F_SETFL, which ignores that bit: it gets a plain counter.

Restore: eventfd2(0, EFD_NONBLOCK [| EFD_SEMAPHORE]), then one write(2) of
the counter (CRIU passes the counter to eventfd(), whose initval is an
unsigned int: a counter past 2^32 would be cut), then F_SETFL back to the
dumped O_NONBLOCK. Close-on-exec is the fd table's (the files plugin).

Refused at collect (files.img, naming the field): a counter of 2^64-1 (the
kernel's largest is 0xfffffffffffffffe: write(2) refuses more), flag bits
other than O_RDWR, O_NONBLOCK, O_CLOEXEC and the semaphore bit.
Dropped: the eventfd's id (``eventfd-id``), a number the kernel hands out.
Tasks blocked in read(2) or write(2) on it are restarted by the core plugin
like any interrupted syscall.
"""
from __future__ import annotations

import fcntl
import logging
import os

from engine import hookimpl
from engine.images.entries import file_entry
from engine.fds import claiming_fdinfo
from engine.images import ImageError

log = logging.getLogger("engine.plugins.eventfd")

LINK = "anon_inode:[eventfd]"
EFD_SEMAPHORE = 1
MAX_COUNTER = 0xFFFFFFFFFFFFFFFE        # ULLONG_MAX - 1 (fs/eventfd.c)
# f_flags an eventfd can hold (O_RDWR always), plus the semaphore bit.
KNOWN_FLAGS = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | EFD_SEMAPHORE


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if link != LINK:
        return None
    from engine.images import fdinfo
    flags = claiming_fdinfo(ctx, task.pid, fd)["flags"] & ~os.O_CLOEXEC
    info = fdinfo.read(task.pid, fd)
    if "eventfd-count" not in info:
        raise ValueError(f"task {task.pid}: fd {fd} ({link}): fdinfo shows no eventfd-count")
    if info.get("eventfd-semaphore"):
        flags |= EFD_SEMAPHORE
    return file_entry("EVENTFD", "efd", flags=flags, counter=info["eventfd-count"])


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    for file_id, entry in ctx.provided("files").items():
        if entry.HasField("efd"):
            _check(file_id, entry.efd)


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("efd"):
        return None
    efd = entry.efd
    fd = os.eventfd(0, os.EFD_NONBLOCK | (efd.flags & EFD_SEMAPHORE))
    try:
        if efd.counter:
            os.eventfd_write(fd, efd.counter)
        status = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (status & ~os.O_NONBLOCK) | (efd.flags & os.O_NONBLOCK))
    except OSError as e:
        os.close(fd)
        raise ImageError("files.img", f"EVENTFD id {entry.id}: counter {efd.counter:#x}: "
                                      f"{e.strerror}") from None
    return fd


# --- helpers -----------------------------------------------------------------

def _check(file_id: int, efd) -> None:
    where = f"files.img: EVENTFD id {file_id}"
    if efd.counter > MAX_COUNTER:
        raise ImageError(where, f"counter {efd.counter:#x} is over the largest an eventfd "
                                f"holds ({MAX_COUNTER:#x})")
    if efd.flags & ~KNOWN_FLAGS:
        raise ImageError(where, f"flags {efd.flags:#o} hold unknown bits "
                                f"{efd.flags & ~KNOWN_FLAGS:#o}")

"""timerfd: timers read through an fd (criu/timerfd.c, criu/pie/restorer.c timerfd_arm).

Dump: an fd whose link is ``anon_inode:[timerfd]`` becomes a TIMERFD file
entry (files.img body ``tfd``) from its fdinfo: ``clockid`` (REALTIME,
MONOTONIC, BOOTTIME, REALTIME_ALARM, BOOTTIME_ALARM), ``settime flags``
(TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET), ``it_value`` (the time left,
relative even for an absolute timer), ``it_interval``, ``ticks`` (the
expirations not yet read) and its f_flags (O_NONBLOCK) and SIGIO owner.

An expired periodic timer is not re-armed by the kernel until it is read
(fs/timerfd.c counts the periods missed meanwhile at read time): fdinfo
shows ticks 1 and no time left, however many periods went by, and CRIU,
restoring that, gets a disarmed timer with one tick. So for such a timer
the dump reads the count from a copy of the fd (read(2): the real count,
and the timer re-armed at its next period, as the task's own next read
would) and puts it back at once with TFD_IOC_SET_TICKS: the task keeps the
same count pending, and fdinfo then shows it and the time to the next
period. A timer with TFD_TIMER_CANCEL_ON_SET is not read (a read would
consume the notice of a clock change); restore re-arms one such, expired,
one interval later.

Restore: timerfd_create(clockid, 0) (the ALARM clocks need CAP_WAKE_ALARM,
which root has), timerfd_settime(settime_flags, the time left, the
interval), then TFD_IOC_SET_TICKS for the unread expirations, as CRIU; then
F_SETFL back to the dumped O_NONBLOCK; close-on-exec is the fd table's.
CRIU arms its timerfds last, in the restorer, lest one expire before the
task's signal handlers are back; here they are armed with the fd table:
an expiration only counts a tick (a timerfd has no fasync, so no SIGIO).
Time between dump and restore does not count, as in CRIU: a relative timer
is re-armed with the time left as dumped, and an absolute one
(TFD_TIMER_ABSTIME) at the clock's now plus the time left as dumped (CRIU
adds the seconds only; the nanoseconds are added here too), so its
deadline moves by the time the tree spent dumped, and no expiration is
counted for that time.

Refused at collect (files.img, naming the field): a clock not one of the
five, settime flags other than the two, f_flags other than O_RDWR,
O_NONBLOCK and O_CLOEXEC, nanoseconds of a second or more, seconds past
the kernel's largest time (KTIME_SEC_MAX).
Dropped: a clock change a CANCEL_ON_SET timer has seen but not yet
reported (no fdinfo line shows it; its read gets ECANCELED before the dump,
the count after the restore).
"""
from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import select
import struct
import time

from engine import hookimpl
from engine.images.entries import file_entry
from engine.fds import claiming_fdinfo, pidfd_getfd
from engine.images import ImageError

log = logging.getLogger("engine.plugins.timerfd")

LINK = "anon_inode:[timerfd]"
CLOCKS = {0: "REALTIME", 1: "MONOTONIC", 7: "BOOTTIME", 8: "REALTIME_ALARM",
          9: "BOOTTIME_ALARM"}
TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET = 1, 2
SETTIME_FLAGS = TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET
KNOWN_FLAGS = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
TFD_IOC_SET_TICKS = 0x40085400          # _IOW('T', 0, u64)
NSEC = 1_000_000_000
KTIME_SEC_MAX = ((1 << 63) - 1) // NSEC


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if link != LINK:
        return None
    from engine.images import fdinfo
    flags = claiming_fdinfo(ctx, task.pid, fd)["flags"] & ~os.O_CLOEXEC
    info = fdinfo.read(task.pid, fd)
    if not {"clockid", "ticks", "settime flags", "it_value", "it_interval"} <= info.keys():
        raise ValueError(f"task {task.pid}: fd {fd} ({link}): fdinfo lacks timerfd lines")
    if _expired_periodic(info) and not info["settime flags"] & TFD_TIMER_CANCEL_ON_SET:
        _count_missed_periods(task.pid, fd)
        info = fdinfo.read(task.pid, fd)
    (vsec, vnsec), (isec, insec) = info["it_value"], info["it_interval"]
    return file_entry("TIMERFD", "tfd", flags=flags, clockid=info["clockid"],
                      ticks=info["ticks"], settime_flags=info["settime flags"],
                      vsec=vsec, vnsec=vnsec, isec=isec, insec=insec)


def _expired_periodic(info: dict) -> bool:
    return info["ticks"] > 0 and info["it_value"] == (0, 0) and info["it_interval"] != (0, 0)


def _count_missed_periods(pid: int, fd: int) -> None:
    """read(2) the real count through a copy of the fd and set it back."""
    copy = pidfd_getfd(pid, fd)
    try:
        poller = select.poll()
        poller.register(copy, select.POLLIN)
        if not poller.poll(0):       # nothing to read after all: never block
            return
        (ticks,) = struct.unpack("Q", os.read(copy, 8))
        fcntl.ioctl(copy, TFD_IOC_SET_TICKS, struct.pack("Q", ticks))
        log.debug("task %d: fd %d: %d expirations pending", pid, fd, ticks)
    finally:
        os.close(copy)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    for file_id, entry in ctx.provided("files").items():
        if entry.HasField("tfd"):
            _check(file_id, entry.tfd)


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("tfd"):
        return None
    from engine import libc
    t = entry.tfd
    where = f"TIMERFD id {entry.id} (clock {CLOCKS[t.clockid]})"
    fd = libc.syscall("timerfd_create", t.clockid, 0)
    if fd < 0:
        raise ImageError("files.img", f"{where}: {os.strerror(ctypes.get_errno())}")
    try:
        value = _value_to_set(t)
        spec = struct.pack("qqqq", t.isec, t.insec, value // NSEC, value % NSEC)
        if libc.syscall("timerfd_settime", fd, t.settime_flags, spec, None) < 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime")
        if t.ticks:
            fcntl.ioctl(fd, TFD_IOC_SET_TICKS, struct.pack("Q", t.ticks))
        status = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (status & ~os.O_NONBLOCK) | (t.flags & os.O_NONBLOCK))
    except OSError as e:
        os.close(fd)
        raise ImageError("files.img", f"{where}: {os.strerror(e.errno)}") from None
    return fd


def _value_to_set(t) -> int:
    """it_value for timerfd_settime, in ns: the time left as dumped (one
    interval for an expired periodic timer the dump did not re-arm), from
    the clock's now for an absolute timer; 0 (disarmed) stays 0."""
    left = t.vsec * NSEC + t.vnsec
    if not left and t.ticks and (t.isec or t.insec):
        left = t.isec * NSEC + t.insec
    if left and t.settime_flags & TFD_TIMER_ABSTIME:
        left += time.clock_gettime_ns(t.clockid)
    return left


# --- helpers -----------------------------------------------------------------

def _check(file_id: int, t) -> None:
    where = f"files.img: TIMERFD id {file_id}"
    if t.clockid not in CLOCKS:
        raise ImageError(where, f"clockid {t.clockid} is not one of "
                                f"{', '.join(f'{n} ({c})' for c, n in CLOCKS.items())}")
    if t.settime_flags & ~SETTIME_FLAGS:
        raise ImageError(where, f"settime_flags {t.settime_flags:#x} hold unknown bits "
                                f"{t.settime_flags & ~SETTIME_FLAGS:#x}")
    if t.flags & ~KNOWN_FLAGS:
        raise ImageError(where, f"flags {t.flags:#o} hold unknown bits "
                                f"{t.flags & ~KNOWN_FLAGS:#o}")
    for name in ("vnsec", "insec"):
        if getattr(t, name) >= NSEC:
            raise ImageError(where, f"{name} {getattr(t, name)} is not under a second")
    for name in ("vsec", "isec"):
        if getattr(t, name) > KTIME_SEC_MAX:
            raise ImageError(where, f"{name} {getattr(t, name)} is over the largest "
                                    f"time the kernel keeps ({KTIME_SEC_MAX} s)")

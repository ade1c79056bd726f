"""timers: a task's interval timers and POSIX timers (tc.timers of core-PID.img).

Dump: core writes ITIMER_REAL, _VIRTUAL and _PROF (interval and value, as
getitimer gives them) and every timer_create() timer (id, clock, signal,
sigev_notify, the thread it signals, interval, value, overrun).
Restore, in the tracer, in the task's leader, last of the task's own state
(after the `task-state` of every other plugin, so the timers count from
there) and after its threads exist (a SIGEV_THREAD_ID timer names one):
setitimer for each armed interval timer; timer_create with each dumped id
(PR_TIMER_CREATE_RESTORE_IDS, Linux 6.17: the kernel takes the id from
*timerid), then timer_settime for the armed ones. Every signal is blocked
until release (plugin threads), so what a timer sends meanwhile stays
pending.
Refused before anything starts: what setitimer or timer_create would
refuse (a value out of range, a clock or sigev_notify not supported, no
signal, a thread that is not the task's), naming the entry.
Disabled (--disable timers): its fallback refuses a set whose tasks hold
an armed interval timer or any POSIX timer, naming the resource; a set
without timers restores as before.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError

PR_TIMER_CREATE_RESTORE_IDS = 77
ITIMER_NAMES = ("real", "virt", "prof")    # task_timers_entry, in ITIMER_* order
SIGEV_NOTIFY = (0, 1, 4)                   # SIGNAL, NONE, THREAD_ID (SIGEV_THREAD is libc's)
SIGEV_NONE = 1
CLOCKS = range(12)                         # CLOCK_REALTIME .. CLOCK_TAI
SIGEVENT_SIZE = 64
MAX_SIGNAL = 64
USEC, NSEC = 1_000_000, 1_000_000_000


class TaskTimers(NamedTuple):
    itimers: list                        # (interval s, us, value s, us) per ITIMER_*
    posix: list                          # engine.tracer.model.PosixTimer


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    for task in ctx.provided("tasks").alive:
        data = task_timers(ctx.read_one("core", id=task.pid), f"core-{task.pid}.img",
                           task.threads or [task.pid])
        if any(map(any, data.itimers)) or data.posix:
            graph.add(Node(key=f"timers:{task.pid}", plugin="timers", pid=task.pid, data=data,
                           label=f"timers of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine.tracer import task_batch
    d: TaskTimers = node.data
    bt = task_batch(ctx.tracees[node.pid])
    for which, timer in enumerate(d.itimers):
        if any(timer):
            bt.call("setitimer", which, struct.pack("<4q", *timer), 0, what=f"itimer {which}")
    if d.posix:
        _posix_timers(bt, d.posix)
    bt.run()
    return True


def task_timers(core, image: str, tids) -> TaskTimers:
    """The timers of the task whose leader's core image is `core`, checked."""
    return TaskTimers(_itimers(core, image), _posix(core, image, tids))


# --- helpers -----------------------------------------------------------------

def _posix_timers(bt, timers) -> None:
    """timer_create with each dumped id, then timer_settime."""
    bt.call("prctl", PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, what="PR_TIMER_CREATE_RESTORE_IDS")
    for pt in timers:
        # struct sigevent: sigev_value, sigev_signo, sigev_notify, _tid; 64 bytes
        event = struct.pack("<Qiii", pt.sival_ptr, pt.signo, pt.notify, pt.notify_tid)
        bt.call("timer_create", pt.clock_id, event.ljust(SIGEVENT_SIZE, b"\0"),
                struct.pack("<i", pt.it_id), what=f"posix timer {pt.it_id}")
        if any(pt.value):
            bt.call("timer_settime", pt.it_id, 0, struct.pack("<4q", *pt.interval, *pt.value), 0,
                    what=f"posix timer {pt.it_id}")
    bt.call("prctl", PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, what="PR_TIMER_CREATE_RESTORE_IDS")


def _itimers(core, image: str) -> list[tuple[int, int, int, int]]:
    """tc.timers as (interval s, us, value s, us) per ITIMER_*; [] when absent."""
    if not core.tc.HasField("timers"):
        return []
    out = []
    for name in ITIMER_NAMES:
        e = getattr(core.tc.timers, name)
        for field in ("isec", "iusec", "vsec", "vusec"):
            value = getattr(e, field)
            if value >= (USEC if field.endswith("usec") else 1 << 63):
                raise ImageError(image, f"tc.timers.{name}.{field} {value} is out of range")
        out.append((e.isec, e.iusec, e.vsec, e.vusec))
    return out


def _posix(core, image: str, tids) -> list:
    """tc.timers.posix, checked: what timer_create would refuse is refused
    now, before anything starts, naming the entry."""
    from engine.tracer import model as m
    if not core.tc.HasField("timers"):
        return []
    out = []
    for i, e in enumerate(core.tc.timers.posix):
        where = f"tc.timers.posix[{i}]"
        if e.it_id >= 1 << 31:
            raise ImageError(image, f"{where}: it_id {e.it_id} is out of range")
        if e.clock_id not in CLOCKS:
            raise ImageError(image, f"{where}: clock_id {e.clock_id} is not a supported clock")
        if e.it_sigev_notify not in SIGEV_NOTIFY:
            raise ImageError(image, f"{where}: it_sigev_notify {e.it_sigev_notify} "
                                    "is not supported")
        if e.si_signo > MAX_SIGNAL or (e.it_sigev_notify != SIGEV_NONE and not e.si_signo):
            raise ImageError(image, f"{where}: si_signo {e.si_signo} is not a signal")
        if e.insec >= NSEC or e.vnsec >= NSEC or max(e.isec, e.vsec) >> 63:
            raise ImageError(image, f"{where}: isec/insec/vsec/vnsec {e.isec}/{e.insec}/"
                                    f"{e.vsec}/{e.vnsec} are out of range")
        tid = e.notify_thread_id if e.it_sigev_notify & m.SIGEV_THREAD_ID else 0
        if e.it_sigev_notify & m.SIGEV_THREAD_ID and tid not in tids:
            raise ImageError(image, f"{where}: notify_thread_id {tid} is not a thread "
                                    "of the task")
        out.append(m.PosixTimer(e.it_id, e.clock_id, e.si_signo, e.it_sigev_notify,
                                e.sival_ptr, tid, (e.isec, e.insec), (e.vsec, e.vnsec),
                                e.overrun))
    return out

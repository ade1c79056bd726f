"""Restoring a forked task under ptrace: seize it, its memory
(engine/tracer/memory.py), its threads' existence, the syscalls plugins
add in batches, the registers last, and the release.

The forked task (a copy of the engine) closes what it does not keep and
waits (`wait_for_tracer`, engine/tracer/scratch.py); the engine seizes it
(`attach_stopped`) and swaps its address space in (`restore_memory`),
which leaves a scratch page the batches run from. What the task holds
besides (signal state, limits, credentials, timers, ...) is no business
of the tracer's: each plugin's tracer node adds it as syscalls, through

    tracee = ctx.tracees[pid]               # the leader, as attach_stopped made it
    for thread in task_threads(tracee):     # every thread, the leader last
        bt = task_batch(tracee, thread)     # syscalls run by that thread
        bt.call("prctl", ...)
        bt.run()                            # results; a failed checked call raises

Batches share the task's one scratch page: run one before queueing into
another. `clone_threads` makes the other threads with their dumped tids;
`set_registers` unmaps the scratch page and puts every thread's registers
and xstate (no batch after it); `release` lets all tasks go at once, each
with what the plugins left on its Tracee for then (the dumped sigmask, its
parent-death signal, a stop).
"""
from __future__ import annotations

import errno
import struct
import time

from engine import libc
from engine.tracer import binding as b
from engine.tracer import model as m
from engine.tracer.batch import Batch
from engine.tracer.memory import restore_memory  # noqa: F401 - API
from engine.tracer.scratch import (  # noqa: F401 - wait_for_tracer, prepare_forks: API
    PAGE, SCRATCH_PAGES, prepare_forks, scratch_batch, wait_for_tracer)
from engine.tracer.task import Tracee
from engine.tracer.xstate import to_xstate

# what pthread_create passes: one mm, fs, fd table and signal handlers
CLONE_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000
# ctx.spawn's tasks die with the engine until release (engine/executor.py)
SIGSTOP = 19
SYS_PAUSE = 34


def attach_stopped(pid: int, timeout: float = 10.0) -> Tracee:
    """Seize a task once it sits in pause()."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/syscall") as f:
                if f.read().startswith(f"{SYS_PAUSE} "):
                    break
        except OSError as e:
            raise b.TracerError(e.errno or errno.ESRCH, pid,
                                "waiting for the task to stop") from None
        if time.monotonic() > deadline:
            raise b.TracerError(errno.ETIME, pid, "waiting for the task to stop")
        time.sleep(0.0005)
    t = Tracee.seize(pid)
    t.syscall_at = t.saved.ip - 2        # pause()'s own `syscall` insn
    return t


# --- what plugins use ----------------------------------------------------------

def task_threads(t: Tracee) -> list[Tracee]:
    """Every thread of the task whose leader is `t`, the leader last (what
    is the whole process's comes last, after each thread's own)."""
    return t.others + [t]


def task_batch(t: Tracee, thread: Tracee | None = None) -> Batch:
    """A Batch of syscalls run by `thread` (the leader by default) from the
    task's scratch page: between restore_memory and set_registers only."""
    if t.scratch is None:
        raise b.TracerError(0, t.pid, "a batch outside the restore (no scratch page)")
    return scratch_batch(t if thread is None else thread, t.scratch)


def clone_threads(t: Tracee, tids, batch: Batch | None = None) -> None:
    """The task's other threads, made by clone3 with their dumped tids and
    held stopped before their first instruction (PTRACE_O_TRACECLONE);
    they share everything of the leader's but what each thread sets for
    itself, and get their registers in set_registers like the leader.
    The clones are queued after what the leader's `batch` holds and run
    with it (nothing is run when there is no other thread)."""
    tids = [tid for tid in tids if tid != t.pid]
    if not tids:
        return
    b.ptrace(b.PTRACE_SETOPTIONS, t.pid, 0, b.PTRACE_O_TRACECLONE, "PTRACE_SETOPTIONS")
    bt = task_batch(t) if batch is None else batch
    args = struct.pack("<11Q", CLONE_THREAD_FLAGS, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0)
    for tid in tids:
        # struct clone_args, its set_tid pointing at the tid just after it
        bt.call("clone3", lambda at, tid=tid: args[:64] + struct.pack("<Q", at + 88)
                + args[72:] + struct.pack("<i", tid), 88, what=f"thread {tid}")
    bt.run()
    for tid in tids:
        b.wait_stop(tid)
        new = Tracee(tid)
        new.saved, new.syscall_at = b.get_regs(tid), t.syscall_at
        t.others.append(new)


def set_registers(t: Tracee, threads: list[m.ThreadState]) -> None:
    """Last of a task's restore: the scratch page goes (through a `syscall`
    of the restored vdso), then every thread's registers and xstate."""
    by_tid = {th.tid: th for th in threads}
    missing = [x.pid for x in task_threads(t) if x.pid not in by_tid]
    if missing:
        raise b.TracerError(0, t.pid, f"no registers for thread {missing[0]}")
    t.syscall_at = t.vdso_syscall or t.find_syscall_in_vdso()
    t.checked("munmap", t.scratch, SCRATCH_PAGES * PAGE, what="scratch page")
    t.scratch = None
    for tracee in task_threads(t):
        th = by_tid[tracee.pid]
        regs = b.UserRegs()
        for name in m.REG_NAMES:
            setattr(regs, name, getattr(th.regs, name) & m.U64)
        regs.orig_ax = m.U64                   # no syscall restart on resume
        tracee.set_regs(regs)
        b.set_xstate(tracee.pid, to_xstate(th.fpregs))
        tracee.saved = None                    # detach must not put old registers back


def release(tracees, leave_stopped: bool = False) -> None:
    """Let every task (a leader Tracee each) run, or stop with
    `leave_stopped`, at once."""
    for t in tracees:
        # The parent-death signal ctx.spawn set gives way to the dumped one
        # (pdeath_signal, 0 unless a plugin set it) last of all: until the
        # release, an engine killed midway takes every task along. The
        # final registers go back after.
        final = t.regs()
        t.saved = None
        t.checked("prctl", libc.PR_SET_PDEATHSIG, t.pdeath_signal, 0, 0, 0,
                  what="parent-death signal")
        t.set_regs(final)
        for tracee in task_threads(t):   # nothing runs in the task after this
            if tracee.sigmask is not None:
                b.set_sigmask(tracee.pid, tracee.sigmask)
        t.detach(SIGSTOP if leave_stopped else t.release_signal)

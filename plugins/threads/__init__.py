"""threads: a task's threads, what each holds for itself, and its signal actions.

Dump: core writes it into core-TID.img (thread_core: sigmask, sigaltstack,
robust list, rseq, clear_tid address, name, signals queued to the thread;
tc: the sigactions, the signals queued to the whole process).
Restore, in the tracer, after the task's memory, and after every task's
pstree nodes (a child's exit must not signal a parent whose handlers are
already back):
- the 64 sigactions (criu/pie/restorer.c order), skipping those the forked
  task already holds as dumped;
- the other threads, cloned with their dumped tids (engine.tracer
  clone_threads): what is per thread (credentials, timers naming a
  thread) can only be set once they exist, so those plugins come after
  this resource, `threads`;
- in every thread, from inside it: every signal blocked until release
  (then the dumped mask), so the signals queued now and those restored
  timers send stay pending with their siginfo instead of stopping a batch;
  sigaltstack, set_tid_address, name, robust list, rseq, and the signals
  queued to it; then, in the leader, those queued to the whole process.
Refused before anything starts: a sigaction table of another length than
62 (CRIU's: no SIGKILL, SIGSTOP) or 64, a queued siginfo not 128 bytes.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError

SIGKILL, SIGSTOP = 9, 19
SIGINFO_SIZE = 128
ALL_SIGNALS = (1 << 64) - 1         # the kernel leaves SIGKILL and SIGSTOP out


class TaskThreads(NamedTuple):
    threads: list                        # engine.tracer.model.ThreadState, registers unset
    sigactions: list                     # model.SigAction; index 0 is signal 1
    shared_signals: list                 # siginfo queued to the whole process


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    for task in ctx.provided("tasks").alive:
        threads = []
        for tid in task.threads or [task.pid]:   # pstree checked the task is one of them
            threads.append(_thread(ctx.read_one("core", id=tid), tid, f"core-{tid}.img"))
        image, core = f"core-{task.pid}.img", ctx.read_one("core", id=task.pid)
        data = TaskThreads(threads, _sigactions(core, image),
                           _siginfos(core.tc.signals_s, image, "tc.signals_s"))
        graph.add(Node(key=f"threads:{task.pid}", plugin="threads", pid=task.pid, data=data,
                       label=f"threads and signals of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    d: TaskThreads = node.data
    restore_threads(ctx.tracees[node.pid], d.sigactions, d.threads, d.shared_signals)
    return True


def restore_threads(t, sigactions, threads, shared_signals=()) -> None:
    """Into the seized task `t` (its memory restored): sigactions, the other
    threads, each thread's own state, the signals queued to the process.
    `threads` are engine.tracer.model.ThreadState, the leader among them."""
    from engine.tracer import TracerError, clone_threads, task_batch, task_threads
    by_tid = {th.tid: th for th in threads}
    if t.pid not in by_tid:
        raise TracerError(0, t.pid, "the thread list lacks the task itself")
    bt = task_batch(t)
    _sigactions_into(bt, sigactions)
    clone_threads(t, [th.tid for th in threads], bt)
    for thread in task_threads(t):
        tb = bt if thread is t else task_batch(t, thread)
        _thread_state_into(tb, t.pid, by_tid[thread.pid])
        if thread is t:
            for info in shared_signals:
                sig = struct.unpack_from("<i", info)[0]
                tb.call("rt_sigqueueinfo", t.pid, sig, info, what=f"signal {sig}")
        tb.run()


# --- helpers -----------------------------------------------------------------

def _sigactions_into(bt, sigactions) -> None:
    from engine.tracer import model as m
    from engine.tracer.proc import proc_status
    untouched = _untouched_signals(proc_status(bt.t.pid))
    no_action = m.SigAction()
    for sig, sa in enumerate(sigactions, 1):
        if sig in (SIGKILL, SIGSTOP) or (sa == no_action and sig in untouched):
            continue
        bt.call("rt_sigaction", sig, struct.pack("<4Q", sa.sigaction, sa.flags, sa.restorer,
                                                 sa.mask), 0, 8, what=f"signal {sig}")


def _untouched_signals(status: dict[str, list[str]]) -> set[int]:
    """Signals whose action in the forked task is all-zero, so an all-zero
    image entry needs no syscall. The task's handler comes from the kernel
    (SigCgt/SigIgn: faulthandler's C handlers are invisible to
    signal.getsignal); flags and mask, which it inherited from the engine,
    from the engine's own rt_sigaction. SIGCHLD is always set: its flags
    (SA_NOCLDWAIT) matter even under SIG_DFL."""
    from engine.tracer.scratch import engine_zero_actions
    caught = int(status["SigCgt"][0], 16) | int(status["SigIgn"][0], 16)
    return {sig for sig in engine_zero_actions() if not caught >> (sig - 1) & 1}


def _thread_state_into(tb, tgid: int, th) -> None:
    """What each thread holds for itself, set from inside that thread."""
    from engine import libc
    from engine.tracer import binding as b
    # Every signal blocked until release (then the dumped mask): queued ones
    # and those the restored timers send stay pending with their siginfo,
    # instead of stopping a batch and being sent again without it.
    b.set_sigmask(tb.t.pid, ALL_SIGNALS)
    tb.t.sigmask = th.blk_sigset
    tb.call("sigaltstack", struct.pack("<Qi4xQ", th.ss_sp, th.ss_flags, th.ss_size), 0,
            what="restore")
    tb.call("set_tid_address", th.clear_tid_addr)
    if th.comm:
        tb.call("prctl", libc.PR_SET_NAME, th.comm.encode()[:15] + b"\0", 0, 0, 0,
                what="PR_SET_NAME")
    if th.futex_rla_len:
        tb.call("set_robust_list", th.futex_rla, th.futex_rla_len)
    if th.rseq_abi_pointer:
        tb.call("rseq", th.rseq_abi_pointer, th.rseq_abi_size, 0, th.rseq_signature,
                what="register")
    for info in th.signals_p:
        sig = struct.unpack_from("<i", info)[0]
        tb.call("rt_tgsigqueueinfo", tgid, tb.t.pid, sig, info, what=f"signal {sig}")


def _thread(core, tid: int, image: str):
    """A thread's own state from its core image (its registers are core's)."""
    from engine.tracer import model as m
    tc = core.thread_core
    th = m.ThreadState(tid=tid, regs=m.Regs(), fpregs=m.FpRegs(),
                       clear_tid_addr=core.thread_info.clear_tid_addr,
                       futex_rla=tc.futex_rla, futex_rla_len=tc.futex_rla_len)
    # The sigmask lives in thread_core (per thread) or, in older images, tc.
    th.blk_sigset = tc.blk_sigset if tc.HasField("blk_sigset") else core.tc.blk_sigset
    if tc.HasField("sas"):
        th.ss_sp, th.ss_size, th.ss_flags = tc.sas.ss_sp, tc.sas.ss_size, tc.sas.ss_flags
    if tc.HasField("rseq_entry"):
        r = tc.rseq_entry
        th.rseq_abi_pointer, th.rseq_abi_size = r.rseq_abi_pointer, r.rseq_abi_size
        th.rseq_signature = r.signature
    th.comm = tc.comm or core.tc.comm
    th.signals_p = _siginfos(tc.signals_p, image, "thread_core.signals_p")
    return th


def _siginfos(queue, image: str, field: str) -> list[bytes]:
    out = []
    for i, s in enumerate(queue.signals):
        if len(s.siginfo) != SIGINFO_SIZE:
            raise ImageError(image, f"{field}[{i}]: siginfo of {len(s.siginfo)} bytes, "
                                    f"want {SIGINFO_SIZE}")
        out.append(bytes(s.siginfo))
    return out


def _sigactions(core, image: str) -> list:
    from engine.tracer import model as m
    sas = core.tc.sigactions
    if len(sas) not in (0, 62, 64):
        raise ImageError(image, f"tc.sigactions has {len(sas)} entries, want 64 or 62")
    out = [m.SigAction(sa.sigaction, sa.flags, sa.restorer, sa.mask) for sa in sas]
    if len(out) == 62:
        # CRIU skips SIGKILL and SIGSTOP (criu/cr-dump.c dump_sigact).
        out.insert(SIGKILL - 1, m.SigAction())
        out.insert(SIGSTOP - 1, m.SigAction())
    return out + [m.SigAction()] * (64 - len(out))

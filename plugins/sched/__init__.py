"""sched: each thread's scheduling: policy (with SCHED_RESET_ON_FORK), RT
priority, nice, CPU affinity and timer slack.

Dump: into each thread's core-TID.img (core wrote it first: this plugin is
listed after core in hooks.toml), CRIU's thread_core.sched_policy,
sched_prio and sched_nice (criu/cr-dump.c dump_sched_info: the policy as
sched_getscheduler gives it, the reset-on-fork flag included), and two
engine extensions CRIU has no field for: thread_core.timerslack_ns (1001)
and thread_core.cpu_affinity (1002, 64 CPUs a word). Refused at dump:
SCHED_DEADLINE (its runtime, deadline and period have no field), a
timer slack of 0 in a thread that is not real-time (PR_SET_TIMERSLACK 0
means the default: no call sets 0).
Restore, in the tracer, after the task's threads exist (each clone took its
leader's, which are the engine's): the timer slack by the thread itself
(PR_SET_TIMERSLACK in a batch: another's takes CAP_SYS_NICE), then from
the engine by thread id setpriority, sched_setaffinity and last
sched_setscheduler (a real-time thread ignores its slack, so the slack
goes first); so the privilege used is the engine's whatever credentials
the task gets back. Only what differs from the thread's own value is set. An image without the extensions (CRIU's)
leaves affinity and timer slack as the engine's.
Refused before anything starts, naming image and field: a policy Linux does
not have, SCHED_DEADLINE, an RT priority outside 1..99 (or not 0 for the
other policies), a nice outside -20..19, a timer slack of 0 (not real-time)
or past 2^63, an affinity with no CPU of this machine; and, naming what
the engine lacks, a real-time policy or a nice below the engine's without
CAP_SYS_NICE (or the RLIMIT_RTPRIO / RLIMIT_NICE that allow it). CPUs this
machine lacks are left out of an affinity that has others, with a warning.
Essential: disabling it would hand the engine's values to every thread
without a word.
"""
from __future__ import annotations

import errno
import logging
import os
from typing import NamedTuple

from engine import hookimpl
from engine.errors import RestoreError
from engine.graph import Node
from engine.images import ImageError

log = logging.getLogger("engine.plugins.sched")

SCHED_OTHER, SCHED_FIFO, SCHED_RR, SCHED_BATCH, SCHED_IDLE, SCHED_DEADLINE = 0, 1, 2, 3, 5, 6
SCHED_RESET_ON_FORK = 0x40000000
POLICY_NAMES = {SCHED_OTHER: "SCHED_OTHER", SCHED_FIFO: "SCHED_FIFO", SCHED_RR: "SCHED_RR",
                SCHED_BATCH: "SCHED_BATCH", SCHED_IDLE: "SCHED_IDLE"}
REAL_TIME = (SCHED_FIFO, SCHED_RR)
RT_PRIO_MAX = 99
NICE_MIN, NICE_MAX = -20, 19
SLACK_MAX = 1 << 63                     # PR_SET_TIMERSLACK takes a signed long
CAP_SYS_NICE = 23
PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30
WORD = 64


class Sched(NamedTuple):
    """One thread's scheduling as dumped (None: not in the image)."""
    policy: int | None                  # with SCHED_RESET_ON_FORK
    prio: int
    nice: int | None
    slack: int | None
    cpus: frozenset | None


# --- dump ------------------------------------------------------------------

@hookimpl
def engine_dump_task(ctx, task):
    if task.zombie is not None:
        return
    tracees = {t.pid: t for t in [task.tracee] + task.tracee.others}
    for tid in [t.tid for t in task.state.threads] or [task.pid]:
        # Asked by the thread: /proc/TID/timerslack_ns takes CAP_SYS_NICE.
        slack = tracees[tid].checked("prctl", PR_GET_TIMERSLACK, 0, 0, 0, 0,
                                     what="PR_GET_TIMERSLACK")
        now = _thread_sched(tid, slack)
        who = task.pid if tid == task.pid else f"{task.pid} (thread {tid})"
        policy = now.policy & ~SCHED_RESET_ON_FORK
        if policy == SCHED_DEADLINE:
            raise ValueError(f"task {who}: SCHED_DEADLINE: its runtime, deadline and period "
                             "have no field in the image")
        if now.slack == 0 and policy not in REAL_TIME:
            raise ValueError(f"task {who}: timer slack 0 in a thread that is not real-time: "
                             "no call sets it (PR_SET_TIMERSLACK 0 means the default)")
        core = ctx.images.read_one("core", id=tid)
        tc = core.thread_core
        tc.sched_policy, tc.sched_prio, tc.sched_nice = now.policy, now.prio, now.nice
        tc.timerslack_ns = now.slack
        del tc.cpu_affinity[:]
        tc.cpu_affinity.extend(_words(now.cpus))
        ctx.images.write("core", [core], id=tid)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from engine import libc
    engine = _thread_sched(os.getpid(), libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0))
    possible = _cpu_list("/sys/devices/system/cpu/possible")
    for task in ctx.provided("tasks").alive:
        threads = {}
        for tid in task.threads or [task.pid]:
            image = f"core-{tid}.img"
            want = _checked(ctx.read_one("core", id=tid).thread_core, image, possible)
            _check_privilege(want, engine, image)
            # each clone took its leader's timer slack, the engine's
            want = want._replace(slack=None if want.slack == engine.slack else want.slack)
            if any(v is not None and v != ours for v, ours in zip(want, engine)):
                threads[tid] = want
        if threads:
            graph.add(Node(key=f"sched:{task.pid}", plugin="sched", pid=task.pid,
                           data=threads, label=f"scheduling of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine.tracer import task_batch, task_threads
    leader = ctx.tracees[node.pid]
    for thread in task_threads(leader):
        want = node.data.get(thread.pid)
        if want is None or want.slack is None:
            continue
        # By the thread itself (another's takes CAP_SYS_NICE), before any
        # real-time policy, under which the kernel ignores it.
        bt = task_batch(leader, thread)
        bt.call("prctl", PR_SET_TIMERSLACK, want.slack, 0, 0, 0, what="PR_SET_TIMERSLACK")
        bt.run()
    for tid, want in node.data.items():
        try:
            _set_thread(tid, want)
        except OSError as e:
            raise RestoreError(f"task {node.pid} (thread {tid}): scheduling "
                               f"{_describe(want)}: {os.strerror(e.errno)} "
                               f"({errno.errorcode.get(e.errno, e.errno)})") from None
    return True


# --- helpers -----------------------------------------------------------------

def _thread_sched(tid: int, slack: int | None) -> Sched:
    return Sched(policy=os.sched_getscheduler(tid), prio=os.sched_getparam(tid).sched_priority,
                 nice=os.getpriority(os.PRIO_PROCESS, tid), slack=slack,
                 cpus=frozenset(os.sched_getaffinity(tid)))


def _set_thread(tid: int, want: Sched) -> None:
    """From the engine, by thread id, each value that differs; the policy
    last."""
    now = _thread_sched(tid, None)
    if want.nice is not None and want.nice != now.nice:
        os.setpriority(os.PRIO_PROCESS, tid, want.nice)
    if want.cpus is not None and want.cpus != now.cpus:
        os.sched_setaffinity(tid, want.cpus)
    if want.policy is not None and (want.policy, want.prio) != (now.policy, now.prio):
        os.sched_setscheduler(tid, want.policy, os.sched_param(want.prio))


def _checked(tc, image: str, possible: frozenset) -> Sched:
    """The thread's values from its thread_core, each checked as the kernel
    would (a hostile image is refused before anything starts)."""
    policy = tc.sched_policy if tc.HasField("sched_policy") else None
    prio = tc.sched_prio
    base = None if policy is None else policy & ~SCHED_RESET_ON_FORK
    if base == SCHED_DEADLINE:
        raise ImageError(image, "thread_core.sched_policy 6: SCHED_DEADLINE without its "
                                "runtime, deadline and period")
    if base is not None and base not in POLICY_NAMES:
        raise ImageError(image, f"thread_core.sched_policy {policy:#x}: not a scheduling "
                                "policy of Linux")
    if base in REAL_TIME and not 1 <= prio <= RT_PRIO_MAX:
        raise ImageError(image, f"thread_core.sched_prio {prio}: outside 1..{RT_PRIO_MAX} "
                                f"for {POLICY_NAMES[base]}")
    if base not in REAL_TIME and prio != 0:
        raise ImageError(image, f"thread_core.sched_prio {prio}: not 0 for a policy that "
                                "is not real-time")
    nice = tc.sched_nice if tc.HasField("sched_nice") else None
    if nice is not None and not NICE_MIN <= nice <= NICE_MAX:
        raise ImageError(image, f"thread_core.sched_nice {nice}: outside {NICE_MIN}..{NICE_MAX}")
    slack = tc.timerslack_ns if tc.HasField("timerslack_ns") else None
    if slack is not None and (slack >= SLACK_MAX or slack == 0 and base not in REAL_TIME):
        raise ImageError(image, f"thread_core.timerslack_ns {slack}: no call sets it")
    if base in REAL_TIME:
        slack = None                    # the kernel keeps 0 for a real-time thread
    cpus = _cpus(tc.cpu_affinity) if len(tc.cpu_affinity) else None
    if cpus is not None:
        if not cpus & possible:
            raise ImageError(image, f"thread_core.cpu_affinity {_ranges(cpus)}: no CPU of "
                                    f"this machine ({_ranges(possible)})")
        if cpus - possible:
            log.warning("%s: thread_core.cpu_affinity %s: CPUs %s are not on this machine, "
                        "left out", image, _ranges(cpus), _ranges(cpus - possible))
            cpus = cpus & possible
    return Sched(policy=policy, prio=prio, nice=nice, slack=slack, cpus=cpus)


def _check_privilege(want: Sched, engine: Sched, image: str) -> None:
    """A real-time policy, or a nice below the engine's, takes CAP_SYS_NICE
    or the resource limit that allows it (sched(7))."""
    import resource

    from engine import ns
    if ns.effective_caps() >> CAP_SYS_NICE & 1:
        return
    base = None if want.policy is None else want.policy & ~SCHED_RESET_ON_FORK
    if base in REAL_TIME and want.prio > resource.getrlimit(resource.RLIMIT_RTPRIO)[0]:
        raise RestoreError(f"{image}: thread_core.sched_policy {POLICY_NAMES[base]} priority "
                           f"{want.prio}: setting it takes CAP_SYS_NICE, which the engine lacks")
    if want.nice is not None and want.nice < engine.nice \
            and want.nice < 20 - resource.getrlimit(resource.RLIMIT_NICE)[0]:
        raise RestoreError(f"{image}: thread_core.sched_nice {want.nice}: lowering it below "
                           f"the engine's {engine.nice} takes CAP_SYS_NICE, which the engine "
                           "lacks")


def _describe(want: Sched) -> str:
    base = want.policy & ~SCHED_RESET_ON_FORK if want.policy is not None else None
    parts = [] if base is None else [POLICY_NAMES.get(base, str(base))]
    if base in REAL_TIME:
        parts.append(f"priority {want.prio}")
    if want.nice is not None:
        parts.append(f"nice {want.nice}")
    if want.cpus is not None:
        parts.append(f"CPUs {_ranges(want.cpus)}")
    return ", ".join(parts)


def _words(cpus) -> list[int]:
    words = [0] * (max(cpus, default=-1) // WORD + 1)
    for cpu in cpus:
        words[cpu // WORD] |= 1 << cpu % WORD
    return words


def _cpus(words) -> frozenset:
    return frozenset(w * WORD + bit for w, word in enumerate(words)
                     for bit in range(WORD) if word >> bit & 1)


def _cpu_list(path: str) -> frozenset:
    """A kernel CPU list ("0-3,8") as a set."""
    with open(path) as f:
        text = f.read().strip()
    out = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


def _ranges(cpus) -> str:
    """A set of CPUs as the kernel lists them ("0-3,8")."""
    out, run = [], []
    for cpu in sorted(cpus):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [cpu]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out) or "none"

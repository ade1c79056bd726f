"""mmflags: flags of a task's whole address space: its coredump filter,
transparent huge pages disabled (PR_SET_THP_DISABLE) and dumpable
(PR_SET_DUMPABLE).

Dump: into mm-PID.img (mem wrote it first: this plugin is listed after mem
in hooks.toml), CRIU's mm_entry.dumpable and thp_disabled (asked by the
task itself: prctl PR_GET_DUMPABLE, PR_GET_THP_DISABLE, as criu/pie
parasite.c dump_misc does), and two engine extensions CRIU has no field
for: mm_entry.coredump_filter (1001, from /proc/PID/coredump_filter) and
thp_disable_flags (1002: PR_THP_DISABLE_EXCEPT_ADVISED, beside
thp_disabled).
Restore, in the tracer, after the task's threads and its credentials (a
change of uid resets dumpable, as the kernel does on exec of a setuid
program): the engine writes /proc/PID/coredump_filter; the task's leader
runs prctl PR_SET_THP_DISABLE and PR_SET_DUMPABLE in one batch. Each only
when it differs from what the task holds: the engine's (a fork inherits
its mm's flags), and for dumpable what the kernel made of it when the
credentials came back. An image without a field (CRIU's has no coredump
filter) leaves the engine's.
Refused before anything starts, naming image and field: dumpable 0 or 2 when
the engine lacks CAP_SYS_PTRACE (the batches after it, the registers', need
the access a task that is not dumpable gives only with it), a coredump filter
with bits Linux does not define, PR_THP_DISABLE flags it does not define
(or flags without thp_disabled), a dumpable other than 0, 1, 2. Refused at
restore, naming the task: dumpable 2 (SUID_DUMP_ROOT), which no call sets,
unless the kernel gave the task that value itself.
Essential: disabling it would hand the engine's flags to the tree without
a word.
"""
from __future__ import annotations

from typing import NamedTuple

from engine import hookimpl
from engine.errors import RestoreError
from engine.graph import Node
from engine.images import ImageError

PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
PR_SET_THP_DISABLE, PR_GET_THP_DISABLE = 41, 42
PR_THP_DISABLE_EXCEPT_ADVISED = 1 << 1
SUID_DUMP_ROOT = 2
CAP_SYS_PTRACE = 19
COREDUMP_FILTER_BITS = 0x1FF            # MMF_DUMP_FILTER_BITS: 9 (linux/sched/coredump.h)


class MmFlags(NamedTuple):
    coredump_filter: int | None
    thp: tuple[bool, int] | None        # (disabled, PR_SET_THP_DISABLE flags)
    dumpable: int | None


# --- dump ------------------------------------------------------------------

@hookimpl
def engine_dump_task(ctx, task):
    if task.zombie is not None:
        return
    tracee = task.tracee
    mm = ctx.images.read_one("mm", id=task.pid)
    mm.coredump_filter = _coredump_filter(task.pid)
    thp = tracee.checked("prctl", PR_GET_THP_DISABLE, 0, 0, 0, 0, what="PR_GET_THP_DISABLE")
    mm.thp_disabled = bool(thp & 1)
    if thp & ~1:
        mm.thp_disable_flags = thp & ~1
    mm.dumpable = tracee.checked("prctl", PR_GET_DUMPABLE, 0, 0, 0, 0, what="PR_GET_DUMPABLE")
    ctx.images.write("mm", [mm], id=task.pid)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from engine import ns
    ours = _engine_flags()
    can_ptrace = bool(ns.effective_caps() >> CAP_SYS_PTRACE & 1)
    for task in ctx.provided("tasks").alive:
        image = f"mm-{task.pid}.img"
        want = _checked(ctx.read_one("mm", id=task.pid), image)
        if want.dumpable in (0, SUID_DUMP_ROOT) and not can_ptrace:
            raise RestoreError(f"{image}: dumpable {want.dumpable}: the engine would lose its access to the "
                               "task before its registers (that takes CAP_SYS_PTRACE, which "
                               "the engine lacks)")
        core = ctx.read_one("core", id=task.pid)
        # The dumpable flag changes with the credentials: set (or checked)
        # whenever it is not 1 or they are not the engine's.
        same_ids = _ids(core.thread_core.creds) == _engine_ids()
        want = want._replace(
            coredump_filter=None if want.coredump_filter == ours.coredump_filter
            else want.coredump_filter,
            thp=None if want.thp == ours.thp else want.thp,
            dumpable=None if want.dumpable == ours.dumpable and same_ids else want.dumpable)
        if want != MmFlags(None, None, None):
            graph.add(Node(key=f"mmflags:{task.pid}", plugin="mmflags", pid=task.pid,
                           data=want, label=f"mm flags of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine.tracer import task_batch
    want: MmFlags = node.data
    pid = node.pid
    if want.coredump_filter is not None and _coredump_filter(pid) != want.coredump_filter:
        with open(f"/proc/{pid}/coredump_filter", "w") as f:
            f.write(f"{want.coredump_filter:#x}")
    bt = task_batch(ctx.tracees[pid])
    if want.thp is not None:
        disabled, flags = want.thp
        bt.call("prctl", PR_SET_THP_DISABLE, int(disabled), flags, 0, 0,
                what="PR_SET_THP_DISABLE")
    if want.dumpable is not None:
        now = bt.call("prctl", PR_GET_DUMPABLE, 0, 0, 0, 0, what="PR_GET_DUMPABLE")
        now = bt.run()[now]
        if now != want.dumpable:
            if want.dumpable == SUID_DUMP_ROOT:
                raise RestoreError(f"task {pid}: dumpable 2 (SUID_DUMP_ROOT): no call sets "
                                   f"it, and the kernel gave the restored task {now}")
            bt.call("prctl", PR_SET_DUMPABLE, want.dumpable, 0, 0, 0, what="PR_SET_DUMPABLE")
    bt.run()
    return True


# --- helpers -----------------------------------------------------------------

def _checked(mm, image: str) -> MmFlags:
    cf = mm.coredump_filter if mm.HasField("coredump_filter") else None
    if cf is not None and cf & ~COREDUMP_FILTER_BITS:
        raise ImageError(image, f"coredump_filter {cf:#x}: bits {cf & ~COREDUMP_FILTER_BITS:#x} "
                                "are not Linux's")
    flags = mm.thp_disable_flags
    if flags & ~PR_THP_DISABLE_EXCEPT_ADVISED or flags and not mm.thp_disabled:
        raise ImageError(image, f"thp_disable_flags {flags:#x}: not PR_SET_THP_DISABLE flags "
                                f"(thp_disabled {str(mm.thp_disabled).lower()})")
    thp = (mm.thp_disabled, flags) if mm.HasField("thp_disabled") else None
    dumpable = mm.dumpable if mm.HasField("dumpable") else None
    if dumpable is not None and dumpable not in (0, 1, SUID_DUMP_ROOT):
        raise ImageError(image, f"dumpable {dumpable}: not 0, 1 or 2")
    return MmFlags(coredump_filter=cf, thp=thp, dumpable=dumpable)


def _engine_flags() -> MmFlags:
    """The engine's, which a task it forks inherits."""
    from engine import libc
    thp = libc.prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0)
    return MmFlags(coredump_filter=_coredump_filter("self"), thp=(bool(thp & 1), thp & ~1),
                   dumpable=libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def _ids(creds) -> tuple:
    return creds.euid, creds.egid, creds.fsuid, creds.fsgid


def _engine_ids() -> tuple:
    import os
    _, euid, _ = os.getresuid()
    _, egid, _ = os.getresgid()
    return euid, egid, euid, egid      # the engine's fsuid/fsgid follow its euid/egid


def _coredump_filter(pid) -> int:
    with open(f"/proc/{pid}/coredump_filter") as f:
        return int(f.read(), 16)

"""core: registers, FPU/xstate, signal state, task core (core-TID.img), ids, inventory.

Dump: for every thread, its general registers, FPU and xsave state, sigmask,
sigaltstack, robust list, rseq, clear_tid address and credentials; for the
task, comm, personality, the 64 sigactions, exit signal, the child subreaper
flag (task_core_entry.child_subreaper, field 18 as in CRIU; pstree restores
it, because orphans of its helper tasks depend on it); ids-PID.img with the
object ids of the task; the root's ids in inventory.img (which the engine
writes last).
Restore: in the tracer, after memory: sigactions, then per thread the signal
state and finally the registers (criu/pie/restorer.c order). Only x86_64
native tasks are accepted; anything else is refused naming core-TID.img.
"""
from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

from engine import hookimpl
from engine.graph import Node
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.core")

MTYPE_X86_64 = 1
PR_GET_CHILD_SUBREAPER = 37
PAGE = 4096
MODE_NATIVE = 1
TASK_ALIVE = 1
# task_kobj_ids_entry's object ids: files sets files_id, core the others
OBJECT_IDS = ("vm_id", "files_id", "fs_id", "sighand_id")
CAP_SYS_RESOURCE = 24
RLIMIT_NOFILE = 7


class TaskCore(NamedTuple):
    """A core node's data: every thread's state and the process-wide rest,
    from the leader's core image (engine.tracer.model types)."""
    threads: list
    sigactions: list
    shared_signals: list                 # siginfo queued to the whole process
    stopped: bool                        # group-stopped when dumped
    creds: Any                           # model.Creds, or None: the engine's own
    parent_restored: bool                # its parent is in the tree
    itimers: list
    posix_timers: list
    rlimits: list                        # (RLIMIT_*, soft, hard) to set: those not ours


_NS_IDS = StashKey()      # (kind, inode) -> namespace id in ids-PID.img


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("core", "core-{id}.img", 0x55053847, P + "core_pb2", "core_entry",
                                magic_name="CORE"))
    registry.register(ImageKind("ids", "ids-{id}.img", 0x54432030, P + "core_pb2", "task_kobj_ids_entry",
                                magic_name="IDS"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_task(ctx, task):
    from plugins.core import convert
    if task.zombie is not None:
        ctx.images.write("core", [convert.zombie_core(task.pid, task.zombie)], id=task.pid)
        return
    state = task.state
    for thread in state.threads:
        core = convert.core_entry(state, thread, leader=thread.tid == task.pid)
        if thread.tid == task.pid:
            core.tc.child_subreaper = _child_subreaper(task.tracee)
        ctx.images.write("core", [core], id=thread.tid)
    ids = _ids_entry(ctx, task)
    ctx.images.write("ids", [ids], id=task.pid)


@hookimpl
def engine_dump_inventory(ctx, inventory):
    root = next(iter(ctx.tasks.values()))
    inventory.root_ids.CopyFrom(_ids_entry(ctx, root))


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from plugins.core import convert
    tasks = ctx.provided("tasks")
    in_tree = {e.pid for e in tasks.entries}
    engine = _engine_rlimits()
    for task in tasks.alive:
        threads = []
        tids = task.threads or [task.pid]      # pstree checked the task is one of them
        for tid in tids:
            image = f"core-{tid}.img"
            core = ctx.read_one("core", id=tid)
            if core.mtype != MTYPE_X86_64:
                raise ValueError(f"{image}: mtype {core.mtype} is not X86_64")
            if core.thread_info.gpregs.mode not in (0, MODE_NATIVE):
                raise ValueError(f"{image}: thread_info.gpregs.mode: only native "
                                 "x86_64 tasks are supported")
            threads.append(convert.thread_state(core, tid, image))
        image, core = f"core-{task.pid}.img", ctx.read_one("core", id=task.pid)
        data = TaskCore(threads=threads, sigactions=convert.sigactions(core, image),
                        shared_signals=convert.shared_signals(core, image),
                        stopped=core.tc.task_state == convert.TASK_STOPPED,
                        creds=convert.creds(core, image),
                        parent_restored=task.ppid in in_tree,
                        itimers=convert.itimers(core, image),
                        posix_timers=convert.posix_timers(core, image, tids),
                        rlimits=_rlimits_to_set(convert.rlimits(core, image), image, engine))
        graph.add(Node(key=f"core:{task.pid}", plugin="core", pid=task.pid, data=data,
                       label=f"registers and signals of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine.tracer import restore_threads
    from plugins.core import convert
    d: TaskCore = node.data
    tracee = ctx.tracees[node.pid]
    creds = d.creds
    if creds is not None:
        creds = convert.creds_in_userns(creds, node.pid, f"core-{node.pid}.img")
    restore_threads(tracee, d.sigactions, d.threads, d.shared_signals, creds,
                    d.parent_restored, d.itimers, d.posix_timers, d.rlimits)
    # A task stopped when dumped is released into a stop again (SIGSTOP).
    tracee.release_signal = 19 if d.stopped else 0
    return True


# --- helpers -----------------------------------------------------------------

def _engine_rlimits() -> tuple[list[tuple[int, int]], bool]:
    """The engine's limits, which every task inherits, and whether it can
    raise a hard one (CAP_SYS_RESOURCE)."""
    import resource
    from engine import ns
    from engine.tracer.model import RLIM_INFINITY
    from plugins.core import convert
    # resource gives RLIM_INFINITY as -1
    ours = [tuple(RLIM_INFINITY if v == resource.RLIM_INFINITY else v
                  for v in resource.getrlimit(res)) for res in range(convert.RLIM_NLIMITS)]
    return ours, bool(ns.effective_caps() >> CAP_SYS_RESOURCE & 1)


def _rlimits_to_set(dumped, image: str, engine) -> list[tuple[int, int, int]]:
    """The dumped limits that differ from the engine's (`engine`, from
    _engine_rlimits), and open files always: the restore raises that soft
    limit. A hard limit above the engine's takes CAP_SYS_RESOURCE to give:
    without it, the engine's is kept, and the restore says so (CRIU ignores
    the failed setrlimit)."""
    limits, can_raise = engine
    out = []
    for res, (soft, hard) in enumerate(dumped):
        ours = limits[res]
        if hard > ours[1] and not can_raise:
            log.warning("%s: tc.rlimits.rlimits[%d]: max %d is above this engine's %d, which "
                        "it keeps (raising it takes CAP_SYS_RESOURCE)", image, res, hard, ours[1])
            soft, hard = min(soft, ours[1]), ours[1]
        if (soft, hard) != ours or res == RLIMIT_NOFILE:
            out.append((res, soft, hard))
    return out


def _child_subreaper(tracee) -> bool:
    """PR_GET_CHILD_SUBREAPER, asked by the task itself (criu/pie/parasite.c
    asks it in dump_misc): the flag is not in /proc."""
    scratch = tracee.checked("mmap", 0, PAGE, 3, 0x22, -1, 0, what="scratch page")
    try:
        tracee.checked("prctl", PR_GET_CHILD_SUBREAPER, scratch, 0, 0, 0)
        return int.from_bytes(tracee.read(scratch, 4), "little") != 0
    finally:
        tracee.syscall("munmap", scratch, PAGE)


def _ids_entry(ctx, task):
    if task.zombie is not None:
        raise ValueError(f"task {task.pid} is a zombie: it cannot be the root of a dump")
    from engine import ns
    from engine.images.proto import core_pb2
    ns_ids = ctx.stash.setdefault(_NS_IDS, {})
    for name in OBJECT_IDS:          # those no plugin set: objects of its own
        task.ids.setdefault(name, ctx.new_id())
    entry = core_pb2.task_kobj_ids_entry(**task.ids)
    for kind in ns.KINDS:
        try:
            inode = os.stat(f"/proc/{task.pid}/ns/{kind}").st_ino
        except OSError:
            continue
        key = (kind, inode)
        if key not in ns_ids:
            ns_ids[key] = ctx.new_id()
        setattr(entry, f"{kind}_ns_id", ns_ids[key])
    return entry


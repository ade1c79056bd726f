"""core: registers and FPU/xstate, the task core (core-TID.img), ids, inventory.

Dump: for every thread, core-TID.img: its general registers, FPU and xsave
state, and what the other task-state plugins restore from it (sigmask,
sigaltstack, robust list, rseq, clear_tid address, queued signals: plugin
threads; credentials and parent-death signal: creds; limits: rlimits;
interval and POSIX timers: timers); for the task, comm, personality, the
64 sigactions, exit signal, the child subreaper flag
(task_core_entry.child_subreaper, field 18 as in CRIU; pstree restores it,
because orphans of its helper tasks depend on it); ids-PID.img with the
object ids of the task; the root's ids in inventory.img (which the engine
writes last).
Restore: in the tracer, last of the task (after its memory, its threads
and every plugin providing `task-state`): the scratch page goes, then
every thread's registers and xstate (criu/pie/restorer.c order); a task
stopped when dumped is released into a stop. Only x86_64 native tasks are
accepted; anything else is refused naming core-TID.img.
"""
from __future__ import annotations

import logging
import os
from typing import NamedTuple

from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.core")

MTYPE_X86_64 = 1
PR_GET_CHILD_SUBREAPER = 37
PAGE = 4096
MODE_NATIVE = 1
TASK_ALIVE = 1
# task_kobj_ids_entry's object ids: files sets files_id, core the others
OBJECT_IDS = ("vm_id", "files_id", "fs_id", "sighand_id")
SIGSTOP = 19


class TaskCore(NamedTuple):
    """A core node's data, from the task's core images."""
    threads: list                        # engine.tracer.model.ThreadState: registers, xstate
    stopped: bool                        # group-stopped when dumped


_NS_IDS = StashKey()      # (kind, inode) -> namespace id in ids-PID.img


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("core", "core-{id}.img", 0x55053847, P + "core_pb2", "core_entry",
                                magic_name="CORE", per_task=True))
    registry.register(ImageKind("ids", "ids-{id}.img", 0x54432030, P + "core_pb2", "task_kobj_ids_entry",
                                magic_name="IDS", per_task=True))


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
    from engine import ns
    root = next(iter(ctx.tasks.values()))
    inventory.root_ids.CopyFrom(_ids_entry(ctx, root))
    if ns.init_level(root.pid):
        # The init of a pid namespace of its own: root_ids are the dumper's,
        # as CRIU writes them (criu/image.c prepare_inventory): CRIU makes
        # anew whatever the root does not share with them (cr-restore.c
        # get_clone_mask), its pid namespace first (plugins/pstree).
        _dumper_ids(ctx, inventory.root_ids)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from plugins.core import convert
    for task in ctx.provided("tasks").alive:
        threads = []
        for tid in task.threads or [task.pid]:   # pstree checked the task is one of them
            image = f"core-{tid}.img"
            core = ctx.read_one("core", id=tid)
            if core.mtype != MTYPE_X86_64:
                raise ImageError(image, f"mtype {core.mtype} is not X86_64")
            if core.thread_info.gpregs.mode not in (0, MODE_NATIVE):
                raise ImageError(image, "thread_info.gpregs.mode: only native "
                                        "x86_64 tasks are supported")
            threads.append(convert.thread_state(core, tid, image))
        core = ctx.read_one("core", id=task.pid)
        data = TaskCore(threads=threads, stopped=core.tc.task_state == convert.TASK_STOPPED)
        graph.add(Node(key=f"core:{task.pid}", plugin="core", pid=task.pid, data=data,
                       label=f"registers of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine.tracer import set_registers
    d: TaskCore = node.data
    tracee = ctx.tracees[node.pid]
    set_registers(tracee, d.threads)
    # A task stopped when dumped is released into a stop again.
    tracee.release_signal = SIGSTOP if d.stopped else 0
    return True


# --- helpers -----------------------------------------------------------------

def _child_subreaper(tracee) -> bool:
    """PR_GET_CHILD_SUBREAPER, asked by the task itself (criu/pie/parasite.c
    asks it in dump_misc): the flag is not in /proc."""
    scratch = tracee.checked("mmap", 0, PAGE, 3, 0x22, -1, 0, what="scratch page")
    try:
        tracee.checked("prctl", PR_GET_CHILD_SUBREAPER, scratch, 0, 0, 0)
        return int.from_bytes(tracee.read(scratch, 4), "little") != 0
    finally:
        tracee.syscall("munmap", scratch, PAGE)


def _dumper_ids(ctx, entry) -> None:
    """The engine's own ids into `entry`: objects of its own, and the ids
    of its namespaces (those the tree shares keep the tree's id)."""
    from engine import ns
    ns_ids = ctx.stash.setdefault(_NS_IDS, {})
    for name in OBJECT_IDS:
        setattr(entry, name, ctx.new_id())
    for kind in ns.KINDS:
        key = (kind, ns.inode("self", kind))
        if key not in ns_ids:
            ns_ids[key] = ctx.new_id()
        setattr(entry, f"{kind}_ns_id", ns_ids[key])


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


"""personality: the execution domain and its flags (tc.personality of core-PID.img).

Dump: core writes it from /proc/PID/personality, as CRIU does. The kernel
keeps one per thread, CRIU's image one per task: a thread whose
personality is not its leader's is refused at dump, naming both.
Restore, in the tracer, by an injected personality(2) in every thread (the
clones took the engine's), after the threads exist; only when it is not
the engine's own, which the task inherited. Refused before anything starts: an execution domain other than
PER_LINUX (only native x86-64 tasks come back) or flag bits Linux does not
define. Essential: disabling it would hand the engine's personality to the
tree without a word.
"""
from __future__ import annotations

from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError

PER_MASK = 0xFF                         # the execution domain; the rest are flags
# UNAME26 .. ADDR_LIMIT_3GB (include/uapi/linux/personality.h)
FLAGS = (0x0020000 | 0x0040000 | 0x0080000 | 0x0100000 | 0x0200000 | 0x0400000
         | 0x0800000 | 0x1000000 | 0x2000000 | 0x4000000 | 0x8000000)


@hookimpl
def engine_dump_task(ctx, task):
    if task.zombie is not None:
        return
    values = {}
    for tid in sorted(int(t) for t in _listdir(f"/proc/{task.pid}/task")):
        with open(f"/proc/{task.pid}/task/{tid}/personality") as f:
            values[tid] = int(f.read(), 16)
    leader = values.get(task.pid)
    for tid, value in values.items():
        if value != leader:
            raise ValueError(f"task {task.pid}: thread {tid} has personality {value:#x}, its "
                             f"leader {leader:#x}: one per task is all the image holds")


@hookimpl
def engine_restore_collect(ctx, graph):
    with open("/proc/self/personality") as f:
        ours = int(f.read(), 16)
    for task in ctx.provided("tasks").alive:
        image = f"core-{task.pid}.img"
        value = ctx.read_one("core", id=task.pid).tc.personality
        if value & PER_MASK:
            raise ImageError(image, f"tc.personality {value:#x}: execution domain "
                                    f"{value & PER_MASK:#x} is not PER_LINUX")
        if value & ~PER_MASK & ~FLAGS:
            raise ImageError(image, f"tc.personality {value:#x}: flags "
                                    f"{value & ~PER_MASK & ~FLAGS:#x} are not Linux's")
        if value != ours:
            graph.add(Node(key=f"personality:{task.pid}", plugin="personality",
                           pid=task.pid, data=value,
                           label=f"personality {value:#x} of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine.tracer import task_batch, task_threads
    leader = ctx.tracees[node.pid]
    for thread in task_threads(leader):
        bt = task_batch(leader, thread)
        bt.call("personality", node.data, what="personality")
        bt.run()
    return True


def _listdir(path: str) -> list[str]:
    import os
    return os.listdir(path)

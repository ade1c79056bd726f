"""oom: a task's oom_score_adj (tc.oom_score_adj of core-PID.img), and so
its legacy oom_adj, which the kernel derives from it.

Dump: core writes it from /proc/PID/oom_score_adj, as CRIU does.
Restore, in the tracer, once every task-side node of the task ran (its
children were forked with the engine's value, as they were by their
parent's): the engine writes /proc/PID/oom_score_adj, only when it differs
from the task's own (the engine's, which the task inherited). As the
engine, not the task, writes it, the privilege used is the engine's
whatever credentials the task gets back: going below the task's minimum
(the value last set with CAP_SYS_RESOURCE) takes CAP_SYS_RESOURCE, and
without it the restore fails naming it. Like CRIU's restorer (root), a
privileged engine leaves that minimum at the value it sets.
Refused before anything starts: a value outside -1000..1000.
Essential: disabling it would hand the engine's value to the tree without
a word.
"""
from __future__ import annotations

import errno

from engine import hookimpl
from engine.errors import RestoreError
from engine.graph import Node
from engine.images import ImageError

OOM_SCORE_ADJ_MIN, OOM_SCORE_ADJ_MAX = -1000, 1000


@hookimpl
def engine_restore_collect(ctx, graph):
    ours = _read("self")
    for task in ctx.provided("tasks").alive:
        tc = ctx.read_one("core", id=task.pid).tc
        if not tc.HasField("oom_score_adj"):
            continue                    # an image without it: the engine's stays
        value = tc.oom_score_adj
        if not OOM_SCORE_ADJ_MIN <= value <= OOM_SCORE_ADJ_MAX:
            raise ImageError(f"core-{task.pid}.img", f"tc.oom_score_adj {value}: outside "
                                                     f"{OOM_SCORE_ADJ_MIN}..{OOM_SCORE_ADJ_MAX}")
        if value != ours:
            graph.add(Node(key=f"oom:{task.pid}", plugin="oom", pid=task.pid, data=value,
                           label=f"oom_score_adj {value} of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    if _read(node.pid) == node.data:
        return True
    try:
        with open(f"/proc/{node.pid}/oom_score_adj", "w") as f:
            f.write(str(node.data))
    except PermissionError as e:
        why = ("going below the task's minimum takes CAP_SYS_RESOURCE, which the engine "
               "lacks" if e.errno == errno.EACCES else e.strerror)
        raise RestoreError(f"task {node.pid}: oom_score_adj {node.data}: {why}") from None
    return True


def _read(pid) -> int:
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())

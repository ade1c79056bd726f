"""rlimits: a task's resource limits (tc.rlimits of core-PID.img).

Dump: core writes all 16 (soft, hard) pairs, read from /proc/PID/limits.
Restore, in the tracer, by prlimit64 in the task's leader (limits are the
whole process's), after its threads exist (the clones and the signals
queued to them count against RLIMIT_NPROC and RLIMIT_SIGPENDING as they
did when dumped) and before its credentials (the engine's CAP_SYS_RESOURCE,
which raising a hard limit takes, may go with them): the `creds` plugin
comes after this resource. Only the limits that differ from the engine's
(which the task inherited) are set, and open files always.
Kept as the engine's, with a warning: a hard limit above the engine's when
the engine lacks CAP_SYS_RESOURCE (CRIU ignores the failed setrlimit).
Refused before anything starts: a soft limit above its hard one (setrlimit
would refuse it), more limits than this kernel has.
Essential: every image holds limits, and the engine's are not the dumped
ones, so disabling this plugin would drop them silently.
"""
from __future__ import annotations

import logging
import struct

from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError

log = logging.getLogger("engine.plugins.rlimits")

RLIM_NLIMITS = 16
RLIMIT_NOFILE = 7
CAP_SYS_RESOURCE = 24


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    engine = _engine_rlimits()           # read once a restore, not per task
    for task in ctx.provided("tasks").alive:
        image = f"core-{task.pid}.img"
        dumped = _rlimits(ctx.read_one("core", id=task.pid), image)
        limits = _to_set(dumped, image, engine)
        if limits:
            graph.add(Node(key=f"rlimits:{task.pid}", plugin="rlimits", pid=task.pid,
                           data=limits, label=f"resource limits of {task.pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine.tracer import task_batch
    bt = task_batch(ctx.tracees[node.pid])
    for res, soft, hard in node.data:
        bt.call("prlimit64", 0, res, struct.pack("<2Q", soft, hard), 0, what=f"rlimit {res}")
    bt.run()
    return True


# --- helpers -----------------------------------------------------------------

def _rlimits(core, image: str) -> list[tuple[int, int]]:
    """tc.rlimits as (soft, hard) by RLIMIT_*; [] when absent. A soft limit
    above its hard one is refused, as setrlimit would."""
    out = []
    for i, r in enumerate(core.tc.rlimits.rlimits):
        if r.cur > r.max:
            raise ImageError(image, f"tc.rlimits.rlimits[{i}]: cur {r.cur} is above max {r.max}")
        out.append((r.cur, r.max))
    if len(out) > RLIM_NLIMITS:
        raise ImageError(image, f"tc.rlimits has {len(out)} entries, this kernel {RLIM_NLIMITS}")
    return out


def _engine_rlimits() -> tuple[list[tuple[int, int]], bool]:
    """The engine's limits, which every task inherits, and whether it can
    raise a hard one (CAP_SYS_RESOURCE)."""
    import resource

    from engine import ns
    from engine.tracer.model import RLIM_INFINITY
    # resource gives RLIM_INFINITY as -1
    ours = [tuple(RLIM_INFINITY if v == resource.RLIM_INFINITY else v
                  for v in resource.getrlimit(res)) for res in range(RLIM_NLIMITS)]
    return ours, bool(ns.effective_caps() >> CAP_SYS_RESOURCE & 1)


def _to_set(dumped, image: str, engine) -> list[tuple[int, int, int]]:
    """The dumped limits that differ from the engine's (`engine`, from
    _engine_rlimits), and open files always: the restore raises that soft
    limit. A hard limit above the engine's takes CAP_SYS_RESOURCE to give:
    without it, the engine's is kept, and the restore says so."""
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

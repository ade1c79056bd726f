"""timens: time namespaces, their monotonic and boot-time clocks (criu/timens.c).

Dump: every time namespace a live task is in, other than the engine's own,
into timens-ID.img (ID: ids-PID.img time_ns_id), as CRIU writes it: the
CLOCK_MONOTONIC and CLOCK_BOOTTIME values seen inside at dump time (the
host's clock plus the namespace's /proc/PID/timens_offsets). Refused at
dump: a task whose time namespace for its children is not its own (it
unshared one and has not entered it: no image field for it).
Restore: the first task in it (parents first) unshares a time namespace,
writes offsets that make the clocks inside go on from the dumped values
(the value minus the host's clock now: the time between dump and restore
does not pass inside, as with CRIU), and enters it (setns to its
time_for_children, before anything else joins it); the others join it
(engine/ns.py). Offsets outside what the kernel takes (a clock made
negative) fail the restore, naming the image.
"""
from __future__ import annotations

import logging
import os
import time

from engine import hookimpl
from engine.images import ImageError

log = logging.getLogger("engine.plugins.timens")

CLOCKS = (("monotonic", time.CLOCK_MONOTONIC), ("boottime", time.CLOCK_BOOTTIME))
NSEC = 1_000_000_000


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    registry.register(ImageKind("timens", "timens-{id}.img", 0x43114433,
                                "engine.images.proto.tree_pb2", "timens_entry",
                                magic_name="TIMENS"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_task(ctx, task):
    from engine import ns
    if task.zombie is not None:
        return
    if ns.inode(task.pid, "time") != ns.inode(task.pid, "time_for_children"):
        raise ValueError(f"task {task.pid}: its time namespace for children is not its own "
                         "(unshared, not entered): not supported")


@hookimpl
def engine_dump_finish(ctx):
    from engine import ns
    from engine.images.proto import tree_pb2
    for ns_id, (_, pids) in sorted(ns.dumped_ids(ctx, "time").items()):
        offsets = _offsets(pids[0])
        entry = tree_pb2.timens_entry()
        for name, clock in CLOCKS:
            now = time.clock_gettime_ns(clock) + offsets[name]
            getattr(entry, name).tv_sec, getattr(entry, name).tv_nsec = divmod(now, NSEC)
        ctx.images.write("timens", [entry], id=ns_id)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from engine import ns
    for ns_id, entry in ns.collect(ctx, graph, "timens", "time", "timens"):
        for name, _ in CLOCKS:
            if getattr(entry, name).tv_nsec >= NSEC:
                raise ImageError(f"timens-{ns_id}.img", f"{name}.tv_nsec is not below 10^9")


@hookimpl
def engine_restore_node(ctx, node):
    from engine import ns
    ns.restore(ctx, node, "time", _enter)
    return True


# --- helpers -----------------------------------------------------------------

def _offsets(pid) -> dict[str, int]:
    """/proc/PID/timens_offsets, in ns per clock name."""
    out = {}
    with open(f"/proc/{pid}/timens_offsets") as f:
        for line in f:
            name, sec, nsec = line.split()
            out[name] = int(sec) * NSEC + int(nsec)
    return out


def _enter(entry) -> None:
    """Just unshared: set the offsets (only before any task is in it),
    then enter it (unshare moves only the children to come)."""
    from engine import ns
    lines = []
    for name, clock in CLOCKS:
        dumped = getattr(entry, name).tv_sec * NSEC + getattr(entry, name).tv_nsec
        sec, nsec = divmod(dumped - time.clock_gettime_ns(clock), NSEC)
        lines.append(f"{name} {sec} {nsec}\n")
    fd = os.open("/proc/self/timens_offsets", os.O_WRONLY | os.O_CLOEXEC)
    try:
        for line in lines:
            os.write(fd, line.encode())
    except OSError as e:
        raise ValueError(f"timens offsets {''.join(lines).strip()!r}: {os.strerror(e.errno)}") \
            from None
    finally:
        os.close(fd)
    fd = os.open("/proc/self/ns/time_for_children", os.O_RDONLY | os.O_CLOEXEC)
    try:
        ns.setns(fd, "time")
    finally:
        os.close(fd)

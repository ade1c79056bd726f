"""A tree whose root is the init of a pid namespace of its own (a
container's init): its pids are imaged at that namespace's level, as CRIU
images them (criu/pstree.c: the vpid of each item).

The set says so the way CRIU's does: the root's ids-PID.img pid_ns_id is
not inventory.img's root_ids.pid_ns_id (the dumper's own pid namespace;
criu/image.c prepare_inventory), so the root must be the init (pid 1) of a
new one (criu/cr-restore.c: root_ns_mask & CLONE_NEWPID). pstree.img then
holds pid, ppid, pgid, sid and threads at that level, and core-PID.img,
ids, mm, pagemap and fs-PID.img are named by those pids.

Dump: the root is the init of a pid namespace other than the engine's
(engine.ns.init_level): every pid pstree.img holds is taken at the root's
level (/proc/PID/status NSpid, NSpgid, NSsid) and the per-task images are
named by it (ImageDir.pid_alias). Refused at dump: a session or group from
outside the namespace (0 at its level: no task inside can make it).

Restore: the engine names tasks by their host pids (as /proc, ptrace and
the graph do), and it needs them before any fork, so it picks them itself:
free pids half the pid space behind the kernel's counter, away from what
it hands out next and from the pids other dumps just freed (CRIU lets the
kernel choose; nothing inside the namespace can tell). pstree's entries are rewritten to them, the
per-task images keep their names through ImageDir.pid_alias, and each task
is forked with clone3 set_tid at both levels: the root with CLONE_NEWPID
and [1, host], every other one, inside, with [its pid there, host]. Refused
before any fork, naming pstree.img and the entry: a root that is not pid 1,
a pid, group or session of 0 or not below pid_max, a pid listed twice, a
task with threads (they would need set_tid at both levels as well: the
threads plugin clones them with one).
"""
from __future__ import annotations

import os

from engine.images import ImageError

PID_MAX_PATH = "/proc/sys/kernel/pid_max"
LAST_PID_PATH = "/proc/sys/kernel/ns_last_pid"     # the engine's pid namespace's
RESERVED_PIDS = 300                 # the kernel never hands out pids below this


# --- dump ----------------------------------------------------------------

def dump_alias(root: int, order: list[int]) -> dict[int, int]:
    """Host pid -> pid at the root's level, when the root is the init of a
    pid namespace of its own; {} otherwise."""
    from engine import ns
    level = ns.init_level(root)
    if not level:
        return {}
    return {pid: int(ns.status_field(pid, "NSpid")[level]) for pid in order}


def dump_entry(pid: int, alias: dict[int, int], level: int, threads: list[int],
               is_root: bool):
    """pstree.img's entry of task `pid`, with its pids at `level` (the
    root's namespace)."""
    from engine import ns
    from engine.images.proto import tree_pb2
    ids = {}
    for field, line in (("sid", "NSsid"), ("pgid", "NSpgid")):
        ids[field] = int(ns.status_field(pid, line)[level])
        if not ids[field]:
            raise ValueError(f"task {pid}: its {'session' if field == 'sid' else 'group'} "
                             "is outside its pid namespace (not supported)")
    ppid = 0 if is_root else alias[int(ns.status_field(pid, "PPid")[0])]
    entry = tree_pb2.pstree_entry(pid=alias[pid], ppid=ppid, **ids)
    for tid in threads:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            line = next(x for x in f if x.startswith("NSpid:"))
        entry.threads.append(int(line.split()[1:][level]))
    return entry


# --- restore ---------------------------------------------------------------

def is_own(ctx, entries) -> bool:
    """The set's root is the init of a new pid namespace (CRIU's rule)."""
    inventory = ctx.images.read_one("inventory")
    if not inventory.HasField("root_ids") or not ctx.images.exists("ids", id=entries[0].pid):
        return False
    return ctx.ids(entries[0].pid).pid_ns_id != inventory.root_ids.pid_ns_id


def check(entries) -> None:
    """What only a set of this kind may not hold (pstree's own checks of
    pids, parents and threads come next)."""
    pid_max = int(open(PID_MAX_PATH).read())
    if entries[0].pid != 1:
        raise ImageError("pstree.img: entry 0", f"pid {entries[0].pid}: the root of a pid "
                                                "namespace of its own must be its init, pid 1")
    for i, e in enumerate(entries):
        where = f"pstree.img: entry {i}"
        for field in ("pgid", "sid"):
            value = getattr(e, field)
            if not 0 < value < pid_max:
                raise ImageError(where, f"{field} {value} out of range (0 < {field} < "
                                        f"{pid_max}) in its pid namespace")
        if len(e.threads) > 1:
            raise ImageError(where, f"task {e.pid} has threads {list(e.threads)}: threads in "
                                    "a pid namespace of its own are not supported")


def to_host(ctx, entries) -> dict[int, int]:
    """Rewrite `entries` (checked, pids at the namespace's level) to the
    host pids the engine picks; return host pid -> pid in the images."""
    pid_max = int(open(PID_MAX_PATH).read())
    values = sorted({v for e in entries for v in (e.pid, e.pgid, e.sid)})
    host = dict(zip(values, _free_host_pids(len(values), pid_max, ctx.reserved_pids)))
    for e in entries:
        e.pid, e.pgid, e.sid = host[e.pid], host[e.pgid], host[e.sid]
        e.ppid = host.get(e.ppid, 0)
        e.threads[:] = [host[t] for t in e.threads]
    return {h: v for v, h in host.items()}


def clone_args(image_pids: dict[int, int]) -> dict[int, tuple[int, list[int]]]:
    """host pid -> (clone flags, set_tid innermost first) for every pid the
    tree's tasks and helpers take: the init makes the namespace."""
    from engine import ns
    return {h: (ns.CLONE_NEWPID if v == 1 else 0, [v, h]) for h, v in image_pids.items()}


def _free_host_pids(n: int, pid_max: int, reserved: set[int]) -> list[int]:
    """`n` free pids half the pid space behind the kernel's counter, going
    down (wrapping): the counter, which only goes up, reaches them last, and
    the pids dumps just freed (restored next, with those numbers) lie just
    behind it (not the top of the space: the counter passes it at every
    wrap, often under a busy test run)."""
    last = int(open(LAST_PID_PATH).read())
    span = pid_max - RESERVED_PIDS - 1          # pids RESERVED_PIDS + 1 .. pid_max - 1
    start = last - span // 2
    out = []
    for k in range(span):
        pid = RESERVED_PIDS + 1 + (start - RESERVED_PIDS - 1 - k) % span
        if pid not in reserved and not os.path.exists(f"/proc/{pid}"):
            out.append(pid)
            if len(out) == n:
                return out
    raise ImageError("pstree.img", f"no {n} free pids for the tasks of the pid namespace")

"""pstree: the process tree, as pstree.img holds it (criu/pstree.c).

Dump: the task given with -t and all its descendants, parents first, each with
its pid, parent, process group, session and threads (zombies too; the core
plugin writes their exit status and every task's child subreaper flag).
Restore: each task is forked with its dumped pid by its parent (the engine
forks the root) or by a helper task, then sets, in itself, its child
subreaper flag, its session and group (plan.py has the rules: when a child
is forked before its parent's setsid, when a helper with a dead leader's pid
makes a session or a group and exits, when a leader that left its group
makes it first). Helpers are reaped and dumped zombies exit before release.
Refused before anything is forked, naming pstree.img and the entry: a pid in
use, a parent that is not an earlier task, a task listed twice, ids no
history of fork/setsid/setpgid/exit can give (a session leader outside its
group, a group across sessions, an order with a cycle), and sessions or
groups no helper can make (a helper's pid in use; orphans in a session with
no task under their reaper to fork a helper from).
A root that is the init of a pid namespace of its own is imaged and
restored at that namespace's level, as CRIU does (own_ns.py).
"""
from __future__ import annotations

import logging
import os

import attrs

from engine import hookimpl
from engine.images import ImageError
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.pstree")

PID_MAX_PATH = "/proc/sys/kernel/pid_max"
TASK_DEAD = 2             # core_entry.tc.task_state of a zombie

# At dump: the level of the root's pid namespace when the root is its init
# (own_ns.py); at restore: host pid -> (clone flags, set_tid) of its tasks.
OWN_NS_LEVEL = StashKey[int]()
OWN_NS_CLONES = StashKey[dict]()


@attrs.frozen
class TaskTree:
    """The resource ``tasks``: the tree as pstree.img has it."""
    entries: list                     # pstree_entry, parents first
    exits: dict[int, int]             # pid -> wait status, for tasks gone before release
    # host pid -> pid in the images, when they differ: a root that is the
    # init of its own pid namespace (own_ns.py); {} otherwise.
    image_pids: dict[int, int] = attrs.Factory(dict)

    @property
    def alive(self) -> list:
        return [e for e in self.entries if e.pid not in self.exits]


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("pstree", "pstree.img", 0x50273030, P + "tree_pb2", "pstree_entry",
                                magic_name="PSTREE"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_tree(ctx, root_pid):
    if not os.path.exists(f"/proc/{root_pid}"):
        raise ProcessLookupError(f"no process {root_pid}")
    kids = _children_map()
    order, queue = [], [root_pid]
    while queue:
        pid = queue.pop(0)
        order.append(pid)
        queue += kids.get(pid, [])
    from plugins.pstree import own_ns
    alias = own_ns.dump_alias(root_pid, order)
    if alias:
        # Before any image is written: they are named by these pids.
        from engine import ns
        ctx.stash[OWN_NS_LEVEL] = ns.init_level(root_pid)
        ctx.images.pid_alias = alias
    return order


@hookimpl
def engine_dump_finish(ctx):
    from engine.images.proto import tree_pb2
    root = next(iter(ctx.tasks))
    entries = []
    level = ctx.stash.get(OWN_NS_LEVEL, 0)
    for pid, task in ctx.tasks.items():
        if level:
            from plugins.pstree import own_ns
            threads = [t.tid for t in task.state.threads] if task.state is not None else []
            entries.append(own_ns.dump_entry(pid, ctx.images.pid_alias, level, threads,
                                             pid == root))
            continue
        ppid, pgid, sid = _stat_ids(pid)
        entry = tree_pb2.pstree_entry(pid=pid, ppid=0 if pid == root else ppid,
                                        pgid=pgid, sid=sid)
        if task.state is not None:
            entry.threads.extend(t.tid for t in task.state.threads)
        entries.append(entry)
    ctx.images.write("pstree", entries)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from plugins.pstree.plan import PlanError, plan
    from plugins.pstree import own_ns
    entries = ctx.images.read("pstree")
    own = bool(entries) and own_ns.is_own(ctx, entries)
    if own:
        own_ns.check(entries)
    # Pids of a namespace the restore makes are free in it: no check on ours.
    _validate(entries, in_use=not own)
    _whole(ctx, entries)                 # at the images' own pids
    image_pids = {}
    if own:
        image_pids = own_ns.to_host(ctx, entries)
        ctx.images.pid_alias = image_pids
        ctx.stash[OWN_NS_CLONES] = own_ns.clone_args(image_pids)
    exits = _zombies(ctx, entries)
    tree = TaskTree(entries=entries, exits=exits, image_pids=image_pids)
    nodes = plan(entries, dict(exits), _subreapers(ctx, entries), _pid_free,
                 siblings_may_fork=lambda: _one_namespace_set(ctx, tree))
    for node in nodes:
        if image_pids:
            if node.data.pid not in image_pids:
                raise PlanError(f"pstree.img: a {node.data.helper} helper task: not "
                                "supported in a pid namespace of its own")
            if node.key.startswith("pstree:fork:"):
                # `engine plan` names the pid the images have too
                node.label += f" (pid {image_pids[node.data.pid]} in its pid namespace)"
        if node.data.helper:
            # Gone before release, like a zombie: no memory, no registers.
            exits[node.data.pid] = 0
        graph.add(node)
    ctx.reserved_pids.update(n.data.pid for n in nodes)
    ctx.reserved_pids.update(t for e in entries for t in e.threads)
    ctx.provide("tasks", tree)


@hookimpl
def engine_restore_node(ctx, node):
    proc, kind = node.data, node.key.split(":")[1]
    if kind == "fork":
        exits = ctx.provided("tasks").exits
        flags, tids = (ctx.provided("pidns", {}).get(proc.pid)
                       or ctx.stash.get(OWN_NS_CLONES, {}).get(proc.pid, (0, None)))
        # A parent that exits before release (a zombie, a helper) orphans
        # its children on purpose: they must not die with it.
        ctx.spawn(proc.pid, sibling=proc.by_sibling is not None,
                  die_with_parent=proc.forker is None or proc.forker not in exits,
                  flags=flags, tids=tids)
    elif kind == "reaper":
        for pid in proc.after_deaths:
            _wait_dead(pid)
        from engine import libc
        _prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    elif kind == "ids":
        if proc.leads:
            if proc.sid == proc.pid:
                os.setsid()
            else:
                os.setpgid(0, 0)
    elif kind == "join":
        _join_group(proc)
    elif kind == "exit":
        if proc.zombie is not None:
            _take_name(ctx, proc.pid)      # ps shows a zombie by its name
        ctx.exit_after_nodes(proc.zombie or 0)
    elif kind == "reap":
        from engine import ns
        os.waitpid(ns.pid_here(proc.pid), 0)      # our pid namespace's number
    else:
        return None
    return True


# --- helpers -----------------------------------------------------------------

def _take_name(ctx, pid: int) -> None:
    """The dumped zombie's comm, set in the task before it exits."""
    from engine import libc
    comm = ctx.read_one("core", id=pid).tc.comm
    if comm:
        libc.check(libc.prctl(libc.PR_SET_NAME, comm.encode()[:15] + b"\0", 0, 0, 0),
                   "PR_SET_NAME")


def _one_namespace_set(ctx, tree: TaskTree) -> bool:
    """Every live task in the same namespaces: no task makes one that its
    siblings are then born in (what a fork by a sibling needs; a namespace
    the restore makes is made by the root, and joined by every other)."""
    from engine import ns
    return len({tuple(getattr(ctx.ids(e.pid), f"{kind}_ns_id") for kind in ns.KINDS)
                for e in tree.alive}) == 1


def _zombies(ctx, entries) -> dict[int, int]:
    """pid -> wait status of the tasks core-PID.img says are dead."""
    out = {}
    for e in entries:
        if ctx.images.exists("core", id=e.pid):
            tc = ctx.read_one("core", id=e.pid).tc
            if tc.task_state == TASK_DEAD:
                if e.ppid == 0:
                    raise ImageError(f"core-{e.pid}.img", "the root task is dead")
                out[e.pid] = tc.exit_code
    return out


def _children_map() -> dict[int, list[int]]:
    """ppid -> children, from /proc/*/stat (this kernel has no
    /proc/PID/task/TID/children: CONFIG_PROC_CHILDREN is off)."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = _stat_ids(int(name))[0]
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(name))
    for v in kids.values():
        v.sort()
    return kids


def _stat_ids(pid: int) -> tuple[int, int, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[2]), int(fields[3])


def _validate(entries, in_use: bool = True) -> None:
    if not entries:
        raise ValueError("pstree.img: no task")
    pid_max = int(open(PID_MAX_PATH).read())
    seen: set[int] = set()
    threads: set[int] = set()
    for i, e in enumerate(entries):
        where = f"pstree.img: entry {i}"
        if not 0 < e.pid < pid_max:
            raise ImageError(where, f"pid {e.pid} out of range")
        if e.pid in seen:
            raise ImageError(where, f"pid {e.pid} listed twice")
        if i == 0 and e.ppid != 0:
            pass  # the root's dumped parent is outside the tree
        elif i > 0 and e.ppid not in seen:
            raise ImageError(where, f"parent {e.ppid} of {e.pid} is not an earlier task")
        if e.threads and e.pid not in e.threads:
            raise ImageError(where, f"threads do not include the task {e.pid}")
        for tid in e.threads:
            if tid in threads:
                raise ImageError(where, f"thread {tid} listed twice")
            threads.add(tid)
        if in_use and os.path.exists(f"/proc/{e.pid}"):
            raise ImageError(where, f"pid {e.pid} is in use")
        seen.add(e.pid)
    # the root's ppid is ignored on restore: the engine (or its caller) is the parent
    entries[0].ppid = 0


def _whole(ctx, entries) -> None:
    """Every task the set holds a core image of is in pstree.img (issue 20:
    one cut at an entry boundary restored part of the tree, exit 0)."""
    tids = {e.pid for e in entries} | {t for e in entries for t in e.threads}
    for tid in ctx.images.ids("core"):
        if tid not in tids:
            raise ImageError("pstree.img", f"no task or thread {tid}, whose core-{tid}.img "
                                           "is in the set: entries are missing")


def _subreapers(ctx, entries) -> set[int]:
    """The tasks core-PID.img says are child subreapers."""
    return {e.pid for e in entries if ctx.images.exists("core", id=e.pid)
            and ctx.read_one("core", id=e.pid).tc.child_subreaper}


def _pid_free(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def _prctl(option: int, arg: int) -> None:
    from engine import libc
    libc.check(libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


def _wait_dead(pid: int) -> None:
    """Until `pid` is a zombie or gone: its orphans are reparented by then
    (kernel/exit.c: exit_notify before the zombie state shows)."""
    import time
    while True:
        try:
            if _stat_state(pid) in "ZX":
                return
        except OSError:
            return
        time.sleep(0.0005)


def _stat_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _join_group(proc) -> None:
    # Images and /proc (the engine's mount) name groups in the engine's pid
    # namespace; setpgid inside a nested one wants the number seen there.
    from engine import ns
    if ns.pid_depth() == 0:
        now = os.getpgid(0)            # as /proc names it
    else:
        now = int(ns.status_field("self", "NSpgid")[0])
    if now == proc.pgid:
        return
    here = ns.pid_here(proc.pgid)
    try:
        # A group outside our pid namespace: setpgid then fails as it should.
        os.setpgid(0, proc.pgid if here is None else here)
    except OSError:
        if proc.forker is not None:
            raise
        # Like CRIU's --shell-job: a group outside the tree is inherited.
        log.warning("task %d: process group %d is outside the tree; inherited %d",
                    proc.pid, proc.pgid, os.getpgid(0))

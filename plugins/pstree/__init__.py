"""pstree: the process tree, as pstree.img holds it (criu/pstree.c).

Dump: the task given with -t and all its descendants, parents first, each with
its pid, parent, process group, session and threads. Restore: one node per
task, forking it with its dumped pid from its parent (the engine forks the
root), then one node in the task itself that puts it into its dumped session
and process group. A pid that is in use, a parent that is not in the tree, a
task listed twice: refused before anything is forked.
"""
from __future__ import annotations

import logging
import os

from engine import hookimpl
from engine.graph import Node

log = logging.getLogger("engine.plugins.pstree")

PID_MAX_PATH = "/proc/sys/kernel/pid_max"
TASK_DEAD = 2             # core_entry.tc.task_state of a zombie


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
    return order


@hookimpl
def engine_dump_finish(ctx):
    from engine.images.proto import tree_pb2
    root = next(iter(ctx.tasks))
    entries = []
    for pid, task in ctx.tasks.items():
        ppid, pgid, sid = _stat_ids(pid)
        entry = tree_pb2.pstree_entry(pid=pid, ppid=0 if pid == root else ppid,
                                        pgid=pgid, sid=sid)
        if task.state is not None:
            entry.threads.extend(t.tid for t in task.state.threads)
        entries.append(entry)
    ctx.images.write("pstree", entries)


# --- restore ---------------------------------------------------------------

@hookimpl(tryfirst=True)
def engine_restore_collect(ctx, graph):
    # tryfirst: every other plugin's collect walks ctx.pstree.
    entries = ctx.images.read("pstree")
    _validate(entries)
    ctx.pstree = entries
    ctx.zombies = _zombies(ctx, entries)
    early = _plan_births(entries)
    pids = {e.pid for e in entries}
    for e in entries:
        if e.ppid == 0:
            graph.add(Node(key=f"pstree:fork:{e.pid}", plugin="pstree", where="engine",
                           data=e, label=f"fork task {e.pid}"))
        elif e.pid in early:
            # Born in the session its parent is born in: before the parent's setsid.
            graph.add(Node(key=f"pstree:fork:{e.pid}", plugin="pstree", where="task",
                           pid=e.ppid, data=e, after=[f"pstree:fork:{e.ppid}"],
                           label=f"fork task {e.pid} from {e.ppid} (before its setsid)"))
        else:
            # After the parent took its own session and group: the child
            # inherits them at fork.
            graph.add(Node(key=f"pstree:fork:{e.pid}", plugin="pstree", where="task",
                           pid=e.ppid, data=e, after=[f"pstree:ids:{e.ppid}"],
                           label=f"fork task {e.pid} from {e.ppid}"))
        after = [f"pstree:fork:{e.pid}"]
        after += [f"pstree:fork:{c.pid}" for c in entries if c.ppid == e.pid and c.pid in early]
        if e.pid in ctx.zombies:
            # It dies last, once the children it had are forked.
            after += [f"pstree:fork:{c.pid}" for c in entries if c.ppid == e.pid]
        # Joining a group needs its leader to have made it first.
        if e.pgid != e.pid and e.pgid in pids:
            after.append(f"pstree:ids:{e.pgid}")
        graph.add(Node(key=f"pstree:ids:{e.pid}", plugin="pstree", where="task", pid=e.pid,
                       data=e, after=after,
                       label=(f"session {e.sid} and group {e.pgid} of {e.pid}"
                              + (" then exit (zombie)" if e.pid in ctx.zombies else ""))))


@hookimpl
def engine_restore_node(ctx, node):
    if node.plugin != "pstree":
        return None
    entry = node.data
    if node.key.startswith("pstree:fork:"):
        ctx.spawn(entry.pid)
    else:
        _join_session_and_group(entry)
        if entry.pid in ctx.zombies:
            ctx.exit_status = ctx.zombies[entry.pid]
    return True


# --- helpers -----------------------------------------------------------------

def _zombies(ctx, entries) -> dict[int, int]:
    """pid -> wait status of the tasks core-PID.img says are dead."""
    out = {}
    for e in entries:
        if ctx.images.exists("core", id=e.pid):
            tc = ctx.images.read_one("core", id=e.pid).tc
            if tc.task_state == TASK_DEAD:
                if e.ppid == 0:
                    raise ValueError(f"core-{e.pid}.img: the root task is dead")
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


def _validate(entries) -> None:
    if not entries:
        raise ValueError("pstree.img: no task")
    pid_max = int(open(PID_MAX_PATH).read())
    seen: set[int] = set()
    threads: set[int] = set()
    for i, e in enumerate(entries):
        where = f"pstree.img: entry {i}"
        if not 0 < e.pid < pid_max:
            raise ValueError(f"{where}: pid {e.pid} out of range")
        if e.pid in seen:
            raise ValueError(f"{where}: pid {e.pid} listed twice")
        if i == 0 and e.ppid != 0:
            pass  # the root's dumped parent is outside the tree
        elif i > 0 and e.ppid not in seen:
            raise ValueError(f"{where}: parent {e.ppid} of {e.pid} is not an earlier task")
        if e.threads and e.pid not in e.threads:
            raise ValueError(f"{where}: threads do not include the task {e.pid}")
        for tid in e.threads:
            if tid in threads:
                raise ValueError(f"{where}: thread {tid} listed twice")
            threads.add(tid)
        if os.path.exists(f"/proc/{e.pid}"):
            raise ValueError(f"{where}: pid {e.pid} is in use")
        seen.add(e.pid)
    _check_sessions(entries)
    # the root's ppid is ignored on restore: the engine (or its caller) is the parent
    entries[0].ppid = 0


def _check_sessions(entries) -> None:
    """Sessions and groups reachable by fork, setsid and setpgid alone.

    A session or group whose leader is gone needs helper tasks (CRIU's
    approach), which are not planned yet: refused here, before any fork.
    """
    by_pid = {e.pid: e for e in entries}
    for i, e in enumerate(entries[1:], 1):
        where = f"pstree.img: entry {i}: task {e.pid}"
        parent = by_pid[e.ppid]
        if e.pgid not in (e.pid, parent.pgid) and e.pgid not in by_pid:
            raise ValueError(f"{where}: process group {e.pgid} has no member to join "
                             "in the tree: needs a helper task (not supported yet)")
        if e.pgid in by_pid and by_pid[e.pgid].sid != e.sid:
            raise ValueError(f"{where}: group {e.pgid} is in session "
                             f"{by_pid[e.pgid].sid}, the task in {e.sid}")



def _plan_births(entries) -> set[int]:
    """The tasks to fork before their parent calls setsid.

    A task that does not lead its session was born in it, so its parent was
    in that session when it forked: in the session the parent itself was
    born in, before its own setsid. That need climbs the tree (a leader can
    be born early too) and must agree at every task; where it cannot (a
    session whose leader and born-in ancestors are all gone), a helper task
    would be needed, which is refused here, before any fork.
    """
    by_pid = {e.pid: e for e in entries}
    kids: dict[int, list] = {}
    for e in entries[1:]:
        kids.setdefault(e.ppid, []).append(e)
    born_in: dict[int, int | None] = {}        # pid -> session it must be born in
    for i in range(len(entries) - 1, -1, -1):  # children before parents
        e = entries[i]
        wants = {w for c in kids.get(e.pid, ()) for w in (_child_needs(c, born_in),)
                 if w is not None and w != e.sid}
        if len(wants) > 1 or (wants and (e.sid != e.pid or i == 0)):
            raise ValueError(f"pstree.img: entry {i}: task {e.pid}: children in sessions "
                             f"{sorted(wants)} cannot all be born under it: needs a helper "
                             "task (not supported yet)")
        born_in[e.pid] = wants.pop() if wants else None
    early, session_at_birth = set(), {entries[0].pid: None}
    for e in entries[1:]:
        parent = by_pid[e.ppid]
        need = _child_needs(e, born_in)
        if need is not None and need != parent.sid:
            early.add(e.pid)
            session_at_birth[e.pid] = session_at_birth[parent.pid]
        else:
            session_at_birth[e.pid] = parent.sid
    return early


def _child_needs(e, born_in) -> int | None:
    """The session `e` must be born in: its own unless it leads one."""
    return e.sid if e.sid != e.pid else born_in.get(e.pid)


def _join_session_and_group(entry) -> None:
    pid = entry.pid
    if entry.sid == pid:
        os.setsid()
    elif entry.pgid == pid:
        os.setpgid(0, 0)
    elif os.getpgid(0) != entry.pgid:
        try:
            os.setpgid(0, entry.pgid)
        except OSError:
            # Like CRIU's --shell-job: a group outside the tree is inherited.
            log.warning("task %d: process group %d is outside the tree; inherited %d",
                        pid, entry.pgid, os.getpgid(0))

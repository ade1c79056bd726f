"""pidns: nested pid namespaces, with every task's pid at every level.

Dump: every pid namespace a task of the tree is in, other than the engine's
own, into pidns-ID.img (ID: ids-PID.img pid_ns_id): its parent (0: the
engine's), the user namespace owning it (0: the engine's) and, for each task
whose own namespace it is, its pid at every level (/proc/PID/status NSpid).
Refused at dump: a multi-threaded task or a zombie in a nested namespace
(their threads and exit would need the same set_tid treatment), a parent or
owner outside the tree.

Restore: every task of a nested namespace is forked by its parent with
clone3 and a full set_tid array (its pid at every level, innermost first:
the resource ``pidns`` (pid -> clone flags and pids),
read by pstree's forks). The first task of a namespace, its init
(pid 1 there), is forked with CLONE_NEWPID when the engine's own user
namespace owns it. When one of the tree's owns it, the kernel wants the
namespace made from inside that user namespace, but set_tid at the outer
levels from outside it, which no single task can do (CRIU cannot): a helper
of the parent joins the user namespace and unshares CLONE_NEWPID, the
parent, still privileged, joins the helper's pid_for_children, forks the
init with the full array, and goes back to its own; the init joins its user
namespace last (plugins/userns). Any other task must be forked by a parent
inside its namespace. Levels that disagree with the namespace's depth, a
pid at a level that is not the engine's first, an init whose parent is not
in the parent namespace: refused before anything starts.

A root that is the init of a pid namespace of its own (a container's init)
is imaged at that namespace's level (plugins/pstree/own_ns.py, as CRIU
does): its namespace gets no pidns image (pstree.img holds the pids there,
and inventory.img's root_ids.pid_ns_id, the engine's own, differs from the
root's ids pid_ns_id, as CRIU writes them), and the namespaces below it are
imaged relative to it: parent_id 0 is the root's namespace, ns_pid starts
at the pid there, and a restore adds the host pid pstree picked as the
outermost level. What pidns-ID.img keeps beyond CRIU's images (CRIU has no
nested namespaces below the root's): the namespaces below, with their
owner and every task's pid at every level from the root's down. A thread
anywhere in such a tree is refused at dump (pstree forks with set_tid at
two levels; the threads plugin clones with one).
"""
from __future__ import annotations

import logging
import os

from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError

log = logging.getLogger("engine.plugins.pidns")

PIDFD_GET_PID_FOR_CHILDREN_NAMESPACE = 0xFF06      # _IO(PIDFS_IOCTL_MAGIC, 6)


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("pidns", "pidns-{id}.img", 0x61157326, P + "pidns_pb2", "pidns_entry",
                                magic_name="PIDNS"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_finish(ctx):
    from engine import ns
    from engine.images.proto import pidns_pb2
    found = ns.dumped_ids(ctx, "pid")
    root = next(iter(ctx.tasks))
    # The namespaces are relative to the root's when it is their init.
    depth = ns.init_level(root) or ns.pid_depth()
    own = ns.inode(root if depth > ns.pid_depth() else "self", "pid")
    for pid, task in ctx.tasks.items():
        state = task.state
        if depth > ns.pid_depth() and state is not None and len(state.threads) > 1:
            raise ValueError(f"task {pid}: threads in a pid namespace of its own are not "
                             "supported")
    found = {i: found[i] for i in found if found[i][0] != own}
    if not found:
        return
    users = ns.user_ids(ctx)
    by_inode = {ino: ns_id for ns_id, (ino, _) in found.items()}
    for pid, task in ctx.tasks.items():
        if task.zombie is not None and len(ns.status_field(pid, "NSpid")) - 1 > depth:
            raise ValueError(f"task {pid}: a zombie in a nested pid namespace is not supported")
    for ns_id, (ino, pids) in sorted(found.items()):
        parent = ns.related(pids[0], "pid", ns.NS_GET_PARENT)
        if parent != own and parent not in by_inode:
            raise ValueError(f"task {pids[0]}: the parent of its pid namespace is neither in "
                             "the tree nor the engine's")
        entry = pidns_pb2.pidns_entry(owner_id=ns.owner_id(ctx, pids[0], "pid", users),
                                      parent_id=0 if parent == own else by_inode[parent])
        for pid in pids:
            state = ctx.tasks[pid].state
            if state is not None and len(state.threads) > 1:
                raise ValueError(f"task {pid}: threads in a nested pid namespace are not "
                                 "supported")
            levels = [int(p) for p in ns.status_field(pid, "NSpid")[depth:]]
            entry.tasks.add(pid=levels[0], ns_pid=levels)
        ctx.images.write("pidns", [entry], id=ns_id)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from engine import ns
    entries = {i: ctx.images.read_one("pidns", id=i) for i in ctx.images.ids("pidns")}
    if not entries:
        return
    levels, ns_of = {}, {}
    # A root that is the init of its own pid namespace: the images' pids
    # are at its level; the host pid pstree picked is the outermost.
    host = {image: mine for mine, image in ctx.provided("tasks").image_pids.items()}
    for ns_id, entry in entries.items():
        image, depth = f"pidns-{ns_id}.img", _depth(ns_id, entries)
        for i, t in enumerate(entry.tasks):
            where = f"{image}: tasks {i}"
            if len(t.ns_pid) != depth + 1:
                raise ImageError(where, f"{len(t.ns_pid)} levels, the namespace is at "
                                        f"depth {depth}")
            if t.ns_pid[0] != t.pid or not all(0 < p for p in t.ns_pid):
                raise ImageError(where, f"ns_pid {list(t.ns_pid)} does not start with "
                                        f"pid {t.pid}")
            pid = host.get(t.pid, t.pid)
            levels[pid] = list(reversed(t.ns_pid)) + ([pid] if host else [])
            ns_of[pid] = ns_id
    tasks = ctx.provided("tasks").entries
    by_pid = {e.pid: e for e in tasks}
    clone_args = {}                 # pid -> (clone flags, its pid at every level)
    ctx.provide("pidns", clone_args)
    for pid, tids in levels.items():
        if pid not in by_pid:
            raise ImageError(f"pidns-{ns_of[pid]}.img", f"task {pid} is not in pstree.img")
        entry, ppid = entries[ns_of[pid]], by_pid[pid].ppid
        where = f"pidns-{ns_of[pid]}.img: task {pid}"
        if tids[0] != 1:
            if ns_of.get(ppid) != ns_of[pid]:
                raise ImageError(where, "forked into its pid namespace from outside it "
                                        "(not supported)")
            clone_args[pid] = (0, tids)
            continue
        if ns_of.get(ppid, 0) != entry.parent_id or ppid == 0:
            raise ImageError(where, "the init of its pid namespace, but its parent is "
                                    "not in the parent namespace")
        if not entry.owner_id:
            clone_args[pid] = (ns.CLONE_NEWPID, tids)
            continue
        clone_args[pid] = (0, tids)
        p_id, make, leave = ns_of[pid], f"pidns:make:{ns_of[pid]}", f"pidns:leave:{ns_of[pid]}"
        siblings = [e.pid for e in tasks if e.ppid == ppid and e.pid != pid]
        # The fork in between is the init's alone: pstree forks task P after
        # the nodes providing ("pidns", P).
        graph.add(Node(key=make, plugin="pidns", pid=ppid, data=("make", p_id, entry),
                       after=[("task", ppid), ("userns", entry.owner_id)],
                       provides=[("pidns", pid)],
                       label=f"task {ppid} joins a new pid namespace {p_id} made inside "
                             f"user namespace {entry.owner_id}, for its children"))
        graph.add(Node(key=leave, plugin="pidns", pid=ppid, data=("leave",),
                       after=[("task", pid)], provides=[("pidns", s) for s in siblings],
                       label=f"task {ppid} forks into its own pid namespace again"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine import ns
    if node.data[0] == "make":
        _make(ctx, node.data[1], node.data[2])
    else:
        fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            ns.setns(fd, "pid")
        finally:
            os.close(fd)
    return True


# --- helpers -----------------------------------------------------------------

def _make(ctx, ns_id, entry) -> None:
    """Join, for our children, a new pid namespace owned by user namespace
    entry.owner_id. A helper child makes it from inside that one; we take
    it through the helper's pidfd (PIDFD_GET_PID_FOR_CHILDREN_NAMESPACE):
    /proc/HELPER/ns/pid_for_children gives ENOENT while the namespace has
    no init yet (the kernel's pidns_for_children_get)."""
    import fcntl

    from engine import ns
    user_fd = ns.open_published(ctx, ("userns", entry.owner_id))

    def make() -> None:
        ns.setns(user_fd, "user")
        ns.unshare(ns.CLONE_NEWPID)

    try:
        with ns.helper(make, f"pid namespace {ns_id}") as (helper, _):
            pidfd = os.pidfd_open(helper)
            try:
                fd = fcntl.ioctl(pidfd, PIDFD_GET_PID_FOR_CHILDREN_NAMESPACE)
            finally:
                os.close(pidfd)
            try:
                ns.setns(fd, "pid")
            finally:
                os.close(fd)
    finally:
        os.close(user_fd)


def _depth(ns_id, entries) -> int:
    depth, seen = 0, set()
    while ns_id:
        if ns_id in seen or ns_id not in entries:
            raise ImageError(f"pidns-{ns_id}.img", "parent_id: missing, or the parents "
                                                   "form a cycle")
        seen.add(ns_id)
        depth, ns_id = depth + 1, entries[ns_id].parent_id
    return depth

"""pidfd: fds naming a process of the tree (criu/pidfd.c).

Dump: an fd whose link is ``anon_inode:[pidfd]`` becomes a PIDFD file entry
(files.img body ``pidfd``): ``nspid``, the pid its fdinfo shows (``Pid``,
-1 once the process is reaped), its f_flags without O_RDWR, as CRIU
(O_NONBLOCK is PIDFD_NONBLOCK, O_EXCL is PIDFD_THREAD), the pidfs inode
number (its low 32 bits: CRIU's field is that wide) and its SIGIO owner
(fown, filled by the files plugin).

Refused at dump, naming task, fd and pid: a pidfd of a process outside the
dumped tree (nothing would bring it back); of a thread that is not its
group's leader (threads come back in the tracer, long after the fd tables:
no pidfd_open can name one in time); of a task in a nested pid namespace,
or held by one (the pid would have to be translated between namespaces).

Restore: pidfd_open(nspid, flags) in the task holding it, in a node of its
own (``pidfd:open:ID``) that comes after the named task's fork (("task",
pid): a child is forked after its parent's ids, a zombie exits only when
its batch is done and nobody reaps it before release) and publishes the fd
as ("file", ID), which the fd-table node takes. A pidfd of a reaped
process (nspid -1) is a pidfd of a helper the holder forks, which exits at
once and is reaped (CRIU's tmp process), one helper for each pidfs inode of
the task's dead pidfds, so two pidfds of one dead process stay one process
(within one task; across tasks, one helper each). The helper's exit status
is not the dumped process's: the image has no field for it
(PIDFD_GET_INFO reports exit 0).

Refused at collect (files.img, naming the field): an nspid that is neither
-1 nor a task of pstree.img (a thread's tid included), flags other than
O_NONBLOCK, O_EXCL and O_CLOEXEC.
"""
from __future__ import annotations

import logging
import os

from engine import hookimpl
from engine.fds import claiming_fdinfo, park
from engine.graph import Node
from engine.images import ImageError

log = logging.getLogger("engine.plugins.pidfd")

LINK = "anon_inode:[pidfd]"
PIDFD_THREAD = os.O_EXCL           # include/uapi/linux/pidfd.h
PIDFD_NONBLOCK = os.O_NONBLOCK
KNOWN_FLAGS = PIDFD_NONBLOCK | PIDFD_THREAD | os.O_CLOEXEC
DEAD = -1


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if link != LINK:
        return None
    from engine.images import fdinfo
    from engine.images.proto import files_pb2
    flags = claiming_fdinfo(ctx, task.pid, fd)["flags"] & ~(os.O_CLOEXEC | os.O_ACCMODE)
    info = fdinfo.read(task.pid, fd)
    if "Pid" not in info:
        raise ValueError(f"task {task.pid}: fd {fd} ({link}): fdinfo shows no Pid")
    pid = info["Pid"]
    if pid != DEAD:
        _refuse_named(ctx, task.pid, fd, pid, info.get("NSpid", [pid]))
    entry = files_pb2.file_entry(type=files_pb2.PIDFD, id=0)
    body = entry.pidfd
    body.id, body.ino, body.flags, body.nspid = 0, stat.st_ino & 0xFFFFFFFF, flags, pid
    body.fown.uid = body.fown.euid = body.fown.signum = 0
    body.fown.pid_type = body.fown.pid = 0
    return entry


def _refuse_named(ctx, holder: int, fd: int, pid: int, nspids: list[int]) -> None:
    why = None
    if len(nspids) > 1 or len(_nspid(holder)) > 1:
        why = f"names pid {pid} across a nested pid namespace: not supported"
    elif pid not in ctx.tasks:
        tgid = _tgid(pid)
        if tgid in ctx.tasks:
            why = (f"names thread {pid} of task {tgid}, not its group leader: not "
                   "supported (threads are restored after the fd tables)")
        else:
            why = f"names pid {pid}, which is outside the dumped tree"
    if why:
        raise ValueError(f"task {holder}: fd {fd} ({LINK}): {why}")


def _nspid(pid: int) -> list[str]:
    from engine.ns import status_field
    return status_field(pid, "NSpid")


def _tgid(tid: int) -> int | None:
    from engine.ns import status_field
    try:
        return int(status_field(tid, "Tgid")[0])
    except (OSError, IndexError, ValueError):
        return None


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    pidfds = {i: e for i, e in ctx.provided("files").items() if e.HasField("pidfd")}
    if not pidfds:
        return
    tasks = {e.pid for e in ctx.provided("tasks").entries}
    for file_id, entry in pidfds.items():
        _check(file_id, entry.pidfd, tasks)
    dead: dict[int, dict[int, list[int]]] = {}     # holder -> pidfs ino -> file ids
    for file_id, holder in _holders(ctx, pidfds).items():
        body = pidfds[file_id].pidfd
        if body.nspid == DEAD:
            dead.setdefault(holder, {}).setdefault(body.ino, []).append(file_id)
            continue
        graph.add(Node(key=f"pidfd:open:{file_id}", plugin="pidfd", where="task",
                       pid=holder, data=[file_id], after=[("task", body.nspid)],
                       provides=[("file", file_id)],
                       label=f"pidfd {file_id} of {body.nspid} in {holder}"))
    for holder, by_ino in dead.items():
        ids = [i for group in by_ino.values() for i in group]
        graph.add(Node(key=f"pidfd:dead:{holder}", plugin="pidfd", where="task",
                       pid=holder, data=list(by_ino.values()),
                       provides=[("file", i) for i in ids],
                       label=f"pidfds of reaped processes in {holder} ({len(ids)})"))


@hookimpl
def engine_restore_node(ctx, node):
    files = ctx.provided("files")
    if node.key.startswith("pidfd:dead:"):
        for group in node.data:
            _open_dead(ctx, [files[i] for i in group])
        return True
    entry = files[node.data[0]]
    try:
        fd = os.pidfd_open(entry.pidfd.nspid, entry.pidfd.flags & ~os.O_CLOEXEC)
    except OSError as e:
        raise ImageError("files.img", f"PIDFD id {entry.id}: pidfd_open of "
                                      f"{entry.pidfd.nspid}: {e.strerror}") from None
    ctx.publish_fd(entry.id, park(ctx, fd))
    return True


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("pidfd"):
        return None
    # Made by this plugin's node and taken by the fd table from shared_fds;
    # reaching here means that node did not run.
    raise ImageError("files.img", f"PIDFD id {entry.id}: its pidfd was not opened")


# --- helpers -----------------------------------------------------------------

def _check(file_id: int, body, tasks: set[int]) -> None:
    where = f"files.img: PIDFD id {file_id}"
    if body.nspid != DEAD and body.nspid not in tasks:
        raise ImageError(where, f"nspid {body.nspid} is not a task in pstree.img")
    if body.flags & ~KNOWN_FLAGS:
        raise ImageError(where, f"flags {body.flags:#o} hold unknown bits "
                                f"{body.flags & ~KNOWN_FLAGS:#o}")


def _holders(ctx, pidfds: dict) -> dict[int, int]:
    """file id -> the first task (pstree order) whose fd table holds it: the
    one the files plugin opens it in (others take it from there)."""
    first_user = ctx.provided("fds").first_user
    return {fid: first_user[fid] for fid in pidfds if fid in first_user}


def _open_dead(ctx, entries: list) -> None:
    """Pidfds of one reaped process: of a helper child that exits at once,
    opened while it is a zombie, then reaped (criu/pidfd.c
    create_tmp_process)."""
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        for entry in entries:
            fd = os.pidfd_open(child, entry.pidfd.flags & ~os.O_CLOEXEC)
            ctx.publish_fd(entry.id, park(ctx, fd))
    finally:
        os.waitpid(child, 0)

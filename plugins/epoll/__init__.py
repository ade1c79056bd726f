"""epoll: epoll instances and every target registered on them (criu/eventpoll.c).

Dump: an fd whose link is ``anon_inode:[eventpoll]`` becomes an EVENTPOLL
file entry (epfd: its f_flags and one ``tfd`` entry per registration, read
from its fdinfo's ``tfd:`` lines: fd number, events, data, and the target's
sdev, inode and pos as the kernel prints them). The events mask is kept as
the kernel holds it: EPOLLET, EPOLLONESHOT, EPOLLEXCLUSIVE and EPOLLWAKEUP
are bits of it, and an EPOLLONESHOT target that already fired shows no
EPOLLIN/OUT bit (disabled) and is registered back that way.
The number a target was registered by may since have been closed or dup'ed
elsewhere: the target's open file is found by kcmp(KCMP_EPOLL_TFD) against
the fds of the tree (its own number first, then the task's other fds, then
the other tasks'), as CRIU does; its file id is filled in at dump_finish,
once every fd table has its ids (fdinfo-N.img). Refused at dump: a target
whose file is in no fd of the tree (the kernel keeps it alive only through
the epoll), a target the restoring task could not reach (held only by one
other task, so never published to it), and an epoll with targets that is
in flight in an SCM_RIGHTS queue (its targets would have to be registered
by the unix plugin's queue, which may also open its own copy of an epoll a
task holds); an empty one in flight is fine.

Restore: ``engine_restore_file`` makes an empty epoll (epoll_create1, its
O_NONBLOCK/O_ASYNC set back with F_SETFL). One node per epoll file with
targets, ``epoll:ctl:FILEID``, runs in the first task (pstree order)
holding it, after its fd table and after every target's file exists
(("file", id); an inner epoll's own node first): EPOLL_CTL_ADD of each
target, by its dumped number when that number still holds the file, else
through a copy put at that number for the call when it is free (so fdinfo
shows the same registration), else through any free number. The target is
the task's own fd holding that file id, or a copy taken from the task that
published it (a file shared by several tasks). An epoll shared by tasks is
one file: registered once. Level-triggered readiness is the kernel's own:
a target ready at restore is reported by the next epoll_wait.
A tfd with id 0 (CRIU 4.x writes none) names the target by its fd in the
epoll's task, as CRIU restores it.
Refused at collect (files.img, naming the field): a tfd naming a file id
not in files.img or the epoll itself, events with bits the kernel does not
define, EPOLLEXCLUSIVE with bits it refuses, and a target the holding task
cannot reach.
A fired one-shot is disabled again (the kernel adds EPOLLERR|EPOLLHUP to
every ADD; only a firing clears them): added waiting for anything into the
still empty epoll, fired by one epoll_wait(0) if ready; one not ready keeps
EPOLLERR|EPOLLHUP, as CRIU registers it, until the program re-arms it.
Not kept: whether an edge-triggered target's last edge was already
reported. A target with unread data at restore is reported once more, as
after any EPOLL_CTL_ADD (the kernel has no call to mark it seen); a program
using EPOLLET reads until EAGAIN, so it only wakes once for nothing.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os

from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.epoll")

LINK = "anon_inode:[eventpoll]"
PENDING = StashKey()        # dump: [(pid, epoll fd, file_entry)] whose tfd ids are to fill

KCMP_EPOLL_TFD = 7
EPOLL_CTL_ADD, EPOLL_CTL_MOD = 1, 3
EPOLLIN, EPOLLPRI, EPOLLOUT, EPOLLERR, EPOLLHUP = 0x1, 0x2, 0x4, 0x8, 0x10
EPOLLRDHUP, EPOLLEXCLUSIVE, EPOLLWAKEUP = 0x2000, 1 << 28, 1 << 29
EPOLLONESHOT, EPOLLET = 1 << 30, 1 << 31
# Every bit include/uapi/linux/eventpoll.h defines (IN..MSG, RDHUP, and the
# four input flags); EPOLL_URING_WAKE (1 << 27) is the kernel's, never a user's.
KNOWN_EVENTS = 0x7FF | EPOLLRDHUP | EPOLLEXCLUSIVE | EPOLLWAKEUP | EPOLLONESHOT | EPOLLET
# What EPOLLEXCLUSIVE may come with (fs/eventpoll.c EPOLLEXCLUSIVE_OK_BITS)
EXCLUSIVE_OK = (0x3C5 | EPOLLERR | EPOLLHUP | EPOLLWAKEUP | EPOLLET | EPOLLEXCLUSIVE)
# Every readiness a target can have: a fired one-shot is added waiting for any
WAKE_ANY = 0x7C7 | EPOLLRDHUP
# What a fired one-shot keeps (fs/eventpoll.c EP_PRIVATE_BITS)
PRIVATE_BITS = EPOLLWAKEUP | EPOLLONESHOT | EPOLLET | EPOLLEXCLUSIVE
SETFL = os.O_NONBLOCK | fcntl.FASYNC


class _EpollEvent(ctypes.Structure):
    _pack_ = 1                       # struct epoll_event is packed on x86-64
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


class _EpollSlot(ctypes.Structure):
    _fields_ = [("efd", ctypes.c_uint32), ("tfd", ctypes.c_uint32), ("toff", ctypes.c_uint32)]


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if link != LINK:
        return None
    from engine.images import fdinfo
    from engine.images.proto import files_pb2
    info = fdinfo.read(task.pid, fd)
    targets = info.get("tfd", [])
    if task.tracee is None and targets:
        # The unix plugin's in-flight fds: held by the engine, not a task.
        raise ValueError(f"in-flight fd ({link}): an epoll with {len(targets)} registered "
                         f"target(s) in an SCM_RIGHTS queue is not supported (first: fd "
                         f"{targets[0]['tfd']}); an empty one is")
    entry = files_pb2.file_entry(type=files_pb2.EVENTPOLL, id=0)
    epfd = entry.epfd
    epfd.id, epfd.flags = 0, info["flags"] & ~os.O_CLOEXEC
    epfd.fown.uid = epfd.fown.euid = epfd.fown.signum = epfd.fown.pid_type = epfd.fown.pid = 0
    for t in targets:
        epfd.tfd.add(id=0, tfd=t["tfd"], events=t["events"], data=t["data"],
                     dev=t["sdev"], inode=t["ino"], pos=t["pos"])
    if targets:
        ctx.stash.setdefault(PENDING, []).append((task.pid, fd, entry))
    return entry


@hookimpl
def engine_dump_finish(ctx):
    pending = ctx.stash.get(PENDING, [])
    if not pending:
        return
    tables = _dumped_tables(ctx)
    holders: dict[int, list[int]] = {}           # file id -> pids whose table holds it
    for pid, table in tables.items():
        for file_id in dict.fromkeys(table.values()):
            holders.setdefault(file_id, []).append(pid)
    in_flight = _in_flight(ctx)
    for pid, fd, entry in pending:
        where = f"task {pid}: fd {fd} ({LINK})"
        if entry.id in in_flight:
            # The unix plugin would send a copy it may open anew (with no
            # target) rather than this one: its restore is not ordered
            # after this task's table and our node.
            raise ValueError(f"{where}: it is also in flight in an SCM_RIGHTS queue, "
                             f"with {len(entry.epfd.tfd)} registered target(s): not supported")
        restorer = holders[entry.id][0]
        seen: dict[int, int] = {}
        for target in entry.epfd.tfd:
            toff = seen[target.tfd] = seen.get(target.tfd, -1) + 1
            target.id = _target_file(pid, fd, target.tfd, toff, tables, where)
            users = holders[target.id]
            if restorer not in users and len(users) < 2:
                raise ValueError(f"{where}: target fd {target.tfd} is a file only task "
                                 f"{users[0]} holds: task {restorer}, which restores the "
                                 "epoll, cannot reach it")


def _in_flight(ctx) -> set[int]:
    """File ids in flight in unix queues (sk-queues.img, written by the
    unix plugin's dump_finish, which runs before ours)."""
    if not ctx.images.exists("sk-queues"):
        return set()
    return {file_id for packet, _ in ctx.images.read("sk-queues")
            for scm in packet.scm for file_id in scm.rights}


def _dumped_tables(ctx) -> dict[int, dict[int, int]]:
    """pid -> {fd: file id} of every task, from the fdinfo images the files
    plugin wrote in its engine_dump_task (its own mapping is private)."""
    tables = {}
    for pid, task in ctx.tasks.items():
        files_id = task.ids.get("files_id")
        if task.zombie is None and files_id is not None:
            tables[pid] = {fi.fd: fi.id for fi in ctx.images.read("fdinfo", id=files_id)}
    return tables


def _target_file(pid: int, efd: int, tfd: int, toff: int, tables, where: str) -> int:
    """File id of the open file registered in epoll `efd` of `pid` as its
    `toff`-th target numbered `tfd`: kcmp(KCMP_EPOLL_TFD) with the fds of
    the tree, the likeliest first (criu/eventpoll.c)."""
    from engine import libc
    slot = _EpollSlot(efd, tfd, toff)
    own = tables[pid]
    candidates = [(pid, tfd)] if tfd in own else []
    candidates += [(pid, f) for f in own if f != tfd]
    candidates += [(p, f) for p, table in tables.items() if p != pid for f in table]
    for other, fd in candidates:
        r = libc.syscall("kcmp", other, pid, KCMP_EPOLL_TFD, fd, ctypes.byref(slot))
        if r == 0:
            return tables[other][fd]
        if r < 0 and ctypes.get_errno() not in (errno.EBADF, errno.ENOENT):
            raise OSError(ctypes.get_errno(), f"{where}: kcmp of target fd {tfd} with "
                                              f"fd {fd} of {other}")
    raise ValueError(f"{where}: target fd {tfd} is a file no longer in any fd of the tree")


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    files = ctx.provided("files")
    epolls = {fid: e.epfd for fid, e in files.items() if e.HasField("epfd")}
    busy = {fid for fid, epfd in epolls.items() if len(epfd.tfd)}
    if not busy:
        return
    tables, holders = _restored_tables(ctx)
    for fid in sorted(busy):
        if fid not in holders:
            raise ImageError("files.img", f"EVENTPOLL id {fid}: {len(epolls[fid].tfd)} "
                                          "targets but no task holds the epoll")
        pid = holders[fid][0]
        table = tables[pid]
        ids = [_target_id(files, table, fid, i, t) for i, t in enumerate(epolls[fid].tfd)]
        plan = [_plan_target(table, holders, fid, i, t, tid)
                for i, (t, tid) in enumerate(zip(epolls[fid].tfd, ids))]
        after = [("file", tid) for tid in ids]
        after += [f"epoll:ctl:{tid}" for tid in ids if tid in busy]
        epoll_fd = min(fd for fd, file_id in table.items() if file_id == fid)
        graph.add(Node(key=f"epoll:ctl:{fid}", plugin="epoll", where="task", pid=pid,
                       data=(fid, epoll_fd, plan), after=after,
                       label=f"epoll {fid}: {len(plan)} targets"))


def _restored_tables(ctx):
    """pid -> {fd: file id} of each task's image table (the resource
    ``fds``), and file id -> pids holding it, in pstree order."""
    tables, holders = {}, {}
    for pid, rows in ctx.provided("fds").tables.items():
        table = tables[pid] = {fd: file_id for fd, file_id, _ in rows}
        for file_id in dict.fromkeys(table.values()):
            holders.setdefault(file_id, []).append(pid)
    return tables, holders


def _target_id(files, table: dict, fid: int, i: int, target) -> int:
    """The target's file id, its values checked."""
    where = f"EVENTPOLL id {fid}: tfd {i} (fd {target.tfd})"
    file_id = target.id
    if file_id == 0:
        # CRIU 4.x writes no id: its tfd is the fd of the epoll's task that
        # holds the target (criu/eventpoll.c restores by that number).
        file_id = table.get(target.tfd)
        if file_id is None:
            raise ImageError("files.img", f"{where}: id 0 and fd {target.tfd} is not in "
                                          "the fd table of the epoll's task")
    entry = files.get(file_id)
    if entry is None or file_id == fid:
        raise ImageError("files.img", f"{where}: id {file_id} is "
                         f"{'the epoll itself' if entry else 'not in files.img'}")
    unknown = target.events & ~KNOWN_EVENTS
    if unknown:
        raise ImageError("files.img", f"{where}: events {target.events:#x} has bits "
                                      f"{unknown:#x} epoll does not define")
    if target.events & EPOLLEXCLUSIVE and (target.events & ~EXCLUSIVE_OK
                                           or entry.HasField("epfd")):
        raise ImageError("files.img", f"{where}: events {target.events:#x}: EPOLLEXCLUSIVE "
                                      "only goes with IN/OUT/ERR/HUP/WAKEUP/ET, on a non-epoll")
    return file_id


def _plan_target(table: dict, holders: dict, fid: int, i: int, target, file_id: int):
    """(events, data, dumped number, file id, fd of the task holding the
    file or None to take it from the task that publishes it)."""
    if table.get(target.tfd) == file_id:
        source = target.tfd
    else:
        source = next((fd for fd, held in table.items() if held == file_id), None)
        if source is None and len(holders.get(file_id, ())) < 2:
            # Only files in several tables are published (plugins.files).
            raise ImageError("files.img", f"EVENTPOLL id {fid}: tfd {i} (fd {target.tfd}): "
                                          f"id {file_id} is in no fd table the epoll's "
                                          "task can take it from")
    return target.events, target.data, target.tfd, file_id, source


@hookimpl
def engine_restore_node(ctx, node):
    fid, epoll_fd, plan = node.data
    fired = [p for p in plan if _fired_oneshot(p[0])]
    if fired:
        _disable(ctx, fid, epoll_fd, fired)
    for events, data, number, target_id, source in plan:
        if not _fired_oneshot(events):
            _register(ctx, fid, epoll_fd, events, data, number, target_id, source, False)
    log.debug("epoll %d (fd %d): %d targets, %d fired one-shots", fid, epoll_fd, len(plan),
              len(fired))
    return True


def _disable(ctx, fid: int, epoll_fd: int, fired: list) -> None:
    """Fired one-shots, disabled again. The kernel adds EPOLLERR|EPOLLHUP to
    every ADD and only a firing clears the mask: each is added first, into
    the still empty epoll, waiting for anything; one epoll_wait(0) fires
    those ready (their event was reported before the dump); the others are
    set to their dumped mask (+ERR|HUP, as CRIU registers them)."""
    import select
    from engine.images import fdinfo
    held = [_register(ctx, fid, epoll_fd, events | WAKE_ANY, data, number, target_id,
                      source, True) + (events, data)
            for events, data, number, target_id, source in fired]
    try:
        ep = select.epoll.fromfd(os.dup(epoll_fd))
        try:
            ep.poll(0, len(fired))
        finally:
            ep.close()
        with open(f"/proc/self/fdinfo/{epoll_fd}", "rb") as f:
            now = {(t["tfd"], t["data"]): t["events"] for t in fdinfo.parse(f.read())["tfd"]}
        for used, _, events, data in held:
            if now.get((used, data), 0) & WAKE_ANY:
                _ctl(epoll_fd, used, events, data, EPOLL_CTL_MOD)
    finally:
        for _, copy, _, _ in held:
            if copy is not None:
                os.close(copy)


def _fired_oneshot(events: int) -> bool:
    return bool(events & EPOLLONESHOT) and not events & ~PRIVATE_BITS


def _register(ctx, fid, epoll_fd, events, data, number, target_id, source, keep):
    """EPOLL_CTL_ADD of one target; with `keep`, (number used, copy to close)."""
    taken = ctx.take_fd(target_id) if source is None else None
    try:
        ctx.clear_number(number)       # the engine's own fds go elsewhere
        used, copy = _add(epoll_fd, number, source if taken is None else taken, events, data)
    except OSError as e:
        raise OSError(e.errno, f"epoll {fid}: EPOLL_CTL_ADD of fd {number} (file id "
                               f"{target_id}, events {events:#x}): {e.strerror}") from None
    finally:
        if taken is not None:
            os.close(taken)
    if keep:
        return used, copy
    if copy is not None:
        os.close(copy)
    return None


def _add(epoll_fd: int, number: int, fd: int, events: int, data: int):
    """Register open file `fd` by `number` when it is there or free (the
    registration then names the dumped number), else by a free number:
    (the number used, the copy made for it or None)."""
    if fd == number:
        _ctl(epoll_fd, number, events, data)
        return number, None
    try:
        fcntl.fcntl(number, fcntl.F_GETFD)
        copy = os.dup(fd)                  # the number holds another file
    except OSError as e:
        if e.errno != errno.EBADF:
            raise
        copy = os.dup2(fd, number, inheritable=False)
    try:
        _ctl(epoll_fd, copy, events, data)
    except BaseException:
        os.close(copy)
        raise
    return copy, copy


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("epfd"):
        return None
    from engine import libc
    fd = libc.check(_epoll_create1(0), f"epoll_create1 for file id {entry.id}")
    if entry.epfd.flags & SETFL:
        fcntl.fcntl(fd, fcntl.F_SETFL, entry.epfd.flags & SETFL)
    return fd


# --- helpers -----------------------------------------------------------------

def _epoll_create1(flags: int) -> int:
    from engine import libc
    fn = libc.handle["epoll_create1"]
    fn.restype, fn.argtypes = ctypes.c_int, (ctypes.c_int,)
    return fn(flags)


def _ctl(epoll_fd: int, fd: int, events: int, data: int, op: int = EPOLL_CTL_ADD) -> None:
    from engine import libc
    fn = libc.handle["epoll_ctl"]
    fn.restype = ctypes.c_int
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_EpollEvent))
    event = _EpollEvent(events, data)
    libc.check(fn(epoll_fd, op, fd, ctypes.byref(event)), "epoll_ctl")

"""file_locks: flock, POSIX record locks and OFD locks (criu/file-lock.c, filelocks.img).

Dump: the locks the tree holds, read from the ``lock:`` lines of each fd's
fdinfo (an fd on an inode /proc/locks lists, read once per dump). The
kernel shows there a flock and an OFD lock on every fd of the open file
that owns it (in any task) and a POSIX lock on the fds of its owner (the
process) that reach the open file it was taken through; each lock is
written once to filelocks.img, one file_lock_entry (CRIU's fields: flag
FL_POSIX/FL_FLOCK/FL_OFD, type F_RDLCK/F_WRLCK, pid and fd of the task
and fd that take it back, start, len; len 0 is "to the end of the file"),
as CRIU 4.2 writes it with --file-locks (the engine always does). A flock
is taken back by the task /proc/locks names as its taker when that task
holds the file (so its lines read the same), else by its first holder.
Refused at dump, naming the task and the lock: leases and NFS delegations
(F_SETLEASE: a lease is broken by another opener, a state no call can
set), a lock on an fd that is not a regular file or directory, a thread
blocked waiting for a lock (flock without LOCK_NB, F_SETLKW,
F_OFD_SETLKW: the freeze interrupted its wait, and the waiter it was is
gone from /proc/locks), a flock or POSIX lock /proc/locks gives to a task
of the tree that no fd of the tree shows (its file kept only by a mapping
or a unix socket queue).

Restore, in the tracer, after the task's memory (mem opens and closes the
mapped files in the task, and any close drops the task's POSIX locks on
that file) and threads: each lock by remote syscall in the task, on its
dumped fd, in dumped order (the fdinfo lines then come in the same order):
flock(LOCK_SH|LOCK_EX | LOCK_NB), fcntl(F_SETLK), fcntl(F_OFD_SETLK). A
lock someone else holds now (the dumped tree itself, after a dump with
--leave-running, for a write lock) is never waited for: the restore fails
in one line naming the task, fd, file and range, and every task is killed.
Read locks, and a flock LOCK_SH, are shared: those come back beside the
running original's.
Refused at collect (filelocks.img, naming the entry and field): a task
not alive in pstree.img, an fd not in its fd table, a file that is not
REG, a kind other than POSIX/FLOCK/OFD (leases: not restored), a type
other than read/write, a negative start or length, a range past the
largest offset, a flock with a range, a write lock on an fd opened
read-only (or a read lock on one opened write-only), a second entry for
one lock.
Not kept: the order of the ``lock:`` lines of one fd that shows locks
taken back by two tasks (an OFD lock of a shared file and a POSIX lock of
one of its holders): each task takes its own in dumped order; the pid
/proc/locks shows for a flock whose taker has left the tree (a daemon's
parent): the flock holds, under its new taker's pid.
Essential: with it disabled, a dump would drop the locks silently.
"""
from __future__ import annotations

import errno
import logging
import os
import struct

from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.file_locks")

IMAGE = "filelocks.img"
# criu/include/file-lock.h
FL_POSIX, FL_FLOCK, FL_OFD, FL_LEASE = 1, 2, 4, 8
KIND_FLAG = {"POSIX": FL_POSIX, "FLOCK": FL_FLOCK, "OFDLCK": FL_OFD}
FLAG_NAME = {FL_POSIX: "POSIX", FL_FLOCK: "flock", FL_OFD: "OFD"}
F_RDLCK, F_WRLCK = 0, 1
TYPE_OF = {"READ": F_RDLCK, "WRITE": F_WRLCK}
TYPE_NAME = {F_RDLCK: "read", F_WRLCK: "write"}
LOCK_SH, LOCK_EX, LOCK_NB = 1, 2, 4
F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW = 6, 7, 37, 38
OFFSET_MAX = (1 << 63) - 1
SYS_FCNTL, SYS_FLOCK = 72, 73              # x86-64
FLOCK_STRUCT = "<hhxxxxqqixxxx"            # struct flock: type, whence, start, len, pid

_DUMP = StashKey()          # dump: the tree-wide reading (_Dump)


class _Dump:
    def __init__(self):
        self.proc_locks = _proc_locks()
        self.inodes = {(lock["dev"], lock["ino"]) for lock in self.proc_locks}
        self.seen: list[dict] = []       # every fdinfo lock line of the tree, parsed


# --- registration ------------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    registry.register(ImageKind("filelocks", IMAGE, 0x54323616,
                                "engine.images.proto.file_lock_pb2", "file_lock_entry",
                                magic_name="FILE_LOCKS"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_task(ctx, task):
    if task.zombie is not None:
        return               # a zombie holds no file
    dump = ctx.stash.get(_DUMP, None)
    if dump is None:
        dump = ctx.stash[_DUMP] = _Dump()
    for thread in task.state.threads:
        _refuse_waiter(task.pid, thread)
    if not dump.inodes:
        return
    from engine.images import fdinfo
    pid = task.pid
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        fd = int(name)
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) not in dump.inodes:
            continue
        for order, line in enumerate(fdinfo.read(pid, fd).get("lock", [])):
            lock = _parse(line)
            text = " ".join(line.split()[1:])            # without its number
            where = f"task {pid}: fd {fd} ({link})"
            if lock is None or lock["kind"] not in KIND_FLAG:
                raise ValueError(f"{where}: file lease or delegation ({text}): not supported")
            if not _is_regular(st.st_mode):
                raise ValueError(f"{where}: a file lock ({text}) on a file that is not "
                                 "regular: not supported")
            dump.seen.append(dict(lock, pid=pid, fd=fd, order=order, link=link))


@hookimpl
def engine_dump_finish(ctx):
    dump = ctx.stash.get(_DUMP, None)
    if dump is None or not dump.seen:
        if dump is not None:
            _refuse_unseen(ctx, dump)
        return
    from engine.images.proto import file_lock_pb2
    _refuse_unseen(ctx, dump)
    tables = _dumped_tables(ctx)
    chosen: dict[tuple, dict] = {}
    for lock in dump.seen:
        file_id = tables[lock["pid"]][lock["fd"]]
        if lock["kind"] == "POSIX":
            key = ("POSIX", lock["pid"], file_id, lock["type"], lock["start"], lock["end"])
        else:                            # the open file's own, whoever holds it
            key = (lock["kind"], file_id, lock["type"], lock["start"], lock["end"])
        held = chosen.get(key)
        if held is None or _better_taker(lock, held):
            chosen[key] = lock
    # Dumped order: by task (pstree order), then fd, then the fdinfo line order.
    rank = {pid: i for i, pid in enumerate(ctx.tasks)}
    entries = []
    for lock in sorted(chosen.values(), key=lambda k: (rank[k["pid"]], k["fd"], k["order"])):
        end = lock["end"]
        length = 0 if end is None else end - lock["start"] + 1
        entries.append(file_lock_pb2.file_lock_entry(
            flag=KIND_FLAG[lock["kind"]], type=TYPE_OF[lock["type"]], pid=lock["pid"],
            fd=lock["fd"], start=lock["start"], len=length))
    ctx.images.write("filelocks", entries)
    log.debug("%d file locks", len(entries))


def _better_taker(lock: dict, held: dict) -> bool:
    """A flock is best taken back by the task /proc/locks names (its lines
    then read the same); otherwise the first holder keeps it."""
    return (lock["kind"] == "FLOCK" and lock["pid"] == lock["owner"]
            and held["pid"] != held["owner"])


def _refuse_waiter(pid: int, thread) -> None:
    """A thread the freeze took out of a wait for a lock: its syscall is set
    to restart (ax = orig_ax), and no /proc file says the wait any more."""
    regs = thread.regs
    if regs.ax != regs.orig_ax:
        return
    who = pid if thread.tid == pid else f"{pid} (thread {thread.tid})"
    if regs.orig_ax == SYS_FLOCK and not regs.si & LOCK_NB:
        what = f"flock on fd {regs.di}"
    elif regs.orig_ax == SYS_FCNTL and regs.si in (F_SETLKW, F_OFD_SETLKW):
        what = f"{'F_SETLKW' if regs.si == F_SETLKW else 'F_OFD_SETLKW'} on fd {regs.di}"
    else:
        return
    raise ValueError(f"task {who}: blocked waiting for a file lock ({what}): not supported")


def _refuse_unseen(ctx, dump: _Dump) -> None:
    """A flock or POSIX lock /proc/locks gives to a task of the tree that
    no fd of the tree shows: its file is kept by a mapping or a queue."""
    seen = {(k["kind"], k["owner"], k["dev"], k["ino"], k["type"], k["start"], k["end"])
            for k in dump.seen}
    for lock in dump.proc_locks:
        if lock["owner"] in ctx.tasks and lock["kind"] in ("FLOCK", "POSIX") and (
                lock["kind"], lock["owner"], lock["dev"], lock["ino"], lock["type"],
                lock["start"], lock["end"]) not in seen:
            raise ValueError(f"task {lock['owner']}: a file lock ({lock['text']}) that no fd "
                             "of the tree shows (its file is held by a mapping or a unix "
                             "socket queue): not supported")


def _dumped_tables(ctx) -> dict[int, dict[int, int]]:
    """pid -> {fd: file id}, from the fdinfo images the files plugin wrote."""
    tables = {}
    for pid, task in ctx.tasks.items():
        files_id = task.ids.get("files_id")
        if task.zombie is None and files_id is not None:
            tables[pid] = {fi.fd: fi.id for fi in ctx.images.read("fdinfo", id=files_id)}
    return tables


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    if not ctx.images.exists("filelocks"):
        return
    entries = ctx.images.read("filelocks")
    alive = {task.pid for task in ctx.provided("tasks").alive}
    tables = {pid: {fd: file_id for fd, file_id, _ in rows}
              for pid, rows in ctx.provided("fds").tables.items()}
    files = ctx.provided("files")
    by_task: dict[int, list] = {}
    taken: set[tuple] = set()
    for i, e in enumerate(entries):
        file_id = _check_entry(i, e, alive, tables, files)
        owner = e.pid if e.flag == FL_POSIX else 0       # flock, OFD: the open file's
        key = (e.flag, owner, file_id, e.start, e.len)
        if key in taken:
            raise ImageError(IMAGE, f"entry {i}: a second entry for the {FLAG_NAME[e.flag]} "
                                    f"lock of file id {file_id} on {_range(e.start, e.len)}")
        taken.add(key)
        path = files[file_id].reg.name
        by_task.setdefault(e.pid, []).append((e.flag, e.type, e.fd, e.start, e.len, path))
    for pid, locks in by_task.items():
        graph.add(Node(key=f"file_locks:{pid}", plugin="file_locks", pid=pid, data=locks,
                       label=f"{len(locks)} file locks of {pid}"))


def _check_entry(i: int, e, alive: set, tables: dict, files: dict) -> int:
    """The entry's file id, every value checked."""
    where = f"entry {i}"
    if e.pid not in alive:
        raise ImageError(IMAGE, f"{where}: pid {e.pid} is not a live task of pstree.img")
    file_id = tables.get(e.pid, {}).get(e.fd)
    if file_id is None:
        raise ImageError(IMAGE, f"{where}: fd {e.fd} is not in the fd table of task {e.pid}")
    if e.flag == FL_LEASE:
        raise ImageError(IMAGE, f"{where}: flag {e.flag} (a lease): leases are not restored")
    if e.flag not in FLAG_NAME:
        raise ImageError(IMAGE, f"{where}: flag {e.flag} is no lock kind (POSIX 1, flock 2, "
                                "OFD 4)")
    if e.type not in TYPE_NAME:
        raise ImageError(IMAGE, f"{where}: type {e.type} is neither F_RDLCK (0) nor F_WRLCK (1)")
    if e.start < 0 or e.len < 0:
        raise ImageError(IMAGE, f"{where}: start {e.start}, len {e.len}: negative")
    if e.len and e.start + e.len - 1 > OFFSET_MAX:
        raise ImageError(IMAGE, f"{where}: start {e.start}, len {e.len}: past the largest "
                                "file offset")
    if e.flag == FL_FLOCK and (e.start or e.len):
        raise ImageError(IMAGE, f"{where}: a flock has no range (start {e.start}, len {e.len})")
    entry = files.get(file_id)
    if entry is None or not entry.HasField("reg"):
        raise ImageError(IMAGE, f"{where}: fd {e.fd} of task {e.pid} is not a regular file")
    mode = entry.reg.flags & os.O_ACCMODE
    if e.flag != FL_FLOCK and mode == (os.O_RDONLY if e.type == F_WRLCK else os.O_WRONLY):
        raise ImageError(IMAGE, f"{where}: a {TYPE_NAME[e.type]} lock on fd {e.fd}, opened "
                                f"{'read' if mode == os.O_RDONLY else 'write'}-only")
    return file_id


@hookimpl
def engine_restore_node(ctx, node):
    from engine.errors import RestoreError
    from engine.tracer import task_batch
    bt = task_batch(ctx.tracees[node.pid])
    calls = []
    for flag, ltype, fd, start, length, path in node.data:
        if flag == FL_FLOCK:
            op = (LOCK_SH if ltype == F_RDLCK else LOCK_EX) | LOCK_NB
            calls.append(bt.call(SYS_FLOCK, fd, op, check=False))
        else:
            cmd = F_SETLK if flag == FL_POSIX else F_OFD_SETLK
            arg = struct.pack(FLOCK_STRUCT, ltype, os.SEEK_SET, start, length, 0)
            calls.append(bt.call(SYS_FCNTL, fd, cmd, arg, check=False))
    results = bt.run()
    for index, (flag, ltype, fd, start, length, path) in zip(calls, node.data):
        r = results[index]
        if r < 0:
            what = f"{FLAG_NAME[flag]} {TYPE_NAME[ltype]} lock"
            if flag != FL_FLOCK:
                what += f" on {_range(start, length)}"
            why = ("someone else holds a conflicting lock now"
                   if -r in (errno.EAGAIN, errno.EACCES) else os.strerror(-r))
            raise RestoreError(f"task {node.pid}: fd {fd} ({path}): {what}: {why}")
    log.debug("task %d: %d file locks", node.pid, len(node.data))
    return True


# --- helpers -----------------------------------------------------------------

def _parse(text: str) -> dict | None:
    """One lock as /proc/locks and fdinfo print it (fs/locks.c
    lock_get_status): "1: POSIX  ADVISORY  WRITE 1234 fe:00:567 100 199";
    None for a lease or delegation, or anything else it cannot read."""
    fields = text.split()
    if fields[1] == "->":
        fields = fields[:1] + fields[2:]
    if len(fields) != 8 or fields[2] != "ADVISORY" or fields[3] not in TYPE_OF:
        return None
    major, minor, ino = fields[5].split(":")
    return {"kind": fields[1], "type": fields[3], "owner": int(fields[4]),
            "dev": os.makedev(int(major, 16), int(minor, 16)), "ino": int(ino),
            "start": int(fields[6]), "end": None if fields[7] == "EOF" else int(fields[7]),
            "text": " ".join(fields[1:])}


def _proc_locks() -> list[dict]:
    """Every lock /proc/locks lists (waiters left out: a waiter of the tree
    is seen in its registers), leases and delegations as kind only."""
    out = []
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if fields[1] == "->":
                continue
            lock = _parse(line)
            if lock is None:
                major, minor, ino = fields[5].split(":")
                lock = {"kind": fields[1], "owner": None, "text": " ".join(fields[1:]),
                        "dev": os.makedev(int(major, 16), int(minor, 16)), "ino": int(ino)}
            out.append(lock)
    return out


def _is_regular(mode: int) -> bool:
    import stat
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def _range(start: int, length: int) -> str:
    return f"bytes {start}-EOF" if length == 0 else f"bytes {start}-{start + length - 1}"

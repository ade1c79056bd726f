"""files: fd tables (fdinfo-N.img) and regular files (files.img REG entries).

Dump: every fd of a task is offered to the plugins through ``engine_dump_fd``
(first claim wins; this plugin is the catch-all for anything with a path:
regular files, directories, devices such as /dev/null). fds sharing one open
file description (dup, fork) get one file id, found with kcmp(KCMP_FILE) as
CRIU does (criu/files.c), so they share one offset after restore.

Each open file's owner for SIGIO (F_GETOWN_EX, F_GETSIG, F_GETOWNER_UIDS on a
copy of the fd) goes in its body's fown, whatever plugin claimed it.

A file renamed after it was opened is dumped under its current name, the one
/proc shows (as CRIU does). An O_PATH|O_NOFOLLOW fd of a symlink is the
link itself, checked by lstat. Refused at dump: two processes sharing one
fd table (CLONE_FILES: the engine forks tasks with tables of their own),
and an fd of /proc/N whose task N is gone (CRIU's dead-pid helper task).

Restore: one node per task opens its whole fd table in the task itself: each
file id is opened once through ``engine_restore_file`` and dup'ed to every fd
that shares it. An open file held by several tasks is made by the first (in
pstree order) and taken by the others, whose tables come after its table. Every value goes back through the syscall that checks it
(open, lseek, F_SETFL, F_SETSIG, F_SETOWN_EX under the owner's own uids, as
criu/files.c restore_fown), never around it; what no dump can hold (open-time
flags, an fd twice, an offset past 2^63) is refused at collect, naming the
image and entry. A regular file that is gone, or whose size or mode changed
since the dump, is refused (criu/files-reg.c checks the same), never silently
reopened. Helpers kept open meanwhile (pipe ends) are parked above the
table's fds (engine.fds.park), the soft RLIMIT_NOFILE raised if they need it.

A regular file deleted while open is saved by its data in ghost-file-N.img
and restored deleted (plugins/files/ghost.py: never more privileged than the
tasks holding it, never through a link the engine did not make).

A file deleted while mapped (no fd of the tree on it) is saved the same
way (criu/files-reg.c, as a ghost too): one REG entry and one ghost per
inode, however many VMAs and tasks map it, named by those VMAs' shmid
(claimed here, before the mem plugin writes them). Restore remakes each
such ghost once, in the engine at collect, and publishes it as the
resource ``mapped-ghosts`` (file id -> /proc/ENGINE/fd/N), from which the
mem plugin maps it: every mapping of it is one inode again. A deleted file
both mapped and held open is refused at dump (the fd's ghost and the
mapping's would be two inodes). (plugins/files/mapped.py)
"""
from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import stat as st
import struct

import attrs

from engine import hookimpl
from engine.images.entries import add_file
from engine.fds import (CLAIMING, FD_FLOORS, KCMP_FILES, claiming_fdinfo, fdinfo,
                        kcmp_sharer, room_for)
from engine.graph import Node
from engine.images import ImageError
from engine.stash import StashKey
from plugins.files import mapped

from .refuse import refuse_dead_proc
from .ghost import GHOST_LIMIT, REMAPS, check_ghosts, dump_ghost, open_ghost

log = logging.getLogger("engine.plugins.files")

# dump: (dev, ino, pos, flags) -> fds already given a file id, in kcmp order
SEEN = StashKey()
TABLES = StashKey()         # dump: pids with an fd table, in kcmp(KCMP_FILES) order
SHARED = StashKey()         # restore: file ids in the fd tables of several tasks
OWNERS = StashKey()         # restore: file id -> its fown_entry, for files with an owner
DELETED = " (deleted)"

F_SETSIG, F_GETSIG, F_SETOWN_EX, F_GETOWN_EX, F_GETOWNER_UIDS = 10, 11, 15, 16, 17
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
_FOWN_BODY: dict[int, str] = {}     # file type -> its body field holding a fown
KCMP_FILE = 0
# Flags that only mean something at open time; CRIU drops them too.
OPEN_ONLY = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY
O_PATH = getattr(os, "O_PATH", 0o10000000)
MAX_OFF = (1 << 63) - 1


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("remap-fpath", "remap-fpath.img", 0x59133954, P + "files_pb2",
                                "remap_file_path_entry", magic_name="REMAP_FPATH"))
    registry.register(ImageKind("ghost-file", "ghost-file-{id}.img", 0x52583605, P + "files_pb2",
                                "ghost_chunk_entry", head="ghost_file_entry", magic_name="GHOST_FILE",
                                payload="len"))


@hookimpl
def engine_addoption(parser):
    parser.add_argument("--ghost-limit", type=_size, default=GHOST_LIMIT, metavar="SIZE",
                        help="dump: largest data (bytes, or with K, M, G) of a deleted "
                             "file saved in the images (CRIU's option; default 1M)")


def _size(text: str) -> int:
    """CRIU's --ghost-limit sizes: a number of bytes, or with K, M or G."""
    import argparse
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (bytes, or with K, M, G)")
    return int(digits) * scale


@attrs.frozen
class FdTables:
    """The resource ``fds``: every live task's fd table as fdinfo-N.img
    holds it, checked (collect), for the plugins that order or place work
    by it."""
    tables: dict        # pid -> [(fd, file id, FD_CLOEXEC)], tasks in pstree order
    first_user: dict    # file id -> the first task (pstree order) holding it


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_task(ctx, task):
    if task.zombie is not None:
        return           # a zombie has no fds, fs or memory
    pid = task.pid
    other = kcmp_sharer(ctx.stash.setdefault(TABLES, []), pid, KCMP_FILES)
    if other is not None:
        # CRIU gives them one files_id and clones the second with
        # CLONE_FILES; the engine's forks do not share tables (yet)
        raise ValueError(f"task {pid}: shares its fd table with task {other} "
                         "(CLONE_FILES): not restored yet")
    fds = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
    # (st_dev, st_ino, pos, flags) -> [(pid, fd, file id, type)], across the
    # whole tree
    seen = ctx.stash.setdefault(SEEN, {})
    entries = []
    pidfd = os.pidfd_open(pid)
    try:
        for fd in fds:
            entries.append(_dump_one(ctx, task, pidfd, fd, seen))
    finally:
        os.close(pidfd)
    files_id = task.ids.setdefault("files_id", ctx.new_id())
    ctx.images.write("fdinfo", entries, id=files_id)
    mapped.claim_deleted_maps(ctx, task)


def _dump_one(ctx, task, pidfd: int, fd: int, seen: dict):
    """The fdinfo entry of one fd, claiming its open file if it is new."""
    from engine.images.proto import files_pb2
    pid = task.pid
    link = os.readlink(f"/proc/{pid}/fd/{fd}")
    # A copy of the fd (the same open file): fstat it rather than walk
    # /proc/PID/fd/N again, and ask it for its owner.
    copy = _syscall("pidfd_getfd", pidfd, fd, 0)
    if copy < 0:
        raise OSError(ctypes.get_errno(), f"task {pid}: pidfd_getfd of fd {fd}")
    try:
        stat = os.fstat(copy)
        info = fdinfo(pid, fd)
        ctx.stash[CLAIMING] = (pid, fd, info)      # for engine_dump_fd below
        # fds on one open file have one inode, one offset and one f_flags
        # (O_CLOEXEC aside, it is the fd's): only those need kcmp.
        same_file = seen.setdefault((stat.st_dev, stat.st_ino, info["pos"],
                                     info["flags"] & ~os.O_CLOEXEC), [])
        file_id, ftype, index = _shared_with(pid, fd, same_file)
        if file_id is None:
            entry = ctx.hook.engine_dump_fd(ctx=ctx, task=task, fd=fd, link=link, stat=stat)
            if entry is None:
                raise ValueError(f"task {pid}: fd {fd} ({link}): no plugin can dump it")
            file_id, ftype = add_file(ctx, entry), entry.type
            if link.endswith(DELETED) and entry.HasField("reg"):
                dump_ghost(ctx, f"task {pid}: fd {fd}", f"/proc/{pid}/fd/{fd}",
                           file_id, stat)
                mapped.held_ghost(ctx, stat, pid, fd)
            fown = _fown_of(entry)
            if fown is not None and not info["flags"] & O_PATH:
                _dump_owner(copy, fown)
            same_file.insert(index, (pid, fd, file_id, ftype))
    finally:
        os.close(copy)
    cloexec = info["flags"] & os.O_CLOEXEC
    return files_pb2.fdinfo_entry(id=file_id, fd=fd, type=ftype,
                                  flags=fcntl.FD_CLOEXEC if cloexec else 0)


@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if not link.startswith("/"):
        return None           # sockets, pipes, anon inodes: other plugins' business
    if st.S_ISFIFO(stat.st_mode) or st.S_ISSOCK(stat.st_mode):
        return None           # FIFOs are the pipes plugin's; a socket path is no file
    if st.S_ISCHR(stat.st_mode) and (136 <= os.major(stat.st_rdev) <= 143
                                     or stat.st_rdev in (os.makedev(5, 0), os.makedev(5, 2))):
        return None           # ptys and /dev/tty are made again, not reopened: the tty plugin's
    if link.startswith("/memfd:") and link.endswith(DELETED):
        return None           # the memfd plugin's (its name always reads deleted)
    refuse_dead_proc(task.pid, fd, link, stat)
    if link.endswith(DELETED) and not st.S_ISREG(stat.st_mode):
        raise ValueError(f"task {task.pid}: fd {fd}: {link}: only regular files "
                         "can be restored deleted")
    link = link[:-len(DELETED)] if link.endswith(DELETED) else link
    info = claiming_fdinfo(ctx, task.pid, fd)
    from engine.images.entries import regular_file
    return regular_file(link, stat, flags=info["flags"] & ~os.O_CLOEXEC, pos=info["pos"])


@hookimpl
def engine_dump_finish(ctx):
    from engine.images.proto import files_pb2
    mapped.refuse_mapped_and_held(ctx)
    # shared with plugins.fs (a deleted cwd's ghost directory): the engine
    # writes remap-fpath.img once every plugin added its own
    remaps = ctx.stash.get(REMAPS, {})
    if remaps:          # no empty remap-fpath.img (ctx.entries makes the list)
        ctx.entries("remap-fpath").extend(
            files_pb2.remap_file_path_entry(orig_id=f, remap_id=g, remap_type=files_pb2.GHOST)
            for f, g in sorted(remaps.items()))


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    files = {e.id: e for e in ctx.images.read("files")} if ctx.images.exists("files") else {}
    ctx.provide("files", files)
    if ctx.images.exists("remap-fpath"):
        remaps = {}
        for i, r in enumerate(ctx.images.read("remap-fpath")):
            if r.remap_type != 1:      # GHOST; linked and procfs remaps are not written by us
                raise ImageError("remap-fpath.img", f"entry {i}: remap_type {r.remap_type} "
                                                    "is not supported")
            remaps[r.orig_id] = r.remap_id
        ctx.stash[REMAPS] = remaps
    for file_id, entry in files.items():
        if entry.HasField("reg"):
            _check_reg(file_id, entry.reg)
    import resource
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    first_user: dict[int, int] = {}
    shared = ctx.stash[SHARED] = set()
    # Found here once per file, not by every task that installs it.
    owners = ctx.stash[OWNERS] = {}
    tables = []                    # (pid, table, resources it needs)
    for task in ctx.provided("tasks").alive:
        files_id = ctx.ids(task.pid).files_id
        # every live task's is written, empty or not (CRIU's too): without
        # it the task would come back with no fds
        fdinfos = ctx.read("fdinfo", id=files_id)
        table = []                 # (fd, file id, FD_CLOEXEC), in image order
        kinds: dict = {}           # fd type -> one entry of it
        fds: set[int] = set()
        for i, fi in enumerate(fdinfos):
            fd, file_id, ftype = fi.fd, fi.id, fi.type
            entry = files.get(file_id)
            if entry is None or entry.type != ftype or fd >= fd_limit or fd in fds:
                _refuse_fdinfo(ctx, f"fdinfo-{files_id}.img: entry {i}: fd {fd}", fi,
                               fds, fd_limit)
            fds.add(fd)
            if file_id not in first_user:
                first_user[file_id] = task.pid
                fown = _fown_of(entry)
                if fown is not None and (fown.pid or fown.signum):
                    owners[file_id] = fown
            elif first_user[file_id] != task.pid:
                shared.add(file_id)
            kinds.setdefault(ftype, entry)
            table.append((fd, file_id, fi.flags & fcntl.FD_CLOEXEC))
        needs = sorted(f"file:{_type_name(entry)}" for entry in kinds.values())
        tables.append((task.pid, table, needs))
    # An open file made by another node (the first task holding it, a pipe
    # or socket a plugin makes) is taken from it (shared_fds): after the
    # nodes providing ("file", id). Tables of other tasks run in parallel.
    # Helpers other nodes keep open in a task go above its image's fds.
    ctx.stash[FD_FLOORS] = {pid: max((fd for fd, _, _ in table), default=-1) + 1
                            for pid, table, _ in tables}
    ctx.provide("fds", FdTables(tables={pid: table for pid, table, _ in tables},
                                first_user=first_user))
    check_ghosts(ctx, ctx.stash.get(REMAPS, {}), {pid: table for pid, table, _ in tables})
    mapped.remake_mapped_ghosts(ctx, files, first_user)
    for pid, table, needs in tables:
        ids = sorted({file_id for _, file_id, _ in table})
        graph.add(Node(key=f"files:table:{pid}", plugin="files", where="task",
                       pid=pid, data=table, needs=needs,
                       after=[("file", i) for i in ids],
                       provides=[("file", i) for i in ids
                                 if i in shared and first_user[i] == pid],
                       label=f"fd table of {pid} ({len(table)} fds)"))


def _refuse_fdinfo(ctx, where: str, fi, fds: set, fd_limit: int):
    entry = ctx.provided("files").get(fi.id)
    if entry is None:
        raise ImageError(where, f"file id {fi.id} is not in files.img")
    if fi.type != entry.type:
        raise ImageError(where, f"type {fi.type} but file id {fi.id} in "
                                f"files.img is {_type_name(entry)}")
    raise ImageError(where, "used twice" if fi.fd in fds else
                     f"over the open files limit ({fd_limit})")


@hookimpl
def engine_restore_node(ctx, node):
    opened: dict[int, int] = {}                    # file id -> fd number installed
    # Helpers kept open while the table is made (pipe ends) go above it.
    floor = ctx.stash[FD_FLOORS][node.pid]
    room_for(floor + len(node.data) + 64)
    shared, owners = ctx.stash[SHARED], ctx.stash[OWNERS]
    for number, file_id, cloexec in node.data:
        if file_id in opened:
            fd = os.dup(opened[file_id])
        elif file_id in ctx.shared_fds:
            # Another task made this open file first: take a copy of it.
            fd = ctx.take_fd(file_id)
        else:
            entry = ctx.provided("files")[file_id]
            fd = ctx.hook.engine_restore_file(ctx=ctx, entry=entry)
            if fd is None:
                raise ImageError("files.img", f"file id {file_id}: no plugin opens "
                                              f"type {_type_name(entry)}")
        ctx.install_fd(fd, number)
        if file_id not in opened:
            opened[file_id] = number
            if file_id in shared:
                ctx.publish_fd(file_id, number)
            if file_id in owners:
                _restore_owner(number, owners[file_id], file_id)
        fcntl.fcntl(number, fcntl.F_SETFD, cloexec)
    return True


@hookimpl
def engine_restore_finish(ctx):
    mapped.close_engine_ghosts(ctx)


@hookimpl
def engine_restore_abort(ctx, error):
    mapped.close_engine_ghosts(ctx)


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("reg"):
        return None
    reg = entry.reg
    ghost = ctx.stash.get(REMAPS, {}).get(entry.id)
    if ghost is not None:
        return open_ghost(ctx, entry, ghost)
    # an O_PATH|O_NOFOLLOW fd of a symlink is the link itself: so is its check
    link_itself = reg.HasField("mode") and st.S_ISLNK(reg.mode)
    try:
        now = os.lstat(reg.name) if link_itself else os.stat(reg.name)
    except OSError as e:
        raise ImageError("files.img", f"file id {entry.id} ({reg.name}): {e.strerror}") from None
    if reg.HasField("mode") and now.st_mode != reg.mode:
        raise ImageError("files.img", f"file id {entry.id} ({reg.name}): mode changed: "
                                      f"{reg.mode:o} -> {now.st_mode:o}")
    if reg.HasField("size") and st.S_ISREG(now.st_mode) and now.st_size != reg.size:
        raise ImageError("files.img", f"file id {entry.id} ({reg.name}): size changed: "
                                      f"{reg.size} -> {now.st_size}")
    # O_NONBLOCK: no open may block the task (a FIFO or a device put at the
    # path, issue 20); it goes as the image says once the file is checked.
    try:
        fd = os.open(reg.name, reg.flags & ~os.O_CLOEXEC & ~fcntl.FASYNC | os.O_NONBLOCK)
    except OSError as e:
        raise ImageError("files.img", f"file id {entry.id} ({reg.name}): flags "
                                      f"{reg.flags:#o}: {e.strerror}") from None
    if not reg.flags & O_PATH:
        opened = os.fstat(fd)
        if reg.HasField("mode") and opened.st_mode != reg.mode:
            os.close(fd)
            raise ImageError("files.img", f"file id {entry.id} ({reg.name}): mode changed "
                                          f"while opened: {reg.mode:o} -> {opened.st_mode:o}")
        if not reg.flags & os.O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    if reg.flags & fcntl.FASYNC:
        # open(2) keeps O_ASYNC without arming SIGIO; F_SETFL arms it.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | fcntl.FASYNC)
    if reg.pos and not reg.flags & O_PATH:
        os.lseek(fd, reg.pos, os.SEEK_SET)
    return fd


# --- helpers -----------------------------------------------------------------

def _fown_of(entry):
    """The fown_entry of a file_entry's typed body (reg, pipe, usk...), or None."""
    name = _FOWN_BODY.get(entry.type)
    if name is None:
        name = next((f.name for f, _ in entry.ListFields() if f.message_type is not None
                     and "fown" in f.message_type.fields_by_name), None)
        if name is None:
            return None
        _FOWN_BODY[entry.type] = name
    return getattr(entry, name).fown if entry.HasField(name) else None


def _dump_owner(copy: int, fown) -> None:
    """F_GETOWN_EX, F_GETSIG and F_GETOWNER_UIDS on our copy of the fd (one
    open file: one owner), as CRIU's parasite asks them in the task."""
    fown.pid_type, fown.pid = struct.unpack("ii", fcntl.fcntl(copy, F_GETOWN_EX, bytes(8)))
    fown.signum = fcntl.fcntl(copy, F_GETSIG)
    if fown.pid:
        fown.uid, fown.euid = struct.unpack("II", fcntl.fcntl(copy, F_GETOWNER_UIDS, bytes(8)))


def _restore_owner(fd: int, fown, file_id: int) -> None:
    """F_SETSIG and F_SETOWN_EX, the latter under the dumped owner's uid and
    euid (criu/files.c restore_fown): the kernel records the caller's ids and
    checks them before each signal, so setting the owner as root would let
    its SIGIO reach processes the owner could not signal."""
    try:
        if fown.signum:
            fcntl.fcntl(fd, F_SETSIG, fown.signum)
        if fown.pid:
            saved = os.getresuid()
            dumpable = _prctl(PR_GET_DUMPABLE, 0)
            os.setresuid(fown.uid, fown.euid, -1)
            try:
                fcntl.fcntl(fd, F_SETOWN_EX, struct.pack("ii", fown.pid_type, fown.pid))
            finally:
                os.setresuid(*saved)
                _prctl(PR_SET_DUMPABLE, dumpable)   # a uid change clears it
    except OSError as e:
        raise ImageError("files.img", f"file id {file_id}: fown (pid_type {fown.pid_type}, "
                                      f"pid {fown.pid}, signum {fown.signum}, uid {fown.uid}, euid "
                                      f"{fown.euid}): {e.strerror}") from None


def _syscall(name: str, *args) -> int:
    from engine import libc
    return libc.syscall(name, *args)


def _prctl(option: int, arg: int) -> int:
    from engine import libc
    return libc.prctl(option, arg, 0, 0, 0)


def _check_reg(file_id: int, reg) -> None:
    """A REG entry's name, flags and pos go to open(2) and lseek(2) as they are:
    refuse what no open file has (the kernel drops O_CREAT, O_EXCL, O_TRUNC
    and O_NOCTTY after open, so an image with them is not a dump) and an
    offset lseek cannot take."""
    where = f"files.img: file id {file_id} ({reg.name!r})"
    # names from /proc are absolute, without NUL (open(2) would end them there)
    if not reg.name.startswith("/") or "\0" in reg.name:
        raise ImageError(where, "name holds a NUL" if "\0" in reg.name else
                         "name is not an absolute path")
    where = f"files.img: file id {file_id} ({reg.name})"
    if reg.flags & OPEN_ONLY:
        raise ImageError(where, f"flags {reg.flags:#o} hold open-time flags "
                                f"{reg.flags & OPEN_ONLY:#o}, which no open file keeps")
    if reg.pos > MAX_OFF:
        raise ImageError(where, f"pos {reg.pos} is over the largest offset ({MAX_OFF})")


def _kcmp(pid1: int, fd1: int, pid2: int, fd2: int) -> int:
    """kcmp(KCMP_FILE): 0 the same open file, 1 or 2 an order between them."""
    r = _syscall("kcmp", pid1, pid2, KCMP_FILE, fd1, fd2)
    if r < 0:
        raise OSError(ctypes.get_errno(), f"kcmp of fd {fd1} of {pid1} and fd {fd2} of {pid2}")
    return r


def _shared_with(pid, fd, seen):
    """(file id, type, index) of an earlier fd of any task on the same open
    file, or (None, None, where to insert this one).

    `seen` is kept sorted in kcmp's order (as criu/kcmp-ids.c does), so a
    thousand fds on one inode cost a binary search each, not a scan.
    """
    lo, hi = 0, len(seen)
    while lo < hi:
        mid = (lo + hi) // 2
        other_pid, other_fd, file_id, ftype = seen[mid]
        order = _kcmp(pid, fd, other_pid, other_fd)
        if order == 0:
            return file_id, ftype, mid
        if order == 1:
            hi = mid
        else:
            lo = mid + 1
    return None, None, lo


def _type_name(entry) -> str:
    return entry.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_number[entry.type].name

"""pipes: anonymous pipes, FIFOs, and the bytes sitting in them (criu/pipes.c, fifo.c).

Dump: an fd whose link is ``pipe:[INODE]`` becomes a PIPE file entry
(pipe_id = the inode, flags = its f_flags; O_NONBLOCK and O_ASYNC are set
back with F_SETFL). The unread
bytes of each pipe are copied without being consumed: a copy of a read end
is taken with pidfd_getfd and tee(2)'d into a pipe of the engine's, as CRIU
does with its own pipes; they go to pipes-data.img with the buffer size.
Restore: in the first task that needs it, one pipe(2) per pipe_id, its
buffer size set with F_SETPIPE_SZ and its bytes written back in order; each
fd gets the end it had. The pipe's own two fds are parked above the task's
image fds (engine.fds.park), so no fd of the image is later put over them. Both ends are published, so the other tasks holding
the pipe take copies of the same ends (pidfd_getfd) instead of a new pipe.

A FIFO is a FIFO entry naming a REG entry (its path and flags); its bytes go
to fifo-data.img. Restore first opens the path O_RDWR (so no open blocks and
the FIFO stays alive), writes the bytes back, then opens each fd with its own
flags; the helper fd goes when the task stops.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat as st

from engine.images.entries import add_file, file_entry
from engine import hookimpl
from engine.fds import claiming_fdinfo, park, pidfd_getfd
from engine.graph import Node
from engine.images import ImageError
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.pipes")

F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
SPLICE_F_NONBLOCK = 2
SETFL = os.O_NONBLOCK | fcntl.FASYNC      # the pipe status flags a restore sets
DEFAULT_PIPE_SIZE = 16 * os.sysconf("SC_PAGE_SIZE")    # PIPE_DEF_BUFFERS pages
# pipe inode -> (pid, fd) of a read end, and the pids using it
READ_ENDS = StashKey()
USERS = StashKey()
# pipe_id -> (data, size) at restore; pipe_id -> (read fd, write fd) in a task
DATA = StashKey()
OPEN_PIPES = StashKey()
PIPE_FILES = StashKey()     # restore: pipe_id -> [(file id, is the read end)]
FIFO_DATA = StashKey()      # restore: pipe_id -> (bytes, size)
FIFO_READERS = StashKey()   # dump: fifo inode -> (pid, fd) of a read end
FIFO_HOLDERS = StashKey()   # restore, in a task: pipe_id -> helper O_RDWR fd


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("pipes-data", "pipes-data.img", 0x56453709, P + "files_pb2",
                                "pipe_data_entry", magic_name="PIPES_DATA", payload="bytes"))
    registry.register(ImageKind("fifo-data", "fifo-data.img", 0x59333054, P + "files_pb2",
                                "pipe_data_entry", magic_name="FIFO_DATA", payload="bytes"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if link.startswith("/") and st.S_ISFIFO(stat.st_mode):
        return _dump_fifo(ctx, task, fd, link, stat)
    if not link.startswith("pipe:["):
        return None
    flags = claiming_fdinfo(ctx, task.pid, fd)["flags"]
    inode = stat.st_ino
    ctx.stash.setdefault(USERS, {}).setdefault(inode, set()).add(task.pid)
    if flags & os.O_ACCMODE == os.O_RDONLY:
        ctx.stash.setdefault(READ_ENDS, {}).setdefault(inode, (task.pid, fd))
    # f_flags, as CRIU keeps them
    return file_entry("PIPE", "pipe", pipe_id=inode, flags=flags & ~os.O_CLOEXEC)


@hookimpl
def engine_dump_finish(ctx):
    from engine.images.proto import files_pb2
    users = ctx.stash.get(USERS, {})
    entries = []
    for inode, (pid, fd) in sorted(ctx.stash.get(READ_ENDS, {}).items()):
        data, size = _peek(pid, fd)
        if data:
            entries.append((files_pb2.pipe_data_entry(pipe_id=inode, bytes=len(data),
                                                      size=size), data))
    if entries or users:
        ctx.images.write("pipes-data", entries)
    fifo_entries = []
    for inode, (pid, fd) in sorted(ctx.stash.get(FIFO_READERS, {}).items()):
        data, size = _peek(pid, fd)
        if data:
            fifo_entries.append((files_pb2.pipe_data_entry(pipe_id=inode, bytes=len(data),
                                                           size=size), data))
    if fifo_entries:
        ctx.images.write("fifo-data", fifo_entries)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    files = ctx.provided("files")
    if ctx.images.exists("fifo-data"):
        ctx.stash[FIFO_DATA] = _read_data(ctx, "fifo-data")
    for file_id, entry in files.items():
        if entry.HasField("fifo"):
            reg = files.get(entry.fifo.regf_id)
            if reg is None or not reg.HasField("reg"):
                raise ImageError("files.img", f"FIFO id {file_id}: regf_id "
                                              f"{entry.fifo.regf_id} is not a REG entry")
    # CRIU leaves pipes-data.img out when no pipe holds data; one the
    # engine's dump wrote and lost is refused by engine-images.json.
    if ctx.images.exists("pipes-data"):
        ctx.stash[DATA] = _read_data(ctx, "pipes-data")
    ends = ctx.stash[PIPE_FILES] = {}
    for file_id, entry in files.items():
        if entry.HasField("pipe"):
            ends.setdefault(entry.pipe.pipe_id, []).append(
                (file_id, entry.pipe.flags & os.O_ACCMODE == os.O_RDONLY))
    _pipe_nodes(ctx, graph, files)


def _pipe_nodes(ctx, graph, files) -> None:
    """The first task (pstree order) holding an end of a pipe makes it and
    publishes both ends; every fd table holding an end comes after it (it
    provides ("file", id) for each end)."""
    pipe_of = {fid: e.pipe.pipe_id for fid, e in files.items() if e.HasField("pipe")}
    if not pipe_of:
        return
    maker: dict[int, int] = {}              # pipe_id -> pid
    for pid, table in ctx.provided("fds").tables.items():
        for _, file_id, _ in table:
            if file_id in pipe_of:
                maker.setdefault(pipe_of[file_id], pid)
    ends = ctx.stash[PIPE_FILES]
    for pipe_id, pid in maker.items():
        graph.add(Node(key=f"pipes:make:{pipe_id}", plugin="pipes", where="task", pid=pid,
                       data=pipe_id, provides=[("file", fid) for fid, _ in ends[pipe_id]],
                       label=f"pipe {pipe_id} made by {pid}"))


@hookimpl
def engine_restore_node(ctx, node):
    files = ctx.provided("files")
    rfd, wfd = _open_pipe(ctx, node.data)
    for file_id, reader in ctx.stash[PIPE_FILES][node.data]:
        _set_status(rfd if reader else wfd, files[file_id].pipe.flags)
    return True


@hookimpl
def engine_restore_file(ctx, entry):
    if entry.HasField("fifo"):
        return _open_fifo(ctx, entry)
    if not entry.HasField("pipe"):
        return None
    # A pipe no task holds, only a unix queue (an fd in flight).
    rfd, wfd = _open_pipe(ctx, entry.pipe.pipe_id)
    fd = os.dup(rfd if entry.pipe.flags & os.O_ACCMODE == os.O_RDONLY else wfd)
    _set_status(fd, entry.pipe.flags)
    return fd


def _open_pipe(ctx, pipe_id: int) -> tuple[int, int]:
    pipes = ctx.stash.setdefault(OPEN_PIPES, {})
    if pipe_id not in pipes:
        pipes[pipe_id] = _make_pipe(ctx, pipe_id)
    return pipes[pipe_id]


def _set_status(fd: int, flags: int) -> None:
    """Status flags through F_SETFL (O_ASYNC needs it to arm SIGIO)."""
    status = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, (status & ~SETFL) | (flags & SETFL))


# --- helpers -----------------------------------------------------------------

def _read_data(ctx, kind: str) -> dict[int, tuple[bytes, int]]:
    """pipe_id -> (bytes, buffer size) of pipes-data.img or fifo-data.img,
    refusing what the kernel would refuse an unprivileged task: a buffer over
    /proc/sys/fs/pipe-max-size (root's CAP_SYS_RESOURCE would let F_SETPIPE_SZ
    pass it: no bypass through an image), or more bytes than the buffer holds
    (writing them back would block the restore forever)."""
    with open("/proc/sys/fs/pipe-max-size") as f:
        max_size = int(f.read())
    out = {}
    for i, (e, payload) in enumerate(ctx.images.read(kind)):
        where = f"{kind}.img: entry {i} (pipe {e.pipe_id})"
        size = e.size if e.HasField("size") else 0
        if size > max_size:
            raise ImageError(where, f"size {size} is over /proc/sys/fs/pipe-max-size "
                                    f"({max_size})")
        room = size or DEFAULT_PIPE_SIZE
        if len(payload) > room:
            raise ImageError(where, f"bytes {len(payload)} do not fit in a pipe of "
                                    f"{room} bytes (size {size})")
        if e.pipe_id in out:
            raise ImageError(where, "a second entry for the same pipe")
        out[e.pipe_id] = (payload, size)
    return out


def _dump_fifo(ctx, task, fd, link, stat):
    from engine.images.entries import regular_file
    from engine.images.proto import files_pb2
    flags = claiming_fdinfo(ctx, task.pid, fd)["flags"]
    if flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR):
        ctx.stash.setdefault(FIFO_READERS, {}).setdefault(stat.st_ino, (task.pid, fd))
    reg_id = add_file(ctx, regular_file(link, stat, flags=flags & ~os.O_CLOEXEC, pos=0))
    entry = files_pb2.file_entry(type=files_pb2.FIFO, id=0)
    entry.fifo.id, entry.fifo.pipe_id, entry.fifo.regf_id = 0, stat.st_ino, reg_id
    return entry


def _open_fifo(ctx, entry) -> int:
    reg = ctx.provided("files")[entry.fifo.regf_id].reg
    holders = ctx.stash.setdefault(FIFO_HOLDERS, {})
    pipe_id = entry.fifo.pipe_id
    where = f"files.img: FIFO id {entry.id} ({reg.name})"
    try:
        if pipe_id not in holders:
            holder = park(ctx, os.open(reg.name, os.O_RDWR | os.O_NONBLOCK))
            if not st.S_ISFIFO(os.fstat(holder).st_mode):
                os.close(holder)
                raise ImageError(where, "is no longer a FIFO")
            holders[pipe_id] = holder
            data, size = ctx.stash.get(FIFO_DATA, {}).get(pipe_id, (b"", 0))
            if size:
                fcntl.fcntl(holder, F_SETPIPE_SZ, size)
            view = memoryview(data)
            while view:
                view = view[os.write(holder, view):]
        # The holder is a reader and a writer, so neither open blocks.
        return os.open(reg.name, reg.flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC))
    except OSError as e:
        raise ImageError(where, f"{e.strerror}") from None


def _make_pipe(ctx, pipe_id: int) -> tuple[int, int]:
    data, size = ctx.stash.get(DATA, {}).get(pipe_id, (b"", 0))
    rfd, wfd = (park(ctx, end) for end in os.pipe())
    for file_id, reader in ctx.stash[PIPE_FILES].get(pipe_id, ()):
        ctx.publish_fd(file_id, rfd if reader else wfd)
    if size:
        fcntl.fcntl(wfd, F_SETPIPE_SZ, size)
    view = memoryview(data)
    while view:
        n = os.write(wfd, view)
        view = view[n:]
    # Both originals stay until the task stops; it closes what it does not keep.
    return rfd, wfd


def _peek(pid: int, fd: int) -> tuple[bytes, int]:
    """The unread bytes of the pipe whose read end is `fd` of `pid`, unconsumed."""
    from engine import libc
    ours = pidfd_getfd(pid, fd)
    try:
        size = fcntl.fcntl(ours, F_GETPIPE_SZ)
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, size)
            n = libc.tee(ours, w, size, SPLICE_F_NONBLOCK)
            if n < 0:
                err = ctypes.get_errno()
                if err == errno.EAGAIN:          # an empty pipe
                    return b"", size
                raise OSError(err, f"tee from pipe of {pid}")
            return os.read(r, n), size
        finally:
            os.close(r)
            os.close(w)
    finally:
        os.close(ours)

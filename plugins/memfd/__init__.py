"""memfd: memfds held as fds, mapped, or in flight (criu/memfd.c, criu/shmem.c).

Dump: a memfd is one inode (memfd.img, a memfd_inode_entry per inode, found
by st_dev/st_ino across the whole tree: every fd, mapping and in-flight fd
on it names the same one) with its name, owner, mode (field 16, the
engine's own: CRIU's memfds come back 0777), size and seals (F_GET_SEALS;
F_SEAL_SEAL alone is a memfd made without MFD_ALLOW_SEALING). Its contents
are its data only (SEEK_DATA/SEEK_HOLE: the holes stay holes) in
pagemap-shmem-SHMID.img + pages-N.img, offsets as vaddr, as CRIU writes
them (shmid: the inode number). Each open file on it is a MEMFD file entry
(files.img body ``memfd``: flags, pos, inode_id). A mapping of it (found in
the task's VMAs, opened through /proc/PID/map_files) is claimed here before
the mem plugin writes mm-PID.img: status VMA_AREA_MEMFD, shmid the id of a
MEMFD file entry of its inode (one per inode, flags O_RDONLY, as CRIU's).
A task's private copies of its pages (MAP_PRIVATE, written) are the mem
plugin's, like any private file mapping's.

Refused at dump: a hugetlb memfd (or any /memfd: file not on the kernel's
shmem mount: this machine has no huge pages to remake it with), and a
writable MAP_SHARED mapping of a memfd sealed F_SEAL_WRITE or
F_SEAL_FUTURE_WRITE (seals come back before the mappings, and the kernel
refuses such a mapping then).

Restore: every inode is made at collect by the engine itself
(memfd_create with MFD_ALLOW_SEALING, ftruncate, the data written at its
offsets, fchown, fchmod, then F_ADD_SEALS: seals last, after the contents
they would forbid) and published (ctx.publish_fd, as ("memfd", inode_id));
each open file is a new open of it (/proc/self/fd of a copy taken with
pidfd_getfd), so two open files keep two offsets and one inode, and the
mem plugin maps a memfd VMA from /proc/ENGINE/fd/N (resource ``memfd``:
file id -> that path). The engine's own fds are closed when the restore
ends. Refused at collect, naming the image and field: a name memfd_create
refuses, a size over the largest file size, unknown seal bits, a hugetlb
flag, an inode_id twice or naming nothing, flags an open file cannot hold,
an offset over 2^63-1, pages past the size.
Dropped: the inode number (the kernel hands out another; mappings and
fds still share the new one); which of its pages each task had faulted in
(residency, the kernel's choice: --verify counts a memfd's pages as its
file's, engine/verify.py); sharing with a process outside the tree, which
keeps the old memfd (as with any file). The remade memfds are reached by
the tasks through the engine's pid (pidfd_getfd, /proc/ENGINE/fd/N): a
task in a pid namespace of its own with its own /proc cannot (the error
names it).
"""
from __future__ import annotations

import fcntl
import logging
import os
import stat as st
import weakref

from engine import hookimpl
from engine.fds import claiming_fdinfo
from engine.images import ImageError
from engine.images.entries import add_file, file_entry
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.memfd")

PREFIX, DELETED = "/memfd:", " (deleted)"
PAGE = 4096
VMA_AREA_MEMFD = 1 << 14                  # criu/include/image.h
VMA_FILE_SHARED = 1 << 7
MAP_SHARED, PROT_WRITE = 0x01, 0x2
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW = 0x1, 0x2, 0x4
F_SEAL_WRITE, F_SEAL_FUTURE_WRITE, F_SEAL_EXEC = 0x8, 0x10, 0x20
KNOWN_SEALS = (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE
               | F_SEAL_EXEC)
NAME_MAX = 249                            # NAME_MAX less "memfd:" (mm/memfd.c)
MAX_SIZE = (1 << 63) - 1                  # MAX_LFS_FILESIZE
O_LARGEFILE = 0o100000                    # x86-64's; Python's os.O_LARGEFILE is 0 there
# f_flags an open memfd can hold (O_CLOEXEC is the fd table's)
KNOWN_FLAGS = (os.O_ACCMODE | os.O_APPEND | os.O_NONBLOCK | O_LARGEFILE | os.O_NOATIME
               | os.O_DSYNC | os.O_SYNC | os.O_DIRECT | fcntl.FASYNC | os.O_CLOEXEC)
CHUNK = 16 << 20                          # bytes read at a time when dumping contents

# dump: (st_dev, st_ino) -> [memfd_inode_entry, copy fd held until dump_finish]
INODES = StashKey()
VMA_FILES = StashKey()      # dump: inode_id -> file id the memfd VMAs name
SHMEM_DEV = StashKey()      # dump: st_dev of the kernel's memfds
MADE = StashKey()           # restore (engine): inode_id -> its fd in the engine


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("memfd", "memfd.img", 0x48453499, P + "memfd_pb2",
                                "memfd_inode_entry", magic_name="MEMFD_INODE"))
    # CRIU's SHMEM_PAGEMAP_MAGIC is PAGEMAP_MAGIC: the same format.
    registry.register(ImageKind("pagemap-shmem", "pagemap-shmem-{id}.img", 0x56084025,
                                P + "mm_pb2", "pagemap_entry", head="pagemap_head",
                                magic_name="PAGEMAP"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if not _is_memfd(link):
        return None
    from engine.fds import pidfd_getfd
    where = f"task {task.pid}: fd {fd} ({link})"
    inode_id = _inode(ctx, where, link, stat, lambda: pidfd_getfd(task.pid, fd))
    info = claiming_fdinfo(ctx, task.pid, fd)
    return file_entry("MEMFD", "memfd", flags=info["flags"] & ~os.O_CLOEXEC, pos=info["pos"],
                      inode_id=inode_id)


@hookimpl
def engine_dump_task(ctx, task):
    """Claim the task's memfd mappings before the mem plugin writes them."""
    if task.zombie is not None:
        return
    for vma in task.state.mm.vmas:
        if not vma.path or not _is_memfd(vma.path):
            continue
        where = f"task {task.pid}: VMA {vma.start:#x}-{vma.end:#x} ({vma.path})"
        mapped = f"/proc/{task.pid}/map_files/{vma.start:x}-{vma.end:x}"
        inode_id = _inode(ctx, where, vma.path, os.stat(mapped),
                          lambda: os.open(mapped, os.O_RDONLY | os.O_CLOEXEC))
        seals = next(e for e, _ in ctx.stash[INODES].values() if e.inode_id == inode_id).seals
        if vma.flags & MAP_SHARED and vma.prot & PROT_WRITE and \
                seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
            raise ValueError(f"{where}: a writable shared mapping of a memfd sealed against "
                             "writes cannot be made again")
        files = ctx.stash.setdefault(VMA_FILES, {})
        if inode_id not in files:
            files[inode_id] = add_file(ctx, file_entry("MEMFD", "memfd", flags=os.O_RDONLY,
                                                       pos=0, inode_id=inode_id))
        vma.status |= VMA_AREA_MEMFD
        vma.shmid, vma.path = files[inode_id], None


@hookimpl
def engine_dump_finish(ctx):
    inodes = ctx.stash.get(INODES, {})
    if not inodes:
        return
    pages_id = _free_pages_id(ctx.images.dir)
    for entry, copy in inodes.values():
        _dump_contents(ctx.images.dir, entry, copy, pages_id)
        pages_id += 1
    ctx.images.write("memfd", [entry for entry, _ in inodes.values()])
    _close_copies(ctx)


@hookimpl
def engine_dump_abort(ctx, error):
    _close_copies(ctx)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    inodes = {}
    if ctx.images.exists("memfd"):
        for i, inode in enumerate(ctx.images.read("memfd")):
            _check_inode(i, inode, inodes)
            inodes[inode.inode_id] = inode
    mine = {fid: e.memfd for fid, e in ctx.provided("files").items() if e.HasField("memfd")}
    for fid, m in mine.items():
        _check_file(fid, m, inodes)
    made = ctx.stash[MADE] = {}
    # Closed at finish or abort; should the restore stop before either
    # (a later plugin's collect refusing), when the context goes.
    weakref.finalize(ctx, _close_fds, made)
    try:
        for inode_id, inode in inodes.items():
            made[inode_id] = _make(ctx, inode)
    except BaseException:
        _close_made(ctx)
        raise
    for inode_id, fd in made.items():
        ctx.publish_fd(("memfd", inode_id), fd)
    me = os.getpid()
    ctx.provide("memfd", {fid: f"/proc/{me}/fd/{made[m.inode_id]}" for fid, m in mine.items()})


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("memfd"):
        return None
    m = entry.memfd
    copy = ctx.take_fd(("memfd", m.inode_id))
    try:
        # A new open file on the same inode: its own offset and flags.
        fd = os.open(f"/proc/self/fd/{copy}", m.flags & ~os.O_CLOEXEC & ~fcntl.FASYNC)
    finally:
        os.close(copy)
    if m.flags & fcntl.FASYNC:
        # open(2) keeps O_ASYNC without arming SIGIO; F_SETFL arms it.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | fcntl.FASYNC)
    if m.pos:
        os.lseek(fd, m.pos, os.SEEK_SET)
    return fd


@hookimpl
def engine_restore_finish(ctx):
    _close_made(ctx)


@hookimpl
def engine_restore_abort(ctx, error):
    _close_made(ctx)


# --- helpers -----------------------------------------------------------------

def _is_memfd(link: str) -> bool:
    return link.startswith(PREFIX) and link.endswith(DELETED)


def _inode(ctx, where: str, link: str, stat, open_copy) -> int:
    """The inode_id of the memfd at (stat's dev, ino), its entry made (and
    a copy of it kept for its contents) the first time it is seen."""
    inodes = ctx.stash.setdefault(INODES, {})
    key = (stat.st_dev, stat.st_ino)
    if key in inodes:
        return inodes[key][0].inode_id
    _check_shmem(ctx, where, stat)
    from engine.images.proto import memfd_pb2
    copy = open_copy()
    try:
        seals = fcntl.fcntl(copy, fcntl.F_GET_SEALS)
        # An open file of our own to read it: SEEK_DATA on the task's
        # would move the task's offset.
        own = os.open(f"/proc/self/fd/{copy}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(copy)
    shmids = {e.shmid for e, _ in inodes.values()}
    shmid = stat.st_ino & 0xFFFFFFFF
    while shmid in shmids or not shmid:
        shmid = (shmid + 1) & 0xFFFFFFFF
    entry = memfd_pb2.memfd_inode_entry(
        name=link[len(PREFIX):-len(DELETED)], uid=stat.st_uid, gid=stat.st_gid,
        size=stat.st_size, shmid=shmid, seals=seals, inode_id=len(inodes) + 1,
        mode=st.S_IMODE(stat.st_mode))
    inodes[key] = [entry, own]
    return entry.inode_id


def _check_shmem(ctx, where: str, stat) -> None:
    dev = ctx.stash.get(SHMEM_DEV, None)
    if dev is None:
        probe = os.memfd_create("engine-probe", os.MFD_CLOEXEC)
        dev = ctx.stash[SHMEM_DEV] = os.fstat(probe).st_dev
        os.close(probe)
    if stat.st_dev != dev:
        raise ValueError(f"{where}: a hugetlb memfd (not on the shmem mount): not supported "
                         "(this kernel has no huge pages to remake it with)")


def _free_pages_id(image_dir) -> int:
    """A pages-N.img number no task's pagemap uses (theirs are written by now)."""
    used = [int(n[6:-4]) for n in os.listdir(image_dir)
            if n.startswith("pages-") and n.endswith(".img") and n[6:-4].isdigit()]
    return max(used, default=0) + 1


def _dump_contents(image_dir, entry, copy: int, pages_id: int) -> None:
    """The memfd's data (holes skipped), whole pages at their offsets."""
    from engine.images.pagemap import PagemapWriter
    writer = PagemapWriter(image_dir, f"shmem-{entry.shmid}", pages_id)
    try:
        for lo, hi in _data_runs(copy, entry.size):
            for at in range(lo, hi, CHUNK):
                n = min(CHUNK, hi - at)
                data = os.pread(copy, n, at)
                if len(data) < n:               # the last page, past the size
                    data += bytes(n - len(data))
                writer.add(at, data)
    finally:
        writer.close()


def _data_runs(fd: int, size: int):
    """[lo, hi) of each run of data, widened to whole pages."""
    at = 0
    while at < size:
        try:
            lo = os.lseek(fd, at, os.SEEK_DATA)
        except OSError:                       # ENXIO: no data past `at`
            return
        hi = os.lseek(fd, lo, os.SEEK_HOLE)
        lo, hi = lo // PAGE * PAGE, -(-hi // PAGE) * PAGE
        yield lo, hi
        at = hi


def _close_copies(ctx) -> None:
    for item in ctx.stash.get(INODES, {}).values():
        if item[1] is not None:
            os.close(item[1])
            item[1] = None


def _check_inode(i: int, inode, seen: dict) -> None:
    where = f"memfd.img: entry {i} (inode_id {inode.inode_id})"
    name = inode.name.encode()
    if len(name) > NAME_MAX or b"\0" in name:
        raise ImageError(where, f"name {inode.name!r}: memfd_create takes at most {NAME_MAX} "
                                "bytes and no NUL")
    if inode.size > MAX_SIZE:
        raise ImageError(where, f"size {inode.size} is over the largest file size ({MAX_SIZE})")
    if inode.seals & ~KNOWN_SEALS:
        raise ImageError(where, f"seals {inode.seals:#x} hold unknown bits "
                                f"{inode.seals & ~KNOWN_SEALS:#x}")
    if inode.hugetlb_flag:
        raise ImageError(where, f"hugetlb_flag {inode.hugetlb_flag:#x}: hugetlb memfds are "
                                "not restored")
    if inode.HasField("mode") and inode.mode & ~0o7777:
        raise ImageError(where, f"mode {inode.mode:#o} is not permission bits")
    if inode.inode_id in seen:
        raise ImageError(where, "a second entry for the same inode_id")


def _check_file(fid: int, m, inodes: dict) -> None:
    where = f"files.img: MEMFD id {fid}"
    if m.inode_id not in inodes:
        raise ImageError(where, f"inode_id {m.inode_id} is not in memfd.img")
    if m.flags & ~KNOWN_FLAGS:
        raise ImageError(where, f"flags {m.flags:#o} hold bits an open memfd cannot "
                                f"({m.flags & ~KNOWN_FLAGS:#o})")
    if m.pos > MAX_SIZE:
        raise ImageError(where, f"pos {m.pos} is over the largest offset ({MAX_SIZE})")


def _make(ctx, inode) -> int:
    """The memfd remade in the engine: contents, owner and mode, then seals."""
    fd = os.memfd_create(inode.name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, inode.size)
        _fill(ctx, inode, fd)
        os.fchown(fd, inode.uid, inode.gid)
        if inode.HasField("mode"):
            os.fchmod(fd, inode.mode)
        if inode.seals:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, inode.seals)
    except OSError as e:
        os.close(fd)
        raise ImageError(f"memfd.img: inode_id {inode.inode_id} ({inode.name})",
                         e.strerror) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fill(ctx, inode, fd: int) -> None:
    """pwrite each dumped run at its offset, cut at the size (the last page
    of a memfd whose size is not whole pages)."""
    from engine.images.pagemap import PagemapReader
    if not ctx.images.exists("pagemap-shmem", id=inode.shmid):
        return                          # no data: all holes
    pages = PagemapReader(ctx.images.dir, f"shmem-{inode.shmid}")
    try:
        view = memoryview(pages.buffer).cast("B") if pages.buffer is not None else None
        for offset, length, at in pages.runs():
            if offset + length > -(-inode.size // PAGE) * PAGE:
                raise ImageError(pages.name, f"pages at {offset:#x}+{length:#x} are past the "
                                             f"memfd's size ({inode.size})")
            part = view[at:at + min(length, inode.size - offset)]
            while part:
                n = os.pwrite(fd, part, offset)
                part, offset = part[n:], offset + n
    finally:
        pages.close()


def _close_made(ctx) -> None:
    _close_fds(ctx.stash.get(MADE, {}))


def _close_fds(made: dict) -> None:
    for fd in made.values():
        os.close(fd)
    made.clear()

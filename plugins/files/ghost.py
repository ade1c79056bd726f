"""files, ghosts: a regular file deleted while open (criu/files-reg.c's
ghost files), saved by its data only (SEEK_DATA/SEEK_HOLE chunks, as CRIU's
ghost_chunk_entry: a 2 GiB file holding 1 MiB costs 1 MiB) in
ghost-file-N.img, up to --ghost-limit bytes of data (CRIU's option and
default, 1 MiB), and named in remap-fpath.img.

Restore recreates it in its old directory (made again if it is gone or its
name was taken by a non-directory, removed after), opens it, and unlinks it
again, so the task holds a deleted file with the same content, holes, mode,
atime/mtime and offset.
Images are untrusted (issue 20): at collect a ghost must be whole and no
more privileged than a task holding it could have made it itself (owner,
group, set-id bits, by the kernel's chown/chmod rules); in the task nothing
follows a link the engine did not make (see open_ghost).
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat as st
import struct

from engine.images import ImageError
from engine.stash import StashKey

REMAPS = StashKey()         # file id -> ghost id (dump: to write; restore: read)
GHOST_LIMIT = 1 << 20     # CRIU's DEFAULT_GHOST_LIMIT, bytes of data
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100
RESOLVE_NO_SYMLINKS = 0x04
CAP_CHOWN, CAP_FOWNER, CAP_FSETID = 0, 3, 4
MAX_OFF = (1 << 63) - 1


def dump_ghost(ctx, where: str, path: str, file_id: int, stat) -> None:
    """Save the deleted file open at `path` (/proc/PID/fd/N, or a mapping's
    /proc/PID/map_files/RANGE; `where` names it in a refusal): its data
    (its holes stay holes: SEEK_DATA/SEEK_HOLE extents, as criu/files-reg.c
    copy_file_to_chunks), owner, mode, size and times in ghost-file-N.img:
    a ghost_file_entry with `chunks`, then one ghost_chunk_entry (len, off)
    per extent, its bytes after it."""
    from engine.images.proto import files_pb2
    limit = getattr(ctx.options, "ghost_limit", GHOST_LIMIT)
    chunks, total = [], 0
    with open(path, "rb", buffering=0) as f:
        for off, end in _extents(f.fileno(), stat.st_size):
            total += end - off
            # CRIU measures st_size; the data is what the image costs
            if total > limit:
                raise ValueError(f"{where}: deleted file with over {limit} "
                                 f"bytes of data is over the ghost limit (--ghost-limit)")
            data = os.pread(f.fileno(), end - off, off)
            if data:
                chunks.append((files_pb2.ghost_chunk_entry(len=len(data), off=off), data))
    ghost_id = ctx.new_id()
    g = files_pb2.ghost_file_entry(uid=stat.st_uid, gid=stat.st_gid, mode=stat.st_mode,
                                   dev=stat.st_dev & 0xFFFFFFFF, ino=stat.st_ino,
                                   chunks=True, size=stat.st_size)
    g.atim.tv_sec, g.atim.tv_usec = stat.st_atime_ns // 10**9, stat.st_atime_ns // 1000 % 10**6
    g.mtim.tv_sec, g.mtim.tv_usec = stat.st_mtime_ns // 10**9, stat.st_mtime_ns // 1000 % 10**6
    ctx.images.write("ghost-file", [g, *chunks], id=ghost_id)
    ctx.stash.setdefault(REMAPS, {})[file_id] = ghost_id


def _extents(fd: int, size: int):
    """(start, end) of each run of data in fd, up to size."""
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return          # only a hole is left
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if start >= end:
            return
        yield start, end
        off = end


def open_ghost(ctx, entry, ghost_id: int) -> int:
    """Recreate a deleted file in its old directory, open it, delete it again.

    Nothing here follows a link the engine did not make: the directory is
    opened with no symlink anywhere in its path (openat2 RESOLVE_NO_SYMLINKS),
    the file is made in it with O_EXCL|O_NOFOLLOW (or unnamed, O_TMPFILE) and
    reopened through its own fd, never by name; owner and mode go on by fd
    once it is unlinked. Its owner and mode were checked at collect
    (_ghost_denied)."""
    reg = entry.reg
    image = f"ghost-file-{ghost_id}.img"
    g, *chunks = read_ghost(ctx, ghost_id)
    parent, base = os.path.split(reg.name)
    dirfd, made = _open_directory(parent or "/", image, reg.name)
    try:
        if st.S_ISDIR(g.mode):
            return _ghost_directory(dirfd, base, entry, g, image)
        rw, name = _make_private(dirfd, base, entry.id, image, reg.name)
        try:
            fd = _fill_and_reopen(entry, rw, g, chunks, dirfd, name)
            if os.fstat(rw).st_nlink:
                os.close(fd)
                raise ImageError(image, f"{reg.name}: linked elsewhere while it was "
                                        "recreated (its directory is not ours)")
            try:
                os.fchown(rw, g.uid, g.gid)
                os.fchmod(rw, st.S_IMODE(g.mode))
                if g.HasField("mtim"):   # last: the writes above moved it
                    os.utime(rw, ns=(_ns(g.atim if g.HasField("atim") else g.mtim),
                                     _ns(g.mtim)))
            except OSError as e:
                os.close(fd)
                raise ImageError(image, f"uid {g.uid}, gid {g.gid}, mode {g.mode:o}: "
                                        f"{e.strerror}") from None
        finally:
            os.close(rw)
    finally:
        os.close(dirfd)
        _remove_made(made)
    if reg.pos:
        os.lseek(fd, reg.pos, os.SEEK_SET)
    return fd


def _ghost_directory(dirfd: int, base: str, entry, g, image: str) -> int:
    """A deleted directory (a cwd removed, plugins.fs): made private under
    its name (or beside it when taken), opened by no link, removed again,
    then given its owner, mode and times by fd."""
    reg = entry.reg
    for name in (base, f"{base}.engine-ghost.{entry.id}"):
        try:
            os.mkdir(name, 0o700, dir_fd=dirfd)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise ImageError(image, f"cannot recreate {reg.name}: {e.strerror}") from None
    else:
        raise ImageError(image, f"cannot recreate {reg.name}: its name is taken")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dirfd)
    finally:
        try:
            os.rmdir(name, dir_fd=dirfd)
        except OSError:
            pass           # replaced meanwhile: the link count check refuses it
    try:
        if os.fstat(fd).st_nlink:
            raise ImageError(image, f"{reg.name}: linked elsewhere while it was recreated")
        os.fchown(fd, g.uid, g.gid)
        os.fchmod(fd, st.S_IMODE(g.mode))
        if g.HasField("mtim"):
            os.utime(fd, ns=(_ns(g.atim if g.HasField("atim") else g.mtim), _ns(g.mtim)))
    except OSError as e:
        os.close(fd)
        raise ImageError(image, f"uid {g.uid}, gid {g.gid}, mode {g.mode:o}: "
                                f"{e.strerror}") from None
    except ImageError:
        os.close(fd)
        raise
    return fd


def _ns(tv) -> int:
    return tv.tv_sec * 10**9 + tv.tv_usec * 1000


def _fill_and_reopen(entry, rw: int, g, chunks, dirfd: int, name: str | None) -> int:
    """Write the content (its size first, so what no chunk covers stays a
    hole), open the file again with the dumped flags through its fd (the
    very inode made, not whatever the path names by now), and take its
    name away."""
    reg = entry.reg
    try:
        os.ftruncate(rw, g.size)
        for chunk, data in chunks:
            view, off = memoryview(data), chunk.off
            while view:
                n = os.pwrite(rw, view, off)
                view, off = view[n:], off + n
        try:
            return os.open(f"/proc/self/fd/{rw}", reg.flags & ~os.O_CLOEXEC)
        except OSError as e:
            raise ImageError("files.img", f"file id {entry.id} ({reg.name}): flags "
                                          f"{reg.flags:#o}: {e.strerror}") from None
    finally:
        if name is not None:
            try:
                os.unlink(name, dir_fd=dirfd)
            except FileNotFoundError:
                pass           # moved away: the link count check refuses it


def _open_directory(path: str, image: str, name: str):
    """(an O_PATH fd of directory `path` reached through no symbolic link,
    the directories made to reach it): the dumped name came from /proc
    (d_path), which holds none, so one found now was put there since,
    possibly by whoever owns a directory on the way. A directory gone since
    the dump is made again (0700, root's until removed) and one whose name a
    non-directory took is made beside it and swapped in (RENAME_EXCHANGE),
    so the ghost's deleted name is the dumped one; _remove_made undoes both
    once the ghost is unlinked (criu/files-reg.c makes missing directories
    too)."""
    fd = _openat2(AT_FDCWD, path)
    if fd >= 0:
        return fd, []
    if ctypes.get_errno() not in (errno.ENOENT, errno.ENOTDIR):
        _refuse_directory(image, name)
    made: list = []             # (parent fd, name, name of what was there or None)
    fd = _openat2(AT_FDCWD, "/")
    try:
        for part in [p for p in path.split("/") if p]:
            sub = _openat2(fd, part)
            if sub < 0 and ctypes.get_errno() in (errno.ENOENT, errno.ENOTDIR):
                sub = _make_directory(fd, part, image, name, made)
            if sub < 0:
                _refuse_directory(image, name)
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        _remove_made(made)
        raise
    return fd, made


def _make_directory(parent: int, part: str, image: str, name: str, made: list) -> int:
    aside = None
    try:
        try:
            os.mkdir(part, 0o700, dir_fd=parent)
        except FileExistsError:
            # a non-directory holds the name: make ours beside, swap them
            aside = f"{part}.engine-ghost-dir.{os.getpid()}"
            os.mkdir(aside, 0o700, dir_fd=parent)
            if _syscall("renameat2", parent, os.fsencode(aside), parent, os.fsencode(part),
                        RENAME_EXCHANGE) < 0:
                err = ctypes.get_errno()
                os.rmdir(aside, dir_fd=parent)
                raise OSError(err, os.strerror(err))
    except OSError as e:
        raise ImageError(image, f"cannot recreate {name}: directory {part}: "
                                f"{e.strerror}") from None
    made.append((os.dup(parent), part, aside))
    return _openat2(parent, part)


def _remove_made(made: list) -> None:
    """Remove the directories _open_directory made, innermost first, and put
    back what held their names."""
    for parent, part, aside in reversed(made):
        try:
            os.rmdir(part, dir_fd=parent)
            if aside is not None:
                _syscall("renameat2", parent, os.fsencode(aside), parent, os.fsencode(part),
                         RENAME_NOREPLACE)
        except OSError:
            pass               # not ours any more: left as it is
        finally:
            os.close(parent)
    made.clear()


def _openat2(dirfd: int, path: str) -> int:
    how = struct.pack("QQQ", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS)
    return _syscall("openat2", dirfd, os.fsencode(path), how, len(how))


def _refuse_directory(image: str, name: str):
    err = ctypes.get_errno()
    why = ("a symbolic link is on its path" if err == errno.ELOOP else os.strerror(err))
    raise ImageError(image, f"cannot recreate {name}: {why}")


def _make_private(dirfd: int, base: str, file_id: int, image: str, name: str):
    """(fd, its name in dirfd or None): a new private (0600) file in dirfd,
    named like the deleted one when that name is free (what /proc/PID/fd
    shows then, deleted, is what it showed at dump), else beside it, else
    unnamed (O_TMPFILE). O_EXCL never follows a link (O_NOFOLLOW says so
    twice); an O_TMPFILE linked later would still show as "#INODE"."""
    for candidate in (base, f"{base}.engine-ghost.{file_id}"):
        try:
            return os.open(candidate, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600, dir_fd=dirfd), candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise ImageError(image, f"cannot recreate {name}: {e.strerror}") from None
    try:
        return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dirfd), None
    except OSError as e:
        raise ImageError(image, f"cannot recreate {name}: {e.strerror}") from None


def check_ghosts(ctx, remaps: dict, tables: dict) -> None:
    """Every ghost image whole, and no more privileged than its holders: a
    file one of the tasks holding it could have made itself (owner, group,
    set-id bits), so a restore as root hands out nothing the image's tasks
    did not have (issue 20: a uid-1000 image's ghost edited to root 04755)."""
    files = ctx.provided("files")
    holders: dict[int, list[int]] = {}
    for pid, table in tables.items():
        for _, file_id, _ in table:
            holders.setdefault(file_id, [])
            if pid not in holders[file_id]:
                holders[file_id].append(pid)
    for file_id, ghost_id in remaps.items():
        image = f"ghost-file-{ghost_id}.img"
        if file_id not in files or not files[file_id].HasField("reg"):
            raise ImageError("remap-fpath.img", f"orig_id {file_id} is not a regular file "
                                                "in files.img")
        entries = read_ghost(ctx, ghost_id)
        if not entries:
            raise ImageError(image, "empty: want a ghost_file_entry")
        g, *chunks = entries
        if g.mode & ~(st.S_IFMT(g.mode) | 0o7777) or not (
                st.S_ISREG(g.mode) or st.S_ISDIR(g.mode) and not chunks and not g.chunks):
            raise ImageError(image, f"mode {g.mode:o} is not a regular file's "
                                    "(or an empty directory's)")
        if st.S_ISREG(g.mode):
            _check_chunks(image, g, chunks)
        # A deleted mapped file's ghost (plugins/files/mapped.py) has no fd
        # holder: any task of the tree may be the one mapping it.
        reasons = [_ghost_denied(ctx, pid, g)
                   for pid in holders.get(file_id) or list(tables)]
        if reasons and all(reasons):
            raise ImageError(image, reasons[0])


def read_ghost(ctx, ghost_id: int) -> list:
    """[ghost_file_entry, (ghost_chunk_entry, bytes)...]. CRIU writes a
    file that has no holes unchunked: its bytes follow the entry to the end
    of the image, with no size (criu/files-reg.c dump_ghost_file); read as
    one chunk at offset 0."""
    from engine.images.framing import U32
    from engine.images.proto import files_pb2
    image = f"ghost-file-{ghost_id}.img"
    try:
        with open(ctx.images.path("ghost-file", id=ghost_id), "rb") as f:
            raw = f.read(8 + 4 + 4096)
    except OSError as e:
        raise ImageError(image, e.strerror) from None
    if len(raw) >= 12:
        (size,) = U32.unpack_from(raw, 8)
        head = files_pb2.ghost_file_entry()
        try:
            head.ParseFromString(raw[12:12 + size])
        except Exception:  # noqa: BLE001 - the framed read below names it
            size = None
        if size is not None and head.IsInitialized() and not head.chunks:
            with open(ctx.images.path("ghost-file", id=ghost_id), "rb") as f:
                data = f.read()[12 + size:]
            if head.HasField("size") and head.size != len(data):
                raise ImageError(image, f"size {head.size} but {len(data)} bytes follow")
            if not st.S_ISDIR(head.mode):       # a directory's holds nothing
                head.chunks, head.size = True, len(data)
            chunk = files_pb2.ghost_chunk_entry(len=len(data), off=0)
            return [head, (chunk, data)] if data else [head]
    return ctx.images.read("ghost-file", id=ghost_id)


def _check_chunks(image: str, g, chunks: list) -> None:
    """Chunks in order, apart, within the size, each with its bytes; the
    size one ftruncate takes."""
    if not g.chunks or not g.HasField("size"):
        raise ImageError(image, "want chunks and a size (unchunked ghosts are not supported)")
    if g.size > MAX_OFF:
        raise ImageError(image, f"size {g.size} is over the largest offset ({MAX_OFF})")
    end = 0
    for i, item in enumerate(chunks, 1):
        chunk, data = item
        if chunk.off < end or chunk.off + chunk.len > g.size or not chunk.len:
            raise ImageError(image, f"entry {i}: chunk off {chunk.off} len {chunk.len} "
                                    f"overlaps, is empty or ends past size {g.size}")
        end = chunk.off + chunk.len


def _ghost_denied(ctx, pid: int, g) -> str | None:
    """Why task `pid` could not have made a file of g's owner, group and
    mode itself (the kernel's chown/chmod rules), or None if it could."""
    core = ctx.read_one("core", id=pid).thread_core
    if core.HasField("creds"):
        c = core.creds
        fsuid, fsgid, groups = c.fsuid, c.fsgid, set(c.groups)
        caps = c.cap_eff[0] if c.cap_eff else 0
    else:                      # restored with the engine's own credentials
        fsuid, fsgid, groups = os.geteuid(), os.getegid(), set(os.getgroups())
        caps = ~0 if fsuid == 0 else 0
    ids = ctx.ids(pid)
    if ids.user_ns_id and ctx.images.exists("userns", id=ids.user_ns_id):
        caps = 0               # its capabilities hold in its own user namespace only

    def can(cap: int) -> bool:
        return bool(caps >> cap & 1)
    task = f"task {pid} (fsuid {fsuid}, fsgid {fsgid})"
    if g.uid != fsuid and not can(CAP_CHOWN):
        return f"uid {g.uid}: {task} holding it could not own such a file"
    if g.gid != fsgid and g.gid not in groups and not can(CAP_CHOWN):
        return f"gid {g.gid}: {task} holding it is not in that group"
    if g.mode & st.S_ISUID and g.uid != fsuid and not can(CAP_FOWNER):
        return f"mode {g.mode:o}: {task} holding it could not make uid {g.uid} set-user-ID"
    if (g.mode & st.S_ISGID and g.gid != fsgid and g.gid not in groups
            and not can(CAP_FSETID)):
        return f"mode {g.mode:o}: {task} holding it could not make gid {g.gid} set-group-ID"
    return None


def _syscall(name: str, *args) -> int:
    from engine import libc
    return libc.syscall(name, *args)

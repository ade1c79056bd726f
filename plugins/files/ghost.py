"""files, ghosts: a regular file deleted while open (criu/files-reg.c's
ghost files), saved whole in ghost-file-N.img (up to GHOST_LIMIT, as CRIU's
--ghost-limit) and named in remap-fpath.img.

Restore recreates it in its old directory, opens it, and unlinks it again,
so the task holds a deleted file with the same content, mode and offset.
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
GHOST_LIMIT = 16 << 20
AT_FDCWD = -100
RESOLVE_NO_SYMLINKS = 0x04
CAP_CHOWN, CAP_FOWNER, CAP_FSETID = 0, 3, 4


def dump_ghost(ctx, where: str, path: str, file_id: int, stat) -> None:
    """Save the deleted file open at `path` (/proc/PID/fd/N, or a mapping's
    /proc/PID/map_files/RANGE) as the ghost of file `file_id`; `where`
    names it in a refusal."""
    from engine.images.proto import files_pb2
    if stat.st_size > GHOST_LIMIT:
        raise ValueError(f"{where}: deleted file of {stat.st_size} bytes is "
                         f"over the ghost limit of {GHOST_LIMIT}")
    with open(path, "rb") as f:
        data = f.read()
    ghost_id = ctx.new_id()
    g = files_pb2.ghost_file_entry(uid=stat.st_uid, gid=stat.st_gid, mode=stat.st_mode,
                                   dev=stat.st_dev & 0xFFFFFFFF, ino=stat.st_ino,
                                   size=len(data))
    g.atim.tv_sec, g.atim.tv_usec = int(stat.st_atime), stat.st_atime_ns // 1000 % 1000000
    g.mtim.tv_sec, g.mtim.tv_usec = int(stat.st_mtime), stat.st_mtime_ns // 1000 % 1000000
    ctx.images.write("ghost-file", [(g, data)], id=ghost_id)
    ctx.stash.setdefault(REMAPS, {})[file_id] = ghost_id


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
    g, data = ctx.images.read("ghost-file", id=ghost_id)[0]
    parent, base = os.path.split(reg.name)
    dirfd = _open_directory(parent or "/", image, reg.name)
    try:
        rw, name = _make_private(dirfd, base, entry.id, image, reg.name)
        try:
            fd = _fill_and_reopen(entry, rw, data, dirfd, name)
            if os.fstat(rw).st_nlink:
                os.close(fd)
                raise ImageError(image, f"{reg.name}: linked elsewhere while it was "
                                        "recreated (its directory is not ours)")
            try:
                os.fchown(rw, g.uid, g.gid)
                os.fchmod(rw, st.S_IMODE(g.mode))
            except OSError as e:
                os.close(fd)
                raise ImageError(image, f"uid {g.uid}, gid {g.gid}, mode {g.mode:o}: "
                                        f"{e.strerror}") from None
        finally:
            os.close(rw)
    finally:
        os.close(dirfd)
    if reg.pos:
        os.lseek(fd, reg.pos, os.SEEK_SET)
    return fd


def _fill_and_reopen(entry, rw: int, data: bytes, dirfd: int, name: str | None) -> int:
    """Write the content, open the file again with the dumped flags through
    its fd (the very inode made, not whatever the path names by now), and
    take its name away."""
    reg = entry.reg
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(rw, view):]
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


def _open_directory(path: str, image: str, name: str) -> int:
    """An O_PATH fd of directory `path`, reached through no symbolic link:
    the dumped name came from /proc (d_path), which holds none, so one found
    now was put there since, possibly by whoever owns a directory on the way."""
    how = struct.pack("QQQ", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS)
    path_b = os.fsencode(path)
    fd = _syscall("openat2", AT_FDCWD, path_b, how, len(how))
    if fd < 0:
        err = ctypes.get_errno()
        why = ("a symbolic link is on its path" if err == errno.ELOOP else os.strerror(err))
        raise ImageError(image, f"cannot recreate {name}: {why}")
    return fd


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
        found = ctx.images.read("ghost-file", id=ghost_id)
        if len(found) != 1 or found[0][0].chunks:
            raise ImageError(image, "want one entry with the content after it "
                                    "(chunked ghosts are not supported)")
        g, data = found[0]
        if not st.S_ISREG(g.mode) or g.mode & ~(st.S_IFMT(g.mode) | 0o7777):
            raise ImageError(image, f"mode {g.mode:o} is not a regular file's")
        if g.HasField("size") and g.size != len(data):
            raise ImageError(image, f"size {g.size} but {len(data)} bytes follow")
        # A deleted mapped file's ghost (plugins/files/mapped.py) has no fd
        # holder: any task of the tree may be the one mapping it.
        reasons = [_ghost_denied(ctx, pid, g)
                   for pid in holders.get(file_id) or list(tables)]
        if reasons and all(reasons):
            raise ImageError(image, reasons[0])


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

"""inotify: inotify instances and their watches (criu/fsnotify.c).

Dump: an fd whose link is ``anon_inode:inotify`` becomes an INOTIFY file
entry (files.img body ``ify``): its f_flags (O_NONBLOCK), SIGIO owner
(fown, filled by the files plugin) and one ``wd`` entry per watch from its
fdinfo (fs/notify/fdinfo.c): wd number, inode, s_dev (the kernel's
encoding, as CRIU keeps it), mask (the events, with IN_ONESHOT and
IN_EXCL_UNLINK as the kernel reports them) and the inode's file handle
(padded to 16 words, as CRIU). The watch follows its inode, not a name, so
the dump opens the handle (open_by_handle_at on the mount of that s_dev)
and keeps the inode's current path in the handle's ``path``, with the
mount's ``mnt_id``: a file renamed after the watch was added is found
under its new name.

Refused at dump (naming task, fd and wd): a watch whose handle no longer
opens or whose inode is deleted, a watch seen from a mount namespace other
than the engine's (its path would name another file); any fanotify group
(``anon_inode:[fanotify]``): its marks are not restored yet.

Restore: inotify_init1(IN_NONBLOCK), then each watch in increasing wd
order on the inode its handle opens (on the mount of its s_dev here; the
kept path when the handle no longer opens, if it still names the same
inode number). The kernel hands out wd numbers one after the other
(idr_alloc_cyclic from the last one): as CRIU, a watch that comes back
with a lower number than dumped is removed and added again until it gets
its own; each removal queues an IN_IGNORED, which is read off before the
fd is handed over. Then F_SETFL back to the dumped O_NONBLOCK; close-on-exec
is the fd table's.

Dropped, as CRIU: the queued events not yet read (the kernel has no way
to put them back); IN_ONLYDIR, IN_DONT_FOLLOW and IN_MASK_CREATE, which
only act when a watch is added, so no fdinfo shows them.

Refused at collect (files.img, naming the field): flags other than
O_RDONLY, O_NONBLOCK and O_CLOEXEC; a wd below 1 or twice; mask bits other
than the events, IN_ONESHOT and IN_EXCL_UNLINK; an ignored_mask (inotify
has none); a handle of more than 128 bytes; a watch with no path.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import struct

from engine import hookimpl
from engine.fds import claiming_fdinfo
from engine.images import ImageError

log = logging.getLogger("engine.plugins.inotify")

LINK = "anon_inode:inotify"
FANOTIFY_LINK = "anon_inode:[fanotify]"
IN_ALL_EVENTS = 0xFFF
IN_EXCL_UNLINK = 0x04000000
IN_ONESHOT = 0x80000000
KNOWN_MASK = IN_ALL_EVENTS | IN_EXCL_UNLINK | IN_ONESHOT
KNOWN_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC         # O_RDONLY is 0
MAX_HANDLE_SZ = 128                                 # include/linux/exportfs.h
HANDLE_WORDS = MAX_HANDLE_SZ // 8                   # fh_entry_sizes.min_entries

_libc = ctypes.CDLL(None, use_errno=True)
_inotify_init1 = _libc["inotify_init1"]
_inotify_init1.restype, _inotify_init1.argtypes = ctypes.c_int, [ctypes.c_int]
_add_watch = _libc["inotify_add_watch"]
_add_watch.restype = ctypes.c_int
_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_rm_watch = _libc["inotify_rm_watch"]
_rm_watch.restype, _rm_watch.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
_open_by_handle_at = _libc["open_by_handle_at"]
_open_by_handle_at.restype = ctypes.c_int
_open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if link == FANOTIFY_LINK:
        raise ValueError(f"task {task.pid}: fd {fd} ({link}): fanotify groups are not "
                         "supported yet (their marks are not restored)")
    if link != LINK:
        return None
    from engine.images import fdinfo
    from engine.images.proto import files_pb2
    flags = claiming_fdinfo(ctx, task.pid, fd)["flags"] & ~os.O_CLOEXEC
    watches = fdinfo.read(task.pid, fd).get("inotify", [])
    if watches and os.stat(f"/proc/{task.pid}/ns/mnt").st_ino != os.stat(
            "/proc/self/ns/mnt").st_ino:
        raise ValueError(f"task {task.pid}: fd {fd} ({link}): watches in a mount namespace "
                         "other than the engine's are not supported")
    entry = files_pb2.file_entry(type=files_pb2.INOTIFY, id=0)
    ify = entry.ify
    ify.id, ify.flags = 0, flags
    ify.fown.uid = ify.fown.euid = ify.fown.signum = ify.fown.pid_type = ify.fown.pid = 0
    for w in sorted(watches, key=lambda w: w["wd"]):
        wd = ify.wd.add(id=0, i_ino=w["ino"], mask=w["mask"], ignored_mask=w["ignored_mask"],
                        s_dev=w["sdev"], wd=w["wd"])
        raw = w["f_handle"][:w["fhandle-bytes"]]
        wd.f_handle.bytes, wd.f_handle.type = len(raw), w["fhandle-type"]
        padded = raw.ljust(MAX_HANDLE_SZ, b"\0")
        wd.f_handle.handle.extend(struct.unpack(f"<{HANDLE_WORDS}Q", padded))
        try:
            wd.f_handle.path, wd.f_handle.mnt_id = _path_of(wd)
        except OSError as e:
            raise ValueError(f"task {task.pid}: fd {fd} ({link}): wd {wd.wd} (inode "
                             f"{wd.i_ino}): {e.strerror or e}") from None
    return entry


def _path_of(wd) -> tuple[str, int]:
    """The watched inode's path now, and the id of the mount it is under."""
    h = _open_handle(wd)
    try:
        path = os.readlink(f"/proc/self/fd/{h}")
        mnt_id = int(_fdinfo_field(h, "mnt_id"))
    finally:
        os.close(h)
    if path.endswith(" (deleted)") or not path.startswith("/"):
        raise OSError(errno.ENOENT, f"its inode is deleted or unreachable ({path})")
    return path, mnt_id


def _fdinfo_field(fd: int, name: str) -> str:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == name:
                return value.strip()
    raise OSError(errno.EINVAL, f"no {name} in fdinfo")


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    for file_id, entry in ctx.provided("files").items():
        if entry.HasField("ify"):
            _check(file_id, entry.ify)


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("ify"):
        return None
    ify = entry.ify
    fd = _inotify_init1(os.O_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    try:
        for wd in sorted(ify.wd, key=lambda w: w.wd):
            _add(fd, wd, entry.id)
        _drain(fd)
        status = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (status & ~os.O_NONBLOCK) | (ify.flags & os.O_NONBLOCK))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _add(fd: int, wd, file_id: int) -> None:
    """Add watch `wd` at its own number (criu/fsnotify.c restore_one_inotify)."""
    where = f"INOTIFY id {file_id}: wd {wd.wd} ({wd.f_handle.path})"
    target = _watch_target(wd, where)
    try:
        while True:
            got = _add_watch(fd, target[1].encode(), wd.mask)
            if got < 0:
                err = ctypes.get_errno()
                raise ImageError("files.img", f"{where}: inotify_add_watch: {os.strerror(err)}")
            if got == wd.wd:
                return
            if got > wd.wd:
                raise ImageError("files.img", f"{where}: the kernel gave wd {got}, past it")
            # A number below ours: give it up, the next one comes after it.
            if _rm_watch(fd, got) < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"inotify_rm_watch {got}: {os.strerror(err)}")
    finally:
        if target[0] is not None:
            os.close(target[0])


def _watch_target(wd, where: str) -> tuple[int | None, str]:
    """(an fd to close after, the path to watch): the inode the handle opens
    (through /proc/self/fd, so a rename since the dump does not matter), or
    the kept path if it still names the same inode number."""
    try:
        h = _open_handle(wd)
        return h, f"/proc/self/fd/{h}"
    except OSError as e:
        why = e.strerror or str(e)
    try:
        now = os.stat(wd.f_handle.path)
    except OSError as e:
        raise ImageError("files.img", f"{where}: handle: {why}; path: {e.strerror}") from None
    if now.st_ino != wd.i_ino:
        raise ImageError("files.img", f"{where}: handle: {why}; the path now names inode "
                                      f"{now.st_ino}, not {wd.i_ino}")
    return None, wd.f_handle.path


def _drain(fd: int) -> None:
    """Read off the IN_IGNORED events our own removals queued."""
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except BlockingIOError:
            return


# --- helpers -----------------------------------------------------------------

def _check(file_id: int, ify) -> None:
    where = f"files.img: INOTIFY id {file_id}"
    if ify.flags & ~KNOWN_FLAGS:
        raise ImageError(where, f"flags {ify.flags:#o} hold unknown bits "
                                f"{ify.flags & ~KNOWN_FLAGS:#o}")
    seen: set[int] = set()
    for wd in ify.wd:
        if wd.wd < 1 or wd.wd in seen:
            raise ImageError(where, f"wd {wd.wd} is " + ("below 1" if wd.wd < 1 else "twice"))
        seen.add(wd.wd)
        if wd.mask & ~KNOWN_MASK:
            raise ImageError(where, f"wd {wd.wd}: mask {wd.mask:#x} holds unknown bits "
                                    f"{wd.mask & ~KNOWN_MASK:#x}")
        if not wd.mask & IN_ALL_EVENTS:
            raise ImageError(where, f"wd {wd.wd}: mask {wd.mask:#x} has no event")
        if wd.ignored_mask:
            raise ImageError(where, f"wd {wd.wd}: ignored_mask {wd.ignored_mask:#x} (inotify "
                                    "has none)")
        if wd.f_handle.bytes > MAX_HANDLE_SZ or len(wd.f_handle.handle) * 8 < wd.f_handle.bytes:
            raise ImageError(where, f"wd {wd.wd}: f_handle bytes {wd.f_handle.bytes} over "
                                    f"{MAX_HANDLE_SZ} or over its words")
        if not wd.f_handle.path:
            raise ImageError(where, f"wd {wd.wd}: f_handle has no path")


def _open_handle(wd) -> int:
    """open_by_handle_at(O_PATH) of a watch's inode, on a mount of its
    filesystem here (s_dev in the kernel's encoding: major << 20 | minor)."""
    mount = _mount_of(wd.s_dev >> 20, wd.s_dev & 0xFFFFF)
    raw = struct.pack(f"<{len(wd.f_handle.handle)}Q", *wd.f_handle.handle)[:wd.f_handle.bytes]
    handle = struct.pack("<Ii", wd.f_handle.bytes, wd.f_handle.type) + raw
    # A plain fd: open_by_handle_at takes no O_PATH one (fdget).
    mfd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        h = _open_by_handle_at(mfd, handle, os.O_PATH | os.O_CLOEXEC)
        if h < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"open_by_handle_at: {os.strerror(err)}")
    finally:
        os.close(mfd)
    if os.fstat(h).st_ino != wd.i_ino:
        os.close(h)
        raise OSError(errno.ESTALE, f"the handle opens another inode than {wd.i_ino}")
    return h


def _mount_of(major: int, minor: int) -> str:
    """A mount point of device major:minor, the one showing its whole
    filesystem (root "/") if there is one."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[2] == f"{major}:{minor}":
                point = fields[4].replace("\\040", " ")
                if fields[3] == "/":
                    return point
                found = found or point
    if found is None:
        raise OSError(errno.ENODEV, f"no mount of device {major}:{minor}")
    return found

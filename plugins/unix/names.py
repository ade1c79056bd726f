"""unix, bound names: what may be done to a path an image names (issue 20).

An image's name may be another program's live socket (/run/NAME.sock), a
file that is no socket, or a symlink its directory's owner put there. So:
a path that exists is replaced only if it is a stale socket (a connect to
it is refused: nobody is bound there), refused if a socket answers there,
and never unlinked if it is not a socket. Nothing here follows a symlink in
the path's last component: the path is opened O_PATH|O_NOFOLLOW in its
directory, probed and chowned through that fd, unlinked from that directory
only while it is still the inode probed. After a failed restore (abort),
every image name that is a stale socket by then (the killed tasks' own) is
unlinked, so no socket file is left behind.
"""
from __future__ import annotations

import errno
import os
import socket
import stat as st

ABSENT, STALE, LIVE, OTHER = "absent", "stale", "live", "not a socket"


def state(path: bytes) -> str:
    """ABSENT, STALE, LIVE or OTHER (a symlink included) for `path`."""
    try:
        parent, fd = _open_last(path)
    except FileNotFoundError:
        return ABSENT
    try:
        return _probe(fd)
    finally:
        os.close(fd)
        os.close(parent)


def clear(path: bytes) -> str:
    """Make room to bind at `path`: unlink it if it is a stale socket; return
    its state (LIVE and OTHER are left alone, for the caller to refuse)."""
    try:
        parent, fd = _open_last(path)
    except FileNotFoundError:
        return ABSENT
    try:
        found = _probe(fd)
        if found == STALE:
            probed = os.fstat(fd)
            try:
                now = os.stat(os.path.basename(path), dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return ABSENT
            if (now.st_dev, now.st_ino) != (probed.st_dev, probed.st_ino):
                return OTHER          # swapped since it was probed: touch nothing
            os.unlink(os.path.basename(path), dir_fd=parent)
        return found
    finally:
        os.close(fd)
        os.close(parent)


def set_owner(path: bytes, uid: int, gid: int, mode: int) -> None:
    """chown and chmod the socket file just bound at `path`, through an
    O_PATH fd of it (a symlink swapped in is no socket: OSError ELOOP)."""
    parent, fd = _open_last(path)
    try:
        if not st.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(errno.ELOOP, "replaced by something that is not a socket")
        # /proc/self/fd/N of an O_PATH fd is that very inode (fchown and
        # fchmod refuse O_PATH fds).
        os.chown(f"/proc/self/fd/{fd}", uid, gid)
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)
        os.close(parent)


def remove_stale(paths) -> None:
    """After a failed restore: unlink each path that is a stale socket now."""
    for path in paths:
        try:
            clear(path)
        except OSError:
            pass


def _open_last(path: bytes) -> tuple[int, int]:
    """(directory fd, O_PATH fd of the last component, not followed)."""
    parent = os.open(os.path.dirname(path) or b"/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(os.path.basename(path), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=parent)
    except BaseException:
        os.close(parent)
        raise
    return parent, fd


def _probe(fd: int) -> str:
    """Connect to the socket file `fd` is (through its /proc link, so to
    that inode): refused is stale; anything else that is not a type
    mismatch means something is bound there."""
    if not st.S_ISSOCK(os.fstat(fd).st_mode):
        return OTHER
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
        s = socket.socket(socket.AF_UNIX, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            s.connect(f"/proc/self/fd/{fd}")
        except ConnectionRefusedError:
            return STALE
        except OSError as e:
            if e.errno == errno.EPROTOTYPE:
                continue          # bound, by a socket of another type
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return LIVE       # a listener with a full backlog
            raise
        finally:
            s.close()
        return LIVE
    return LIVE

"""unix, restore side, in the tasks: make each unit's sockets (plugins/unix/
collect.py planned which, where and when), queue their messages again, set
their options, and publish them for the fd tables.
"""
from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat as st
import struct

from engine.images import ImageError
from engine.stash import StashKey

from . import names
from .collect import FD_BASE, QUEUES, SOCKS, _limits, _path, _printable
from .dump import TCP_ESTABLISHED, TCP_LISTEN, USK_EXTERN, SO_PASSCRED, SO_PEEK_OFF

log = logging.getLogger("engine.plugins.unix")

ENDS = StashKey()        # in a task: file id -> fd made here
BOUND = StashKey()       # in a task: file id -> inode of the file its bind made
OPENED = StashKey()      # in a task: file id -> fd of an in-flight file opened here


# --- restore a node, in its task ------------------------------------------------

def run(ctx, node) -> None:
    if node.key.startswith("unix:unlink:"):
        _unlink_deleted(ctx, node.data)
        return
    unit = node.data
    socks = ctx.stash[SOCKS]
    ends = ctx.stash.setdefault(ENDS, {})
    made: dict[int, socket.socket] = {}
    if len(unit.ids) == 2:
        a, b = unit.ids
        made[a], made[b] = _pair(ctx, unit, socks)
        ends[a], ends[b] = made[a].fileno(), made[b].fileno()   # for its own queues
        _fill(ctx, a, made[b], socks)
        _fill(ctx, b, made[a], socks)
    else:
        (fid,) = unit.ids
        made[fid] = _single(ctx, fid, socks)
    for fid, sock in made.items():
        _finish(sock, socks[fid])
    for fid, sock in made.items():
        ends[fid] = _high(sock.detach(), unit.fd_base)
        ctx.publish_fd(fid, ends[fid])


def _pair(ctx, unit, socks):
    a, b = unit.ids
    ua, ub = socks[a], socks[b]
    if unit.listener is not None:
        client = b if unit.accepted == a else a
        csock = _new(socks[client])
        _bind(ctx, csock, client, socks[client])
        lsock = _get(ctx, unit.listener)
        try:
            with _reach(socks[unit.listener]) as address:
                csock.connect(address)
            asock, _ = lsock.accept()
        finally:
            lsock.close()
        return (asock, csock) if unit.accepted == a else (csock, asock)
    sa, sb = socket.socketpair(socket.AF_UNIX, ua.type)
    _bind(ctx, sa, a, ua)
    _bind(ctx, sb, b, ub)
    return sa, sb


def _single(ctx, fid, socks):
    u = socks[fid]
    by_ino = {s.ino: f for f, s in socks.items()}
    if u.state == TCP_ESTABLISHED and not u.peer:
        if u.type != socket.SOCK_DGRAM or not u.name:
            # Its peer was closed: the kernel keeps the dead peer, so do we.
            sock, dead = socket.socketpair(socket.AF_UNIX, u.type)
            _bind(ctx, sock, fid, u)
            _fill(ctx, fid, dead, socks)
            dead.close()
            return sock
    sock = _new(u)
    _bind(ctx, sock, fid, u)
    if u.state == TCP_LISTEN:
        sock.listen(u.backlog)
    peer = by_ino.get(u.peer) if u.peer else None
    if peer is not None:
        try:
            with _reach(socks[peer]) as address:
                sock.connect(address)
        except OSError as e:
            what = "external peer" if socks[peer].uflags & USK_EXTERN else "peer"
            raise ValueError(f"unix socket id {fid}: connect to its {what} "
                             f"{_printable(socks[peer].name)}: {e.strerror}") from None
        if ctx.stash[QUEUES].get(fid):
            sender = _get(ctx, peer)
            try:
                with _reach(u) as address:
                    _fill(ctx, fid, sender, socks, to=address)
            finally:
                sender.close()
    elif ctx.stash[QUEUES].get(fid):
        with socket.socket(socket.AF_UNIX, u.type) as temp, _reach(u) as address:
            _fill(ctx, fid, temp, socks, to=address)
    return sock


def _new(u) -> socket.socket:
    return socket.socket(socket.AF_UNIX, u.type)


def _bind(ctx, sock, fid, u) -> None:
    """Bind to the dumped name: a stale socket file left there by the dumped
    socket goes first (criu does the same); a relative name is bound from
    its directory so getsockname() gives it back as it was."""
    if not u.name:
        return
    try:
        _bind_name(ctx, sock, fid, u)
    except OSError as e:
        raise ValueError(f"unix socket id {fid}: bind to {_printable(u.name)}: "
                         f"{e.strerror}") from None


def _bind_name(ctx, sock, fid, u) -> None:
    if u.name[:1] == b"\0":
        sock.bind(u.name)
        return
    path = _path(u)
    # checked at collect; checked again here, as it may have changed since
    found = names.clear(path)
    if found in (names.OTHER, names.LIVE):
        what = "is not a socket" if found == names.OTHER else \
            "is a live socket (a connect to it is answered)"
        raise ValueError(f"unix socket id {fid}: {_printable(path)} exists and {what}")
    with _in_dir(u.name_dir if not u.name.startswith(b"/") else None):
        sock.bind(u.name)
    now = os.lstat(path)
    ctx.stash.setdefault(BOUND, {})[fid] = (now.st_dev, now.st_ino)
    if u.HasField("file_perms"):
        names.set_owner(path, u.file_perms.uid, u.file_perms.gid,
                        st.S_IMODE(u.file_perms.mode))


@contextlib.contextmanager
def _in_dir(directory):
    if directory is None:
        yield
        return
    back = os.open(".", os.O_PATH | os.O_DIRECTORY)
    try:
        os.chdir(directory)
        yield
    finally:
        os.fchdir(back)
        os.close(back)


@contextlib.contextmanager
def _reach(u):
    """The address to connect or send to `u` at: a relative name from its
    directory (its absolute path may not fit in sun_path)."""
    with _in_dir(u.name_dir if u.name[:1] not in (b"\0", b"/") else None):
        yield u.name


def _get(ctx, fid) -> socket.socket:
    """A socket made earlier: here, or in another task (a copy of its fd)."""
    ends = ctx.stash.get(ENDS, {})
    fd = os.dup(ends[fid]) if fid in ends else ctx.take_fd(fid)
    return socket.socket(fileno=fd)


def _fill(ctx, fid, sender, socks, to=None) -> None:
    """Queue socket `fid`'s messages by sending them from `sender`, in order,
    with their in-flight fds; the sender's buffer is raised (within
    net.core.wmem_max) while it sends, so a full dumped queue fits again."""
    packets = ctx.stash[QUEUES].get(fid)
    if not packets:
        return
    keep = sender.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _limits()["wmem_max"])
    address = [to] if to is not None else []
    for i, (p, data) in enumerate(packets):
        fds = [_open_inflight(ctx, r) for scm in p.scm for r in scm.rights]
        try:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            view = memoryview(data)
            while True:
                try:
                    n = sender.sendmsg([view], anc, socket.MSG_DONTWAIT, *address)
                except BlockingIOError:
                    raise ImageError("sk-queues.img",
                                     f"socket id {fid}: message {i} does not fit in the "
                                     "socket buffers the system allows") from None
                view, anc = view[n:], []
                if not view:
                    break
        finally:
            for fd in fds:
                os.close(fd)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(keep // 2, 1))


def _open_inflight(ctx, fid) -> int:
    """A new fd on file `fid` to send: made here, by another task, or opened now."""
    ends = ctx.stash.get(ENDS, {})
    opened = ctx.stash.setdefault(OPENED, {})
    if fid in ends:
        return os.dup(ends[fid])
    if fid in opened:
        return os.dup(opened[fid])
    if fid in ctx.shared_fds:
        return ctx.take_fd(fid)
    entry = ctx.provided("files")[fid]
    if entry.HasField("usk"):
        raise ImageError("sk-queues.img", f"in-flight unix socket id {fid} was not made yet")
    fd = ctx.hook.engine_restore_file(ctx=ctx, entry=entry)
    if fd is None:
        raise ImageError("files.img", f"in-flight file id {fid}: no plugin opens it")
    fd = opened[fid] = _high(fd, ctx.stash[FD_BASE].get(ctx.self_pid, 64))
    ctx.publish_fd(fid, fd)
    return os.dup(fd)


def _high(fd: int, base: int) -> int:
    """Move `fd` above every dumped fd number, so installing the fd table
    cannot overwrite it before it is taken."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, base)
    os.close(fd)
    return moved


def _finish(sock, u) -> None:
    so = sock.setsockopt
    so(socket.SOL_SOCKET, socket.SO_SNDBUF, u.opts.so_sndbuf // 2)
    so(socket.SOL_SOCKET, socket.SO_RCVBUF, u.opts.so_rcvbuf // 2)
    so(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", u.opts.so_snd_tmo_sec,
                                                          u.opts.so_snd_tmo_usec))
    so(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", u.opts.so_rcv_tmo_sec,
                                                          u.opts.so_rcv_tmo_usec))
    if u.opts.so_passcred:
        so(socket.SOL_SOCKET, SO_PASSCRED, 1)
    if u.opts.HasField("so_peek_off") and u.opts.so_peek_off >= 0:
        so(socket.SOL_SOCKET, SO_PEEK_OFF, u.opts.so_peek_off)
    if u.shutdown:
        try:
            sock.shutdown(u.shutdown - 1)      # READ/WRITE/BOTH -> SHUT_RD/WR/RDWR
        except OSError as e:
            if e.errno != errno.ENOTCONN:      # nothing left to shut
                raise
    # F_SETFL arms O_ASYNC (SIGIO to the owner the files plugin sets).
    kept = os.O_NONBLOCK | os.O_ASYNC
    flags = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, (flags & ~kept) | (u.flags & kept))


def _unlink_deleted(ctx, fid) -> None:
    """The name was deleted after bind: unlink it, if it is still the one we made."""
    u = ctx.stash[SOCKS][fid]
    path = _path(u)
    want = ctx.stash.get(BOUND, {}).get(fid)
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if want == (now.st_dev, now.st_ino):
        os.unlink(path)

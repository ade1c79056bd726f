"""unix: AF_UNIX sockets and their queues (criu/sk-unix.c, sk-queue.c).

Dump: a ``socket:[INODE]`` fd that sock_diag (pyroute2) lists as AF_UNIX
becomes a UNIXSK entry: type, state, peer inode, flags and buffer sizes. The
queued messages of each socket are read without being consumed (MSG_PEEK
from a pidfd_getfd copy, stepping with SO_PEEK_OFF so datagram boundaries
stay) into sk-queues.img. For now only connected unbound pairs (socketpair)
whose two ends are both in the tree are dumped; a bound, listening or
external socket is refused with its inode.

Restore: the first task that needs one end makes the pair with socketpair(2),
sends each queued message from the peer so it lands, in order and with its
boundaries, in the right queue, and publishes both ends for the other tasks.
Values from the images go through setsockopt, never around it; an impossible
state for the type or an absurd buffer size is refused naming the entry.
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket

from engine import hookimpl
from engine.fds import fdinfo, pidfd_getfd
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.unix")

SS_ESTABLISHED = 1                # TCP_ESTABLISHED, as unix_diag reports it
TYPES = {socket.SOCK_STREAM: "STREAM", socket.SOCK_DGRAM: "DGRAM",
         socket.SOCK_SEQPACKET: "SEQPACKET"}
SO_PEEK_OFF = 42
MAX_BUF = 64 << 20
DIAG = StashKey()                 # dump: inode -> (type, state, peer, name)
COPIES = StashKey()               # dump: inode -> (pid, fd) to peek from
QUEUES = StashKey()               # restore: file id -> [message bytes]
ENDS = StashKey()                 # restore, in a task: inode -> fd


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if not link.startswith("socket:["):
        return None
    table = ctx.stash.get(DIAG, None)
    if table is None:
        table = ctx.stash[DIAG] = _unix_sockets()
    ino = stat.st_ino
    if ino not in table:
        return None                   # not AF_UNIX: another plugin's
    stype, state, peer, name = table[ino]
    where = f"task {task.pid}: fd {fd} ({link})"
    if name:
        raise ValueError(f"{where}: bound unix sockets ({name!r}) are not supported yet")
    if state != SS_ESTABLISHED or not peer or stype not in TYPES:
        raise ValueError(f"{where}: only connected unix socket pairs are supported yet")
    ctx.stash.setdefault(COPIES, {}).setdefault(ino, (task.pid, fd))
    from engine.images.proto import files_pb2
    copy = pidfd_getfd(task.pid, fd)
    try:
        sock = socket.socket(fileno=os.dup(copy))
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        sock.close()
    finally:
        os.close(copy)
    entry = files_pb2.file_entry(type=files_pb2.UNIXSK, id=0)
    u = entry.usk
    u.id, u.ino, u.type, u.state, u.peer = 0, ino, stype, state, peer
    u.flags, u.uflags, u.backlog, u.name = fdinfo(task.pid, fd)["flags"] & os.O_NONBLOCK, 0, 0, b""
    u.fown.uid = u.fown.euid = u.fown.signum = u.fown.pid_type = u.fown.pid = 0
    o = u.opts
    o.so_sndbuf, o.so_rcvbuf = sndbuf, rcvbuf
    o.so_snd_tmo_sec = o.so_snd_tmo_usec = o.so_rcv_tmo_sec = o.so_rcv_tmo_usec = 0
    return entry


@hookimpl
def engine_dump_finish(ctx):
    from engine.images.proto import sockets_pb2
    copies = ctx.stash.get(COPIES, {})
    if not copies:
        return
    ids = {e.usk.ino: e.id for e in ctx.files if e.HasField("usk")}
    for e in ctx.files:
        if e.HasField("usk") and e.usk.peer not in ids:
            raise ValueError(f"unix socket {e.usk.ino}: its peer {e.usk.peer} is outside "
                             "the dumped tree (external sockets are not supported)")
    packets = []
    for ino, (pid, fd) in sorted(copies.items()):
        stype = ctx.stash[DIAG][ino][0]
        for data in _peek_queue(pid, fd, stype):
            packets.append((sockets_pb2.sk_packet_entry(id_for=ids[ino], length=len(data)),
                            data))
    ctx.images.write("sk-queues", packets)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    socks = {e.usk.ino: (fid, e.usk) for fid, e in ctx.files.items() if e.HasField("usk")}
    for ino, (fid, u) in socks.items():
        where = f"files.img: unix socket id {fid}"
        if u.type not in TYPES:
            raise ValueError(f"{where}: type {u.type} is not stream, dgram or seqpacket")
        if u.state != SS_ESTABLISHED or u.peer not in socks:
            raise ValueError(f"{where}: state {u.state} with peer {u.peer}: only connected "
                             "pairs with both ends in the image are supported")
        if u.name:
            raise ValueError(f"{where}: name: bound unix sockets are not supported yet")
        if u.backlog and u.type == socket.SOCK_DGRAM and u.state != SS_ESTABLISHED:
            raise ValueError(f"{where}: a datagram socket cannot listen")
        for field in ("so_sndbuf", "so_rcvbuf"):
            value = getattr(u.opts, field)
            if not 0 < value <= MAX_BUF:
                raise ValueError(f"{where}: opts.{field} = {value} is not a buffer size")
        if socks[u.peer][1].type != u.type:
            raise ValueError(f"{where}: peer {u.peer} is of another type")
    queues: dict[int, list[bytes]] = {}
    if ctx.images.exists("sk-queues"):
        for i, (p, data) in enumerate(ctx.images.read("sk-queues")):
            if p.id_for not in ctx.files or not ctx.files[p.id_for].HasField("usk"):
                raise ValueError(f"sk-queues.img: entry {i}: id_for {p.id_for} is not a "
                                 "unix socket of files.img")
            if p.scm:
                raise ValueError(f"sk-queues.img: entry {i}: in-flight fds (SCM_RIGHTS) "
                                 "are not supported yet")
            queues.setdefault(p.id_for, []).append(data)
    ctx.stash[QUEUES] = queues


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("usk"):
        return None
    u = entry.usk
    ends = ctx.stash.setdefault(ENDS, {})
    if u.ino not in ends:
        _make_pair(ctx, u)
    fd = os.dup(ends[u.ino])
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, (flags & ~os.O_NONBLOCK) | (u.flags & os.O_NONBLOCK))
    return fd


# --- helpers -----------------------------------------------------------------

def _make_pair(ctx, u) -> None:
    by_ino = {e.usk.ino: (fid, e.usk) for fid, e in ctx.files.items() if e.HasField("usk")}
    a, b = socket.socketpair(socket.AF_UNIX, u.type)
    ends = ctx.stash[ENDS]
    queues = ctx.stash.get(QUEUES, {})
    for mine, other, ino in ((a, b, u.ino), (b, a, u.peer)):
        fid, me = by_ino[ino]
        # The kernel doubles what setsockopt is given (socket(7)).
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, me.opts.so_sndbuf // 2)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, me.opts.so_rcvbuf // 2)
        for data in queues.get(fid, ()):
            other.send(data)            # sent by the peer: queued for `mine`
    for sock, ino in ((a, u.ino), (b, u.peer)):
        ends[ino] = sock.detach()
        ctx.publish_fd(by_ino[ino][0], ends[ino])


def _unix_sockets() -> dict[int, tuple[int, int, int, str]]:
    from pyroute2 import DiagSocket          # heavy: only when a socket is seen
    out = {}
    with DiagSocket() as ds:
        ds.bind()
        for msg in ds.get_sock_stats(family=socket.AF_UNIX):
            out[msg["udiag_ino"]] = (msg["udiag_type"], msg["udiag_state"],
                                     msg.get_attr("UNIX_DIAG_PEER") or 0,
                                     msg.get_attr("UNIX_DIAG_NAME") or "")
    return out


def _peek_queue(pid: int, fd: int, stype: int) -> list[bytes]:
    """Every queued message, unconsumed; SO_PEEK_OFF steps past each one."""
    sock = socket.socket(fileno=pidfd_getfd(pid, fd))
    try:
        old = sock.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        try:
            out = []
            while True:
                try:
                    data = sock.recv(1 << 20, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if not data:
                    break
                out.append(data)
            if stype == socket.SOCK_STREAM and out:
                out = [b"".join(out)]     # a stream has no boundaries to keep
            return out
        finally:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, old)
    finally:
        sock.close()

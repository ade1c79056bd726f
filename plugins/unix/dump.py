"""unix, dump side: describe sockets, peek their queues, follow in-flight fds.

Every socket is read through a copy of its fd (pidfd_getfd): its name and
options from the socket itself, its state, peer, shutdown and queue lengths
from sock_diag (pyroute2). See criu/sk-unix.c (dump_one_unix_fd) and
criu/sk-queue.c (dump_sk_queue).
"""
from __future__ import annotations

import array
import logging
import os
import socket
import struct

import attrs

from engine.images.entries import add_file
from engine.fds import fdinfo, pidfd_getfd
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.unix")

TCP_ESTABLISHED, TCP_SYN_SENT, TCP_CLOSE, TCP_LISTEN = 1, 2, 7, 10
USK_EXTERN = 1                      # uflags: the peer lives outside the tree (CRIU's)
SCM_MAX_FD = 253
SO_PEEK_OFF = 42
SO_PASSCRED = 16
TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram",
         socket.SOCK_SEQPACKET: "seqpacket"}


@attrs.define
class Diag:
    type: int
    state: int
    peer: int
    rqueue: int
    wqueue: int
    shutdown: int
    icons: tuple[int, ...]
    vfs: tuple[int, int] | None      # (dev, ino) of the bound file


@attrs.define
class Seen:
    pid: int                          # the task (or the engine, for in-flight fds)
    fd: int
    entry: object                     # file_entry
    peername: bytes = b""


DIAG = StashKey()        # inode -> Diag, every AF_UNIX socket of the host
SEEN = StashKey()        # inode -> Seen, every socket dumped
HELD = StashKey()        # in-flight fds the engine holds (kept open to the end)


def unix_sockets() -> dict[int, Diag]:
    from pyroute2 import DiagSocket          # heavy: only when a socket is seen
    out = {}
    show = 0x01 | 0x02 | 0x04 | 0x08 | 0x10  # NAME VFS PEER ICONS RQLEN
    with DiagSocket() as ds:
        ds.bind()
        for msg in ds.get_sock_stats(family=socket.AF_UNIX, show=show):
            rq = msg.get_attr("UNIX_DIAG_RQLEN") or {}
            icons = msg.get_attr("UNIX_DIAG_ICONS") or ""
            raw = bytes.fromhex(icons.replace(":", "")) if icons else b""
            vfs = msg.get_attr("UNIX_DIAG_VFS")
            out[msg["udiag_ino"]] = Diag(
                msg["udiag_type"], msg["udiag_state"], msg.get_attr("UNIX_DIAG_PEER") or 0,
                rq.get("udiag_rqueue", 0), rq.get("udiag_wqueue", 0),
                msg.get_attr("UNIX_DIAG_SHUTDOWN") or 0,
                struct.unpack(f"<{len(raw) // 4}I", raw),
                (vfs["udiag_vfs_dev"], vfs["udiag_vfs_ino"]) if vfs else None)
    return out


def describe(ctx, pid: int, fd: int, ino: int, where: str):
    """The file_entry of socket `ino`, at fd `fd` of `pid` (or of the engine)."""
    from engine.images.proto import files_pb2
    table = ctx.stash[DIAG]
    d = table[ino]
    if d.type not in TYPES:
        raise ValueError(f"{where}: unix socket of type {d.type} is not supported")
    sock = socket.socket(fileno=_copy(pid, fd))
    try:
        name = _name(sock.getsockname())
        try:
            peername = _name(sock.getpeername())
        except OSError:
            peername = b""
        so = sock.getsockopt
        sndbuf = so(socket.SOL_SOCKET, socket.SO_SNDBUF)
        rcvbuf = so(socket.SOL_SOCKET, socket.SO_RCVBUF)
        passcred = so(socket.SOL_SOCKET, SO_PASSCRED)
        peek_off = so(socket.SOL_SOCKET, SO_PEEK_OFF)
        snd = struct.unpack("ll", so(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16))
        rcv = struct.unpack("ll", so(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
    finally:
        sock.close()
    peer, state = d.peer, d.state
    if state == TCP_ESTABLISHED and not peer and d.type != socket.SOCK_DGRAM:
        # A connection not yet accepted: its other half (the embryo) has no
        # inode; the listener lists us in its icons (criu/sk-unix.c).
        listener = next((i for i, o in table.items() if ino in o.icons), None)
        if listener is not None:
            if d.wqueue:
                raise ValueError(f"{where}: {d.wqueue} bytes written to a connection "
                                 "not yet accepted cannot be read back")
            peer = listener
    if state not in (TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN):
        raise ValueError(f"{where}: unix socket in state {state} is not supported")
    entry = files_pb2.file_entry(type=files_pb2.UNIXSK, id=0)
    u = entry.usk
    u.id, u.ino, u.type, u.state, u.peer = 0, ino, d.type, state, peer
    # O_ASYNC with the fown the files plugin fills: nginx arms SIGIO on its
    # channels (criu/sk-unix.c keeps ue->flags whole).
    u.flags = fdinfo(pid, fd)["flags"] & (os.O_NONBLOCK | os.O_ACCMODE | os.O_ASYNC)
    u.uflags, u.name = 0, name
    u.backlog = d.wqueue if state == TCP_LISTEN else 0
    u.shutdown = d.shutdown & 3
    u.fown.uid = u.fown.euid = u.fown.signum = u.fown.pid_type = u.fown.pid = 0
    o = u.opts
    o.so_sndbuf, o.so_rcvbuf = sndbuf, rcvbuf
    o.so_passcred, o.so_peek_off = bool(passcred), peek_off
    o.so_snd_tmo_sec, o.so_snd_tmo_usec = snd
    o.so_rcv_tmo_sec, o.so_rcv_tmo_usec = rcv
    if name and name[0] != 0:
        _describe_path(u, pid, d, name)
    ctx.stash.setdefault(SEEN, {})[ino] = Seen(pid, fd, entry, peername)
    return entry


def finish(ctx) -> None:
    """Peek every queue (following in-flight fds), check peers, write sk-queues."""
    from engine.images.proto import sockets_pb2
    seen = ctx.stash.get(SEEN, {})
    if not seen:
        return
    ids = {e.usk.ino: e.id for e in ctx.entries("files") if e.HasField("usk")}
    packets, done = [], set()
    while len(done) < len(seen):
        for ino in sorted(set(seen) - done):
            done.add(ino)
            s = seen[ino]
            if s.entry.usk.state == TCP_LISTEN:
                continue                      # its queue holds embryos, not data
            for data, fds in _peek_queue(s.pid, s.fd, s.entry.usk.type,
                                          ctx.stash[DIAG][ino].rqueue):
                p = sockets_pb2.sk_packet_entry(id_for=ids[ino], length=len(data))
                if fds:
                    rights = [_inflight_id(ctx, fd, ids) for fd in fds]
                    p.scm.add(type=socket.SCM_RIGHTS, rights=rights)
                packets.append((p, data))
    _check_peers(ctx, seen, ids)
    ctx.images.write("sk-queues", packets)


# --- helpers -----------------------------------------------------------------

def _copy(pid: int, fd: int) -> int:
    return os.dup(fd) if pid == os.getpid() else pidfd_getfd(pid, fd)


def _name(addr) -> bytes:
    return os.fsencode(addr) if isinstance(addr, str) else bytes(addr or b"")


def _describe_path(u, pid: int, d: Diag, name: bytes) -> None:
    """Deleted or not (criu: bound file gone or another inode), its perms and dir."""
    path = name
    if not name.startswith(b"/"):
        u.name_dir = os.readlink(f"/proc/{pid}/cwd")
        path = os.path.join(os.fsencode(u.name_dir), name)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        now = None
    if now is None or (d.vfs is not None and now.st_ino != d.vfs[1]):
        u.deleted = True
        return
    u.file_perms.mode, u.file_perms.uid, u.file_perms.gid = now.st_mode, now.st_uid, now.st_gid


def _peek_queue(pid: int, fd: int, stype: int, hint: int) -> list[tuple[bytes, list[int]]]:
    """Every queued message with its in-flight fds, unconsumed: SO_PEEK_OFF
    steps past each one so boundaries stay (criu/sk-queue.c). A stream's
    chunks are joined up to each one carrying fds; `hint` (the queued bytes
    sock_diag reports) sizes the buffer so a big stream queue is one peek."""
    sock = socket.socket(fileno=_copy(pid, fd))
    cmsg = socket.CMSG_SPACE(SCM_MAX_FD * 4)
    size = min(max(hint, 1 << 16), 256 << 20)
    parts: list[tuple[bytes, list[int]]] = []
    try:
        old = sock.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        try:
            while True:
                try:
                    data, anc, flags, _ = sock.recvmsg(size, cmsg,
                                                       socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                fds = []
                for level, kind, body in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        a = array.array("i")
                        a.frombytes(body[:len(body) - len(body) % 4])
                        fds += list(a)
                if flags & socket.MSG_TRUNC and stype != socket.SOCK_STREAM:
                    for f in fds:
                        os.close(f)
                    # Peeked, not consumed: look again with room for it.
                    sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF,
                                    sum(len(d) for d, _ in parts))
                    size *= 4
                    continue
                if flags & socket.MSG_CTRUNC:
                    raise ValueError(f"fd {fd} of {pid}: in-flight fds truncated")
                if not data and not fds:
                    break
                parts.append((data, fds))
        finally:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, old)
    finally:
        sock.close()
    if stype != socket.SOCK_STREAM:
        return parts
    out, run = [], []
    for data, fds in parts:              # a stream keeps no boundaries but the fds'
        run.append(data)
        if fds:
            out.append((b"".join(run), fds))
            run = []
    if run:
        out.append((b"".join(run), []))
    return out


def _inflight_id(ctx, fd: int, ids: dict[int, int]) -> int:
    """The file id of an fd peeked out of a queue (now the engine's): the one
    already given to its open file, or a new files.img entry."""
    ctx.stash.setdefault(HELD, []).append(fd)
    me = os.getpid()
    stat = os.fstat(fd)
    link = os.readlink(f"/proc/self/fd/{fd}")
    if link.startswith("socket:[") and stat.st_ino in ctx.stash[DIAG]:
        if stat.st_ino in ids:
            return ids[stat.st_ino]
        entry = describe(ctx, me, fd, stat.st_ino, f"in-flight fd ({link})")
        ids[stat.st_ino] = add_file(ctx, entry)
        return ids[stat.st_ino]
    found = _same_open_file(ctx, fd, stat)
    if found is not None:
        return found
    if link.endswith(" (deleted)") and not link.startswith("/memfd:"):   # a memfd: its plugin's
        raise ValueError(f"in-flight fd ({link}): a deleted file in flight is not supported")
    from engine.dump import DumpTask
    engine = DumpTask(pid=me, tracee=None, state=None)
    entry = ctx.hook.engine_dump_fd(ctx=ctx, task=engine, fd=fd, link=link, stat=stat)
    if entry is None:
        raise ValueError(f"in-flight fd ({link}): no plugin can dump it")
    file_id = add_file(ctx, entry)
    ctx.stash.setdefault(_INFLIGHT, []).append((fd, stat, file_id))
    return file_id


_INFLIGHT = StashKey()   # [(engine fd, stat, file id)] of in-flight non-sockets
_BY_INODE = StashKey()   # (dev, ino) -> [(pid, fd)] of every task fd


def _same_open_file(ctx, fd: int, stat) -> int | None:
    """File id of a task fd or earlier in-flight fd on the same open file (kcmp)."""
    me = os.getpid()
    for other, ostat, file_id in ctx.stash.get(_INFLIGHT, []):
        if (ostat.st_dev, ostat.st_ino) == (stat.st_dev, stat.st_ino) and \
                _kcmp(me, fd, me, other) == 0:
            return file_id
    index = ctx.stash.get(_BY_INODE, None)
    if index is None:
        index = ctx.stash[_BY_INODE] = _index_task_fds(ctx)
    for pid, tfd, file_id in index.get((stat.st_dev, stat.st_ino), ()):
        if _kcmp(me, fd, pid, tfd) == 0:
            return file_id
    return None


def _index_task_fds(ctx) -> dict:
    out: dict = {}
    for pid, task in ctx.tasks.items():
        if task.zombie is not None or not ctx.images.exists("fdinfo", id=task.ids["files_id"]):
            continue
        for fi in ctx.images.read("fdinfo", id=task.ids["files_id"]):
            try:
                s = os.stat(f"/proc/{pid}/fd/{fi.fd}")
            except OSError:
                continue
            out.setdefault((s.st_dev, s.st_ino), []).append((pid, fi.fd, fi.id))
    return out


KCMP_FILE = 0


def _kcmp(pid1: int, fd1: int, pid2: int, fd2: int) -> int:
    import ctypes
    from engine import libc
    r = libc.syscall("kcmp", pid1, pid2, KCMP_FILE, fd1, fd2)
    if r < 0:
        raise OSError(ctypes.get_errno(), "kcmp")
    return r


def _check_peers(ctx, seen: dict[int, Seen], ids: dict[int, int]) -> None:
    """Every peer is dumped, or external and allowed (criu's --ext-unix-sk)."""
    from engine.images.proto import files_pb2
    allowed = getattr(ctx.options, "unix_external", False)
    table = ctx.stash[DIAG]
    for ino, s in sorted(seen.items()):
        u = s.entry.usk
        where = f"task {s.pid}: unix socket {ino}" if s.pid != os.getpid() else \
            f"in-flight unix socket {ino}"
        if u.state == TCP_LISTEN:
            outside = [c for c in table[ino].icons if c not in seen]
            if outside:
                raise ValueError(f"{where}: connections from outside the dumped tree "
                                 f"(sockets {outside}) wait to be accepted")
        if not u.peer or u.peer in ids:
            continue
        if not allowed:
            raise ValueError(f"{where}: its peer {u.peer} is outside the dumped tree "
                             "(use --ext-unix-sk if it is meant to be external)")
        if u.type != socket.SOCK_DGRAM or not s.peername or u.state != TCP_ESTABLISHED:
            raise ValueError(f"{where}: its peer {u.peer} is outside the dumped tree and "
                             "only a datagram socket's named peer can be external")
        if s.peername[:1] not in (b"/", b"\0"):
            raise ValueError(f"{where}: its external peer's name {s.peername!r} is "
                             "relative to a directory we cannot know")
        if table[ino].rqueue:
            raise ValueError(f"{where}: messages from an external peer cannot be queued "
                             "again at restore")
        ext = files_pb2.file_entry(type=files_pb2.UNIXSK, id=0)
        e = ext.usk
        e.id, e.ino, e.type, e.state, e.peer = 0, u.peer, u.type, TCP_CLOSE, 0
        e.flags, e.uflags, e.backlog, e.name = os.O_RDWR, USK_EXTERN, 0, s.peername
        e.fown.uid = e.fown.euid = e.fown.signum = e.fown.pid_type = e.fown.pid = 0
        e.opts.so_sndbuf = e.opts.so_rcvbuf = u.opts.so_sndbuf
        e.opts.so_snd_tmo_sec = e.opts.so_snd_tmo_usec = 0
        e.opts.so_rcv_tmo_sec = e.opts.so_rcv_tmo_usec = 0
        ids[u.peer] = add_file(ctx, ext)
        log.info("%s: peer %s (%r) is external", where, u.peer, s.peername)

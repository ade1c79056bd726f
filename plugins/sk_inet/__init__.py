"""sk_inet: TCP and UDP sockets, IPv4 and IPv6 (criu/sk-inet.c, criu/sk-tcp.c).

Dump: a ``socket:[INODE]`` fd that sock_diag (pyroute2) lists as AF_INET or
AF_INET6 TCP or UDP becomes an INETSK entry of files.img: family, type,
state, addresses and ports (getsockname/getpeername of a pidfd_getfd copy),
backlog, socket, TCP and IP options, and the owner uid (sock_diag's
idiag_uid). TCP sockets may be unbound, bound, listening (connections
waiting to be accepted: see pending) or established; UDP ones unbound,
bound or connected (their queued datagrams are not kept, as CRIU). An established
connection is locked first (netlock), then read through TCP_REPAIR (repair)
into tcp-stream-INO.img, both queues after the entry. Any other TCP state is
refused with the fd named, and the tree is left running.

The lock stays until the restore has put the connection back (like CRIU):
with the default kill the dumped sockets die silently in repair mode; with
--leave-running, or when the dump fails, repair mode is turned off and the
lock removed.

Restore: each socket is made by the task that holds it (engine_restore_file),
owned by the dumped uid (``_owned_socket``), given its options, then bound,
listened, connected, or rebuilt in repair mode behind the lock. One node per
task (after every fd table) turns repair off, and the lock is removed when
the restore finishes or fails. Images are checked before anything starts:
an impossible family/type/state, a malformed address, a missing or
inconsistent tcp-stream image is refused naming the image and field.
"""
from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import socket
import struct

from engine import hookimpl
from engine.fds import fdinfo, pidfd_getfd
from engine.graph import Node
from engine.stash import StashKey

from plugins.sk_inet import netlock, pending, repair

log = logging.getLogger("engine.plugins.sk_inet")

TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10
STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
          6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
          11: "CLOSING"}
KINDS = {(socket.SOCK_STREAM, socket.IPPROTO_TCP): (TCP_CLOSE, TCP_LISTEN, TCP_ESTABLISHED),
         (socket.SOCK_DGRAM, socket.IPPROTO_UDP): (TCP_CLOSE, TCP_ESTABLISHED)}
WORDS = {socket.AF_INET: 1, socket.AF_INET6: 4}
SO_BUF_LOCK, IP_FREEBIND, SO_SNDBUFFORCE, SO_RCVBUFFORCE = 72, 15, 32, 33
MAX_BUF = 256 << 20
CAP_CHOWN, CAP_SETUID = 0, 7

DIAG = StashKey()        # dump: inode -> sock_diag facts
STREAMS = StashKey()     # dump: inode -> (pid, fd, conn) of established TCP
LOCKED = StashKey()      # dump: connections in the lock, to undo on failure
TCP_DATA = StashKey()    # restore: inode -> (tcp_stream_entry, inq, outq)
CONNS = StashKey()       # restore: connections to lock, then unlock
UNSENT = StashKey()      # restore, in a task: inode -> bytes to send after repair
TASK_LOCKED = StashKey()  # restore, in a task: the lock is in place
RECONNECT = StashKey()   # restore: client inode -> bytes, of connections never accepted
RECONNECTING = StashKey()  # restore, in a task: inode -> (peer, conn, bytes)


@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    registry.register(ImageKind("tcp-stream", "tcp-stream-{id:x}.img", 0x51465506,
                                "engine.images.proto.tcp_stream_pb2", "tcp_stream_entry",
                                magic_name="TCP_STREAM", resource="file:INETSK",
                                payload=("inq_len", "outq_len")))


@hookimpl
def engine_addoption(parser):
    parser.add_argument("--sk-inet-uid-fallback", action="store_true",
                        help="restore an inet socket whose owner uid has no mapping in the "
                             "restoring user namespace with the restorer's uid (warns)")


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if not link.startswith("socket:["):
        return None
    table = ctx.stash.get(DIAG, None)
    if table is None:
        table = ctx.stash[DIAG] = _inet_sockets()
    info = table.get(stat.st_ino) or _unhashed(task.pid, fd, stat.st_ino)
    if info is None:
        return None                       # not inet: another plugin's
    where = f"task {task.pid}: fd {fd} ({link})"
    state = info["state"]
    tcp = info["proto"] == socket.IPPROTO_TCP
    if state not in KINDS[(socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM, info["proto"])]:
        raise ValueError(f"{where}: {'TCP' if tcp else 'UDP'} state "
                         f"{STATES.get(state, state)} is not supported")
    if tcp and state == TCP_LISTEN and info["rqueue"]:
        pending.check_listener(ctx, task.pid, fd, info, where)
    sock = socket.socket(fileno=pidfd_getfd(task.pid, fd))
    try:
        entry = _describe(sock, info, fdinfo(task.pid, fd)["flags"] & ~os.O_CLOEXEC)
    finally:
        sock.close()
    if tcp and state == TCP_ESTABLISHED:
        i = entry.isk
        conn = (_addr(i.family, i.src_addr), i.src_port, _addr(i.family, i.dst_addr),
                i.dst_port)
        ctx.stash.setdefault(STREAMS, {})[stat.st_ino] = (task.pid, fd, conn)
    return entry


@hookimpl
def engine_dump_finish(ctx):
    streams = ctx.stash.get(STREAMS, {})
    if not streams and not ctx.stash.get(pending.LISTENERS, None):
        return
    pending.check_clients(ctx, ctx.stash[DIAG], streams)
    conns = [conn for _, _, conn in streams.values()]
    netlock.lock(conns)
    ctx.stash[LOCKED] = conns
    for ino, (pid, fd, _) in sorted(streams.items()):
        with socket.socket(fileno=pidfd_getfd(pid, fd)) as sock:
            entry, inq, outq = repair.dump(sock)
        ctx.images.write("tcp-stream", [(entry, inq + outq)], id=ino)
    pending.take(ctx, _describe)
    if getattr(ctx.options, "leave_running", False):
        _let_go(ctx)


@hookimpl
def engine_dump_abort(ctx, error):
    pending.abort(ctx)
    if ctx.stash.get(LOCKED, None):
        _let_go(ctx)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    socks = {fid: e.isk for fid, e in ctx.files.items() if e.HasField("isk")}
    if not socks:
        return
    data, established = {}, set()
    for fid, i in socks.items():
        _check_entry(ctx, fid, i)
        if i.proto == socket.IPPROTO_TCP and i.state == TCP_ESTABLISHED:
            data[i.ino] = _read_stream(ctx, i)
            established.add(fid)
    ctx.stash[TCP_DATA], ctx.stash[CONNS] = data, connections(ctx.files.values())
    tables = {}
    for task in ctx.alive:
        files_id = ctx.ids(task.pid).files_id
        if ctx.images.exists("fdinfo", id=files_id):
            tables[task.pid] = ctx.images.read("fdinfo", id=files_id)
    referenced = {fi.id for fdinfos in tables.values() for fi in fdinfos}
    ctx.stash[RECONNECT] = pending.plan(socks, referenced, data)
    for pid, fdinfos in tables.items():
        fds = [(fi.fd, socks[fi.id].ino) for fi in fdinfos if fi.id in established]
        if fds:
            graph.add(Node(key=f"sk_inet:resume:{pid}", plugin="sk_inet", where="task",
                           pid=pid, data=fds,
                           label=f"TCP connections of {pid} live ({len(fds)})"))


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("isk"):
        return None
    i = entry.isk
    uid = _uid_for(ctx, i)
    sock = _owned_socket(i.family, i.type, i.proto, uid)
    try:
        _restore_socket(ctx, sock, i)
        if uid != os.geteuid():
            _check_owner(sock, i, uid)
    except BaseException:
        sock.close()
        raise
    return sock.detach()


@hookimpl
def engine_restore_node(ctx, node):
    if node.plugin != "sk_inet":
        return None
    unsent = ctx.stash.get(UNSENT, {})
    waiting = ctx.stash.get(RECONNECTING, {})
    for fd, ino in node.data:
        # Only in the task that made the socket (a shared one is done once).
        if ino not in unsent and ino not in waiting:
            continue
        sock = socket.socket(fileno=fd)
        try:
            if ino in unsent:
                repair.resume(sock, unsent.pop(ino))
            else:
                remote, conn, data = waiting.pop(ino)
                netlock.unlock([conn])
                pending.reconnect(sock, remote, data)
        finally:
            sock.detach()
    return True


@hookimpl
def engine_restore_finish(ctx):
    netlock.unlock(ctx.stash.get(CONNS, []))


@hookimpl
def engine_restore_abort(ctx, error):
    try:
        netlock.unlock(ctx.stash.get(CONNS, []))
    except Exception as e:  # noqa: BLE001 - must not raise; say so
        log.warning("%s", e)


# --- helpers: dump -----------------------------------------------------------

def _inet_sockets() -> dict[int, dict]:
    from pyroute2 import DiagSocket          # heavy: only when a socket is seen
    out = {}
    with DiagSocket() as ds:
        ds.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
                for m in ds.get_sock_stats(family=family, protocol=proto):
                    info = {"family": family, "proto": proto, "state": m["idiag_state"],
                            "uid": m["idiag_uid"], "rqueue": m["idiag_rqueue"],
                            "wqueue": m["idiag_wqueue"], "ino": m["idiag_inode"],
                            "local": (m["idiag_src"], m["idiag_sport"]),
                            "remote": (m["idiag_dst"], m["idiag_dport"])}
                    if info["ino"]:
                        out[info["ino"]] = info
                    elif proto == socket.IPPROTO_TCP and info["state"] == TCP_ESTABLISHED:
                        # No file yet: waiting in a listener's accept queue.
                        out.setdefault(0, []).append(info)
    return out


def _unhashed(pid: int, fd: int, ino: int) -> dict | None:
    """An inet socket sock_diag does not list: never bound (nor connected)."""
    with socket.socket(fileno=pidfd_getfd(pid, fd)) as sock:
        family, proto = sock.family, sock.proto
    if family not in WORDS or proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return None
    return {"family": int(family), "proto": proto, "state": TCP_CLOSE, "uid": None,
            "rqueue": 0, "wqueue": 0, "ino": ino}


def _describe(sock: socket.socket, info: dict, flags: int):
    from engine.images.proto import files_pb2
    entry = files_pb2.file_entry(type=files_pb2.INETSK, id=0)
    i = entry.isk
    family = info["family"]
    i.id, i.ino, i.family, i.type, i.proto = 0, info["ino"], family, int(sock.type), info["proto"]
    i.state, i.flags = info["state"], flags
    i.backlog = info["wqueue"] if info["state"] == TCP_LISTEN else 0
    local = sock.getsockname()
    i.src_port = local[1]
    i.src_addr.extend(_words(family, local[0]))
    if info["state"] == TCP_ESTABLISHED:
        remote = sock.getpeername()
        i.dst_port = remote[1]
        i.dst_addr.extend(_words(family, remote[0]))
    else:
        i.dst_port = 0
        i.dst_addr.extend([0] * WORDS[family])
    if family == socket.AF_INET6 and local[3]:
        i.ifname = socket.if_indextoname(local[3])
    # sock_diag lists no unbound socket: its owner is its inode's (sock_alloc).
    i.uid = info["uid"] if info["uid"] is not None else os.fstat(sock.fileno()).st_uid
    i.fown.uid = i.fown.euid = i.fown.signum = i.fown.pid_type = i.fown.pid = 0
    _dump_opts(sock, i)
    return entry


def _dump_opts(sock: socket.socket, i) -> None:
    def get(level, opt):
        return sock.getsockopt(level, opt)
    S, T = socket.SOL_SOCKET, socket.IPPROTO_TCP
    o = i.opts
    o.so_sndbuf, o.so_rcvbuf = get(S, socket.SO_SNDBUF), get(S, socket.SO_RCVBUF)
    for name, opt in (("snd", socket.SO_SNDTIMEO), ("rcv", socket.SO_RCVTIMEO)):
        sec, usec = struct.unpack("qq", sock.getsockopt(S, opt, 16))
        setattr(o, f"so_{name}_tmo_sec", sec)
        setattr(o, f"so_{name}_tmo_usec", usec)
    o.reuseaddr = bool(get(S, socket.SO_REUSEADDR))
    o.so_reuseport = bool(get(S, socket.SO_REUSEPORT))
    o.so_keepalive = bool(get(S, socket.SO_KEEPALIVE))
    o.so_broadcast = bool(get(S, socket.SO_BROADCAST))
    o.so_priority, o.so_rcvlowat = get(S, socket.SO_PRIORITY), get(S, socket.SO_RCVLOWAT)
    o.so_mark, o.so_oobinline = get(S, socket.SO_MARK), get(S, socket.SO_OOBINLINE)
    o.so_buf_lock = get(S, SO_BUF_LOCK)
    onoff, linger = struct.unpack("ii", sock.getsockopt(S, socket.SO_LINGER, 8))
    if onoff:
        o.so_linger = linger
    if i.proto == socket.IPPROTO_TCP:
        t = i.tcp_opts
        t.nodelay, t.cork = bool(get(T, socket.TCP_NODELAY)), bool(get(T, socket.TCP_CORK))
        t.keepcnt, t.keepidle = get(T, socket.TCP_KEEPCNT), get(T, socket.TCP_KEEPIDLE)
        t.keepintvl = get(T, socket.TCP_KEEPINTVL)
    i.ip_opts.freebind = bool(get(socket.IPPROTO_IP, IP_FREEBIND))
    if i.family == socket.AF_INET:
        i.ip_opts.tos = get(socket.IPPROTO_IP, socket.IP_TOS)
        i.ip_opts.ttl = get(socket.IPPROTO_IP, socket.IP_TTL)
    else:
        i.v6only = bool(get(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))


def _let_go(ctx) -> None:
    """Repair mode off on every dumped connection, then the lock removed."""
    for pid, fd, _ in ctx.stash.get(STREAMS, {}).values():
        try:
            with socket.socket(fileno=pidfd_getfd(pid, fd)) as sock:
                repair.resume(sock)
        except OSError as e:
            log.warning("task %d: fd %d: repair mode not turned off: %s", pid, fd, e)
    conns, ctx.stash[LOCKED] = ctx.stash.get(LOCKED, []), []
    netlock.unlock(conns)


# --- helpers: restore --------------------------------------------------------

def connections(entries) -> list:
    """The established TCP connections among files.img entries (lock tuples)."""
    return [(_addr(i.family, i.src_addr), i.src_port, _addr(i.family, i.dst_addr), i.dst_port)
            for i in (e.isk for e in entries if e.HasField("isk"))
            if i.proto == socket.IPPROTO_TCP and i.state == TCP_ESTABLISHED]


def _check_entry(ctx, fid: int, i) -> None:
    where = f"files.img: inet socket id {fid}"
    if i.family not in WORDS:
        raise ValueError(f"{where}: family {i.family} is not AF_INET or AF_INET6")
    states = KINDS.get((i.type, i.proto))
    if states is None:
        raise ValueError(f"{where}: type {i.type} with proto {i.proto} is not TCP or UDP")
    if i.state not in states:
        raise ValueError(f"{where}: state {STATES.get(i.state, i.state)} is not supported "
                         f"for {'TCP' if i.proto == socket.IPPROTO_TCP else 'UDP'}")
    for field in ("src_addr", "dst_addr"):
        n = len(getattr(i, field))
        if n not in (0, WORDS[i.family]):
            raise ValueError(f"{where}: {field} has {n} words, want {WORDS[i.family]}")
    for field in ("src_port", "dst_port"):
        if getattr(i, field) > 0xFFFF:
            raise ValueError(f"{where}: {field} = {getattr(i, field)} is not a port")
    if i.state == TCP_ESTABLISHED and not (i.dst_port and len(i.dst_addr)):
        raise ValueError(f"{where}: dst_port: a connected socket needs its peer")
    for field in ("so_sndbuf", "so_rcvbuf"):
        value = getattr(i.opts, field)
        if not 0 < value <= MAX_BUF:
            raise ValueError(f"{where}: opts.{field} = {value} is not a buffer size")
    if i.HasField("uid") and not _uid_mapped(i.uid) and not getattr(
            ctx.options, "sk_inet_uid_fallback", False):
        raise ValueError(f"{where}: uid {i.uid} has no mapping in the restoring user "
                         "namespace (--sk-inet-uid-fallback restores it as ours)")


def _read_stream(ctx, i):
    name = f"tcp-stream-{i.ino:x}.img"
    if not ctx.images.exists("tcp-stream", id=i.ino):
        raise ValueError(f"{name}: missing, for established TCP socket {i.ino}")
    found = ctx.images.read("tcp-stream", id=i.ino)
    if len(found) != 1:
        raise ValueError(f"{name}: {len(found)} entries, want exactly 1")
    e, data = found[0]
    if e.HasField("unsq_len") and e.unsq_len > e.outq_len:
        raise ValueError(f"{name}: unsq_len = {e.unsq_len} is more than outq_len = "
                         f"{e.outq_len}")
    if not 0 < e.mss_clamp <= 0xFFFF:
        raise ValueError(f"{name}: mss_clamp = {e.mss_clamp} is not an MSS")
    if e.snd_wscale > 14 or e.rcv_wscale > 14:
        raise ValueError(f"{name}: snd_wscale/rcv_wscale over 14")
    return e, data[:e.inq_len], data[e.inq_len:]


def _restore_socket(ctx, sock: socket.socket, i) -> None:
    S, T = socket.SOL_SOCKET, socket.IPPROTO_TCP
    o = i.opts
    # The kernel doubles what it is given (socket(7)); FORCE: over the sysctl max.
    sock.setsockopt(S, SO_SNDBUFFORCE, o.so_sndbuf // 2)
    sock.setsockopt(S, SO_RCVBUFFORCE, o.so_rcvbuf // 2)
    # Bind even beside a connection restored first on the same port; the
    # dumped value is set once bound (criu/sk-inet.c does the same).
    sock.setsockopt(S, socket.SO_REUSEADDR, 1)
    if o.HasField("so_reuseport"):
        sock.setsockopt(S, socket.SO_REUSEPORT, int(o.so_reuseport))
    if i.family == socket.AF_INET6 and i.HasField("v6only"):
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(i.v6only))
    if i.ip_opts.freebind:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    local = _sockaddr(i, i.src_addr, i.src_port)
    remote = _sockaddr(i, i.dst_addr, i.dst_port)
    if i.proto == T and i.state == TCP_ESTABLISHED and i.ino in ctx.stash.get(RECONNECT, {}):
        sock.bind(local)                  # connects once its listener listens
        conn = (local[0], local[1], remote[0], remote[1])
        ctx.stash.setdefault(RECONNECTING, {})[i.ino] = (remote, conn,
                                                         ctx.stash[RECONNECT][i.ino])
    elif i.proto == T and i.state == TCP_ESTABLISHED:
        if not ctx.stash.get(TASK_LOCKED, False):
            netlock.lock(ctx.stash[CONNS])
            ctx.stash[TASK_LOCKED] = True
        e, inq, outq = ctx.stash[TCP_DATA][i.ino]
        ctx.stash.setdefault(UNSENT, {})[i.ino] = repair.restore(sock, e, inq, outq,
                                                                 local, remote)
    else:
        if i.src_port or any(i.src_addr):
            sock.bind(local)
        if i.state == TCP_LISTEN:
            sock.listen(i.backlog)
        elif i.state == TCP_ESTABLISHED:          # UDP
            sock.connect(remote)
    sock.setsockopt(S, socket.SO_REUSEADDR, int(o.reuseaddr))
    for name, opt in (("snd", socket.SO_SNDTIMEO), ("rcv", socket.SO_RCVTIMEO)):
        sec, usec = getattr(o, f"so_{name}_tmo_sec"), getattr(o, f"so_{name}_tmo_usec")
        if sec or usec:
            sock.setsockopt(S, opt, struct.pack("qq", sec, usec))
    for field, opt in (("so_keepalive", socket.SO_KEEPALIVE),
                       ("so_broadcast", socket.SO_BROADCAST),
                       ("so_priority", socket.SO_PRIORITY), ("so_rcvlowat", socket.SO_RCVLOWAT),
                       ("so_mark", socket.SO_MARK), ("so_oobinline", socket.SO_OOBINLINE)):
        if o.HasField(field) and getattr(o, field):
            sock.setsockopt(S, opt, int(getattr(o, field)))
    if o.HasField("so_linger"):
        sock.setsockopt(S, socket.SO_LINGER, struct.pack("ii", 1, o.so_linger))
    if o.HasField("so_buf_lock"):
        sock.setsockopt(S, SO_BUF_LOCK, o.so_buf_lock)
    if i.proto == T:
        _restore_tcp_opts(sock, i)
    if i.family == socket.AF_INET:
        if i.ip_opts.HasField("tos"):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, i.ip_opts.tos)
        if i.ip_opts.HasField("ttl"):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, i.ip_opts.ttl)
    fl = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(sock.fileno(), fcntl.F_SETFL,
                (fl & ~os.O_NONBLOCK) | (i.flags & os.O_NONBLOCK))


def _restore_tcp_opts(sock: socket.socket, i) -> None:
    T = socket.IPPROTO_TCP
    if i.HasField("tcp_opts"):
        t = i.tcp_opts
        knobs = {socket.TCP_NODELAY: t.nodelay, socket.TCP_CORK: t.cork,
                 socket.TCP_KEEPCNT: t.keepcnt, socket.TCP_KEEPIDLE: t.keepidle,
                 socket.TCP_KEEPINTVL: t.keepintvl}
        present = {socket.TCP_NODELAY: "nodelay", socket.TCP_CORK: "cork",
                   socket.TCP_KEEPCNT: "keepcnt", socket.TCP_KEEPIDLE: "keepidle",
                   socket.TCP_KEEPINTVL: "keepintvl"}
        knobs = {k: v for k, v in knobs.items() if t.HasField(present[k])}
    else:                                  # CRIU 3.x kept them in sk_opts
        o = i.opts
        knobs = {opt: getattr(o, f) for opt, f in (
            (socket.TCP_KEEPCNT, "tcp_keepcnt"), (socket.TCP_KEEPIDLE, "tcp_keepidle"),
            (socket.TCP_KEEPINTVL, "tcp_keepintvl")) if o.HasField(f)}
    for opt, value in knobs.items():
        if value or opt in (socket.TCP_NODELAY, socket.TCP_CORK):
            sock.setsockopt(T, opt, int(value))


def _sockaddr(i, words, port):
    if i.family == socket.AF_INET:
        return (_addr(i.family, words), port)
    scope = socket.if_nametoindex(i.ifname) if i.ifname else 0
    return (_addr(i.family, words), port, 0, scope)


def _words(family: int, host: str) -> list[int]:
    raw = socket.inet_pton(family, host)
    return list(struct.unpack(f"<{len(raw) // 4}I", raw))


def _addr(family: int, words) -> str:
    words = list(words) or [0] * WORDS[family]
    return socket.inet_ntop(family, struct.pack(f"<{len(words)}I", *words))


# --- helpers: the owner uid --------------------------------------------------

def _uid_for(ctx, i) -> int:
    """The uid the socket must belong to (its own if the image has none)."""
    mine = os.geteuid()
    if not i.HasField("uid"):
        return mine
    if not _uid_mapped(i.uid):
        log.warning("inet socket %d: uid %d has no mapping here: restored as uid %d",
                    i.ino, i.uid, mine)
        return mine
    return i.uid


def _uid_mapped(uid: int) -> bool:
    with open("/proc/self/uid_map") as f:
        for line in f:
            inside, _, count = (int(x) for x in line.split())
            if inside <= uid < inside + count:
                return True
    return False


def _owned_socket(family: int, stype: int, proto: int, uid: int) -> socket.socket:
    """A new socket whose owner (sk_uid, what `-m owner` matches) is `uid`.

    The kernel stamps sk_uid from the creator's fsuid, and fchown of the
    socket sets it too (sockfs_setattr). With CAP_SETUID the socket is made
    under setfsuid(uid), as the fork of CRIU that added the uid does; with
    only CAP_CHOWN it is fchown'ed, as upstream CRIU does. The result is
    checked: a socket with another owner is never handed back.
    """
    if uid == os.geteuid():
        return socket.socket(family, stype, proto)
    caps = _effective_caps()
    libc = ctypes.CDLL(None, use_errno=True)
    if caps & (1 << CAP_SETUID):
        old = libc.setfsuid(uid)
        try:
            if libc.setfsuid(uid) != uid:          # returns the fsuid now in force
                raise PermissionError(f"setfsuid({uid}) refused")
            sock = socket.socket(family, stype, proto)
        finally:
            libc.setfsuid(old)
    elif caps & (1 << CAP_CHOWN):
        sock = socket.socket(family, stype, proto)
        os.fchown(sock.fileno(), uid, -1)
    else:
        raise PermissionError(f"cannot give a socket to uid {uid}: neither CAP_SETUID "
                              "nor CAP_CHOWN")
    got = os.fstat(sock.fileno()).st_uid
    if got != uid:
        sock.close()
        raise PermissionError(f"socket owner is uid {got}, not {uid}")
    return sock


def _check_owner(sock: socket.socket, i, uid: int) -> None:
    """sk_uid as the kernel shows it (/proc/net/*'s uid column), once the
    socket is hashed there; an unbound one has only its inode's owner."""
    ino = os.fstat(sock.fileno()).st_ino
    name = ("tcp" if i.proto == socket.IPPROTO_TCP else "udp") + (
        "6" if i.family == socket.AF_INET6 else "")
    with open(f"/proc/net/{name}") as f:
        for line in f:
            cols = line.split()
            if len(cols) > 9 and cols[9] == str(ino):
                if int(cols[7]) != uid:
                    raise PermissionError(f"inet socket {i.ino}: owner is uid {cols[7]} "
                                          f"in /proc/net/{name}, not {uid}")
                return


def _effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0

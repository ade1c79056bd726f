"""sk_inet: TCP, UDP, raw and ICMP ping sockets, IPv4 and IPv6 (criu/sk-inet.c, sk-tcp.c).

Dump: a ``socket:[INODE]`` fd that sock_diag (pyroute2) lists as AF_INET or
AF_INET6 TCP or UDP (or that is one and was never bound) becomes an INETSK
entry of files.img: family, type, state, addresses and ports
(getsockname/getpeername of a pidfd_getfd copy), backlog, socket, TCP and IP
options, and the owner uid (sock_diag's idiag_uid, in inet_sk_entry's
``uid``: field 21, upstream CRIU's and the fork's alike). TCP sockets may be
unbound, bound, listening (with connections waiting to be accepted: see
pending.py), established or half-closed (FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK,
CLOSING: a FIN received must come from a peer in the tree, which sends it
again); UDP ones unbound, bound or connected (their queued datagrams are not
kept, as CRIU). Raw sockets (any protocol) and ICMP "ping" datagram sockets
are dumped alike (type and protocol in the entry, as CRIU): bound or
connected (their state and peer from /proc/PID/net/raw or icmp, since
getpeername fails without a port), a ping socket's ident as its port,
IP_HDRINCL, IP_NODEFRAG and the ICMP type filter in ip_opts.raw (a raw
IPv6 socket with IPV6_CHECKSUM set, ICMPv6 aside, is refused: the image
keeps no offset); their queued datagrams are dropped, as UDP's. Every inet socket also keeps
IP(V6)_RECVERR and IP(V6)_MTU_DISCOVER (ip_opts fields 64 and 65),
SO_TIMESTAMP(NS) (sk_opts field 65; engine extensions CRIU ignores) and its
classic socket filter (so_filter, as CRIU). A connection is locked first
(netlock.py), then read through TCP_REPAIR (repair.py) into
tcp-stream-INO.img, both queues after the entry. Any other TCP state
(SYN_SENT, SYN_RECV) is refused with the fd named, and the tree is left
running.

The lock stays until the restore has put the connection back (like CRIU):
with the default kill the dumped sockets die silently in repair mode; with
--leave-running, or when the dump fails, repair mode is turned off and the
lock removed.

Restore: each socket is made by the task that holds it (engine_restore_file),
owned by the dumped uid (owner.py), given its options, then bound,
listened, connected, or rebuilt in repair mode behind the lock. One node per
task, after every fd table (so every listener listens), turns repair mode
off and reconnects the clients of connections never accepted; the lock is
removed when the restore finishes or fails. Images are checked before
anything starts: an impossible family/type/state, a malformed address, an
unmapped owner uid, a missing or inconsistent tcp-stream image is refused
naming the image and field.
"""
from __future__ import annotations

import logging
import os
import socket

from engine import hookimpl
from engine.fds import fdinfo, pidfd_getfd
from engine.graph import Node
from engine.stash import StashKey

from plugins.sk_inet.inet import (GOT_FIN, SENT_FIN, STATES, TCP_ESTABLISHED, TCP_LISTEN,
                                  conn, connected, connections, kind_name, kind_states)

log = logging.getLogger("engine.plugins.sk_inet")

DIAG = StashKey()        # dump: inode -> sock_diag facts
STREAMS = StashKey()     # dump: inode -> (pid, fd, conn, SO_REUSEADDR, state) of connected TCP
LOCKED = StashKey()      # dump: connections in the lock, to undo on failure
TCP_DATA = StashKey()    # restore: inode -> (tcp_stream_entry, inq, outq)
CONNS = StashKey()       # restore: connections to lock, then unlock
UNSENT = StashKey()      # restore, in a task: inode -> (bytes to send, SO_REUSEADDR)
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

# trylast: unix sockets are claimed first (no sock_diag inet query for them).
@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if not link.startswith("socket:["):
        return None
    from plugins.sk_inet import dump, pending
    table = ctx.stash.get(DIAG, None)
    if table is None:
        table = ctx.stash[DIAG] = dump.inet_sockets()
    info = table.get(stat.st_ino) or dump.unhashed(task.pid, fd, stat.st_ino)
    if info is None:
        return None                       # not inet: another plugin's
    where = f"task {task.pid}: fd {fd} ({link})"
    state = info["state"]
    stype = info.get("type", socket.SOCK_STREAM if info["proto"] == socket.IPPROTO_TCP
                     else socket.SOCK_DGRAM)
    tcp = stype == socket.SOCK_STREAM
    if state not in kind_states(info["family"], stype, info["proto"]):
        raise ValueError(f"{where}: {kind_name(stype, info['proto'])} state "
                         f"{STATES.get(state, state)} is not supported")
    if tcp and state == TCP_LISTEN and info["rqueue"]:
        pending.check_listener(ctx, task.pid, fd, info, where)
    sock = socket.socket(fileno=pidfd_getfd(task.pid, fd))
    try:
        entry = dump.describe(sock, info, fdinfo(task.pid, fd)["flags"] & ~os.O_CLOEXEC)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    finally:
        sock.close()
    if connected(entry.isk):
        ctx.stash.setdefault(STREAMS, {})[stat.st_ino] = (
            task.pid, fd, connections([entry])[0], entry.isk.opts.reuseaddr, state)
    return entry


@hookimpl
def engine_dump_finish(ctx):
    from plugins.sk_inet import dump, netlock, pending, repair
    streams = ctx.stash.get(STREAMS, {})
    if not streams and not ctx.stash.get(pending.LISTENERS, None):
        return
    pending.check_clients(ctx, ctx.stash[DIAG], streams)
    _check_fins({s[2]: s[4] for s in streams.values()}, "dumped tree")
    conns = [s[2] for s in streams.values()]
    netlock.lock(conns)
    ctx.stash[LOCKED] = conns
    for ino, (pid, fd, _, _, state) in sorted(streams.items()):
        with socket.socket(fileno=pidfd_getfd(pid, fd)) as sock:
            entry, inq, outq = repair.dump(sock, state in SENT_FIN)
        ctx.images.write("tcp-stream", [(entry, inq + outq)], id=ino)
    pending.take(ctx, dump.describe)
    if getattr(ctx.options, "leave_running", False):
        _let_go(ctx)


@hookimpl
def engine_dump_abort(ctx, error):
    from plugins.sk_inet import pending
    pending.abort(ctx)
    if ctx.stash.get(LOCKED, None):
        try:
            _let_go(ctx)
        except Exception as e:  # noqa: BLE001 - must not raise; say so
            log.warning("%s", e)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    socks = {fid: e.isk for fid, e in ctx.provided("files").items() if e.HasField("isk")}
    if not socks:
        return
    from plugins.sk_inet import pending, restore
    data, established = {}, set()
    for fid, i in socks.items():
        restore.check_entry(ctx, fid, i)
        if connected(i):
            data[i.ino] = restore.read_stream(ctx, i)
            established.add(fid)
    ctx.stash[TCP_DATA], ctx.stash[CONNS] = data, connections(ctx.provided("files").values())
    _check_fins({conn(i): i.state for i in socks.values() if connected(i)}, "images")
    tables = ctx.provided("fds").tables
    referenced = {file_id for table in tables.values() for _, file_id, _ in table}
    ctx.stash[RECONNECT] = pending.plan(socks, referenced, data)
    for pid, table in tables.items():
        fds = [(fd, socks[file_id].ino) for fd, file_id, _ in table if file_id in established]
        if fds:
            graph.add(Node(key=f"sk_inet:resume:{pid}", plugin="sk_inet", where="task",
                           pid=pid, data=fds,
                           label=f"TCP connections of {pid} live ({len(fds)})"))


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("isk"):
        return None
    from plugins.sk_inet import owner, restore
    i = entry.isk
    uid = owner.uid_for(ctx, i)
    sock = owner.owned_socket(i.family, i.type, i.proto, uid)
    try:
        restore.before_bind(sock, i)
        _place(ctx, sock, i)
        restore.after_bind(sock, i)
        if uid != os.geteuid():
            owner.check_owner(sock, i, uid)
    except OSError as e:
        sock.close()
        # The kernel refusing an image's value (an address no interface
        # has...): name the socket, as a refusal at collect does.
        from engine.images import ImageError
        from plugins.sk_inet.inet import addr
        raise ImageError("files.img", f"inet socket id {entry.id} ({STATES.get(i.state, i.state)}"
                                      f" on {addr(i.family, i.src_addr)} port {i.src_port}): "
                                      f"{e.strerror or e}") from None
    except BaseException:
        sock.close()
        raise
    return sock.detach()


@hookimpl
def engine_restore_node(ctx, node):
    from plugins.sk_inet import netlock, pending, repair
    unsent = ctx.stash.get(UNSENT, {})
    waiting = ctx.stash.get(RECONNECTING, {})
    for fd, ino in node.data:
        # Only in the task that made the socket (a shared one is done once).
        if ino not in unsent and ino not in waiting:
            continue
        sock = socket.socket(fileno=fd)
        try:
            if ino in unsent:
                repair.resume(sock, *unsent.pop(ino))           # FIN re-sent if it was
            else:
                remote, conn, data = waiting.pop(ino)
                netlock.unlock([conn])
                pending.reconnect(sock, remote, data)
        finally:
            sock.detach()
    return True


@hookimpl
def engine_restore_finish(ctx):
    _unlock(ctx)


@hookimpl
def engine_restore_abort(ctx, error):
    try:
        _unlock(ctx)
    except Exception as e:  # noqa: BLE001 - must not raise; say so
        log.warning("%s", e)


# --- helpers -------------------------------------------------------------------

def _unlock(ctx) -> None:
    conns = ctx.stash.get(CONNS, [])
    if conns:                      # netlock (and ipaddress) only loaded when needed
        from plugins.sk_inet import netlock
        netlock.unlock(conns)


def _let_go(ctx) -> None:
    from plugins.sk_inet import netlock, repair
    """Repair mode off on every dumped connection, then the lock removed."""
    for pid, fd, _, reuse, _ in ctx.stash.get(STREAMS, {}).values():
        try:
            with socket.socket(fileno=pidfd_getfd(pid, fd)) as sock:
                repair.resume(sock, reuse=reuse)
        except OSError as e:
            log.warning("task %d: fd %d: repair mode not turned off: %s", pid, fd, e)
    conns, ctx.stash[LOCKED] = ctx.stash.get(LOCKED, []), []
    netlock.unlock(conns)


def _check_fins(states: dict, where: str) -> None:
    """A FIN received cannot be replayed from here: the peer that sent it
    must come back too, and send it again (soccr injects a raw packet
    instead; the lock would drop it anyway)."""
    for (a, ap, b, bp), state in states.items():
        if state in GOT_FIN and states.get((b, bp, a, ap)) not in SENT_FIN:
            raise ValueError(f"TCP connection {a}:{ap} -> {b}:{bp} in {STATES[state]}: "
                             f"the peer that closed it is not in the {where}")


def _place(ctx, sock: socket.socket, i) -> None:
    from plugins.sk_inet import netlock, repair, restore
    """Bind, listen, connect, or rebuild in repair mode (behind the lock)."""
    local = restore.sockaddr(i, i.src_addr, i.src_port)
    remote = restore.sockaddr(i, i.dst_addr, i.dst_port)
    tcp = i.type == socket.SOCK_STREAM
    if tcp and i.state == TCP_ESTABLISHED and i.ino in ctx.stash.get(RECONNECT, {}):
        sock.bind(local)                  # connects once its listener listens
        conn = (local[0], local[1], remote[0], remote[1])
        ctx.stash.setdefault(RECONNECTING, {})[i.ino] = (remote, conn,
                                                         ctx.stash[RECONNECT][i.ino])
    elif connected(i):
        if not ctx.stash.get(TASK_LOCKED, False):
            netlock.lock(ctx.stash[CONNS])
            ctx.stash[TASK_LOCKED] = True
        e, inq, outq = ctx.stash[TCP_DATA][i.ino]
        unsent = repair.restore(sock, e, inq, outq, local, remote,
                                sent_fin=i.state in SENT_FIN, got_fin=i.state in GOT_FIN)
        ctx.stash.setdefault(UNSENT, {})[i.ino] = (unsent, i.opts.reuseaddr,
                                                   i.state in SENT_FIN)
    else:
        if i.src_port or any(i.src_addr):
            restore.on_port(sock.bind, local, local, tcp)
        if i.state == TCP_LISTEN:
            restore.on_port(sock.listen, i.backlog, local, tcp)
        elif i.state == TCP_ESTABLISHED:          # UDP
            sock.connect(remote)

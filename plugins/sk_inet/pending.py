"""Connections waiting in a listener's accept queue (not yet accepted).

Such a connection has two ends: the client C, an fd of the tree, and the
server end E, which no fd holds yet. The kernel offers no way to put a
socket back into an accept queue, so the queue is rebuilt the way it was
filled: C reconnects to the restored listener.

Dump (default kill only): sock_diag lists E as an ESTABLISHED socket with no
inode on the listener's port; its client must be a dumped fd (an external
client is refused, before anything is changed). Once the connections are
locked and their streams read, E is taken out of the queue with accept() on
the listener's copy, read through TCP_REPAIR and written as an INETSK entry
that no fd refers to, with its tcp-stream image; it is closed in repair mode,
silently. A dump failing after that point cannot give E back (warned).
--leave-running refuses such listeners: accepting would change the task.

Restore: an established entry held by no fd, on a listener's port, is such
an E. Its client is restored bound but unconnected; once every fd table is
restored (the listener listens), the client's lock is lifted, it connects,
and sends E's unread bytes then its own send queue, so the server reads, once
it accepts, exactly the bytes it would have read. The order of several
waiting connections in the queue is the order the clients reconnect in.
"""
from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import select
import socket

from engine.images.entries import add_file
from engine.fds import pidfd_getfd
from engine.images import ImageError
from engine.stash import StashKey

from plugins.sk_inet import repair

log = logging.getLogger("engine.plugins.sk_inet")

TCP_ESTABLISHED, TCP_LISTEN = 1, 10
LISTENERS = StashKey()     # dump: listener inode -> (pid, fd, diag info, where)
TAKEN = StashKey()         # dump: how many connections were accepted away


# --- dump ----------------------------------------------------------------

def check_listener(ctx, pid: int, fd: int, info: dict, where: str) -> None:
    if getattr(ctx.options, "leave_running", False):
        raise ValueError(f"{where}: {info['rqueue']} connection(s) not yet accepted cannot "
                         "be dumped with --leave-running (taking them changes the listener)")
    ctx.stash.setdefault(LISTENERS, {})[info["ino"]] = (pid, fd, info, where)


def check_clients(ctx, diag: dict, streams: dict) -> None:
    """Every waiting connection's client is a dumped fd (nothing changed yet)."""
    clients = {_key(*s[2]) for s in streams.values() if s[4] == TCP_ESTABLISHED}
    for pid, fd, info, where in ctx.stash.get(LISTENERS, {}).values():
        waiting = [e for e in diag.get(0, []) if _on(info, e)]
        if len(waiting) != info["rqueue"]:
            raise ValueError(f"{where}: {info['rqueue']} connection(s) not yet accepted, "
                             f"{len(waiting)} of them established (half-open handshakes "
                             "are not supported)")
        for e in waiting:
            if _key(*e["remote"], *e["local"]) not in clients:
                raise ValueError(f"{where}: connection not yet accepted from "
                                 f"{e['remote'][0]}:{e['remote'][1]}, a client outside the "
                                 "dumped tree, is not supported")


def take(ctx, describe) -> None:
    """Accept every waiting connection away and write it (locked, frozen)."""
    for pid, fd, info, where in ctx.stash.get(LISTENERS, {}).values():
        with socket.socket(fileno=pidfd_getfd(pid, fd)) as listener:
            for _ in range(info["rqueue"]):
                # poll first: the copy shares the task's (blocking) open file
                if not select.select([listener], [], [], 0)[0]:
                    raise ValueError(f"{where}: a waiting connection vanished")
                conn, _ = listener.accept()
                ctx.stash[TAKEN] = ctx.stash.get(TAKEN, 0) + 1
                with conn:
                    entry, inq, outq = repair.dump(conn)
                    ino = os.fstat(conn.fileno()).st_ino
                    server = describe(conn, {
                        "family": info["family"], "proto": socket.IPPROTO_TCP,
                        "state": TCP_ESTABLISHED, "uid": info["uid"], "rqueue": 0,
                        "wqueue": 0, "ino": ino}, os.O_RDWR)
                    add_file(ctx, server)
                    ctx.images.write("tcp-stream", [(entry, inq + outq)], id=ino)


def abort(ctx) -> None:
    if ctx.stash.get(TAKEN, 0):
        log.warning("%d connection(s) not yet accepted were taken out of their listener "
                    "and are lost", ctx.stash[TAKEN])


def _on(listener: dict, e: dict) -> bool:
    """Does waiting socket `e` sit on `listener`'s address and port?"""
    laddr, lport = listener["local"]
    return (e["local"][1] == lport and e["family"] == listener["family"]
            and (ipaddress.ip_address(laddr).is_unspecified or _ip(laddr) == _ip(e["local"][0])))


def _ip(a: str):
    ip = ipaddress.ip_address(a)
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


def _key(a, ap, b, bp):
    return (_ip(a), ap, _ip(b), bp)


# --- restore -----------------------------------------------------------------

def plan(socks: dict, referenced: set, data: dict) -> dict[int, bytes]:
    """client inode -> the bytes it sends once reconnected, for every
    established entry that no fd holds (a connection not yet accepted)."""
    from plugins.sk_inet.inet import addr as _addr
    est = {fid: i for fid, i in socks.items()
           if i.type == socket.SOCK_STREAM and i.state == TCP_ESTABLISHED}
    ports = {i.src_port for i in socks.values()
             if i.type == socket.SOCK_STREAM and i.state == TCP_LISTEN}

    def key(i, src, dst):
        return _key(_addr(i.family, getattr(i, src + "_addr")), getattr(i, src + "_port"),
                    _addr(i.family, getattr(i, dst + "_addr")), getattr(i, dst + "_port"))

    by_tuple = {key(i, "src", "dst"): i for fid, i in est.items() if fid in referenced}
    out = {}
    for fid, e in est.items():
        if fid in referenced:
            continue
        where = f"files.img: inet socket id {fid}"
        if e.src_port not in ports:
            raise ImageError(where, "established, held by no fd and on no listener's port")
        client = by_tuple.get(key(e, "dst", "src"))
        if client is None:
            raise ImageError(where, "a connection not yet accepted whose client is not "
                                    "in the images")
        _, e_inq, e_outq = data[e.ino]
        _, c_inq, c_outq = data[client.ino]
        if e_outq or c_inq:
            raise ImageError(where, "a connection never accepted has data from the server")
        out[client.ino] = e_inq + c_outq
    return out


def reconnect(sock: socket.socket, remote, data: bytes) -> None:
    """Connect for real to the restored listener and send what was in flight."""
    flags = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    try:
        sock.connect(remote)
        sock.sendall(data)
    finally:
        fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, flags)

"""unix, restore side, before anything starts: check the images and plan.

A unit is a connected pair (both ends made together) or a single socket.
Its node runs in the first task holding one of its fds (or, for a socket
only in flight, in the task whose queue carries it) and comes after the
nodes of what it needs: the listener or bound datagram socket it connects
to, the sockets its queues carry. A deleted name is unlinked by a node of
its own, after everything that reaches it by name. Every fd table waits for
the nodes of the sockets it holds. Anything the kernel could not hold is
refused here, in one line naming the image, the entry and the field.
"""
from __future__ import annotations

import os
import socket
import stat as st

import attrs

from engine.graph import Node
from engine.images import ImageError
from engine.stash import StashKey

from . import names
from .dump import TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TYPES, USK_EXTERN, SCM_MAX_FD

QUEUES = StashKey()      # file id -> [(sk_packet_entry, bytes)]
SOCKS = StashKey()       # file id -> unix_sk_entry
FD_BASE = StashKey()     # pid -> first fd number above its dumped fd table


@attrs.define(eq=False)
class Unit:
    key: str
    ids: tuple[int, ...]               # one socket, or the two ends of a pair
    listener: int | None = None        # pair: made by connect + accept on it
    accepted: int | None = None        # pair: the end accept() returns
    after: set[str] = attrs.field(factory=set)
    pid: int | None = None
    fd_base: int = 0                   # made fds go from here up: the fd table
                                       # is installed at the dumped numbers later


# --- collect ------------------------------------------------------------------

def collect(ctx, graph) -> None:
    socks = {fid: e.usk for fid, e in ctx.provided("files").items() if e.HasField("usk")}
    if not socks:
        return
    ctx.stash[SOCKS] = socks
    by_ino = {u.ino: fid for fid, u in socks.items()}
    limits = _limits()
    for fid, u in socks.items():
        _check(fid, u, socks, by_ino, limits)
    queues = _read_queues(ctx, socks, limits)
    ctx.stash[QUEUES] = queues
    units, unit_of = _units(socks, by_ino)
    _edges(socks, by_ino, units, unit_of, queues)
    _owners(ctx, socks, units, unit_of, queues)
    for unit in units.values():
        names = ", ".join(f"{i}{_show(socks[i])}" for i in unit.ids)
        what = "pair" if len(unit.ids) == 2 else "socket"
        # fd tables take the sockets it makes (shared_fds): after it.
        graph.add(Node(key=unit.key, plugin="unix", where="task", pid=unit.pid, data=unit,
                       after=sorted(unit.after), provides=[("file", i) for i in unit.ids],
                       label=f"unix {TYPES[socks[unit.ids[0]].type]} {what} {names}"))
    for fid, u in socks.items():
        if u.deleted and fid in unit_of:
            users = {unit_of[fid].key} | {un.key for un in units.values()
                                          if any(by_ino.get(socks[i].peer) == fid
                                                 for i in un.ids) or un.listener == fid}
            graph.add(Node(key=f"unix:unlink:{fid}", plugin="unix", where="task",
                           pid=unit_of[fid].pid, data=fid, after=sorted(users),
                           label=f"unlink deleted name of unix socket {fid}"))


def _limits() -> dict[str, int]:
    out = {}
    for key in ("wmem_max", "rmem_max", "somaxconn"):
        with open(f"/proc/sys/net/core/{key}") as f:
            out[key] = int(f.read())
    return out


def _check(fid: int, u, socks, by_ino, limits) -> None:
    """One line naming the entry and field for anything the kernel could not hold."""
    where = f"files.img: unix socket id {fid}"
    if u.type not in TYPES:
        raise ImageError(where, f"type {u.type} is not stream, dgram or seqpacket")
    kind = TYPES[u.type]
    if u.state not in (TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN):
        what = "connecting" if u.state == 2 else f"in state {u.state}"
        raise ImageError(where, f"state: a {kind} socket {what} cannot be restored")
    if u.state == TCP_LISTEN and u.type == socket.SOCK_DGRAM:
        raise ImageError(where, "state: a dgram socket cannot be listening")
    if u.state == TCP_LISTEN and u.peer:
        raise ImageError(where, "peer: a listening socket has no peer")
    # CRIU writes the send queue length here for a socket that does not listen.
    if u.state == TCP_LISTEN and u.backlog > limits["somaxconn"]:
        raise ImageError(where, f"backlog {u.backlog} is not a listen queue "
                                f"(net.core.somaxconn is {limits['somaxconn']})")
    # A connected dgram socket shows TCP_CLOSE on kernels before 5.15 (CRIU images).
    if u.state == TCP_CLOSE and u.peer and u.type != socket.SOCK_DGRAM:
        raise ImageError(where, f"peer: a closed {kind} socket has peer {u.peer}")
    if u.uflags & ~USK_EXTERN:
        raise ImageError(where, f"uflags {u.uflags:#x} are not supported")
    if u.shutdown and u.uflags & USK_EXTERN:
        raise ImageError(where, "shutdown: an external socket is not restored")
    if len(u.name) > 108 or (u.name[:1] not in (b"", b"\0") and len(u.name) > 107):
        raise ImageError(where, f"name of {len(u.name)} bytes is too long")
    if u.deleted and u.name[:1] in (b"", b"\0"):
        raise ImageError(where, "deleted: only a path name can be deleted")
    if u.name_dir and not u.name_dir.startswith("/"):
        raise ImageError(where, f"name_dir {u.name_dir!r} is not absolute")
    if u.name[:1] not in (b"", b"\0", b"/") and not u.name_dir:
        raise ImageError(where, f"name {u.name!r} is relative and has no name_dir")
    if u.name[:1] not in (b"", b"\0") and not u.uflags & USK_EXTERN:
        path = _path(u)
        if not os.path.isdir(os.path.dirname(path) or b"/"):
            raise ImageError(where, f"name: no directory {_printable(os.path.dirname(path))} "
                                    "to bind in")
        found = names.state(path)
        if found == names.OTHER:
            raise ImageError(where, f"name: {_printable(path)} exists and is not a socket")
        if found == names.LIVE:
            raise ImageError(where, f"name: {_printable(path)} is a live socket (a connect "
                                    "to it is answered): it is not replaced")
    if u.type == socket.SOCK_STREAM or u.type == socket.SOCK_SEQPACKET:
        if u.state == TCP_ESTABLISHED and u.uflags & USK_EXTERN:
            raise ImageError(where, f"a connected {kind} socket cannot be external")
    for field, sysctl in (("so_sndbuf", "wmem_max"), ("so_rcvbuf", "rmem_max")):
        value = getattr(u.opts, field)
        # The kernel doubles what setsockopt is given (socket(7)).
        if not 0 < value or value // 2 > limits[sysctl]:
            raise ImageError(where, f"opts.{field} = {value} is beyond the system "
                                    f"maximum (net.core.{sysctl} = {limits[sysctl]}, doubled)")
    for field in ("so_snd_tmo_usec", "so_rcv_tmo_usec"):
        if getattr(u.opts, field) >= 1000000:
            raise ImageError(where, f"opts.{field} = {getattr(u.opts, field)} "
                                    "is not below a second")
    if u.opts.HasField("so_peek_off") and u.opts.so_peek_off < -1:
        raise ImageError(where, f"opts.so_peek_off = {u.opts.so_peek_off} is negative")
    if not u.peer:
        return
    pfid = by_ino.get(u.peer)
    if pfid is None:
        raise ImageError(where, f"peer {u.peer} is not in the image (a peer outside "
                                "the tree is dumped as an external entry)")
    p = socks[pfid]
    if p.type != u.type:
        raise ImageError(where, f"peer {u.peer} is of another type")
    if p.state == TCP_LISTEN and u.type == socket.SOCK_DGRAM:
        raise ImageError(where, f"peer {u.peer} is listening")
    mutual = p.peer == u.ino and p.state != TCP_LISTEN
    if u.type != socket.SOCK_DGRAM and not mutual and p.state != TCP_LISTEN:
        raise ImageError(where, f"peer {u.peer} is not connected back")
    if not mutual and not p.name:
        raise ImageError(where, f"peer {u.peer} has no name to connect to")
    if p.uflags & USK_EXTERN and u.type != socket.SOCK_DGRAM:
        raise ImageError(where, "only a dgram socket may have an external peer")
    if p.uflags & USK_EXTERN and p.name[:1] != b"\0":
        try:
            there = os.stat(_path(p)).st_mode
        except OSError:
            there = 0
        if not st.S_ISSOCK(there):
            raise ImageError(where, f"its external peer {_printable(_path(p))} is not "
                                    "there to connect to")


def _read_queues(ctx, socks, limits) -> dict[int, list]:
    queues: dict[int, list] = {}
    if not ctx.images.exists("sk-queues"):
        # CRIU leaves it out when no queue holds data; one the engine's
        # dump wrote and lost is refused by engine-images.json.
        return queues
    total: dict[int, int] = {}
    cap = 2 * max(limits["wmem_max"], limits["rmem_max"])
    for i, (p, data) in enumerate(ctx.images.read("sk-queues")):
        where = f"sk-queues.img: entry {i}"
        u = socks.get(p.id_for)
        if u is None:
            raise ImageError(where, f"id_for {p.id_for} is not a unix socket of files.img")
        if u.state == TCP_LISTEN or u.uflags & USK_EXTERN:
            raise ImageError(where, f"id_for {p.id_for}: a listening or external "
                                    "socket has no messages")
        total[p.id_for] = total.get(p.id_for, 0) + p.length
        if total[p.id_for] > cap:
            raise ImageError(where, f"length: {total[p.id_for]} bytes queued for socket "
                                    f"{p.id_for} is beyond any buffer the system allows ({cap})")
        for scm in p.scm:
            if scm.type != socket.SCM_RIGHTS:
                raise ImageError(where, f"scm type {scm.type} is not SCM_RIGHTS")
            if len(scm.rights) > SCM_MAX_FD:
                raise ImageError(where, f"{len(scm.rights)} rights are over {SCM_MAX_FD}")
            for r in scm.rights:
                if r not in ctx.provided("files") or (r in socks and socks[r].uflags & USK_EXTERN):
                    raise ImageError(where, f"right {r} is not a file of files.img")
        queues.setdefault(p.id_for, []).append((p, data))
    return queues


def _listener_for(u, socks, by_name) -> int | None:
    if u.type == socket.SOCK_DGRAM or not u.name:
        return None
    return by_name.get((u.type, u.name_dir, u.name))


def _units(socks, by_ino):
    by_name = {(u.type, u.name_dir, u.name): fid for fid, u in socks.items()
               if u.state == TCP_LISTEN and u.name}
    units: dict[str, Unit] = {}
    unit_of: dict[int, Unit] = {}
    for fid, u in sorted(socks.items()):
        if fid in unit_of or u.uflags & USK_EXTERN:
            continue
        pfid = by_ino.get(u.peer) if u.peer else None
        p = socks.get(pfid)
        if p is not None and p.peer == u.ino and p.state != TCP_LISTEN:
            unit = Unit(key=f"unix:{fid}", ids=(fid, pfid))
            for end, other in ((fid, pfid), (pfid, fid)):
                lst = _listener_for(socks[end], socks, by_name)
                if lst is not None and unit.listener is None:
                    unit.listener, unit.accepted = lst, end
            unit_of[pfid] = unit
        else:
            unit = Unit(key=f"unix:{fid}", ids=(fid,))
        unit_of[fid] = unit
        units[unit.key] = unit
    return units, unit_of


def _edges(socks, by_ino, units, unit_of, queues) -> None:
    for unit in units.values():
        if unit.listener is not None:
            unit.after.add(unit_of[unit.listener].key)
        for fid in unit.ids:
            u = socks[fid]
            pfid = by_ino.get(u.peer) if u.peer else None
            if len(unit.ids) == 1 and pfid is not None and pfid in unit_of:
                unit.after.add(unit_of[pfid].key)
                if socks[pfid].state == TCP_LISTEN:
                    # Accepted pairs first: accept() takes the oldest connection.
                    unit.after |= {o.key for o in units.values() if o.listener == pfid}
            for p, _ in queues.get(fid, ()):
                for scm in p.scm:
                    unit.after |= {unit_of[r].key for r in scm.rights if r in unit_of}
        unit.after.discard(unit.key)


def _owners(ctx, socks, units, unit_of, queues) -> None:
    holder: dict[int, int] = {}
    for pid, fids in _fd_tables(ctx).items():
        for fid in fids:
            holder.setdefault(fid, pid)
    for unit in units.values():
        unit.pid = next((holder[f] for f in unit.ids if f in holder), None)
    carried = {}                          # socket id -> unit whose queue carries it
    for fid, packets in queues.items():
        for p, _ in packets:
            for scm in p.scm:
                for r in scm.rights:
                    if r in unit_of:
                        carried.setdefault(r, unit_of[fid])
    changed = True
    while changed:
        changed = False
        for unit in units.values():
            if unit.pid is None:
                for f in unit.ids:
                    if f in carried and carried[f].pid is not None:
                        unit.pid, changed = carried[f].pid, True
                        break
    top = {pid: max(fds, default=0) for pid, fds in _fd_tables(ctx, numbers=True).items()}
    for unit in units.values():
        unit.fd_base = max(top.get(unit.pid, 0) + 1, 64)
    ctx.stash[FD_BASE] = {pid: max(n + 1, 64) for pid, n in top.items()}
    for unit in units.values():
        if unit.pid is None:
            raise ImageError("files.img", f"unix socket id {unit.ids[0]} is held by no task, "
                                          "not even in flight in a queue a task holds")
    by_ino = {u.ino: f for f, u in socks.items()}
    for fid, u in socks.items():
        if queues.get(fid):
            _check_refill(fid, u, socks, by_ino)


def _check_refill(fid, u, socks, by_ino) -> None:
    """Someone can send the queued messages again (restore.py does it so):
    the pair's other end, the dead peer we make up, the connected-to peer
    (to our name), or a temporary sender (to our name)."""
    where = f"sk-queues.img: socket id {fid}"
    p = socks.get(by_ino.get(u.peer)) if u.peer else None
    if p is not None and p.peer == u.ino and p.state != TCP_LISTEN:
        return                                          # a pair
    if u.state == TCP_ESTABLISHED and not u.peer and (u.type != socket.SOCK_DGRAM
                                                      or not u.name):
        return                                          # its peer was closed
    if p is not None and p.state == TCP_LISTEN:
        raise ImageError(where, "a connection not yet accepted has no messages")
    if u.type != socket.SOCK_DGRAM:
        raise ImageError(where, f"a {TYPES[u.type]} socket with no peer has no messages")
    if p is not None and p.uflags & USK_EXTERN:
        raise ImageError(where, "messages from an external peer cannot be sent again")
    if not u.name:
        raise ImageError(where, "messages for an unnamed socket with no peer")


def _fd_tables(ctx, numbers: bool = False) -> dict[int, list[int]]:
    """pid -> file ids of its fd table (or the fd numbers)."""
    return {pid: [fd if numbers else file_id for fd, file_id, _ in table]
            for pid, table in ctx.provided("fds").tables.items()}


def _show(u) -> str:
    if u.state == TCP_LISTEN:
        return f" (listening on {_printable(u.name)})"
    return f" ({_printable(u.name)})" if u.name else ""


def _printable(name: bytes) -> str:
    return "@" + name[1:].decode(errors="replace") if name[:1] == b"\0" else \
        name.decode(errors="replace")


def _path(u) -> bytes:
    if u.name.startswith(b"/"):
        return u.name
    return os.path.join(os.fsencode(u.name_dir), u.name)

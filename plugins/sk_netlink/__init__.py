"""sk_netlink: netlink sockets of any protocol (criu/sk-netlink.c).

Dump: a ``socket:[INODE]`` fd that is an AF_NETLINK socket (route,
sock_diag, audit, generic netfilter...) becomes a NETLINKSK entry of
files.img (body ``nlsk``): its protocol, port id, the multicast groups it
listens to (every group, not only the first 32 CRIU keeps), the peer it
connected to (dst_portid, dst_group, state), its status flags and its
SOL_SOCKET options (buffers, timeouts, SO_PASSCRED, the classic BPF filter:
socks.py). These come from sock_diag (NETLINK_SOCK_DIAG, netlink_diag,
as CRIU), asked in the socket's own network namespace; a socket never bound
is not listed there, and has only its protocol (SO_PROTOCOL). The
SOL_NETLINK options set to 1 (NETLINK_PKTINFO, BROADCAST_ERROR, NO_ENOBUFS,
LISTEN_ALL_NSID, CAP_ACK, EXT_ACK, GET_STRICT_CHK; iproute2 sets EXT_ACK on
every socket) are kept in ``nl_opts`` (field 64, an engine extension CRIU
ignores: CRIU 4.2 does not restore them).

Refused at dump, naming the fd, the tree left running: a socket with
messages waiting to be read (as CRIU: a netlink queue cannot be put back,
the kernel alone sends to a socket), a socket in the middle of a dump
(NDIAG_FLAG_CB_RUNNING: the rest of the reply would be lost), a socket of
another network namespace than its task's, a locked filter.
Dropped on purpose: notifications the kernel sends while the tree is dumped
and not yet restored (nobody listens to its groups then; a program that
must not miss one re-reads the state, as after ENOBUFS).

Restore: socket(AF_NETLINK, SOCK_RAW, protocol) made by the task, its
options, bind to the dumped port id (with the first 32 groups; the others
by NETLINK_ADD_MEMBERSHIP), connect to the dumped peer, the SOL_NETLINK
options, then O_NONBLOCK. A port id taken meanwhile fails the restore,
naming the socket. Refused at collect (files.img, naming the field): a
protocol past MAX_LINKS, an unknown state, a group past the kernel's
largest, unknown nl_opts bits, impossible buffer sizes.
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket

from engine import hookimpl
from engine.fds import claiming_fdinfo, pidfd_getfd
from engine.images import ImageError
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.sk_netlink")

DIAG = StashKey()        # dump: netns inode -> {socket inode: netlink_diag facts}

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
MAX_LINKS = 32
NETLINK_UNCONNECTED, NETLINK_CONNECTED, NETLINK_CLOSE = 0, 1, 7   # sk_state; 7 = never connected
NDIAG_PROTO_ALL = 255
NDIAG_SHOW_GROUPS, NDIAG_SHOW_FLAGS = 0x2, 0x8
NDIAG_FLAG_CB_RUNNING = 0x1
NDIAG_FLAG_LISTEN_ALL_NSID = 0x10
# SOL_NETLINK options that are on/off flags of the socket, by number; all but
# LISTEN_ALL_NSID (8) read back with getsockopt (it is sock_diag's).
NL_OPTS = {3: "NETLINK_PKTINFO", 4: "NETLINK_BROADCAST_ERROR", 5: "NETLINK_NO_ENOBUFS",
           8: "NETLINK_LISTEN_ALL_NSID", 10: "NETLINK_CAP_ACK", 11: "NETLINK_EXT_ACK",
           12: "NETLINK_GET_STRICT_CHK"}
NL_OPTS_MASK = sum(1 << n for n in NL_OPTS)
MAX_GROUP = 1 << 10           # groups a test may hold; genetlink ids stay well under
FLAGS = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | fcntl.FASYNC


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if not link.startswith("socket:["):
        return None
    sock = socket.socket(fileno=pidfd_getfd(task.pid, fd))
    try:
        if sock.family != socket.AF_NETLINK:
            return None
        where = f"task {task.pid}: fd {fd} ({link})"
        from plugins.sk_netlink import socks
        socks.check_netns(sock, task.pid, where)
        info = _diag(ctx, sock).get(stat.st_ino)
        return _describe(sock, stat.st_ino, info, claiming_fdinfo(ctx, task.pid, fd)["flags"],
                         where)
    finally:
        sock.close()


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    for file_id, entry in ctx.provided("files").items():
        if entry.HasField("nlsk"):
            _check(file_id, entry.nlsk)


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("nlsk"):
        return None
    from plugins.sk_netlink import socks
    n = entry.nlsk
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, n.protocol)
    try:
        socks.restore_opts(sock, n.opts)
        groups = _group_numbers(n.groups)
        if n.portid:
            try:
                sock.bind((n.portid, sum(1 << (g - 1) for g in groups if g <= 32)))
            except OSError as e:
                raise OSError(e.errno, f"netlink socket id {entry.id}: bind to port id "
                                       f"{n.portid}: {e.strerror}") from None
            for group in (g for g in groups if g > 32):
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        if n.state == NETLINK_CONNECTED:
            sock.connect((n.dst_portid, 1 << (n.dst_group - 1) if n.dst_group else 0))
        for opt in NL_OPTS:
            if n.nl_opts & (1 << opt):
                sock.setsockopt(SOL_NETLINK, opt, 1)
        status = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
        fcntl.fcntl(sock.fileno(), fcntl.F_SETFL,
                    (status & ~(os.O_NONBLOCK | fcntl.FASYNC))
                    | (n.flags & (os.O_NONBLOCK | fcntl.FASYNC)))
    except BaseException:
        sock.close()
        raise
    return sock.detach()


# --- helpers -------------------------------------------------------------------

def _diag(ctx, sock: socket.socket) -> dict[int, dict]:
    """netlink_diag of every netlink socket in the namespace of `sock`, once per
    namespace and dump."""
    from plugins.sk_netlink import socks
    netns = socks.netns_of(sock)
    tables = ctx.stash.setdefault(DIAG, {})
    if netns not in tables:
        from plugins.sk_netlink.diag import netlink_sockets
        with socks.diag_socket(sock) as diag:
            tables[netns] = netlink_sockets(diag)
    return tables[netns]


def _describe(sock: socket.socket, ino: int, info: dict | None, flags: int, where: str):
    import select
    from engine.images.entries import file_entry
    from plugins.sk_netlink import socks
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    if poller.poll(0):
        raise ValueError(f"{where}: a netlink socket with unread messages (a netlink "
                         "queue cannot be restored)")
    entry = file_entry("NETLINKSK", "nlsk", ino=ino, flags=flags & ~os.O_CLOEXEC,
                       protocol=sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL),
                       state=NETLINK_CLOSE, portid=0, dst_portid=0, dst_group=0)
    n = entry.nlsk
    nl_opts = 0
    if info is not None:                  # else never bound: sock_diag lists it not
        if info["flags"] & NDIAG_FLAG_CB_RUNNING:
            raise ValueError(f"{where}: a netlink socket in the middle of a dump (the rest "
                             "of the reply would be lost)")
        n.portid, n.state = info["portid"], info["state"]
        n.dst_portid, n.dst_group = info["dst_portid"], info["dst_group"]
        n.groups.extend(info["groups"])
        if info["flags"] & NDIAG_FLAG_LISTEN_ALL_NSID:
            nl_opts |= 1 << 8
    for opt in NL_OPTS:
        if opt != 8 and sock.getsockopt(SOL_NETLINK, opt):
            nl_opts |= 1 << opt
    n.nl_opts = nl_opts
    socks.dump_opts(sock, n.opts, where)
    return entry


def _group_numbers(words) -> list[int]:
    """Group numbers (from 1) of a groups bitmap of u32 words."""
    return [w * 32 + b + 1 for w, word in enumerate(words) for b in range(32)
            if word & (1 << b)]


def _check(file_id: int, n) -> None:
    from plugins.sk_netlink import socks
    where = f"files.img: netlink socket id {file_id}"
    if n.protocol >= MAX_LINKS:
        raise ImageError(where, f"protocol {n.protocol} is not a netlink protocol "
                                f"(under {MAX_LINKS})")
    if n.state not in (NETLINK_UNCONNECTED, NETLINK_CONNECTED, NETLINK_CLOSE):
        raise ImageError(where, f"state {n.state} is not a netlink socket state")
    if len(n.groups) * 32 > MAX_GROUP:
        raise ImageError(where, f"groups has {len(n.groups)} words, more than "
                                f"{MAX_GROUP // 32}")
    if n.groups and any(n.groups) and not n.portid:
        raise ImageError(where, "groups: a socket listening to groups has a port id")
    if n.state == NETLINK_CONNECTED and n.dst_group > 32:
        raise ImageError(where, f"dst_group {n.dst_group} is over 32 (connect takes a mask "
                                "of 32 groups)")
    if n.nl_opts & ~NL_OPTS_MASK:
        raise ImageError(where, f"nl_opts {n.nl_opts:#x} hold unknown bits "
                                f"{n.nl_opts & ~NL_OPTS_MASK:#x}")
    if n.flags & ~FLAGS:
        raise ImageError(where, f"flags {n.flags:#o} hold unknown bits {n.flags & ~FLAGS:#o}")
    socks.check_opts(n.opts, where)

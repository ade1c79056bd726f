"""The owner of a restored socket (sk_uid), made in one place.

The kernel stamps sk_uid from the creating task's fsuid; netfilter's owner
match (`meta skuid`, `-m owner --uid-owner`) depends on it, so a socket must
come back owned by the dumped uid. The image holds it as the dumping
engine's user namespace sees it; a restoring task in a user namespace below
that one (e.g. --rootless) names it through its uid_map (outside -> inside).
A uid with no mapping there is refused at collect unless
--sk-inet-uid-fallback asks for the restorer's own uid (warned).
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("engine.plugins.sk_inet")

CAP_CHOWN, CAP_SETUID = 0, 7


def uid_for(ctx, i) -> int:
    """The uid the socket must belong to (its own if the image has none)."""
    mine = os.geteuid()
    if not i.HasField("uid"):
        return mine
    here = uid_here(i.uid)
    if here is None:
        log.warning("inet socket %d: uid %d has no mapping here: restored as uid %d",
                    i.ino, i.uid, mine)
        return mine
    return here


def uid_here(uid: int) -> int | None:
    """The dumped `uid` as this task's user namespace names it, or None."""
    with open("/proc/self/uid_map") as f:
        for line in f:
            inside, outside, count = (int(x) for x in line.split())
            if outside <= uid < outside + count:
                return inside + uid - outside
    return None


def owned_socket(family: int, stype: int, proto: int, uid: int) -> socket.socket:
    """A new socket whose owner (sk_uid, what `-m owner` matches) is `uid`.

    The kernel stamps sk_uid from the creator's fsuid, and fchown of the
    socket sets it too (sockfs_setattr). With CAP_SETUID the socket is made
    under setfsuid(uid), as the fork of CRIU that added the uid does; with
    only CAP_CHOWN it is fchown'ed, as upstream CRIU does. The result is
    checked: a socket with another owner is never handed back.
    """
    if uid == os.geteuid():
        return socket.socket(family, stype, proto)
    from engine.ns import effective_caps
    caps = effective_caps()
    from engine import libc
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


def check_owner(sock: socket.socket, i, uid: int) -> None:
    """sk_uid as the kernel shows it (/proc/net/*'s uid column), once the
    socket is hashed there; an unbound one has only its inode's owner."""
    ino = os.fstat(sock.fileno()).st_ino
    name = ("raw" if i.type == socket.SOCK_RAW else "tcp" if i.type == socket.SOCK_STREAM
            else "udp" if i.proto == socket.IPPROTO_UDP else "icmp") + (
        "6" if i.family == socket.AF_INET6 else "")
    with open(f"/proc/net/{name}") as f:
        for line in f:
            cols = line.split()
            if len(cols) > 9 and cols[9] == str(ino):
                if int(cols[7]) != uid:
                    raise PermissionError(f"inet socket {i.ino}: owner is uid {cols[7]} "
                                          f"in /proc/net/{name}, not {uid}")
                return

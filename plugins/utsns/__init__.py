"""utsns: the tree's UTS namespaces, hostname and domain name (criu/uts_ns.c).

Dump: every UTS namespace a live task is in, other than the engine's own,
into utsns-ID.img (ID: ids-PID.img uts_ns_id): nodename and domainname as
uname(2) shows them inside, read by a helper that joined it, and the user
namespace owning it (owner_id; 0: the engine's). Restore: the first task in
it (parents first) makes it and sets both names; the others join it
(engine/ns.py). A name longer than the kernel's 64 bytes is refused before
anything starts.
"""
from __future__ import annotations

import logging
import os

from engine import hookimpl
from engine.images import ImageError

log = logging.getLogger("engine.plugins.utsns")

MAX_NAME = 64                       # __NEW_UTS_LEN


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("utsns", "utsns-{id}.img", 0x54473203, P + "utsns_pb2", "utsns_entry",
                                magic_name="UTSNS"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_finish(ctx):
    from engine import ns
    from engine.images.proto import utsns_pb2
    users = ns.user_ids(ctx)
    for ns_id, (_, pids) in sorted(ns.dumped_ids(ctx, "uts").items()):
        nodename, domainname = ns.run_in(pids[0], ("uts",), _names)
        entry = utsns_pb2.utsns_entry(nodename=nodename, domainname=domainname,
                                      owner_id=ns.owner_id(ctx, pids[0], "uts", users))
        ctx.images.write("utsns", [entry], id=ns_id)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from engine import ns
    for ns_id, entry in ns.collect(ctx, graph, "utsns", "uts", "utsns"):
        for field in ("nodename", "domainname"):
            if len(getattr(entry, field).encode()) > MAX_NAME:
                raise ImageError(f"utsns-{ns_id}.img", f"{field} is longer than {MAX_NAME} bytes")


@hookimpl
def engine_restore_node(ctx, node):
    from engine import ns
    ns.restore(ctx, node, "uts", _set_names)
    return True


# --- helpers -----------------------------------------------------------------

def _names() -> tuple[str, str]:
    with open("/proc/sys/kernel/domainname") as f:
        domainname = f.read().rstrip("\n")
    return os.uname().nodename, domainname


def _set_names(entry) -> None:
    import socket
    from engine import libc
    socket.sethostname(entry.nodename)
    # setdomainname(2), not the sysctl: the file belongs to the initial root,
    # the call asks for CAP_SYS_ADMIN in the namespace's owner.
    name = entry.domainname.encode()
    libc.check(libc.setdomainname(name, len(name)), "setdomainname")

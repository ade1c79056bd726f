"""netns: the tree's network namespaces: loopback, addresses, routes (criu/net.c).

Dump: every network namespace a live task is in, other than the engine's
own: netns-ID.img (ID: ids-PID.img net_ns_id) with the user namespace owning
it, netdev-ID.img with its links, and its addresses and main-table routes as
raw netlink messages, the way `ip addr save` / `ip route save` write them
(CRIU's ifaddr-ID.img and route-ID.img), all read by a helper inside it
through pyroute2 (imported lazily). Only the loopback link is supported: a
namespace with any other link (veth, tun...) is refused at dump, naming the
task and the link; routes the kernel made itself (proto kernel) are left to
it. Restore: the first task in it (parents first) makes it, sets lo's
flags and MTU, adds the addresses (those the kernel already made when lo
came up are kept) and routes; the others join it (engine/ns.py).
"""
from __future__ import annotations

import logging
import os
import struct

from engine import hookimpl
from engine.images import ImageError
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.netns")

IP_DUMP_MAGIC = 0x45311224          # iproute2's `ip ... save` header
ND_LOOPBACK = 1
IFF_LOOPBACK = 0x8
RTPROT_KERNEL = 2
RT_TABLE_MAIN = 254
EEXIST = 17
NETS = StashKey()                   # ns id -> (links, addr messages, route messages)


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("netns", "netns-{id}.img", 0x55933752, P + "netdev_pb2", "netns_entry",
                                magic_name="NETNS"))
    registry.register(ImageKind("netdev", "netdev-{id}.img", 0x57373951, P + "netdev_pb2", "net_device_entry",
                                magic_name="NETDEV"))


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_finish(ctx):
    from engine import ns
    from engine.images.proto import netdev_pb2
    users = ns.user_ids(ctx)
    for ns_id, (_, pids) in sorted(ns.dumped_ids(ctx, "net").items()):
        links, addrs, routes = ns.run_in(pids[0], ("net",), _read)
        for link in links:
            if not link["flags"] & IFF_LOOPBACK:
                raise ValueError(f"task {pids[0]}: its network namespace has link "
                                 f"{link['name']}: only the loopback is supported")
        ctx.images.write("netns", [netdev_pb2.netns_entry(
            owner_id=ns.owner_id(ctx, pids[0], "net", users))], id=ns_id)
        ctx.images.write("netdev", [netdev_pb2.net_device_entry(type=ND_LOOPBACK, **link)
                                    for link in links], id=ns_id)
        for name, messages in (("ifaddr", addrs), ("route", routes)):
            with open(os.path.join(ctx.images.dir, f"{name}-{ns_id}.img"), "wb") as f:
                f.write(struct.pack("<I", IP_DUMP_MAGIC) + b"".join(messages))


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from engine import ns
    nets = ctx.stash.setdefault(NETS, {})
    for ns_id, entry in ns.collect(ctx, graph, "netns", "net", "netns"):
        links = ctx.images.read("netdev", id=ns_id) if ctx.images.exists("netdev", id=ns_id) else []
        for link in links:
            if link.type != ND_LOOPBACK:
                raise ImageError(f"netdev-{ns_id}.img", f"link {link.name}: type {link.type} "
                                                        "is not supported (only the loopback)")
        nets[ns_id] = (links, _messages(ctx, f"ifaddr-{ns_id}.img"),
                       _messages(ctx, f"route-{ns_id}.img"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine import ns
    if node.data[0] == "make":
        # Imported here: a helper inside a user namespace may not read them.
        import multiprocessing  # noqa: F401 - pyroute2 imports it late
        import pyroute2.iproute  # noqa: F401
        from pyroute2.netlink.rtnl import ifaddrmsg, rtmsg  # noqa: F401
        links, addrs, routes = ctx.stash[NETS][node.data[1]]
        ns.restore(ctx, node, "net", lambda entry: _setup(links, addrs, routes))
    else:
        ns.restore(ctx, node, "net", None)
    return True


# --- helpers -----------------------------------------------------------------

def _read():
    """In the namespace: its links, address and route messages (raw)."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        links = [{"ifindex": m["index"], "flags": m["flags"], "name": m.get_attr("IFLA_IFNAME"),
                  "mtu": m.get_attr("IFLA_MTU"),
                  "address": bytes.fromhex((m.get_attr("IFLA_ADDRESS") or "").replace(":", ""))}
                 for m in ipr.get_links()]
        addrs = [_raw(m) for m in ipr.get_addr()]
        routes = [_raw(m) for family in (2, 10) for m in ipr.get_routes(family=family,
                                                                         table=RT_TABLE_MAIN)
                  if m["proto"] != RTPROT_KERNEL and m["table"] == RT_TABLE_MAIN]
    return links, addrs, routes


def _raw(msg) -> bytes:
    return bytes(msg.data[msg.offset:msg.offset + msg.length])


def _messages(ctx, fname: str) -> list[bytes]:
    """The netlink messages of an `ip save` image, refused when malformed."""
    path = os.path.join(ctx.images.dir, fname)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or struct.unpack_from("<I", data)[0] != IP_DUMP_MAGIC:
        raise ImageError(fname, "not an `ip save` dump (magic)")
    out, pos = [], 4
    while pos < len(data):
        if pos + 16 > len(data):
            raise ImageError(fname, f"truncated message at offset {pos}")
        (size,) = struct.unpack_from("<I", data, pos)
        if size < 16 or pos + size > len(data):
            raise ImageError(fname, f"message at offset {pos} has a bad length {size}")
        out.append(data[pos:pos + size])
        pos += (size + 3) & ~3
    return out


def _setup(links, addrs, routes) -> None:
    """In the new namespace: lo as dumped, then addresses, then routes."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg
    with IPRoute() as ipr:
        for link in links:
            ipr.link("set", index=link.ifindex, mtu=link.mtu,
                     state="up" if link.flags & 1 else "down")
        for raw in addrs:
            m = ifaddrmsg(raw)
            m.decode()
            kw = {"index": m["index"], "address": m.get_attr("IFA_ADDRESS"),
                  "prefixlen": m["prefixlen"], "scope": m["scope"]}
            if m.get_attr("IFA_LABEL"):
                kw["label"] = m.get_attr("IFA_LABEL")
            if m.get_attr("IFA_LOCAL"):
                kw["local"] = m.get_attr("IFA_LOCAL")
            try:
                ipr.addr("add", **kw)
            except NetlinkError as e:
                if e.code != EEXIST:       # made by the kernel when lo came up
                    raise
        for raw in routes:
            m = rtmsg(raw)
            m.decode()
            kw = {"family": m["family"], "dst_len": m["dst_len"], "table": m["table"],
                  "proto": m["proto"], "scope": m["scope"], "type": m["type"]}
            for attr, key in (("RTA_DST", "dst"), ("RTA_OIF", "oif"),
                              ("RTA_GATEWAY", "gateway"), ("RTA_PRIORITY", "priority"),
                              ("RTA_PREFSRC", "prefsrc")):
                if m.get_attr(attr) is not None:
                    kw[key] = m.get_attr(attr)
            ipr.route("add", **kw)

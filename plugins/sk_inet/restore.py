"""sk_inet, restore side: checking entries and streams, setting options."""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct

from plugins.sk_inet.inet import (FILTER_WORDS, ICMP_FILTER, ICMPV6_FILTER,
                                  IP_HDRINCL, IP_MTU_DISCOVER, IP_NODEFRAG, IP_PKTINFO,
                                  IP_PMTUDISC_MAX, IP_RECVERR, IPV6_MTU_DISCOVER, IPV6_RECVERR,
                                  MAX_BUF, PING, SO_BUF_LOCK, SO_RCVBUFFORCE, SO_SNDBUFFORCE,
                                  SOL_RAW, STATES, TCP_ESTABLISHED, WORDS, addr, connected,
                                  freebind_opt, is_tcp, kind_name, kind_states)
from plugins.sk_inet.owner import uid_here
from engine.images import ImageError

log = logging.getLogger("engine.plugins.sk_inet")


def check_entry(ctx, fid: int, i) -> None:
    where = f"files.img: inet socket id {fid}"
    if i.family not in WORDS:
        raise ImageError(where, f"family {i.family} is not AF_INET or AF_INET6")
    states = kind_states(i.family, i.type, i.proto)
    if states is None:
        raise ImageError(where, f"type {i.type} with proto {i.proto} is not TCP, UDP, "
                                "ICMP ping or raw")
    if i.state not in states:
        raise ImageError(where, f"state {STATES.get(i.state, i.state)} is not supported "
                                f"for {kind_name(i.type, i.proto)}")
    _check_ip_opts(where, i)
    if i.ifname:
        try:
            socket.if_nametoindex(i.ifname)
        except OSError:
            raise ImageError(where, f"ifname {i.ifname!r}: no such interface") from None
    for field in ("src_addr", "dst_addr"):
        n = len(getattr(i, field))
        if n not in (0, WORDS[i.family]):
            raise ImageError(where, f"{field} has {n} words, want {WORDS[i.family]}")
    for field in ("src_port", "dst_port"):
        if getattr(i, field) > 0xFFFF:
            raise ImageError(where, f"{field} = {getattr(i, field)} is not a port")
    # a raw or ping socket connects to an address alone (no port)
    portless = i.type == socket.SOCK_RAW or i.proto in (socket.IPPROTO_ICMP,
                                                        socket.IPPROTO_ICMPV6)
    if (i.state == TCP_ESTABLISHED or connected(i)) and not (
            (i.dst_port or portless) and len(i.dst_addr)):
        raise ImageError(where, "dst_port: a connected socket needs its peer")
    for field in ("so_sndbuf", "so_rcvbuf"):
        value = getattr(i.opts, field)
        if not 0 < value <= MAX_BUF:
            raise ImageError(where, f"opts.{field} = {value} is not a buffer size")
    if i.HasField("uid") and uid_here(i.uid) is None and not getattr(
            ctx.options, "sk_inet_uid_fallback", False):
        raise ImageError(where, f"uid {i.uid} has no mapping in the restoring user "
                                "namespace (--sk-inet-uid-fallback restores it as ours)")


def read_stream(ctx, i):
    name = f"tcp-stream-{i.ino:x}.img"
    if not ctx.images.exists("tcp-stream", id=i.ino):
        raise ImageError(name, f"missing, for established TCP socket {i.ino}")
    found = ctx.images.read("tcp-stream", id=i.ino)
    if len(found) != 1:
        raise ImageError(name, f"{len(found)} entries, want exactly 1")
    e, data = found[0]
    if e.HasField("unsq_len") and e.unsq_len > e.outq_len:
        raise ImageError(name, f"unsq_len = {e.unsq_len} is more than outq_len = "
                               f"{e.outq_len}")
    if not 0 < e.mss_clamp <= 0xFFFF:
        raise ImageError(name, f"mss_clamp = {e.mss_clamp} is not an MSS")
    if e.snd_wscale > 14 or e.rcv_wscale > 14:
        raise ImageError(name, "snd_wscale/rcv_wscale over 14")
    return e, data[:e.inq_len], data[e.inq_len:]


def before_bind(sock: socket.socket, i) -> None:
    """Options that must be set before bind (and the buffers, before any data)."""
    S = socket.SOL_SOCKET
    o = i.opts
    # The kernel doubles what it is given (socket(7)); FORCE: over the sysctl max.
    sock.setsockopt(S, SO_SNDBUFFORCE, o.so_sndbuf // 2)
    sock.setsockopt(S, SO_RCVBUFFORCE, o.so_rcvbuf // 2)
    # Bind even beside a connection restored first on the same port; the
    # dumped value is set once bound (criu/sk-inet.c does the same).
    sock.setsockopt(S, socket.SO_REUSEADDR, 1)
    if o.HasField("so_reuseport"):
        sock.setsockopt(S, socket.SO_REUSEPORT, int(o.so_reuseport))
    # (a raw socket takes none: it has a port, its protocol, from the start)
    if i.family == socket.AF_INET6 and i.HasField("v6only") and (
            i.v6only or i.type != socket.SOCK_RAW):
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(i.v6only))
    if i.ip_opts.freebind:
        sock.setsockopt(*freebind_opt(i.family, i.type), 1)


def after_bind(sock: socket.socket, i) -> None:
    """Every other option, the dumped SO_REUSEADDR and O_NONBLOCK."""
    S = socket.SOL_SOCKET
    o = i.opts
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
    if is_tcp(i):
        _restore_tcp_opts(sock, i)
    if i.family == socket.AF_INET:
        if i.ip_opts.HasField("tos"):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, i.ip_opts.tos)
        if i.ip_opts.HasField("ttl"):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, i.ip_opts.ttl)
        if i.ip_opts.pktinfo:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    _restore_ip_opts(sock, i)
    fl = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(sock.fileno(), fcntl.F_SETFL,
                (fl & ~os.O_NONBLOCK) | (i.flags & os.O_NONBLOCK))


def _check_ip_opts(where: str, i) -> None:
    from plugins.sk_netlink import socks
    if i.ip_opts.HasField("mtu_discover") and i.ip_opts.mtu_discover > IP_PMTUDISC_MAX:
        raise ImageError(where, f"ip_opts.mtu_discover = {i.ip_opts.mtu_discover} is over "
                                f"{IP_PMTUDISC_MAX}")
    n = len(i.ip_opts.raw.icmpv_filter)
    if n and (i.type != socket.SOCK_RAW or i.proto != PING[i.family]
              or n != FILTER_WORDS[i.family]):
        raise ImageError(where, f"ip_opts.raw.icmpv_filter has {n} words: want "
                                f"{FILTER_WORDS[i.family]}, on a raw ICMP socket")
    socks.check_opts(i.opts, where)


def _restore_ip_opts(sock: socket.socket, i) -> None:
    """IP_RECVERR, IP_MTU_DISCOVER (their IPv6 twins), the raw socket's own
    options, SO_TIMESTAMP and the socket filter."""
    from plugins.sk_netlink import socks
    ip = i.ip_opts
    v4 = i.family == socket.AF_INET
    level = socket.IPPROTO_IP if v4 else socket.IPPROTO_IPV6
    if ip.HasField("recverr") and ip.recverr:
        sock.setsockopt(level, IP_RECVERR if v4 else IPV6_RECVERR, 1)
    if ip.HasField("mtu_discover"):
        sock.setsockopt(level, IP_MTU_DISCOVER if v4 else IPV6_MTU_DISCOVER, ip.mtu_discover)
    if i.type == socket.SOCK_RAW:
        if ip.raw.hdrincl:
            sock.setsockopt(socket.IPPROTO_IP, IP_HDRINCL, 1)
        if ip.raw.nodefrag:
            sock.setsockopt(socket.IPPROTO_IP, IP_NODEFRAG, 1)
        words = list(ip.raw.icmpv_filter)
        if words:
            sock.setsockopt(SOL_RAW if v4 else socket.IPPROTO_ICMPV6,
                            ICMP_FILTER if v4 else ICMPV6_FILTER,
                            struct.pack(f"<{len(words)}I", *words))
    socks.set_filter(sock, list(i.opts.so_filter))
    socks.set_timestamp(sock, i.opts.so_timestamp)


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


def sockaddr(i, words, port):
    if i.family == socket.AF_INET:
        return (addr(i.family, words), port)
    scope = socket.if_nametoindex(i.ifname) if i.ifname else 0
    return (addr(i.family, words), port, 0, scope)


def on_port(step, arg, local, tcp: bool) -> None:
    """bind or listen; a TCP port held only by TIME_WAIT remnants is reclaimed.

    SO_REUSEADDR lets a listener bind over the TIME_WAITs of its own old
    connections, not over those of a client that had the port as its
    ephemeral one (their sk_reuse is 0): on a busy machine (a thousand
    TIME_WAITs) a dumped port is taken that way now and then. Those dead
    connections are destroyed (sock_diag SOCK_DESTROY, through iproute2's
    `ss -K`) and the step tried once more; anything else holding the port
    is an error.
    """
    try:
        step(arg)
        return
    except OSError as e:
        if not tcp or e.errno != errno.EADDRINUSE:
            raise
        err = e
    host, where = local[0], []
    if host not in ("0.0.0.0", "::"):
        where = ["src", f"[{host}]" if ":" in host else host]
    cmd = ["ss", "-K", "-tnH", "state", "time-wait", *where, "sport", "=", f":{local[1]}"]
    killed = _subprocess().run(cmd, capture_output=True, text=True).stdout.strip()
    if not killed:
        raise err
    log.warning("port %d: %d TIME_WAIT socket(s) destroyed to restore a socket on it",
                local[1], len(killed.splitlines()))
    step(arg)


def _subprocess():
    import subprocess           # only when run: ~2 ms of every command's start
    return subprocess

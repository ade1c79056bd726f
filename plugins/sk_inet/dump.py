"""sk_inet, dump side: which sockets are inet ones, and their INETSK entries."""
from __future__ import annotations

import os
import socket
import struct

from engine.fds import pidfd_getfd

from plugins.sk_inet.inet import (CONNECTED, FILTER_WORDS, ICMP_FILTER, ICMPV6_FILTER,
                                  IP_HDRINCL, IP_MTU_DISCOVER, IP_NODEFRAG,
                                  IP_PKTINFO, IP_RECVERR, IPV6_CHECKSUM, IPV6_MTU_DISCOVER,
                                  IPV6_RECVERR, SO_BUF_LOCK, SOL_RAW, TCP_CLOSE,
                                  TCP_ESTABLISHED, TCP_LISTEN, WORDS, freebind_opt, kind_states,
                                  words)


# Every TCP state but TIME_WAIT (6) and NEW_SYN_RECV (12): those are never
# an fd's, and a busy machine holds thousands of them.
STATES_HELD = 0xFFF & ~(1 << 6) & ~(1 << 12)


def inet_sockets() -> dict[int, dict]:
    from pyroute2 import DiagSocket          # heavy: only when a socket is seen
    out = {}
    with DiagSocket() as ds:
        ds.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
                for m in ds.get_sock_stats(family=family, protocol=proto, states=STATES_HELD):
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


def unhashed(pid: int, fd: int, ino: int) -> dict | None:
    """An inet socket inet_sockets() does not list: a TCP or UDP one never
    bound (nor connected), or a raw or ICMP ping socket (sock_diag is not
    asked for those; their state and peer are read from /proc/PID/net/raw or
    icmp, getpeername failing on them with no port; the datagrams queued on
    them are dropped, as UDP's)."""
    with socket.socket(fileno=pidfd_getfd(pid, fd)) as sock:
        family, stype, proto = sock.family, sock.type, sock.proto
    if family not in WORDS or kind_states(family, stype, proto) is None:
        return None
    info = {"family": int(family), "type": int(stype), "proto": proto, "state": TCP_CLOSE,
            "uid": None, "rqueue": 0, "wqueue": 0, "ino": ino}
    if stype != socket.SOCK_STREAM and proto != socket.IPPROTO_UDP:
        name = ("raw" if stype == socket.SOCK_RAW else "icmp") + (
            "6" if family == socket.AF_INET6 else "")
        with open(f"/proc/{pid}/net/{name}") as f:
            for line in f:
                cols = line.split()
                if len(cols) > 9 and cols[9] == str(ino):
                    info["state"] = int(cols[3], 16)
                    host, port = cols[2].split(":")
                    info["peer"] = ([int(host[k:k + 8], 16) for k in range(0, len(host), 8)],
                                    int(port, 16))
    return info


def describe(sock: socket.socket, info: dict, flags: int):
    from engine.images.proto import files_pb2
    entry = files_pb2.file_entry(type=files_pb2.INETSK, id=0)
    i = entry.isk
    family = info["family"]
    i.id, i.ino, i.family, i.type, i.proto = 0, info["ino"], family, int(sock.type), info["proto"]
    i.state, i.flags = info["state"], flags
    i.backlog = info["wqueue"] if info["state"] == TCP_LISTEN else 0
    local = sock.getsockname()
    i.src_port = local[1]
    i.src_addr.extend(words(family, local[0]))
    if "peer" in info and info["state"] == TCP_ESTABLISHED:      # raw, ping
        i.dst_addr.extend(info["peer"][0])
        i.dst_port = info["peer"][1]
    elif info["state"] == TCP_ESTABLISHED or (sock.type == socket.SOCK_STREAM
                                              and info["state"] in CONNECTED):
        remote = sock.getpeername()
        i.dst_port = remote[1]
        i.dst_addr.extend(words(family, remote[0]))
    else:
        i.dst_port = 0
        i.dst_addr.extend([0] * WORDS[family])
    if family == socket.AF_INET6 and local[3]:
        i.ifname = socket.if_indextoname(local[3])
    # sock_diag lists no unbound socket: its owner is its inode's (sock_alloc).
    i.uid = info["uid"] if info["uid"] is not None else os.fstat(sock.fileno()).st_uid
    i.fown.uid = i.fown.euid = i.fown.signum = i.fown.pid_type = i.fown.pid = 0
    _dump_opts(sock, i)
    if i.type == socket.SOCK_RAW:
        _dump_raw_opts(sock, i)
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
    if i.type == socket.SOCK_STREAM:
        t = i.tcp_opts
        t.nodelay, t.cork = bool(get(T, socket.TCP_NODELAY)), bool(get(T, socket.TCP_CORK))
        t.keepcnt, t.keepidle = get(T, socket.TCP_KEEPCNT), get(T, socket.TCP_KEEPIDLE)
        t.keepintvl = get(T, socket.TCP_KEEPINTVL)
    i.ip_opts.freebind = bool(get(*freebind_opt(i.family, i.type)))
    if i.family == socket.AF_INET:
        i.ip_opts.tos = get(socket.IPPROTO_IP, socket.IP_TOS)
        i.ip_opts.ttl = get(socket.IPPROTO_IP, socket.IP_TTL)
        i.ip_opts.pktinfo = bool(get(socket.IPPROTO_IP, IP_PKTINFO))
        i.ip_opts.recverr = bool(get(socket.IPPROTO_IP, IP_RECVERR))
        i.ip_opts.mtu_discover = get(socket.IPPROTO_IP, IP_MTU_DISCOVER)
    else:
        i.v6only = bool(get(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
        i.ip_opts.recverr = bool(get(socket.IPPROTO_IPV6, IPV6_RECVERR))
        i.ip_opts.mtu_discover = get(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER)
    from plugins.sk_netlink import socks          # the socket layer's, every family's
    o.so_filter.extend(socks.get_filter(sock))
    timestamp = socks.get_timestamp(sock)
    if timestamp:
        o.so_timestamp = timestamp


def _dump_raw_opts(sock: socket.socket, i) -> None:
    """IP_HDRINCL, IP_NODEFRAG and the ICMP type filter of a raw socket
    (criu/sk-inet.c: dump_ip_raw_opts)."""
    r = i.ip_opts.raw
    if i.family == socket.AF_INET:
        r.hdrincl = bool(sock.getsockopt(socket.IPPROTO_IP, IP_HDRINCL))
        r.nodefrag = bool(sock.getsockopt(socket.IPPROTO_IP, IP_NODEFRAG))
        if i.proto == socket.IPPROTO_ICMP:
            r.icmpv_filter.extend(struct.unpack("<I", sock.getsockopt(SOL_RAW, ICMP_FILTER, 4)))
        return
    # IPv6: the checksum offset the kernel fills (an ICMPv6 socket's is fixed)
    if i.proto != socket.IPPROTO_ICMPV6 and sock.getsockopt(socket.IPPROTO_IPV6,
                                                            IPV6_CHECKSUM) != -1:
        raise ValueError("a raw IPv6 socket with IPV6_CHECKSUM set (the image keeps no "
                         "offset)")
    if i.proto == socket.IPPROTO_ICMPV6:
        raw = sock.getsockopt(socket.IPPROTO_ICMPV6, ICMPV6_FILTER, 4 * FILTER_WORDS[i.family])
        r.icmpv_filter.extend(struct.unpack(f"<{FILTER_WORDS[i.family]}I", raw))

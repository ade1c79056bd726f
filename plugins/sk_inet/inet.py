"""Facts about inet sockets shared by sk_inet's dump and restore sides.

Kernel numbers (TCP states, the socket options Python's socket module does
not name) and the address encoding of inet_sk_entry: CRIU keeps an address
as 32-bit words in the byte order of the in(6)_addr (one for IPv4, four for
IPv6).
"""
from __future__ import annotations

import socket
import struct

TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10
STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
          6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
          11: "CLOSING"}
# TCP states with a connection to rebuild through TCP_REPAIR, and among them
# those that sent a FIN (soccr's SNDQ_*_FIN) and those that got one (RCVQ_*).
CONNECTED = frozenset({1, 4, 5, 8, 9, 11})   # ESTABLISHED FIN_WAIT1/2 CLOSE_WAIT LAST_ACK CLOSING
SENT_FIN = frozenset({4, 5, 9, 11})
GOT_FIN = frozenset({8, 9, 11})
# (type, proto) -> the states this plugin dumps and restores; raw sockets
# (any protocol) and ICMP "ping" datagram sockets: see kind_states
DATAGRAM = frozenset({TCP_CLOSE, TCP_ESTABLISHED})
KINDS = {(socket.SOCK_STREAM, socket.IPPROTO_TCP): frozenset({TCP_CLOSE, TCP_LISTEN}) | CONNECTED,
         (socket.SOCK_DGRAM, socket.IPPROTO_UDP): DATAGRAM,
         (socket.SOCK_DGRAM, socket.IPPROTO_ICMP): DATAGRAM,
         (socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6): DATAGRAM}
# ping sockets: the ICMP of their own family only (ping_init_sock)
PING = {socket.AF_INET: socket.IPPROTO_ICMP, socket.AF_INET6: socket.IPPROTO_ICMPV6}
WORDS = {socket.AF_INET: 1, socket.AF_INET6: 4}
SO_BUF_LOCK, IP_FREEBIND, IP_PKTINFO, SO_SNDBUFFORCE, SO_RCVBUFFORCE = 72, 15, 8, 32, 33
IP_HDRINCL, IP_MTU_DISCOVER, IP_RECVERR, IP_NODEFRAG = 3, 10, 11, 22
IPV6_CHECKSUM, IPV6_MTU_DISCOVER, IPV6_RECVERR, IPV6_FREEBIND = 7, 23, 25, 78
SOL_RAW, ICMP_FILTER, ICMPV6_FILTER = 255, 1, 1
IP_PMTUDISC_MAX = 5                    # IP_PMTUDISC_OMIT
# words of an ICMP type filter: ICMP_FILTER's u32, ICMPV6_FILTER's 256 bits
FILTER_WORDS = {socket.AF_INET: 1, socket.AF_INET6: 8}
MAX_BUF = 256 << 20


def kind_states(family: int, stype: int, proto: int) -> frozenset | None:
    """The states this plugin takes for a socket of this kind, None when
    it takes none: TCP, UDP, ICMP ping sockets, raw sockets of any protocol."""
    if stype == socket.SOCK_RAW:
        return DATAGRAM if 0 < proto < 256 else None
    if stype == socket.SOCK_DGRAM and proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6) \
            and PING.get(family) != proto:
        return None
    return KINDS.get((stype, proto))


def freebind_opt(family: int, stype: int) -> tuple[int, int]:
    """(level, option) of IP_FREEBIND: a raw IPv6 socket knows only its IPv6
    name (IPV6_FREEBIND, the same flag)."""
    if family == socket.AF_INET6 and stype == socket.SOCK_RAW:
        return socket.IPPROTO_IPV6, IPV6_FREEBIND
    return socket.IPPROTO_IP, IP_FREEBIND


def kind_name(stype: int, proto: int) -> str:
    if stype == socket.SOCK_RAW:
        return f"raw (protocol {proto})"
    return {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP"}.get(proto, "ICMP ping")


def is_tcp(i) -> bool:
    """A TCP socket (not a raw one of protocol IPPROTO_TCP)."""
    return i.type == socket.SOCK_STREAM and i.proto == socket.IPPROTO_TCP


def connections(entries) -> list:
    """The TCP connections among files.img entries (lock tuples)."""
    return [conn(i) for i in (e.isk for e in entries if e.HasField("isk")) if connected(i)]


def conn(i) -> tuple:
    """(local address, port, remote address, port) of an inet_sk_entry."""
    return (addr(i.family, i.src_addr), i.src_port, addr(i.family, i.dst_addr), i.dst_port)


def connected(i) -> bool:
    """An inet_sk_entry rebuilt through TCP_REPAIR (with a tcp-stream image)."""
    return is_tcp(i) and i.state in CONNECTED


def words(family: int, host: str) -> list[int]:
    raw = socket.inet_pton(family, host)
    return list(struct.unpack(f"<{len(raw) // 4}I", raw))


def addr(family: int, words) -> str:
    words = list(words) or [0] * WORDS[family]
    return socket.inet_ntop(family, struct.pack(f"<{len(words)}I", *words))

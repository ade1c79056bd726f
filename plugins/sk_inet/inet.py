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
# (type, proto) -> the states this plugin dumps and restores
KINDS = {(socket.SOCK_STREAM, socket.IPPROTO_TCP): (TCP_CLOSE, TCP_LISTEN, TCP_ESTABLISHED),
         (socket.SOCK_DGRAM, socket.IPPROTO_UDP): (TCP_CLOSE, TCP_ESTABLISHED)}
WORDS = {socket.AF_INET: 1, socket.AF_INET6: 4}
SO_BUF_LOCK, IP_FREEBIND, IP_PKTINFO, SO_SNDBUFFORCE, SO_RCVBUFFORCE = 72, 15, 8, 32, 33
MAX_BUF = 256 << 20


def connections(entries) -> list:
    """The established TCP connections among files.img entries (lock tuples)."""
    return [(addr(i.family, i.src_addr), i.src_port, addr(i.family, i.dst_addr), i.dst_port)
            for i in (e.isk for e in entries if e.HasField("isk"))
            if i.proto == socket.IPPROTO_TCP and i.state == TCP_ESTABLISHED]


def words(family: int, host: str) -> list[int]:
    raw = socket.inet_pton(family, host)
    return list(struct.unpack(f"<{len(raw) // 4}I", raw))


def addr(family: int, words) -> str:
    words = list(words) or [0] * WORDS[family]
    return socket.inet_ntop(family, struct.pack(f"<{len(words)}I", *words))

"""TCP_REPAIR: read and rebuild one established connection (criu/soccr/soccr.c).

Dump (on a pidfd_getfd copy, the connection already locked): repair mode on,
the sequence numbers of both queues (TCP_QUEUE_SEQ), both queues peeked
whole (the send queue split into sent-unacked and never-sent, SIOCOUTQNSD),
the negotiated options (tcp_info), MSS, the timestamp clock and the window
(TCP_REPAIR_WINDOW). Repair mode stays on: the socket then dies silently when
the dumped task is killed (no FIN, no RST); `resume` turns it off again for
--leave-running or a failed dump.

Restore: a new socket in repair mode gets the queue sequence numbers, is
bound and "connected" without a packet, gets the options, the receive queue,
the sent-unacked part of the send queue and the window; `resume` later
turns repair off, and the never-sent part is written like any data.
"""
from __future__ import annotations

import fcntl
import socket
import struct

TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_REPAIR_OPTIONS = 19, 20, 21, 22
TCP_TIMESTAMP, TCP_REPAIR_WINDOW, TCP_INFO, TCP_MAXSEG = 24, 29, 11, 2
TCP_REPAIR_ON, TCP_REPAIR_OFF = 1, 0
TCP_NO_QUEUE, TCP_RECV_QUEUE, TCP_SEND_QUEUE = 0, 1, 2
SIOCINQ, SIOCOUTQ, SIOCOUTQNSD = 0x541B, 0x5411, 0x894B
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4
TCPOPT_MAXSEG, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8
WINDOW = struct.Struct("<5I")     # struct tcp_repair_window
MAX_USER_MSS = 32767              # MAX_TCP_WINDOW, TCP_MAXSEG's upper bound


def dump(sock: socket.socket, sent_fin: bool = False):
    """(tcp_stream_entry, receive queue, send queue) of a locked connection.

    After a FIN was sent the queue lengths count it: it is no data, so it
    is taken off them (soccr does the same); the sequence numbers are kept
    raw, and restore takes it off them.
    """
    from engine.images.proto import tcp_stream_pb2
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
    info = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 8)
    e = tcp_stream_pb2.tcp_stream_entry(inq_len=0, inq_seq=0, outq_len=0, outq_seq=0,
                                        opt_mask=0, snd_wscale=0, mss_clamp=0)
    e.inq_len, e.outq_len, e.unsq_len = (_ioctl(sock, r) for r in (SIOCINQ, SIOCOUTQ,
                                                                     SIOCOUTQNSD))
    if sent_fin:
        e.outq_len, e.unsq_len = max(e.outq_len - 1, 0), max(e.unsq_len - 1, 0)
    e.opt_mask = info[5]
    if e.opt_mask & TCPI_OPT_WSCALE:
        e.snd_wscale, e.rcv_wscale = info[6] & 0xF, info[6] >> 4
    if e.opt_mask & TCPI_OPT_TIMESTAMPS:
        e.timestamp = sock.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP) & 0xFFFFFFFF
    e.mss_clamp = sock.getsockopt(socket.IPPROTO_TCP, TCP_MAXSEG)
    (e.snd_wl1, e.snd_wnd, e.max_window, e.rcv_wnd, e.rcv_wup) = WINDOW.unpack(
        sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, WINDOW.size))
    queues = []
    for queue, length in ((TCP_RECV_QUEUE, e.inq_len), (TCP_SEND_QUEUE, e.outq_len)):
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)
        seq = sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF
        if queue == TCP_RECV_QUEUE:
            e.inq_seq = seq
        else:
            e.outq_seq = seq
        queues.append(_peek(sock, length))
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
    return e, queues[0], queues[1]


def restore(sock: socket.socket, e, inq: bytes, outq: bytes, local, remote,
            sent_fin: bool = False, got_fin: bool = False) -> bytes:
    """Make `sock` the dumped connection, in repair mode; returns the
    never-sent bytes, to write once repair mode is off.

    A FIN is restored as not yet exchanged, one sequence number back: the
    one sent is sent again by `resume`, the one received comes again from
    the peer's (soccr takes the same number off).
    """
    tcp = socket.IPPROTO_TCP
    sock.setsockopt(tcp, TCP_REPAIR, TCP_REPAIR_ON)
    inq_seq, outq_seq = e.inq_seq - int(got_fin), e.outq_seq - int(sent_fin)
    for queue, seq in ((TCP_RECV_QUEUE, inq_seq - e.inq_len),
                       (TCP_SEND_QUEUE, outq_seq - e.outq_len)):
        sock.setsockopt(tcp, TCP_REPAIR_QUEUE, queue)
        sock.setsockopt(tcp, TCP_QUEUE_SEQ, struct.pack("<I", seq & 0xFFFFFFFF))
    sock.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
    sock.bind(local)
    # The MSS in use (mss_cache) is computed at connect from the clamp then in
    # force, and TCP_REPAIR_OPTIONS' MSS below does not recompute it: without
    # this the connection would run on the default 536 bytes. TCP_MAXSEG
    # takes at most 32767 (loopback's 65495 is cut there; an Ethernet path's
    # 1460 is exact); user_mss goes back to 0 (unset) once connected.
    sock.setsockopt(tcp, TCP_MAXSEG, min(e.mss_clamp, MAX_USER_MSS))
    sock.connect(remote)              # in repair mode: ESTABLISHED, no SYN
    sock.setsockopt(tcp, TCP_MAXSEG, 0)
    opts = []
    if e.opt_mask & TCPI_OPT_SACK:
        opts.append((TCPOPT_SACK_PERM, 0))
    if e.opt_mask & TCPI_OPT_WSCALE:
        opts.append((TCPOPT_WINDOW, e.snd_wscale | (e.rcv_wscale << 16)))
    if e.opt_mask & TCPI_OPT_TIMESTAMPS:
        opts.append((TCPOPT_TIMESTAMP, 0))
    opts.append((TCPOPT_MAXSEG, e.mss_clamp))
    sock.setsockopt(tcp, TCP_REPAIR_OPTIONS, b"".join(struct.pack("<II", *o) for o in opts))
    if e.opt_mask & TCPI_OPT_TIMESTAMPS:
        sock.setsockopt(tcp, TCP_TIMESTAMP, struct.pack("<I", e.timestamp))
    unsent = e.unsq_len if e.HasField("unsq_len") else 0
    for queue, data in ((TCP_RECV_QUEUE, inq), (TCP_SEND_QUEUE, outq[:len(outq) - unsent])):
        if data:
            sock.setsockopt(tcp, TCP_REPAIR_QUEUE, queue)
            _send_all(sock, data)
    sock.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
    if e.HasField("snd_wl1"):
        # The kernel refuses a window update point past rcv_nxt: with the
        # received FIN taken off, it may be one past.
        rcv_wup = e.rcv_wup
        if 0 < (rcv_wup - inq_seq) & 0xFFFFFFFF < 1 << 31:
            rcv_wup = inq_seq & 0xFFFFFFFF
        sock.setsockopt(tcp, TCP_REPAIR_WINDOW, WINDOW.pack(
            e.snd_wl1, e.snd_wnd, e.max_window, e.rcv_wnd, rcv_wup))
    return outq[len(outq) - unsent:]


def resume(sock: socket.socket, unsent: bytes = b"", reuse: bool | None = None,
           sent_fin: bool = False) -> None:
    """Repair mode off (the kernel sends a window probe), the unsent bytes,
    then the FIN again if one was sent.

    Leaving repair mode clears SO_REUSEADDR (sk_reuse = SK_NO_REUSE): `reuse`
    puts the socket's own value back, or the TIME_WAIT it leaves when it
    closes would keep its listener's port from being bound again.
    """
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF)
    if reuse is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
    if unsent:
        _send_all(sock, unsent)
    if sent_fin:
        sock.shutdown(socket.SHUT_WR)


def _ioctl(sock: socket.socket, request: int) -> int:
    return struct.unpack("<i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]


def _peek(sock: socket.socket, length: int) -> bytes:
    if not length:
        return b""
    # In repair mode a peek of the chosen queue returns it from the start.
    data = sock.recv(length, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    if len(data) != length:
        raise OSError(f"TCP_REPAIR peek: {len(data)} bytes of {length}")
    return data


def _send_all(sock: socket.socket, data: bytes) -> None:
    # A repair-mode send queues at most one chunk per call: loop.
    view = memoryview(data)
    while view:
        view = view[sock.send(view):]

"""What netlink, packet and raw sockets share: sock_diag in the socket's own
network namespace, the namespace check, and the SOL_SOCKET options of
sk_opts_entry (criu/sockets.c: dump_socket_opts, restore_socket_opts).

sk_packet and sk_inet import this module (the only cross-plugin import of
these three): the options and the classic BPF filter are the socket
layer's, the same for every family. A classic filter is read with
getsockopt(SO_GET_FILTER), whose length is counted in instructions, not
bytes, so Python's socket.getsockopt (which sizes its buffer in bytes)
cannot read it safely: it is called through ctypes here.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading

from engine.images import ImageError

SIOCGSKNS = 0x894C            # the socket's network namespace, as an fd
SO_GET_FILTER = SO_ATTACH_FILTER = 26
SO_LOCK_FILTER = 44
SO_PASSSEC = 34
# so_timestamp (an engine extension of sk_opts_entry) -> the option that asks for it
TIMESTAMPS = {1: 29, 2: 35, 3: 63, 4: 64}   # SO_TIMESTAMP(NS)_OLD, SO_TIMESTAMP(NS)_NEW
SO_BUF_LOCK = 72
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
SOCK_DIAG_BY_FAMILY = 20
NETLINK_SOCK_DIAG = 4
BPF_MAXINSNS = 4096
IFNAMSIZ = 16
MAX_BUF = 256 << 20

_libc = None


def _getsockopt():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.getsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                     ctypes.POINTER(ctypes.c_uint))
        _libc.getsockopt.restype = ctypes.c_int
    return _libc.getsockopt


# --- namespaces and sock_diag ---------------------------------------------------

def netns_of(sock: socket.socket) -> int:
    """The nsfs inode of the network namespace the socket was made in."""
    nsfd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        return os.fstat(nsfd).st_ino
    finally:
        os.close(nsfd)


def check_netns(sock: socket.socket, pid: int, where: str) -> None:
    """A socket is remade by its task, in the task's namespace: one made in
    another namespace (before a setns or unshare) cannot come back there."""
    if netns_of(sock) != os.stat(f"/proc/{pid}/ns/net").st_ino:
        raise ValueError(f"{where}: a socket of another network namespace than its "
                         "task's (the task cannot make it there)")


def diag_socket(sock: socket.socket) -> socket.socket:
    """A NETLINK_SOCK_DIAG socket in the network namespace of `sock` (sock_diag
    lists only its own namespace's sockets, as CRIU enters each one): made by
    a thread that enters it, since setns(CLONE_NEWNET) moves one thread."""
    nsfd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    out: list = []
    try:
        if os.fstat(nsfd).st_ino == os.stat("/proc/self/ns/net").st_ino:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)

        def make():
            from engine import ns
            try:
                ns.setns(nsfd, "net")
                out.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                         NETLINK_SOCK_DIAG))
            except OSError as e:
                out.append(e)
        thread = threading.Thread(target=make, name="sock_diag-netns")
        thread.start()
        thread.join()
    finally:
        os.close(nsfd)
    if isinstance(out[0], OSError):
        raise out[0]
    return out[0]


def diag_dump(diag: socket.socket, request, reply_class) -> list:
    """Every reply of a sock_diag dump `request` (a pyroute2 nlmsg with its
    fields set), decoded as `reply_class`."""
    from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
    request["header"]["type"] = SOCK_DIAG_BY_FAMILY
    request["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    request["header"]["sequence_number"] = 1
    request.encode()
    diag.send(request.data)
    out = []
    while True:
        buf = diag.recv(1 << 16)
        off = 0
        while off < len(buf):
            length, kind = struct.unpack_from("IH", buf, off)
            if kind == NLMSG_DONE:
                return out
            if kind == NLMSG_ERROR:
                err = -struct.unpack_from("i", buf, off + 16)[0]
                raise OSError(err, f"sock_diag: {os.strerror(err)}")
            msg = reply_class(buf[off:off + length])
            msg.decode()
            out.append(msg)
            off += (length + 3) & ~3


# --- the socket filter (SO_ATTACH_FILTER) -------------------------------------------

def get_filter(sock: socket.socket) -> list[int]:
    """The classic BPF program attached, one u64 per instruction, encoded as
    CRIU's so_filter (criu/sockets.c: code << 48 | jt << 40 | jf << 32 | k)."""
    call, size = _getsockopt(), ctypes.c_uint(0)
    if call(sock.fileno(), socket.SOL_SOCKET, SO_GET_FILTER, None, ctypes.byref(size)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"SO_GET_FILTER: {os.strerror(err)}")
    count = size.value            # with a length of 0 the kernel gives the count
    if not count:
        return []
    buf = (ctypes.c_uint64 * count)()
    size = ctypes.c_uint(count)
    if call(sock.fileno(), socket.SOL_SOCKET, SO_GET_FILTER, buf, ctypes.byref(size)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"SO_GET_FILTER: {os.strerror(err)}")
    return [_encode(insn) for insn in buf[:size.value]]


def _encode(raw: int) -> int:
    """struct sock_filter (u16 code, u8 jt, u8 jf, u32 k, little-endian) as CRIU's u64."""
    code, jt, jf, k = struct.unpack("<HBBI", struct.pack("<Q", raw))
    return code << 48 | jt << 40 | jf << 32 | k


def _decode(word: int) -> int:
    return struct.unpack("<Q", struct.pack("<HBBI", word >> 48 & 0xFFFF, word >> 40 & 0xFF,
                                           word >> 32 & 0xFF, word & 0xFFFFFFFF))[0]


def set_filter(sock: socket.socket, program) -> None:
    if not program:
        return
    insns = (ctypes.c_uint64 * len(program))(*(_decode(word) for word in program))
    fprog = struct.pack("HxxxxxxQ", len(program), ctypes.addressof(insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# --- receive timestamps (SO_TIMESTAMP...) ---------------------------------------------

def get_timestamp(sock: socket.socket) -> int:
    """Which receive timestamp the socket asks for (a key of TIMESTAMPS), 0: none.
    Each getsockopt answers 1 for its own kind only (sock_getsockopt)."""
    for value, opt in TIMESTAMPS.items():
        if sock.getsockopt(socket.SOL_SOCKET, opt):
            return value
    return 0


def set_timestamp(sock: socket.socket, value: int) -> None:
    if value:
        sock.setsockopt(socket.SOL_SOCKET, TIMESTAMPS[value], 1)


# --- sk_opts_entry ---------------------------------------------------------------

def dump_opts(sock: socket.socket, o, where: str) -> None:
    """The SOL_SOCKET options of a netlink, packet or raw socket into `o`."""
    S = socket.SOL_SOCKET
    o.so_sndbuf = sock.getsockopt(S, socket.SO_SNDBUF)
    o.so_rcvbuf = sock.getsockopt(S, socket.SO_RCVBUF)
    for name, opt in (("snd", socket.SO_SNDTIMEO), ("rcv", socket.SO_RCVTIMEO)):
        sec, usec = struct.unpack("qq", sock.getsockopt(S, opt, 16))
        setattr(o, f"so_{name}_tmo_sec", sec)
        setattr(o, f"so_{name}_tmo_usec", usec)
    o.so_priority = sock.getsockopt(S, socket.SO_PRIORITY)
    o.so_rcvlowat = sock.getsockopt(S, socket.SO_RCVLOWAT)
    o.so_mark = sock.getsockopt(S, socket.SO_MARK)
    for field, opt in (("so_passcred", socket.SO_PASSCRED), ("so_passsec", SO_PASSSEC)):
        try:
            setattr(o, field, bool(sock.getsockopt(S, opt)))
        except OSError as e:         # only unix and netlink sockets pass credentials
            if e.errno != errno.EOPNOTSUPP:
                raise
    o.so_buf_lock = sock.getsockopt(S, SO_BUF_LOCK)
    dev = sock.getsockopt(S, socket.SO_BINDTODEVICE, 16).rstrip(b"\0")
    if dev:
        o.so_bound_dev = dev.decode()
    o.so_filter.extend(get_filter(sock))
    timestamp = get_timestamp(sock)
    if timestamp:
        o.so_timestamp = timestamp
    if o.so_filter and sock.getsockopt(S, SO_LOCK_FILTER):
        # sk_opts_entry has no field for it (nor does CRIU restore it)
        raise ValueError(f"{where}: a locked socket filter (SO_LOCK_FILTER)")


def check_opts(o, where: str) -> None:
    """Refuse, at collect, sk_opts values no socket can take."""
    for field in ("so_sndbuf", "so_rcvbuf"):
        value = getattr(o, field)
        if not 0 < value <= MAX_BUF:
            raise ImageError(where, f"opts.{field} = {value} is not a buffer size")
    if o.HasField("so_timestamp") and o.so_timestamp not in TIMESTAMPS:
        raise ImageError(where, f"opts.so_timestamp = {o.so_timestamp} is not one of "
                                f"{sorted(TIMESTAMPS)}")
    if len(o.so_filter) > BPF_MAXINSNS:
        raise ImageError(where, f"opts.so_filter has {len(o.so_filter)} instructions, "
                                f"more than {BPF_MAXINSNS}")
    # (whether the device exists is the task's network namespace's to say)
    if o.HasField("so_bound_dev") and len(o.so_bound_dev.encode()) >= IFNAMSIZ:
        raise ImageError(where, f"opts.so_bound_dev {o.so_bound_dev!r} is longer than an "
                                "interface name")


def restore_opts(sock: socket.socket, o) -> None:
    S = socket.SOL_SOCKET
    # The kernel doubles what it is given (socket(7)); FORCE: over the sysctl max.
    sock.setsockopt(S, SO_SNDBUFFORCE, o.so_sndbuf // 2)
    sock.setsockopt(S, SO_RCVBUFFORCE, o.so_rcvbuf // 2)
    for name, opt in (("snd", socket.SO_SNDTIMEO), ("rcv", socket.SO_RCVTIMEO)):
        sec, usec = getattr(o, f"so_{name}_tmo_sec"), getattr(o, f"so_{name}_tmo_usec")
        if sec or usec:
            sock.setsockopt(S, opt, struct.pack("qq", sec, usec))
    for field, opt, default in (("so_priority", socket.SO_PRIORITY, 0),
                                ("so_rcvlowat", socket.SO_RCVLOWAT, 1),
                                ("so_mark", socket.SO_MARK, 0),
                                ("so_passcred", socket.SO_PASSCRED, 0),
                                ("so_passsec", SO_PASSSEC, 0),
                                ("so_buf_lock", SO_BUF_LOCK, 0)):
        if o.HasField(field) and int(getattr(o, field)) != default:
            sock.setsockopt(S, opt, int(getattr(o, field)))
    if o.HasField("so_bound_dev") and o.so_bound_dev:
        sock.setsockopt(S, socket.SO_BINDTODEVICE, o.so_bound_dev.encode())
    set_filter(sock, list(o.so_filter))
    set_timestamp(sock, o.so_timestamp)

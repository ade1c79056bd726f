"""The wire between the engine, its tasks and its second tracer: one
length-prefixed pickle per message over a socketpair. Both ends are this
program, forked from one interpreter, so pickle carries nothing foreign."""
from __future__ import annotations

import pickle
import socket
import struct


def send(sock: socket.socket, obj) -> None:
    data = pickle.dumps(obj)
    sock.sendall(struct.pack("<I", len(data)) + data)


def recv(sock: socket.socket):
    """The next message, or None once the other end is gone."""
    head = _read_exact(sock, 4)
    if head is None:
        return None
    (size,) = struct.unpack("<I", head)
    return pickle.loads(_read_exact(sock, size))


def _read_exact(sock: socket.socket, size: int):
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def one_line(e: BaseException) -> str:
    """An error as the one line the engine reports."""
    return " ".join(str(e).split()) or type(e).__name__

"""The RPC socket: one criu_req or criu_resp per SOCK_SEQPACKET packet."""
from __future__ import annotations

import os
import socket
import struct

# A bound on one request, against a client sending anything but CRIU's RPC.
MAX_MESSAGE = 64 * 1024 * 1024


class ClientError(Exception):
    """The client broke the protocol (a notify unanswered, or refused)."""


class Channel:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.peer_pid = peer_pid(sock)

    def recv(self):
        """The next criu_req, or None once the client closed its end."""
        from engine.images.proto import rpc_pb2
        size = _next_size(self.sock)
        if size is None:
            return None
        data = self.sock.recv(size)
        req = rpc_pb2.criu_req()
        req.ParseFromString(data)
        return req

    def send(self, resp) -> None:
        self.sock.send(resp.SerializeToString())

    def notify(self, script: str, pid: int | None = None) -> None:
        """CRIU's notify round trip (send_criu_rpc_script): a criu_resp of
        type NOTIFY naming the script, answered by a criu_req of type NOTIFY
        whose notify_success says the client's action worked."""
        from engine.images.proto import rpc_pb2
        resp = rpc_pb2.criu_resp(type=rpc_pb2.NOTIFY, success=True)
        resp.notify.script = script
        if pid is not None:
            resp.notify.pid = pid
        self.send(resp)
        answer = self.recv()
        if answer is None:
            raise ClientError(f"notify {script}: the client closed the connection")
        if answer.type != rpc_pb2.NOTIFY:
            raise ClientError(f"notify {script}: the client answered with a "
                              f"{rpc_pb2.criu_req_type.Name(answer.type)} request")
        if not answer.notify_success:
            raise ClientError(f"notify {script}: the client reported its action failed")

    def peer_fd_path(self, fd: int) -> str:
        """Where the client's fd `fd` is reached from here (CRIU does the same)."""
        return f"/proc/{self.peer_pid}/fd/{fd}"


def peer_pid(sock: socket.socket) -> int:
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid


def _next_size(sock: socket.socket) -> int | None:
    """The size of the next packet (MSG_PEEK|MSG_TRUNC), None at end of stream."""
    while True:
        try:
            n = sock.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
            break
        except InterruptedError:
            continue
    if n == 0:
        # An empty packet and the end of stream look alike; CRIU sends none.
        return None
    if n > MAX_MESSAGE:
        raise ClientError(f"a {n}-byte request: more than {MAX_MESSAGE} bytes")
    return n


def high_fd(fd: int) -> int:
    """`fd` moved to 256 or above, close-on-exec: the numbers below stay free
    for the fds a restore installs in the tasks it forks."""
    import fcntl
    try:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 256)
    except OSError:                      # an open files limit of 256 or less
        return fd
    os.close(fd)
    return moved

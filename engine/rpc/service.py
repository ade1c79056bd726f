"""`engine swrk FD` and `engine service --address PATH`, as CRIU's.

swrk serves the requests of the socket it inherited (runc runs `criu swrk 3`
with its end of a SOCK_SEQPACKET socketpair as fd 3): one request, or more
while each says keep_open, then it exits. The service listens on a
SOCK_SEQPACKET unix socket and forks one worker per connection, as CRIU's
does, so a request's restore (the tasks it forks, the subreaper it becomes,
the collector it turns off) never outlives it.
"""
from __future__ import annotations

import gc
import logging
import os
import select
import signal
import socket

from engine.rpc.channel import Channel, high_fd

log = logging.getLogger("engine.rpc")


def serve(sock: socket.socket) -> int:
    """Answer `sock`'s requests until one does not say keep_open; 0 once
    every request was served, 1 if one failed (CRIU's exit code)."""
    from engine.rpc import requests
    channel = Channel(sock)
    code = 0
    while True:
        req = channel.recv()
        if req is None:
            return code
        resp = requests.handle(channel, req)
        try:
            channel.send(resp)
        except OSError as e:
            log.error("the client is gone: %s", e)
            return 1
        code = code or (0 if resp.success else 1)
        if not req.keep_open:
            return code


def swrk(fd: int) -> int:
    try:
        sock = socket.socket(fileno=high_fd(fd))
    except OSError as e:
        raise OSError(e.errno, f"swrk: fd {fd}: {os.strerror(e.errno)}") from None
    if sock.type != socket.SOCK_SEQPACKET or sock.family != socket.AF_UNIX:
        raise ValueError(f"swrk: fd {fd} is not a unix SOCK_SEQPACKET socket")
    with sock:
        return serve(sock)


def service(address: str) -> int:
    """Listen at `address` until SIGTERM or SIGINT; one worker per connection,
    forked from this process made warm first (requests.prepare)."""
    from engine.rpc import requests
    requests.prepare()
    # The warm objects are never freed: kept out of the collector's passes,
    # a worker's collections do not write to (copy) the pages holding them.
    gc.freeze()
    if os.path.exists(address):
        os.unlink(address)              # a socket left by an earlier service
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(address)
    listener.listen(16)
    # A signal coming just before accept() blocks would wait for the next
    # connection: the handlers' wakeup fd wakes the select instead.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, _stop)
    log.info("serving CRIU's RPC at %s", address)
    try:
        while True:
            readable, _, _ = select.select([listener, wake_r], [], [])
            if wake_r in readable:
                os.read(wake_r, 512)     # the handlers run as this returns
            if listener in readable:
                conn, _ = listener.accept()
                if os.fork() == 0:
                    _worker(listener, conn, (wake_r, wake_w))
                conn.close()
    finally:
        listener.close()
        os.unlink(address)
        _wait_workers()


def _wait_workers() -> None:
    """Each worker ends with its request: wait for them all."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _worker(listener: socket.socket, conn: socket.socket, wakeup: tuple[int, int]) -> None:
    listener.close()
    signal.set_wakeup_fd(-1)
    for fd in wakeup:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 1
    try:
        with conn:
            code = serve(conn)
    finally:
        logging.shutdown()
        os._exit(code)


def _reap(signum, frame) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _stop(signum, frame) -> None:
    raise SystemExit(0)             # the finally of service() removes the socket

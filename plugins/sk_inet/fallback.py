"""sk_inet's fallback, registered instead of it by ``--disable sk_inet``.

Each inet socket of the images comes back as a new socket of the same
family, type and protocol that is never bound or connected, so the rest of
the process restores when its connections cannot. Why a socket and not
/dev/null: the fd stays a socket of the same kind (getsockopt, fcntl, epoll
keep working), nothing can reach it and it reaches nothing, and on TCP a
read or write fails (ENOTCONN, EPIPE) as on a reset connection, which a
service already handles; on /dev/null writes would succeed silently (the
service would believe its data delivered) and socket calls would fail with
ENOTSOCK. Queues and tcp-stream images are not read. The connections are
given up, so once the restore succeeded their network lock (left by the
dump) is removed: a later connection on the same ports must not be dropped.
"""
from __future__ import annotations

import socket

from engine import hookimpl
from plugins.sk_inet import netlock
from plugins.sk_inet.inet import connections


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("isk"):
        return None
    i = entry.isk
    fd = socket.socket(i.family, i.type, i.proto).detach()
    # Its status flags (O_NONBLOCK: an event loop's sockets) as dumped.
    import fcntl
    import os
    fcntl.fcntl(fd, fcntl.F_SETFL, i.flags & (os.O_NONBLOCK | fcntl.FASYNC))
    return fd


@hookimpl
def engine_restore_finish(ctx):
    netlock.unlock(connections(ctx.provided("files").values()))

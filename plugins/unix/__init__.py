"""unix: AF_UNIX sockets and their queues (criu/sk-unix.c, sk-queue.c).

Dump: a ``socket:[INODE]`` fd that sock_diag (pyroute2) lists as AF_UNIX
becomes a UNIXSK entry: type, state, peer inode, name (a path, relative
ones with ``name_dir``, or an abstract name), ``deleted`` when the bound path
is gone, shutdown, backlog, SO_SNDBUF/SO_RCVBUF, SO_PASSCRED, SO_PEEK_OFF,
timeouts, O_NONBLOCK, O_ASYNC (its SIGIO owner, fown, is the files plugin's). Stream, dgram and seqpacket; unbound or bound;
listening, connected (socketpair, connect/accept, dgram connected to a
bound socket), or with a closed peer. A connection not yet accepted is
dumped as its client, whose peer is the listener (the kernel gives the
half in the listener's queue no inode); bytes the client already wrote into
it cannot be read back and are refused.

Queues: each socket's messages are peeked without being consumed (SO_PEEK_OFF
keeps datagram boundaries) into sk-queues.img, with the fds in flight
(SCM_RIGHTS) as file ids: an fd in flight is the same file as a task's fd
when kcmp says so, else a new files.img entry claimed through
``engine_dump_fd`` (files, pipes, other sockets).

Peers: every peer must be dumped too. With ``--ext-unix-sk`` (CRIU's option)
a datagram socket connected to a named socket outside the tree is allowed:
the peer is written as an entry with uflags EXTERN and its name, and restore
connects to that name again (it must exist then). Any other outside peer is
refused, with or without the option.

Restore (plugins/unix/restore.py): one graph node per socket or connected
pair, in the first task holding it, after the nodes it connects to, so a
name is bound (plugins/unix/names.py: a stale socket file at the path is
removed first, a live one or any other file refused, no symlink followed;
after a failed restore the names it bound are removed) and a
listener listens before any peer connects; pairs by socketpair, or by
connect + accept when one end carries a listener's name; queued messages
are sent again by the peer (a datagram socket's by a temporary sender),
in-flight fds with them. Values go through setsockopt, never around it:
buffers beyond net.core.wmem_max/rmem_max are refused before anything
starts, as are states impossible for the type and absurd queue sizes, each
in one line naming the image and field.
"""
from __future__ import annotations

import logging
import socket

from engine import hookimpl
from engine.images import ImageError

log = logging.getLogger("engine.plugins.unix")


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    P = "engine.images.proto."
    registry.register(ImageKind("sk-queues", "sk-queues.img", 0x56264026, P + "sockets_pb2",
                                "sk_packet_entry", magic_name="SK_QUEUES", payload="length"))


# --- options ----------------------------------------------------------------

@hookimpl
def engine_addoption(parser):
    parser.add_argument("--ext-unix-sk", "--unix-external", dest="unix_external",
                        action="store_true",
                        help="unix: allow a dgram socket connected to a named socket "
                             "outside the tree (restore connects to the name again)")


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if not link.startswith("socket:["):
        return None
    from plugins.unix import dump as _dump
    table = ctx.stash.get(_dump.DIAG, None)
    if table is None:
        table = ctx.stash[_dump.DIAG] = _dump.unix_sockets()
    if stat.st_ino not in table:
        return None                   # not AF_UNIX: another plugin's
    return _dump.describe(ctx, task.pid, fd, stat.st_ino,
                          f"task {task.pid}: fd {fd} ({link})")


@hookimpl
def engine_dump_finish(ctx):
    # First: fds found in flight become entries other plugins finish (pipe data).
    from plugins.unix import dump as _dump
    _dump.finish(ctx)


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    # Last: the fd tables' nodes exist, and are made to wait for the sockets.
    if any(e.HasField("usk") for e in ctx.provided("files").values()):
        from plugins.unix import collect as _collect
        _collect.collect(ctx, graph)


@hookimpl
def engine_restore_abort(ctx, error):
    # The killed tasks' bound names are stale sockets now: none is left behind.
    from plugins.unix import collect as _collect, names
    from plugins.unix.dump import USK_EXTERN
    names.remove_stale(_collect._path(u) for u in ctx.stash.get(_collect.SOCKS, {}).values()
                       if u.name[:1] not in (b"", b"\0") and not u.uflags & USK_EXTERN)


@hookimpl
def engine_restore_node(ctx, node):
    from plugins.unix import restore as _restore
    _restore.run(ctx, node)
    return True


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("usk"):
        return None
    raise ImageError("files.img", f"unix socket id {entry.id} was not made by its node "
                                  f"({socket.SocketKind(entry.usk.type).name})")

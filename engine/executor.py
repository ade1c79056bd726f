"""The executor loop a restored task runs until the tracer takes it over.

Each task is forked by ctx.spawn (engine/context.py) and serves its
socketpair: it is sent batches of node keys, runs each node's hook in
itself (so fds, cwd, sessions, namespaces and credentials are made by the
task, as the kernel requires), replies with what it started and published,
and, when told, closes every fd that is not its own restored one and stops
for the tracer, which replaces its memory and registers.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal

from engine import wire
from engine.errors import RestoreError



def serve(ctx, pid: int) -> None:
    """The executor loop of a forked task. Never returns.

    The channel is looked up on every message: install_fd may have moved it
    off a number the image wants.
    """
    try:
        ctx.self_pid, ctx.kept_fds, ctx.started = pid, set(), []
        for end in ctx.channels.values():
            end.close()
        ctx.channels = {}
        while (msg := wire.recv(ctx.task_ends[pid])) is not None:
            _, keys, ctx.shared_fds, stop = msg
            ctx.started, ctx._published = [], {}
            try:
                for key in keys:
                    run_node(ctx, ctx.graph.nodes[key])
                    ctx.shared_fds.update(ctx._published)
                if ctx.dies_with_parent:
                    # The kernel clears it when a node changes our
                    # credentials (setfsuid around a socket's creation).
                    die_with_parent()
                exits = ctx.exit_status is not None
                wire.send(ctx.task_ends[pid], ("ok", ctx.started, ctx._published, exits))
                if exits:
                    _die_as(ctx.exit_status)
            except Exception as e:  # noqa: BLE001 - reported; the engine kills us
                wire.send(ctx.task_ends[pid], ("error", wire.one_line(e), ctx.started))
                continue
            if stop:
                from engine.tracer.restore import wait_for_tracer
                _close_all_but(ctx.kept_fds)
                wait_for_tracer()          # the tracer replaces this process image
    finally:
        os._exit(1)


def run_node(ctx, node) -> None:
    """One node's engine_restore_node, wherever it runs."""
    done = ctx.registry.restore_node(ctx, node)
    if done is None:
        raise RestoreError(f"{node}: plugin {node.plugin} did not restore it")


def die_with_parent() -> None:
    from engine.tracer.binding import libc      # both loaded before the forks
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _die_as(status: int) -> None:
    """Exit so that waitpid() reports `status` (a zombie's, as dumped)."""
    sig = status & 0x7F
    if sig:
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit((status >> 8) & 0xFF)


def _close_all_but(keep: set[int]) -> None:
    lo = 0
    for fd in sorted(keep):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    import resource
    os.closerange(lo, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


# --- the engine's log stream ------------------------------------------------

def move_log_stream(ctx, number: int) -> None:
    """The engine's log lines go to its stderr, inherited as fd 2: before an
    image fd takes that number (the target's own stderr), the handlers move
    to a copy above the image's fds, closed when the task stops."""
    handlers = _log_handlers_on(number)
    if handlers:
        from engine.fds import park
        handlers[0].stream.flush()
        moved = open(park(ctx, os.dup(number)), "w", buffering=1, closefd=True)
        for handler in handlers:
            handler.setStream(moved)


def lift_log_stream() -> None:
    """In the engine, before the forks: log handlers writing to fd 2 get a
    copy of it at fd 256 or above, so tasks installing an image's fd 2 (all
    but a few) need not move them each (a new file object: ~0.1 ms a task).
    A task whose image uses that number too still moves it (install_fd)."""
    handlers = _log_handlers_on(2)
    if not handlers:
        return
    handlers[0].stream.flush()
    try:
        lifted = open(fcntl.fcntl(2, fcntl.F_DUPFD_CLOEXEC, 256), "w", buffering=1)
    except OSError:                    # an open files limit of 256 or less
        return
    for handler in handlers:
        handler.setStream(lifted)


def _log_handlers_on(fd: int) -> list:
    found = []
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        try:
            if stream is not None and stream.fileno() == fd:
                found.append(handler)
        except (OSError, ValueError):
            pass
    return found

"""A second tracer for a restore: a fork of the engine that restores the
memory and registers of half of the tasks on another CPU.

Tracer nodes (memory, registers) are the serial tail of a restore, about
2 ms a task run by the engine alone, while the tasks, stopped by then, leave
the machine's other CPUs idle. So on a machine with more than one CPU and a
tree with more than one traced task, the engine forks a worker once the
graph is built (it has the whole context). The engine keeps every channel to
the tasks and tells a task to stop; the worker is sent "trace KEY" for the
tracer nodes of the tasks it owns, in graph order, acks each, holds its
tasks under ptrace and releases them when the engine releases its own.

Tasks whose tracer nodes share state (``Node.tracer_shares``: a MAP_SHARED
anonymous region that the first task maps and the others map from it) are
owned by the same tracer. On a failure the worker reports it and waits: the
engine kills every task, then the worker (restore._undo), so no task of a
half-done restore runs on.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket

import attrs

from engine import wire
from engine.errors import RestoreError

log = logging.getLogger("engine.tracers")

WORKER_PID_TRIES = 64    # pids tried below pid_max for the worker


@attrs.define(eq=False)
class Worker:
    """The engine's handle on the second tracer."""

    pid: int
    sock: socket.socket
    pids: set[int]                     # the tasks it traces
    pending: list[str] = attrs.field(factory=list)   # keys sent, not acked

    def trace(self, key: str) -> None:
        wire.send(self.sock, ("trace", key))
        self.pending.append(key)

    def wait(self, done) -> None:
        """Every node sent so far acked; done(key) for each."""
        while self.pending:
            reply = wire.recv(self.sock)
            if reply is None:
                raise RestoreError(f"the second tracer (pid {self.pid}) died")
            if reply[0] == "error":
                raise RestoreError(reply[1])
            self.pending.remove(reply[1])
            done(reply[1])

    def release(self, leave_stopped: bool) -> None:
        """Tell it to let its tasks go (at once with the engine's)."""
        wire.send(self.sock, ("release", leave_stopped))

    def released(self) -> None:
        reply = wire.recv(self.sock)
        if reply is None or reply[0] != "released":
            raise RestoreError(reply[1] if reply else
                               f"the second tracer (pid {self.pid}) died releasing its tasks")
        os.waitpid(self.pid, 0)
        self.sock.close()


def start(ctx, order) -> Worker | None:
    """Fork the worker and give it about half of the traced tasks; None
    when one tracer is all there is to use."""
    if (os.cpu_count() or 1) < 2:
        return None
    mine = _split(order)
    if not mine:
        return None
    ours, its = socket.socketpair()
    pid = _fork_away_from(ctx)
    if pid == 0:
        ours.close()
        _serve(ctx, its)               # never returns
    its.close()
    log.debug("second tracer %d traces tasks %s", pid, sorted(mine))
    return Worker(pid=pid, sock=ours, pids=mine)


def _split(order) -> set[int]:
    """The tasks for the worker: groups of tasks that share tracer state
    (union-find over Node.tracer_shares), each whole, in the order their
    tracer nodes come, each to whichever tracer has fewer tasks so far."""
    parent: dict[int, int] = {}

    def group_of(pid: int) -> int:
        while parent[pid] != pid:
            parent[pid] = parent[parent[pid]]
            pid = parent[pid]
        return pid

    holder: dict[str, int] = {}        # shared state -> a task holding it
    for node in order:
        if node.where != "tracer":
            continue
        parent.setdefault(node.pid, node.pid)
        for name in node.tracer_shares:
            if name in holder:
                parent[group_of(node.pid)] = group_of(holder[name])
            else:
                holder[name] = node.pid
    groups: dict[int, list[int]] = {}
    for pid in parent:                 # in the order tracer nodes come
        groups.setdefault(group_of(pid), []).append(pid)
    engine_count, worker = 0, set()
    for group in groups.values():
        if engine_count <= len(worker):
            engine_count += len(group)
        else:
            worker.update(group)
    return worker


def _fork_away_from(ctx) -> int:
    """fork() with the child at a pid no dumped task or thread has (a plain
    fork could take the pid a task is about to be restored with)."""
    from engine.tracer.binding import TracerError
    from engine.tracer.clone import clone_with_pid
    dumped = ctx.reserved_pids
    with open("/proc/sys/kernel/pid_max") as f:
        top = int(f.read()) - 2        # pid_max - 1: the rootless worker's
    for pid in range(top, top - WORKER_PID_TRIES, -1):
        if pid in dumped:
            continue
        try:
            return clone_with_pid(pid)
        except TracerError as e:
            if e.errno != errno.EEXIST:      # taken: try the next
                raise
    raise OSError(f"no free pid for the second tracer below {top + 2}")


def _serve(ctx, sock: socket.socket) -> None:
    """The worker's loop. Never returns."""
    from engine.executor import run_node
    from engine.tracer.restore import attach_stopped, release
    try:
        # An engine killed midway takes its second tracer along (issue 20:
        # one outlived it at 100% CPU, holding its task in a ptrace stop).
        from engine import libc
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        for end in list(ctx.channels.values()) + list(ctx.task_ends.values()):
            end.close()
        ctx.channels, ctx.task_ends, ctx.tracer_worker = {}, {}, None
        failed = False
        while (msg := wire.recv(sock)) is not None:
            kind, arg = msg
            if kind == "release":
                release(list(ctx.tracees.values()), leave_stopped=arg)
                wire.send(sock, ("released", None))
                break
            if failed:
                continue                # the engine is undoing the restore
            node = ctx.graph.nodes[arg]
            try:
                if node.pid not in ctx.tracees:
                    ctx.tracees[node.pid] = attach_stopped(node.pid)
                log.debug("node %s (in second tracer %s)", node.key, node.pid)
                run_node(ctx, node)
            except Exception as e:  # noqa: BLE001 - reported; the engine kills us
                failed = True
                wire.send(sock, ("error", wire.one_line(e)))
                continue
            wire.send(sock, ("ok", arg))
    finally:
        os._exit(0)

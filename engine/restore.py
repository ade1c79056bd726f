"""Restore orchestration: read, plan, run the graph, release; or undo it all.

Tasks are forked children of the engine (clone3 with the dumped pid,
engine/context.py), each running a small executor loop (engine/executor.py):
it receives "run nodes K..." over its socketpair and runs the plugins' hooks
in its own context. Before its first tracer node a task closes every fd that
is not its own restored one and stops for the tracer; memory and registers
are swapped in from the engine. Any failure kills and reaps every task
started.
"""
from __future__ import annotations

import logging
import os
import signal
import socket

from engine import wire
from engine.context import RestoreContext  # noqa: F401 - the API plugins are handed
from engine.errors import RestoreError
from engine.executor import run_node
from engine.graph import ALL, Graph, GraphError, Node

log = logging.getLogger("engine.restore")

PR_SET_CHILD_SUBREAPER = 36
NODE_TIMEOUT = float(os.environ.get("ENGINE_NODE_TIMEOUT", "120"))   # per batch of nodes


# --- the engine side ---------------------------------------------------------

def build_graph(ctx: RestoreContext) -> Graph:
    _check_inventory(ctx)
    from engine.images import manifest
    manifest.check(ctx.images.dir)
    _check_image_resources(ctx)
    graph = Graph(ctx.registry)
    ctx.graph = graph
    ctx.hook.engine_restore_collect(ctx=ctx, graph=graph)
    return graph


def _check_inventory(ctx: RestoreContext) -> None:
    """inventory.img is the completion marker of an image set (written last
    by a dump) and says which version of the format the set is."""
    from engine.images import IMG_VERSION     # not engine.dump: ~2 ms of imports
    inventory = ctx.images.read_one("inventory")
    if inventory.img_version != IMG_VERSION:
        raise RestoreError(f"inventory.img: img_version {inventory.img_version} is not "
                           f"{IMG_VERSION}")


def _check_image_resources(ctx: RestoreContext) -> None:
    """An image whose resource no enabled plugin restores is refused now."""
    reg = ctx.registry
    for fname in sorted(os.listdir(ctx.images.dir)):
        found = ctx.images.kinds.for_filename(fname)
        if found is None or found[0].resource is None:
            continue
        resource = found[0].resource
        provider = reg.provider_of(resource)
        if provider is None:
            raise RestoreError(f"{fname}: needs {resource}, which no plugin provides")
        if not reg.is_enabled(provider.name) and provider.fallback is None:
            raise RestoreError(f"{fname}: needs {resource}, provided by plugin "
                               f"{provider.name}, which is disabled")


def restore(ctx: RestoreContext) -> list[int]:
    """Run a restore to the end; on failure undo it and raise RestoreError."""
    graph = build_graph(ctx)
    order = graph.order()            # cycles and missing providers: nothing started
    # Read now: a spoilt or missing one is refused before anything starts.
    fingerprint = _fingerprint(ctx) if getattr(ctx.options, "verify", False) else None
    pids = sorted({n.pid for n in graph.nodes.values() if n.pid is not None})
    from engine import libc
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    for pid in pids:
        a, b = socket.socketpair()
        ctx.channels[pid], ctx.task_ends[pid] = a, b
    # Tasks are forks of this interpreter: what they run is imported once
    # here (with the tracer's scratch page they inherit), and the collector
    # kept from touching (so copying) every object.
    from engine.tracer.restore import prepare_forks
    prepare_forks()
    from engine.executor import lift_log_stream
    lift_log_stream()
    from engine import ns
    ns.pid_depth()                   # known to tasks forked in our pid namespace
    ctx.registry.prepare_node_calls()
    import gc
    gc.disable()
    gc.freeze()
    try:
        from engine import tracers
        ctx.tracer_worker = tracers.start(ctx, order)
        _run(ctx, order)
        if fingerprint is not None:
            _verify(fingerprint, ctx.started[0])
        ctx.hook.engine_restore_ready(ctx=ctx)
        _release(ctx)
    except BaseException as e:
        _undo(ctx)
        ctx.hook.engine_restore_abort(ctx=ctx, error=e)
        if isinstance(e, (RestoreError, GraphError)):
            raise
        raise RestoreError(wire.one_line(e)) from e
    finally:
        for s in list(ctx.channels.values()) + list(ctx.task_ends.values()):
            s.close()
    ctx.hook.engine_restore_finish(ctx=ctx)
    return ctx.started


def _run(ctx: RestoreContext, order: list[Node]) -> None:
    """Run the graph in waves. Each wave takes every node whose predecessors
    are done: engine nodes run first, one by one; then each task is sent, in
    one message, its ready nodes and those of its own that they unblock, and
    all tasks work at once while the engine runs the ready tracer nodes; then
    the replies are read, and a task's tracer nodes that its reply makes ready
    run at once, while the others still work (those of the second tracer's
    tasks are sent to it, and the wave ends once it has acked them). A
    task's last message also tells it to stop for the tracer once its nodes
    are done, unless its first tracer node waits for more; it is seized when
    that node comes. What one node takes from another task (ctx.shared_fds)
    is only there if the graph orders it after the node that publishes it."""
    waves = _Waves(ctx, order)
    while waves.pending:
        ready = [k for k in waves.pending if not waves.waiting[k]]
        if not ready:
            raise RestoreError(f"{ctx.graph.nodes[waves.pending[0]]}: never became ready")
        nodes = [ctx.graph.nodes[k] for k in ready]
        engine_nodes = [n for n in nodes if n.where == "engine"]
        if engine_nodes:
            waves.run_in_engine(engine_nodes)
        else:
            waves.run_in_tasks(nodes)


class _Waves:
    """The state of _run: what each node still waits for, and each task's
    nodes not yet sent."""

    def __init__(self, ctx: RestoreContext, order: list[Node]) -> None:
        self.ctx = ctx
        deps = ctx.graph.ordered_edges      # with ALL keys: done once all theirs are
        self.waiting = {key: set(before) for key, before in deps.items()}
        self.unblocks: dict[str, list[str]] = {}
        for key, before in self.waiting.items():
            for b in before:
                self.unblocks.setdefault(b, []).append(key)
        self.left: dict[int, int] = {}           # pid -> task nodes not yet sent
        self.tracer_keys: dict[int, list[str]] = {}  # pid -> its tracer nodes, in order
        for n in order:
            if n.where == "task":
                self.left[n.pid] = self.left.get(n.pid, 0) + 1
            elif n.where == "tracer":
                self.tracer_keys.setdefault(n.pid, []).append(n.key)
        self.pending = [n.key for n in order]    # not started, in the serial order

    def done(self, key: str) -> None:
        for k in self.unblocks.get(key, ()):
            self.waiting[k].discard(key)
            if not self.waiting[k] and k.startswith(ALL):
                self.done(k)

    def run_in_engine(self, nodes: list[Node]) -> None:
        # Alone: what they publish may be wanted by any node after them.
        for node in nodes:
            log.debug("node %s (in engine)", node.key)
            run_node(self.ctx, node)
            self.done(node.key)
        taken = {n.key for n in nodes}
        self.pending = [k for k in self.pending if k not in taken]

    def run_in_tasks(self, nodes: list[Node]) -> None:
        ctx = self.ctx
        sent = self._send_batches(nodes)
        taken = {n.key for _, batch, _ in sent for n in batch}
        # While the tasks work on what they were sent.
        _trace(ctx, [n for n in nodes if n.where == "tracer"], taken)
        for pid, batch, stop in sent:
            _reply(ctx, pid, batch, _answer(ctx, pid, batch))
            if stop:
                ctx.channels.pop(pid).close()
                ctx.stopped.add(pid)
            for node in batch:
                self.done(node.key)
            # Its tracer nodes, if now ready, while the others still work.
            _trace(ctx, [ctx.graph.nodes[k] for k in self.tracer_keys.get(pid, ())
                         if k not in taken and not self.waiting[k]], taken, self.done)
        if ctx.tracer_worker is not None:
            ctx.tracer_worker.wait(self.done)
        for key in taken:
            self.done(key)
        self.pending = [k for k in self.pending if k not in taken]

    def _send_batches(self, nodes: list[Node]) -> list[tuple[int, list[Node], bool]]:
        """Each task with a ready node is sent its batch; [(pid, batch, stop)]."""
        ctx = self.ctx
        mine: dict[int, list[str]] = {}     # pid -> its pending task nodes
        for key in self.pending:
            node = ctx.graph.nodes[key]
            if node.where == "task":
                mine.setdefault(node.pid, []).append(key)
        batches: dict[int, list[Node]] = {}
        for node in nodes:
            if node.where == "task" and node.pid not in batches:
                batches[node.pid] = _task_batch(ctx, mine[node.pid], self.waiting)
        sent = []
        for pid, batch in batches.items():
            if pid not in ctx.started:
                raise RestoreError(f"{batch[0]}: task {pid} was never created")
            if pid in ctx.stopped:
                raise RestoreError(f"{batch[0]}: task {pid} already stopped for the tracer")
            self.left[pid] -= len(batch)
            # Told to stop only if nothing but this batch holds up its first
            # tracer node: a node of another task may still take one of its
            # files (it is stopped when that node is ready, _stop_for_tracer).
            keys = {n.key for n in batch}
            stop = (self.left[pid] == 0 and pid in self.tracer_keys
                    and self.waiting[self.tracer_keys[pid][0]] <= keys)
            log.debug("nodes %s (in task %s)%s", [n.key for n in batch], pid,
                      ", then stop" if stop else "")
            wire.send(ctx.channels[pid], ("nodes", [n.key for n in batch], ctx.shared_fds, stop))
            sent.append((pid, batch, stop))
        return sent


def _trace(ctx: RestoreContext, nodes: list[Node], taken: set[str], done=None) -> None:
    """Run tracer nodes in the engine, seizing their task first if need be,
    or send them to the second tracer if it owns their task (done once it
    acks them)."""
    worker = ctx.tracer_worker
    for node in nodes:
        if worker is not None and node.pid in worker.pids:
            if node.pid not in ctx.stopped:
                _tell_to_stop(ctx, node.pid)
            worker.trace(node.key)
            taken.add(node.key)
            continue
        if node.pid not in ctx.tracees:
            _stop_for_tracer(ctx, node.pid)
        log.debug("node %s (in tracer %s)", node.key, node.pid)
        run_node(ctx, node)
        taken.add(node.key)
        if done is not None:
            done(node.key)


def _task_batch(ctx: RestoreContext, pending: list[str],
                waiting: dict[str, set[str]]) -> list[Node]:
    """A task's ready nodes and those of its own that only wait for them,
    from its `pending` nodes in the serial order (a topological one), up to
    the first that yields."""
    batch: list[Node] = []
    keys: set[str] = set()
    for key in pending:
        if waiting[key] <= keys:
            node = ctx.graph.nodes[key]
            batch.append(node)
            keys.add(key)
            if node.yields:
                break
    return batch


def _answer(ctx: RestoreContext, pid: int, nodes: list) -> tuple | None:
    """The task's reply to its batch, waited for at most NODE_TIMEOUT (issue
    20: no image may hang the engine; a task stuck in a node fails the
    restore, which kills it)."""
    import select
    sock = ctx.channels[pid]
    if not select.select([sock], [], [], NODE_TIMEOUT)[0]:
        raise RestoreError(f"task {pid}: no answer within {NODE_TIMEOUT:g} s, running "
                           f"{nodes[0]}{f' and {len(nodes) - 1} more' if len(nodes) > 1 else ''}")
    return wire.recv(sock)


def _reply(ctx: RestoreContext, pid: int, nodes: list[Node], reply) -> None:
    if reply is None:
        raise RestoreError(f"task {pid} died while restoring {nodes[0]}")
    if reply[0] != "ok":
        _, message, started = reply
        ctx.started.extend(p for p in started if p not in ctx.started)
        raise RestoreError(message)
    _, started, published, exits = reply
    ctx.started.extend(p for p in started if p not in ctx.started)
    for what, where in published.items():
        ctx.shared_fds.setdefault(what, where)
    if exits:
        ctx.exited.add(pid)


def _stop_for_tracer(ctx: RestoreContext, pid: int) -> None:
    """Seize a task told to stop (it may still be on its way to pause())."""
    from engine.tracer.restore import attach_stopped
    _tell_to_stop(ctx, pid)
    ctx.tracees[pid] = attach_stopped(pid)


def _tell_to_stop(ctx: RestoreContext, pid: int) -> None:
    if pid in ctx.channels:          # not told with its last nodes
        wire.send(ctx.channels[pid], ("nodes", [], ctx.shared_fds, True))
        _reply(ctx, pid, ["its stop"], _answer(ctx, pid, ["its stop"]))
        ctx.channels.pop(pid).close()
    ctx.stopped.add(pid)


def _fingerprint(ctx: RestoreContext) -> dict:
    from engine import verify
    try:
        return verify.read(ctx.images.dir)
    except ValueError as e:
        raise RestoreError(str(e)) from None


def _verify(dumped: dict, root: int) -> None:
    """The restored tree under `root`, still stopped, against the dump's
    fingerprint: each difference is one line of the log, and the restore
    is refused."""
    from engine import verify
    differences = verify.check_restored(dumped, root)
    for line in differences:
        log.error("verify: %s", line)
    if differences:
        raise RestoreError(f"--verify: {len(differences)} difference(s) from the dump, "
                           f"the first: {differences[0]}")


def _release(ctx: RestoreContext) -> None:
    from engine.tracer.restore import release
    for pid in ctx.started:
        if pid not in ctx.stopped and pid not in ctx.exited:
            raise RestoreError(f"task {pid}: no memory or registers were restored")
    leave_stopped = getattr(ctx.options, "leave_stopped", False)
    if ctx.tracer_worker is not None:
        ctx.tracer_worker.release(leave_stopped)
    release([ctx.tracees[p] for p in ctx.started if p in ctx.tracees],
            leave_stopped=leave_stopped)
    if ctx.tracer_worker is not None:
        ctx.tracer_worker.released()


def _undo(ctx: RestoreContext) -> None:
    """Kill every task started, and whatever they forked, then reap them all.

    The engine is a child subreaper during a restore, so tasks orphaned by
    the kill come to it; it waits until it has no children left.
    """
    import time
    for pid in reversed(ctx.started):
        _kill(pid)
    while True:
        for pid in _children(os.getpid()):
            _kill(pid)
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG | 0x40000000)  # __WALL: traced too
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.001)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _children(ppid: int) -> list[int]:
    # /proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN: walk /proc.
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                        out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out

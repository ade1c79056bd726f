"""Restore orchestration: read, plan, run the graph, release; or undo it all.

Tasks are forked children of the engine (clone3 with the dumped pid), each
running a small executor loop (`_serve`): it receives "run node K" over its
socketpair and runs the plugin's hook in its own context, so fds, cwd,
sessions and credentials are made by the task itself, as the kernel requires.
Before its first tracer node a task closes every fd that is not its own
restored one and stops for the tracer; memory and registers are swapped in
from the engine. Any failure kills and reaps every task started.
"""
from __future__ import annotations

import fcntl
import logging
import os
import pickle
import signal
import socket
import struct
from typing import Any

import attrs

from engine.graph import ALL, Graph, GraphError, Node
from engine.stash import Stash

log = logging.getLogger("engine.restore")

PR_SET_CHILD_SUBREAPER = 36


class RestoreError(Exception):
    """A restore that cannot go on: one line, naming the image or node."""


@attrs.define(eq=False)
class RestoreContext:
    images: Any                     # engine.images.ImageDir
    registry: Any                   # engine.registry.Registry
    options: Any                    # argparse.Namespace
    stash: Stash = attrs.field(factory=Stash)
    graph: Graph | None = None
    pstree: list = attrs.field(factory=list)   # pstree_entry, parents first (pstree plugin)
    files: dict = attrs.field(factory=dict)    # files.img: id -> file_entry
    # pid -> wait status of the tasks that exit before release: dumped
    # zombies and pstree's helper tasks (pstree plugin)
    zombies: dict = attrs.field(factory=dict)
    # Inside a zombie-to-be: the status it exits with after its last node.
    exit_status: int | None = None
    # Inside a task: killed when its parent dies (spawn's die_with_parent).
    dies_with_parent: bool = False
    _read: dict = attrs.field(factory=dict)     # (image kind, id) -> its entries
    # pid -> engine end of the task's channel (engine only)
    channels: dict[int, socket.socket] = attrs.field(factory=dict)
    # pid -> task end (inherited by every task; each keeps only its own)
    task_ends: dict[int, socket.socket] = attrs.field(factory=dict)
    started: list[int] = attrs.field(factory=list)      # pids alive, in order
    stopped: set[int] = attrs.field(factory=set)        # stopped for the tracer
    tracees: dict[int, Any] = attrs.field(factory=dict)  # pid -> tracer handle
    # Inside a task: its pid and the fds restored so far (kept at stop).
    self_pid: int | None = None
    kept_fds: set[int] = attrs.field(factory=set)
    # file id -> (pid, fd) of the task that opened it first; tasks publish
    # theirs in node replies and get the engine's map with every node.
    shared_fds: dict[int, tuple[int, int]] = attrs.field(factory=dict)
    _published: dict[int, tuple[int, int]] = attrs.field(factory=dict)
    # engine.tracers.Worker: the second tracer, tracing some of the tasks
    tracer_worker: Any = None
    # pid -> (clone flags, its pid at every level, innermost first), for a
    # task in a nested pid namespace (filled at collect by a plugin).
    clone_args: dict[int, tuple[int, list[int]]] = attrs.field(factory=dict)

    @property
    def hook(self):
        return self.registry.hook

    # --- services for plugins ------------------------------------------

    @property
    def alive(self) -> list:
        """pstree entries of the tasks that run (not zombies)."""
        return [e for e in self.pstree if e.pid not in self.zombies]

    def read(self, name: str, id=None) -> list:
        """The entries of an image, read once for every plugin that reads
        it (core-PID.img: pstree, core and userns): not to be changed."""
        key = (name, id)
        if key not in self._read:
            self._read[key] = self.images.read(name, id)
        return self._read[key]

    def read_one(self, name: str, id=None):
        """The one entry of an image, as read()."""
        return self.images.only(name, self.read(name, id), id)

    def ids(self, pid: int):
        """ids-PID.img of a task: the object ids its mm, fds, fs... share."""
        return self.read_one("ids", id=pid)

    def spawn(self, pid: int, sibling: bool = False, die_with_parent: bool = True) -> int:
        """Fork task `pid` from the calling process (engine or a task), or,
        as a `sibling`, a child of the caller's parent (CLONE_PARENT).

        With `die_with_parent` the task gets SIGKILL when its parent dies
        before release (PR_SET_PDEATHSIG, cleared as the tracer releases
        it), so an engine killed mid-restore takes its tasks with it, down
        the tree. Pass False
        for a task whose parent exits during the restore on purpose (a
        zombie or a helper that orphans it)."""
        from engine.tracer.clone import CLONE_PARENT, clone_with_pid
        flags, tids = self.clone_args.get(pid, (0, None))
        parent = os.getppid() if sibling else os.getpid()
        child = clone_with_pid(pid, flags=flags | (CLONE_PARENT if sibling else 0), tids=tids)
        if child == 0:
            self.dies_with_parent = die_with_parent
            if die_with_parent:
                _die_with_parent()
                # Gone already (we were reparented): die as it would have had
                # us. A child in a new pid namespace sees its parent as 0.
                if os.getppid() not in (parent, 0):
                    os._exit(1)
            _serve(self, pid)          # never returns
        self.started.append(pid)        # the engine's name for it (child: the caller's)
        return child

    def publish_fd(self, file_id: int, fd: int) -> None:
        """Offer open file `file_id`, at `fd` in this task, to later tasks."""
        self._published[file_id] = (self.self_pid, fd)

    def take_fd(self, file_id: int) -> int:
        """A copy of an open file another task published (pidfd_getfd)."""
        from engine.fds import pidfd_getfd
        pid, fd = self.shared_fds[file_id]
        return pidfd_getfd(_pid_here(pid), fd)

    def install_fd(self, fd: int, number: int) -> None:
        """Put open `fd` at `number` in this task (closing `fd`)."""
        own = self.task_ends[self.self_pid]
        if own.fileno() == number:
            # Our channel sits where the image wants a file: move it away,
            # above the image's fds (else the next one wants it again).
            from engine.fds import park
            moved = park(self, os.dup(number))
            self.task_ends[self.self_pid] = socket.socket(fileno=moved)
            own.detach()
        if fd != number:
            _move_log_stream(self, number)
            os.dup2(fd, number, inheritable=True)
            os.close(fd)
        self.kept_fds.add(number)


def _die_with_parent() -> None:
    from engine.tracer.binding import libc      # both loaded before the forks
    from engine.tracer.restore import PR_SET_PDEATHSIG
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _move_log_stream(ctx: RestoreContext, number: int) -> None:
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


def _lift_log_stream() -> None:
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


def _pid_here(pid: int) -> int:
    """`pid` as the calling task's own pid namespace names it."""
    from engine import ns
    here = ns.pid_here(pid)
    if here is None:
        raise OSError(f"task {ns.status_field('self', 'NSpid')[0]} takes a file from task "
                      f"{pid}, outside its pid namespace: not supported (pidfd_open cannot "
                      "name it)")
    return here


# --- the wire between engine and tasks --------------------------------------

def _send(sock: socket.socket, obj) -> None:
    data = pickle.dumps(obj)
    sock.sendall(struct.pack("<I", len(data)) + data)


def _recv(sock: socket.socket):
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


def _serve(ctx: RestoreContext, pid: int) -> None:
    """The executor loop of a forked task. Never returns.

    The channel is looked up on every message: install_fd may have moved it
    off a number the image wants.
    """
    try:
        ctx.self_pid, ctx.kept_fds, ctx.started = pid, set(), []
        for end in ctx.channels.values():
            end.close()
        ctx.channels = {}
        while (msg := _recv(ctx.task_ends[pid])) is not None:
            _, keys, ctx.shared_fds, stop = msg
            ctx.started, ctx._published = [], {}
            try:
                for key in keys:
                    _run_hook(ctx, ctx.graph.nodes[key])
                    ctx.shared_fds.update(ctx._published)
                if ctx.dies_with_parent:
                    # The kernel clears it when a node changes our
                    # credentials (setfsuid around a socket's creation).
                    _die_with_parent()
                _send(ctx.task_ends[pid], ("ok", ctx.started, ctx._published))
                if ctx.exit_status is not None:
                    _die_as(ctx.exit_status)
            except Exception as e:  # noqa: BLE001 - reported; the engine kills us
                _send(ctx.task_ends[pid], ("error", _one_line(e), ctx.started, {}))
                continue
            if stop:
                from engine.tracer.restore import wait_for_tracer
                _close_all_but(ctx.kept_fds)
                wait_for_tracer()          # the tracer replaces this process image
    finally:
        os._exit(1)


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
    os.closerange(lo, _fd_limit())


def _fd_limit() -> int:
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _run_hook(ctx: RestoreContext, node: Node) -> None:
    done = ctx.registry.restore_node(ctx, node)
    if done is None:
        raise RestoreError(f"{node}: plugin {node.plugin} did not restore it")


# --- the engine side ---------------------------------------------------------

def build_graph(ctx: RestoreContext) -> Graph:
    graph = Graph(ctx.registry)
    ctx.graph = graph
    if ctx.images.exists("files"):
        ctx.files = {e.id: e for e in ctx.images.read("files")}
    ctx.hook.engine_restore_collect(ctx=ctx, graph=graph)
    _check_image_resources(ctx)
    return graph


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
    _lift_log_stream()
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
        _release(ctx)
    except BaseException as e:
        _undo(ctx)
        ctx.hook.engine_restore_abort(ctx=ctx, error=e)
        if isinstance(e, (RestoreError, GraphError)):
            raise
        raise RestoreError(_one_line(e)) from e
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
    deps = ctx.graph.edges()            # with ALL keys: done once all theirs are
    waiting = {key: set(before) for key, before in deps.items()}
    unblocks: dict[str, list[str]] = {}
    for key, before in waiting.items():
        for b in before:
            unblocks.setdefault(b, []).append(key)
    left: dict[int, int] = {}           # pid -> task nodes not yet sent
    tracer_keys: dict[int, list[str]] = {}  # pid -> its tracer nodes, in order
    for n in order:
        if n.where == "task":
            left[n.pid] = left.get(n.pid, 0) + 1
        elif n.where == "tracer":
            tracer_keys.setdefault(n.pid, []).append(n.key)
    traced = set(tracer_keys)           # tasks with tracer nodes (to stop)
    pending = [n.key for n in order]    # not started, in the serial order

    def done(key: str) -> None:
        for k in unblocks.get(key, ()):
            waiting[k].discard(key)
            if not waiting[k] and k.startswith(ALL):
                done(k)

    while pending:
        ready = [k for k in pending if not waiting[k]]
        if not ready:
            raise RestoreError(f"{ctx.graph.nodes[pending[0]]}: never became ready")
        nodes = [ctx.graph.nodes[k] for k in ready]
        engine_nodes = [n for n in nodes if n.where == "engine"]
        if engine_nodes:
            # Alone: what they publish may be wanted by any node after them.
            for node in engine_nodes:
                log.debug("node %s (in engine)", node.key)
                _run_hook(ctx, node)
                done(node.key)
            taken = {n.key for n in engine_nodes}
            pending = [k for k in pending if k not in taken]
            continue
        mine: dict[int, list[str]] = {}     # pid -> its pending task nodes
        for key in pending:
            node = ctx.graph.nodes[key]
            if node.where == "task":
                mine.setdefault(node.pid, []).append(key)
        batches: dict[int, list[Node]] = {}
        for node in nodes:
            if node.where == "task" and node.pid not in batches:
                batches[node.pid] = _task_batch(ctx, mine[node.pid], waiting)
        sent = []
        for pid, batch in batches.items():
            if pid not in ctx.started:
                raise RestoreError(f"{batch[0]}: task {pid} was never created")
            if pid in ctx.stopped:
                raise RestoreError(f"{batch[0]}: task {pid} already stopped for the tracer")
            left[pid] -= len(batch)
            # Told to stop only if nothing but this batch holds up its first
            # tracer node: a node of another task may still take one of its
            # files (it is stopped when that node is ready, _stop_for_tracer).
            keys = {n.key for n in batch}
            stop = (left[pid] == 0 and pid in traced
                    and waiting[tracer_keys[pid][0]] <= keys)
            log.debug("nodes %s (in task %s)%s", [n.key for n in batch], pid,
                      ", then stop" if stop else "")
            _send(ctx.channels[pid], ("nodes", [n.key for n in batch], ctx.shared_fds, stop))
            sent.append((pid, batch, stop))
        taken = {n.key for _, batch, _ in sent for n in batch}
        # While the tasks work on what they were sent.
        _trace(ctx, [n for n in nodes if n.where == "tracer"], taken)
        for pid, batch, stop in sent:
            _reply(ctx, pid, batch, _recv(ctx.channels[pid]))
            if stop:
                ctx.channels.pop(pid).close()
                ctx.stopped.add(pid)
            for node in batch:
                done(node.key)
            # Its tracer nodes, if now ready, while the others still work.
            _trace(ctx, [ctx.graph.nodes[k] for k in tracer_keys.get(pid, ())
                         if k not in taken and not waiting[k]], taken, done)
        if ctx.tracer_worker is not None:
            ctx.tracer_worker.wait(done)
        for key in taken:
            done(key)
        pending = [k for k in pending if k not in taken]


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
        _run_hook(ctx, node)
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


def _reply(ctx: RestoreContext, pid: int, nodes: list[Node], reply) -> None:
    if reply is None:
        raise RestoreError(f"task {pid} died while restoring {nodes[0]}")
    if reply[0] != "ok":
        raise RestoreError(reply[1])
    ctx.started.extend(p for p in reply[-2] if p not in ctx.started)
    for file_id, where in reply[-1].items():
        ctx.shared_fds.setdefault(file_id, where)


def _stop_for_tracer(ctx: RestoreContext, pid: int) -> None:
    """Seize a task told to stop (it may still be on its way to pause())."""
    from engine.tracer.restore import attach_stopped
    _tell_to_stop(ctx, pid)
    ctx.tracees[pid] = attach_stopped(pid)


def _tell_to_stop(ctx: RestoreContext, pid: int) -> None:
    if pid in ctx.channels:          # not told with its last nodes
        _send(ctx.channels[pid], ("nodes", [], ctx.shared_fds, True))
        _reply(ctx, pid, ["its stop"], _recv(ctx.channels[pid]))
        ctx.channels.pop(pid).close()
    ctx.stopped.add(pid)


def _release(ctx: RestoreContext) -> None:
    from engine.tracer.restore import release
    for pid in ctx.started:
        if pid not in ctx.stopped and pid not in ctx.zombies:
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

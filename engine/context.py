"""What a restore hands its plugins: the RestoreContext and its services.

The context knows no resource by name. What one plugin makes for others
(the task list, the open files of files.img) is published under the
resource hooks.toml says the plugin provides (``ctx.provide``) and read
under that name (``ctx.provided``); what a plugin keeps for itself lives in
its own typed stash keys. Services for the task side (forking a task,
installing and sharing fds) are here; the loop a task runs is
engine/executor.py.
"""
from __future__ import annotations

import os
import socket
from typing import Any

import attrs

from engine.errors import RestoreError
from engine.graph import Graph
from engine.stash import Stash

_MISSING = object()


@attrs.define(eq=False)
class RestoreContext:
    images: Any                     # engine.images.ImageDir
    registry: Any                   # engine.registry.Registry
    options: Any                    # argparse.Namespace
    stash: Stash = attrs.field(factory=Stash)
    graph: Graph | None = None
    # Pids and tids the restore creates (told at collect by the plugins
    # that make tasks): nothing else the engine forks may take them.
    reserved_pids: set[int] = attrs.field(factory=set)
    # Inside a task: killed when its parent dies (spawn's die_with_parent).
    dies_with_parent: bool = False
    # Inside a task: the wait status it exits with after its nodes, once a
    # node asked for it (exit_after_nodes).
    exit_status: int | None = None
    # pids of tasks that exited before release, as they said in their replies
    exited: set[int] = attrs.field(factory=set)
    _read: dict = attrs.field(factory=dict)     # (image kind, id) -> its entries
    _provided: dict[str, Any] = attrs.field(factory=dict)
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
    # what -> (pid, fd) of the task (or engine) holding it open: a file id
    # or a (resource, id) pair; tasks publish theirs in node replies and get
    # the engine's map with every node.
    shared_fds: dict[Any, tuple[int, int]] = attrs.field(factory=dict)
    _published: dict[Any, tuple[int, int]] = attrs.field(factory=dict)
    # engine.tracers.Worker: the second tracer, tracing some of the tasks
    tracer_worker: Any = None

    @property
    def hook(self):
        return self.registry.hook

    # --- what plugins give each other --------------------------------------

    def provide(self, resource: str, value) -> None:
        """Publish what `resource` (a name from hooks.toml `provides`) is in
        this restore, for the plugins after this one in hooks.toml order."""
        if resource in self._provided:
            raise RestoreError(f"resource {resource} provided twice")
        self._provided[resource] = value

    def provided(self, resource: str, default=_MISSING):
        """What the plugin providing `resource` published at collect."""
        value = self._provided.get(resource, default)
        if value is _MISSING:
            spec = self.registry.provider_of(resource)
            if spec is None:
                why = "no plugin provides it"
            elif not self.registry.is_enabled(spec.name):
                why = f"plugin {spec.name}, which provides it, is disabled"
            else:
                why = f"plugin {spec.name} has not provided it yet (see hooks.toml order)"
            raise RestoreError(f"resource {resource} is needed, but {why}")
        return value

    # --- images ---------------------------------------------------------------

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

    # --- tasks ------------------------------------------------------------------

    def spawn(self, pid: int, sibling: bool = False, die_with_parent: bool = True,
              flags: int = 0, tids: list[int] | None = None) -> int:
        """Fork task `pid` from the calling process (engine or a task), or,
        as a `sibling`, a child of the caller's parent (CLONE_PARENT), with
        clone `flags` and, in nested pid namespaces, its pid at every level
        (`tids`, innermost first). The child runs engine/executor.py's loop.

        With `die_with_parent` the task gets SIGKILL when its parent dies
        before release (PR_SET_PDEATHSIG, cleared as the tracer releases
        it), so an engine killed mid-restore takes its tasks with it, down
        the tree. Pass False for a task whose parent exits during the
        restore on purpose (a zombie or a helper that orphans it)."""
        from engine import executor
        from engine.tracer.clone import CLONE_PARENT, clone_with_pid
        parent = os.getppid() if sibling else os.getpid()
        child = clone_with_pid(pid, flags=flags | (CLONE_PARENT if sibling else 0), tids=tids)
        if child == 0:
            self.dies_with_parent = die_with_parent
            if die_with_parent:
                executor.die_with_parent()
                # Gone already (we were reparented): die as it would have had
                # us. A child in a new pid namespace sees its parent as 0.
                if os.getppid() not in (parent, 0):
                    os._exit(1)
            executor.serve(self, pid)          # never returns
        self.started.append(pid)        # the engine's name for it (child: the caller's)
        return child

    def exit_after_nodes(self, status: int) -> None:
        """Inside a task: exit with wait status `status` once this batch of
        nodes is done (a dumped zombie, a helper task)."""
        self.exit_status = status

    # --- fds across tasks -----------------------------------------------------

    def publish_fd(self, what, fd: int) -> None:
        """Offer the open file at `fd` in this task to later nodes, as
        `what` (a file id, or a (resource, id) pair). In the engine, at
        once; in a task, with its reply."""
        if self.self_pid is None:
            self.shared_fds[what] = (os.getpid(), fd)
        else:
            self._published[what] = (self.self_pid, fd)

    def take_fd(self, what) -> int:
        """A copy of an open file a node published (pidfd_getfd)."""
        from engine.fds import pidfd_getfd
        pid, fd = self.shared_fds[what]
        if pid == self.self_pid:
            return os.dup(fd)
        return pidfd_getfd(_pid_here(pid), fd)

    def install_fd(self, fd: int, number: int) -> None:
        """Put open `fd` at `number` in this task (closing `fd`)."""
        if fd != number:
            self.clear_number(number)
            os.dup2(fd, number, inheritable=True)
            os.close(fd)
        self.kept_fds.add(number)

    def clear_number(self, number: int) -> None:
        """Inside a task: move what the engine itself holds at fd `number`
        (a channel: its own, or one it keeps for the tasks it forks; the log
        stream) above the image's fds, so a node can put a file of the image
        there (else the next file the image wants there meets it again)."""
        from engine import executor
        for pid, end in self.task_ends.items():
            if end.fileno() == number:
                from engine.fds import park
                moved = park(self, os.dup(number))
                self.task_ends[pid] = socket.socket(fileno=moved)
                end.detach()
                os.close(number)
        executor.move_log_stream(self, number)


def _pid_here(pid: int) -> int:
    """`pid` as the calling task's own pid namespace names it."""
    from engine import ns
    here = ns.pid_here(pid)
    if here is None:
        raise OSError(f"task {ns.status_field('self', 'NSpid')[0]} takes a file from task "
                      f"{pid}, outside its pid namespace: not supported (pidfd_open cannot "
                      "name it)")
    return here

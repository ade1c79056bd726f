"""Dump orchestration: list, freeze, call the hooks, write; or let go untouched.

The core knows no resource: it asks ``engine_dump_tree`` which tasks to take,
freezes them with the tracer, reads the state every plugin needs once
(``engine.tracer.collect_task``), and lets the plugins write their images.
Then the tree is killed (default) or resumed (``--leave-running``). On any
failure the tree is resumed exactly as it was, and the images written so far
are left in DIR only as debris of a failed dump (never a half image set
mistaken for a good one: inventory.img is written last).
"""
from __future__ import annotations

import errno
import logging
import os
import signal
from typing import Any

import attrs

from engine.images import IMG_VERSION
from engine.stash import Stash

log = logging.getLogger("engine.dump")

FREEZE_ROUNDS = 10        # listings of a tree still changing before the dump gives up


class DumpError(Exception):
    """A dump that cannot be done: one line, naming the task and what."""


@attrs.define(eq=False)
class DumpTask:
    pid: int
    tracee: Any                      # engine.tracer.task.Tracee
    state: Any                       # engine.tracer.model.TaskState
    # Object ids of what the task holds (its fd table, mm...), by the
    # ids-PID.img field they go to, set by the plugins that dump them.
    ids: dict[str, int] = attrs.field(factory=dict)
    # A zombie: its wait status; it has no tracee, no state, nothing but core.
    zombie: int | None = None


@attrs.define(eq=False)
class DumpContext:
    images: Any                      # engine.images.ImageDir
    registry: Any
    options: Any
    stash: Stash = attrs.field(factory=Stash)
    tasks: dict[int, DumpTask] = attrs.field(factory=dict)
    # image kind -> entries several plugins add to, written once every
    # engine_dump_finish ran (files.img: every plugin holding a file)
    _entries: dict[str, list] = attrs.field(factory=dict)
    _last_id: int = 0

    @property
    def hook(self):
        return self.registry.hook

    def new_id(self) -> int:
        """A fresh object id, unique across files.img and ids-PID.img."""
        self._last_id += 1
        return self._last_id

    def entries(self, kind: str) -> list:
        """The entries of image `kind` that plugins add to during the dump;
        the engine writes them after the last engine_dump_finish."""
        return self._entries.setdefault(kind, [])


def dump(ctx: DumpContext, root_pid: int) -> list[int]:
    frozen = []
    interrupted: set[int] = set()
    cgroup = getattr(ctx.options, "freeze_cgroup", None)
    if getattr(ctx.options, "leave_stopped", False) and not cgroup:
        raise DumpError("--leave-stopped on dump needs --freeze-cgroup (the tree is left "
                        "frozen there)")
    try:
        if cgroup:
            # Frozen by its cgroup first: a tree forking fast cannot escape.
            from engine import freezer
            freezer.set_frozen(cgroup, True)
            tree = ctx.hook.engine_dump_tree(ctx=ctx, root_pid=root_pid) or [root_pid]
            interrupted = freezer.interrupt_frozen(cgroup, tree)
        pids = _freeze_tree(ctx, root_pid, frozen, interrupted)
        for pid in pids:
            ctx.hook.engine_dump_task(ctx=ctx, task=ctx.tasks[pid])
        ctx.hook.engine_dump_finish(ctx=ctx)
        for kind, entries in ctx._entries.items():
            ctx.images.write(kind, entries)
        from engine import verify
        verify.write(ctx.images.dir, pids, pids[0], {      # for restore --verify
            pid: [(th.rseq_abi_pointer, th.rseq_abi_size) for th in task.state.threads
                  if th.rseq_abi_pointer]
            for pid, task in ctx.tasks.items() if task.state is not None})
        from engine.images import manifest
        manifest.write(ctx.images.dir)          # every image is written by now
        _write_inventory(ctx)
        ctx.hook.engine_dump_written(ctx=ctx)
    except BaseException as e:
        try:
            ctx.hook.engine_dump_abort(ctx=ctx, error=e)
        except Exception as e2:  # noqa: BLE001 - the first error is the one to report
            log.warning("engine_dump_abort: %s", e2)
        for tracee in reversed(frozen):
            _quietly(tracee.detach)
        if cgroup:
            from engine import freezer
            _quietly(lambda: freezer.set_frozen(cgroup, False))
            freezer.release(interrupted - {t.pid for f in frozen for t in [f] + f.others})
        raise
    if cgroup and getattr(ctx.options, "leave_stopped", False):
        from engine import freezer
        freezer.set_frozen(cgroup, True)     # let go into the freezer, as CRIU leaves it
    if getattr(ctx.options, "leave_running", False) or getattr(ctx.options, "leave_stopped",
                                                                False):
        for tracee in frozen:
            tracee.detach()
    else:
        # Kill while still traced so nothing runs between dump and death.
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass            # the init of its pid namespace took it along
        for tracee in frozen:
            _quietly(tracee.detach)
    return pids


def _freeze_tree(ctx: DumpContext, root_pid: int, frozen: list,
                 interrupted: set[int] = frozenset()) -> list[int]:
    """Freeze the tree, parents first, and list it again until the listing
    holds no task not yet frozen: a parent still running while its first
    children are frozen may fork one more, or reap a zombie listed a moment
    ago (a shell's loop and its `sleep`). Once all are frozen, none can.
    (CRIU's seize loop reads each frozen task's children again, likewise.)"""
    from engine import tracer
    for _ in range(FREEZE_ROUNDS):
        pids = ctx.hook.engine_dump_tree(ctx=ctx, root_pid=root_pid) or [root_pid]
        new = [pid for pid in pids if pid not in ctx.tasks]
        for pid in new:
            try:
                status = tracer.zombie_status(pid)
                if status is not None:
                    ctx.tasks[pid] = DumpTask(pid=pid, tracee=None, state=None, zombie=status)
                    continue
                tracee = tracer.freeze(pid, interrupted)
            except (FileNotFoundError, ProcessLookupError):
                continue                # gone meanwhile: the next listing tells
            except tracer.TracerError as e:
                if e.errno != errno.ESRCH:
                    raise
                continue
            frozen.append(tracee)
            ctx.tasks[pid] = DumpTask(pid=pid, tracee=tracee, state=tracer.collect_task(tracee))
        if not new:
            # A zombie listed before its parent froze may have been reaped.
            ctx.tasks = {pid: ctx.tasks[pid] for pid in pids}
            return pids
    raise DumpError(f"task {root_pid}: its tree kept changing while it was being frozen "
                    f"({FREEZE_ROUNDS} listings)")


def _write_inventory(ctx: DumpContext) -> None:
    """inventory.img, the completion marker: last of all, so a set without
    it is known to be incomplete. The format's facts are the engine's; the
    plugins fill the rest (engine_dump_inventory: the root's ids)."""
    from engine.images.proto import tree_pb2
    inventory = tree_pb2.inventory_entry(img_version=IMG_VERSION, fdinfo_per_id=True,
                                         ns_per_id=True, lsmtype=0)
    ctx.hook.engine_dump_inventory(ctx=ctx, inventory=inventory)
    ctx.images.write("inventory", [inventory])


def _quietly(fn) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - best effort while unwinding
        log.debug("ignored while unwinding: %s", e)

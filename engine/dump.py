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

import logging
import os
import signal
from typing import Any

import attrs

from engine.stash import Stash

log = logging.getLogger("engine.dump")


class DumpError(Exception):
    """A dump that cannot be done: one line, naming the task and what."""


@attrs.define(eq=False)
class DumpTask:
    pid: int
    tracee: Any                      # engine.tracer.task.Tracee
    state: Any                       # engine.tracer.model.TaskState
    # ids-PID.img: object ids of its mm, fd table, fs and signal handlers
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
    files: list = attrs.field(factory=list)     # file_entry messages for files.img
    _last_id: int = 0

    @property
    def hook(self):
        return self.registry.hook

    def new_id(self) -> int:
        """A fresh object id, unique across files.img and ids-PID.img."""
        self._last_id += 1
        return self._last_id

    def add_file(self, entry) -> int:
        """Add a file_entry to files.img; its id (and its sub-entry's) is set here."""
        file_id = self.new_id()
        entry.id = file_id
        # CRIU repeats the id inside the typed sub-entry (reg.id, pipe.id...).
        for field, value in entry.ListFields():
            if field.message_type is not None and "id" in field.message_type.fields_by_name:
                value.id = file_id
        self.files.append(entry)
        return file_id


def dump(ctx: DumpContext, root_pid: int) -> list[int]:
    from engine import tracer

    pids = ctx.hook.engine_dump_tree(ctx=ctx, root_pid=root_pid) or [root_pid]
    frozen = []
    try:
        for pid in pids:
            status = tracer.zombie_status(pid)
            if status is not None:
                ctx.tasks[pid] = DumpTask(pid=pid, tracee=None, state=None, zombie=status)
                continue
            tracee = tracer.freeze(pid)
            frozen.append(tracee)
            ids = {k: ctx.new_id() for k in ("vm_id", "files_id", "fs_id", "sighand_id")}
            ctx.tasks[pid] = DumpTask(pid=pid, tracee=tracee, state=tracer.collect_task(tracee),
                                      ids=ids)
        for pid in pids:
            ctx.hook.engine_dump_task(ctx=ctx, task=ctx.tasks[pid])
        ctx.hook.engine_dump_finish(ctx=ctx)
        ctx.images.write("files", ctx.files)
    except BaseException as e:
        try:
            ctx.hook.engine_dump_abort(ctx=ctx, error=e)
        except Exception as e2:  # noqa: BLE001 - the first error is the one to report
            log.warning("engine_dump_abort: %s", e2)
        for tracee in reversed(frozen):
            _quietly(tracee.detach)
        raise
    if getattr(ctx.options, "leave_running", False):
        for tracee in frozen:
            tracee.detach()
    else:
        # Kill while still traced so nothing runs between dump and death.
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for tracee in frozen:
            _quietly(tracee.detach)
    return pids


def _quietly(fn) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - best effort while unwinding
        log.debug("ignored while unwinding: %s", e)
